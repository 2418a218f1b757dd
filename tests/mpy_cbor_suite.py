"""Test cases for protocol/cbor.py that run on MicroPython and on CPython alike.

tests/test_cbor.py writes the cases as a JSON-lines job file (one case a line, so MicroPython's small
heap holds one case at a time) and runs this script under the MicroPython unix port:

    micropython mpy_cbor_suite.py JOB.jsonl   ->   "PASS name" or "FAIL name detail" per case, then "DONE n"

The same test module imports this file under CPython and calls run_case() on the same cases.

A case is a JSON array [kind, name, ...]. Values travel in a typed form (see build()): JSON has no bytes,
tags or simple values, and MicroPython's float parser is not correctly rounded, so floats are sent as the
hex of their IEEE double bits and text as the hex of its UTF-8.
"""

import gc
import json
import struct
import sys

import cbor


def unhex(text):
    return bytes.fromhex(text)


def build(typed):
    kind = typed[0]
    if kind == "int":
        return int(typed[1])
    if kind == "float":
        return struct.unpack(">d", unhex(typed[1]))[0]
    if kind == "bytes":
        return unhex(typed[1])
    if kind == "text":
        return str(unhex(typed[1]), "utf-8")
    if kind == "list":
        return [build(item) for item in typed[1]]
    if kind == "map":
        result = {}
        for key, value in reversed(typed[1]):  # reversed: the encoder must not depend on insertion order
            result[build(key)] = build(value)
        return result
    if kind == "tuple":  # for array map keys
        return tuple(build(item) for item in typed[1])
    if kind == "tag":
        return cbor.Tag(typed[1], build(typed[2]))
    if kind == "simple":
        return cbor.Simple(typed[1])
    if kind == "undefined":
        return cbor.UNDEFINED
    if kind == "null":
        return None
    if kind == "bool":
        return bool(typed[1])
    raise ValueError("unknown typed value " + kind)


def same(a, b):
    """Strict equality: type must match (1, 1.0 and True differ), -0.0 differs from 0.0, NaN equals NaN."""
    if type(a) is not type(b):
        return False
    if isinstance(a, float):
        return (a != a and b != b) or struct.pack(">d", a) == struct.pack(">d", b)
    if isinstance(a, list):
        return len(a) == len(b) and all(same(a[i], b[i]) for i in range(len(a)))
    if isinstance(a, dict):
        if len(a) != len(b):
            return False
        for key, value in a.items():
            matches = [k for k in b if same(k, key)]
            if len(matches) != 1 or not same(value, b[matches[0]]):
                return False
        return True
    if isinstance(a, cbor.Tag):
        return a.tag == b.tag and same(a.value, b.value)
    return a == b


def decode_outcome(data):
    """'ok' with the value, or 'error' for CBORDecodeError; any other exception propagates."""
    try:
        return "ok", cbor.loads(data)
    except cbor.CBORDecodeError:
        return "error", None


def raises(exc_type, fn, *args):
    try:
        fn(*args)
    except exc_type:
        return True
    return False


# ---- checks that need code rather than data; each returns None or a failure detail

def api_tag_and_simple():
    if cbor.Tag(5, [1]) != cbor.Tag(5, [1]) or cbor.Tag(5, 1) == cbor.Tag(6, 1) or cbor.Tag(5, 1) == 1:
        return "Tag equality"
    if hash(cbor.Tag(5, "a")) != hash(cbor.Tag(5, "a")) or cbor.Simple(7) != cbor.Simple(7):
        return "Tag hash / Simple equality"
    for bad in (20, 23, 24, 31, 256, -1, True):
        if not raises(ValueError, cbor.Simple, bad):
            return f"Simple({repr(bad)}) accepted"
    if not raises(ValueError, cbor.Tag, 1 << 64, 0) or not raises(ValueError, cbor.Tag, -1, 0):
        return "tag number out of range accepted"
    if cbor.loads(cbor.dumps({cbor.Tag(7, "k"): 1})) != {cbor.Tag(7, "k"): 1}:
        return "tag as map key"
    if bool(cbor.UNDEFINED) or cbor.loads(b"\xf7") is not cbor.UNDEFINED:
        return "UNDEFINED"
    return None


def api_sequences_and_buffers():
    want = unhex("8301430102034161")
    for value in ([1, b"\x01\x02\x03", b"a"], (1, bytearray(b"\x01\x02\x03"), memoryview(b"a"))):
        if cbor.dumps(value) != want:
            return f"encoding of {repr(value)}"
    for data in (want, bytearray(want), memoryview(want)):
        if not same(cbor.loads(data), [1, b"\x01\x02\x03", b"a"]):
            return f"decoding from {type(data).__name__}"
    return None


def api_encode_errors():
    class Point:
        def __init__(self, x, y):
            self.x, self.y = x, y

    def as_tag(obj):
        return cbor.Tag(40000, [obj.x, obj.y])

    if cbor.dumps([Point(1, 2)], default=as_tag) != unhex("81d99c40820102"):
        return "default= hook"
    if not raises(cbor.CBOREncodeError, cbor.dumps, Point(1, 2)):
        return "unsupported type accepted"
    loop = [1]
    loop.append(loop)
    if not raises(cbor.CBOREncodeError, cbor.dumps, loop):
        return "reference cycle not caught"
    if not raises(cbor.CBOREncodeError, cbor.dumps, Point(1, 2), lambda obj: obj):
        return "default= returning its input not caught"
    deep = 0
    for _ in range(cbor.MAX_DEPTH):
        deep = [deep]
    if cbor.loads(cbor.dumps(deep)) != deep or not raises(cbor.CBOREncodeError, cbor.dumps, [deep]):
        return "depth limit on encode is not exactly MAX_DEPTH"
    return None


def api_loads_prefix():
    data = unhex("0a8201026161")
    got = []
    offset = 0
    while offset < len(data):
        value, offset = cbor.loads_prefix(data, offset)
        got.append(value)
    if not same(got, [10, [1, 2], "a"]) or offset != len(data):
        return f"items {repr(got)} end {offset}"
    if not raises(cbor.CBORDecodeError, cbor.loads_prefix, data, 5):
        return "truncated text at offset 5 accepted"
    if not raises(cbor.CBORDecodeError, cbor.loads, data):
        return "loads accepted trailing bytes"
    return None


def api_every_half_float():
    """Each of the 65536 half-precision encodings decodes to a value whose shortest form is itself."""
    for bits in range(0x10000):
        if (bits & 0x7C00) == 0x7C00 and bits & 0x3FF:
            continue  # NaN payloads are not kept: every NaN encodes as f97e00
        data = struct.pack(">BH", 0xF9, bits)
        if cbor.dumps(cbor.loads(data)) != data:
            return f"{data.hex()} re-encodes as {cbor.dumps(cbor.loads(data)).hex()}"
    return None


API = {
    "api_tag_and_simple": api_tag_and_simple,
    "api_sequences_and_buffers": api_sequences_and_buffers,
    "api_encode_errors": api_encode_errors,
    "api_loads_prefix": api_loads_prefix,
    "api_every_half_float": api_every_half_float,
}


def mutations(seeds, count, seed):
    """Deterministic mutants of valid encodings (same on both interpreters: a plain LCG, no random)."""
    state = seed
    for i in range(count):
        data = seeds[i % len(seeds)]
        for _ in range(1 + i % 3):
            state = (state * 1103515245 + 12345) & 0x7FFFFFFF
            where = state % (len(data) + 1)
            action = (state >> 16) % 4
            byte = bytes([(state >> 8) & 0xFF])
            if action == 0:  # replace a byte
                data = data[:where] + byte + data[where + 1:]
            elif action == 1:  # insert a byte
                data = data[:where] + byte + data[where:]
            elif action == 2:  # delete a byte
                data = data[:where] + data[where + 1:]
            else:  # truncate
                data = data[:where]
        yield data


def heap_used_by(fn):
    """Bytes allocated while fn runs: gc.mem_free on MicroPython, tracemalloc's peak on CPython."""
    if hasattr(gc, "mem_free"):
        gc.collect()
        before = gc.mem_free()
        fn()
        return before - gc.mem_free()
    import tracemalloc

    tracemalloc.start()
    try:
        fn()
        return tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


def run_case(case):
    """None if the case passes, else a one-line failure detail."""
    kind = case[0]
    if kind == "decode":
        outcome, value = decode_outcome(unhex(case[2]))
        expected = build(case[3])
        return None if outcome == "ok" and same(value, expected) else f"got {outcome} {repr(value)}"
    if kind == "encode":
        got = cbor.dumps(build(case[2])).hex()
        return None if got == case[3] else "got " + got
    if kind == "roundtrip":
        value = build(case[2])
        back = cbor.loads(cbor.dumps(value))
        return None if same(back, value) else f"got {repr(back)}"
    if kind == "reject":
        outcome, value = decode_outcome(unhex(case[2]))
        return None if outcome == "error" else f"accepted as {repr(value)}"
    if kind == "utf8":  # [raw hex, valid?] pairs, validity as CPython's strict decoder sees it
        for raw_hex, valid in case[2]:
            raw = unhex(raw_hex)
            outcome, value = decode_outcome(bytes([0x78, len(raw)]) + raw)
            if (outcome == "ok") != valid or (valid and value.encode("utf-8") != raw):
                return f"{raw_hex}: expected {'valid' if valid else 'invalid'}, got {outcome}"
        return None
    if kind == "fuzz":  # never an exception other than CBORDecodeError
        for data in mutations([unhex(h) for h in case[2]], case[3], case[4]):
            try:
                decode_outcome(data)
            except Exception as exc:  # noqa: BLE001 - reporting any escape is the point
                return f"{data.hex()} raised {repr(exc)}"
        return None
    if kind == "memory":  # [hex, byte limit on MicroPython, limit on CPython (bigger objects, frames)]
        data = unhex(case[2])
        limit = case[3] if hasattr(gc, "mem_free") else case[4]
        used = heap_used_by(lambda: decode_outcome(data))
        return None if used <= limit else f"allocated {used} bytes (limit {limit})"
    if kind == "api":
        return API[case[1]]()
    return "unknown case kind " + kind


def main(path):
    count = 0
    with open(path) as job:
        for line in job:
            if not line.strip():
                continue
            case = json.loads(line)
            try:
                detail = run_case(case)
            except Exception as exc:  # noqa: BLE001 - one broken case must not hide the others
                detail = f"raised {repr(exc)}"
            print(("PASS " + case[1]) if detail is None else f"FAIL {case[1]} {detail}")
            count += 1
            gc.collect()
    print(f"DONE {count}")


if __name__ == "__main__":
    main(sys.argv[1])
