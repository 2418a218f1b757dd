# The host link: frames in and out with the protocol codec. Control traffic only; the data frames are
# built by frame_writer (the hot path) and share this link's sequence counter.
#
# Nothing a host sends can take the board down (issue 17): bytes are read into the frame reader's fixed
# buffer (allocation-free, bounded); a payload is decoded with the CBOR codec, and a decode that runs out of
# memory is answered like any other bad payload. Replies and events are framed in a buffer allocated once,
# and error replies are encoded there by hand, allocating nothing: an error can always be sent, even when
# the heap is exhausted (then with a fixed detail).
import gc

import cbor
import framing
import messages as m
import micropython
from frame_reader import FrameReader
from frame_writer import CRC_TABLE, crc32_into
from micropython import const

_RX_CHUNK = const(256)  # bytes read from the host per poll
_HEADER = const(10)
_TX_SIZE = const(1024)  # replies and events up to this many bytes are framed without allocating
_ERR_SIZE = const(320)  # an error reply: envelope, name and up to ~250 bytes of detail
_DETAIL_MAX = const(240)  # bytes of detail kept (cut at a character boundary)
OOM_DETAIL = "out of memory while handling the request; nothing was changed"
OOM_PARSE_DETAIL = "payload needs more memory to decode than the board has"


@micropython.viper
def _utf8_prefix(s: ptr8, nchars: int, room: int) -> int:
    # bytes taken by the longest prefix of a str's UTF-8 data (nchars characters) that fits in room bytes;
    # a character's length comes from its lead byte (MicroPython's str data is valid UTF-8)
    i = 0
    chars = 0
    while chars < nchars:
        b = s[i]
        j = i + 1
        if b >= 0xF0:
            j = i + 4
        elif b >= 0xE0:
            j = i + 3
        elif b >= 0xC0:
            j = i + 2
        if j > room:
            return i
        i = j
        chars += 1
    return i


@micropython.viper
def _copy(dst: ptr8, at: int, src: ptr8, n: int):
    i = 0
    while i < n:
        dst[at + i] = src[i]
        i += 1


def _uint_head(buf, p, major, v):
    # a CBOR head of major type `major` (0 or 3 here) for 0 <= v < 65536, shortest form
    if v < 24:
        buf[p] = major | v
        return p + 1
    if v < 256:
        buf[p] = major | 24
        buf[p + 1] = v
        return p + 2
    buf[p] = major | 25
    buf[p + 1] = v >> 8
    buf[p + 2] = v & 0xFF
    return p + 3


def _text(buf, p, s, room):
    n = _utf8_prefix(s, len(s), room - 3)
    p = _uint_head(buf, p, 0x60, n)
    _copy(buf, p, s, n)
    return p + n


def _uint_len(buf, p, end):
    # bytes taken by a CBOR unsigned-integer head at p with at most a two-byte argument; 0 when it is not one
    if p >= end or buf[p] >> 5:
        return 0
    info = buf[p] & 0x1F
    k = 1 if info < 24 else 2 if info == 24 else 3 if info == 25 else 0
    return k if p + k <= end else 0


def envelope_rid(buf, p, n):
    """The rid of a payload that begins [type, rid, ...] (0x83, two unsigned heads), read without decoding the
    rest and without allocating: a request too big for the heap to decode is still answered under its own rid.
    0 when it does not begin so."""
    end = p + n
    if n < 3 or buf[p] != 0x83:
        return 0
    k = _uint_len(buf, p + 1, end)  # the type
    if not k:
        return 0
    p += 1 + k
    k = _uint_len(buf, p, end)
    if k == 1:
        return buf[p] & 0x1F
    if k == 2:
        return buf[p + 1]
    if k == 3:
        return buf[p + 1] << 8 | buf[p + 2]
    return 0


class Link:
    def __init__(self, bsp, capacity):
        self.bsp = bsp
        self.reader = FrameReader(m.SCHEMA, capacity, _RX_CHUNK)
        self.view = memoryview(self.reader.buf)
        self.tx = bytearray(_TX_SIZE)
        self.err = bytearray(_ERR_SIZE)
        self.tx_seq = 0
        self.rx_seq = -1
        self.rx_seq_gaps = 0
        self.bad_messages = 0
        self.events_dropped = 0  # events that could not be sent for want of memory

    def poll(self):
        """Messages that arrived since the last call: a list of (type, rid, body), already validated as
        envelopes. Malformed ones are answered with an error and counted, never raised."""
        r = self.reader
        space = r.space()
        n = self.bsp.host_read(r.buf, r.fill, space if space < _RX_CHUNK else _RX_CHUNK)
        if not n:
            return ()
        r.fill += n
        out = []
        while True:
            size = r.next()
            if size < 0:
                break
            seq = r.seq
            if self.rx_seq >= 0 and seq != (self.rx_seq + 1) & 0xFFFF:
                self.rx_seq_gaps += 1
            self.rx_seq = seq
            try:
                msg = cbor.loads(self.view[r.start:r.start + size])
            except MemoryError:
                gc.collect()
                self.bad_messages += 1
                self.error(envelope_rid(r.buf, r.start, size), m.E_MALFORMED, OOM_PARSE_DETAIL)
                continue
            except Exception as exc:  # any decode failure is the sender's problem, reported as such
                self.bad_messages += 1
                self.error_from(0, m.E_MALFORMED, "payload is not CBOR: %s", exc)
                continue
            if (not isinstance(msg, list) or len(msg) != 3 or not isinstance(msg[0], int)
                    or not isinstance(msg[1], int) or not 0 <= msg[1] <= 0xFFFF or not isinstance(msg[2], dict)):
                self.bad_messages += 1
                self.error(0, m.E_MALFORMED, "a request is [type, rid 0..65535, {body}]")
                continue
            out.append(msg)
        return out

    def send(self, msg):
        """Frame and send one message. Raises MemoryError when even the payload cannot be encoded."""
        payload = cbor.dumps(msg)
        n = len(payload)
        if n > _TX_SIZE - framing.OVERHEAD:  # (no reply or event of the board's is this long)
            frame = framing.encode(payload, self.tx_seq, m.SCHEMA)
            self.tx_seq = (self.tx_seq + 1) & 0xFFFF
            self.bsp.host_write(frame, 0, len(frame))
            return
        tx = self.tx
        tx[_HEADER:_HEADER + n] = payload
        payload = None
        self._finish(tx, n)

    def _finish(self, buf, n):
        """Header before and CRC after the n-byte payload at buf[10:], then out; allocates nothing."""
        seq = self.tx_seq
        buf[0] = 0xA5
        buf[1] = 0x5A
        buf[2] = n >> 8
        buf[3] = n & 0xFF
        buf[4] = seq >> 8
        buf[5] = seq & 0xFF
        buf[6] = (m.SCHEMA >> 8) & 0xFF
        buf[7] = m.SCHEMA & 0xFF
        crc32_into(buf, 2, 8, 8, 2, CRC_TABLE)
        crc32_into(buf, 2, _HEADER + n, _HEADER + n, 4, CRC_TABLE)
        self.tx_seq = (seq + 1) & 0xFFFF
        self.bsp.host_write(buf, 0, _HEADER + n + 4)

    def ack(self, rid, body):
        self.send([m.ACK, rid, body])

    def error(self, rid, code, detail):
        """[ERROR, rid, {code, name, detail}] encoded by hand (deterministic CBOR, the bytes cbor.dumps gives)
        into the preallocated error buffer: allocates nothing. rid is 0..65535 (checked by poll)."""
        b = self.err
        p = _HEADER
        b[p] = 0x83
        b[p + 1] = m.ERROR
        p = _uint_head(b, p + 2, 0, rid)
        b[p] = 0xA3  # map(3); keys sorted bytewise by their encoding: code, name, detail
        b[p + 1:p + 6] = b"\x64code"
        p = _uint_head(b, p + 6, 0, code)
        b[p:p + 5] = b"\x64name"
        p = _text(b, p + 5, m.ERROR_NAMES.get(code, "unknown"), 32)
        b[p:p + 7] = b"\x66detail"
        p = _text(b, p + 7, detail, _DETAIL_MAX + 3)
        self._finish(b, p - _HEADER)

    def error_from(self, rid, code, fmt, arg):
        """error() with detail fmt % arg; the fixed out-of-memory detail when even that cannot be made."""
        try:
            detail = fmt % arg
        except MemoryError:
            detail = OOM_DETAIL
        self.error(rid, code, detail)

    def event(self, body):
        """Events are best effort: one that cannot be encoded for want of memory is counted, not raised."""
        try:
            self.send([m.EVENT, 0, body])
        except MemoryError:
            gc.collect()
            self.events_dropped += 1
