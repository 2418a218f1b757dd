"""Property-based tests of the host's frame decoder (hypothesis)."""

from __future__ import annotations

from hypothesis import given, settings, strategies as st

from ionm.protocol import framing

SCHEMA = 0x6C0C
payloads = st.lists(st.binary(max_size=300), min_size=1, max_size=12)
garbage = st.binary(max_size=64).map(lambda b: b.replace(b"\xa5", b"\x00"))  # no SYNC inside the garbage


@settings(max_examples=300, deadline=None)
@given(payloads, st.lists(garbage, min_size=13, max_size=13), st.lists(st.integers(1, 97), min_size=1))
def test_any_split_with_garbage_between_frames_yields_exactly_the_frames(ps, junk, cuts):
    stream = b"".join(junk[i] + framing.encode(p, i, SCHEMA) for i, p in enumerate(ps)) + junk[-1]
    dec = framing.Decoder(SCHEMA)
    out, pos, k = [], 0, 0
    while pos < len(stream):
        step = cuts[k % len(cuts)]
        out += dec.feed(stream[pos:pos + step])
        pos, k = pos + step, k + 1
    assert [p for _s, p in out] == ps
    assert [s for s, _p in out] == list(range(len(ps)))
    assert dec.rejected_total() == 0
    assert dec.garbage_bytes == sum(len(j) for j in junk[:len(ps)]) + len(junk[-1])


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=4096))
def test_arbitrary_bytes_never_raise_and_never_grow_the_buffer(data):
    dec = framing.Decoder(SCHEMA)
    for i in range(0, len(data), 512):
        dec.feed(data[i:i + 512])
        assert len(dec.buf) <= dec.max_buffer


@settings(max_examples=200, deadline=None)
@given(payloads, st.integers(0, 10**6), st.integers(0, 7))
def test_one_flipped_bit_loses_at_most_the_frame_it_hit(ps, where, bit):
    frames = [framing.encode(p, i, SCHEMA) for i, p in enumerate(ps)]
    stream = bytearray(b"".join(frames))
    pos = where % len(stream)
    stream[pos] ^= 1 << bit
    hit, acc = 0, 0
    for i, f in enumerate(frames):
        if acc <= pos < acc + len(f):
            hit = i
        acc += len(f)
    got = [s for s, _p in framing.Decoder(SCHEMA).feed(bytes(stream))]
    expected = [i for i in range(len(ps)) if i != hit]
    # every other frame survives; the hit one is rejected (a flip in SYNC hides it, also a loss)
    assert got == expected
