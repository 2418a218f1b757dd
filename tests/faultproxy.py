"""A byte-level fault injector between a board's serial port and the host: the host opens `device`, a new
pty; the proxy forwards both ways and damages board-to-host frames on purpose, keeping the ground truth."""

from __future__ import annotations

import os
import pty
import random
import threading
import time
import tty

import cbor2
import serial

from ionm.protocol import framing, messages as m


class FaultProxy:
    def __init__(self, board_device: str, seed: int, p_damage: float = 0.05, p_garbage: float = 0.03) -> None:
        self.board = serial.Serial(board_device, timeout=0.02)
        self.master, self.slave = pty.openpty()
        tty.setraw(self.slave)
        self.device = os.ttyname(self.slave)
        self.rng = random.Random(seed)
        self.p_damage, self.p_garbage = p_damage, p_garbage
        self.decoder = framing.Decoder(m.SCHEMA)
        self.channels_by_cfg: dict[int, int] = {}
        self.data_frames_sent = 0
        self.data_frames_damaged = 0
        self.samples_destroyed = 0
        self.frames_damaged = 0
        self.enabled = threading.Event()
        self._host_quiet_until = 0.0
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._up, daemon=True),
                         threading.Thread(target=self._down, daemon=True)]
        for t in self._threads:
            t.start()

    def _garbage(self) -> bytes:
        out = bytearray(self.rng.getrandbits(8) for _ in range(self.rng.randint(1, 64)))
        for i in range(len(out)):  # no false SYNC in the garbage: every rejection is then a damaged frame
            if out[i] == framing.SYNC[0]:
                out[i] = 0x00
        return bytes(out)

    def _damage(self, frame: bytes) -> bytes:
        f = bytearray(frame)
        kind = self.rng.choice(["flip", "drop", "dup"])
        i = self.rng.randrange(2, len(f))  # keep SYNC: a destroyed SYNC is only a gap, tested by indices
        if kind == "flip":
            f[i] ^= 1 << self.rng.randrange(8)
        elif kind == "drop":
            del f[i]
        else:
            f.insert(i, f[i])
        return bytes(f)

    def _down(self) -> None:  # board -> host
        while not self._stop.is_set():
            try:
                data = self.board.read(4096)
            except (OSError, TypeError, serial.SerialException):
                return  # the proxy was closed under the read
            if not data:
                continue
            for seq, payload in self.decoder.feed(data):
                frame = framing.encode(payload, seq, m.SCHEMA)
                msg = cbor2.loads(payload)
                is_data = msg[0] == m.DATA
                if msg[0] == m.ACK and isinstance(msg[2], dict) and "cfg" in msg[2] and "channels" in msg[2]:
                    self.channels_by_cfg[msg[2]["cfg"]] = len(msg[2]["channels"])
                out = frame
                # Only data frames are damaged: losing a reply is the retry logic's business, tested elsewhere.
                if is_data:
                    self.data_frames_sent += 1
                if self.enabled.is_set() and is_data:
                    if self.rng.random() < self.p_damage:
                        out = self._damage(frame)
                        self.frames_damaged += 1
                        self.data_frames_damaged += 1
                        self.samples_destroyed += len(msg[4]) // (3 * self.channels_by_cfg[msg[1]])
                    if self.rng.random() < self.p_garbage:
                        out = self._garbage() + out
                os.write(self.master, out)

    def hold_host(self, seconds: float) -> None:
        """The host goes quiet for the board: its bytes are dropped for `seconds` (a starved or stalled host)."""
        self._host_quiet_until = time.monotonic() + seconds

    def _up(self) -> None:  # host -> board, untouched unless the host is held quiet
        while not self._stop.is_set():
            try:
                data = os.read(self.master, 4096)
            except OSError:
                return
            if data and time.monotonic() >= self._host_quiet_until:
                self.board.write(data)

    def close(self) -> None:
        self._stop.set()
        self._threads[1].join(timeout=1)
        self.board.close()
        os.close(self.slave)
        os.close(self.master)
