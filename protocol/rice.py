# Lossless sample compression of the IONM wire protocol (SPEC.md §5.4.1): the block of a `data-rice`
# message. Runs unchanged on MicroPython and CPython (the reference encoder and the decoder; the board's
# hot-path encoder is firmware/rice_encoder.py, a viper version of encode() that gives the same bytes).
#
# block = mode (1 byte) + body
#   mode 0 (raw):  body = the samples exactly as a `data` message carries them: n_samples x n_channels
#                  24-bit big-endian two's-complement counts, sample-major.
#   mode 1 (rice): body = n_samples (u16 big-endian, >= 1)
#                         k[c]      one byte per channel, 0..MAX_K, the Rice parameter
#                         x0[c]     3 bytes per channel: the block's first count, 24-bit two's complement
#                         bitstream the first differences d = x[s][c] - x[s-1][c], s = 1..n-1, sample-major
#                                   (for each s, channels in order), each zigzag-mapped to
#                                   u = 2d (d >= 0) or -2d - 1 (d < 0) and Rice-coded with k[c]:
#                                   q = u >> k; q < ESCAPE: q 0-bits, one 1-bit, then the k low bits of u;
#                                   q >= ESCAPE: ESCAPE 0-bits, then u in U_BITS bits.
#                                   Bits are written most significant first into each byte; the last byte is
#                                   padded with 0-bits; the block ends there (nothing follows).
# An encoder uses mode 1 only when it is shorter than mode 0. Every block decodes on its own.

MODE_RAW = 0
MODE_RICE = 1
MAX_K = 24  # a larger k field is an error
ESCAPE = 24  # unary length that announces a verbatim u
U_BITS = 25  # a difference of two 24-bit counts, zigzag-mapped, fits in 25 bits
_SIGN = 0x800000
_WRAP = 0x1000000


class RiceError(ValueError):
    """A block that does not decode: malformed, truncated or out of range."""


def _choose_k(total, count):
    # the encoder's choice (not normative): about log2 of the mean u, as FLAC/Shorten estimate it. The
    # board's encoder clamps each u to 2**19 for the sum (32-bit arithmetic) and k to 20: so does this one.
    k = 0
    while k < 20 and (count << (k + 1)) <= total:
        k += 1
    return k


def encode(counts, n_channels):
    """Reference encoder: counts is a flat sample-major sequence of ints in -2**23..2**23-1. Returns the
    block (bytes), in mode 1 when that is shorter than mode 0."""
    n = len(counts) // n_channels
    raw = bytearray(1 + 3 * len(counts))
    o = 1
    for v in counts:
        v &= 0xFFFFFF
        raw[o] = v >> 16
        raw[o + 1] = (v >> 8) & 0xFF
        raw[o + 2] = v & 0xFF
        o += 3
    if n < 1 or n > 65535:
        return bytes(raw)
    sums = [0] * n_channels
    for s in range(1, n):
        b = s * n_channels
        for c in range(n_channels):
            d = counts[b + c] - counts[b - n_channels + c]
            u = d << 1 if d >= 0 else ((-d) << 1) - 1
            sums[c] += u if u < 0x80000 else 0x80000
    ks = [_choose_k(t, n - 1) for t in sums]
    out = bytearray()
    out.append(MODE_RICE)
    out.append(n >> 8)
    out.append(n & 0xFF)
    for k in ks:
        out.append(k)
    for c in range(n_channels):
        v = counts[c] & 0xFFFFFF
        out.append(v >> 16)
        out.append((v >> 8) & 0xFF)
        out.append(v & 0xFF)
    acc = 0
    nb = 0
    for s in range(1, n):
        b = s * n_channels
        for c in range(n_channels):
            d = counts[b + c] - counts[b - n_channels + c]
            u = d << 1 if d >= 0 else ((-d) << 1) - 1
            k = ks[c]
            q = u >> k
            if q < ESCAPE:
                acc = (acc << (q + 1 + k)) | (1 << k) | (u & ((1 << k) - 1))
                nb += q + 1 + k
            else:
                acc = (acc << (ESCAPE + U_BITS)) | u
                nb += ESCAPE + U_BITS
            while nb >= 8:
                nb -= 8
                out.append((acc >> nb) & 0xFF)
            acc &= (1 << nb) - 1
        if len(out) >= len(raw):
            return bytes(raw)
    if nb:
        out.append((acc << (8 - nb)) & 0xFF)
    if len(out) >= len(raw):
        return bytes(raw)
    return bytes(out)


def decode(block, n_channels):
    """The counts of a block: a flat sample-major list of ints. RiceError when it is not a valid block for
    n_channels channels (never anything else)."""
    if n_channels < 1 or len(block) < 1:
        raise RiceError("empty block")
    mode = block[0]
    if mode == MODE_RAW:
        if (len(block) - 1) % (3 * n_channels) or len(block) == 1:
            raise RiceError("raw block of %d bytes is not whole samples of %d channels" % (len(block), n_channels))
        out = []
        for o in range(1, len(block), 3):
            v = (block[o] << 16) | (block[o + 1] << 8) | block[o + 2]
            out.append(v - _WRAP if v & _SIGN else v)
        return out
    if mode != MODE_RICE:
        raise RiceError("unknown block mode %d" % mode)
    head = 3 + 4 * n_channels
    if len(block) < head:
        raise RiceError("rice block shorter than its header")
    n = (block[1] << 8) | block[2]
    if n < 1:
        raise RiceError("rice block of 0 samples")
    ks = [block[3 + c] for c in range(n_channels)]
    for k in ks:
        if k > MAX_K:
            raise RiceError("rice parameter %d above %d" % (k, MAX_K))
    out = [0] * (n * n_channels)
    o = 3 + n_channels
    for c in range(n_channels):
        v = (block[o] << 16) | (block[o + 1] << 8) | block[o + 2]
        out[c] = v - _WRAP if v & _SIGN else v
        o += 3
    nbits = 8 * len(block)
    pos = 8 * head  # bit position
    i = n_channels
    total = n * n_channels
    while i < total:
        k = ks[i % n_channels]
        q = 0
        while True:  # unary part
            if pos >= nbits:
                raise RiceError("rice block truncated")
            bit = (block[pos >> 3] >> (7 - (pos & 7))) & 1
            pos += 1
            if bit:
                break
            q += 1
            if q == ESCAPE:
                break
        width = U_BITS if q == ESCAPE else k
        if pos + width > nbits:
            raise RiceError("rice block truncated")
        low = 0
        for _ in range(width):
            low = (low << 1) | ((block[pos >> 3] >> (7 - (pos & 7))) & 1)
            pos += 1
        u = low if q == ESCAPE else (q << k) | low
        d = -((u + 1) >> 1) if u & 1 else u >> 1
        v = out[i - n_channels] + d
        if v < -_SIGN or v >= _SIGN:
            raise RiceError("rice block decodes outside 24 bits")
        out[i] = v
        i += 1
    if (nbits - pos) >= 8 or (pos & 7 and block[pos >> 3] & ((1 << (8 - (pos & 7))) - 1)):
        raise RiceError("rice block has bytes or bits after its last sample")
    return out
