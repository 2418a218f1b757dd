# The board's frame receiver (SPEC.md §2.1) in one buffer allocated at boot: the host's bytes are read
# straight into it, frames are found, checked and handed out in place, and nothing is allocated per byte
# or per frame (it runs under micropython.heap_lock() in the tests). The host's decoder
# (protocol/framing.py) grows its buffer as bytes arrive; a board cannot: a hostile or broken host must not
# be able to exhaust its heap. The buffer holds one frame of the largest request the board accepts and one
# read chunk more: enough for the truncated-frame rule (a later complete frame inside a pending one) with the
# frames a host sends while a long one is pending (heartbeats, short requests); a later frame too long to be
# complete before the pending one is resolves it as a CRC failure instead, and is found right after. A frame
# with a good header whose LEN is above the capacity (and within the protocol's 8192) is *oversize*: counted,
# and its LEN + 14 bytes are dropped as they arrive, never stored.
import micropython
from frame_writer import CRC_TABLE
from micropython import const

_HEADER = const(10)
_CRC = const(4)
_OVERHEAD = const(14)
_MAX_LEN = const(8192)  # the protocol's LEN bound (framing.MAX_PAYLOAD)

# Rejection reasons (indices into FrameReader.rejected): framing.REJ_* and the board's own oversize.
REJ_HEADER = const(0)
REJ_CRC = const(1)
REJ_SCHEMA = const(2)
REJ_TRUNCATED = const(3)
REJ_OVERSIZE = const(4)


@micropython.viper
def crc_matches(buf: ptr8, lo: int, hi: int, at: int, nbytes: int, table: ptr32) -> int:
    # 1 when the low `nbytes` bytes of CRC-32/ISO-HDLC(buf[lo:hi]) are stored big-endian at buf[at], else 0
    c = uint(0xFFFFFFFF)
    i = lo
    while i < hi:
        c = uint(table[(c ^ uint(buf[i])) & 0xFF]) ^ (c >> 8)
        i += 1
    c = c ^ uint(0xFFFFFFFF)
    k = nbytes - 1
    while k >= 0:
        if uint(buf[at + k]) != (c & uint(0xFF)):
            return 0
        c = c >> 8
        k -= 1
    return 1


@micropython.viper
def _move_down(buf: ptr8, src: int, n: int):
    # buf[0:n] = buf[src:src + n] (src > 0: a forward copy never overwrites what it has still to read)
    i = 0
    while i < n:
        buf[i] = buf[src + i]
        i += 1


class FrameReader:
    """next() returns the payload length of the next valid frame (its payload is buf[start:start + length],
    its SEQ in seq, both valid until the next read) or -1 when more bytes are needed."""

    def __init__(self, schema, capacity, lookahead=256):
        self.schema = schema & 0xFFFF
        self.capacity = capacity  # largest payload stored
        self.buf = bytearray(capacity + _OVERHEAD + lookahead)
        self.fill = 0  # bytes in buf
        self.pos = 0  # first byte not yet consumed
        self.discard = 0  # bytes of an oversize frame still to drop as they arrive
        self.start = 0
        self.seq = 0
        self.frames = 0
        self.garbage_bytes = 0
        self.rejected = [0, 0, 0, 0, 0]  # by reason REJ_*

    def rejected_total(self):
        r = self.rejected
        return r[0] + r[1] + r[2] + r[3] + r[4]

    def space(self):
        """Bytes that may be read into buf at fill (consumed bytes are moved out of the way first). Never 0:
        a pending frame is shorter than the buffer, and it is complete (or resolved) before it is full."""
        pos = self.pos
        if pos:
            n = self.fill - pos
            _move_down(self.buf, pos, n)  # type: ignore[arg-type]
            self.fill = n
            self.pos = 0
        return len(self.buf) - self.fill

    def next(self):
        buf = self.buf
        fill = self.fill
        while True:
            pos = self.pos
            if self.discard:
                d = fill - pos
                if d > self.discard:
                    d = self.discard
                self.discard -= d
                pos += d
                self.pos = pos
                if self.discard:
                    return -1
            start = buf.find(b"\xa5\x5a", pos, fill)
            if start < 0:
                # keep a trailing 0xA5: it may be the first half of a SYNC
                keep = 1 if fill > pos and buf[fill - 1] == 0xA5 else 0
                self.garbage_bytes += fill - pos - keep
                self.pos = fill - keep
                return -1
            self.garbage_bytes += start - pos
            self.pos = start
            if fill - start < _HEADER:
                return -1
            n = (buf[start + 2] << 8) | buf[start + 3]
            if n > _MAX_LEN or not crc_matches(buf, start + 2, start + 8, start + 8, 2, CRC_TABLE):  # type: ignore[arg-type]
                self.rejected[REJ_HEADER] += 1
                self.pos = start + 1
                continue
            if n > self.capacity:
                self.rejected[REJ_OVERSIZE] += 1
                self.discard = n + _OVERHEAD
                continue
            end = start + _HEADER + n + _CRC
            if end > fill:
                later = self._complete_frame_after(start + 1)
                if later < 0:
                    return -1  # wait for the rest
                self.rejected[REJ_TRUNCATED] += 1
                self.garbage_bytes += later - start
                self.pos = later
                continue
            if not crc_matches(buf, start + 2, end - _CRC, end - _CRC, 4, CRC_TABLE):  # type: ignore[arg-type]
                self.rejected[REJ_CRC] += 1
                self.pos = start + 1
                continue
            self.pos = end
            if ((buf[start + 6] << 8) | buf[start + 7]) != self.schema:
                self.rejected[REJ_SCHEMA] += 1
                continue
            self.seq = (buf[start + 4] << 8) | buf[start + 5]
            self.start = start + _HEADER
            self.frames += 1
            return n

    def _complete_frame_after(self, pos):
        """Offset of the first complete, CRC-valid frame (of at most capacity) at or after pos, or -1."""
        buf = self.buf
        fill = self.fill
        while True:
            start = buf.find(b"\xa5\x5a", pos, fill)
            if start < 0 or fill - start < _HEADER:
                return -1
            n = (buf[start + 2] << 8) | buf[start + 3]
            end = start + _HEADER + n + _CRC
            if n <= self.capacity and end <= fill:
                # (viper pointer parameters take any buffer; the stubs' ptr types do not say so)
                if (crc_matches(buf, start + 2, start + 8, start + 8, 2, CRC_TABLE)  # type: ignore[arg-type]
                        and crc_matches(buf, start + 2, end - _CRC, end - _CRC, 4, CRC_TABLE)):  # type: ignore[arg-type]
                    return start
            pos = start + 1
