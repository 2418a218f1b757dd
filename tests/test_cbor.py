"""protocol/cbor.py on CPython and on the MicroPython unix port.

Every data-driven case (RFC 8949 Appendix A, the message corpus, malformed input, UTF-8 edge cases,
mutation fuzzing, heap use) runs on both interpreters through tests/mpy_cbor_suite.py; the host adds
byte-for-byte comparison with cbor2 and Hypothesis properties.

cbor2 ordering finding (cbor2 6.2.1): dumps(..., canonical=True) sorts map keys LENGTH-FIRST (RFC 7049 §3.9,
kept as RFC 8949 §4.2.3), e.g. -1 (0x20) before 100 (0x1864). protocol/cbor.py follows RFC 8949 §4.2.1
(bytewise lexicographic). The two agree when, in bytewise order, the encoded key lengths never decrease;
the cbor2 comparisons below only use such maps, and orders_agree() checks that they do.
"""

from __future__ import annotations

import importlib.util
import json
import math
import random
import re
import struct
import sys
import time
from pathlib import Path

import cbor2
import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

from ionm.board import mpy

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "protocol"))
import cbor  # noqa: E402  (protocol/ is not a package: the board imports it as a top-level module)

SUITE_PATH = REPO / "tests" / "mpy_cbor_suite.py"
APPENDIX_A = REPO / "tests" / "data" / "conformance" / "appendix_a.json"


def _load_suite():
    spec = importlib.util.spec_from_file_location("mpy_cbor_suite", SUITE_PATH)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


suite = _load_suite()


# ---- values in the typed form the suite rebuilds on either interpreter

def typed(obj):
    if obj is None:
        return ["null"]
    if isinstance(obj, bool):
        return ["bool", obj]
    if isinstance(obj, int):
        return ["int", str(obj)]
    if isinstance(obj, float):
        return ["float", struct.pack(">d", obj).hex()]
    if isinstance(obj, bytes):
        return ["bytes", obj.hex()]
    if isinstance(obj, str):
        return ["text", obj.encode("utf-8").hex()]
    if isinstance(obj, tuple):
        return ["tuple", [typed(item) for item in obj]]
    if isinstance(obj, list):
        return ["list", [typed(item) for item in obj]]
    if isinstance(obj, dict):
        return ["map", [[typed(k), typed(v)] for k, v in obj.items()]]
    if isinstance(obj, cbor.Tag):
        return ["tag", obj.tag, typed(obj.value)]
    if isinstance(obj, cbor.Simple):
        return ["simple", obj.value]
    if obj is cbor.UNDEFINED:
        return ["undefined"]
    raise TypeError(type(obj))


# ---- RFC 8949 Appendix A (cbor/test-vectors appendix_a.json)

class Diagnostic:
    """Parser for the diagnostic notation used in appendix_a.json's "diagnostic" entries."""

    NUMBER = re.compile(r"-?\d+(\.\d+)?([eE][+-]?\d+)?")
    WORDS = (("-Infinity", -math.inf), ("Infinity", math.inf), ("NaN", math.nan),
             ("undefined", cbor.UNDEFINED), ("true", True), ("false", False), ("null", None))

    def __init__(self, text):
        self.text, self.pos = text, 0

    def parse(self):
        value = self.value()
        assert self.pos == len(self.text), self.text
        return value

    def expect(self, token):
        assert self.text.startswith(token, self.pos), (self.text, self.pos, token)
        self.pos += len(token)

    def sequence(self, close, pairs=False):
        items = []
        while not self.text.startswith(close, self.pos):
            if items:
                self.expect(", ")
            item = self.value()
            if pairs:
                self.expect(": ")
                item = (item, self.value())
            items.append(item)
        self.expect(close)
        return items

    def value(self):
        text, pos = self.text, self.pos
        if text.startswith("h'", pos):
            end = text.index("'", pos + 2)
            self.pos = end + 1
            return bytes.fromhex(text[pos + 2:end])
        if text[pos] == '"':
            value, self.pos = json.JSONDecoder().raw_decode(text, pos)
            return value
        if text.startswith("(_ ", pos):  # indefinite-length string: the chunks concatenated
            self.pos += 3
            chunks = self.sequence(")")
            return chunks[0][:0].join(chunks)
        if text[pos] == "[":
            self.pos += 1
            return self.sequence("]")
        if text[pos] == "{":
            self.pos += 1
            return dict(self.sequence("}", pairs=True))
        if text.startswith("simple(", pos):
            self.pos += len("simple(")
            number = self.value()
            self.expect(")")
            return cbor.Simple(number)
        for word, value in self.WORDS:
            if text.startswith(word, pos):
                self.pos += len(word)
                return value
        number = self.NUMBER.match(text, pos).group()
        self.pos += len(number)
        if text.startswith("(", self.pos):  # tag number(content)
            self.pos += 1
            content = self.value()
            self.expect(")")
            return cbor.Tag(int(number), content)
        return float(number) if "." in number or "e" in number.lower() else int(number)


def appendix_entries():
    return json.loads(APPENDIX_A.read_text())


def is_rfc8949_bad_simple(entry):
    """RFC 7049 allowed simple(n<32) in two bytes (0xf8 n); RFC 8949 §3.3 makes it not well-formed."""
    match = re.fullmatch(r"simple\((\d+)\)", entry.get("diagnostic", ""))
    return bool(match) and int(match.group(1)) < 32 and entry["hex"].startswith("f8")


def appendix_cases():
    cases = []
    for entry in appendix_entries():
        hexed = entry["hex"]
        if is_rfc8949_bad_simple(entry):
            cases.append(["reject", "appendix_a_rejects_" + hexed, hexed])
            continue
        value = entry["decoded"] if "decoded" in entry else Diagnostic(entry["diagnostic"]).parse()
        cases.append(["decode", "appendix_a_decodes_" + hexed, hexed, typed(value)])
        if entry["roundtrip"]:
            cases.append(["encode", "appendix_a_encodes_" + hexed, typed(value), hexed])
    return cases


# ---- a message corpus compared byte-for-byte with cbor2

CORPUS = [
    0, 23, 24, 255, 256, 65535, 65536, 2**32 - 1, 2**32, 2**64 - 1, 2**64, 2**100,
    -1, -24, -25, -256, -257, -65536, -65537, -2**32, -2**32 - 1, -2**64, -2**64 - 1, -2**100,
    0.0, -0.0, 1.0, 0.5, -2.25, 65504.0, 65505.0, 2.0**-14, 2.0**-24, 2.0**-25, 2.0**-126, 2.0**-149,
    2.0**-150,
    3.4028234663852886e38, 3.4028235677973366e38, 1.1, 1e300, 5e-324, math.inf, -math.inf, math.nan,
    b"", bytes(range(256)), "", "a" * 23, "a" * 24, "ü水𐅑", "x" * 300, True, False, None,
    [], list(range(30)), [[[]]], [1, [2.5, [b"3", ["four"]]]],
    {"type": "samples", "seq": 12345, "t0_us": 2**40, "channels": [0, 1, 2, 3], "data": bytes(range(48)),
     "vref_v": 4.5, "gain": 24, "lead_off": False, "note": None, "rate_hz": 16000.0, "offset_uv": -0.1},
    {0: "zero", 7: [1.5, -2.25], 23: {}, -1: b"\x00", -24: True, "id": 1.5, b"\x00": None, 1.5: "x"},
    {"a": {"b": {"c": {"d": [1, {"e": 2.5, "f": None}]}}}},
    {"z": 1, "aa": 2, "b": 3, "": 4, "zzzzzzzzzzzzzzzzzzzzzzzzzzzz": 5},
    {b"": 1, b"\x00": 2, b"\xff": 3, b"ab": 4},
    {str(i): i * 1000 for i in range(40)},
    {i: str(i) for i in range(24)},
    [{"stim": {"ma": 2.5, "width_us": 200, "site": "median"}, "mep": [0.001 * i for i in range(20)]}] * 3,
]


def cbor2_value(obj):
    """The same value in cbor2's classes for tags, simple values and undefined."""
    if isinstance(obj, list):
        return [cbor2_value(item) for item in obj]
    if isinstance(obj, dict):
        return {cbor2_value(k): cbor2_value(v) for k, v in obj.items()}
    if isinstance(obj, cbor.Tag):
        return cbor2.CBORTag(obj.tag, cbor2_value(obj.value))
    if isinstance(obj, cbor.Simple):
        return cbor2.CBORSimpleValue(obj.value)
    if obj is cbor.UNDEFINED:
        return cbor2.undefined
    return obj


def orders_agree(obj):
    """True if in every map the bytewise (RFC 8949 §4.2.1) and length-first (§4.2.3) key orders agree."""
    if isinstance(obj, list | tuple):
        return all(orders_agree(item) for item in obj)
    if isinstance(obj, cbor.Tag):
        return orders_agree(obj.value)
    if isinstance(obj, dict):
        keys = [cbor.dumps(key) for key in obj]
        return (sorted(keys) == sorted(keys, key=lambda k: (len(k), k))
                and all(orders_agree(k) and orders_agree(v) for k, v in obj.items()))
    return True


# RFC 8949 §4.2.1 lists these keys, with their encodings, in the required (bytewise) order.
RFC8949_SORTED_KEYS = [(10, "0a"), (100, "1864"), (-1, "20"), ("z", "617a"), ("aa", "626161"),
                       ((100,), "811864"), ((-1,), "8120"), (False, "f4")]


def rfc8949_key_order_map():
    return {key: i for i, (key, _) in enumerate(reversed(RFC8949_SORTED_KEYS))}


def corpus_cases():
    cases = []
    for i, value in enumerate(CORPUS):
        cases.append(["encode", f"corpus_{i}_encodes_as_on_cpython", typed(value), cbor.dumps(value).hex()])
        cases.append(["roundtrip", f"corpus_{i}_roundtrips", typed(value)])
    expected = "a8" + "".join(code + cbor.dumps(len(RFC8949_SORTED_KEYS) - 1 - i).hex()
                              for i, (_, code) in enumerate(RFC8949_SORTED_KEYS))
    cases.append(["encode", "rfc8949_4_2_1_key_order", typed(rfc8949_key_order_map()), expected])
    return cases


# ---- malformed input (each must raise CBORDecodeError) and valid edge cases

MALFORMED = {
    "empty": "",
    "truncated_uint8": "18", "truncated_uint16": "1901", "truncated_uint32": "1a0000",
    "truncated_uint64": "1b" + "00" * 7, "truncated_text": "6261", "truncated_bytes": "4201",
    "truncated_array": "8201", "truncated_map": "a2010203", "truncated_map_value": "a101",
    "truncated_tag": "c1", "truncated_tag_number": "d901", "truncated_half": "f900",
    "truncated_single": "fa000000", "truncated_double": "fb00", "truncated_chunk": "5f4101",
    "indefinite_bytes_without_break": "5f", "indefinite_array_without_break": "9f01",
    "indefinite_map_without_break": "bf0102",
    "bytes_len_2_32_minus_1": "5affffffff" + "00" * 10, "bytes_len_2_63": "5b8000000000000000" + "00" * 4,
    "text_len_2_63_minus_1": "7b7fffffffffffffff00", "text_len_2_64_minus_1": "7bffffffffffffffff00",
    "array_len_2_32": "9b000000010000000000", "array_len_2_63": "9b8000000000000000" + "00" * 8,
    "map_len_2_32_minus_1": "baffffffff0102", "map_len_2_63": "bb8000000000000000" + "0102" * 4,
    "map_len_more_than_half_input": "a30102030405",
    "nesting_65_arrays": "81" * 65 + "00", "nesting_indefinite_arrays": "9f" * 100,
    "nesting_maps": "a101" * 70 + "00", "nesting_tags": "d820" * 70 + "00", "nesting_10000": "81" * 10000,
    "simple_f800": "f800", "simple_f818": "f818", "simple_f81f": "f81f",
    "reserved_1c": "1c", "reserved_1d": "1d", "reserved_1e": "1e", "reserved_3c": "3c", "reserved_5d": "5d",
    "reserved_7e": "7e", "reserved_9c": "9c", "reserved_bd": "bd", "reserved_dc": "dc", "reserved_fc": "fc",
    "reserved_fd": "fd", "reserved_fe": "fe",
    "indefinite_uint": "1f", "indefinite_nint": "3f", "indefinite_tag": "df",
    "break_alone": "ff", "break_in_array": "81ff", "break_in_definite_array": "8201ff",
    "break_after_key": "bf01ff", "break_as_map_key": "a1ff01", "break_in_tag": "c1ff",
    "int_chunk": "5f01ff", "text_chunk_in_bytes": "5f6161ff", "bytes_chunk_in_text": "7f4161ff",
    "nested_indefinite_bytes": "5f5fffff", "nested_indefinite_text": "7f7fffff",
    "trailing_byte": "0000", "trailing_after_array": "810102", "trailing_null": "f6f6",
    "utf8_ff": "61ff", "utf8_bad_continuation": "62c328", "utf8_surrogate": "63eda080",
    "utf8_overlong_nul": "62c080", "utf8_above_10ffff": "64f4908080", "utf8_truncated": "62e6b0",
    "utf8_split_across_chunks": "7f61c361bcff",
    "bignum_of_int": "c201", "bignum_of_text": "c36161",
    "array_as_map_key": "a18001", "map_as_map_key": "a1a001", "tagged_array_as_map_key": "a1c18001",
}

VALID_EDGES = {
    "empty_indefinite_bytes": ("5fff", b""),
    "empty_indefinite_text": ("7fff", ""),
    "indefinite_text_chunks": ("7f6161626263ff", "abc"),
    "indefinite_bytes_empty_chunk": ("5f40410aff", b"\x0a"),
    "bignum_empty": ("c240", 0),
    "negative_bignum_empty": ("c340", -1),
    "bignum_small": ("c24101", 1),
    "bignum_in_array": ("82c24901000000000000000001", [2**64, 1]),
    "non_preferred_uint": ("1b0000000000000001", 1),
    "non_preferred_length": ("7800", ""),
    "simple_32": ("f820", cbor.Simple(32)),
    "simple_0": ("e0", cbor.Simple(0)),
    "simple_19": ("f3", cbor.Simple(19)),
    "single_subnormal": ("fa00000001", 2.0**-149),
    "half_subnormal": ("f90200", 2.0**-15),
    "half_negative_subnormal": ("f98001", -(2.0**-24)),
    "half_nan_payload": ("f97c01", math.nan),
    "single_negative_zero": ("fa80000000", -0.0),
    "double_max": ("fb7fefffffffffffff", 1.7976931348623157e308),
    "nesting_64_arrays": ("81" * 64 + "00", None),
    "tag_max_number": ("dbffffffffffffffff00", cbor.Tag(2**64 - 1, 0)),
    "duplicate_key_last_wins": ("a2010201f5", {1: True}),
    "nan_key": ("a1f97e0001", None),
    "tag_as_map_key": ("a1c1010a", {cbor.Tag(1, 1): 10}),
}


def nested(depth):
    value = 0
    for _ in range(depth):
        value = [value]
    return value


def edge_cases():
    cases = [["reject", "malformed_" + name, hexed] for name, hexed in MALFORMED.items()]
    for name, (hexed, value) in VALID_EDGES.items():
        if name == "nesting_64_arrays":
            value = nested(64)
        if name == "nan_key":
            continue  # NaN != NaN, so a NaN key cannot be compared: checked on the host below
        cases.append(["decode", "valid_" + name, hexed, typed(value)])
    return cases


# ---- UTF-8: validity as CPython's strict decoder (Unicode §3.9 well-formed UTF-8) sees it

UTF8_BOUNDARY_BYTES = [0x00, 0x41, 0x7F, 0x80, 0x8F, 0x90, 0x9F, 0xA0, 0xBF, 0xC0, 0xC1, 0xC2, 0xDF, 0xE0,
                       0xE1, 0xEC, 0xED, 0xEE, 0xEF, 0xF0, 0xF1, 0xF3, 0xF4, 0xF5, 0xF7, 0xF8, 0xFB, 0xFC,
                       0xFE, 0xFF]


def utf8_valid(raw):
    try:
        raw.decode("utf-8")
        return True
    except UnicodeDecodeError:
        return False


def utf8_cases(count=3000, per_case=250, seed=8949):
    rng = random.Random(seed)
    samples = [bytes([a, b]) for a in UTF8_BOUNDARY_BYTES for b in UTF8_BOUNDARY_BYTES if a >= 0xC0]
    while len(samples) < count:
        lead = rng.choice([b for b in UTF8_BOUNDARY_BYTES if b >= 0xC0])
        tail = bytes(rng.choice(UTF8_BOUNDARY_BYTES[3:9]) for _ in range(rng.randint(1, 4)))
        samples.append(b"a" * rng.randint(0, 2) + bytes([lead]) + tail + b"z" * rng.randint(0, 1))
    pairs = [[raw.hex(), utf8_valid(raw)] for raw in samples]
    assert 0.1 < sum(valid for _, valid in pairs) / len(pairs) < 0.9  # both outcomes well represented
    return [["utf8", f"utf8_differential_{i // per_case}", pairs[i:i + per_case]]
            for i in range(0, len(pairs), per_case)]


# ---- mutation fuzzing and heap use, also run on MicroPython

def fuzz_cases():
    short_corpus = [cbor.dumps(v).hex() for v in CORPUS if len(cbor.dumps(v)) < 200]
    seeds = [e["hex"] for e in appendix_entries()] + short_corpus
    return [["fuzz", f"fuzz_mutants_{i}", seeds, 2000, 12345 + i] for i in range(2)]


GIGABYTE_STRING_CLAIM = ("5a40000000" + "00" * 59)  # 64 bytes claiming a 1 GiB byte string
MEMORY_CASES = [
    ["memory", "memory_1gib_string_claim", GIGABYTE_STRING_CLAIM, 1024, 8192],
    ["memory", "memory_2_63_array_claim", "9b8000000000000000" + "00" * 55, 1024, 8192],
    ["memory", "memory_2_32_text_claim", "7b0000000100000000" + "61" * 55, 1024, 8192],
]

API_CASES = [["api", name] for name in suite.API]

CASES = (appendix_cases() + corpus_cases() + edge_cases() + utf8_cases() + fuzz_cases() + MEMORY_CASES
         + API_CASES)
CASE_NAMES = [case[1] for case in CASES]
assert len(set(CASE_NAMES)) == len(CASE_NAMES), "case names must be unique"


@pytest.mark.parametrize("case", CASES, ids=CASE_NAMES)
def test_case_on_cpython(case):
    detail = suite.run_case(case)
    assert detail is None, detail


@pytest.fixture(scope="module")
def micropython_results(tmp_path_factory):
    job = tmp_path_factory.mktemp("cbor") / "cases.jsonl"
    job.write_text("".join(json.dumps(case) + "\n" for case in CASES))
    proc = mpy.run(SUITE_PATH, [str(job)], timeout=600)
    lines = proc.stdout.decode().splitlines()
    assert lines and lines[-1] == f"DONE {len(CASES)}", (
        f"MicroPython suite did not finish (rc {proc.returncode}): {proc.stderr.decode()[-3000:]}")
    results = {}
    for line in lines[:-1]:
        status, name, *detail = line.split(" ", 2)
        results[name] = (status, detail[0] if detail else "")
    return results


@pytest.mark.parametrize("name", CASE_NAMES)
def test_case_on_micropython(micropython_results, name):
    status, detail = micropython_results[name]
    assert status == "PASS", detail


# ---- host-only checks

def test_appendix_a_copy_is_complete():
    entries = appendix_entries()
    assert len(entries) == 82  # as SOURCE.md records for the upstream file
    assert [e["hex"] for e in entries if is_rfc8949_bad_simple(e)] == ["f818"]


@pytest.mark.parametrize("index", range(len(CORPUS)))
def test_corpus_matches_cbor2_canonical(index):
    value = CORPUS[index]
    assert orders_agree(value), "corpus maps must sort the same bytewise and length-first"
    encoded = cbor.dumps(value)
    assert encoded == cbor2.dumps(value, canonical=True)
    assert suite.same(cbor2.loads(encoded), value)


def test_cbor2_canonical_is_length_first_where_rfc8949_is_bytewise():
    """Documents why the cbor2 comparisons avoid maps with mixed key lengths (see module docstring)."""
    mapping = rfc8949_key_order_map()
    ours = cbor.dumps(mapping)
    pairs = [(cbor.dumps(k), cbor.dumps(v)) for k, v in mapping.items()]
    length_first = bytes([0xA8]) + b"".join(k + v for k, v in sorted(pairs, key=lambda p: (len(p[0]), p[0])))
    assert cbor2.dumps(mapping, canonical=True) == length_first != ours
    assert ours == bytes([0xA8]) + b"".join(k + v for k, v in sorted(pairs))


def test_nan_map_key_decodes():
    [(key, value)] = cbor.loads(bytes.fromhex(VALID_EDGES["nan_key"][0])).items()
    assert math.isnan(key) and value == 1


def test_decode_error_is_value_error_and_names_offset():
    with pytest.raises(ValueError, match="at offset 5"):
        cbor.loads(bytes.fromhex(GIGABYTE_STRING_CLAIM))
    assert issubclass(cbor.CBORDecodeError, ValueError) and issubclass(cbor.CBOREncodeError, ValueError)


def test_loads_prefix_rejects_offset_outside_input():
    with pytest.raises(ValueError):
        cbor.loads_prefix(b"\x00", 2)
    assert cbor.loads_prefix(b"\x00\x01", 1) == (1, 2)


def test_every_half_float_decodes_as_struct_does():
    for bits in range(0x10000):
        expected = struct.unpack(">e", struct.pack(">H", bits))[0]
        assert suite.same(cbor.loads(struct.pack(">BH", 0xF9, bits)), expected), hex(bits)


def test_lone_surrogate_is_an_encode_error():
    with pytest.raises(cbor.CBOREncodeError):
        cbor.dumps("\ud800")


# ---- Hypothesis

HASHABLE = st.one_of(st.none(), st.booleans(), st.integers(-(2**70), 2**70), st.floats(allow_nan=False),
                     st.text(max_size=20), st.binary(max_size=20))
SCALARS = st.one_of(HASHABLE, st.floats(), st.just(cbor.UNDEFINED),
                    st.builds(cbor.Simple, st.integers(0, 19) | st.integers(32, 255)))
TAG_NUMBERS = st.integers(0, 2**64 - 1).filter(lambda n: n not in (2, 3))  # 2/3 decode to int


def values(keys):
    return st.recursive(SCALARS, lambda children: st.one_of(
        st.lists(children, max_size=6), st.dictionaries(keys, children, max_size=6),
        st.builds(cbor.Tag, TAG_NUMBERS, children)), max_leaves=30)


VALUES = values(HASHABLE)
# Keys of one byte (ints -24..23) or text: bytewise and length-first orders always agree on these.
CBOR2_COMPARABLE = values(st.integers(-24, 23) | st.text(max_size=8))


def reinserted(obj):
    """The same value with every map rebuilt in reverse insertion order."""
    if isinstance(obj, list):
        return [reinserted(item) for item in obj]
    if isinstance(obj, dict):
        return {k: reinserted(v) for k, v in reversed(list(obj.items()))}
    if isinstance(obj, cbor.Tag):
        return cbor.Tag(obj.tag, reinserted(obj.value))
    return obj


@given(VALUES)
def test_roundtrip(value):
    encoded = cbor.dumps(value)
    assert suite.same(cbor.loads(encoded), value)
    assert cbor.dumps(reinserted(value)) == encoded


@given(CBOR2_COMPARABLE)
def test_matches_cbor2(value):
    assert orders_agree(value)
    encoded = cbor.dumps(value)
    assert encoded == cbor2.dumps(cbor2_value(value), canonical=True)


@settings(max_examples=500)
@given(st.binary(max_size=300))
def test_arbitrary_bytes_only_raise_decode_error(data):
    suite.decode_outcome(data)


MUTATION = st.tuples(st.sampled_from(["replace", "insert", "delete", "truncate"]), st.integers(0, 10**6),
                     st.integers(0, 255))


@settings(max_examples=300, suppress_health_check=[HealthCheck.too_slow])
@given(VALUES, st.lists(MUTATION, min_size=1, max_size=4))
def test_mutated_encodings_fail_fast_and_cleanly(value, mutations):
    data = bytearray(cbor.dumps(value))
    for action, where, byte in mutations:
        where %= len(data) + 1
        if action == "replace" and where < len(data):
            data[where] = byte
        elif action == "insert":
            data.insert(where, byte)
        elif action == "delete" and where < len(data):
            del data[where]
        else:
            del data[where:]
    started = time.perf_counter()
    suite.decode_outcome(bytes(data))
    assert time.perf_counter() - started < 0.5  # linear in the input: well under a millisecond here
