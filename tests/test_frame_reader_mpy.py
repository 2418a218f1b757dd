"""The board's receive path on MicroPython: firmware/frame_reader.py finds exactly the frames (and counts
exactly the rejections) that the reference decoder (protocol/framing.py, SPEC §2.1) does, in its fixed
buffer and with the heap locked; frames above its capacity are dropped and counted without being stored; and
link.py's error replies, built by hand in a preallocated buffer with the heap locked, are byte-identical to
the reference encoder's."""

from __future__ import annotations

import random

from mpyrun import run_json

from ionm.protocol import cbor, framing, messages as m

READER = """
import binascii, micropython
import frame_reader

def run(c):  # (a function: module-level names would grow the globals dict under the lock)
    r = frame_reader.FrameReader(c["schema"], c["capacity"])
    data = bytearray(binascii.unhexlify(c["stream"]))
    cuts = c["cuts"]
    got = []
    p = 0
    ci = 0
    micropython.heap_lock()
    try:
        while p < len(data):
            space = r.space()
            k = cuts[ci % len(cuts)]
            ci += 1
            if k > space:
                k = space
            if k > len(data) - p:
                k = len(data) - p
            buf = r.buf
            f = r.fill
            for i in range(k):
                buf[f + i] = data[p + i]
            r.fill = f + k
            p += k
            while True:
                n = r.next()
                if n < 0:
                    break
                micropython.heap_unlock()  # (the test's own list of results allocates)
                got.append([r.seq, binascii.hexlify(r.buf[r.start:r.start + n]).decode()])
                micropython.heap_lock()
    finally:
        micropython.heap_unlock()
    emit({"frames": got, "rejected": r.rejected, "garbage": r.garbage_bytes})

for c in _IN:
    run(c)
"""


def _stream(rng: random.Random, max_len: int) -> bytes:
    """Valid frames, damaged ones (bit flips, truncations), foreign-schema ones and garbage with false SYNCs."""
    out = bytearray()
    seq = 0
    for _ in range(rng.randint(5, 25)):
        r = rng.random()
        payload = rng.randbytes(rng.choice([0, 1, 5, 60, rng.randrange(max_len + 1)]))
        frame = bytearray(framing.encode(payload, seq, m.SCHEMA if r > 0.1 else m.SCHEMA ^ 0x0101))
        seq += 1
        if 0.1 < r < 0.25:
            frame[rng.randrange(len(frame))] ^= 1 << rng.randrange(8)
        elif 0.25 < r < 0.35:
            frame = frame[:rng.randrange(len(frame))]
        elif 0.35 < r < 0.45:
            out += b"".join(rng.choice([b"\xa5\x5a", b"\xa5", b"\x5a", b"\x00"]) for _ in range(rng.randint(1, 30)))
        out += frame
        if rng.random() < 0.2:
            out += rng.randbytes(rng.randint(1, 200))
    return bytes(out)


def _reference(stream: bytes, cuts: list[int]) -> dict:
    d = framing.Decoder(m.SCHEMA)
    got = []
    p = 0
    i = 0
    while p < len(stream):
        k = cuts[i % len(cuts)]
        i += 1
        got += [[seq, payload.hex()] for seq, payload in d.feed(stream[p:p + k])]
        p += k
    return {"frames": got, "rejected": d.rejected + [0], "garbage": d.garbage_bytes}


def test_the_fixed_buffer_reader_decodes_like_the_reference_decoder_allocation_free():
    rng = random.Random(17)
    cases = []
    for _ in range(30):
        cuts = [rng.choice([1, 3, 10, 256, 700, 5000]) for _ in range(7)]
        cases.append({"schema": m.SCHEMA & 0xFFFF, "capacity": framing.MAX_PAYLOAD, "cuts": cuts,
                      "stream": _stream(rng, 1000).hex()})
    results = []
    for i in range(0, len(cases), 6):  # (a few streams per run: the JSON input lives in the board's heap too)
        results += run_json(READER, cases[i:i + 6], timeout=120)
    assert len(results) == len(cases)
    delivered = 0
    for case, got in zip(cases, results, strict=True):
        want = _reference(bytes.fromhex(case["stream"]), case["cuts"])
        assert got == want
        delivered += len(got["frames"])
    assert delivered > 200  # the streams are mostly good frames: the comparison is not vacuous


def test_frames_above_the_capacity_are_dropped_counted_and_not_stored():
    """An oversize frame (a good header, LEN above the board's capacity) costs its own bytes only: the frames
    around it arrive, and the reader's buffer never grows (it is a fixed bytearray)."""
    cap = 600
    small = [framing.encode(bytes([i]) * 10, i, m.SCHEMA) for i in range(3)]
    big = framing.encode(b"\x5a\xa5" * 1000, 9, m.SCHEMA)  # 2000 bytes, no false SYNC inside
    stream = small[0] + big + small[1] + big + big + small[2]
    (got,) = run_json(READER, [{"schema": m.SCHEMA & 0xFFFF, "capacity": cap, "cuts": [1, 64, 300],
                                "stream": stream.hex()}])
    assert [f[0] for f in got["frames"]] == [0, 1, 2]
    assert got["rejected"] == [0, 0, 0, 0, 3]  # header, crc, schema, truncated, oversize
    assert got["garbage"] == 0


ERRORS = """
import binascii, micropython
import link
class Bsp:
    def __init__(self):
        self.out = []
    def host_write(self, buf, off, n):
        micropython.heap_unlock()
        self.out.append(binascii.hexlify(buf[off:off + n]).decode())
        micropython.heap_lock()

def run(ln, c):
    ln.tx_seq = c["seq"]
    micropython.heap_lock()
    try:
        ln.error(c["rid"], c["code"], c["detail"])
    finally:
        micropython.heap_unlock()

bsp = Bsp()
ln = link.Link(bsp, 600)
for c in _IN:
    run(ln, c)
emit(bsp.out)
"""


def test_error_replies_are_encoded_without_allocating_and_match_the_reference_encoder():
    long_detail = "current_ua 100100 µA is above the limit " + "é€" * 120  # cut at a character boundary
    cases = [{"seq": 0, "rid": 0, "code": m.E_MALFORMED, "detail": "a request is [type, rid, {body}]"},
             {"seq": 65535, "rid": 23, "code": m.E_LIMIT_CURRENT, "detail": "µA"},
             {"seq": 7, "rid": 24, "code": m.E_LIMIT_IMPEDANCE, "detail": ""},
             {"seq": 300, "rid": 255, "code": m.E_INTERNAL, "detail": "x" * 23},
             {"seq": 301, "rid": 256, "code": m.E_BAD_FIELD, "detail": "y" * 24},
             {"seq": 302, "rid": 65535, "code": m.E_VERSION, "detail": "z" * 255},
             {"seq": 303, "rid": 9, "code": 99, "detail": long_detail}]
    (frames,) = run_json(ERRORS, cases)
    for c, got in zip(cases, frames, strict=True):
        detail = c["detail"]
        while len(detail.encode()) > 240:
            detail = detail[:-1]
        want = framing.encode(cbor.dumps([m.ERROR, c["rid"], m.error_body(c["code"], detail)]), c["seq"], m.SCHEMA)
        assert got == want.hex(), c
    assert len(bytes.fromhex(frames[-1])) < 320


ENVELOPE_RID = """
import binascii, micropython
import link
out = []
rid = 0  # a global assigned under heap_lock must exist already (a new one grows the module's dict)
for hx in _IN:
    buf = bytearray(b"..") + binascii.unhexlify(hx)  # at an offset, as in the frame reader's buffer
    micropython.heap_lock()
    try:
        rid = link.envelope_rid(buf, 2, len(buf) - 2)
    finally:
        micropython.heap_unlock()
    out.append(rid)
emit(out)
"""


def test_the_envelope_rid_is_read_from_the_head_alone_without_allocating():
    """What the board answers a request it cannot decode for want of memory under (SPEC §4): the rid of a payload
    that begins 0x83, type, rid (arguments of up to two bytes), else 0; read under heap_lock."""
    body = {"x": [{}] * 3}
    good = [cbor.dumps([m.GET_INFO, rid, body]) for rid in (1, 23, 24, 255, 256, 65535)]
    bad = [cbor.dumps([m.GET_INFO, 70000, body]),  # a four-byte argument: no rid a host chose
           cbor.dumps([m.GET_INFO, -1, body]), cbor.dumps({"a": 1}), cbor.dumps([m.GET_INFO]),
           bytes([0x83, 0x19, 0x00]), bytes([0x83, 0x01, 0x18]), b"", bytes([0x83])]
    got = run_json(ENVELOPE_RID, [bytes(p).hex() for p in good + bad])[0]
    assert got == [1, 23, 24, 255, 256, 65535] + [0] * len(bad)
