"""BAEP from the board: the click-locked sweeps of the montage's BAEP channels (Cz-A1, Cz-A2), cut by the live case
from the board's 8-kSPS stream around every click the firmware latched, resampled to FS_HZ and grouped BLOCK at a
time as ionm.sweep.BaepBlock for the console's BAEP path (engine.run_baep_source), which averages, rejects artefact,
marks waves I, III, V and judges wave V.

The console's BAEP analysis works at 20 kHz (the rate BAEP systems record at); the board runs at 8 kSPS for the whole
montage, whose anti-alias filter (the ADS1299's sinc, -3 dB near 2.1 kHz) already bounds the BAEP band. Each sweep
is cut EDGE_MS wider on both sides than the analysis window, resampled by 5/2 with SciPy's polyphase filter
(band-limited interpolation: the waves' peaks are not moved), and trimmed to -PRE_MS..POST_MS, so the filter's edge
effects fall outside it. The board records DC-coupled: each sweep's slow part (EEG, drift, mains) is taken off as a
polynomial (SLOW_ORDER), as a BAEP amplifier's high-pass would. The stimulated ear's derivation is delivered first
(Cz-A1 for the left ear).
"""

from __future__ import annotations

import threading
import time
from typing import Any

import numpy as np
from scipy import signal

from ionm.board.blockqueue import BlockQueue
from ionm.sweep import BaepBlock, Sweep

FS_HZ = 20000.0
PRE_MS = 1.0
POST_MS = 10.0
EDGE_MS = 2.0  # cut this much more on each side: the resampling filter's edges
BLOCK = 10  # sweeps per block
# The slow part taken off each sweep: EEG, drift and most of the mains (a 50-Hz cycle is 20 ms). On the virtual
# patient with the scenarios' mains and four SSEP outputs, a quadratic left enough mains in a 1000-sweep average to
# misplace wave III; a 7th-order polynomial keeps the waves' latencies and most of wave V's amplitude (a baseline and
# the sweeps judged against it are treated alike). What it still leaves: docs/CONSOLE.md, "BAEP from the board".
SLOW_ORDER = 7
HELD_MAX = 2000  # sweeps held before begin() (a resumed case: the console reads its store meanwhile)
QUEUE_BLOCKS = 400  # 190 s of sweeps at 21.1 Hz waiting for the console; a full queue drops, counted


def _without_slow(x: np.ndarray) -> np.ndarray:
    """The sweep [ch, n] without its slow part: a BAEP amplifier high-passes at 100-150 Hz, the board (DC-coupled)
    does not. A polynomial of SLOW_ORDER fitted over the 15-ms sweep is subtracted per channel: a filter would ring
    at the sweep's edges, and a longer cut would hold more of the other outputs' pulses."""
    t = np.linspace(-1.0, 1.0, x.shape[1])
    basis = np.stack([t ** k for k in range(SLOW_ORDER + 1)], axis=1)  # [n, SLOW_ORDER + 1]
    coef, *_ = np.linalg.lstsq(basis, x.T, rcond=None)
    return x - (basis @ coef).T


class BaepTap(BlockQueue[BaepBlock]):
    """put() the board's BAEP sweeps (cut with EDGE_MS of margin); iterate for BaepBlocks."""

    def __init__(self, side: str, rate_hz: float, start_s: float | None = 0.0) -> None:
        super().__init__(QUEUE_BLOCKS)
        self.side = side
        self.stream = "baep/%s ear" % side
        self.rate_hz = float(rate_hz)
        self.pre = int(round(PRE_MS * FS_HZ / 1000))
        self.n = self.pre + int(round(POST_MS * FS_HZ / 1000))
        self._pending: list[np.ndarray] = []  # resampled sweeps [ch, n] not yet in a block
        self._t0: float | None = None  # case time of the first pending sweep
        self._first = 0  # index of the next block's first sweep
        self._offset_s: float | None = start_s  # added to the sweeps' source time (a resumed case goes on)
        self._last_t: float | None = None
        self.sweeps_in = 0
        self.sweeps_incomplete = 0  # sweeps with samples the board lost: dropped, counted
        self.names: tuple[str, ...] = ()
        self._held: list[Sweep] = []
        self._lock = threading.Lock()

    def begin(self, start_s: float) -> None:
        """A resumed case: the BAEP's clock goes on from start_s; the sweeps held until then are delivered."""
        with self._lock:
            if self._offset_s is not None:
                return
            self._offset_s = float(start_s)
            held, self._held = self._held, []
        for sw in held:
            self.put(sw)

    def put(self, sw: Sweep) -> None:
        with self._lock:
            if self._offset_s is None:  # (start_s None: held until begin() says where the clock goes on)
                self._held.append(sw)
                del self._held[:-HELD_MAX]
                return
        self._put(sw)

    def _put(self, sw: Sweep) -> None:
        if not np.isfinite(sw.data_uv).all():  # samples the board lost (NaN in the live case's buffer): not a sweep
            with self._lock:
                self.sweeps_incomplete += 1
            return
        x = _without_slow(np.asarray(sw.data_uv, dtype=np.float64))
        y = signal.resample_poly(x, int(FS_HZ), int(sw.fs), axis=1) if sw.fs != FS_HZ else x
        start = int(round(sw.pre_samples * FS_HZ / sw.fs)) - self.pre  # the click at sample pre of the cut
        cut = y[:, start:start + self.n]
        if cut.shape[1] < self.n:
            return  # (a sweep cut short cannot happen with the spec BoardCase sets; never padded)
        with self._lock:
            assert self._offset_s is not None
            t = sw.t_s + self._offset_s
            if self._last_t is not None and t <= self._last_t:  # the board's clock restarted: go on after it
                self._offset_s += self._last_t - t + 1.0 / self.rate_hz
                t = sw.t_s + self._offset_s
            self._last_t = t
            self.names = sw.channel_names
            if not self._pending:
                self._t0 = t
            self._pending.append(cut.astype(np.float32))
            self.sweeps_in += 1
            if len(self._pending) >= BLOCK:
                block = BaepBlock(float(self._t0 or 0.0), self._first, self.rate_hz, FS_HZ, self.pre, self.names,
                                  self.side, np.stack(self._pending, axis=1), time.time())
                self._first += len(self._pending)
                self._pending = []
                self.offer(block)

    def link_health(self) -> dict[str, Any]:
        return {"baep": "board", "baep_sweeps": self.sweeps_in, "baep_sweeps_incomplete": self.sweeps_incomplete,
                "baep_blocks": self.blocks_sent,
                "baep_blocks_dropped": self.blocks_dropped}
