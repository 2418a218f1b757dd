# Frame layer of the IONM wire protocol (SPEC.md §2). Runs unchanged on MicroPython and CPython.
#
#   off  size  field
#   0    2     SYNC    0xA5 0x5A
#   2    2     LEN     payload length in bytes, big-endian, <= MAX_PAYLOAD
#   4    2     SEQ     per-direction sequence number, big-endian, wraps at 65536
#   6    2     SCHEMA  low 16 bits of the schema fingerprint (messages.SCHEMA)
#   8    2     HCHK    low 16 bits of CRC-32 over bytes 2..7 (rejects a corrupt LEN at once)
#   10   LEN   PAYLOAD one CBOR data item
#   10+LEN 4   CRC     CRC-32/ISO-HDLC over bytes 2 .. 10+LEN-1, big-endian
#
# Why not COBS: the board's data path then does no per-byte work at all (one C-level or viper CRC and
# one memory copy per frame), and the host finds frames with bytes.find. Resynchronisation: after a bad
# header or CRC the decoder resumes the search one byte after the false SYNC, so a damaged frame costs
# only itself; a pending frame is dropped as soon as a later complete valid frame proves it truncated.

import binascii
import struct

SYNC = b"\xa5\x5a"
HEADER_SIZE = 10
CRC_SIZE = 4
OVERHEAD = HEADER_SIZE + CRC_SIZE
MAX_PAYLOAD = 8192  # bytes; also in hardware/board.json link.max_payload_bytes (test checks they agree)

# Rejection reasons, counted by the decoder (indices into Decoder.rejected).
REJ_HEADER = 0  # header check failed or LEN over MAX_PAYLOAD: a false or damaged SYNC
REJ_CRC = 1  # complete frame whose CRC failed
REJ_SCHEMA = 2  # good CRC but another schema fingerprint: the peer speaks other message definitions
REJ_TRUNCATED = 3  # pending frame abandoned because a later complete frame was found inside it
REJ_NAMES = ("header", "crc", "schema", "truncated")


def crc32(data, crc=0):
    return binascii.crc32(data, crc) & 0xFFFFFFFF


def encode(payload, seq, schema):
    """One wire frame around `payload` (bytes-like). Allocates; the board's data path uses its own
    preallocated writer (firmware/frame_writer.py) that produces the identical bytes."""
    n = len(payload)
    if n > MAX_PAYLOAD:
        raise ValueError("payload of %d bytes exceeds MAX_PAYLOAD %d" % (n, MAX_PAYLOAD))
    head = bytearray(HEADER_SIZE)
    head[0:2] = SYNC
    struct.pack_into(">HHH", head, 2, n, seq & 0xFFFF, schema & 0xFFFF)
    struct.pack_into(">H", head, 8, crc32(memoryview(head)[2:8]) & 0xFFFF)
    crc = crc32(payload, crc32(memoryview(head)[2:HEADER_SIZE]))
    return bytes(head) + bytes(payload) + struct.pack(">I", crc)


def _crc_ok(buf, start, end):
    # (memoryviews are temporaries: a live export would stop the CPython bytearray from being resized)
    (crc,) = struct.unpack_from(">I", buf, end - CRC_SIZE)
    return crc32(memoryview(buf)[start + 2:end - CRC_SIZE]) == crc


class Decoder:
    """Incremental frame decoder: feed() bytes as they arrive, get (seq, payload) tuples back.

    Bytes are kept until they are proven to be either a frame or garbage; garbage and damaged frames are
    counted, never raised. Memory is bounded by max_buffer (a stalled partial frame cannot grow it)."""

    def __init__(self, schema, max_payload=MAX_PAYLOAD):
        self.schema = schema & 0xFFFF
        self.max_payload = max_payload
        self.buf = bytearray()
        self.frames = 0
        self.garbage_bytes = 0  # bytes skipped that belonged to no valid frame
        self.rejected = [0, 0, 0, 0]  # by reason REJ_*
        self.max_buffer = 2 * (max_payload + OVERHEAD)

    def rejected_total(self):
        return sum(self.rejected)

    def feed(self, data):
        self.buf.extend(data)
        out = []
        buf = self.buf
        pos = 0
        while True:
            start = buf.find(SYNC, pos)
            if start < 0:
                # keep a trailing 0xA5 not yet consumed: it may be the first half of a SYNC (one that ends the
                # frame just decoded is that frame's, not a new start)
                keep = 1 if len(buf) > pos and buf[-1] == SYNC[0] else 0
                self.garbage_bytes += len(buf) - pos - keep
                pos = len(buf) - keep
                break
            self.garbage_bytes += start - pos
            pos = start
            if len(buf) - start < HEADER_SIZE:
                break
            n, seq, schema, hchk = struct.unpack_from(">HHHH", buf, start + 2)
            if n > self.max_payload or (crc32(memoryview(buf)[start + 2:start + 8]) & 0xFFFF) != hchk:
                self.rejected[REJ_HEADER] += 1
                pos = start + 1
                continue
            end = start + HEADER_SIZE + n + CRC_SIZE
            if end > len(buf):
                later = self._complete_frame_after(start + 1)
                if later < 0:
                    break  # wait for more bytes
                self.rejected[REJ_TRUNCATED] += 1
                self.garbage_bytes += later - start
                pos = later
                continue
            if not _crc_ok(buf, start, end):
                self.rejected[REJ_CRC] += 1
                pos = start + 1
                continue
            if schema != self.schema:
                self.rejected[REJ_SCHEMA] += 1
                pos = end
                continue
            out.append((seq, bytes(buf[start + HEADER_SIZE:end - CRC_SIZE])))
            self.frames += 1
            pos = end
        if pos:
            buf[:pos] = b""  # (MicroPython bytearrays have no `del b[:n]`)
        if len(buf) > self.max_buffer:  # cannot happen with a valid LEN bound; belt and braces
            self.garbage_bytes += len(buf) - HEADER_SIZE
            buf[:len(buf) - HEADER_SIZE] = b""
        return out

    def _complete_frame_after(self, pos):
        """Offset of the first complete, CRC-valid frame starting at or after pos, or -1."""
        buf = self.buf
        while True:
            start = buf.find(SYNC, pos)
            if start < 0 or len(buf) - start < HEADER_SIZE:
                return -1
            n, _seq, _schema, hchk = struct.unpack_from(">HHHH", buf, start + 2)
            end = start + HEADER_SIZE + n + CRC_SIZE
            if (n <= self.max_payload and end <= len(buf)
                    and (crc32(memoryview(buf)[start + 2:start + 8]) & 0xFFFF) == hchk and _crc_ok(buf, start, end)):
                return start
            pos = start + 1
