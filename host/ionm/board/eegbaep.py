"""Simulated EEG and BAEP sources for a live case (`ionm console --sim --eeg NAME`, `--baep NAME`): a scenario of
hardware/scenarios/eeg or hardware/scenarios/baep, rendered by ionm_hw.physiology.eeg / .baep, played in blocks
paced in real time as a board would deliver them.

- EegCase: continuous EEG (ionm.sweep.EegBlock) at FS_HZ (250 Hz, the rate the EEG is stored at), one block per
  EEG_BLOCK_S (0.25 s);
- BaepCase: click-locked BAEP sweeps (ionm.sweep.BaepBlock), BAEP_BLOCK sweeps a block (10 sweeps, 0.47 s at
  21.1 Hz), both recorded channels (Cz-Ai, Cz-Ac).

Each renders its scenario whole at the start (a second or two); past the scenario's end the case goes on with the
same channels and no scripted event, rendered CONTINUATION_S at a time from seeds of its own. start_s: the case
time to start at (a resumed case goes on from its last recorded time). speed: times real time (0: as fast as the
engine takes the blocks, for tests). Iterate to get blocks; close() stops."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from typing import Any

import numpy as np

from ionm.sweep import BaepBlock, EegBlock

FS_HZ = 250.0  # EEG: 0.5-30 Hz is all the indices and the DSA use; 250 SPS is what is stored and exported
EEG_BLOCK_S = 0.25
BAEP_BLOCK = 10  # sweeps per block
CONTINUATION_S = 120.0


class _Paced:
    """Pacing shared by both sources: a block is delivered once its last sample would have been acquired."""

    speed: float
    _closed: threading.Event

    def _wait(self, t0_wall: float, elapsed_s: float) -> bool:
        """Wait until elapsed_s of case time have passed since t0_wall (at self.speed); False if closed."""
        if self.speed <= 0:
            return not self._closed.is_set()
        delay = t0_wall + elapsed_s / self.speed - time.monotonic()
        return not (delay > 0 and self._closed.wait(delay)) and not self._closed.is_set()

    def close(self) -> None:
        self._closed.set()


class EegCase(_Paced):
    stream = "eeg/EEG"

    def __init__(self, scenario: str, seed: int = 1, *, speed: float = 1.0, fs_hz: float = FS_HZ,
                 block_s: float = EEG_BLOCK_S, start_s: float = 0.0) -> None:
        import ionm_hw.physiology.eeg as eeg

        self.scenario = eeg.load_scenario(scenario)
        self.name = str(self.scenario.get("name", scenario))
        self.seed, self.speed, self.fs = int(seed), float(speed), float(fs_hz)
        self.block = max(int(round(block_s * self.fs)), 1)
        self._eeg = eeg.OngoingEeg(self.scenario, self.seed, self.fs)  # the scenario, then event-free continuation
        self.names = tuple(self._eeg.channel_names)
        self.truth = self._eeg.truth
        self._next = int(round(float(start_s) * self.fs))
        self._closed = threading.Event()
        self.blocks_sent = 0

    def _chunk(self, i0: int, n: int) -> np.ndarray:
        return self._eeg.samples(i0, n).astype(np.float32)

    def __iter__(self) -> Iterator[EegBlock]:
        t0_wall, first = time.monotonic(), self._next
        while True:
            i0, n = self._next, self.block
            if not self._wait(t0_wall, (i0 + n - first) / self.fs):
                return
            yield EegBlock(i0 / self.fs, i0, self.fs, self.names, self._chunk(i0, n), time.time())
            self._next += n
            self.blocks_sent += 1

    def link_health(self) -> dict[str, Any]:
        return {"eeg": self.name, "eeg_blocks": self.blocks_sent}


class BaepCase(_Paced):
    def __init__(self, scenario: str, seed: int = 1, *, speed: float = 1.0, block: int = BAEP_BLOCK,
                 start_s: float = 0.0, side: str = "L") -> None:
        import ionm_hw.physiology.baep as baep

        self.scenario = baep.load_scenario(scenario)
        self.name = str(self.scenario.get("name", scenario))
        self.side = str(self.scenario.get("side", side))
        self.stream = "baep/%s ear" % self.side
        self.seed, self.speed, self.block = int(seed), float(speed), max(int(block), 1)
        rec = baep.render_scenario(scenario, self.seed)
        self.fs, self.pre, self.rate = float(rec.fs_hz), int(rec.pre_samples), float(rec.rate_hz)
        self.names = tuple(rec.channel_names)
        self._sweeps_uv = rec.sweeps_uv.astype(np.float32)  # [ch, sweeps, samples]
        self.truth_latency_ms, self.truth_amplitude = rec.truth_latency_ms, rec.truth_amplitude
        self._next = int(np.ceil(float(start_s) * self.rate - 1e-9))
        self._tail: tuple[int, np.ndarray] | None = None
        self._closed = threading.Event()
        self.blocks_sent = 0

    def _chunk(self, i0: int, n: int) -> np.ndarray:
        import ionm_hw.physiology.baep as baep

        out = np.empty((len(self.names), n, self._sweeps_uv.shape[2]), dtype=np.float32)
        done, end = 0, self._sweeps_uv.shape[1]
        while done < n:
            i = i0 + done
            if i < end:
                k = min(n - done, end - i)
                out[:, done:done + k] = self._sweeps_uv[:, i:i + k]
            else:
                per = int(CONTINUATION_S * self.rate)
                start = end + (i - end) // per * per
                if self._tail is None or self._tail[0] != start:
                    rec = baep.render(CONTINUATION_S, [], self.seed * 1000 + 13 + start // per, self.names)
                    self._tail = (start, rec.sweeps_uv.astype(np.float32))
                j = i - start
                k = min(n - done, self._tail[1].shape[1] - j)
                out[:, done:done + k] = self._tail[1][:, j:j + k]
            done += k
        return out

    def __iter__(self) -> Iterator[BaepBlock]:
        t0_wall, first = time.monotonic(), self._next
        while True:
            i0, n = self._next, self.block
            if not self._wait(t0_wall, (i0 + n - first) / self.rate):
                return
            yield BaepBlock(i0 / self.rate, i0, self.rate, self.fs, self.pre, self.names, self.side,
                            self._chunk(i0, n), time.time())
            self._next += n
            self.blocks_sent += 1

    def link_health(self) -> dict[str, Any]:
        return {"baep": self.name, "baep_blocks": self.blocks_sent}
