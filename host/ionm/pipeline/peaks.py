"""Named peaks of averaged EPs (automatic, with manual override) and per-trial MEP features.

Latency is found to a fraction of a sample (parabola through the extremum and its neighbours); its
uncertainty, like the amplitude's, comes from measuring the two split-half averages the same way:
se = |half_a - half_b| / 2 (the full average has half the variance of each half).
"""

from __future__ import annotations

import re
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
    onset_ms: np.ndarray  # NaN where no response reached the threshold
    p2p_uv: np.ndarray
    area_uv_ms: np.ndarray
    threshold_uv: np.ndarray  # the peak-to-peak presence threshold used, µV


# Typical MEP onset windows (ms after the stimulus) by muscle: the lower edge is the earliest onset a
# response of that muscle can have, so anything earlier (a stimulus-artefact tail after the blanking) is not
# it. Sources: MEPFeatX's onset table for adults (Nguyen et al., Sci Rep 13, 2023; github.com/
# NeuromodulationUEF/MEPFeatX, reference/data/onset_threshold.xlsx): hand 18-28, forearm 13-22, biceps 13-22,
# tibialis anterior 25-42 ms; mep-cmap-analyser's normative profiles (pypi.org/project/mep-cmap-analyser):
# vastus lateralis 18-35, leg 28-45 ms; foot muscles (abductor hallucis, EHB/EDB) 35-60 ms, the longest
# corticospinal path (TcMEP AH onsets of ~40-50 ms in adults; the wide upper edge allows for height).
# Matched in order, first hit wins: full names before abbreviations.
_ONSET_WINDOWS_MS: tuple[tuple[tuple[str, ...], tuple[float, float]], ...] = (
    (("hallucis", "foot", "ehb", "edb", "ah", "fhb"), (35.0, 60.0)),
    (("tibialis", "tib", "ta"), (25.0, 42.0)),
    (("gastrocnemius", "gastroc", "gas", "soleus", "sol", "hamstring", "ham", "peroneus", "per"), (28.0, 45.0)),
    (("quadriceps", "quad", "vastus", "vl", "vm", "rf", "adductor", "add"), (18.0, 35.0)),
    (("pollicis", "digiti", "interosseous", "thenar", "hand", "apb", "adm", "fdi"), (18.0, 28.0)),
    (("forearm", "carpi", "digitorum", "brachioradialis", "ecr", "fcr", "edc", "fds", "br"), (13.0, 22.0)),
    (("biceps", "triceps", "deltoid", "bic", "tri", "del"), (13.0, 22.0)),
)


def mep_onset_window_ms(channel_name: str) -> tuple[float, float]:
    """Typical (earliest, latest) MEP onset in ms for the muscle named in a channel label ("L APB",
    "R tibialis anterior", "RTA", "L abductor hallucis"), or (0, inf) when no muscle is recognised. The
    earliest onset is meant for mep_features(min_onset_ms=...)."""
    words = re.findall(r"[a-z]+", channel_name.lower())
    tokens = set(words)
    for w in words:  # side glued to an abbreviation: "LAPB", "RTA"
        if len(w) > 2 and w[0] in "lr":
            tokens.add(w[1:])
    for names, window in _ONSET_WINDOWS_MS:
        for name in names:
            if name in tokens or (len(name) > 4 and any(w.startswith(name) for w in words)):
                return window
    return 0.0, float("inf")


# A phase is the start of the response when its peak reaches 6 noise SD: the published reference's
# criterion (3 x its 3-MAD band), and out of reach of Gaussian noise (p ~ 2e-9 per sample).
FIRST_PHASE_SD = 6.0
# The onset is where that phase's rising edge is back inside 2 noise SD of the baseline ...
ONSET_BAND_SD = 2.0
# ... or, if later, where its slope falls to 1 SD of the baseline's slope: the knee, when the trace sat
# a few µV off the pre-stimulus mean (slow wander, an offset) just before the response.
ONSET_SLOPE_SD = 1.0
# Phases separated by up to 4 ms of baseline are one response: a slow TA response crosses the baseline
# between phases for up to ~3 ms. A longer gap is a break, so that a noise or EMG spike 5 ms or more
# before the response is not its onset.
PHASE_GAP_MS = 4.0
# The level an MEP's area is taken about: the median of the trace over this stretch before the onset.
AREA_LEVEL_MS = 3.0
# A response is present when its peak-to-peak reaches at least this (µV), whatever the noise.
MIN_THRESHOLD_UV = 50.0
# Noise SD never taken below 0.5 µV (the amplifier's own floor), so that noiseless input has an onset.
NOISE_FLOOR_UV = 0.5


def mep_features(sweeps: np.ndarray, fs: float, pre_samples: int, start: int,
                 min_threshold_uv: float = MIN_THRESHOLD_UV,
                 noise_factor: float = 5.0, noise_uv: float | np.ndarray | None = None,
                 noise_mask: np.ndarray | None = None,
                 min_onset_ms: float | np.ndarray | None = None) -> MepFeatures:
    """Onset latency (ms), peak-to-peak amplitude (µV) and rectified area (µV·ms) of single MEP trials.

    sweeps: conditioned [..., n_samples]; start: first sample after the stimulus blanking; min_onset_ms:
    the earliest onset the muscle can have (scalar, or per channel: broadcast against sweeps.shape[:-1];
    see mep_onset_window_ms), so that an artefact tail after the blanking is not taken for the response.
    The response window runs from the later of the two to the end of the sweep.

    Baseline and noise: the mean and SD of the samples in noise_mask (by default those up to 0.5 ms before
    the stimulus) when there are at least 16; noise_uv overrides the SD.

    Present: the peak-to-peak over the response window reaches the threshold, max(min_threshold_uv,
    2 x noise_factor x SD) (noise_factor SDs either side of the baseline).

    Onset: the response's first phase is the earliest excursion beyond FIRST_PHASE_SD noise SD that is joined
    to the largest one by gaps of at most PHASE_GAP_MS; the onset is where that phase's rising edge leaves
    the ONSET_BAND_SD band around the baseline, or its knee (slope down to ONSET_SLOPE_SD slope SDs) if
    later; interpolated between samples.

    p2p runs from the onset to the end of the window, so that no phase, however small or late, is cut. The
    end, for the area, mirrors the onset after the last excursion beyond FIRST_PHASE_SD joined to the largest
    by gaps of at most PHASE_GAP_MS; the area integrates |x - level| from onset to end (µV·ms), level being
    the trace's median over AREA_LEVEL_MS before the onset. No response: onset NaN, area 0, p2p over the
    window (the noise's).
    """
    x = np.asarray(sweeps, dtype=np.float64)
    lead = x.shape[:-1]
    x2 = x.reshape(-1, x.shape[-1])
    n_rows, n_samples = x2.shape
    if noise_mask is None:
        noise_mask = np.zeros(n_samples, dtype=bool)
        noise_mask[: max(0, pre_samples - int(0.0005 * fs))] = True
    noise_mask = np.asarray(noise_mask, dtype=bool)
    have_noise = int(noise_mask.sum()) >= 16
    baseline = x2[:, noise_mask].mean(axis=1) if have_noise else np.zeros(n_rows)
    y = x2 - baseline[:, None]
    if noise_uv is not None:
        sd = np.broadcast_to(np.asarray(noise_uv, dtype=float), lead).reshape(-1)
    elif have_noise:
        sd = np.std(y[:, noise_mask], axis=1)
    else:
        sd = np.zeros(n_rows)
    slope = np.gradient(y, axis=1) if n_samples > 1 else np.zeros_like(y)  # µV per sample
    slope_sd = np.std(slope[:, noise_mask], axis=1) if have_noise else np.full(n_rows, np.nan)
    thr = np.maximum(min_threshold_uv, 2.0 * noise_factor * sd)
    noise = np.maximum(sd, NOISE_FLOOR_UV)

    first_sample = np.full(n_rows, int(start))
    if min_onset_ms is not None:
        earliest = np.nan_to_num(np.broadcast_to(np.asarray(min_onset_ms, dtype=float), lead).reshape(-1))
        first_sample = np.maximum(first_sample, pre_samples + np.ceil(earliest * 1e-3 * fs).astype(int))
    first_sample = np.clip(first_sample, 0, n_samples)
    gap = int(round(PHASE_GAP_MS * 1e-3 * fs))

    onset = np.full(n_rows, np.nan)
    p2p = np.zeros(n_rows)
    area = np.zeros(n_rows)
    for r in range(n_rows):
        s0 = int(first_sample[r])
        w = y[r, s0:]
        if len(w) < 2:
            continue
        p2p[r] = np.ptp(w)
        if p2p[r] < thr[r]:
            continue
        out = np.flatnonzero(np.abs(w) > FIRST_PHASE_SD * noise[r])
        main = int(np.argmax(np.abs(w)))
        if not len(out):  # a response under 6 SD per side (p2p threshold met): the largest peak stands alone
            out = np.array([main])
        # The onset: back from the largest peak through excursions joined by short gaps, so that a stray
        # noise or EMG spike well before the response is not its start.
        before = out[: min(int(np.searchsorted(out, main)), len(out) - 1) + 1]
        breaks = np.flatnonzero(np.diff(before) > gap)
        first = int(before[breaks[-1] + 1]) if len(breaks) else int(before[0])

        polarity = np.sign(w[first])
        band = ONSET_BAND_SD * noise[r]
        foot = _crossing_before(polarity * w, first, band)
        if np.isfinite(slope_sd[r]) and slope_sd[r] > 0:
            knee = _crossing_before(polarity * slope[r, s0:], first, ONSET_SLOPE_SD * slope_sd[r])
            foot = min(max(foot, knee), float(first))
        onset[r] = (s0 + foot - pre_samples) / fs * 1e3

        # The area is taken about the level the trace sat at just before the onset (the median of up to
        # AREA_LEVEL_MS there), not the pre-stimulus mean: a TcMEP sweep's pre-stimulus samples hold the train's
        # earlier pulses, and their tails leave the post-stimulus trace tens of µV off that mean, which would
        # be integrated over the whole response and keep its end from being found.
        i0 = int(np.floor(foot))
        lead_in = w[max(0, i0 - int(round(AREA_LEVEL_MS * 1e-3 * fs))): i0]
        v = w - (float(np.median(lead_in)) if len(lead_in) >= 8 else 0.0)
        # The end: forward from the largest peak through excursions beyond FIRST_PHASE_SD joined by the same
        # short gaps, so that a late noise spike does not stretch the area over baseline; then back inside the
        # band.
        after = main + np.flatnonzero(np.abs(v[main:]) > FIRST_PHASE_SD * noise[r])
        stops = np.flatnonzero(np.diff(after) > gap)
        last = int(after[stops[0]] if len(stops) else after[-1]) if len(after) else main
        polarity_end = np.sign(v[last])
        inside = np.flatnonzero(polarity_end * v[last:] <= band)
        stop = last + (int(inside[0]) if len(inside) else len(w) - 1 - last)
        # p2p from the onset to the end of the window: no phase of the response, however small or late, is
        # cut, and noise after the response is far smaller than the response's own peaks.
        p2p[r] = np.ptp(w[i0:])
        area[r] = np.sum(np.abs(v[i0: stop + 1])) / fs * 1e3
    return MepFeatures(onset.reshape(lead), p2p.reshape(lead), area.reshape(lead), thr.reshape(lead))


def _crossing_before(v: np.ndarray, i: int, level: float) -> float:
    """The fractional index before sample i (where v > level) at which v last rose through level; 0 if v
    was above it from the start."""
    inside = np.flatnonzero(v[: i + 1] <= level)
    if not len(inside):
        return 0.0
    k = int(inside[-1])
    if k >= i:
        return float(i)
    lo, hi = v[k], v[k + 1]
    return k + (level - lo) / (hi - lo) if hi > lo else float(k)
