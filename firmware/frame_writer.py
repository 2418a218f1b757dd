# The data-frame writer: the acquisition hot path. It turns one DMA block (the raw ADS1299 daisy-chain
# stream) into one wire frame in a buffer allocated once, and allocates nothing per frame: the sample copy
# and the CRC are viper loops over bytes, the variable-width CBOR heads are written right-to-left in front
# of the samples (so the samples land at a fixed offset), and the frame goes out with write(buf, off, n).
# The bytes are identical to protocol.framing.encode(cbor.dumps([DATA, cfg, first, leadoff, samples])).
import array

import micropython
from micropython import const

_SAMPLES_AT = const(32)  # frame header (10) + the longest CBOR prefix of a data message (19) fits before
_CHIP_BYTES = const(27)


def _make_crc_table():
    table = array.array("I", [0] * 256)
    for i in range(256):
        c = i
        for _ in range(8):
            c = (c >> 1) ^ 0xEDB88320 if c & 1 else c >> 1
        table[i] = c
    return table


CRC_TABLE = _make_crc_table()


@micropython.viper
def crc32_into(buf: ptr8, start: int, end: int, dest: int, nbytes: int, table: ptr32):
    # CRC-32/ISO-HDLC of buf[start:end]; its low `nbytes` bytes are stored big-endian at buf[dest].
    c = uint(0xFFFFFFFF)
    i = start
    while i < end:
        c = uint(table[(c ^ uint(buf[i])) & 0xFF]) ^ (c >> 8)
        i += 1
    c = c ^ uint(0xFFFFFFFF)
    k = nbytes - 1
    while k >= 0:
        buf[dest + k] = c & 0xFF
        c = c >> 8
        k -= 1


@micropython.viper
def _pack(raw: ptr8, frame: ptr8, at: int, nsamp: int, stride: int, chips: int, offs: ptr16, nsel: int) -> int:
    # Copy the selected channels (3 bytes each) of every sample; OR the lead-off status bits over the block.
    leadoff = 0
    d = at
    s = 0
    while s < nsamp:
        base = s * stride
        c = 0
        while c < chips:
            b = base + c * _CHIP_BYTES
            statp = ((raw[b] & 0x0F) << 4) | (raw[b + 1] >> 4)
            statn = ((raw[b + 1] & 0x0F) << 4) | (raw[b + 2] >> 4)
            leadoff |= (statp | statn) << (8 * c)
            c += 1
        j = 0
        while j < nsel:
            o = base + offs[j]
            frame[d] = raw[o]
            frame[d + 1] = raw[o + 1]
            frame[d + 2] = raw[o + 2]
            d += 3
            j += 1
        s += 1
    return leadoff


@micropython.viper
def _finish(frame: ptr8, nbytes: int, vals: ptr32, head: ptr8, seq: int, schema: int, table: ptr32) -> int:
    # vals = [len(samples), leadoff, -, cfg, message type], head[0:4] = first index (big-endian, read here so that no
    # Python int above 2**30 is ever made: that would be a heap object on the RP2350). CBOR heads are
    # written right-to-left before the samples.
    e = _SAMPLES_AT
    k = 0
    while k < 4:
        v = uint(vals[k])
        if k == 2:
            v = (uint(head[0]) << 24) | (uint(head[1]) << 16) | (uint(head[2]) << 8) | uint(head[3])
        major = uint(0)
        if k == 0:
            major = uint(0x40)  # byte string
        if v < uint(24):
            e -= 1
            frame[e] = major | v
        elif v < uint(256):
            e -= 2
            frame[e] = major | uint(24)
            frame[e + 1] = v
        elif v < uint(65536):
            e -= 3
            frame[e] = major | uint(25)
            frame[e + 1] = v >> 8
            frame[e + 2] = v & uint(0xFF)
        else:
            e -= 5
            frame[e] = major | uint(26)
            frame[e + 1] = v >> 24
            frame[e + 2] = (v >> 16) & uint(0xFF)
            frame[e + 3] = (v >> 8) & uint(0xFF)
            frame[e + 4] = v & uint(0xFF)
        k += 1
    e -= 2
    frame[e] = 0x85  # array(5)
    frame[e + 1] = vals[4]  # DATA (16) or DATA_RICE (18)
    end = _SAMPLES_AT + nbytes
    n = end - e  # CBOR payload length
    start = e - 10
    frame[start] = 0xA5
    frame[start + 1] = 0x5A
    frame[start + 2] = n >> 8
    frame[start + 3] = n & 0xFF
    frame[start + 4] = (seq >> 8) & 0xFF
    frame[start + 5] = seq & 0xFF
    frame[start + 6] = (schema >> 8) & 0xFF
    frame[start + 7] = schema & 0xFF
    crc32_into(frame, start + 2, start + 8, start + 8, 2, table)
    crc32_into(frame, start + 2, end, end, 4, table)
    return start


class FrameWriter:
    """Preallocated data-frame builder for one acquisition configuration."""

    def __init__(self, chips, channels, samples_per_frame, schema, arena=None, rice=False):
        """arena: a buffer allocated once at boot; the frame and the DMA block are carved from it when both
        fit (no allocation, so no configuration fails for a fragmented heap), else from one of their own.
        rice: send `data-rice` messages (SPEC 5.4.1): the samples are packed into a scratch buffer and
        compressed into the frame, or copied there as a raw block when compressing would not shorten them."""
        self.chips = chips
        self.rice = rice
        self.nsel = len(channels)
        self.nsamp = samples_per_frame
        self.stride = _CHIP_BYTES * chips
        self.nbytes = 3 * self.nsel * samples_per_frame
        self.offs = array.array("H", [(ch // 8) * _CHIP_BYTES + 3 + 3 * (ch % 8) for ch in channels])
        n_block = self.nbytes + 1 if rice else self.nbytes  # a rice block: its mode byte, then at most raw
        n_frame = _SAMPLES_AT + n_block + 4
        n_raw = self.stride * samples_per_frame
        n_pk = self.nbytes if rice else 0  # the packed samples the encoder reads
        if arena is None or n_frame + n_raw + n_pk > len(arena):
            arena = bytearray(n_frame + n_raw + n_pk)
        view = memoryview(arena)
        self.frame = view[:n_frame]
        self.raw = view[n_frame:n_frame + n_raw]
        self.pk = view[n_frame + n_raw:n_frame + n_raw + n_pk]
        self.sums = array.array("i", [0] * len(channels))  # the encoder's per-channel scratch
        self.vals = array.array("I", [n_block, 0, 0, 0, 18 if rice else 16])
        self.schema = schema & 0xFFFF
        self.end = _SAMPLES_AT + n_block + 4
        self.block_bytes = n_block  # of the most recent frame (a rice block varies)
        if rice:
            import rice_encoder

            self._encode = rice_encoder.encode

    def build(self, head, cfg, seq):
        """Frame for the block in self.raw whose first sample index is big-endian in head[0:4]. Returns the
        frame's start offset in self.frame (it ends at self.end); the block's lead-off mask is left in
        self.vals[1]. Allocates nothing (a tuple return would)."""
        # (viper pointer parameters take any buffer; the stubs' ptr types do not say so)
        vals = self.vals
        if self.rice:
            leadoff = _pack(self.raw, self.pk, 0, self.nsamp, self.stride, self.chips,  # type: ignore[arg-type]
                            self.offs, self.nsel)  # type: ignore[arg-type]
            n = self._encode(self.pk, self.nsamp, self.nsel, self.frame,  # type: ignore[arg-type]
                             _SAMPLES_AT, self.nbytes + 1, self.sums)  # type: ignore[arg-type]
            if n == 0:  # not shorter: mode 0, the samples packed again, straight after the mode byte
                self.frame[_SAMPLES_AT] = 0
                _pack(self.raw, self.frame, _SAMPLES_AT + 1, self.nsamp, self.stride, self.chips,  # type: ignore[arg-type]
                      self.offs, self.nsel)  # type: ignore[arg-type]
                n = self.nbytes + 1
        else:
            leadoff = _pack(self.raw, self.frame, _SAMPLES_AT, self.nsamp, self.stride, self.chips,  # type: ignore[arg-type]
                            self.offs, self.nsel)  # type: ignore[arg-type]
            n = self.nbytes
        vals[0] = n
        vals[1] = leadoff
        vals[3] = cfg
        self.block_bytes = n
        self.end = _SAMPLES_AT + n + 4
        return _finish(self.frame, n, vals, head, seq, self.schema, CRC_TABLE)  # type: ignore[arg-type]
