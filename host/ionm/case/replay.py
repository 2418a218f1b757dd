"""A recorded case as a sweep source: its stored sweeps in stimulus-time order, paced like the original.

ionm.console.replay runs it through a fresh engine; `ionm replay` serves that in the console.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

from ionm.case.store import CaseStore
from ionm.sweep import EegBlock, Sweep


class _Pacer:
    """Plays recorded times back as they were, speed times faster (speed 0: at once): the first item at once."""

    def __init__(self, speed: float) -> None:
        self.speed = speed
        self.wall0: float | None = None

    def until(self, due_s: float) -> None:
        """Wait until the recorded time due_s (s) comes round on the wall clock."""
        if self.speed <= 0:
            return
        if self.wall0 is None:
            self.wall0 = time.monotonic() - due_s / self.speed
        wait = self.wall0 + due_s / self.speed - time.monotonic()
        if wait > 0:
            time.sleep(wait)


class StoredCase:
    """A recorded case as a sweep source, in stimulus-time order, paced like the original (speed 0: unpaced)."""

    def __init__(self, store: CaseStore, case_id: int, speed: float = 1.0, from_s: float = 0.0):
        self.store, self.case_id, self.speed, self.from_s = store, case_id, float(speed), float(from_s)
        self._closed = False
        self.sent = 0

    def close(self) -> None:
        self._closed = True

    def link_health(self) -> dict[str, Any]:
        return {"source": "replay of case %d" % self.case_id, "state": "stopped" if self._closed else "streaming",
                "samples_lost": 0, "sweeps": self.sent}

    def __iter__(self) -> Iterator[Sweep]:
        pace = _Pacer(self.speed)
        for sw, _ in self.store.iter_sweeps(self.case_id, t_from=self.from_s):
            if self._closed:
                return
            if sw.modality == "eeg":  # continuous EEG records are not sweeps: not replayed through the sweep path
                continue
            due = sw.t_s + (sw.data_uv.shape[1] - sw.pre_samples) / sw.fs
            pace.until(due)
            self.sent += 1
            yield sw


class StoredEeg:
    """A recorded case's EEG (stream eeg/EEG, 1-s records) as an EEG source of ionm.sweep.EegBlock, in time order,
    paced like the original (speed 0: unpaced)."""

    stream = "eeg/EEG"

    def __init__(self, store: CaseStore, case_id: int, speed: float = 1.0, from_s: float = 0.0):
        self.store, self.case_id, self.speed, self.from_s = store, case_id, float(speed), float(from_s)
        self._closed = False
        self.sent = 0

    def close(self) -> None:
        self._closed = True

    def __iter__(self) -> Iterator[EegBlock]:
        pace = _Pacer(self.speed)
        for sw, _ in self.store.iter_sweeps(self.case_id, self.stream, t_from=self.from_s):
            if self._closed:
                return
            due = sw.t_s + sw.data_uv.shape[1] / sw.fs
            pace.until(due)
            self.sent += 1
            yield EegBlock(sw.t_s, sw.stim_index, sw.fs, sw.channel_names, sw.data_uv)
