"""Evoked responses: what each stimulus produces, at which channels, and how it varies.

Named responses (the keys of VirtualPatient.truth and of scenario event targets):

  median_{L,R}_erb        N9 at Erb's point (brachial plexus)                 output 0 (L) / 1 (R)
  median_{L,R}_cervical   N13 at Cv5 (dorsal horn / cuneate)                  output 0 / 1
  median_{L,R}_cortical   N20/P25 over the contralateral hand area            output 0 / 1
  tibial_{L,R}_popliteal  tibial nerve action potential at the popliteal fossa output 2 / 3
  tibial_{L,R}_cortical   P37/N45 near the vertex                             output 2 / 3
  mwave_APB_{L,R}         thenar M-wave from median stimulation at the wrist  output 0 / 1
  mwave_AH_{L,R}          abductor hallucis M-wave from tibial stimulation    output 2 / 3
  mep_{APB,AH,TA}_{L,R}   TcMEP, after the last pulse of a trigger train      TRIGGER_OUTPUT

Latencies are for a height (limb-length) factor of 1 and scale with the patient's factor; the amplitude
of an SSEP/M-wave component is the size of its main peak (µV); of an MEP its peak-to-peak (µV).
Figures from IONM-REFERENCE.md where given (N20 ≈ 18–20 ms, P37 ≈ 37–40 ms, scalp 0.5–5 µV, MEP APB
~1.2 mV, AH ~1 mV, TA ~0.5 mV, MEP trial CV 48/35/27 %); the rest are textbook typicals.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from ionm_hw.physiology import keyed

TRIGGER_OUTPUT = -1

# Stimulator output -> (nerve, side). Median at the wrist, tibial at the ankle.
STIM_SITES = {0: ("median", "L"), 1: ("median", "R"), 2: ("tibial", "L"), 3: ("tibial", "R")}


@dataclass(frozen=True)
class Recruitment:
    """Fraction of fibres recruited vs current: a Hill curve whose midpoint follows strength–duration."""

    i50_ma: float  # half-recruitment current at width_ref_us
    width_ref_us: float
    hill: float
    chronaxie_us: float

    def fraction(self, current_ma: float, width_us: float, i50_scale: float = 1.0) -> float:
        if current_ma <= 0 or width_us <= 0:
            return 0.0
        sd = (1 + self.chronaxie_us / width_us) / (1 + self.chronaxie_us / self.width_ref_us)
        i50 = self.i50_ma * i50_scale * sd
        x = (current_ma / i50) ** self.hill
        return float(x / (1 + x))


# Median: ~0 below 5 mA, near max above 25 mA at 200 µs; tibial needs more; motor fibres a bit more.
RECRUITMENT = {
    "median_sensory": Recruitment(11.0, 200.0, 4.0, 300.0),
    "median_motor": Recruitment(13.0, 200.0, 4.0, 300.0),
    "tibial_sensory": Recruitment(17.0, 300.0, 4.0, 300.0),
    "tibial_motor": Recruitment(20.0, 300.0, 4.0, 300.0),
}

# Morphology: (latency ms, relative amplitude, gaussian sigma ms), sign = voltage at the active electrode.
MORPHOLOGY = {
    "erb": ((8.8, 0.25, 0.35), (9.7, -1.0, 0.45), (11.0, 0.45, 0.8)),
    "cervical": ((11.3, 0.2, 0.6), (13.3, -1.0, 0.9), (15.8, 0.35, 1.3)),
    "median_cortical": ((19.5, -1.0, 1.3), (24.5, 1.2, 2.2), (32.0, -0.5, 3.5)),
    "popliteal": ((7.8, 0.2, 0.35), (8.7, -1.0, 0.45), (10.0, 0.4, 0.7)),
    "tibial_cortical": ((38.5, 1.0, 2.0), (46.0, -1.1, 2.8), (56.0, 0.5, 4.0)),
    "mwave_APB": ((4.8, -1.0, 1.0), (7.8, 0.6, 1.8)),
    "mwave_AH": ((6.2, -1.0, 1.2), (9.8, 0.6, 2.0)),
}


@dataclass(frozen=True)
class ResponseDef:
    name: str
    source: int  # stimulator output, or TRIGGER_OUTPUT
    morphology: str  # key of MORPHOLOGY ("mep" for TcMEP: drawn per patient)
    limb: str  # arm | leg: which length factor scales the latency
    recruitment: str  # key of RECRUITMENT ("" for TcMEP)
    amplitude_uv: tuple[float, float, float]  # population median, lo, hi of the patient's amplitude
    trial_cv: float  # trial-to-trial amplitude coefficient of variation
    jitter_ms: float  # trial-to-trial latency sd
    wander: float  # slow wander of amplitude (log-sd)
    coupling: dict[str, tuple[float, float]] = field(default_factory=dict)  # derivation -> (gain, log-sd)
    onset_ms: float = 0.0  # TcMEP onset after the last pulse


def _defs() -> list[ResponseDef]:
    out: list[ResponseDef] = []
    for side, out_arm, out_leg in (("L", 0, 2), ("R", 1, 3)):
        cortex = "C4'" if side == "L" else "C3'"  # contralateral hand area
        ipsi = "C3'" if side == "L" else "C4'"
        cpc = "CP4" if side == "L" else "CP3"  # CPz–CPc for this leg
        cpi = "CP3" if side == "L" else "CP4"
        out += [
            ResponseDef(f"median_{side}_erb", out_arm, "erb", "arm", "median_sensory", (3.0, 1.0, 8.0),
                        0.08, 0.05, 0.03, {f"Ep{side}-Fz": (1.0, 0.1), "Cv5-Fz": (0.08, 0.3)}),
            ResponseDef(f"median_{side}_cervical", out_arm, "cervical", "arm", "median_sensory", (1.5, 0.6, 3.0),
                        0.15, 0.15, 0.04, {"Cv5-Fz": (1.0, 0.1)}),
            ResponseDef(f"median_{side}_cortical", out_arm, "median_cortical", "arm", "median_sensory",
                        (1.6, 0.6, 3.0), 0.25, 0.35, 0.06,
                        {f"{cortex}-Fz": (1.0, 0.1), f"{ipsi}-Fz": (0.12, 0.3), "Cz'-Fpz": (0.15, 0.4)}),
            ResponseDef(f"tibial_{side}_popliteal", out_leg, "popliteal", "leg", "tibial_sensory", (2.0, 0.6, 5.0),
                        0.08, 0.05, 0.03, {f"PF{side}p-PF{side}d": (1.0, 0.1)}),
            ResponseDef(f"tibial_{side}_cortical", out_leg, "tibial_cortical", "leg", "tibial_sensory",
                        (1.1, 0.5, 2.5), 0.25, 0.6, 0.06,
                        {f"CPz-{cpc}": (1.0, 0.15), f"CPz-{cpi}": (0.3, 0.4), "Cz'-Fpz": (0.5, 0.45)}),
            ResponseDef(f"mwave_APB_{side}", out_arm, "mwave_APB", "arm", "median_motor", (6000.0, 2000.0, 12000.0),
                        0.05, 0.05, 0.02, {f"APB{side}1-APB{side}2": (1.0, 0.1)}),
            ResponseDef(f"mwave_AH_{side}", out_leg, "mwave_AH", "leg", "tibial_motor", (8000.0, 3000.0, 15000.0),
                        0.05, 0.05, 0.02, {f"AH{side}1-AH{side}2": (1.0, 0.1)}),
        ]  # fmt: skip
        for muscle, limb, onset, amp, cv in (("APB", "arm", 20.0, 1200.0, 0.48), ("AH", "leg", 38.0, 1000.0, 0.35),
                                             ("TA", "leg", 30.0, 500.0, 0.27)):  # fmt: skip
            out.append(
                ResponseDef(f"mep_{muscle}_{side}", TRIGGER_OUTPUT, "mep", limb, "", (amp, 100.0, 1500.0), cv,
                            0.6, 0.08, {f"{muscle}{side}1-{muscle}{side}2": (1.0, 0.1)}, onset_ms=onset)
            )  # fmt: skip
    return sorted(out, key=lambda d: d.name)


RESPONSES: list[ResponseDef] = _defs()
RESPONSE_NAMES: list[str] = [d.name for d in RESPONSES]
SSEP_RESPONSES = [d for d in RESPONSES if d.source != TRIGGER_OUTPUT and not d.name.startswith("mwave")]

# TcMEP: facilitation by train length (5 pulses at ~3 ms lowest threshold) and voltage recruitment.
TCMEP_THRESHOLD_V = (250.0, 180.0, 330.0)  # patient threshold for a 5-pulse train: median, lo, hi
TCMEP_LEG_THRESHOLD = 1.15  # legs need ~15 % more


def train_drive(n_pulses: int, ipi_ms: float) -> float:
    """Effective drive of a train relative to 5 pulses at 3 ms (temporal summation at the motoneuron)."""
    n = max(n_pulses, 0)
    summation = n**3 / (n**3 + 2.5**3) / (5**3 / (5**3 + 2.5**3))
    spacing = float(np.exp(-(((ipi_ms - 3.0) / 5.0) ** 2)))
    return float(summation * spacing)


def mep_recruitment(voltage_v: float, drive: float, threshold_v: float) -> float:
    return float(1.0 / (1.0 + np.exp(-(voltage_v * drive - threshold_v) / (0.1 * threshold_v))))


def _lognormal_clipped(g: np.random.Generator, median: float, lo: float, hi: float, sd: float) -> float:
    return float(np.clip(median * np.exp(sd * g.standard_normal()), lo, hi))


@dataclass
class PatientResponse:
    """One response as it is in this patient."""

    d: ResponseDef
    amplitude_uv: float
    latency_scale: float  # limb-length factor
    coupling: dict[str, float]  # derivation -> gain (this patient)
    i50_scale: float  # recruitment threshold relative to population
    wander_f: np.ndarray  # Hz, 3 components
    wander_p: np.ndarray  # rad
    peaks: tuple[tuple[float, float, float], ...]  # (ms, rel, sigma ms) at latency_scale 1
    threshold_v: float = 0.0  # TcMEP

    def wander(self, t_s: np.ndarray | float) -> tuple[np.ndarray, np.ndarray]:
        """Slow multiplicative wander of (amplitude, latency), mean ~1: three slow sinusoids in log space."""
        t = np.atleast_1d(np.asarray(t_s, dtype=float))
        s = np.sin(2 * np.pi * np.outer(t, self.wander_f) + self.wander_p)  # each rms 1/√2
        amp = np.exp(self.d.wander * (s[:, 0] + s[:, 1]))  # log-sd = d.wander
        lat = np.exp(0.004 * np.sqrt(2.0) * s[:, 2])  # ±0.4 % rms
        return amp, lat


def draw_patient(seed: int, height: float) -> dict[str, PatientResponse]:
    """Per-patient parameters for every response, keyed by name so the draws do not depend on order."""
    limb_scale = {}
    g = keyed.rng(seed, keyed.PATIENT, keyed.name_key("limbs"))
    for limb in ("arm", "leg"):
        limb_scale[limb] = float(np.clip(height * (1 + 0.015 * g.standard_normal()), 0.92, 1.08))
    nerve_scale = {n: float(np.clip(np.exp(0.2 * g.standard_normal()), 0.7, 1.4)) for n in sorted(RECRUITMENT)}
    threshold = _lognormal_clipped(g, *TCMEP_THRESHOLD_V, 0.15)
    side_amp = {s: float(np.exp(0.12 * g.standard_normal())) for s in "LR"}
    out = {}
    for d in RESPONSES:
        g = keyed.rng(seed, keyed.PATIENT, keyed.name_key(d.name))
        med, lo, hi = d.amplitude_uv
        side = d.name.split("_")[-1] if d.name.startswith("mep") else d.name.split("_")[1]
        amp = float(np.clip(_lognormal_clipped(g, med, lo, hi, 0.35) * side_amp.get(side, 1.0), lo, hi))
        coupling = {k: gain * float(np.exp(sd * g.standard_normal())) for k, (gain, sd) in sorted(d.coupling.items())}
        wf = 1.0 / g.uniform(60.0, 900.0, 3)
        wp = g.uniform(0, 2 * np.pi, 3)
        if d.morphology == "mep":
            peaks = _mep_template(g, d.onset_ms)
            leg = TCMEP_LEG_THRESHOLD if d.limb == "leg" else 1.0
            thr = threshold * leg * float(np.exp(0.05 * g.standard_normal()))
        else:
            peaks = MORPHOLOGY[d.morphology]
            thr = 0.0
        i50 = nerve_scale.get(d.recruitment, 1.0)
        out[d.name] = PatientResponse(d, amp, limb_scale[d.limb], coupling, i50, wf, wp, peaks, thr)
    return out


def _mep_template(g: np.random.Generator, onset_ms: float) -> tuple[tuple[float, float, float], ...]:
    """A polyphasic CMAP: 3–6 alternating phases, normalised to 1 peak-to-peak."""
    n = int(g.integers(3, 7))
    sign = 1.0 if g.random() < 0.5 else -1.0
    t = onset_ms
    peaks = []
    for k in range(n):
        sigma = g.uniform(0.6, 1.5)
        if k == 0:
            t += 2.0 * sigma  # onset = where the first phase rises out of the baseline
        peaks.append((t, sign * g.uniform(0.3, 1.0) * (0.85 ** k), sigma))
        sign = -sign
        t += g.uniform(1.8, 3.5)
    grid = np.linspace(onset_ms - 2, t + 5, 4000)
    w = waveform(grid, tuple(peaks), 1.0)
    pp = float(w.max() - w.min())
    return tuple((a, r / pp, s) for a, r, s in peaks)


def waveform(t_ms: np.ndarray, peaks: tuple[tuple[float, float, float], ...], latency_scale: float,
             rel_jitter: np.ndarray | None = None, shift_ms: float = 0.0) -> np.ndarray:  # fmt: skip
    """Sum of gaussian phases at t_ms; latencies and widths scale with latency_scale, plus shift_ms."""
    out = np.zeros_like(t_ms, dtype=float)
    for k, (lat, rel, sigma) in enumerate(peaks):
        r = rel * (1.0 if rel_jitter is None else float(rel_jitter[k]))
        s = sigma * latency_scale
        out += r * np.exp(-0.5 * ((t_ms - lat * latency_scale - shift_ms) / s) ** 2)
    return out


def extent_ms(peaks: tuple[tuple[float, float, float], ...], latency_scale: float) -> float:
    """Time after which the waveform is negligible (5 sigma past the last phase)."""
    return max((lat + 5 * sigma) * latency_scale for lat, _, sigma in peaks)
