"""The hand-over from a board tap (ionm.board.eegtap, ionm.board.baeptap), fed on the link's reader thread, to the
console, which iterates the tap on a thread of its own: a bounded queue that never blocks the reader (a full queue
drops the block and counts it), iterated until close() (the blocks queued before it are still delivered)."""

from __future__ import annotations

import queue
import threading
from collections.abc import Iterator
from typing import Generic, TypeVar

T = TypeVar("T")


class BlockQueue(Generic[T]):
    def __init__(self, size: int) -> None:
        self._q: queue.Queue[T | None] = queue.Queue(size)
        self._closed = threading.Event()
        self.blocks_sent = 0
        self.blocks_dropped = 0

    def offer(self, block: T) -> None:
        """Queue a block for the console, or count it dropped when the console is not taking them."""
        try:
            self._q.put_nowait(block)
            self.blocks_sent += 1
        except queue.Full:
            self.blocks_dropped += 1

    def __iter__(self) -> Iterator[T]:
        while True:
            try:
                b = self._q.get(timeout=0.2)
            except queue.Empty:
                if self._closed.is_set():
                    return
                continue
            if b is None:
                return
            yield b

    def close(self) -> None:
        self._closed.set()
        try:
            self._q.put_nowait(None)
        except queue.Full:
            pass
