"""EEG from the board's continuous stream: the montage's EEG channels (modality "eeg"), low-passed and decimated
from the board's rate (8 kSPS in the console) to FS_HZ, delivered as ionm.sweep.EegBlock to the console's EEG path
(engine.run_eeg_source), beside the evoked-potential sweeps cut from the same stream.

The ADS1299 has one rate per chip and the console runs the whole board at 8 kSPS for the evoked potentials, so the
EEG is not acquired at a rate of its own: 250 SPS is what the EEG is analysed, stored and exported at (0.5-30 Hz is
all the indices and the DSA use), and decimating on the host costs the link nothing beyond the channels it already
carries. Anti-aliasing: ANTIALIAS_ORDER-th order Butterworth at ANTIALIAS_HZ (SciPy, stateful across blocks), -40 dB
at the new Nyquist frequency, so stimulus artefacts and muscle above it do not fold into the EEG bands.

Nothing is lost silently. A stretch the board lost (an overrun: a gap in first_index) is held at the last samples
received, so that the EEG's own clock keeps the board's, and counted (`samples_held`); the link's loss count and
its technical alarm say the same. A new acquisition run (the board restarted acquisition, its index back at 0)
restarts the filter from the run's first sample; the EEG goes on from where it was (the outage is not in its
clock: the EEG stall alarm has already said that monitoring stopped).
"""

from __future__ import annotations

import threading
import time
from typing import Any

import numpy as np
from scipy import signal

from ionm.board.blockqueue import BlockQueue
from ionm.sweep import EegBlock

FS_HZ = 250.0
BLOCK_S = 0.25  # one EegBlock per this much EEG, as the simulated EEG source delivers them
ANTIALIAS_HZ = 70.0
ANTIALIAS_ORDER = 8
QUEUE_BLOCKS = 800  # 200 s of EEG waiting for the console (it takes them as they come; a full queue drops counted)


class EegTap(BlockQueue[EegBlock]):
    """Feed it the board's data blocks (µV, [n_samples, n_board_channels]); iterate it for EegBlocks. With
    start_s None it holds the EEG until begin(start_s) (the console knows where a resumed case's EEG ends only
    once the board is streaming)."""

    stream = "eeg/EEG"

    def __init__(self, channels: list[int], names: list[str], fs_in: float, fs_out: float = FS_HZ,
                 start_s: float | None = 0.0) -> None:
        super().__init__(QUEUE_BLOCKS)
        self.channels = list(channels)
        self.names = tuple(names)
        self.fs_in, self.fs = float(fs_in), float(fs_out)
        self.step = int(round(self.fs_in / self.fs))
        if self.step < 1 or abs(self.fs_in / self.step - self.fs) > 1e-6:
            raise ValueError("the EEG rate %g Hz must divide the board's %g Hz" % (self.fs, self.fs_in))
        self.sos = signal.butter(ANTIALIAS_ORDER, ANTIALIAS_HZ, fs=self.fs_in, output="sos")
        self._zi: np.ndarray | None = None  # filter state [sections, 2, channels] (axis 0 is time)
        self._next_in: int | None = None  # the board index expected next (None: before the first block)
        self._phase = 0  # offset into the next block of its first sample kept
        self._last: np.ndarray | None = None  # the last input samples, µV [channels]
        self._pending: list[np.ndarray] = []  # decimated samples not yet in a block, [channels, k]
        self._pending_n = 0
        self.block = max(int(round(BLOCK_S * self.fs)), 1)
        # the EEG's own clock (a resumed case goes on from its EEG); None: held until begin() says where it starts
        self.samples_out = int(round(start_s * self.fs)) if start_s is not None else None
        self.samples_held = 0  # board samples filled by holding the last value (lost by the board)
        self.runs = 0
        self._lock = threading.Lock()

    def feed(self, first_index: int, data_uv: np.ndarray) -> None:
        """One data block of the board (its first sample's index, µV of every board channel)."""
        x = np.asarray(data_uv, dtype=np.float64)[:, self.channels]
        if x.shape[0] == 0:
            return
        with self._lock:
            if self._next_in is None or first_index < self._next_in:  # the first block, or a new run
                self._zi = signal.sosfilt_zi(self.sos)[:, :, None] * x[0][None, None, :]  # [sections, 2, channels]
                self._phase = 0
                self.runs += 1
            elif first_index > self._next_in:  # lost by the board: hold the last samples through the gap
                assert self._last is not None
                gap = first_index - self._next_in
                self.samples_held += gap
                self._filter(np.repeat(self._last[None, :], gap, axis=0))
            self._filter(x)
            self._next_in = first_index + x.shape[0]
            self._last = x[-1].copy()
            self._emit()

    def _filter(self, x: np.ndarray) -> None:
        y, self._zi = signal.sosfilt(self.sos, x, axis=0, zi=self._zi)
        kept = y[self._phase::self.step]
        self._phase = (self._phase - x.shape[0]) % self.step
        if kept.shape[0]:
            self._pending.append(kept.T)
            self._pending_n += kept.shape[0]

    def begin(self, start_s: float) -> None:
        """Start the EEG's clock at start_s (a resumed case: where its recorded EEG ends) and deliver what is held."""
        with self._lock:
            if self.samples_out is None:
                self.samples_out = int(round(start_s * self.fs))
                self._emit()

    def _emit(self) -> None:
        if self._pending_n < self.block or self.samples_out is None:
            return
        z = np.concatenate(self._pending, axis=1)
        k = 0
        while z.shape[1] - k >= self.block:
            chunk = z[:, k:k + self.block].astype(np.float32)
            out = EegBlock(self.samples_out / self.fs, self.samples_out, self.fs, self.names, chunk, time.time())
            self.samples_out += self.block
            k += self.block
            self.offer(out)  # (the console not taking EEG: counted, and its stall alarm raised there)
        self._pending = [z[:, k:]] if z.shape[1] > k else []
        self._pending_n = z.shape[1] - k

    def link_health(self) -> dict[str, Any]:
        return {"eeg": "board", "eeg_blocks": self.blocks_sent, "eeg_samples_held": self.samples_held,
                "eeg_blocks_dropped": self.blocks_dropped}
