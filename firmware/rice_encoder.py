# The board's sample compressor (SPEC.md §5.4.1, `encoding: "rice"`): first differences per channel,
# Rice-coded with a parameter k per channel per block. The same bytes as protocol/rice.py's reference
# encode(), in viper, allocation-free: the caller owns every buffer (allocated once, at configure).
# Arithmetic stays inside 32 bits, as on the RP2350: each |difference| is clamped to 2**19 for the k
# estimate (n_samples < 2**12, so a channel's sum stays below 2**31), and k is at most 20.
import micropython
from micropython import const

_MODE_RICE = const(1)
_ESCAPE = const(24)  # unary length announcing a verbatim zigzag difference
_U_BITS = const(25)  # bits of a verbatim zigzag difference
_U_CLAMP = const(0x80000)  # 2**19: a zigzag difference counts at most this much in the k estimate
_K_MAX = const(20)  # the largest k this encoder chooses (the format allows 24)


@micropython.viper
def encode(pk: ptr8, nsamp: int, nsel: int, out: ptr8, at: int, lim: int, sums: ptr32) -> int:
    # pk: nsamp x nsel 24-bit big-endian counts, sample-major (the data message's samples). Writes a mode-1
    # block at out[at:] and returns its length in bytes, or 0 when it would not be shorter than lim bytes
    # (the caller then sends mode 0, raw). Never writes at or past out[at + lim]. sums: nsel words of scratch.
    if nsamp < 2 or nsamp > 4095:
        return 0
    row = nsel * 3  # bytes per sample of all channels
    c = 0
    while c < nsel:
        sums[c] = 0
        c += 1
    i = row
    end = nsamp * row
    while i < end:  # pass 1: sum of clamped zigzag differences per channel
        c = 0
        while c < nsel:
            j = i + c * 3
            x = (int(pk[j]) << 16) | (int(pk[j + 1]) << 8) | int(pk[j + 2])
            if x & 0x800000:
                x -= 0x1000000
            p = (int(pk[j - row]) << 16) | (int(pk[j - row + 1]) << 8) | int(pk[j - row + 2])
            if p & 0x800000:
                p -= 0x1000000
            d = x - p
            u = (d << 1) if d >= 0 else ((0 - d) << 1) - 1
            if u > _U_CLAMP:
                u = _U_CLAMP
            sums[c] = sums[c] + u
            c += 1
        i += row
    stop = at + lim  # first byte the block may not reach
    o = at
    if 3 + 4 * nsel >= lim:
        return 0
    out[o] = _MODE_RICE
    out[o + 1] = (nsamp >> 8) & 0xFF
    out[o + 2] = nsamp & 0xFF
    o += 3
    n1 = uint(nsamp - 1)
    c = 0
    while c < nsel:  # k: about log2 of the mean zigzag difference; left in sums[c]
        k = 0
        total = uint(sums[c])
        while k < _K_MAX and (n1 << uint(k + 1)) <= total:
            k += 1
        sums[c] = k
        out[o] = k
        o += 1
        c += 1
    c = 0
    while c < nsel:  # the first counts, verbatim
        out[o] = pk[c * 3]
        out[o + 1] = pk[c * 3 + 1]
        out[o + 2] = pk[c * 3 + 2]
        o += 3
        c += 1
    acc = uint(0)  # bit accumulator: its low nb bits are pending, most significant first
    nb = 0
    i = row
    while i < end:  # pass 2: the codes
        c = 0
        while c < nsel:
            j = i + c * 3
            x = (int(pk[j]) << 16) | (int(pk[j + 1]) << 8) | int(pk[j + 2])
            if x & 0x800000:
                x -= 0x1000000
            p = (int(pk[j - row]) << 16) | (int(pk[j - row + 1]) << 8) | int(pk[j - row + 2])
            if p & 0x800000:
                p -= 0x1000000
            d = x - p
            u = (d << 1) if d >= 0 else ((0 - d) << 1) - 1
            k = int(sums[c])
            q = u >> k
            # two writes of at most 25 bits each: with at most 7 bits pending, 32 bits suffice
            if q < _ESCAPE:
                n = q + 1
                v = uint(1)
            else:
                n = _ESCAPE
                v = uint(0)
            w = 0
            while w < 2:
                acc = (acc << uint(n)) | v
                nb += n
                while nb >= 8:
                    if o >= stop:
                        return 0
                    nb -= 8
                    out[o] = int(acc >> uint(nb)) & 0xFF
                    o += 1
                if q < _ESCAPE:
                    n = k
                    v = uint(u) & ((uint(1) << uint(k)) - uint(1))
                else:
                    n = _U_BITS
                    v = uint(u)
                w += 1
            c += 1
        i += row
    if nb:
        if o >= stop:
            return 0
        out[o] = int(acc << uint(8 - nb)) & 0xFF
        o += 1
    if o >= stop:
        return 0
    return o - at

