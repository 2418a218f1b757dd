"""The virtual patient: the analogue signals at the electrodes, sample by sample, for the ADC model.

The hardware model (server.py) calls VirtualPatient.render block by block as the simulated ADS1299
converts, passing the stimuli delivered in each block; the ADC model then adds amplifier noise, gain
and quantisation. The patient produces, in volts, per amplifier channel:

- SSEPs from stimulator outputs 0 = left median, 1 = right median (N9 Erb's, N13 cervical, N20/P25
  contralateral cortex; thenar M-wave) and 2 = left tibial, 3 = right tibial (popliteal fossa, P37/N45;
  abductor hallucis M-wave); size follows a saturating recruitment curve of the delivered current and
  width; trial-to-trial amplitude/latency jitter; slow wander; patient-specific latencies (limb length).
- TcMEPs (APB, AH, TA each side) after the last pulse of each train of trigger pulses (TRIGGER_OUTPUT,
  to the external constant-voltage stimulator): polyphasic, 0.1–1.5 mV, onset ~20 ms arm / 30–38 ms
  leg, large trial-to-trial variability (CV 48/35/27 %).
- Background: EEG-like 1/f on scalp channels, EMG on muscles with occasional neurotonic bursts, mains
  (scenario mains_hz) with harmonics, stimulus artefacts (largest near the stimulated limb),
  electrocautery bursts, electrode pops, and electrodes coming off (flat at the rail, leadoff() true).
- Scripted physiology from the scenario (injury, anaesthesia, positioning, recovery): truth(t).

The montage (which derivation each channel records) is documented in physiology/montage.py, the
responses in physiology/responses.py, the scenario format in physiology/scenario.py.

Determinism: everything random is keyed by (seed, sample or pulse index), so the signal depends only
on (scenario, seed, fs, pulses) — not on how the samples are split into blocks.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from ionm import board
from ionm_hw.physiology import keyed, montage
from ionm_hw.physiology.blockade import TRAIN_WINDOW_S, Blockade, twitch
from ionm_hw.physiology.interference import (
    Cautery,
    EmgBursts,
    Leadoff,
    Pops,
    artefact_coupling,
    artefact_shape,
)
from ionm_hw.physiology.noise import BackgroundNoise, Mains
from ionm_hw.physiology.responses import (
    RECRUITMENT,
    RESPONSES,
    TRIGGER_OUTPUT,
    draw_patient,
    extent_ms,
    mep_recruitment,
    train_drive,
    waveform,
)
from ionm_hw.physiology.scenario import Script, load_scenario, merged, scenario_names
from ionm_hw.physiology.screws import PROBE_OUTPUT, ProbeModel

__all__ = ["TRIGGER_OUTPUT", "Pulse", "VirtualPatient", "load_scenario", "scenario_names"]


@dataclass(frozen=True)
class Pulse:
    """One stimulus actually delivered."""

    index: int  # ADC sample index at which the pulse began (the board's sample clock)
    output: int  # stimulator output 0..3; TRIGGER_OUTPUT (-1) for the TcMEP trigger; the earphones' (-2): a click
    current_ma: float  # delivered current (after compliance limiting); unused for the trigger and clicks
    width_us: int
    biphasic: bool
    level_db: float = 0.0  # a click: its level (dB nHL), polarity and ear
    rarefaction: bool = False
    ear: str = "L"


def _lognormal_mean1(g: np.random.Generator, cv: float) -> float:
    s = np.sqrt(np.log1p(cv * cv))
    return float(np.exp(s * g.standard_normal() - 0.5 * s * s))


class VirtualPatient:
    ARTEFACT_MS = 15.0  # stimulus artefact rendered this long (the tail is long gone by then)
    NEAR_THRESHOLD_DELAY_MS = 0.5  # weakly recruited volleys arrive slightly later
    MEP_PHASE_JITTER = 0.12  # log-sd of each MEP phase's size, trial to trial (shape varies too)
    MEP_PHASE_PP_CV = 0.10  # the peak-to-peak CV that phase jitter alone produces (measured)
    CLICK_REFERENCE_DB = 80.0  # a click of this level gives the BAEP scenario's waves as they are
    CLICK_THRESHOLD_DB = 15.0  # below this no wave (a normal ear's BAEP threshold is 10-20 dB nHL)
    CLICK_LATENCY_MS_PER_DB = 0.035  # wave V about 0.35 ms later for every 10 dB lower (latency-intensity)
    EEG_FS_HZ = 250.0  # a scenario's EEG is rendered at this rate (its content is below 30 Hz)
    MEP_ONSET_FRACTION = 0.02  # truth onset: where the noise-free response first reaches 2 % of its peak

    def __init__(self, scenario: dict[str, Any], seed: int, fs_hz: float, n_channels: int = 16) -> None:
        self.scenario = merged(scenario)
        self.seed = int(seed)
        self.fs = float(fs_hz)
        self.channels = montage.build(self.scenario["montage"], n_channels)
        self.channel_names: list[str] = [c.name for c in self.channels]
        self.script = Script(self.scenario["events"])
        defn = board.load()
        self._train_gap = int(defn["safety"]["train_ipi_us_max"] * self.fs / 1e6)  # samples
        self._auditory_output = int(defn["stimulator"]["auditory"]["output"])  # the earphones' clicks
        rail_v = 0.5 * float(defn["adc"]["vref_v"])  # a floating input ends up near the analogue rail

        pat = self.scenario["patient"]
        g = keyed.rng(self.seed, keyed.PATIENT, keyed.name_key("height"))
        self.height_factor = float(pat.get("height_factor", np.clip(1 + 0.04 * g.standard_normal(), 0.92, 1.08)))
        self.responses = draw_patient(self.seed, self.height_factor)
        self._coupling = {
            name: np.array([r.coupling.get(ch.derivation, 0.0) for ch in self.channels])
            for name, r in self.responses.items()
        }
        self._nonzero = {name: np.flatnonzero(c) for name, c in self._coupling.items()}

        noise = self.scenario["noise"]
        n = len(self.channels)
        g = keyed.rng(self.seed, keyed.PATIENT, keyed.name_key("noise"))
        scale = (float(noise["eeg_scale"]), float(noise["emg_scale"]), float(noise["floor_scale"]))
        self._background = BackgroundNoise(self.seed, self.fs, montage.noise_levels(self.channels, g, scale))
        mains_uv = float(noise["mains_uv"]) * np.exp(0.5 * g.standard_normal(n))  # electrode imbalance varies
        self._mains = Mains(self.seed, self.fs, float(self.scenario["mains_hz"]), mains_uv)
        self._cautery = Cautery(self.seed, self.fs, n, noise, self.script.cautery)
        self._pops = Pops(self.seed, self.fs, n, float(noise["pops_per_min"]))
        muscles = [c.index for c in self.channels if c.kind == "muscle"]
        self._emg = EmgBursts(self.seed, self.fs, muscles, float(noise["emg_bursts_per_min"]))
        g = keyed.rng(self.seed, keyed.PATIENT, keyed.name_key("artefact"))
        self._artefact = artefact_coupling(self.channels, g)
        # the probe's (output 4) from a stream of its own: the other draws stay as they were before it existed
        self._artefact.update(artefact_coupling(self.channels, keyed.rng(self.seed, keyed.PATIENT,
                                                                         keyed.name_key("probe_artefact")), (4,)))
        self._artefact_tau_ms = float(g.uniform(0.4, 1.0))  # amplifier/electrode recovery
        self._artefact_shapes: dict[tuple[int, int, bool], tuple[np.ndarray, np.ndarray]] = {}
        self._leadoff = Leadoff(self.fs, self.channels, self.script.leadoffs, rail_v, g)
        g = keyed.rng(self.seed, keyed.PATIENT, keyed.name_key("stim_impedance"))
        self._stim_z = {o: float(np.clip(2500 * np.exp(0.4 * g.standard_normal()), 800, 8000)) for o in range(4)}
        self._stim_z[TRIGGER_OUTPUT] = float(g.uniform(600, 1500))  # corkscrew scalp electrodes
        self._stim_z_phase = {o: float(g.uniform(0, 2 * np.pi)) for o in self._stim_z}
        self.probe = ProbeModel(self.scenario, self.channels, self.seed, self.fs)  # output 4, the handheld probe
        self.blockade = Blockade(self.scenario["events"])  # neuromuscular blockade: muscle responses, TOF fade
        self._recent: dict[int, list[int]] = {}  # per output: its recent pulses (a train's position, TOF)
        # Recording electrodes (subdermal needles): 1-6 kOhm each, drawn per electrode (an electrode shared by
        # several derivations, Fz, is the same electrode in each); open while it is off.
        g = keyed.rng(self.seed, keyed.PATIENT, keyed.name_key("lead_impedance"))
        names = sorted({e for ch in self.channels for e in ch.electrodes})
        self._lead_z = {e: float(np.clip(2000 * np.exp(0.35 * g.standard_normal()), 1000, 6000)) for e in names}

        # An EEG scenario on the montage's EEG derivations (a carotid case): rendered at EEG_FS_HZ, interpolated to
        # the board's rate. Only with "eeg": every other draw stays what it was without it.
        self._eeg: tuple[Any, list[tuple[int, int]]] | None = None
        if self.scenario.get("eeg"):
            from ionm_hw.physiology.eeg import OngoingEeg

            src = OngoingEeg(self.scenario["eeg"], self.seed, self.EEG_FS_HZ)
            cols = [(ch.index, src.channel_names.index(ch.derivation)) for ch in self.channels
                    if ch.kind == "eeg" and ch.derivation in src.channel_names]
            if not cols:
                raise ValueError("the EEG scenario %r records none of the montage's EEG channels (kind 'eeg': %s)"
                                 % (src.name, ", ".join(ch.derivation for ch in self.channels if ch.kind == "eeg")
                                    or "none"))
            self._eeg = (src, cols)

        # A BAEP scenario on the montage's BAEP derivations (kind "baep": Cz-A1, Cz-A2), evoked by clicks
        self._baep: tuple[list[dict[str, Any]], list[tuple[int, str]]] | None = None
        if self.scenario.get("baep"):
            from ionm_hw.physiology import baep

            sc = baep.load_scenario(str(self.scenario["baep"]))
            baep_cols = [(ch.index, ch.electrodes[1]) for ch in self.channels if ch.kind == "baep"]
            if not baep_cols:
                raise ValueError("the BAEP scenario %r needs the montage's BAEP channels (kind 'baep': Cz-A1, Cz-A2)"
                                 % sc.get("name", self.scenario["baep"]))
            self._baep = (list(sc.get("events", [])), baep_cols)

        self._next = 0  # first sample not yet rendered
        self._pending: list[tuple[int, np.ndarray]] = []  # (start index, (L, n_channels) volts)
        self._train: list[Pulse] = []  # trigger pulses of the train not yet known to be complete
        # Per-train TcMEP truth, when asked for (sweeps.py does): last pulse index -> response name ->
        # (onset ms after the last pulse, peak-to-peak µV, area µV·ms) on the muscle's own channel.
        self.record_trials = False
        self.trials: dict[int, dict[str, tuple[float, float, float]]] = {}

    # ---------------------------------------------------------------- public API
    def render(self, first_index: int, n: int, pulses: Sequence[Pulse],
               channels: Sequence[int] | None = None) -> np.ndarray:  # fmt: skip
        """Differential input of each channel, volts, shape (n, n_channels) (or len(channels)), for samples
        [first_index, first_index + n). Blocks must not go back in time; gaps (overrun) are fine."""
        if n < 0:
            raise ValueError("render: n must be >= 0")
        if first_index < self._next:
            raise ValueError(f"render: block starts at {first_index}, before the end of the last ({self._next})")
        sel = list(range(len(self.channels))) if channels is None else [int(c) for c in channels]
        end = first_index + n
        out = self._background.render(first_index, n, sel)
        out += self._mains.render(first_index, n, sel)
        if self._eeg is not None:
            self._add_eeg(out, first_index, n, sel)
        self._cautery.render(out, first_index, sel)
        self._pops.render(out, first_index, sel)
        self._emg.render(out, first_index, sel)

        for p in sorted(pulses, key=lambda q: q.index):
            self._deliver(p)
        if self._train and self._train[-1].index + self._train_gap < end:
            self._close_train()  # no further pulse can join it: all pulses before `end` are known

        keep = []
        for start, arr in self._pending:
            lo, hi = max(start, first_index), min(start + len(arr), end)
            if lo < hi:
                out[lo - first_index : hi - first_index] += arr[lo - start : hi - start][:, sel]
            if start + len(arr) > end:
                keep.append((start, arr))
        self._pending = keep
        self._leadoff.apply(out, first_index, sel)
        self._next = end
        return out

    def leadoff(self, first_index: int, n: int) -> np.ndarray:
        """Per channel: an electrode of the channel is off at some sample of the block."""
        return self._leadoff.flags(first_index, n)

    OPEN_OHM = 1e12  # an electrode that is off: no lead-off current flows, the input goes to the rail

    def lead_impedance_ohm(self, index: int) -> np.ndarray:
        """(channel, 0 = P / 1 = N side) impedance of the recording electrodes at sample `index`, ohms: the
        patient's, whatever scripted electrode_impedance events impose, open while a leadoff event holds."""
        t = index / self.fs
        z = dict(self._lead_z)
        for e, on, off, ohms in self.script.electrode_impedances:
            if on <= t < off:
                z[e] = ohms
        for e, on, off in self.script.leadoffs:
            if on <= t < off:
                z[e] = self.OPEN_OHM
        return np.array([[z[ch.electrodes[0]], z[ch.electrodes[1]]] for ch in self.channels])

    def stim_impedance_ohm(self, output: int, index: int) -> float:
        """Impedance of the stimulating electrodes on `output` at sample `index`: patient-specific, drifting
        up slowly as the gel dries, and whatever scripted stim_electrode events impose."""
        t = index / self.fs
        if output == PROBE_OUTPUT:
            return self.probe.impedance_ohm(t)
        for o, on, off, z in self.script.stim_electrodes:
            if o == output and on <= t < off:
                return z
        base = self._stim_z[output]
        return base * (1 + 0.05 * np.sin(2 * np.pi * t / 600 + self._stim_z_phase[output]) + 0.15 * min(t / 3600, 1))

    def truth(self, t_s: float) -> dict[str, dict[str, float]]:
        """Scripted physiology at t_s: per response, amplitude and latency factors vs baseline. Slow wander
        (a few %) and trial-to-trial variability come on top and are not part of the truth."""
        return self.script.truth(t_s)

    def responses_of(self, output: int) -> list[str]:
        """Names of the responses a stimulus on `output` evokes (M-waves included)."""
        return [d.name for d in RESPONSES if d.source == output]

    def best_channel(self, response: str) -> int:
        """The channel on which `response` is largest in this patient (-1 if no channel records it)."""
        c = np.abs(self._coupling[response])
        return int(np.argmax(c)) if c.max() > 0 else -1

    # ---------------------------------------------------------------- internals
    def _add_eeg(self, out: np.ndarray, first_index: int, n: int, sel: list[int]) -> None:
        """The EEG scenario's signal (µV at EEG_FS_HZ, linearly interpolated) on the selected EEG channels, volts."""
        assert self._eeg is not None
        src, cols = self._eeg
        if n <= 0:
            return
        u = (first_index + np.arange(n)) * (self.EEG_FS_HZ / self.fs)  # positions in EEG samples
        i0 = int(np.floor(u[0]))
        m = int(np.floor(u[-1])) - i0 + 2
        x = src.samples(i0, m)
        grid = np.arange(i0, i0 + m)
        for ch, k in cols:
            if ch in sel:
                out[:, sel.index(ch)] += np.interp(u, grid, x[k]) * 1e-6

    def _deliver(self, p: Pulse) -> None:
        if p.output == self._auditory_output:
            self._deliver_click(p)
            return
        if p.output == TRIGGER_OUTPUT:
            if self._train and p.index - self._train[-1].index > self._train_gap:
                self._close_train()
            self._train.append(p)
            volts = float(self.scenario["stimulation"]["tcmep"]["voltage_v"])
            self._pending.append((p.index, self._stim_artefact(p, volts)))
            return
        if p.output == PROBE_OUTPUT:
            self._deliver_probe(p)
            return
        if p.output not in self._stim_z:
            raise ValueError(f"pulse on unknown output {p.output}")
        g = keyed.rng(self.seed, keyed.TRIAL, p.index, p.output + 2)
        t_s = p.index / self.fs
        recent = [i for i in self._recent.get(p.output, []) if p.index - i < TRAIN_WINDOW_S * self.fs]
        self._recent[p.output] = recent + [p.index]
        muscle = twitch(self.blockade.depth(t_s), len(recent) + 1)  # the k-th response of a train fades
        parts = []
        for name in self.responses_of(p.output):
            r = self.responses[name]
            a_s, l_s = self.script.factors(name, t_s)
            w_a, w_l = r.wander(t_s)
            z_amp, z_lat = _lognormal_mean1(g, r.d.trial_cv), g.standard_normal()  # always drawn: keyed order
            rec = RECRUITMENT[r.d.recruitment].fraction(p.current_ma, p.width_us, r.i50_scale)
            amp = r.amplitude_uv * float(a_s[0] * w_a[0]) * rec * z_amp * 1e-6
            if name.startswith("mwave"):  # a muscle's response: through the neuromuscular junction
                amp *= muscle
            scale = r.latency_scale * float(l_s[0] * w_l[0])
            shift = r.d.jitter_ms * z_lat + self.NEAR_THRESHOLD_DELAY_MS * (1 - rec)
            parts.append((name, amp, scale, shift, r.peaks))
        length = max([self.ARTEFACT_MS] + [extent_ms(pk, sc) + max(sh, 0) for _, _, sc, sh, pk in parts])
        arr = np.zeros((int(length * self.fs / 1000) + 1, len(self.channels)))
        art = self._stim_artefact(p, p.current_ma)
        arr[: len(art)] += art
        t_ms = np.arange(len(arr)) / self.fs * 1000
        for name, amp, scale, shift, peaks in parts:
            nz = self._nonzero[name]
            if amp != 0 and nz.size:
                arr[:, nz] += np.outer(amp * waveform(t_ms, peaks, scale, shift_ms=shift), self._coupling[name][nz])
        self._pending.append((p.index, arr))

    def _deliver_click(self, p: Pulse) -> None:
        """A click: the BAEP on the montage's BAEP derivations (Cz-A1, Cz-A2: the stimulated ear's mastoid is the
        ipsilateral one) from the scenario's "baep" (its wave V changes) at this click's level and polarity; no
        BAEP scenario or channel: heard, and nothing recorded."""
        if self._baep is None:
            return
        from ionm_hw.physiology import baep

        script, cols = self._baep
        t = np.array([p.index / self.fs])
        shift, gain, gain_i = baep.truth(t, script)
        # level: wave V later by CLICK_LATENCY_MS_PER_DB for each dB below the reference, smaller below it
        lvl_shift = self.CLICK_LATENCY_MS_PER_DB * (self.CLICK_REFERENCE_DB - p.level_db)
        lvl_gain = float(np.clip((p.level_db - self.CLICK_THRESHOLD_DB) /
                                 (self.CLICK_REFERENCE_DB - self.CLICK_THRESHOLD_DB), 0.0, 1.2))
        ms = np.arange(int(baep.POST_MS * self.fs / 1000) + 1) * 1000.0 / self.fs
        arr = np.zeros((ms.size, len(self.channels)))
        sign = 1.0 if p.rarefaction else -1.0
        ipsi = "A1" if p.ear == "L" else "A2"
        for ch, ref in cols:
            role = "Cz-Ai" if ref == ipsi else "Cz-Ac"
            resp = baep.responses(ms, role, shift + lvl_shift, gain * lvl_gain, gain_i * lvl_gain)[0]
            cm = baep.CM_UV * lvl_gain * np.sin(2 * np.pi * 1000.0 * ms) * np.exp(-0.5 * ((ms - 1.5) / 0.6) ** 2)
            arr[:, ch] = (resp + sign * cm) * 1e-6
        self._pending.append((p.index, arr))

    def _deliver_probe(self, p: Pulse) -> None:
        """A probe pulse: its artefact, and the CMAPs of the roots within reach of what it touches."""
        art = self._stim_artefact(p, p.current_ma)
        resp = self.probe.response(p.index, p.current_ma, len(self.channels),
                                   twitch(self.blockade.depth(p.index / self.fs), 1))
        if resp is None:
            self._pending.append((p.index, art))
            return
        arr = resp[0]
        if len(arr) < len(art):
            arr = np.vstack([arr, np.zeros((len(art) - len(arr), arr.shape[1]))])
        arr[: len(art)] += art
        self._pending.append((p.index, arr))

    def _stim_artefact(self, p: Pulse, drive: float) -> np.ndarray:
        """Stimulus artefact on every channel over ARTEFACT_MS, volts; drive in mA (V for the TcMEP stimulator)."""
        n = int(self.ARTEFACT_MS * self.fs / 1000) + 1
        key = (n, p.width_us, p.biphasic)
        if key not in self._artefact_shapes:
            self._artefact_shapes[key] = artefact_shape(n, self.fs, p.width_us, p.biphasic, self._artefact_tau_ms)
        pulse, tail = self._artefact_shapes[key]
        spike_c, tail_c = self._artefact[p.output]
        return (np.outer(pulse, spike_c) + np.outer(tail, tail_c)) * drive * 1e-6

    def _close_train(self) -> None:
        train, self._train = self._train, []
        last = train[-1]
        ipi_ms = float(np.mean(np.diff([q.index for q in train]))) / self.fs * 1000 if len(train) > 1 else 3.0
        drive = train_drive(len(train), ipi_ms)
        volts = float(self.scenario["stimulation"]["tcmep"]["voltage_v"])
        g = keyed.rng(self.seed, keyed.TRIAL, last.index, 1)
        t_s = last.index / self.fs
        parts = []
        for name in self.responses_of(TRIGGER_OUTPUT):
            r = self.responses[name]
            a_s, l_s = self.script.factors(name, t_s)
            w_a, w_l = r.wander(t_s)
            # The reference trial CV is of the whole peak-to-peak: the phase jitter and the wander supply part.
            cv = np.sqrt(max(r.d.trial_cv**2 - self.MEP_PHASE_PP_CV**2 - r.d.wander**2, 0.0))
            z_amp, z_lat = _lognormal_mean1(g, cv), g.standard_normal()
            rel = np.exp(self.MEP_PHASE_JITTER * g.standard_normal(6))
            amp = r.amplitude_uv * float(a_s[0] * w_a[0]) * mep_recruitment(volts, drive, r.threshold_v) * z_amp
            amp *= twitch(self.blockade.depth(t_s), 1)  # the muscle's response through the junction
            scale = r.latency_scale * float(l_s[0] * w_l[0])
            parts.append((name, amp * 1e-6, scale, r.d.jitter_ms * z_lat, rel, r.peaks))
        length = max(extent_ms(pk, sc) + abs(sh) for _, _, sc, sh, _, pk in parts)
        t_ms = np.arange(int(length * self.fs / 1000) + 1) / self.fs * 1000
        arr = np.zeros((len(t_ms), len(self.channels)))
        record: dict[str, tuple[float, float, float]] = {}
        for name, amp, scale, shift, rel, peaks in parts:
            w = amp * waveform(t_ms, peaks, scale, rel_jitter=rel, shift_ms=shift)
            # Nothing may appear before the train is known to be complete (block-size independence);
            # onsets (≥ ~18 ms) are far beyond the longest inter-pulse gap, so this only trims gaussian tails.
            w[: self._train_gap + 1] = 0.0
            arr[:, self._nonzero[name]] += np.outer(w, self._coupling[name][self._nonzero[name]])
            if self.record_trials and self._nonzero[name].size:
                seen = w * self._coupling[name][self.best_channel(name)] * 1e6  # µV on the muscle's channel
                mag = np.abs(seen)
                onset = float(t_ms[np.argmax(mag >= self.MEP_ONSET_FRACTION * mag.max())]) if mag.max() > 0 else np.nan
                record[name] = (onset, float(np.ptp(seen)), float(mag.sum() / self.fs * 1000))
        if self.record_trials:
            self.trials[last.index] = record
        self._pending.append((last.index, arr))
