"""A free-running EMG source for a live case: a free-run scenario (hardware/scenarios/freerun, rendered by
ionm_hw.physiology.freerun with its scripted truth) played as continuous blocks (ionm.sweep.EmgBlock), paced in
real time as a board would deliver them.

The scenario is rendered whole at the start (a few seconds of CPU for 4 minutes at 8 kHz); past its end the case
goes on with the same channels' background (noise and spontaneous motor units, no scripted event), rendered
CONTINUATION_S at a time from seeds of its own. Stimuli of the scenario (probe, vagal) travel with the block their
artefact starts in, a little ahead (STIM_AHEAD_S), so the detector can blank from before each one.

Iterate to get blocks; close() stops. `truth` is the scenario's truth (for tests and benchmarks)."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from typing import Any

import numpy as np

from ionm.sweep import EmgBlock

BLOCK_MS = 20.0  # one block per 20 ms: what a board's DMA block of continuous EMG would be, and the audio's step
CONTINUATION_S = 30.0  # background rendered at a time after the scenario's end
STIM_AHEAD_S = 0.002  # a stimulus is announced with the block before it when it falls this close after its end
FS_HZ = 8000.0  # the free-run rate: the detector needs >= 4 kHz (cautery band), audio plays it as it is


class FreeRunCase:
    def __init__(self, scenario: str, seed: int = 1, *, speed: float = 1.0, fs_hz: float = FS_HZ,
                 block_ms: float = BLOCK_MS, start_s: float = 0.0) -> None:
        """speed: times real time (0: as fast as rendered, for tests); start_s: the case time to start at (a
        resumed case goes on from its last recorded time; the scenario's events before it are not played)."""
        import ionm_hw.physiology.freerun as freerun

        self.scenario = freerun.load_scenario(scenario)
        self.name = str(self.scenario.get("name", scenario))
        self.seed = int(seed)
        self.speed = float(speed)
        self.fs = float(fs_hz)
        self.block = max(int(round(block_ms * 1e-3 * self.fs)), 1)
        rec, names = freerun.render_scenario(scenario, self.seed, self.fs)
        self.names = tuple(names)
        self.truth = rec.truth
        self._scenario_samples = rec.samples_uv.astype(np.float32)
        self._stims = sorted(rec.stim_times_s)
        self._evoked = set(rec.vagal_times_s)
        self._next = int(round(float(start_s) * self.fs))  # next sample index to deliver
        self._stim_pos = int(np.searchsorted(self._stims, self._next / self.fs))
        self._tail: tuple[int, np.ndarray] | None = None  # (first index, samples) of the continuation rendered
        self._closed = threading.Event()
        self.blocks_sent = 0

    def close(self) -> None:
        self._closed.set()

    def _samples(self, i0: int, n: int) -> np.ndarray:
        """Samples i0 .. i0+n of the case: the scenario, then its continuation."""
        out = np.empty((len(self.names), n), dtype=np.float32)
        done = 0
        end_scenario = self._scenario_samples.shape[1]
        while done < n:
            i = i0 + done
            if i < end_scenario:
                k = min(n - done, end_scenario - i)
                out[:, done : done + k] = self._scenario_samples[:, i : i + k]
            else:
                if self._tail is None or not self._tail[0] <= i < self._tail[0] + self._tail[1].shape[1]:
                    self._tail = (i, self._render_background(i))
                j = i - self._tail[0]
                k = min(n - done, self._tail[1].shape[1] - j)
                out[:, done : done + k] = self._tail[1][:, j : j + k]
            done += k
        return out

    def _render_background(self, i0: int) -> np.ndarray:
        import ionm_hw.physiology.freerun as freerun

        chunk = int(i0 // int(CONTINUATION_S * self.fs))
        rec = freerun.render(CONTINUATION_S, self.fs, len(self.names), [], self.seed * 1000 + 7 + chunk)
        return rec.samples_uv.astype(np.float32)

    def __iter__(self) -> Iterator[EmgBlock]:
        t0_wall = time.monotonic()
        first0 = self._next
        while not self._closed.is_set():
            i0, n = self._next, self.block
            if self.speed > 0:  # the block exists once its last sample has been acquired
                due = t0_wall + (i0 + n - first0) / self.fs / self.speed
                delay = due - time.monotonic()
                if delay > 0 and self._closed.wait(delay):
                    return
            cut = (i0 + n) / self.fs + STIM_AHEAD_S
            stims: list[float] = []
            while self._stim_pos < len(self._stims) and self._stims[self._stim_pos] < cut:
                stims.append(self._stims[self._stim_pos])
                self._stim_pos += 1
            yield EmgBlock(i0 / self.fs, i0, self.fs, self.names, self._samples(i0, n), tuple(stims),
                           tuple(t for t in stims if t in self._evoked), time.time())
            self._next += n
            self.blocks_sent += 1

    def link_health(self) -> dict[str, Any]:
        return {"state": "streaming", "freerun": self.name, "freerun_blocks": self.blocks_sent}
