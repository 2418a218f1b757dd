"""Per-channel baselines: accumulate accepted sweeps until set on demand or once reproducible.

"Reproducible" follows the overlay rule readers use (IONM-REFERENCE: reproducible averages overlay with
≤ 20–30 % amplitude difference, MacDonald 2005): the two split-half averages' amplitudes, measured as their
projections on the full average, differ by at most `max_half_difference` (default 20 %).
"""

from __future__ import annotations

from collections import deque

import numpy as np


class BaselineAccumulator:
    """Sums of accepted conditioned sweeps in two alternate halves, plus the most recent `keep` sweeps at the
    tracker's sample indices (for its noise model), per channel."""

    def __init__(self, n_channels: int, n_samples: int, idx: np.ndarray, keep: int = 400,
                 window: slice | np.ndarray | None = None):
        self.idx = idx
        self.window = slice(None) if window is None else window
        self.sums = np.zeros((2, n_channels, n_samples))
        self.counts = np.zeros((2, n_channels), dtype=int)
        self.recent: deque[tuple[np.ndarray, np.ndarray]] = deque(maxlen=keep)

    def add(self, sweep: np.ndarray, accepted: np.ndarray) -> None:
        ok = np.asarray(accepted, dtype=bool)
        half = self.counts.sum(axis=0) % 2
        for h in (0, 1):
            sel = ok & (half == h)
            self.sums[h, sel] += sweep[sel]
            self.counts[h, sel] += 1
        self.recent.append((sweep[:, self.idx].astype(np.float32), ok.copy()))

    @property
    def n(self) -> np.ndarray:
        return self.counts.sum(axis=0)

    def halves(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(mean, half_a, half_b), each [ch, n_samples]."""
        na, nb = self.counts
        a = self.sums[0] / np.maximum(na, 1)[:, None]
        b = self.sums[1] / np.maximum(nb, 1)[:, None]
        mean = (self.sums[0] + self.sums[1]) / np.maximum(na + nb, 1)[:, None]
        return mean, a, b

    def aligned(self) -> tuple[np.ndarray, np.ndarray]:
        """The recent sweeps of all channels at the tracker's indices, [k, ch, len(idx)] (float32), and which
        channel accepted each, [k, ch]: rows line up across channels (cross-channel correlations)."""
        if not self.recent:
            n_ch = self.counts.shape[1]
            return np.zeros((0, n_ch, len(self.idx)), dtype=np.float32), np.zeros((0, n_ch), dtype=bool)
        return np.stack([s for s, _ in self.recent]), np.stack([ok for _, ok in self.recent])

    def stack(self, channel: int) -> np.ndarray:
        """Recent accepted sweeps of one channel at the tracker's indices, [k, len(idx)]."""
        rows = [s[channel] for s, ok in self.recent if ok[channel]]
        return np.array(rows, dtype=np.float64).reshape(len(rows), len(self.idx))

    def reproducibility(self) -> np.ndarray:
        """Per channel: relative amplitude difference of the two halves, |A - B| / mean, each amplitude being
        the half's projection on the full average over the analysis window (NaN before two sweeps)."""
        mean, a, b = self.halves()
        w = self.window
        ref = np.sum(mean[:, w] ** 2, axis=1)
        pa = np.sum(a[:, w] * mean[:, w], axis=1) / np.maximum(ref, 1e-30)
        pb = np.sum(b[:, w] * mean[:, w], axis=1) / np.maximum(ref, 1e-30)
        out = np.abs(pa - pb) / np.maximum((pa + pb) / 2, 1e-30)
        return np.where(self.n >= 2, out, np.nan)

    def is_stable(self, min_sweeps: int = 200, max_half_difference: float = 0.2) -> np.ndarray:
        """Per channel: enough sweeps, and halves that overlay within max_half_difference."""
        rep = self.reproducibility()
        return (self.n >= min_sweeps) & (rep <= max_half_difference)
