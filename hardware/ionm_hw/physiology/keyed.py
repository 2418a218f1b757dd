"""Keyed random streams: an RNG per (seed, stream, position) so any piece can be regenerated alone."""

from __future__ import annotations

import zlib
from collections import OrderedDict
from collections.abc import Callable, Hashable

import numpy as np

# Stream identifiers: one per independent source of randomness (changing one never shifts another).
PATIENT = 1
TRIAL = 2
BACKGROUND = 3
CAUTERY_NOISE = 4
CAUTERY = 5
POPS = 6
EMG_BURSTS = 7
AMPLIFIER = 8
MAINS = 10


def name_key(name: str) -> int:
    """A stable integer for a name (e.g. a response), so draws keyed by name survive table reordering."""
    return zlib.crc32(name.encode("utf-8"))


def rng(seed: int, stream: int, *position: int) -> np.random.Generator:
    if seed < 0:
        raise ValueError("seed must be non-negative")
    return np.random.default_rng([seed, stream, *position])


class LruCache:
    """A small least-recently-used cache (access is mostly monotonic in time, so a few entries suffice)."""

    def __init__(self, size: int) -> None:
        self._size = size
        self._data: OrderedDict[Hashable, object] = OrderedDict()

    def get(self, key: Hashable, make: Callable[[], object]) -> object:
        if key in self._data:
            self._data.move_to_end(key)
            return self._data[key]
        value = make()
        self._data[key] = value
        if len(self._data) > self._size:
            self._data.popitem(last=False)
        return value


class KeyedWhite:
    """Unit-variance white noise per channel, random access by sample index (fixed chunks keyed by number)."""

    CHUNK = 4096  # samples

    def __init__(self, seed: int, stream: int) -> None:
        self._seed = seed
        self._stream = stream
        self._cache = LruCache(64)

    def _chunk(self, k: int, channel: int) -> np.ndarray:
        make = lambda: rng(self._seed, self._stream, k, channel).standard_normal(self.CHUNK)
        out = self._cache.get((k, channel), make)
        assert isinstance(out, np.ndarray)
        return out

    def samples(self, first: int, n: int, channel: int) -> np.ndarray:
        out = np.empty(n)
        pos = first
        while pos < first + n:
            k, r = divmod(pos, self.CHUNK)
            take = min(self.CHUNK - r, first + n - pos)
            out[pos - first : pos - first + take] = self._chunk(k, channel)[r : r + take]
            pos += take
        return out
