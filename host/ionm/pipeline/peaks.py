"""Named peaks of averaged EPs (automatic, with manual override) and per-trial MEP features.

Latency is found to a fraction of a sample (parabola through the extremum and its neighbours); its
uncertainty, like the amplitude's, comes from measuring the two split-half averages the same way:
se = |half_a - half_b| / 2 (the full average has half the variance of each half).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ionm.pipeline.averaging import Average
from ionm.pipeline.modalities import Component, Modality


@dataclass
class Peak:
    name: str
    latency_ms: float
    amplitude_uv: float  # signed value of the average at the peak
    latency_se_ms: float
    amplitude_se_uv: float
    manual: bool = False


def extremum(wave: np.ndarray, fs: float, pre: int, polarity: int, lo_ms: float, hi_ms: float) -> tuple[float, float]:
    """(latency ms, value µV) of the largest polarity * wave in [lo_ms, hi_ms] after the stimulus, refined
    by a parabola through the best sample and its neighbours. NaNs if the window is outside the sweep."""
    lo = max(pre + int(np.ceil(lo_ms * 1e-3 * fs)), 1)
    hi = min(pre + int(np.floor(hi_ms * 1e-3 * fs)), len(wave) - 2)
    if hi < lo:
        return float("nan"), float("nan")
    seg = polarity * wave[lo:hi + 1]
    i = lo + int(np.argmax(seg))
    y0, y1, y2 = (polarity * wave[i - 1], polarity * wave[i], polarity * wave[i + 1])
    den = y0 - 2 * y1 + y2
    frac = 0.5 * (y0 - y2) / den if den < 0 else 0.0
    frac = float(np.clip(frac, -0.5, 0.5))
    value = polarity * (y1 - 0.25 * (y0 - y2) * frac)
    return (i + frac - pre) / fs * 1e3, float(value)


def value_at(wave: np.ndarray, fs: float, pre: int, latency_ms: float) -> float:
    """The wave at a latency (linear interpolation between samples)."""
    pos = pre + latency_ms * 1e-3 * fs
    return float(np.interp(pos, np.arange(len(wave)), wave))


class PeakMarker:
    """Automatic marking of a modality's named components at one recording site, with manual override.

    override(name, latency_ms) pins a component at a latency chosen by the reader (its amplitude is read
    there, in the average and both halves) until clear(name). Without an override, each component is the
    extremum of its polarity in its window; the second peak of a pair is searched after the first."""

    def __init__(self, modality: Modality, site: str, fs: float, pre_samples: int):
        self.modality = modality
        self.site = site
        self.fs = float(fs)
        self.pre = int(pre_samples)
        self.components: tuple[Component, ...] = modality.components.get(site, ())
        self.pair = modality.amplitude_pair.get(site)
        self.overrides: dict[str, float] = {}

    def override(self, name: str, latency_ms: float) -> None:
        if name not in {c.name for c in self.components}:
            raise KeyError("no component %r at site %r of %s" % (name, self.site, self.modality.name))
        self.overrides[name] = float(latency_ms)

    def clear(self, name: str | None = None) -> None:
        if name is None:
            self.overrides.clear()
        else:
            self.overrides.pop(name, None)

    def _marks(self, wave: np.ndarray) -> dict[str, tuple[float, float]]:
        marks: dict[str, tuple[float, float]] = {}
        for comp in self.components:
            if comp.name in self.overrides:
                lat = self.overrides[comp.name]
                marks[comp.name] = (lat, value_at(wave, self.fs, self.pre, lat))
                continue
            lo = comp.lo_ms
            if self.pair and comp.name == self.pair[1] and self.pair[0] in marks:
                lo = max(lo, marks[self.pair[0]][0])  # the second peak of a pair follows the first
            marks[comp.name] = extremum(wave, self.fs, self.pre, comp.polarity, lo, comp.hi_ms)
        return marks

    def measure(self, avg: Average) -> dict[str, Peak]:
        """Named peaks of one channel's average, plus the pair's peak-to-peak amplitude under the key
        'N20-P25' (etc.) with latency that of the first peak."""
        full, a, b = self._marks(avg.mean), self._marks(avg.half_a), self._marks(avg.half_b)
        out: dict[str, Peak] = {}
        for name, (lat, val) in full.items():
            manual = name in self.overrides
            lat_se = 0.0 if manual else abs(a[name][0] - b[name][0]) / 2
            out[name] = Peak(name, lat, val, lat_se, abs(a[name][1] - b[name][1]) / 2, manual)
        if self.pair and all(p in full for p in self.pair):
            first, second = self.pair
            def p2p(m: dict[str, tuple[float, float]]) -> float:
                return abs(m[second][1] - m[first][1])
            out["%s-%s" % self.pair] = Peak("%s-%s" % self.pair, full[first][0], p2p(full),
                                             out[first].latency_se_ms, abs(p2p(a) - p2p(b)) / 2,
                                             first in self.overrides or second in self.overrides)
        return out


@dataclass
class MepFeatures:
    onset_ms: np.ndarray  # NaN where no response crossed the threshold
    p2p_uv: np.ndarray
    area_uv_ms: np.ndarray
    threshold_uv: np.ndarray


def mep_features(sweeps: np.ndarray, fs: float, pre_samples: int, start: int, min_threshold_uv: float = 50.0,
                 noise_factor: float = 5.0, noise_uv: float | np.ndarray | None = None,
                 noise_mask: np.ndarray | None = None,
                 onset_fraction: float = float(np.exp(-2.0))) -> MepFeatures:
    """Onset latency (ms), peak-to-peak amplitude (µV) and rectified area (µV·ms) of single MEP trials.

    sweeps: conditioned [..., n_samples]; start: first sample after the stimulus blanking. The detection
    threshold is the larger of min_threshold_uv and noise_factor x the noise SD (noise_uv, or the SD of the
    samples in noise_mask, by default those before the stimulus, when there are at least 16).

    Onset: where the response rises out of the baseline, defined as the point before the first threshold
    crossing where |x| falls to onset_fraction of the first phase's peak (e^-2: for a gaussian phase that
    is 2 sigma before its peak, whatever the amplitude), or to twice the noise SD if that is higher;
    interpolated between samples. The end mirrors it after the last crossing (the last phase's e^-2
    level); p2p is measured over the response and the area integrates |x| from onset to end (µV·ms).
    No crossing: onset NaN, area 0, p2p over the whole post-stimulus window (the noise's)."""
    x = np.asarray(sweeps, dtype=np.float64)
    lead = x.shape[:-1]
    x2 = x.reshape(-1, x.shape[-1])
    if noise_mask is None:
        noise_mask = np.zeros(x2.shape[-1], dtype=bool)
        noise_mask[: max(0, pre_samples - int(0.0005 * fs))] = True
    pre_seg = x2[:, noise_mask]
    if noise_uv is not None:
        sd = np.broadcast_to(np.asarray(noise_uv, dtype=float), lead).reshape(-1)
    elif pre_seg.shape[1] >= 16:
        sd = np.std(pre_seg, axis=1)
    else:
        sd = np.zeros(len(x2))
    thr = np.maximum(min_threshold_uv, noise_factor * sd)
    post = np.abs(x2[:, start:])
    above = post > thr[:, None]
    any_above = above.any(axis=1)
    first = np.argmax(above, axis=1)
    last = post.shape[1] - 1 - np.argmax(above[:, ::-1], axis=1)
    onset = np.full(len(x2), np.nan)
    p2p = np.ptp(x2[:, start:], axis=1) if post.shape[1] else np.zeros(len(x2))
    area = np.zeros(len(x2))
    for r in np.flatnonzero(any_above):
        f = int(first[r])
        seg = x2[r, start:]
        # The first phase: from the crossing to the next change of sign; its peak sets the onset level.
        sign = np.sign(seg[f])
        change = np.flatnonzero(np.sign(seg[f:]) != sign)
        end1 = f + (int(change[0]) if len(change) else len(seg) - f)
        peak = float(np.max(np.abs(seg[f:end1])))
        level = max(onset_fraction * peak, 2.0 * sd[r])
        below = np.flatnonzero(post[r, :f + 1] <= level)
        if len(below):
            k = int(below[-1])  # post[k] <= level < post[k + 1]: interpolate the crossing
            y0, y1 = post[r, k], post[r, k + 1]
            foot = k + (level - y0) / (y1 - y0) if y1 > y0 else float(k)
        else:
            foot = 0.0
        onset[r] = (start + foot - pre_samples) / fs * 1e3
        # The end, mirrored: after the last crossing, where |x| falls to the same fraction of the last phase.
        e = int(last[r])
        change = np.flatnonzero(np.sign(seg[: e + 1]) != np.sign(seg[e]))
        begin_last = int(change[-1]) + 1 if len(change) else 0
        level_end = max(onset_fraction * float(np.max(post[r, begin_last: e + 1])), 2.0 * sd[r])
        after = np.flatnonzero(post[r, e:] <= level_end)
        stop = e + (int(after[0]) if len(after) else len(seg) - e)
        resp = x2[r, start + int(np.floor(foot)): start + stop]
        p2p[r] = np.ptp(resp) if len(resp) else 0.0
        area[r] = np.sum(np.abs(resp)) / fs * 1e3
    return MepFeatures(onset.reshape(lead), p2p.reshape(lead), area.reshape(lead), thr.reshape(lead))
