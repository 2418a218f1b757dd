"""Sweep conditioning: counts -> µV, stimulus blanking, mains cancellation, band-pass, artifact rejection.

Every function works on one sweep ([n_channels, n_samples]) or a stack of them ([..., n_samples]); what a
sweep's conditioning uses is that sweep's own samples (zero-phase filtering inside the sweep window is
therefore causal at the sweep level) plus, for mains and rejection, state built from earlier sweeps only.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import lru_cache

import numpy as np
from scipy import signal

ADS1299_FULL_SCALE_CODE = (1 << 23) - 1


def lsb_uv(pga_gain: float | np.ndarray, vref_v: float = 4.5) -> np.ndarray:
    """µV per count of a 24-bit ADS1299 code: full scale ±Vref/gain over 2^23 codes."""
    return np.asarray(vref_v * 1e6 / (np.asarray(pga_gain, dtype=float) * (1 << 23)))


def counts_to_uv(counts: np.ndarray, pga_gain: float | np.ndarray, gain_correction: float | np.ndarray = 0.0,
                 offset_uv: float | np.ndarray = 0.0, vref_v: float = 4.5) -> np.ndarray:
    """Raw two's-complement counts [..., n_channels, n_samples] -> µV with the board calibration.

    pga_gain, gain_correction and offset_uv are scalars or per-channel arrays [n_channels]. The calibration
    convention: uv = (counts * lsb - offset_uv) * (1 + gain_correction), i.e. offset_uv is the input-referred
    offset the channel reads with shorted inputs, and gain_correction the fractional correction that brings a
    known test amplitude to its nominal value (a channel reading 0.2 % high has gain_correction = -0.002/1.002).
    """
    counts = np.asarray(counts)
    per_ch = [np.asarray(v, dtype=float)[..., None] for v in (pga_gain, gain_correction, offset_uv)]
    gain, corr, offset = per_ch
    return (counts.astype(np.float64) * lsb_uv(gain, vref_v) - offset) * (1.0 + corr)


def blank_slice(fs: float, pre_samples: int, n_samples: int, blank_ms: tuple[float, float]) -> slice:
    """Samples around the stimulus (at index pre_samples) that the stimulus artefact owns."""
    lo = max(0, pre_samples - int(round(blank_ms[0] * 1e-3 * fs)))
    hi = min(n_samples, pre_samples + int(round(blank_ms[1] * 1e-3 * fs)) + 1)
    return slice(lo, hi)


def blank_stimulus(sweeps: np.ndarray, fs: float, pre_samples: int, blank_ms: tuple[float, float]) -> np.ndarray:
    """Replace the stimulus artefact by a straight line between the samples either side (a copy).

    Interpolating rather than zeroing keeps a step-free signal, so the band-pass does not ring on it."""
    out = np.array(sweeps, dtype=np.float64, copy=True)
    sl = blank_slice(fs, pre_samples, out.shape[-1], blank_ms)
    if sl.stop <= sl.start:
        return out
    left = out[..., sl.start - 1] if sl.start > 0 else out[..., sl.stop] if sl.stop < out.shape[-1] else 0.0
    right = out[..., sl.stop] if sl.stop < out.shape[-1] else left
    frac = (np.arange(sl.start, sl.stop) - (sl.start - 1)) / float(sl.stop - sl.start + 1)
    out[..., sl] = np.asarray(left)[..., None] + (np.asarray(right) - np.asarray(left))[..., None] * frac
    return out


@lru_cache(maxsize=16)
def _line_basis(n: int) -> tuple[np.ndarray, np.ndarray]:
    """A straight-line basis [n, 2] and its pseudo-inverse [2, n]."""
    a = np.stack([np.ones(n), np.linspace(-1.0, 1.0, n)], axis=1)
    return a, np.linalg.pinv(a)


def detrend(sweeps: np.ndarray) -> np.ndarray:
    """Remove each sweep's straight-line trend: electrode offsets (up to mV) and slow drift within 0.1 s."""
    x = np.asarray(sweeps, dtype=np.float64)
    a, pinv = _line_basis(x.shape[-1])
    return np.asarray(x - (x @ pinv.T) @ a.T)


@lru_cache(maxsize=32)
def bandpass_sos(fs: float, lo_hz: float, hi_hz: float, order: int = 2) -> np.ndarray:
    """Butterworth band-pass (low-pass when lo_hz is 0); the upper edge is kept below 0.45 fs."""
    hi = min(hi_hz, 0.45 * fs)
    if lo_hz <= 0:
        return np.asarray(signal.butter(order, hi, btype="lowpass", fs=fs, output="sos"))
    return np.asarray(signal.butter(order, [lo_hz, hi], btype="bandpass", fs=fs, output="sos"))


@lru_cache(maxsize=32)
def _sos_zi(fs: float, lo_hz: float, hi_hz: float, order: int) -> np.ndarray:
    return np.asarray(signal.sosfilt_zi(bandpass_sos(fs, lo_hz, hi_hz, order)))


@lru_cache(maxsize=32)
def _tail_map(fs: float, lo_hz: float, hi_hz: float, order: int, padlen: int) -> np.ndarray:
    """The backward pass's initial state [n_sections * 2] as a linear map of the forward pass's final state at
    the sweep's end and the sweep's last value [n_sections * 2 + 1]: the extension is a constant, so filtering
    it forward, then backward from its steady state, is linear in those and is done once here, not per sweep."""
    sos, zi = bandpass_sos(fs, lo_hz, hi_hz, order), _sos_zi(fs, lo_hz, hi_hz, order)
    n_state = zi.size
    out = np.zeros((n_state, n_state + 1))
    for j in range(n_state + 1):
        z0 = np.zeros(n_state)
        if j < n_state:
            z0[j] = 1.0
        c = 1.0 if j == n_state else 0.0
        y, _ = signal.sosfilt(sos, np.full(padlen, c), zi=z0.reshape(zi.shape))
        _, zb = signal.sosfilt(sos, y[::-1], zi=zi * y[-1])
        out[:, j] = zb.ravel()
    return out


def bandpass(sweeps: np.ndarray, fs: float, band_hz: tuple[float, float], order: int = 2) -> np.ndarray:
    """Zero-phase band-pass inside each sweep window (forward-backward: latencies are not shifted).

    The edges are extended with their end values (one period of the low edge) so the high-pass starts
    settled; an odd reflection would mirror a large response (an MEP) into the padding and leave its
    high-pass transient as an offset across the sweep. The result is that of sosfiltfilt with
    padtype="constant", for less work (this runs once per sweep live): the forward pass starts in the steady
    state of the first value (scipy's sosfilt_zi), which is exactly where a run over the constant left
    extension would leave it; the right extension's forward and backward passes are linear in the forward
    state at the sweep's end and the last value, so they are a precomputed map (_tail_map); and the backward
    pass's output over the left extension would be discarded, so it stops at the sweep's start."""
    key = (float(fs), float(band_hz[0]), float(band_hz[1]), order)
    sos, zi = bandpass_sos(*key), _sos_zi(*key)
    x = np.asarray(sweeps, dtype=np.float64)
    n = x.shape[-1]
    padlen = min(n - 1, int(fs / band_hz[0]) if band_hz[0] > 0 else 3 * (2 * len(sos) + 1))
    shape = (len(sos),) + (1,) * (x.ndim - 1) + (2,)
    zi_b = zi.reshape(shape)
    y, zf = signal.sosfilt(sos, x, axis=-1, zi=zi_b * x[..., :1][None])
    # zf [n_sections, ..., 2] -> [..., n_sections * 2] with the last value appended, through the map.
    state = np.concatenate([np.moveaxis(zf, 0, -2).reshape(x.shape[:-1] + (-1,)), x[..., -1:]], axis=-1)
    zb = state @ _tail_map(*key, padlen).T
    zb = np.moveaxis(zb.reshape(x.shape[:-1] + (len(sos), 2)), -2, 0)
    y, _ = signal.sosfilt(sos, y[..., ::-1], axis=-1, zi=zb)
    # Contiguous again (one copy, ~10 µs): every consumer of a reversed view pays more than that.
    return np.ascontiguousarray(y[..., ::-1])


class MainsCanceller:
    """Adaptive cancellation of mains (50 and/or 60 Hz and harmonics) across sweeps.

    Mains is locked to wall-clock time, not to the stimulus: with a stimulus rate that does not divide the
    mains frequency it lands at a different phase in every sweep. The canceller fits sines and cosines of
    absolute time (stim_time_s + sample offset) by least squares accumulated over earlier sweeps with a
    forgetting factor (memory of ~memory_sweeps sweeps); the evoked response, being at a random mains phase
    in each sweep, averages out of that fit instead of being removed, which a per-sweep notch on a 50 ms
    window could not guarantee. A sweep is cleaned with the estimate from the sweeps before it (causal), then
    joins the estimate. Mains frequency drift (grid: a few mHz) over the memory (~5 s at 4.7 Hz) leaves a
    few % of the hum; a shorter memory would let more of the response leak into the estimate.
    """

    def __init__(self, fs: float, n_samples: int, pre_samples: int, mains_hz: tuple[float, ...] = (50.0, 60.0),
                 harmonics: int = 3, memory_sweeps: float = 25.0, exclude: slice | None = None,
                 fit_mask: np.ndarray | None = None):
        self.fs = float(fs)
        self.freqs = np.array([f * k for f in mains_hz for k in range(1, harmonics + 1) if f * k < 0.45 * fs])
        self.offsets_s = (np.arange(n_samples) - pre_samples) / self.fs
        # Samples the fit learns from: all but the artefact, or only fit_mask (MEPs: where no response is,
        # since a 1 mV response would leak into the estimate far more than a µV EP does).
        self.keep = np.ones(n_samples, dtype=bool) if fit_mask is None else np.asarray(fit_mask, dtype=bool).copy()
        if exclude is not None:
            self.keep[exclude] = False
        self.forget = 1.0 - 1.0 / memory_sweeps
        m = 2 * len(self.freqs)
        self.gram = np.zeros((m, m))
        self.rhs: np.ndarray | None = None
        self.n_updates = 0

    def _basis(self) -> None:
        """Per-sample terms of the angle-sum identity, cached: cos and sin of 2 pi f x (sample offset) [n, nf],
        side by side, and the same with the samples the fit ignores zeroed; and the fit's Gram matrix at
        stimulus phase 0, from which any phase's is a rotation."""
        b = 2 * np.pi * np.outer(self.offsets_s, self.freqs)
        self._b = np.concatenate([np.cos(b), np.sin(b)], axis=1)  # [n, 2 nf]
        self._bk = self._b * self.keep[:, None]
        self._b_rows = np.ascontiguousarray(self._b.T)  # [2 nf, n]: the fit subtracted as rows, not columns
        self._g0 = self._bk.T @ self._bk

    def _rotation(self, stim_time_s: float) -> np.ndarray:
        """[2 nf, 2 nf] R with design(t) = basis @ R, design(t) the cosines and sines of absolute time for a sweep
        stimulated at t: cos(a + b) = cos a cos b - sin a sin b, sin(a + b) = sin a cos b + cos a sin b, a the
        phase of the stimulus time (trigonometry of 2 nf values per sweep)."""
        a = 2 * np.pi * np.mod(stim_time_s * self.freqs, 1.0)  # wrapped: exact even hours into a case
        ca, sa = np.cos(a), np.sin(a)
        nf = len(a)
        rot = np.zeros((2 * nf, 2 * nf))  # [[diag cos, diag sin], [-diag sin, diag cos]]
        d = np.arange(nf)
        rot[d, d] = rot[d + nf, d + nf] = ca
        rot[d, d + nf] = sa
        rot[d + nf, d] = -sa
        return rot

    def apply(self, sweep: np.ndarray, stim_time_s: float, in_place: bool = False) -> np.ndarray:
        """Cancel mains in one sweep [..., n_samples] (a copy, or the float64 sweep itself if in_place), having
        learnt from it first (its own estimate is not used on it: the cancellation stays causal)."""
        if len(self.freqs) == 0:
            return np.array(sweep, dtype=np.float64)
        if not hasattr(self, "_b"):
            self._basis()
        x = np.asarray(sweep, dtype=np.float64)
        rows = x.reshape(-1, x.shape[-1])
        rot = self._rotation(stim_time_s)
        coef = None
        if self.rhs is not None and self.n_updates >= 3:
            # Ridge of 1e-6 of the mean diagonal: harmless when 50 and 60 Hz are both fitted.
            g = self.gram.copy()
            g.flat[:: len(g) + 1] += 1e-6 * np.trace(self.gram) / len(g)
            coef = np.linalg.solve(g, self.rhs.reshape(len(g), -1))
        # The fit's terms at this phase: design' x = R' (basis' x) and design' design = R' G0 R.
        rhs = rot.T @ (rows @ self._bk).T  # [2 n_freqs, n_rows]
        self.gram = self.forget * self.gram + rot.T @ self._g0 @ rot
        self.rhs = rhs if self.rhs is None or self.rhs.shape != rhs.shape else self.forget * self.rhs + rhs
        self.n_updates += 1
        out = x if in_place and x is sweep else x.copy()
        if coef is not None:
            out -= ((rot @ coef).T @ self._b_rows).reshape(x.shape)
        return out


class TrialMainsFit:
    """Mains removed from one sweep by its own samples: for single trials (TcMEP) that come too seldom for
    MainsCanceller to follow the mains phase (a few mHz of grid drift is a radian in a minute).

    Each candidate family (a mains frequency with its harmonics under 0.45 fs) and an offset are fitted by
    least squares to the sweep's fit_mask samples, where no response is (those before the train); the family
    that leaves the smaller residual is subtracted from the whole sweep, offset included. Fitting 50 and 60 Hz
    together would not do: 10 Hz apart, they are barely separable in tens of ms, and the combination that
    cancels inside the fit samples grows outside them. Needs fit samples spanning one period of the lowest
    fundamental (20 ms at 50 Hz); with fewer (a short pre-stimulus window) the sweep is left as it is, the
    fit could not tell hum from the response's neighbourhood.
    """

    def __init__(self, fs: float, n_samples: int, pre_samples: int, mains_hz: tuple[float, ...],
                 fit_mask: np.ndarray, harmonics: int = 3):
        self.fs = float(fs)
        keep = np.asarray(fit_mask, dtype=bool)
        idx = np.flatnonzero(keep)
        t = (np.arange(n_samples) - pre_samples) / self.fs
        self.families: list[tuple[np.ndarray, np.ndarray]] = []  # (design over the sweep, its pinv on fit samples)
        span = (idx[-1] - idx[0] + 1) / self.fs if len(idx) else 0.0
        for f0 in mains_hz:
            freqs = [f0 * k for k in range(1, harmonics + 1) if f0 * k < 0.45 * fs]
            if not freqs or span * f0 < 1.0 or len(idx) < 4 * (2 * len(freqs) + 1):
                continue
            b = 2 * np.pi * np.outer(t, freqs)
            design = np.concatenate([np.ones((n_samples, 1)), np.cos(b), np.sin(b)], axis=1)
            self.families.append((design, np.linalg.pinv(design[idx])))
        self.idx = idx

    def apply(self, sweep: np.ndarray, stim_time_s: float = 0.0, in_place: bool = False) -> np.ndarray:
        """The sweep [..., n_samples] less its fitted mains (a copy, or the float64 sweep itself if in_place).
        Time is taken from the stimulus: a per-sweep fit needs no absolute phase."""
        x = np.asarray(sweep, dtype=np.float64)
        if not in_place:
            x = x.copy()
        if not self.families:
            return x
        rows = x.reshape(-1, x.shape[-1])
        y = rows[:, self.idx]
        best = np.zeros_like(rows)
        best_rss = np.full(len(rows), np.inf)
        for design, pinv in self.families:
            coef = y @ pinv.T  # [rows, terms]
            rss = ((y - coef @ design[self.idx].T) ** 2).sum(axis=1)
            better = rss < best_rss
            best[better] = (coef @ design.T)[better]
            best_rss = np.minimum(rss, best_rss)
        rows -= best
        return rows.reshape(x.shape)  # x itself when it was contiguous (a reshape of a strided x is a copy)


@dataclass
class Conditioner:
    """The whole per-sweep conditioning for one recording: blank, detrend, mains, band-pass."""

    fs: float
    n_samples: int
    pre_samples: int
    band_hz: tuple[float, float]
    blank_ms: tuple[float, float]
    mains_hz: tuple[float, ...] = (50.0, 60.0)
    mains_fit_mask: np.ndarray | None = None
    # Single trials: mains fitted in each sweep on mains_fit_mask (TrialMainsFit) instead of across sweeps.
    mains_per_sweep: bool = False
    # Offset removal: a straight-line detrend over the sweep (EPs are far below the noise), or, when
    # given, the mean of these samples (MEPs: a 2 mV response would tilt a fitted line by tens of µV).
    baseline_mask: np.ndarray | None = None
    mains: MainsCanceller | TrialMainsFit | None = field(default=None, repr=False)

    def __post_init__(self) -> None:
        self.blank = blank_slice(self.fs, self.pre_samples, self.n_samples, self.blank_ms)
        if self.mains is None and self.mains_hz and self.mains_per_sweep and self.mains_fit_mask is not None:
            self.mains = TrialMainsFit(self.fs, self.n_samples, self.pre_samples, self.mains_hz, self.mains_fit_mask)
        elif self.mains is None and self.mains_hz:
            self.mains = MainsCanceller(self.fs, self.n_samples, self.pre_samples, self.mains_hz,
                                        exclude=self.blank, fit_mask=self.mains_fit_mask)

    def __call__(self, sweep_uv: np.ndarray, stim_time_s: float) -> np.ndarray:
        x = blank_stimulus(sweep_uv, self.fs, self.pre_samples, self.blank_ms)  # a float64 copy, changed in place
        if self.baseline_mask is None:
            a, pinv = _line_basis(x.shape[-1])
            x -= (x @ pinv.T) @ a.T
        else:
            x -= x[..., self.baseline_mask].mean(axis=-1, keepdims=True)
        if self.mains is not None:
            x = self.mains.apply(x, stim_time_s, in_place=True)
        x = bandpass(x, self.fs, self.band_hz)
        x[..., self.blank] = 0.0  # no information there: keep it out of averages and fits
        return x


REASONS = ("flat", "saturation", "cautery", "amplitude")


@dataclass(frozen=True)
class _Layout:
    """Where a keep mask's samples are, in the forms the per-sweep measures use: the starts of the runs of
    equal keep (np.ufunc.reduceat segments), which of them are kept, and the kept samples and kept pairs of
    neighbours (first differences within a kept run) as 0/1 weights for a matrix-vector sum."""

    starts: np.ndarray
    kept: np.ndarray
    weight: np.ndarray  # [n]
    pair_weight: np.ndarray  # [n - 1]
    n_kept: int
    n_pairs: int


@lru_cache(maxsize=64)
def _layout_cached(n: int, keep_bytes: bytes | None) -> _Layout:
    keep = np.ones(n, dtype=bool) if keep_bytes is None else np.frombuffer(keep_bytes, dtype=bool).copy()
    if not keep.any():  # nothing left to judge: judge everything rather than nothing
        keep[:] = True
    starts = np.flatnonzero(np.concatenate([[True], keep[1:] != keep[:-1]]))
    pairs = keep[1:] & keep[:-1]
    return _Layout(starts, keep[starts], keep.astype(np.float64), pairs.astype(np.float64), int(keep.sum()),
                   int(pairs.sum()))


def _layout(n: int, keep: np.ndarray | None) -> _Layout:
    """The layout of a keep mask over n samples (cached per mask: the same mask comes with every sweep)."""
    return _layout_cached(n, None if keep is None else np.ascontiguousarray(keep, dtype=bool).tobytes())


def _median_last(x: np.ndarray) -> np.ndarray:
    """np.median over the last axis, as its own partition (np.median's generality costs more than the work on
    a [2, 16, 100] history)."""
    n = x.shape[-1]
    lo, hi = (n - 1) // 2, n // 2
    part = np.partition(x, (lo, hi), axis=-1)
    return np.asarray(0.5 * (part[..., lo] + part[..., hi]))


@dataclass
class ArtifactRejector:
    """Per-channel sweep rejection with a count of rejected sweeps per reason.

    Checks, in order (a sweep is counted once, under the first reason that applies):
    - flat: raw peak-to-peak below flat_uv (lead off to a rail, disconnected amplifier);
    - saturation: raw samples at or beyond saturation_uv (±187.5 mV full scale at PGA gain 24, less margin);
    - cautery: high-frequency RMS (first difference, raw) above cautery_factor times its running median and
      rising more than twice as much as the conditioned RMS: electrocautery is large, white and reaches far
      above the EP band, while the usual background is mostly low-frequency;
    - amplitude: conditioned peak beyond amplitude_uv, or conditioned RMS more than rms_factor times its
      running median (EMG bursts, movement).
    Running medians cover the last `history` sweeps that were not flat or saturated, so a lasting change of
    noise level is learnt after half a history instead of rejecting everything from then on.
    """

    n_channels: int
    amplitude_uv: float = 100.0
    rms_factor: float = 3.0
    cautery_factor: float = 4.0
    saturation_uv: float = 180_000.0
    flat_uv: float = 0.05
    history: int = 100
    min_history: int = 10
    adaptive_rms: bool = True
    counts: list[dict[str, int]] = field(init=False)
    n_seen: int = field(init=False, default=0)
    # The last sweep's conditioned RMS against its running median, per channel (1 until there is a history).
    noise_ratio: np.ndarray = field(init=False)

    def __post_init__(self) -> None:
        self.counts = [dict.fromkeys(REASONS, 0) for _ in range(self.n_channels)]
        self.noise_ratio = np.ones(self.n_channels)
        # Ring buffer of the last `history` sweeps' (high-frequency RMS, conditioned RMS) per channel, the sweeps
        # on the last axis (the median partitions contiguous rows).
        self._hist = np.zeros((2, self.n_channels, self.history))
        self._filled = 0
        self._pos = 0

    def check(self, raw_uv: np.ndarray, conditioned: np.ndarray, keep: np.ndarray | None = None) -> list[str | None]:
        """Reasons ([n_channels], None = accepted) for one sweep; raw and conditioned are [n_channels, n].

        keep masks the samples to judge (the stimulus blanking and, for MEPs, the response are excluded
        from the adaptive measures by the caller)."""
        raw = np.asarray(raw_uv).reshape(self.n_channels, -1)  # float32 as recorded is fine for these measures
        cond = np.asarray(conditioned).reshape(self.n_channels, -1)
        lay = _layout(raw.shape[1], keep)
        # Per run of kept or left-out samples, one reduceat call each (no masked copies: this runs every sweep).
        seg_hi = np.maximum.reduceat(raw, lay.starts, axis=1)
        seg_lo = np.minimum.reduceat(raw, lay.starts, axis=1)
        hi, lo = seg_hi[:, lay.kept].max(axis=1), seg_lo[:, lay.kept].min(axis=1)
        flat = hi - lo < self.flat_uv
        sat = np.maximum(seg_hi.max(axis=1), -seg_lo.min(axis=1)) >= self.saturation_uv  # every sample counts
        d = np.diff(raw.astype(np.float64), axis=1)
        hf = np.sqrt((d * d) @ lay.pair_weight / max(lay.n_pairs, 1))
        c64 = np.asarray(cond, dtype=np.float64)
        rms = np.sqrt((c64 * c64) @ lay.weight / max(lay.n_kept, 1))
        cpeak = np.maximum(np.maximum.reduceat(c64, lay.starts, axis=1)[:, lay.kept].max(axis=1),
                           -np.minimum.reduceat(c64, lay.starts, axis=1)[:, lay.kept].min(axis=1))
        cautery = np.zeros(self.n_channels, dtype=bool)
        loud = cpeak > self.amplitude_uv
        self.noise_ratio = np.ones(self.n_channels)
        if self._filled >= self.min_history:
            med = _median_last(self._hist[:, :, : self._filled])  # [2, ch]
            hf_ratio = hf / np.maximum(med[0], 1e-12)
            rms_ratio = rms / np.maximum(med[1], 1e-12)
            self.noise_ratio = rms_ratio
            # Cautery is white (an aliased MHz carrier) on top of a background whose power sits at low
            # frequencies, so its high-frequency power rises far more than the in-band RMS; a general
            # rise of the noise raises both alike and is judged by amplitude instead.
            cautery = (hf_ratio > self.cautery_factor) & (hf_ratio > 2.0 * rms_ratio)
            if self.adaptive_rms:
                loud |= rms_ratio > self.rms_factor
        usable = ~(flat | sat)
        if usable.any():
            # Store the metrics of usable channels; the others repeat their last value.
            last = (self._pos - 1) % self.history
            new = np.stack([hf, rms])
            self._hist[:, :, self._pos] = np.where(usable, new, self._hist[:, :, last] if self._filled else new)
            self._pos = (self._pos + 1) % self.history
            self._filled = min(self._filled + 1, self.history)
        hits = np.stack([flat, sat, cautery, loud])  # in the order of REASONS: the first that applies counts
        reasons: list[str | None] = [None] * self.n_channels
        for ch in np.flatnonzero(hits.any(axis=0)):
            reason = REASONS[int(np.argmax(hits[:, ch]))]
            self.counts[ch][reason] += 1
            reasons[ch] = reason
        self.n_seen += 1
        return reasons
