"""Scalp EEG under anaesthesia, with carotid-clamp ischaemia and anaesthetic depth, for scoring EEG monitoring.

Each channel (a bipolar 10-20 derivation) is the sum of band-limited Gaussian rhythms, each with its own
random phase per channel: delta (1-4 Hz), theta (4-8), alpha (8-13; under light propofol/volatile anaesthesia
the dominant, frontal alpha), beta (13-30), a 1/f background and 1 µV of amplifier noise. Their gains follow
the script over time, per hemisphere (odd-numbered electrodes left, even right):

- {"kind": "ischaemia", "side": "L"|"R", "onset_s", "ramp_s", "end_s", "recovery_s", "alpha", "delta"}:
  a clamp that the circle of Willis does not compensate: on that hemisphere alpha and beta fall to `alpha`
  (e.g. 0.35) and delta rises to `delta` (e.g. 1.8) over ramp_s; from end_s (a shunt) they return over
  recovery_s. One-sided.
- {"kind": "anaesthetic", "onset_s", "ramp_s", "end_s", "recovery_s", "alpha", "delta", "suppression"}:
  a bolus: both hemispheres slow alike, and burst suppression appears, the fraction of time suppressed rising
  to `suppression` (bursts 0.5-2 s, suppressions in between, at 1 µV plus amplifier noise).

Artefacts of the operating room, added on top (what the monitor must reject, never judge):

- {"kind": "cautery", "onset_s", "duration_s", "side": "L"|"R"|absent (both), "uv"}: electrocautery picked
  up by the electrodes, broadband noise of `uv` rms (default 300 µV) over the whole band.
- {"kind": "pop", "t_s", "channel", "uv", "tau_s"}: an electrode pop on one channel, a step of `uv` (default
  500 µV) decaying with time constant tau_s (default 0.3 s).

render(...) returns µV [n_channels, n_samples] and the truth per second: per hemisphere the alpha and delta
gains, and the suppression fraction. Scenarios: hardware/scenarios/eeg/NAME.json.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from scipy import signal

from ionm_hw.physiology import keyed

EEG = 12  # keyed stream of this module
RHYTHMS_UV = {"delta": 14.0, "theta": 7.0, "alpha": 18.0, "beta": 5.0}  # rms per rhythm at baseline
BANDS_HZ = {"delta": (1.0, 4.0), "theta": (4.0, 8.0), "alpha": (8.0, 13.0), "beta": (13.0, 30.0)}
PINK_UV = 4.0
AMPLIFIER_UV = 1.0
SUPPRESSED_UV = 1.0


@dataclass
class EegRecording:
    fs_hz: float
    samples_uv: np.ndarray  # [n_channels, n_samples]
    channel_names: list[str]
    truth_t_s: np.ndarray  # one row per second
    truth: dict[str, np.ndarray]  # "alpha_L", "alpha_R", "delta_L", "delta_R", "suppression", "artefact"


def side_of(name: str) -> str | None:
    nums = [int(n) for n in re.findall(r"[A-Za-z]+(\d+)", name)]
    sides = {"L" if n % 2 else "R" for n in nums}
    return sides.pop() if len(sides) == 1 else None


def _course(t: np.ndarray, ev: dict[str, Any], level: float) -> np.ndarray:
    """1 before onset, `level` after the ramp, back to 1 after end_s + recovery_s (linear ramps)."""
    on, ramp = float(ev["onset_s"]), max(float(ev.get("ramp_s", 10.0)), 1e-3)
    end = float(ev.get("end_s", np.inf))
    rec = max(float(ev.get("recovery_s", 30.0)), 1e-3)
    frac = np.clip((t - on) / ramp, 0, 1) * (1 - np.clip((t - end) / rec, 0, 1))
    return 1 + (level - 1) * frac


def render(duration_s: float, fs_hz: float, channel_names: list[str], script: list[dict[str, Any]],
           seed: int) -> EegRecording:
    n = int(round(duration_s * fs_hz))
    t = np.arange(n) / fs_hz
    sides = [side_of(c) for c in channel_names]
    gains = {(r, s): np.ones(n) for r in RHYTHMS_UV for s in "LR"}
    suppression = np.zeros(n)
    for ev in script:
        kind = ev.get("kind")
        if kind == "ischaemia":
            s = str(ev["side"])
            for r, level in (("alpha", ev.get("alpha", 0.35)), ("beta", ev.get("alpha", 0.35)),
                             ("delta", ev.get("delta", 1.8))):
                gains[(r, s)] *= _course(t, ev, float(level))
        elif kind == "anaesthetic":
            for s in "LR":
                for r, level in (("alpha", ev.get("alpha", 0.5)), ("beta", ev.get("alpha", 0.5)),
                                 ("delta", ev.get("delta", 2.0))):
                    gains[(r, s)] *= _course(t, ev, float(level))
            suppression = np.maximum(suppression, 1 - _course(t, ev, 1 - float(ev.get("suppression", 0.0))))
        elif kind not in ("cautery", "pop"):
            raise ValueError("unknown EEG event kind %r (ischaemia, anaesthetic, cautery, pop)" % kind)
    # Burst suppression: alternate bursts (0.5-2 s) and suppressions whose lengths keep the scripted fraction.
    g = keyed.rng(seed, EEG, 1)
    envelope = np.ones(n)
    i = 0
    while i < n:
        frac = float(suppression[i])
        burst = g.uniform(0.5, 2.0)
        sup = burst * frac / max(1 - frac, 1e-3) if frac > 0.02 else 0.0
        b1 = min(n, i + int(burst * fs_hz))
        s1 = min(n, b1 + int(sup * fs_hz))
        envelope[b1:s1] = 0.0
        i = s1 if s1 > b1 else b1
    out = np.zeros((len(channel_names), n))
    for c in range(len(channel_names)):
        side = sides[c] or "L"
        for k, (r, rms) in enumerate(RHYTHMS_UV.items()):
            w = keyed.rng(seed, EEG, 2, c, k).standard_normal(n)
            sos = signal.butter(4, BANDS_HZ[r], btype="bandpass", fs=fs_hz, output="sos")
            y = signal.sosfiltfilt(sos, w)
            y *= rms / max(float(np.std(y)), 1e-12)
            out[c] += y * gains[(r, side)]
        pink = np.cumsum(keyed.rng(seed, EEG, 3, c).standard_normal(n))
        pink = signal.sosfiltfilt(signal.butter(1, 0.5, btype="highpass", fs=fs_hz, output="sos"), pink)
        out[c] += PINK_UV * pink / max(float(np.std(pink)), 1e-12)
        out[c] = out[c] * envelope + SUPPRESSED_UV * (1 - envelope) * keyed.rng(seed, EEG, 4, c).standard_normal(n)
        out[c] += AMPLIFIER_UV * keyed.rng(seed, EEG, 5, c).standard_normal(n)
    artefact = np.zeros(n, dtype=bool)
    for k, ev in enumerate(script):
        if ev.get("kind") == "cautery":
            i0 = int(round(float(ev["onset_s"]) * fs_hz))
            i1 = min(n, i0 + int(round(float(ev.get("duration_s", 2.0)) * fs_hz)))
            for c in range(len(channel_names)):
                if ev.get("side") in (None, sides[c]) and i1 > i0:
                    out[c, i0:i1] += float(ev.get("uv", 300.0)) * keyed.rng(seed, EEG, 6, k, c).standard_normal(i1 - i0)
            artefact[i0:i1] = True
        elif ev.get("kind") == "pop":
            c = list(channel_names).index(str(ev["channel"]))
            i0 = int(round(float(ev["t_s"]) * fs_hz))
            tail = t[i0:] - t[i0]
            out[c, i0:] += float(ev.get("uv", 500.0)) * np.exp(-tail / float(ev.get("tau_s", 0.3)))
            artefact[i0:min(n, i0 + int(5 * float(ev.get("tau_s", 0.3)) * fs_hz))] = True
    secs = np.arange(0, n, int(fs_hz))
    truth = {"alpha_L": gains[("alpha", "L")][secs], "alpha_R": gains[("alpha", "R")][secs],
             "delta_L": gains[("delta", "L")][secs], "delta_R": gains[("delta", "R")][secs],
             "suppression": suppression[secs],
             "artefact": np.array([artefact[i:i + int(fs_hz)].any() for i in secs])}
    return EegRecording(fs_hz, out, list(channel_names), t[secs], truth)


def scenarios_dir() -> Path:
    from ionm_hw.physiology.scenario import scenarios_dir as sweep_scenarios

    return sweep_scenarios() / "eeg"


def scenario_names() -> list[str]:
    return sorted(p.stem for p in scenarios_dir().glob("*.json"))


def load_scenario(name_or_path: str) -> dict[str, Any]:
    path = Path(name_or_path)
    if not (path.suffix == ".json" and path.is_file()):
        path = scenarios_dir() / f"{name_or_path}.json"
    if not path.is_file():
        raise FileNotFoundError(f"no EEG scenario {name_or_path!r}; available: {', '.join(scenario_names())}")
    with open(path, encoding="utf-8") as fh:
        data: dict[str, Any] = json.load(fh)
    return data


def render_scenario(name_or_path: str, seed: int, fs_hz: float = 250.0) -> EegRecording:
    sc = load_scenario(name_or_path)
    return render(float(sc["duration_s"]), fs_hz, list(sc["channels"]), sc["events"], seed)


CONTINUATION_S = 120.0  # past the scenario's end the EEG goes on without events, rendered this much at a time


class OngoingEeg:
    """An EEG scenario as a signal without end, for a source that asks for any stretch of it in time order (the
    virtual patient, whose board-rate samples interpolate it): the scenario rendered whole at fs_hz, then
    CONTINUATION_S at a time with the same channels and no event, each from a seed of its own."""

    def __init__(self, scenario: str | dict[str, Any], seed: int, fs_hz: float = 250.0) -> None:
        sc = load_scenario(scenario) if isinstance(scenario, str) else scenario
        self.name = str(sc.get("name", scenario))
        self.seed, self.fs = int(seed), float(fs_hz)
        rec = render(float(sc["duration_s"]), self.fs, list(sc["channels"]), list(sc.get("events", [])), self.seed)
        self.channel_names = list(rec.channel_names)
        self.truth = rec.truth
        self._head = rec.samples_uv
        self._tail: tuple[int, np.ndarray] | None = None

    def samples(self, i0: int, n: int) -> np.ndarray:
        """µV [n_channels, n] for the EEG samples i0 .. i0 + n (i0 >= 0)."""
        out = np.empty((len(self.channel_names), n))
        done, end = 0, self._head.shape[1]
        while done < n:
            i = i0 + done
            if i < end:
                k = min(n - done, end - i)
                out[:, done:done + k] = self._head[:, i:i + k]
            else:
                per = int(CONTINUATION_S * self.fs)
                start = end + (i - end) // per * per
                if self._tail is None or self._tail[0] != start:
                    rec = render(CONTINUATION_S, self.fs, self.channel_names, [], self.seed * 1000 + 11 + start // per)
                    self._tail = (start, rec.samples_uv)
                j = i - start
                k = min(n - done, per - j)
                out[:, done:done + k] = self._tail[1][:, j:j + k]
            done += k
        return out
