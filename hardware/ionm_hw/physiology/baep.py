"""Brainstem auditory evoked potentials (BAEP) to clicks, with scripted changes of wave V, for scoring BAEP
monitoring in posterior-fossa surgery (microvascular decompression, cerebellopontine-angle tumours).

The stimulus: 100 µs clicks at RATE_HZ (21.1 Hz: inside the clinical 10-50 Hz and not a divisor of the mains),
alternating rarefaction / condensation, the other ear masked with white noise. Each sweep runs from PRE_MS
before the click to POST_MS after it at FS_HZ, as recorded through a 100-3000 Hz amplifier band.

Per channel the response is a sum of vertex-positive Gaussian waves (I, III, V, with the negative trough SN10
after V) at normal latencies (I 1.7 ms, III 3.9 ms, V 5.7 ms; amplitudes a few tenths of a µV):
- "Cz-Ai" (vertex to the stimulated ear's mastoid): waves I, III and V;
- "Cz-Ac" (vertex to the contralateral, reference ear's mastoid): no wave I, a smaller III, V slightly later.
Added per sweep: a cochlear microphonic of alternating sign (cancels in the average), background EEG/EMG of
NOISE_UV rms in the band (so hundreds to thousands of sweeps must be averaged), and, on ARTEFACT_RATE of the
sweeps, an EMG/movement burst of tens of µV (for artefact rejection).

Script (per event; linear ramps, 1 before onset, the scripted level after onset + ramp_s, back to 1 over
recovery_s from end_s):
- {"kind": "retraction", "onset_s", "ramp_s", "end_s", "recovery_s", "latency_ms", "amplitude"}: cerebellar
  retraction stretching the VIIIth nerve: waves III and V later by latency_ms and their amplitude scaled by
  `amplitude`; wave I (cochlear) unchanged;
- {"kind": "loss", ...}: the same with amplitude 0 by default (a nerve or its artery injured: wave V lost);
  "wave_i" (default 1) scales wave I as well (a cochlear loss takes it too).

render(...) returns µV [n_channels, n_sweeps, n_samples] and the truth per sweep (wave V latency shift, ms,
and amplitude gain). Scenarios: hardware/scenarios/baep/NAME.json.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from scipy import signal

from ionm_hw.physiology import keyed

BAEP = 13  # keyed stream of this module
FS_HZ = 20000.0
PRE_MS = 1.0
POST_MS = 10.0
RATE_HZ = 21.1
CLICK_US = 100.0
BAND_HZ = (100.0, 3000.0)
NOISE_UV = 3.0  # rms background in the band, per sweep
ARTEFACT_RATE = 0.01
ARTEFACT_UV = (30.0, 120.0)
CM_UV = 1.0  # cochlear microphonic, sign follows the click polarity
WARM = 200  # samples of filter run-in discarded before each sweep's noise
BLOCK = 1024  # sweeps per keyed noise block (any block can be regenerated alone)
# (latency ms, amplitude µV, width ms) per wave, per channel
WAVES: dict[str, dict[str, tuple[float, float, float]]] = {
    "Cz-Ai": {"I": (1.7, 0.25, 0.15), "III": (3.9, 0.25, 0.18), "V": (5.7, 0.45, 0.25), "SN10": (6.8, -0.35, 0.4)},
    "Cz-Ac": {"III": (4.0, 0.12, 0.18), "V": (5.85, 0.40, 0.25), "SN10": (6.95, -0.30, 0.4)},
}
CHANGED = ("III", "V", "SN10")  # the waves the VIIIth nerve / brainstem changes move


@dataclass
class BaepRecording:
    fs_hz: float
    pre_samples: int
    rate_hz: float
    sweeps_uv: np.ndarray  # [n_channels, n_sweeps, n_samples]
    channel_names: list[str]
    polarity: np.ndarray  # +1 rarefaction, -1 condensation, per sweep
    truth_latency_ms: np.ndarray  # wave V latency shift per sweep
    truth_amplitude: np.ndarray  # wave V amplitude gain per sweep

    @property
    def t_s(self) -> np.ndarray:
        return np.arange(self.sweeps_uv.shape[1]) / self.rate_hz


def _course(t: np.ndarray, ev: dict[str, Any], level: float) -> np.ndarray:
    on, ramp = float(ev["onset_s"]), max(float(ev.get("ramp_s", 1.0)), 1e-3)
    end = float(ev.get("end_s", np.inf))
    rec = max(float(ev.get("recovery_s", 30.0)), 1e-3)
    frac = np.clip((t - on) / ramp, 0, 1) * (1 - np.clip((t - end) / rec, 0, 1))
    return 1 + (level - 1) * frac


def truth(t: np.ndarray, script: list[dict[str, Any]]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per time: wave V latency shift (ms), III/V amplitude gain, wave I gain."""
    shift = np.zeros(t.size)
    gain = np.ones(t.size)
    gain_i = np.ones(t.size)
    for ev in script:
        kind = ev.get("kind")
        if kind not in ("retraction", "loss"):
            raise ValueError("unknown BAEP event kind %r (retraction, loss)" % kind)
        level = float(ev.get("amplitude", 0.0 if kind == "loss" else 1.0))
        shift += _course(t, ev, 1.0 + float(ev.get("latency_ms", 0.0))) - 1.0
        gain *= _course(t, ev, level)
        gain_i *= _course(t, ev, float(ev.get("wave_i", 1.0)))
    return shift, gain, gain_i


def responses(ms: np.ndarray, channel: str, shift: np.ndarray, gain: np.ndarray, gain_i: np.ndarray) -> np.ndarray:
    """The noise-free response [n_sweeps, n_samples] at times `ms` after the click."""
    out = np.zeros((shift.size, ms.size))
    for wave, (lat, amp, width) in WAVES[channel].items():
        changed = wave in CHANGED
        lat_s = lat + (shift[:, None] if changed else 0.0)
        g = gain if changed else gain_i
        out += (amp * g)[:, None] * np.exp(-0.5 * ((ms[None, :] - lat_s) / width) ** 2)
    return out


def render(duration_s: float, script: list[dict[str, Any]], seed: int,
           channel_names: tuple[str, ...] = ("Cz-Ai",), noise_uv: float = NOISE_UV,
           artefact_rate: float = ARTEFACT_RATE, rate_hz: float = RATE_HZ) -> BaepRecording:
    n_sweeps = int(duration_s * rate_hz)
    pre = int(round(PRE_MS * FS_HZ / 1000))
    n = pre + int(round(POST_MS * FS_HZ / 1000))
    ms = (np.arange(n) - pre) * 1000.0 / FS_HZ
    t = np.arange(n_sweeps) / rate_hz
    shift, gain, gain_i = truth(t, script)
    polarity = np.where(np.arange(n_sweeps) % 2 == 0, 1.0, -1.0)
    sos = signal.butter(2, BAND_HZ, btype="bandpass", fs=FS_HZ, output="sos")
    cm = CM_UV * np.sin(2 * np.pi * 1000.0 * ms) * np.exp(-0.5 * ((ms - 1.5) / 0.6) ** 2)
    out = np.empty((len(channel_names), n_sweeps, n))
    for c, name in enumerate(channel_names):
        out[c] = responses(ms, name, shift, gain, gain_i) + polarity[:, None] * cm[None, :]
        for b0 in range(0, n_sweeps, BLOCK):
            b1 = min(n_sweeps, b0 + BLOCK)
            g = keyed.rng(seed, BAEP, c, b0 // BLOCK)
            w = g.standard_normal((b1 - b0, n + WARM))
            y = signal.sosfilt(sos, w, axis=1)[:, WARM:]
            out[c, b0:b1] += noise_uv * y / max(float(np.std(y)), 1e-12)
            hit = np.flatnonzero(g.random(b1 - b0) < artefact_rate)
            for i in hit:
                amp = g.uniform(*ARTEFACT_UV)
                burst = signal.sosfilt(sos, g.standard_normal(n + WARM))[WARM:]
                out[c, b0 + i] += amp * burst / max(float(np.std(burst)), 1e-12)
    return BaepRecording(FS_HZ, pre, rate_hz, out, list(channel_names), polarity, shift, gain)


def scenarios_dir() -> Path:
    from ionm_hw.physiology.scenario import scenarios_dir as sweep_scenarios

    return sweep_scenarios() / "baep"


def scenario_names() -> list[str]:
    return sorted(p.stem for p in scenarios_dir().glob("*.json"))


def load_scenario(name_or_path: str) -> dict[str, Any]:
    path = Path(name_or_path)
    if not (path.suffix == ".json" and path.is_file()):
        path = scenarios_dir() / f"{name_or_path}.json"
    if not path.is_file():
        raise FileNotFoundError(f"no BAEP scenario {name_or_path!r}; available: {', '.join(scenario_names())}")
    with open(path, encoding="utf-8") as fh:
        data: dict[str, Any] = json.load(fh)
    return data


def render_scenario(name_or_path: str, seed: int, **kw: Any) -> BaepRecording:
    sc = load_scenario(name_or_path)
    return render(float(sc["duration_s"]), sc["events"], seed, tuple(sc.get("channels", ["Cz-Ai"])), **kw)
