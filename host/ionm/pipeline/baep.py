"""Brainstem auditory evoked potentials (BAEP): averaging with artefact rejection, waves I, III and V with their
latencies, amplitudes and inter-peak intervals, and the hearing-warning judgement of posterior-fossa surgery.
docs/EVALUATION.md ("BAEP") describes the method.

Sweeps (µV, [n_sweeps, n_samples], the click at sample `pre`) are pushed as they come. A sweep is rejected when
its largest excursion passes REJECT_UV (EMG, movement, cautery). Averages (`average`): the mean of the last n
accepted sweeps, with its own noise from the ± reference (alternate sweeps subtracted: the response cancels,
the noise stays), and split-half averages.

Waves (`mark_waves`): on the average low-passed at MARK_LOWPASS_HZ (scipy.signal zero-phase, along the sweep),
the largest positive peak of I in 1.2-2.4 ms, III in 3.2-4.8 ms and V in 5.0-8.5 ms; amplitudes from the peak to
the lowest point in the next 1.5 ms (V to SN10); inter-peak intervals I-III, III-V, I-V.

Judgement (BaepMonitor), against a baseline (set_baseline: the average of the sweeps since a given one): a
matched filter of the baseline's wave V complex (V to SN10), shifted over LAGS_MS (-0.5 to +3 ms), is applied
to every accepted sweep; the mean over a window of the last W sweeps (W in WINDOWS: 500 to 2000) is the
window's wave V amplitude as a fraction of baseline at each lag, and the sweeps' scatter gives its standard
error (so the average's own noise, whatever its spectrum, sets the confidence). At the best lag: the latency
shift d and the amplitude ratio A, z = A / its standard error. Every UPDATE_SWEEPS accepted sweeps (100: 4.7 s
at 21.1 Hz) each window is judged:
- loss of wave V: z < LOSS_Z (2.5: halfway between a lost V and a halved one where it is judged), in a
  window long enough that the baseline's V would stand at least LOSS_MIN_BASELINE_Z above its noise there;
- latency and amplitude: V present (z >= PRESENT_Z), d >= LATENCY_MS (1 ms) and A + CONFIDENCE_Z * se <= 1 -
  AMPLITUDE_DROP (50 %), and the window's newest quarter not above it either (Park 2018: loss of V, or +1 ms
  together with -50 %, predicts hearing loss after MVD). The last condition keeps a window that straddles a
  pure latency shift, whose older sweeps have no V at the new lag, from reading as a smaller, later V.
A criterion met in any window at CONFIRM_UPDATES successive updates raises one alert. `recovered` needs evidence
the other way for the same count: in some window, V present (z >= PRESENT_Z) and either its amplitude above the
criterion by RECOVERY_Z errors or its latency shift below RECOVERY_LATENCY_MS (0.8 ms: a margin under the 1 ms).
On every change of state (alert, recovered) the windows restart, so the next decision is made on sweeps gathered
after it: windows still holding the sweeps from before a change would re-alert on a V that is back, or call a
lost V recovered because one update's windows missed the criterion. Only sweeps up to the decision are used: the
decision is causal.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from scipy import signal

REJECT_UV = 20.0
UPDATE_SWEEPS = 100
WINDOWS = (500, 700, 1000, 1400, 2000)
LAGS_MS = (-0.5, 3.0)
LATENCY_MS = 1.0
AMPLITUDE_DROP = 0.5
CONFIDENCE_Z = 1.0
PRESENT_Z = 4.0
LOSS_Z = 2.5
LOSS_MIN_BASELINE_Z = 9.0
CONFIRM_UPDATES = 2
RECOVERY_Z = 2.0
RECOVERY_LATENCY_MS = 0.8
MARK_LOWPASS_HZ = 1500.0
WAVE_WINDOWS_MS = {"I": (1.2, 2.4), "III": (3.2, 4.8), "V": (5.0, 8.5)}
TROUGH_MS = 1.5


@dataclass(frozen=True)
class Average:
    n: int
    mean_uv: np.ndarray
    plus_minus_uv: np.ndarray  # ± reference: noise only
    half_a_uv: np.ndarray
    half_b_uv: np.ndarray

    @property
    def noise_uv(self) -> float:
        return float(np.std(self.plus_minus_uv))


def average(sweeps: np.ndarray) -> Average:
    n = sweeps.shape[0]
    sign = np.where(np.arange(n) % 2 == 0, 1.0, -1.0)
    if n % 2:
        sign[-1] = 0.0
    return Average(n, sweeps.mean(axis=0), (sign @ sweeps) / max(n, 1), sweeps[0::2].mean(axis=0),
                   sweeps[1::2].mean(axis=0))


def reject(sweeps: np.ndarray, limit_uv: float = REJECT_UV) -> np.ndarray:
    """Boolean per sweep: accepted (largest excursion within ±limit)."""
    return np.asarray(np.max(np.abs(sweeps), axis=1) <= limit_uv)


@dataclass(frozen=True)
class Wave:
    latency_ms: float
    amplitude_uv: float


def mark_waves(avg_uv: np.ndarray, fs: float, pre: int) -> tuple[dict[str, Wave], dict[str, float]]:
    """Waves I, III, V (latency, peak-to-following-trough amplitude) and the I-III, III-V, I-V intervals."""
    sos = signal.butter(4, MARK_LOWPASS_HZ, fs=fs, output="sos")
    x = signal.sosfiltfilt(sos, avg_uv)
    ms = (np.arange(x.size) - pre) * 1000.0 / fs
    waves: dict[str, Wave] = {}
    for name, (lo, hi) in WAVE_WINDOWS_MS.items():
        idx = np.flatnonzero((ms >= lo) & (ms <= hi))
        i = int(idx[np.argmax(x[idx])])
        tail = np.flatnonzero((ms > ms[i]) & (ms <= ms[i] + TROUGH_MS))
        trough = float(x[tail].min()) if tail.size else float(x[i])
        waves[name] = Wave(float(ms[i]), float(x[i]) - trough)
    ipl = {"I-III": waves["III"].latency_ms - waves["I"].latency_ms,
           "III-V": waves["V"].latency_ms - waves["III"].latency_ms,
           "I-V": waves["V"].latency_ms - waves["I"].latency_ms}
    return waves, ipl


@dataclass(frozen=True)
class WindowState:
    n: int
    latency_shift_ms: float
    amplitude_ratio: float
    se: float
    recent_ratio: float | None = None  # the newest quarter of the window, at the same lag
    recent_se: float | None = None

    @property
    def z(self) -> float:
        return self.amplitude_ratio / self.se if self.se > 0 else 0.0


def criterion(ws: WindowState, se_per_sweep: float, eligible_only: bool = True) -> str | None:
    """"loss", "latency_amplitude" or None for one window (eligible_only: loss only where the baseline's V
    would stand LOSS_MIN_BASELINE_Z above the window's noise)."""
    baseline_z = np.sqrt(ws.n) / se_per_sweep
    if ws.z < LOSS_Z and (baseline_z >= LOSS_MIN_BASELINE_Z or not eligible_only):
        return "loss"
    if (ws.z >= PRESENT_Z and ws.latency_shift_ms >= LATENCY_MS
            and ws.amplitude_ratio + CONFIDENCE_Z * ws.se <= 1 - AMPLITUDE_DROP
            and (ws.recent_ratio is None or ws.recent_se is None
                 or ws.recent_ratio - CONFIDENCE_Z * ws.recent_se <= 1 - AMPLITUDE_DROP)):
        return "latency_amplitude"
    return None


def recovered(ws: WindowState) -> bool:
    """Evidence in one window that neither criterion holds any more, with a margin (hysteresis): V present, and
    above -50 % by RECOVERY_Z errors or less than RECOVERY_LATENCY_MS late. (The best lag's amplitude is a
    maximum over lags, so it reads a small late V high: +1.5 ms at 30 % read 0.55-0.65 +- 0.13 on 500 sweeps.)"""
    return ws.z >= PRESENT_Z and (ws.amplitude_ratio - RECOVERY_Z * ws.se > 1 - AMPLITUDE_DROP
                                  or ws.latency_shift_ms < RECOVERY_LATENCY_MS)


@dataclass(frozen=True)
class BaepEvent:
    kind: str  # "loss", "latency_amplitude", "recovered"
    sweep: int  # accepted + rejected sweeps seen when decided
    t_s: float
    window: int
    latency_shift_ms: float
    amplitude_ratio: float

    def as_json(self) -> dict[str, Any]:
        return {"kind": self.kind, "sweep": self.sweep, "t_s": round(self.t_s, 2), "window": self.window,
                "latency_shift_ms": round(self.latency_shift_ms, 2),
                "amplitude_ratio": round(self.amplitude_ratio, 3)}


@dataclass
class Baseline:
    average: Average
    waves: dict[str, Wave]
    intervals: dict[str, float]
    filters: np.ndarray  # [n_lags, n_samples]: V complex shifted, scaled so that baseline = 1
    lags_ms: np.ndarray
    se_per_sweep: float  # standard error of one sweep's ratio at lag 0 in the baseline


@dataclass
class BaepMonitor:
    fs_hz: float
    pre: int
    rate_hz: float
    reject_uv: float = REJECT_UV
    n_seen: int = 0
    n_rejected: int = 0
    baseline: Baseline | None = None
    events: list[BaepEvent] = field(default_factory=list)
    states: list[tuple[int, list[WindowState]]] = field(default_factory=list)
    _kept: deque[np.ndarray] = field(default_factory=lambda: deque(maxlen=4000))
    _proj: deque[np.ndarray] = field(default_factory=lambda: deque(maxlen=max(WINDOWS)))
    _since_update: int = 0
    _streak: dict[str, int] = field(default_factory=lambda: {"loss": 0, "latency_amplitude": 0, "clear": 0})
    _alert: str | None = None

    def push(self, sweeps: np.ndarray) -> list[BaepEvent]:
        new: list[BaepEvent] = []
        ok = reject(sweeps, self.reject_uv)
        for x, good in zip(sweeps, ok, strict=True):
            self.n_seen += 1
            if not good:
                self.n_rejected += 1
                continue
            self._kept.append(x)
            if self.baseline is None:
                continue
            self._proj.append(self.baseline.filters @ x)
            self._since_update += 1
            if self._since_update >= UPDATE_SWEEPS:
                self._since_update = 0
                new += self._judge()
        self.events += new
        return new

    def set_baseline(self, n_sweeps: int = 2000) -> Baseline:
        """The baseline from the last n accepted sweeps; judging starts with the next sweep."""
        kept = np.array(list(self._kept)[-n_sweeps:])
        avg = average(kept)
        waves, ipl = mark_waves(avg.mean_uv, self.fs_hz, self.pre)
        sos = signal.butter(4, MARK_LOWPASS_HZ, fs=self.fs_hz, output="sos")
        smooth = signal.sosfiltfilt(sos, avg.mean_uv)
        ms = (np.arange(smooth.size) - self.pre) * 1000.0 / self.fs_hz
        v = waves["V"].latency_ms
        span = (ms >= v - 0.8) & (ms <= v + TROUGH_MS + 0.3)
        tmpl = np.where(span, smooth - smooth[span].mean(), 0.0)
        tmpl[span] *= signal.windows.tukey(int(span.sum()), 0.3)
        step = 1000.0 / self.fs_hz
        lags = np.arange(int(round(LAGS_MS[0] / step)), int(round(LAGS_MS[1] / step)) + 1)
        filters = np.array([np.roll(tmpl, k) for k in lags])
        # scaled so that the baseline's V is 1: the template's own noise, which the baseline average shares,
        # is taken out of the scale with the ± reference (otherwise later sweeps would read low)
        noise = signal.sosfiltfilt(sos, avg.plus_minus_uv)
        noise_t = np.where(span, noise - noise[span].mean(), 0.0)
        noise_t[span] *= signal.windows.tukey(int(span.sum()), 0.3)
        filters /= max(float(tmpl @ smooth - noise_t @ noise), 0.5 * float(tmpl @ smooth))
        per = kept @ filters[int(np.argmin(np.abs(lags)))]
        self.baseline = Baseline(avg, waves, ipl, filters, lags * step, float(np.std(per)))
        self._proj.clear()
        self._since_update = 0
        return self.baseline

    def marks(self, n_sweeps: int = 2000) -> tuple[Average, dict[str, Wave], dict[str, float]]:
        """The average of the last n accepted sweeps with waves I, III, V and the inter-peak intervals."""
        avg = average(np.array(list(self._kept)[-n_sweeps:]))
        waves, ipl = mark_waves(avg.mean_uv, self.fs_hz, self.pre)
        return avg, waves, ipl

    def window_states(self) -> list[WindowState]:
        out = []
        proj = np.array(self._proj)
        assert self.baseline is not None
        for w in WINDOWS:
            if proj.shape[0] < w:
                break
            p = proj[-w:]
            mean = p.mean(axis=0)
            se = p.std(axis=0) / np.sqrt(w)
            k = int(np.argmax(mean / se))
            q = p[-(w // 4):, k]
            out.append(WindowState(w, float(self.baseline.lags_ms[k]), float(mean[k]), float(se[k]),
                                   float(q.mean()), float(q.std() / np.sqrt(q.size))))
        return out

    def _judge(self) -> list[BaepEvent]:
        states = self.window_states()
        assert self.baseline is not None
        self.states.append((self.n_seen, states))
        met = [(c, ws) for ws in states if (c := criterion(ws, self.baseline.se_per_sweep))]
        kinds = {c for c, _ in met}
        for k in ("loss", "latency_amplitude"):
            self._streak[k] = self._streak[k] + 1 if k in kinds else 0
        back = [ws for ws in states if recovered(ws)]
        self._streak["clear"] = self._streak["clear"] + 1 if back else 0
        t = self.n_seen / self.rate_hz
        if self._alert is None:
            for k in ("loss", "latency_amplitude"):
                if self._streak[k] >= CONFIRM_UPDATES:
                    ws = next(w for c, w in met if c == k)
                    self._alert = k
                    self._restart()
                    return [BaepEvent(k, self.n_seen, t, ws.n, ws.latency_shift_ms, ws.amplitude_ratio)]
        elif self._streak["clear"] >= CONFIRM_UPDATES:
            self._alert = None
            ws = back[0]
            self._restart()
            return [BaepEvent("recovered", self.n_seen, t, ws.n, ws.latency_shift_ms, ws.amplitude_ratio)]
        return []

    def _restart(self) -> None:
        """Windows start afresh from the next sweep, and every streak with them (a change of state)."""
        self._proj.clear()
        self._streak = {"loss": 0, "latency_amplitude": 0, "clear": 0}


def block_reader(sweeps: np.ndarray, fs: float, pre: int, rate_hz: float, baseline: Baseline,
                 block: int = 1000, reject_uv: float = REJECT_UV) -> list[tuple[int, str | None]]:
    """The conventional reader: successive `block`-sweep averages (accepted sweeps), each judged once, when
    complete, by the same criteria on its own (sweep index at the block's end, criterion met or None)."""
    out: list[tuple[int, str | None]] = []
    acc: list[int] = []
    ok = reject(sweeps, reject_uv)
    for i in range(sweeps.shape[0]):
        if ok[i]:
            acc.append(i)
        if len(acc) == block:
            p = sweeps[acc] @ baseline.filters.T
            mean, se = p.mean(axis=0), p.std(axis=0) / np.sqrt(block)
            k = int(np.argmax(mean / se))
            ws = WindowState(block, float(baseline.lags_ms[k]), float(mean[k]), float(se[k]))
            crit = criterion(ws, baseline.se_per_sweep, eligible_only=False)
            out.append((i + 1, crit))
            acc = []
    return out
