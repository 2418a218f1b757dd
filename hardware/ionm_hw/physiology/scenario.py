"""Scenario files (hardware/scenarios/NAME.json) and the scripted timeline they describe.

A scenario is a JSON object; every key but "name" is optional (DEFAULTS fill the rest):

  name, description
  duration_s        length of the case, s
  baseline_end_s    baselines are taken before this time, s
  mains_hz          50 or 60
  stimulation       suggested plan: {"ssep": {"rate_hz", "outputs": {"0": {"current_ma", "width_us",
                    "waveform"}, ...}}, "tcmep": {"train_pulses", "ipi_ms", "interval_s", "voltage_v"}}
                    (each SSEP output at rate_hz, outputs staggered; voltage_v is the external TcMEP
                    stimulator's setting, which the board cannot see)
  noise             {"eeg_scale", "emg_scale", "floor_scale" (background; 0 = none), "mains_uv",
                    "cautery_per_min", "cautery_s": [lo, hi],
                    "cautery_uv": [lo, hi], "pops_per_min", "emg_bursts_per_min"}
  patient           overrides of drawn parameters: {"height_factor"}
  montage           a full replacement of the default montage (see montage.py), or the name of a procedure
                    montage there ("carotid")
  eeg               an EEG scenario (hardware/scenarios/eeg/NAME.json, physiology/eeg.py) rendered on the
                    montage's channels whose derivation it records (F3-C3, ...), from case time 0
  baep              a BAEP scenario (hardware/scenarios/baep/NAME.json, physiology/baep.py): its wave V changes
                    in the BAEP every click of the earphones evokes on the montage's BAEP channels (Cz-A1, Cz-A2)
  events            scripted events, times in seconds from the start of the case:
    {"type": "change", "targets": [glob over response names], "onset_s", "ramp_s",
     "amplitude": factor, "latency": factor, "recovery": {"onset_s", "ramp_s", "amplitude", "latency"}}
        amplitude/latency factors vs baseline reached linearly over ramp_s (then, optionally, moved to
        the recovery factors); several changes on one response multiply
    {"type": "leadoff", "electrode": "CPz", "onset_s", "end_s"}      (no end_s: stays off)
    {"type": "cautery", "onset_s", "duration_s", "amplitude_uv"}      (a scripted burst)
    {"type": "stim_electrode", "output": 2, "onset_s", "end_s", "impedance_ohm"}
    {"type": "electrode_impedance", "electrode": "Fz", "onset_s", "end_s", "impedance_ohm"}  (a recording
                    electrode drying out or badly placed: what the board's impedance check measures)
    {"type": "probe", "target": screw name, "tissue" or "air", "onset_s", "end_s"}  (what the handheld
                    probe touches; "tissue" when no event holds)
    {"type": "relaxant", "onset_s", "peak_depth", "onset_to_peak_s", "recovery_tau_s"}  (a neuromuscular
                    blocker: muscle responses depressed and fading, physiology/blockade.py)
  screws            pedicle screws for the probe (physiology/screws.py): [{"name": "L4 left", "root": "L4",
                    "side": "L", "distance_mm": 2.5}] or, instead of root and distance, "thresholds_ma":
                    {derivation: half-recruitment mA}
  expected          what the scenario must produce (checked by tests/test_scenarios.py):
    {"responses": [{"targets": [...], "window_s": [t0, t1], "amplitude": [lo, hi], "latency": [lo, hi]}],
     "min_amplitude": {"targets": [...], "value": v}, "leadoff": {...}, "cautery_bursts_per_min": [lo, hi]}

load_scenario returns a fresh dict each time: benchmarks may change it (e.g. an injury's amplitude or
onset) before giving it to VirtualPatient, which honours whatever it holds.
"""

from __future__ import annotations

import copy
import fnmatch
import json
from pathlib import Path
from typing import Any

import numpy as np

from ionm_hw.physiology.responses import RESPONSE_NAMES

DEFAULTS: dict[str, Any] = {
    "description": "",
    "duration_s": 1800.0,
    "baseline_end_s": 300.0,
    "mains_hz": 50.0,
    "stimulation": {
        "ssep": {
            "rate_hz": 4.7,
            "outputs": {
                "0": {"current_ma": 25.0, "width_us": 200, "waveform": "monophasic"},
                "1": {"current_ma": 25.0, "width_us": 200, "waveform": "monophasic"},
                "2": {"current_ma": 35.0, "width_us": 300, "waveform": "monophasic"},
                "3": {"current_ma": 35.0, "width_us": 300, "waveform": "monophasic"},
            },
        },
        "tcmep": {"train_pulses": 5, "ipi_ms": 3.0, "interval_s": 4.0, "voltage_v": 400.0},
    },
    "noise": {
        "eeg_scale": 1.0,
        "emg_scale": 1.0,
        "floor_scale": 1.0,
        "mains_uv": 15.0,
        "cautery_per_min": 0.2,
        "cautery_s": [1.0, 4.0],
        "cautery_uv": [200.0, 2000.0],
        "pops_per_min": 0.3,
        "emg_bursts_per_min": 0.5,
    },
    "patient": {},
    "montage": None,
    "eeg": None,
    "baep": None,
    "screws": [],
    "events": [],
    "expected": {},
}


def scenarios_dir() -> Path:
    try:
        import ionm.paths

        return ionm.paths.scenarios_dir()
    except FileNotFoundError:
        return Path(__file__).resolve().parents[2] / "scenarios"


def scenario_names() -> list[str]:
    return sorted(p.stem for p in scenarios_dir().glob("*.json"))


def load_scenario(name_or_path: str) -> dict[str, Any]:
    """A scenario by name (hardware/scenarios/NAME.json) or path, defaults filled in; a fresh dict the
    caller may modify."""
    path = Path(name_or_path)
    if not (path.suffix == ".json" and path.is_file()):
        path = scenarios_dir() / f"{name_or_path}.json"
    if not path.is_file():
        raise FileNotFoundError(f"no scenario {name_or_path!r}; available: {', '.join(scenario_names())}")
    with open(path, encoding="utf-8") as fh:
        data: dict[str, Any] = json.load(fh)
    return merged(data)


def merged(scenario: dict[str, Any]) -> dict[str, Any]:
    """The scenario with DEFAULTS filled in (dicts merged key by key, lists replaced)."""

    def merge(base: Any, over: Any) -> Any:
        if isinstance(base, dict) and isinstance(over, dict):
            out = dict(base)
            for k, v in over.items():
                out[k] = merge(base.get(k), v)
            return out
        return copy.deepcopy(over)

    out: dict[str, Any] = merge(copy.deepcopy(DEFAULTS), scenario)
    return out


def match(targets: list[str] | str, names: list[str] | None = None) -> list[str]:
    """Response names matched by glob patterns; a pattern matching nothing is an error (typo guard)."""
    names = RESPONSE_NAMES if names is None else names
    pats = [targets] if isinstance(targets, str) else list(targets)
    out: list[str] = []
    for p in pats:
        hit = fnmatch.filter(names, p)
        if not hit:
            raise ValueError(f"target {p!r} matches no response; responses are {', '.join(names)}")
        out += [h for h in hit if h not in out]
    return out


class Change:
    """One scripted change: piecewise-linear (time s -> amplitude, latency factor) keypoints."""

    def __init__(self, ev: dict[str, Any]) -> None:
        self.targets = set(match(ev["targets"]))
        t0 = float(ev["onset_s"])
        ramp = max(float(ev.get("ramp_s", 0.0)), 1e-6)
        a, lat = float(ev.get("amplitude", 1.0)), float(ev.get("latency", 1.0))
        if a < 0 or lat <= 0:
            raise ValueError("change: amplitude must be >= 0 and latency > 0")
        keys = [(t0, 1.0, 1.0), (t0 + ramp, a, lat)]
        rec = ev.get("recovery")
        if rec:
            r0 = float(rec["onset_s"])
            if r0 < t0 + ramp:
                raise ValueError("change: recovery must start after the change has completed")
            rramp = max(float(rec.get("ramp_s", 0.0)), 1e-6)
            keys += [(r0, a, lat), (r0 + rramp, float(rec.get("amplitude", 1.0)), float(rec.get("latency", 1.0)))]
        self._t = np.array([k[0] for k in keys])
        self._a = np.array([k[1] for k in keys])
        self._lat = np.array([k[2] for k in keys])

    def factors(self, t_s: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        return np.interp(t_s, self._t, self._a), np.interp(t_s, self._t, self._lat)


class Script:
    """The scripted events of a (merged) scenario."""

    def __init__(self, events: list[dict[str, Any]]) -> None:
        self.changes: list[Change] = []
        self.leadoffs: list[tuple[str, float, float]] = []  # (electrode, on s, off s)
        self.cautery: list[tuple[float, float, float]] = []  # (onset s, duration s, µV rms)
        self.stim_electrodes: list[tuple[int, float, float, float]] = []  # (output, on s, off s, Ω)
        self.electrode_impedances: list[tuple[str, float, float, float]] = []  # (electrode, on s, off s, Ω)
        for ev in events:
            kind = ev.get("type")
            if kind == "change":
                self.changes.append(Change(ev))
            elif kind == "leadoff":
                self.leadoffs.append((str(ev["electrode"]), float(ev["onset_s"]), float(ev.get("end_s", np.inf))))
            elif kind == "cautery":
                self.cautery.append((float(ev["onset_s"]), float(ev["duration_s"]), float(ev["amplitude_uv"])))
            elif kind == "stim_electrode":
                self.stim_electrodes.append(
                    (int(ev["output"]), float(ev["onset_s"]), float(ev.get("end_s", np.inf)),
                     float(ev["impedance_ohm"]))
                )  # fmt: skip
            elif kind == "electrode_impedance":
                self.electrode_impedances.append(
                    (str(ev["electrode"]), float(ev["onset_s"]), float(ev.get("end_s", np.inf)),
                     float(ev["impedance_ohm"]))
                )  # fmt: skip
            elif kind in ("probe", "relaxant"):
                pass  # the handheld probe's contact (physiology/screws.py); a relaxant bolus (blockade.py)
            else:
                raise ValueError(f"unknown event type {kind!r} (change, leadoff, cautery, stim_electrode,"
                                 " electrode_impedance, probe, relaxant)")

    def factors(self, name: str, t_s: np.ndarray | float) -> tuple[np.ndarray, np.ndarray]:
        """Scripted (amplitude, latency) factors of one response at times t_s (s), vs baseline."""
        t = np.atleast_1d(np.asarray(t_s, dtype=float))
        amp, lat = np.ones_like(t), np.ones_like(t)
        for c in self.changes:
            if name in c.targets:
                a, la = c.factors(t)
                amp, lat = amp * a, lat * la
        return amp, lat

    def truth(self, t_s: float) -> dict[str, dict[str, float]]:
        out = {}
        for name in RESPONSE_NAMES:
            a, lat = self.factors(name, t_s)
            out[name] = {"amplitude": float(a[0]), "latency": float(lat[0])}
        return out
