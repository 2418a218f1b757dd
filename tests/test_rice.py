"""Lossless sample compression (SPEC 5.4.1): the reference codec round-trips every block exactly, falls back to
raw where coding would not shorten it, rejects corrupt blocks with RiceError only; the board's viper encoder
gives the same bytes allocation-free under heap_lock; the MicroPython decoder agrees with CPython's."""

from __future__ import annotations

import random

import numpy as np
import pytest
from mpyrun import run_json

from ionm.protocol import rice

FS = 1 << 23


def _emg_like(rng: np.random.Generator, n: int, nch: int) -> list[int]:
    """Band-limited noise of a few hundred counts on a DC offset: what a quiet needle electrode records."""
    x = np.cumsum(rng.normal(0, 40, (n, nch)), axis=0) + rng.integers(-200000, 200000, nch)
    return [int(v) for v in np.clip(x, -FS, FS - 1).astype(np.int64).ravel()]


def cases() -> list[tuple[str, int, list[int]]]:
    rng = np.random.default_rng(3)
    r = random.Random(3)
    out: list[tuple[str, int, list[int]]] = []
    out.append(("emg-16x32", 16, _emg_like(rng, 32, 16)))
    out.append(("emg-4x256", 4, _emg_like(rng, 256, 4)))
    out.append(("constant", 16, [1234] * (16 * 32)))
    out.append(("zeros-1ch", 1, [0] * 100))
    out.append(("extremes", 3, [(-FS if (i // 3) % 2 else FS - 1) for i in range(3 * 40)]))
    out.append(("full-scale-steps", 2, [(-FS if s < 20 else FS - 1) for s in range(40) for _ in range(2)]))
    out.append(("white-noise", 8, [r.randrange(-FS, FS) for _ in range(8 * 32)]))
    out.append(("one-sample", 16, [r.randrange(-FS, FS) for _ in range(16)]))
    out.append(("two-samples", 2, [5, -5, 6, -7]))
    # quiet channels with one that jumps full scale now and then (escapes inside a rice block)
    quiet = _emg_like(rng, 64, 4)
    for s in (10, 11, 40):
        quiet[4 * s + 2] = -FS if s % 2 else FS - 1
    out.append(("escapes", 4, quiet))
    for i in range(20):
        nch = r.randint(1, 16)
        n = r.randint(1, 80)
        scale = r.choice([1, 30, 3000, 300000, FS])
        base = r.randrange(-FS // 2, FS // 2)
        out.append(("random-%d" % i, nch, [max(-FS, min(FS - 1, base + r.randrange(-scale, scale)))
                                           for _ in range(n * nch)]))
    return out


@pytest.mark.parametrize("name,nch,counts", cases(), ids=[c[0] for c in cases()])
def test_round_trip_is_exact_and_never_longer_than_raw(name, nch, counts):
    block = rice.encode(counts, nch)
    assert len(block) <= 1 + 3 * len(counts)
    assert rice.decode(block, nch) == counts
    if name in ("white-noise", "one-sample", "extremes"):
        assert block[0] == rice.MODE_RAW  # coding would not shorten it
    if name in ("constant", "zeros-1ch") or name.startswith("emg"):
        assert block[0] == rice.MODE_RICE and len(block) < 0.7 * (1 + 3 * len(counts))


def test_corrupt_blocks_raise_rice_error_and_nothing_else():
    r = random.Random(11)
    blocks = [(nch, rice.encode(counts, nch)) for _name, nch, counts in cases()]
    bad = 0
    for _ in range(3000):
        nch, block = r.choice(blocks)
        b = bytearray(block)
        how = r.randrange(4)
        if how == 0 and b:
            b[r.randrange(len(b))] ^= 1 << r.randrange(8)
        elif how == 1:
            b = b[:r.randrange(len(b))]
        elif how == 2:
            b += bytes([r.randrange(256)])
        else:
            b = bytearray(r.getrandbits(8) for _ in range(r.randrange(0, 60)))
        try:
            got = rice.decode(bytes(b), nch)
        except rice.RiceError:
            bad += 1
            continue
        assert all(-FS <= v < FS for v in got) and len(got) % nch == 0
    assert bad > 1000
    for junk in (b"", b"\x02", b"\x01\x00\x00" + bytes(8), b"\x01\x00\x02" + bytes([25]) + bytes(3) + b"\xff"):
        with pytest.raises(rice.RiceError):
            rice.decode(junk, 1)


ENCODE = """
import binascii, micropython, array
import rice_encoder, rice
res = []
for nch, hexpk in _IN:
    pk = bytearray(binascii.unhexlify(hexpk))
    nsamp = len(pk) // (3 * nch)
    out = bytearray(8 + len(pk) + 1 + 8)
    for i in range(len(out)):
        out[i] = 0xEE  # a write past the limit would show
    sums = array.array("i", [0] * nch)
    n = 0
    micropython.heap_lock()
    try:
        n = rice_encoder.encode(pk, nsamp, nch, out, 8, len(pk) + 1, sums)
    finally:
        micropython.heap_unlock()
    tail_ok = all(b == 0xEE for b in out[8 + len(pk) + 1:]) and all(b == 0xEE for b in out[:8])
    counts = rice.decode(bytes(out[8:8 + n]), nch) if n else None
    emit([n, binascii.hexlify(out[8:8 + n]).decode(), tail_ok, counts])
"""


def _packed(counts: list[int]) -> str:
    return b"".join((v & 0xFFFFFF).to_bytes(3, "big") for v in counts).hex()


def test_board_encoder_matches_the_reference_allocation_free_and_micropython_decodes_it():
    cs = cases()
    out = run_json(ENCODE, [[nch, _packed(counts)] for _name, nch, counts in cs])
    assert len(out) == len(cs)
    for (name, nch, counts), (n, hexblock, tail_ok, decoded) in zip(cs, out, strict=True):
        ref = rice.encode(counts, nch)
        assert tail_ok, name
        if ref[0] == rice.MODE_RAW:
            assert n == 0, name  # the caller sends the raw block
        else:
            assert bytes.fromhex(hexblock) == ref, name
            assert decoded == counts, name


def test_the_host_decoder_agrees_with_the_reference_on_good_and_corrupt_blocks():
    """ionm.board.link.decode_block (numpy-assisted, the one the host link runs) gives the reference decoder's
    counts on every block and rejects exactly the blocks it rejects."""
    from ionm.board.link import decode_block

    r = random.Random(12)
    blocks = [(nch, rice.encode(counts, nch)) for _name, nch, counts in cases()]
    trials = list(blocks)
    for _ in range(3000):
        nch, block = r.choice(blocks)
        b = bytearray(block)
        how = r.randrange(3)
        if how == 0 and b:
            b[r.randrange(len(b))] ^= 1 << r.randrange(8)
        elif how == 1:
            b = b[:r.randrange(len(b))]
        else:
            b += bytes([r.randrange(256)])
        trials.append((nch, bytes(b)))
    for nch, b in trials:
        try:
            want = rice.decode(b, nch)
        except rice.RiceError:
            with pytest.raises(rice.RiceError):
                decode_block(b, nch)
            continue
        got = decode_block(b, nch)
        assert got.dtype == np.int32 and got.ravel().tolist() == want
