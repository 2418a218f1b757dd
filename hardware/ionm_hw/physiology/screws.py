"""Triggered EMG from the handheld probe (stimulator.probe): pedicle screws near the nerve roots, and what a
probe pulse on one of them evokes in each muscle channel.

A screw (scenario key "screws") sits `distance_mm` from its root (level and side). The current that
recruits half of the root's motor fibres follows the current-distance law of a point source,
I50 = I_CONTACT_MA + K_MA_PER_MM2 x d^2: a screw touching the root (a breach) responds near 1-2 mA, an intact
pedicle wall (2-3 mm of bone) above 8-10 mA, as in Raynor 2007 (lumbar: < 4 mA likely breach, 4-8 mA possible,
> 8 mA none). Each muscle of the root's myotome (MYOTOMES; a secondary muscle needs `factor` times more) gives
a compound muscle action potential whose size follows a logistic recruitment curve of the delivered current,
fraction = 1 / (1 + exp(-(I - I50) / s)), s = SLOPE_REL x I50 + SLOPE_ABS_MA, to its maximum peak-to-peak
(drawn per muscle, 300-2000 uV). Trial to trial the excitability (I50, log-sd I50_TRIAL_SD) and the size
(CV AMP_TRIAL_CV) vary, so a threshold is a probability, as on a real root.

A screw may instead give the I50 of each channel outright ("thresholds_ma": {derivation: mA}), which tests
use to hunt against known values. The probe touches whatever the scripted "probe" events say ({"type":
"probe", "target": screw name, "onset_s", "end_s"}); the rest of the time it rests on muscle near the field
("tissue": no root within reach, no response) or, with target "air", touches nothing (open circuit).

threshold_ma(target, channel, criterion_uv) is the truth a hunt is judged against: the current at which the
median response on the channel reaches the criterion.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ionm_hw.physiology import keyed

PROBE_OUTPUT = 4  # board.json stimulator.probe.output
I_CONTACT_MA = 1.2  # I50 of a root touched by the screw
K_MA_PER_MM2 = 2.0  # current-distance constant (mA per mm^2)
SLOPE_REL = 0.04  # logistic spread relative to I50
SLOPE_ABS_MA = 0.05
I50_TRIAL_SD = 0.02  # trial-to-trial excitability (log-sd of I50)
AMP_TRIAL_CV = 0.15  # trial-to-trial CMAP size
TISSUE_OHM = (1200.0, 2500.0)  # probe tip on a screw or on muscle, to the return needle
AIR_OHM = 1e12

# Myotomes: root -> [(muscle, factor)]; factor multiplies the root's I50 for a secondary muscle.
MYOTOMES: dict[str, list[tuple[str, float]]] = {
    "L2": [("VM", 1.3)],
    "L3": [("VM", 1.0)],
    "L4": [("VM", 1.4), ("TA", 1.0)],
    "L5": [("TA", 1.3), ("EHL", 1.0), ("AH", 1.6)],
    "S1": [("AH", 1.0), ("GAS", 1.0)],
    **{f"T{k}": [("RA", 1.0)] for k in range(6, 13)},
}
# Onset latency (ms) of a root-evoked CMAP per muscle (the motor axon's length from the foramen).
LATENCY_MS = {"VM": 9.0, "TA": 13.0, "EHL": 15.0, "AH": 19.0, "GAS": 14.0, "RA": 6.0}


@dataclass
class Screw:
    name: str
    root: str
    side: str
    distance_mm: float
    thresholds_ma: dict[str, float] = field(default_factory=dict)  # derivation -> I50, when given outright

    @property
    def i50_ma(self) -> float:
        return I_CONTACT_MA + K_MA_PER_MM2 * self.distance_mm**2


def muscle_of(derivation: str) -> tuple[str, str] | None:
    """("TA", "L") of a muscle derivation such as "TAL1-TAL2"; None for another channel."""
    e = derivation.split("-")[0].rstrip("0123456789")
    for m in sorted(LATENCY_MS, key=len, reverse=True):
        if e.startswith(m) and e[len(m):] in ("L", "R"):
            return m, e[len(m):]
    return None


class ProbeModel:
    """The screws of a scenario, the probe's contact over time, and the responses a probe pulse evokes."""

    def __init__(self, scenario: dict[str, Any], channels: list[Any], seed: int, fs: float) -> None:
        self.seed = seed
        self.fs = fs
        self.channels = channels
        self.screws = {
            s["name"]: Screw(str(s["name"]), str(s.get("root", "")), str(s.get("side", "L")),
                             float(s.get("distance_mm", 5.0)),
                             {k: float(v) for k, v in s.get("thresholds_ma", {}).items()})
            for s in scenario.get("screws", [])
        }  # fmt: skip
        self.contacts: list[tuple[str, float, float]] = [
            (str(ev["target"]), float(ev["onset_s"]), float(ev.get("end_s", math.inf)))
            for ev in scenario.get("events", []) if ev.get("type") == "probe"
        ]  # fmt: skip
        for target, _, _ in self.contacts:
            if target not in self.screws and target not in ("tissue", "air"):
                raise ValueError(f"probe event: no screw {target!r} (screws: {sorted(self.screws)}, tissue, air)")
        g = keyed.rng(seed, keyed.PATIENT, keyed.name_key("probe"))
        self.contact_ohm = {name: float(g.uniform(*TISSUE_OHM)) for name in ["tissue", *sorted(self.screws)]}
        self.amp_uv = {}  # channel -> maximal CMAP peak to peak, µV
        for ch in channels:
            mg = keyed.rng(seed, keyed.PATIENT, keyed.name_key("cmap/" + ch.derivation))
            self.amp_uv[ch.index] = float(np.clip(800 * np.exp(0.5 * mg.standard_normal()), 300, 2000))
        self._shapes: dict[int, tuple[np.ndarray, float]] = {}

    # ---------------------------------------------------------------- contact and truth
    def target(self, t_s: float) -> str:
        for name, on, off in self.contacts:
            if on <= t_s < off:
                return name
        return "tissue"

    def impedance_ohm(self, t_s: float) -> float:
        target = self.target(t_s)
        return AIR_OHM if target == "air" else self.contact_ohm[target]

    def i50_ma(self, target: str, channel: int) -> float | None:
        """Half-recruitment current of `channel`'s muscle from the probe on `target`; None: no response."""
        screw = self.screws.get(target)
        if screw is None:
            return None
        ch = self.channels[channel]
        if ch.derivation in screw.thresholds_ma:
            return screw.thresholds_ma[ch.derivation]
        if screw.thresholds_ma:
            return None  # given outright: only the channels listed respond
        mus = muscle_of(ch.derivation)
        if mus is None or mus[1] != screw.side:
            return None
        for muscle, factor in MYOTOMES.get(screw.root, []):
            if muscle == mus[0]:
                return screw.i50_ma * factor
        return None

    def threshold_ma(self, target: str, channel: int, criterion_uv: float) -> float | None:
        """The current at which the median response on `channel` reaches criterion_uv peak to peak (None:
        never, within any current)."""
        i50 = self.i50_ma(target, channel)
        if i50 is None:
            return None
        f = criterion_uv / self.amp_uv[channel]
        if f >= 1:
            return None
        return i50 + self.slope_ma(i50) * math.log(f / (1 - f))

    @staticmethod
    def slope_ma(i50: float) -> float:
        return SLOPE_REL * i50 + SLOPE_ABS_MA

    # ---------------------------------------------------------------- responses
    def _shape(self, channel: int) -> tuple[np.ndarray, float]:
        """Unit peak-to-peak CMAP on `channel` (samples from the pulse) and its latency."""
        if channel not in self._shapes:
            mus = muscle_of(self.channels[channel].derivation)
            lat = LATENCY_MS.get(mus[0] if mus else "", 12.0)
            t = np.arange(int((lat + 25) * self.fs / 1000)) / self.fs * 1000
            w = -np.exp(-0.5 * ((t - lat - 2.0) / 1.2) ** 2) + 0.8 * np.exp(-0.5 * ((t - lat - 5.5) / 2.0) ** 2)
            self._shapes[channel] = (w / np.ptp(w), lat)
        return self._shapes[channel]

    def response(self, index: int, current_ma: float, n_channels: int,
                 junction: float = 1.0) -> tuple[np.ndarray, dict[int, float]] | None:
        """Volts (samples from the pulse, channels) a probe pulse of current_ma at sample `index` evokes, and
        the peak-to-peak µV per responding channel; None when nothing responds. junction: the fraction of the
        muscle's response that neuromuscular blockade leaves (blockade.twitch)."""
        target = self.target(index / self.fs)
        if target not in self.screws:
            return None
        g = keyed.rng(self.seed, keyed.TRIAL, index, PROBE_OUTPUT + 2)
        parts = []
        for ch in range(n_channels):
            i50 = self.i50_ma(target, ch)
            z_thr, z_amp = g.standard_normal(), g.standard_normal()  # always drawn: keyed order
            if i50 is None:
                continue
            i50 *= math.exp(I50_TRIAL_SD * z_thr)
            x = (current_ma - i50) / self.slope_ma(i50)
            frac = 1.0 / (1.0 + math.exp(-x)) if x > -50 else 0.0
            s = math.sqrt(math.log1p(AMP_TRIAL_CV**2))
            p2p = self.amp_uv[ch] * frac * math.exp(s * z_amp - 0.5 * s * s) * junction
            if p2p > 0.01:
                parts.append((ch, p2p))
        if not parts:
            return None
        length = max(len(self._shape(ch)[0]) for ch, _ in parts)
        arr = np.zeros((length, n_channels))
        for ch, p2p in parts:
            w, _ = self._shape(ch)
            arr[: len(w), ch] += w * p2p * 1e-6
        return arr, dict(parts)
