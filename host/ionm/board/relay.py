"""The board's serial port in a process of its own, so that the host's load can never starve the board.

Why: the board streams 16 channels × 8 kSPS (384 kB/s) and stops stimulation 100 ms after it last heard the
host (protocol/SPEC.md §5.6). In one Python process, the thread that reads the port and the thread that sends
heartbeats share the interpreter lock with the evaluation and the console; with two CPU-bound processes
competing for two cores their writes had gaps of 70-174 ms and the board stopped stimulating, and the reads
fell so far behind that the pty filled and the board lost samples (issue 16 item 5, issue 17 item 3).

The relay is a small single-threaded process that only moves bytes. It owns the port and a socket to the host
process: board bytes go to the host as they come (the host decodes them at its own pace; up to MAX_BACKLOG
bytes wait for it, so the board never blocks on a slow host), and the host's frames go to the board. It
numbers every frame it sends to the board itself (SPEC §2: one SEQ per direction), and it sends a heartbeat
when the host has sent nothing for `heartbeat_s`, but only while the host is alive: it has sent a frame within
HOST_ALIVE_S. The host's own heartbeat thread sends one every 25 ms, so a host that is merely slow keeps
stimulation running, and a host that hangs stops it within HOST_ALIVE_S plus the board's 100 ms watchdog.
A host that dies closes the socket, and the relay stops at once (and Linux ends the relay with its parent).

RelayTransport is the host end: it has the read/write/in_waiting/close of a pyserial port, so BoardLink runs on
it unchanged. Used for ports that are devices (a board, the virtual board's pty); URLs stay in-process.
"""

from __future__ import annotations

import argparse
import fcntl
import os
import selectors
import socket
import struct
import subprocess
import sys
import termios
import time
from typing import Any

HOST_ALIVE_S = 0.5  # the host counts as alive this long after its last frame (its heartbeats come every 25 ms)
MAX_BACKLOG = 64 * 1024 * 1024  # bytes from the board waiting for the host: ~170 s at 384 kB/s
SOCKET_BUFFER = 4 * 1024 * 1024  # bytes; the kernel may cap it (net.core.wmem_max)
# The relay moves bytes and little else (~1 % of a core at 384 kB/s); where the OS allows it, it runs ahead of
# the host's evaluation and display, as an acquisition service would: real-time round-robin, else a higher
# niceness, else as it is. Its priority is above the virtual board's (ionm.board.virtual.BOARD_RT_PRIORITY):
# below it, the board's two processes, which run in bursts when they catch up, kept the relay off both cores
# with a heartbeat due, and the board's 100 ms watchdog tripped more often (tools/watchdog_soak.py under two
# hogs: 7 trips in 3 min and 3 in 2 at priority 10, 0 and 1 in 2 min at 30). Above it the relay waits only
# for the pty itself, which a kernel worker of normal priority delivers (tools/pty_latency.py measures that).
RELAY_RT_PRIORITY = 30
RELAY_NICE = -5
READY_TIMEOUT_S = 15.0  # the relay process starts and opens the port within this (a loaded machine included)


class RelayError(OSError):
    """The relay could not open the port, or stopped."""


class RelayTransport:
    """The host end of the relay: the pyserial subset BoardLink uses."""

    def __init__(self, port: str, *, heartbeat_s: float = 0.025, timeout: float = 0.05) -> None:
        from ionm.board.virtual import _die_with_parent, _raise_priority

        def relay_process() -> None:
            _die_with_parent()
            _raise_priority(RELAY_RT_PRIORITY, RELAY_NICE)

        self.port = port
        self.timeout = timeout
        host, child = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        for s in (host, child):
            s.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, SOCKET_BUFFER)
            s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, SOCKET_BUFFER)
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "ionm.board.relay", "--port", port, "--fd", str(child.fileno()),
             "--heartbeat-ms", str(heartbeat_s * 1000.0)],
            pass_fds=(child.fileno(),), stdin=subprocess.DEVNULL, preexec_fn=relay_process)
        child.close()
        self.sock = host
        self._closed = False
        self.failed: str | None = None
        line = self._ready_line()
        if line != b"OK":
            self.close()
            raise RelayError(line.decode("utf-8", "replace") or "the link relay exited before opening %s" % port)
        self.sock.settimeout(timeout)

    def _ready_line(self) -> bytes:
        self.sock.settimeout(READY_TIMEOUT_S)
        got = b""
        try:
            while not got.endswith(b"\n"):
                b = self.sock.recv(1)
                if not b:
                    break
                got += b
        except TimeoutError:
            return b"the link relay did not open %s within %.0f s" % (self.port.encode(), READY_TIMEOUT_S)
        return got.strip()

    @property
    def in_waiting(self) -> int:
        buf = fcntl.ioctl(self.sock.fileno(), termios.FIONREAD, b"\0\0\0\0")
        return int(struct.unpack("i", buf)[0])

    def read(self, n: int = 1) -> bytes:
        if self.failed:
            time.sleep(self.timeout)  # (the reader polls; a dead relay must not make it spin)
            return b""
        try:
            data = self.sock.recv(n)
        except TimeoutError:
            return b""
        if not data:
            self.failed = "the link relay stopped (status %s)" % self.proc.poll()
            raise RelayError(self.failed)
        return data

    def write(self, data: bytes) -> int:
        self.sock.sendall(data)
        return len(data)

    def cancel_read(self) -> None:
        try:
            self.sock.shutdown(socket.SHUT_RD)
        except OSError:
            pass

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        self.sock.close()  # the relay sees the host go and stops
        try:
            self.proc.wait(timeout=2)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


# -- the relay process -----------------------------------------------------------------------------------------
class _Relay:
    def __init__(self, ser: Any, sock: socket.socket, heartbeat_s: float) -> None:
        from ionm.protocol import cbor, framing, messages as m

        self.ser, self.sock = ser, sock
        self.fd = ser.fileno()
        self.heartbeat_s = heartbeat_s
        self.framing, self.schema = framing, m.SCHEMA
        self.decoder = framing.Decoder(m.SCHEMA)
        self.heartbeat_payload = cbor.dumps([m.HEARTBEAT, 0, {}])
        self.seq = 0
        self.to_host = bytearray()
        self.to_board = bytearray()
        self.host_heard = time.monotonic()
        self.last_sent = 0.0  # monotonic time a frame for the board was queued
        self.dropped = 0  # board bytes the host did not take in time (the host counts the samples as lost)
        self.heartbeats = 0  # heartbeats the relay sent for a live but slow host

    def _frame(self, payload: bytes) -> None:
        self.to_board += self.framing.encode(payload, self.seq, self.schema)
        self.seq = (self.seq + 1) & 0xFFFF
        self.last_sent = time.monotonic()

    def run(self) -> None:
        sel = selectors.DefaultSelector()
        sel.register(self.fd, selectors.EVENT_READ, "board")
        sel.register(self.sock, selectors.EVENT_READ, "host")
        want = {"board": selectors.EVENT_READ, "host": selectors.EVENT_READ}
        while True:
            for side, obj, pending in (("board", self.fd, self.to_board), ("host", self.sock, self.to_host)):
                mask = selectors.EVENT_READ | (selectors.EVENT_WRITE if pending else 0)
                if mask != want[side]:
                    sel.modify(obj, mask, side)
                    want[side] = mask
            now = time.monotonic()
            alive = now - self.host_heard < HOST_ALIVE_S
            # A heartbeat is due only with nothing queued for the board (a frame queued is as good); while a
            # write waits, the port's writability wakes the loop.
            due = alive and not self.to_board
            wait = max(0.0, self.last_sent + self.heartbeat_s - now) if due else 0.1
            for key, mask in sel.select(wait):
                if key.data == "board" and mask & selectors.EVENT_READ:
                    self._from_board()
                if key.data == "host" and mask & selectors.EVENT_READ and not self._from_host():
                    return
                if key.data == "board" and mask & selectors.EVENT_WRITE:
                    self._drain(self.to_board, lambda b: os.write(self.fd, b))
                if key.data == "host" and mask & selectors.EVENT_WRITE:
                    self._drain(self.to_host, self.sock.send)
            now = time.monotonic()
            if (now - self.last_sent >= self.heartbeat_s and now - self.host_heard < HOST_ALIVE_S
                    and not self.to_board):
                self._frame(self.heartbeat_payload)
                self.heartbeats += 1

    def _from_board(self) -> None:
        try:
            data = os.read(self.fd, 65536)
        except BlockingIOError:
            return
        if not data:
            raise RelayError("the port closed")
        if len(self.to_host) + len(data) > MAX_BACKLOG:
            self.dropped += len(data)
        else:
            self.to_host += data

    def _from_host(self) -> bool:
        try:
            data = self.sock.recv(65536)
        except BlockingIOError:
            return True
        except ConnectionResetError:
            return False
        if not data:
            return False  # the host closed (or died): stop, and with it the heartbeats
        now = time.monotonic()
        if now - self.host_heard >= HOST_ALIVE_S:  # the board's watchdog will have stopped stimulation: say why
            print("ionm link relay: the host was silent for %.0f ms (heartbeats stop after %.0f ms)"
                  % ((now - self.host_heard) * 1e3, HOST_ALIVE_S * 1e3), file=sys.stderr, flush=True)
        self.host_heard = now
        for _seq, payload in self.decoder.feed(data):
            self._frame(payload)
        return True

    @staticmethod
    def _drain(buf: bytearray, write: Any) -> None:
        try:
            n = write(bytes(buf[:65536]))
        except BlockingIOError:
            return
        del buf[:n]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description="Relay between a board's serial port and the host (internal).")
    ap.add_argument("--port", required=True)
    ap.add_argument("--fd", type=int, required=True)
    ap.add_argument("--heartbeat-ms", type=float, default=25.0)
    args = ap.parse_args(argv)
    sock = socket.socket(fileno=args.fd)
    try:
        import serial

        ser = serial.Serial(args.port, baudrate=115200, timeout=0, exclusive=True)
    except (OSError, ValueError, ImportError) as exc:  # serial.SerialException is an OSError
        sock.sendall(("cannot open %s: %s\n" % (args.port, exc)).encode())
        return 1
    sock.sendall(b"OK\n")
    os.set_blocking(ser.fileno(), False)
    sock.setblocking(False)
    relay = _Relay(ser, sock, args.heartbeat_ms / 1000.0)
    try:
        relay.run()
    except (RelayError, OSError) as exc:
        print("ionm link relay: %s: %s" % (args.port, exc), file=sys.stderr, flush=True)
        return 1
    finally:
        if relay.dropped:
            print("ionm link relay: %d bytes from the board dropped (the host fell %d MB behind)"
                  % (relay.dropped, MAX_BACKLOG // 2**20), file=sys.stderr, flush=True)
        ser.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
