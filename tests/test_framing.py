"""protocol/framing.py, the same cases on CPython and on MicroPython: round trips, resynchronisation after
garbage and damage, truncation without holding later frames hostage, schema mismatch, the CRC check value."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest
from mpyrun import run_json

from ionm import board
from ionm.protocol import framing

DATA = Path(__file__).parent / "data" / "conformance"

# Each case: a list of chunks (hex) fed in order; expected payloads (hex) and rejection counts.
CASES_CODE = """
def frame(payload, seq, schema=0x6C0C):
    return framing.encode(payload, seq, schema)

def cases():
    a, b, c = frame(b"alpha", 1), frame(b"beta" * 40, 2), frame(b"", 3)
    out = []
    out.append(("roundtrip", [a + b + c], [b"alpha", b"beta" * 40, b""], [0, 0, 0, 0]))
    out.append(("byte by byte", [bytes([x]) for x in a + b], [b"alpha", b"beta" * 40], [0, 0, 0, 0]))
    out.append(("garbage before and between", [b"\\x00\\xa5\\x01garbage" + a + b"\\xa5\\xa5zz" + b],
                [b"alpha", b"beta" * 40], [0, 0, 0, 0]))
    bad = bytearray(b); bad[20] ^= 0x10
    out.append(("payload bit flip", [a + bytes(bad) + c], [b"alpha", b""], [0, 1, 0, 0]))
    bad = bytearray(b); bad[2] ^= 0x01
    out.append(("length bit flip", [a + bytes(bad) + c], [b"alpha", b""], [1, 0, 0, 0]))
    out.append(("truncated then a short frame", [a + b[:30] + c], [b"alpha", b""], [0, 0, 0, 1]))
    out.append(("dropped byte", [a + b[:50] + b[51:] + c], [b"alpha", b""], [0, 1, 0, 0]))
    out.append(("duplicated byte", [a + b[:50] + b[50:51] + b[50:] + c], [b"alpha", b""], [0, 1, 0, 0]))
    out.append(("other schema", [a + frame(b"x", 4, 0x1234) + c], [b"alpha", b""], [0, 0, 1, 0]))
    big = bytearray(a); big[2] = 0xFF; big[3] = 0xFF
    out.append(("oversized length", [bytes(big) + c], [b""], [1, 0, 0, 0]))
    out.append(("split sync", [a + c[:1], c[1:]], [b"alpha", b""], [0, 0, 0, 0]))
    # A frame whose CRC ends in 0xA5 (the first half of SYNC): that byte is the frame's, not a new start.
    seq = [s for s in range(5000) if frame(b"tail", s)[-1] == 0xA5][0]
    t = frame(b"tail", seq)
    out.append(("frame ending in 0xa5, byte by byte", [bytes([x]) for x in t], [b"tail"], [0, 0, 0, 0]))
    out.append(("frame ending in 0xa5, then a frame", [t, a], [b"tail", b"alpha"], [0, 0, 0, 0]))
    return out

def run_cases():
    res = []
    for name, chunks, _want, _rej in cases():
        d = framing.Decoder(0x6C0C)
        got = []
        for ch in chunks:
            got += [binascii.hexlify(p).decode() for _s, p in d.feed(ch)]
        res.append({"name": name, "payloads": got, "rejected": d.rejected, "garbage": d.garbage_bytes,
                    "left": len(d.buf)})
    return res
"""


def expected() -> list[dict]:
    ns: dict = {"framing": framing}
    exec(CASES_CODE, ns)
    return [{"name": n, "payloads": [p.hex() for p in want], "rejected": rej} for n, _c, want, rej in ns["cases"]()]


def cpython_results() -> list[dict]:
    import binascii

    ns: dict = {"framing": framing, "binascii": binascii}
    exec(CASES_CODE, ns)
    return ns["run_cases"]()


@pytest.fixture(scope="module")
def mpy_results() -> list[dict]:
    return run_json("import binascii, framing\n" + CASES_CODE + "\nfor r in run_cases():\n    emit(r)\n")


@pytest.mark.parametrize("interp", ["cpython", "micropython"])
def test_framing_cases(interp, mpy_results):
    results = cpython_results() if interp == "cpython" else mpy_results
    for want, got in zip(expected(), results, strict=True):
        assert got["name"] == want["name"]
        assert got["payloads"] == want["payloads"], want["name"]
        assert got["rejected"] == want["rejected"], want["name"]


def test_both_interpreters_agree_on_garbage_counts(mpy_results):
    assert [r["garbage"] for r in cpython_results()] == [r["garbage"] for r in mpy_results]


@pytest.mark.parametrize("interp", ["cpython", "micropython"])
def test_clean_streams_count_no_garbage_and_leave_nothing_behind(interp, mpy_results):
    # Garbage is counted exactly: never negative, and zero on a stream of whole frames however it is split
    # (a trailing 0xA5 that belongs to a decoded frame once counted -1 and stayed in the buffer).
    results = cpython_results() if interp == "cpython" else mpy_results
    assert all(r["garbage"] >= 0 for r in results)
    clean = {"roundtrip", "byte by byte", "split sync", "frame ending in 0xa5, byte by byte",
             "frame ending in 0xa5, then a frame"}
    for r in results:
        if r["name"] in clean:
            assert (r["garbage"], r["left"]) == (0, 0), r["name"]


def test_crc_is_crc32_iso_hdlc_check_value_on_both():
    check = int(json.loads((DATA / "crc_check_values.json").read_text())["check"]["CRC-32/ISO-HDLC"], 16)
    assert framing.crc32(b"123456789") == check
    assert run_json("import framing\nemit(framing.crc32(b'123456789'))") == [check]
    # and the firmware's viper CRC, used on the data path
    code = """
import frame_writer
buf = bytearray(b'123456789') + bytearray(4)
frame_writer.crc32_into(buf, 0, 9, 9, 4, frame_writer.CRC_TABLE)
emit(int.from_bytes(buf[9:13], 'big'))
"""
    assert run_json(code) == [check]


def test_max_payload_agrees_with_the_board_definition():
    assert framing.MAX_PAYLOAD == board.load()["link"]["max_payload_bytes"]


def test_random_streams_never_raise_and_keep_memory_bounded_on_cpython():
    rng = random.Random(1)
    d = framing.Decoder(0x6C0C)
    good = framing.encode(b"x" * 100, 0, 0x6C0C)
    for _ in range(2000):
        chunk = bytes(rng.getrandbits(8) for _ in range(rng.randint(0, 200)))
        if rng.random() < 0.3:
            chunk += good
        d.feed(chunk)
        assert len(d.buf) <= d.max_buffer
