"""Running averages of conditioned sweeps, per channel, each with a split-half noise estimate and SNR.

Three kinds, selectable per channel through make_averager: block (n sweeps, then start again), moving
window (the last n sweeps) and exponentially weighted (time constant n sweeps). Each keeps two half
averages over alternate accepted sweeps; (A - B) / 2 is the "±reference" (plus-minus average): it has the
noise of the full average (A + B) / 2 and none of the response, so
    noise_uv = RMS of (A - B) / 2 over the analysis window,
    snr_db = 10 log10(max(RMS(mean)^2 - noise^2, tiny) / noise^2).
All three work on one sweep of all channels at a time ([n_channels, n_samples]) with an acceptance mask, so
a rejected sweep on one channel does not hold back the others.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass
class Average:
    """An average of one channel or a stack of channels (leading axis)."""

    mean: np.ndarray  # µV, [..., n_samples]
    half_a: np.ndarray
    half_b: np.ndarray
    n: np.ndarray  # sweeps in the average (effective number for the exponential kind)
    noise_uv: np.ndarray  # RMS noise of the mean in the analysis window
    snr_db: np.ndarray

    def channel(self, ch: int) -> Average:
        return Average(self.mean[ch], self.half_a[ch], self.half_b[ch], self.n[ch], self.noise_uv[ch],
                       self.snr_db[ch])


def noise_and_snr(mean: np.ndarray, half_a: np.ndarray, half_b: np.ndarray,
                  window: slice | np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Split-half noise RMS (µV) and SNR (dB) of averages [..., n_samples] over the analysis window."""
    w = slice(None) if window is None else window
    noise2 = np.mean(((half_a - half_b)[..., w] / 2.0) ** 2, axis=-1)
    power = np.mean(mean[..., w] ** 2, axis=-1)
    tiny = 1e-12
    snr = 10.0 * np.log10(np.maximum(power - noise2, tiny) / np.maximum(noise2, tiny))
    return np.sqrt(noise2), snr


class _Averager:
    kind = ""

    def __init__(self, n_channels: int, n_samples: int, window: slice | np.ndarray | None = None):
        self.shape = (n_channels, n_samples)
        self.window = window

    def _result(self, a: np.ndarray, b: np.ndarray, na: np.ndarray, nb: np.ndarray) -> Average:
        n = na + nb
        with np.errstate(invalid="ignore", divide="ignore"):
            # The mean weights each half by its count, so an odd count is not biased towards one half.
            mean = np.where(n[:, None] > 0, (a * na[:, None] + b * nb[:, None]) / np.maximum(n, 1)[:, None], 0.0)
        noise, snr = noise_and_snr(mean, a, b, self.window)
        return Average(mean, a.copy(), b.copy(), n.astype(float), noise, snr)

    def update(self, sweep: np.ndarray, accepted: np.ndarray | None = None) -> None:
        raise NotImplementedError

    def estimate(self) -> Average:
        raise NotImplementedError


class BlockAverager(_Averager):
    """Averages of consecutive blocks of n accepted sweeps; estimate() is the last complete block (or the
    block in progress until the first one completes)."""

    kind = "block"

    def __init__(self, n_channels: int, n_samples: int, n: int = 300, window: slice | np.ndarray | None = None):
        super().__init__(n_channels, n_samples, window)
        self.n = int(n)
        self._sum = np.zeros((2, n_channels, n_samples))
        self._count = np.zeros((2, n_channels), dtype=int)
        self._done: Average | None = None
        self.completed = np.zeros(n_channels, dtype=bool)  # per channel: a block completed on the last update
        self._last = [None] * n_channels  # type: list[Average | None]

    def update(self, sweep: np.ndarray, accepted: np.ndarray | None = None) -> None:
        ok = np.ones(self.shape[0], dtype=bool) if accepted is None else np.asarray(accepted, dtype=bool)
        total = self._count.sum(axis=0)
        half = total % 2
        for h in (0, 1):
            sel = ok & (half == h)
            self._sum[h, sel] += sweep[sel]
            self._count[h, sel] += 1
        self.completed = ok & (self._count.sum(axis=0) >= self.n)
        for ch in np.flatnonzero(self.completed).tolist():
            self._last[ch] = self._current(ch)
            self._sum[:, ch] = 0.0
            self._count[:, ch] = 0

    def _current(self, ch: int) -> Average:
        na, nb = self._count[:, ch]
        a = self._sum[0, ch] / max(na, 1)
        b = self._sum[1, ch] / max(nb, 1)
        r = self._result(a[None], b[None], np.array([na]), np.array([nb]))
        return r.channel(0)

    def estimate(self) -> Average:
        per = [self._last[ch] or self._current(ch) for ch in range(self.shape[0])]
        return Average(*(np.stack([getattr(p, f) for p in per]) for f in Average.__dataclass_fields__))


class MovingAverager(_Averager):
    """The average of the last n accepted sweeps of each channel (n even keeps the halves equal)."""

    kind = "moving"

    def __init__(self, n_channels: int, n_samples: int, n: int = 100, window: slice | np.ndarray | None = None):
        super().__init__(n_channels, n_samples, window)
        self.n = int(n) + int(n) % 2
        self._buf = np.zeros((self.n, n_channels, n_samples))
        self._pos = np.zeros(n_channels, dtype=int)  # next slot per channel
        self._filled = np.zeros(n_channels, dtype=int)
        self._sum = np.zeros((2, n_channels, n_samples))
        self._updates = 0

    def update(self, sweep: np.ndarray, accepted: np.ndarray | None = None) -> None:
        ok = np.ones(self.shape[0], dtype=bool) if accepted is None else np.asarray(accepted, dtype=bool)
        chans = np.flatnonzero(ok)
        slot = self._pos[chans]
        half = slot % 2  # slot parity: the halves stay alternate sweeps as the window slides
        full = self._filled[chans] >= self.n
        old = self._buf[slot, chans]
        self._sum[half, chans] -= np.where(full[:, None], old, 0.0)
        self._sum[half, chans] += sweep[chans]
        self._buf[slot, chans] = sweep[chans]
        self._pos[chans] = (slot + 1) % self.n
        self._filled[chans] = np.minimum(self._filled[chans] + 1, self.n)
        self._updates += 1
        if self._updates % (50 * self.n) == 0:  # re-sum now and then: no rounding drift over hours
            idx = np.arange(self.n)
            for h in (0, 1):
                self._sum[h] = self._buf[idx % 2 == h].sum(axis=0)

    def estimate(self) -> Average:
        filled = self._filled
        na = (filled + 1) // 2
        nb = filled // 2
        a = self._sum[0] / np.maximum(na, 1)[:, None]
        b = self._sum[1] / np.maximum(nb, 1)[:, None]
        return self._result(a, b, na, nb)


class ExponentialAverager(_Averager):
    """Exponentially weighted average with a time constant of n accepted sweeps.

    Each half is an exponential average of alternate sweeps (weight 2/n per update, since each half sees
    every other sweep); the effective number of sweeps of the mean is reported as n."""

    kind = "exponential"

    def __init__(self, n_channels: int, n_samples: int, n: float = 100.0, window: slice | np.ndarray | None = None):
        super().__init__(n_channels, n_samples, window)
        self.n = float(n)
        self._half = np.zeros((2, n_channels, n_samples))
        self._count = np.zeros((2, n_channels), dtype=int)

    def update(self, sweep: np.ndarray, accepted: np.ndarray | None = None) -> None:
        ok = np.ones(self.shape[0], dtype=bool) if accepted is None else np.asarray(accepted, dtype=bool)
        total = self._count.sum(axis=0)
        for h in (0, 1):
            sel = ok & (total % 2 == h)
            if not sel.any():
                continue
            self._count[h, sel] += 1
            # Start as a plain mean, then settle to weight 2/n: no start-up bias towards zero.
            w = np.maximum(1.0 / self._count[h, sel], 2.0 / self.n)
            if sel.all():  # the usual case: every channel at once, in place (no gather and scatter of rows)
                half = self._half[h]
                half += w[:, None] * (sweep - half)
            else:
                self._half[h, sel] += w[:, None] * (sweep[sel] - self._half[h, sel])

    def estimate(self) -> Average:
        na, nb = self._count
        # Effective sweeps per half: min(count, (2 - w) / w) with w = 2 / n.
        w = 2.0 / self.n
        cap = (2.0 - w) / w
        ea, eb = np.minimum(na, cap), np.minimum(nb, cap)
        return self._result(self._half[0], self._half[1], ea, eb)


_KINDS = {c.kind: c for c in (BlockAverager, MovingAverager, ExponentialAverager)}


def make_averager(kind: str, n_channels: int, n_samples: int, n: float = 100,
                  window: slice | np.ndarray | None = None) -> _Averager:
    """An averager by name: 'block', 'moving' or 'exponential'; n is the block size / window / time constant."""
    try:
        cls = _KINDS[kind]
    except KeyError:
        raise ValueError("unknown averager %r (expected one of %s)" % (kind, ", ".join(_KINDS))) from None
    return cls(n_channels, n_samples, n, window)  # type: ignore[arg-type]


class PerChannelAverages:
    """A different averager per channel (e.g. a fast exponential average on a cortical channel and a
    block average on a peripheral one): one averager of each kind in use, updated with the channel mask."""

    def __init__(self, kinds: list[tuple[str, float]], n_samples: int, window: slice | np.ndarray | None = None):
        self.kinds = kinds
        self._by_kind: dict[tuple[str, float], tuple[_Averager, np.ndarray]] = {}
        for key in dict.fromkeys(kinds):
            mask = np.array([k == key for k in kinds])
            self._by_kind[key] = (make_averager(key[0], len(kinds), n_samples, key[1], window), mask)

    def update(self, sweep: np.ndarray, accepted: np.ndarray | None = None) -> None:
        ok = np.ones(len(self.kinds), dtype=bool) if accepted is None else np.asarray(accepted, dtype=bool)
        for avg, mask in self._by_kind.values():
            avg.update(sweep, ok & mask)

    def estimate(self) -> Average:
        parts = {key: avg.estimate() for key, (avg, _) in self._by_kind.items()}
        per = [parts[key].channel(ch) for ch, key in enumerate(self.kinds)]
        return Average(*(np.stack([getattr(p, f) for p in per]) for f in Average.__dataclass_fields__))
