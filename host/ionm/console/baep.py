"""BAEP in the live case: what the engine does with each block of click-locked sweeps (ionm.sweep.BaepBlock), on
the engine thread (BaepView.process).

- analysis: ionm.pipeline.baep's BaepMonitor on the ipsilateral channel (the first: Cz-Ai), whose events (wave V
  lost; wave V later by >= 1 ms with its amplitude halved; recovered) the engine raises as alerts once a baseline is
  set; the contralateral channel is averaged and shown, not judged;
- averages: every AVG_EVERY accepted sweeps the running average of the last AVG_SWEEPS accepted sweeps (both channels;
  a sweep is accepted when no channel passes the pipeline's ±20 µV), waves I, III and V marked on the ipsilateral
  channel (ionm.pipeline.baep.mark_waves) with their latencies, amplitudes and the I-III, III-V, I-V intervals;
  every STACK_EVERY_S that average joins the stack (STACK_SHOWN shown) and the case store (averages, why "stack");
  the baseline's and each alert's average are stored too;
- display, thinned here: each average low-passed at the marking filter (1500 Hz, zero-phase) and taken at every
  DISPLAY_STEP-th sample (10 kHz: 110 points for the 11-ms sweep), in steps of TRACE_Q_UV.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from scipy import signal

from ionm.pipeline import baep as pb
from ionm.sweep import BaepBlock

AVG_SWEEPS = 1000
AVG_EVERY = 200  # accepted sweeps between two running averages (9.5 s at 21.1 Hz)
STACK_EVERY_S = 60.0
STACK_SHOWN = 12
TREND_KEEP = 2000  # points of the wave V trend kept (5 h at one a ~10 s) ...
TREND_SHOWN = 180  # ... and sent
BASELINE_SWEEPS = 2000
BASELINE_MIN_SWEEPS = 1000
DISPLAY_STEP = 2
TRACE_Q_UV = 0.005


def stream_key(side: str) -> str:
    return "baep/%s ear" % side


@dataclass
class BaepView:
    fs: float
    pre: int
    rate_hz: float
    names: list[str]
    side: str = "L"
    t0_s: float = 0.0  # case time of the monitor's first sweep
    stack: deque[dict[str, Any]] = field(default_factory=lambda: deque(maxlen=STACK_SHOWN))
    trend: deque[dict[str, Any]] = field(default_factory=lambda: deque(maxlen=TREND_KEEP))

    def __post_init__(self) -> None:
        self.stream = stream_key(self.side)
        self.monitor = pb.BaepMonitor(self.fs, self.pre, self.rate_hz)
        self.kept: deque[np.ndarray] = deque(maxlen=max(AVG_SWEEPS, BASELINE_SWEEPS))  # [ch, n] accepted sweeps
        self.accepted = 0
        self.t_s = self.t0_s
        self._since_avg = 0
        self._last_stack_t = -np.inf
        self.current: dict[str, Any] | None = None  # the newest running average (display form)
        self.baseline_trace: dict[str, Any] | None = None
        self.baseline_info: dict[str, Any] | None = None
        self.sos = signal.butter(4, pb.MARK_LOWPASS_HZ, fs=self.fs, output="sos")
        self.state = "normal"  # normal / alert (the monitor's, for the page)

    # ---------------------------------------------------------------- per block (engine thread)
    def process(self, block: BaepBlock) -> tuple[list[pb.BaepEvent], list[tuple[str, np.ndarray, int]]]:
        """One block: the monitor's events (case times), and averages to store ((why, mean [ch, n], sweeps))."""
        x = np.asarray(block.sweeps_uv, dtype=np.float64)  # [ch, sweeps, n]
        events = self.monitor.push(x[0])
        ok = np.all(np.max(np.abs(x), axis=2) <= self.monitor.reject_uv, axis=0)
        to_store: list[tuple[str, np.ndarray, int]] = []
        self.t_s = block.t_s + x.shape[1] / block.rate_hz
        for j in np.flatnonzero(ok):
            self.kept.append(x[:, j, :])
            self.accepted += 1
            self._since_avg += 1
            if self._since_avg >= AVG_EVERY and len(self.kept) >= min(AVG_SWEEPS, 2 * AVG_EVERY):
                self._since_avg = 0
                self.current = self._average("running")
                self.trend.append(self._trend_point(self.current))
                if self.current["t_s"] - self._last_stack_t >= STACK_EVERY_S - 1e-6:
                    self._last_stack_t = self.current["t_s"]
                    self.stack.append(self.current)
                    to_store.append(("stack", self._mean(AVG_SWEEPS), self.current["n"]))
        for e in events:
            self.state = "normal" if e.kind == "recovered" else "alert"
        return events, to_store

    def event_time(self, e: pb.BaepEvent) -> float:
        return round(self.t0_s + e.t_s, 3)

    def _mean(self, n: int) -> np.ndarray:
        return np.mean(np.array(list(self.kept)[-n:]), axis=0)  # [ch, samples]

    def _average(self, why: str, n: int = AVG_SWEEPS) -> dict[str, Any]:
        k = min(n, len(self.kept))
        return self.trace(self._mean(k), self.t_s, why, k)

    def trace(self, mean: np.ndarray, t_s: float, why: str, n: int) -> dict[str, Any]:
        """An average [ch, samples] as the page draws it: thinned, with waves I, III, V marked on the first channel."""
        waves, ipl = pb.mark_waves(np.asarray(mean[0], dtype=np.float64), self.fs, self.pre)
        smooth = signal.sosfiltfilt(self.sos, np.asarray(mean, dtype=np.float64), axis=1)[:, ::DISPLAY_STEP]
        return {"t_s": round(t_s, 2), "why": why, "n": int(n),
                "q": TRACE_Q_UV, "v": np.round(smooth / TRACE_Q_UV).astype(np.int64).tolist(),
                "waves": {w: {"ms": round(v.latency_ms, 2), "uv": round(v.amplitude_uv, 3)} for w, v in waves.items()},
                "ipl": {k2: round(v, 2) for k2, v in ipl.items()}}

    def restore(self, averages: list[tuple[float, str, np.ndarray]]) -> None:
        """After a restart: the stack from the recorded averages (why "stack"; the baseline is not restored, its
        sweeps are not recorded)."""
        for t, why, mean in averages:
            if why == "stack":
                self.stack.append(self.trace(mean, t, why, AVG_SWEEPS))
                self._last_stack_t = t

    def _trend_point(self, avg: dict[str, Any]) -> dict[str, Any]:
        v = avg["waves"]["V"]
        p = {"t": avg["t_s"], "v_ms": v["ms"], "v_uv": v["uv"], "iv_ms": avg["ipl"]["I-V"]}
        if self.baseline_info is not None:
            b = self.baseline_info["waves"]["V"]
            p["v_shift_ms"] = round(v["ms"] - b["ms"], 2)
            p["v_ratio"] = round(v["uv"] / b["uv"], 3) if b["uv"] > 0 else None
        return p

    # ---------------------------------------------------------------- baseline
    def set_baseline(self, now_s: float) -> tuple[dict[str, Any], np.ndarray]:
        """The monitor's baseline from the last BASELINE_SWEEPS accepted sweeps (at least BASELINE_MIN_SWEEPS);
        returns its description and its average [ch, n] to store. ValueError when too few sweeps. A new baseline
        also ends an alert under way (the technologist accepted the change as the new reference): the monitor
        judges afresh from it."""
        n = min(len(self.monitor._kept), BASELINE_SWEEPS)
        if n < BASELINE_MIN_SWEEPS:
            raise ValueError("a BAEP baseline needs %d accepted sweeps (%d so far)" % (BASELINE_MIN_SWEEPS, n))
        bl = self.monitor.set_baseline(n)
        self.monitor._alert = None  # (BaepMonitor keeps its alert across set_baseline: it is judged afresh here)
        self.monitor._restart()
        trace = self._average("baseline", n)
        # the monitor's own marks on its baseline (ipsilateral), the reference of the alert criteria
        trace["waves"] = {w: {"ms": round(v.latency_ms, 2), "uv": round(v.amplitude_uv, 3)}
                          for w, v in bl.waves.items()}
        trace["ipl"] = {k: round(v, 2) for k, v in bl.intervals.items()}
        self.baseline_trace = trace
        self.baseline_info = {"t_s": round(now_s, 2), "sweeps": n, "waves": trace["waves"], "ipl": trace["ipl"]}
        self.state = "normal"
        return self.baseline_info, self._mean(min(n, len(self.kept)))

    # ---------------------------------------------------------------- what a viewer is given
    def _trend_shown(self) -> list[dict[str, Any]]:
        """The wave V trend thinned to at most TREND_SHOWN points, the newest always among them (the frame is sent
        with every new average, ~every 10 s: it must stay small)."""
        pts = list(self.trend)
        step = max(1, -(-len(pts) // TREND_SHOWN))
        return pts[::-1][::step][::-1]

    # ----------------------------------------------------------------
    def frame(self) -> dict[str, Any]:
        """The BAEP state: the newest average with its marks, the stack, the baseline, the trend of wave V (at most
        TREND_SHOWN points), the criteria, counts."""
        m = self.monitor
        return {"stream": self.stream, "t_s": round(self.t_s, 2), "channels": list(self.names), "side": self.side,
                "fs": self.fs / DISPLAY_STEP, "pre_ms": self.pre * 1000.0 / self.fs, "rate_hz": self.rate_hz,
                "sweeps": m.n_seen, "rejected": m.n_rejected, "state": self.state,
                "current": self.current, "stack": list(self.stack), "baseline": self.baseline_trace,
                "trend": self._trend_shown(),
                "criteria": {"latency_ms": pb.LATENCY_MS, "amplitude_drop": pb.AMPLITUDE_DROP,
                             "decide_every": pb.UPDATE_SWEEPS}}
