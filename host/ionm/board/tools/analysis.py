"""Signal analysis for calibration and bench checks: each estimator is exact on a noiseless signal of the
shape it assumes, so a test can hold it against a known truth.

- sine_fit: amplitude of a sine of (nearly) known frequency. Least squares on sin/cos/1 (IEEE 1057's
  three-parameter fit), then a few Gauss-Newton steps on the frequency (four-parameter fit): a bench
  generator's clock and the board's differ by tens of ppm, which over a long record would otherwise bias
  the amplitude low.
- square_levels: the two levels of a square wave (the ADS1299 internal test signal), ignoring the samples
  next to each transition (the real chip's sinc filter smears an edge over a few samples).
- averaging_slope: how the RMS of an average of N sweeps falls with N (−0.5 for independent noise).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

EDGE_GUARD = 3  # samples ignored on each side of a square-wave transition


@dataclass(frozen=True)
class SineFit:
    amplitude: float  # peak, in the input's unit (so peak-to-peak is 2 × amplitude)
    frequency_hz: float
    phase_rad: float
    offset: float
    residual_rms: float

    @property
    def peak_to_peak(self) -> float:
        return 2.0 * self.amplitude


def _fit3(x: np.ndarray, t: np.ndarray, f: float) -> tuple[np.ndarray, np.ndarray]:
    w = 2.0 * np.pi * f * t
    design = np.column_stack([np.sin(w), np.cos(w), np.ones_like(t)])
    coef, *_ = np.linalg.lstsq(design, x, rcond=None)
    return coef, x - design @ coef


def sine_fit(x: np.ndarray, fs: float, f_hz: float, *, refine: bool = True, iterations: int = 4) -> SineFit:
    """Fit a·sin(2πft) + b·cos(2πft) + c to x sampled at fs; with refine, f is adjusted too (4 parameters)."""
    x = np.asarray(x, dtype=np.float64)
    t = np.arange(x.size) / fs
    f = float(f_hz)
    coef, resid = _fit3(x, t, f)
    if refine and x.size >= 16 and f > 0:
        for _ in range(iterations):
            a, b, c = coef
            w = 2.0 * np.pi * f * t
            # d/df of a·sin(wt) + b·cos(wt): 2πt (a·cos − b·sin)
            deriv = 2.0 * np.pi * t * (a * np.cos(w) - b * np.sin(w))
            design = np.column_stack([np.sin(w), np.cos(w), np.ones_like(t), deriv])
            step, *_ = np.linalg.lstsq(design, x, rcond=None)
            df = float(step[3])
            if not np.isfinite(df) or abs(df) > 0.01 * f + 1.0 / (t[-1] + 1.0 / fs):
                break  # no sine there to lock onto (a dead channel): keep the three-parameter fit
            f += df
            coef, resid = _fit3(x, t, f)
            if abs(df) < 1e-9 * f:
                break
    a, b, c = coef
    return SineFit(float(np.hypot(a, b)), f, float(np.arctan2(b, a)), float(c), float(np.sqrt(np.mean(resid ** 2))))


@dataclass(frozen=True)
class SquareLevels:
    high: float
    low: float
    transitions: int  # edges seen
    samples_used: int

    @property
    def amplitude(self) -> float:
        """Half the step: the ±A of a square wave ±A around its offset."""
        return (self.high - self.low) / 2.0

    @property
    def offset(self) -> float:
        return (self.high + self.low) / 2.0


def square_levels(x: np.ndarray, guard: int = EDGE_GUARD) -> SquareLevels:
    """The two levels of a square wave: samples classified against the midpoint of the extremes, the ones
    within guard samples of a transition left out."""
    x = np.asarray(x, dtype=np.float64)
    mid = (np.percentile(x, 95) + np.percentile(x, 5)) / 2.0
    high = x > mid
    edges = np.flatnonzero(np.diff(high.astype(np.int8))) + 1
    keep = np.ones(x.size, dtype=bool)
    for e in edges:
        keep[max(e - guard, 0):e + guard] = False
    hi, lo = x[keep & high], x[keep & ~high]
    if hi.size == 0 or lo.size == 0:  # no square wave at all: one level only
        level = float(np.mean(x))
        return SquareLevels(level, level, int(edges.size), int(x.size))
    return SquareLevels(float(np.mean(hi)), float(np.mean(lo)), int(edges.size), int(hi.size + lo.size))


def epochs(x: np.ndarray, onsets: Sequence[int], length: int) -> np.ndarray:
    """Sweeps of `length` samples starting at each onset that fits inside x: (n_sweeps, length, ...)."""
    good = [o for o in onsets if 0 <= o and o + length <= x.shape[0]]
    return np.stack([x[o:o + length] for o in good]) if good else np.empty((0, length) + x.shape[1:])


def averaging_rms(sweeps: np.ndarray, sizes: Sequence[int]) -> dict[int, float]:
    """RMS (over samples, channels and disjoint groups) of the average of N sweeps, for each N in sizes.
    sweeps: (n_sweeps, n_samples, n_channels) of zero-mean noise (each sweep's own mean removed)."""
    out = {}
    s = sweeps - sweeps.mean(axis=1, keepdims=True)
    for n in sizes:
        groups = s.shape[0] // n
        if groups < 1:
            continue
        avg = s[:groups * n].reshape(groups, n, *s.shape[1:]).mean(axis=1)
        out[int(n)] = float(np.sqrt(np.mean(avg ** 2)))
    return out


def averaging_slope(rms_by_n: dict[int, float]) -> float:
    """Slope of log(rms) against log(N): −0.5 when averaging N sweeps divides the noise by √N."""
    ns = np.array(sorted(rms_by_n), dtype=np.float64)
    rms = np.array([rms_by_n[int(n)] for n in ns])
    slope, _ = np.polyfit(np.log(ns), np.log(rms), 1)
    return float(slope)


def upper_3db(freqs_hz: Sequence[float], gain_db: Sequence[float]) -> float | None:
    """The first frequency (log-interpolated) where the response falls to −3 dB relative to the first
    point, or None if it never does within the frequencies measured."""
    f = np.asarray(freqs_hz, dtype=np.float64)
    g = np.asarray(gain_db, dtype=np.float64) - gain_db[0]
    below = np.flatnonzero(g <= -3.0)
    if below.size == 0:
        return None
    i = int(below[0])
    if i == 0:
        return float(f[0])
    g0, g1 = g[i - 1], g[i]
    frac = (-3.0 - g0) / (g1 - g0)
    return float(np.exp(np.log(f[i - 1]) + frac * (np.log(f[i]) - np.log(f[i - 1]))))
