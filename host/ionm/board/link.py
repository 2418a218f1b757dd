"""The host end of the wire protocol: frames, requests with retries, data blocks with exact loss counts.

The transport is anything with pyserial's read/write/in_waiting/close (a serial device, a pty, a
`serial_for_url` URL, or a recorded-file transport), so the same code runs against the board, the virtual
board and recordings. A reader thread decodes frames; replies wake the request that waits for them; data
blocks and events go to the callbacks. A heartbeat thread keeps the board's watchdog fed.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import cbor2
import numpy as np

from ionm.protocol import cbor, framing, messages as m, rice


class LinkError(Exception):
    """The link failed: port missing, nothing answering, or not speaking this protocol."""


class BoardError(Exception):
    """The board refused a request; code and name are the protocol's error code and name."""

    def __init__(self, code: int, name: str, detail: str) -> None:
        super().__init__("%s (%d): %s" % (name, code, detail))
        self.code, self.name, self.detail = code, name, detail


@dataclass
class DataBlock:
    cfg: int
    first_index: int  # unwrapped 64-bit sample index of the first sample
    leadoff: int  # bit per ADC channel: electrode off somewhere in this block
    counts: np.ndarray  # int32 ADC counts, shape (n_samples, n_channels)


@dataclass
class LinkStats:
    frames: int = 0
    bytes: int = 0
    frames_rejected: int = 0
    sequence_gaps: int = 0
    data_frames: int = 0
    samples_received: int = 0
    samples_lost: int = 0
    events: int = 0
    board_resets: int = 0
    bad_messages: int = 0
    samples_skipped: int = 0  # not sent on purpose (epoch mode), announced by the board: not lost
    blocks_undecodable: int = 0  # data-rice blocks that did not decode: dropped, their samples counted lost
    block_bytes: int = 0  # bytes of the samples or blocks of every data message received (compression)
    rejected_by_reason: dict[str, int] = field(default_factory=dict)


def decode_block(block: bytes, n_channels: int) -> np.ndarray:
    """A data-rice block (SPEC 5.4.1) -> int32 array (n_samples, n_channels); rice.RiceError if corrupt. The
    same counts and the same rejections as the reference decoder (protocol/rice.py), several times faster:
    numpy finds each unary code's end and reads the k-bit fields, one Python step per code."""
    if block[:1] == b"\x00" and (len(block) - 1) % (3 * n_channels) == 0 and len(block) > 1:
        return decode_samples(block[1:], n_channels)  # raw fallback: the fast path
    if block[:1] != b"\x01" or len(block) < 3 + 4 * n_channels:
        return np.asarray(rice.decode(block, n_channels), dtype=np.int32).reshape(-1, n_channels)  # raises
    n = (block[1] << 8) | block[2]
    ks = list(block[3:3 + n_channels])
    if n < 1 or max(ks) > rice.MAX_K:
        rice.decode(block, n_channels)  # raises with the reference's reason
    head = 3 + 4 * n_channels
    x0 = decode_samples(block[3 + n_channels:head], n_channels)[0]
    body = np.frombuffer(block, dtype=np.uint8)[head:]
    bits = np.unpackbits(body)
    nbits = bits.size
    pos = np.arange(nbits + 1)
    # nxt[p]: the first 1-bit at or after p (nbits when none)
    nxt = np.minimum.accumulate(np.where(np.append(bits, 1) == 1, pos, nbits)[::-1])[::-1]
    # win[p]: the 25 bits from bit p on (0 past the end), from the 32-bit big-endian word of p's byte
    b = np.concatenate([body, np.zeros(4, dtype=np.uint8)]).astype(np.int64)
    word = (b[:-3] << 24) | (b[1:-2] << 16) | (b[2:-1] << 8) | b[3:]
    win = (word[pos >> 3] >> (32 - rice.U_BITS - (pos & 7))) & ((1 << rice.U_BITS) - 1)
    nxt_l = nxt.tolist()
    win_l = win.tolist()
    esc = rice.ESCAPE
    ub = rice.U_BITS
    us: list[int] = []
    append = us.append
    p = 0
    for _s in range(n - 1):
        for k in ks:
            p1 = nxt_l[p]
            q = p1 - p
            if q >= esc:
                p += esc
                if p + ub > nbits:
                    raise rice.RiceError("rice block truncated")
                append(win_l[p])
                p += ub
            else:
                p = p1 + 1 + k
                if p > nbits or p1 >= nbits:
                    raise rice.RiceError("rice block truncated")
                append((q << k) | (win_l[p1 + 1] >> (ub - k)))
    if nbits - p >= 8 or bits[p:].any():
        raise rice.RiceError("rice block has bytes or bits after its last sample")
    u = np.asarray(us, dtype=np.int64).reshape(n - 1, n_channels)
    d = np.where(u & 1, -((u + 1) >> 1), u >> 1)
    x = np.cumsum(np.concatenate([x0.astype(np.int64)[None, :], d]), axis=0)
    if x.size and (x.min() < -(1 << 23) or x.max() >= 1 << 23):
        raise rice.RiceError("rice block decodes outside 24 bits")
    return x.astype(np.int32)


def decode_samples(samples: bytes, n_channels: int) -> np.ndarray:
    """24-bit big-endian two's-complement samples -> int32 array (n_samples, n_channels)."""
    a = np.frombuffer(samples, dtype=np.uint8).reshape(-1, 3).astype(np.int32)
    v = (a[:, 0] << 16) | (a[:, 1] << 8) | a[:, 2]
    v = (v ^ 0x800000) - 0x800000
    return v.reshape(-1, n_channels)


class BoardLink:
    def __init__(self, transport: Any, *, on_data: Callable[[DataBlock], None] | None = None,
                 on_event: Callable[[dict[str, Any]], None] | None = None,
                 heartbeat_s: float | None = None) -> None:
        self.transport = transport
        self.decoder = framing.Decoder(m.SCHEMA)
        self.stats = LinkStats()
        self.on_data = on_data
        self.on_event = on_event
        self._tx_lock = threading.Lock()
        self._tx_seq = 0
        self._rid = 0
        self._rx_seq: int | None = None
        self._waiting: dict[int, list[Any]] = {}
        self._cond = threading.Condition()
        self._stop = threading.Event()
        self._configs: dict[int, dict[str, Any]] = {}  # cfg id -> configure reply
        self._expected: dict[int, int] = {}  # cfg id -> next unwrapped index expected
        self.lost_by_channel: dict[int, int] = {}
        self.received_by_channel: dict[int, int] = {}
        self.any_frame = threading.Event()
        self.handshaken = False
        self.raw_bytes_seen = 0
        self._reader = threading.Thread(target=self._read_loop, name="ionm-link-rx", daemon=True)
        self._reader.start()
        self._hb_thread = None
        self.heartbeat_s = heartbeat_s
        self._hb_board_index = 0  # board sample index at which data last prompted a heartbeat
        if heartbeat_s:
            self._hb_thread = threading.Thread(target=self._heartbeat_loop, args=(heartbeat_s,),
                                               name="ionm-link-hb", daemon=True)
            self._hb_thread.start()

    # -- sending ------------------------------------------------------------------------------------
    def send(self, mtype: int, body: dict[str, Any], rid: int = 0) -> None:
        # Encoded with the board's own codec: RFC 8949 deterministic (cbor2's canonical mode sorts map keys
        # length-first, which is not byte-identical). cbor2 decodes, where speed matters.
        payload = cbor.dumps([mtype, rid, body])
        with self._tx_lock:
            frame = framing.encode(payload, self._tx_seq, m.SCHEMA)
            self._tx_seq = (self._tx_seq + 1) & 0xFFFF
            self.transport.write(frame)

    def request(self, mtype: int, body: dict[str, Any] | None = None, *, timeout: float = 1.0,
                retries: int = 2) -> Any:
        """Send a request and wait for its reply body. Retries on silence (the request or its reply may
        have been lost on the line); raises BoardError on an error reply, LinkError when nothing answers."""
        for _attempt in range(retries + 1):
            with self._cond:
                self._rid = self._rid % 65535 + 1
                rid = self._rid
                self._waiting[rid] = []
            self.send(mtype, body or {}, rid)
            deadline = time.monotonic() + timeout
            with self._cond:
                while not self._waiting[rid] and time.monotonic() < deadline:
                    self._cond.wait(max(0.0, deadline - time.monotonic()))
                reply = self._waiting.pop(rid)
            if reply:
                rtype, body_r = reply[0]
                if rtype == m.ERROR:
                    raise BoardError(body_r.get("code", 0), body_r.get("name", "?"), body_r.get("detail", ""))
                if mtype == m.CONFIGURE:
                    self._configs[body_r["cfg"]] = body_r
                    self._expected.pop(body_r["cfg"], None)
                return body_r
        raise LinkError("no reply to %s after %d tries" % (m.TYPE_NAMES.get(mtype, mtype), retries + 1))

    def _heartbeat_loop(self, period_s: float) -> None:
        while not self._stop.wait(period_s):
            try:
                self.send(m.HEARTBEAT, {})
            except Exception:  # a closed port ends the heartbeat; the reader reports the failure
                return

    # -- receiving --------------------------------------------------------------------------------------
    def _read_loop(self) -> None:
        tr = self.transport
        while not self._stop.is_set():
            try:
                data = tr.read(max(1, min(65536, tr.in_waiting or 1)))
            except Exception:
                if self._stop.is_set():
                    return
                time.sleep(0.01)
                continue
            if not data:
                continue
            self.raw_bytes_seen += len(data)
            self.stats.bytes += len(data)
            for seq, payload in self.decoder.feed(data):
                self.stats.frames += 1
                if self._rx_seq is not None and seq != (self._rx_seq + 1) & 0xFFFF:
                    self.stats.sequence_gaps += 1
                self._rx_seq = seq
                self._dispatch(payload)
            self.stats.frames_rejected = self.decoder.rejected_total()
            self.stats.rejected_by_reason = dict(zip(framing.REJ_NAMES, self.decoder.rejected, strict=True))

    def _dispatch(self, payload: bytes) -> None:
        try:
            msg = cbor2.loads(payload)
            mtype = msg[0]
        except Exception:
            self.stats.bad_messages += 1
            return
        self.any_frame.set()
        if mtype in (m.DATA, m.DATA_RICE):
            self._on_data(msg)
        elif mtype == m.EVENT:
            self.stats.events += 1
            body = msg[2]
            if body.get("kind") == "skip":
                self._on_skip(body)
            if body.get("kind") == "boot":
                if self.handshaken:  # a boot after the handshake is a reset mid-session
                    self.stats.board_resets += 1
                self._configs.clear()
                self._expected.clear()
                self._rx_seq = None
            if self.on_event:
                self.on_event(body)
        else:
            with self._cond:
                waiting = self._waiting.get(msg[1])
                if waiting is not None:
                    waiting.append((mtype, msg[2]))
                    self._cond.notify_all()

    def _on_skip(self, body: dict[str, Any]) -> None:
        """The board skipped [index, index + count) on purpose: expect the data after it."""
        for cfg, expected in list(self._expected.items()):
            first = expected + ((int(body["index"]) - expected) & 0xFFFFFFFF)
            if first == expected:
                self._expected[cfg] = first + int(body["count"])
                self.stats.samples_skipped += int(body["count"])

    def _on_data(self, msg: list[Any]) -> None:
        mtype, cfg, first32, leadoff, samples = msg
        conf = self._configs.get(cfg)
        if conf is None:
            return  # a stream this host did not configure (e.g. left over from a previous session)
        channels = conf["channels"]
        try:
            if mtype == m.DATA_RICE:
                counts = decode_block(samples, len(channels))
            else:
                counts = decode_samples(samples, len(channels))
        except (rice.RiceError, ValueError, TypeError, IndexError):
            # a block that does not decode is dropped and counted; its samples become a counted loss when the
            # next block's first_index arrives (SPEC 5.4)
            self.stats.blocks_undecodable += 1
            self.stats.bad_messages += 1
            return
        self.stats.block_bytes += len(samples)
        expected = self._expected.get(cfg)
        if expected is None or (first32 == 0 and expected & 0xFFFFFFFF != 0):
            first = first32  # the first block, or a new acquisition run (SPEC §5.4: every run starts at 0)
        else:  # unwrap the 32-bit index against what we expected next
            first = expected + ((first32 - expected) & 0xFFFFFFFF)
            if first > expected:
                gap = first - expected
                self.stats.samples_lost += gap
                for ch in channels:
                    self.lost_by_channel[ch] = self.lost_by_channel.get(ch, 0) + gap
        n = counts.shape[0]
        self._expected[cfg] = first + n
        # Heartbeats paced by the board's clock as well as the host's: when the board catches up on
        # buffered blocks (or runs in fast virtual time), its sample clock races ahead of wall time, and
        # the watchdog counts in samples. Answering every 25 ms of board time keeps pace with it.
        if self.heartbeat_s:
            hb_samples = int(self.heartbeat_s * conf["rate_hz"])
            if first + n - self._hb_board_index >= hb_samples or first + n < self._hb_board_index:
                self._hb_board_index = first + n
                if not self._stop.is_set():
                    try:
                        self.send(m.HEARTBEAT, {})
                    except Exception:  # the port closed under us: closing is not an error
                        if not self._stop.is_set():
                            raise
        self.stats.data_frames += 1
        self.stats.samples_received += n
        for ch in channels:
            self.received_by_channel[ch] = self.received_by_channel.get(ch, 0) + n
        if self.on_data:
            self.on_data(DataBlock(cfg, first, leadoff, counts))

    def close(self) -> None:
        self._stop.set()
        if self._hb_thread is not None:
            self._hb_thread.join(timeout=1)
        try:
            self.transport.cancel_read()
        except Exception:
            pass
        self._reader.join(timeout=2)
        self.transport.close()


def open_port(path: str, timeout: float = 0.05, *, relay: bool = False, heartbeat_s: float = 0.025) -> Any:
    """Open a board's serial port (or a pyserial URL) the way every ionm tool does. relay: the port is served
    by a process of its own (ionm.board.relay), which keeps reading the board and feeding its watchdog
    (heartbeat_s) whatever load this process is under; for a live case. URLs are always opened here."""
    import os

    import serial

    if "://" not in path and not os.path.exists(path):
        raise LinkError("serial port %s does not exist" % path)
    if relay and "://" not in path:
        from ionm.board.relay import RelayError, RelayTransport

        try:
            return RelayTransport(path, heartbeat_s=heartbeat_s, timeout=timeout)
        except RelayError as exc:
            raise LinkError(str(exc)) from exc
    try:
        return serial.serial_for_url(path, baudrate=115200, timeout=timeout, exclusive=True)
    except (serial.SerialException, OSError, ValueError) as exc:
        raise LinkError("cannot open %s: %s" % (path, exc)) from exc


def connect(link: BoardLink, *, timeout: float = 3.0) -> dict[str, Any]:
    """Handshake: quiet any stream a previous session left running, then HELLO. Returns WELCOME's body."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            link.request(m.STOP, {}, timeout=0.3, retries=0)
            break
        except LinkError:
            continue
        except BoardError:
            break
    else:
        if link.raw_bytes_seen:
            raise LinkError("the port answers, but not with the ionm protocol (%d bytes, no valid frame)"
                            % link.raw_bytes_seen if not link.any_frame.is_set() else
                            "the board does not answer requests")
        raise LinkError("nothing answers within %.0f s: is a board running the ionm firmware connected?" % timeout)
    welcome = link.request(m.HELLO, {"versions": [m.VERSION], "schema": m.SCHEMA}, timeout=1.0)
    link.handshaken = True
    return welcome
