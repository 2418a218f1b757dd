"""The protocol is a contract: the CDDL's fingerprint is the one on the wire, the vectors are reproduced
byte for byte by the host and by MicroPython, and real frames from the board validate against the CDDL."""

from __future__ import annotations

import json
import re
import time
from pathlib import Path

import pycddl
import pytest
from mpyrun import run_json

from ionm.board import link as ln
from ionm.protocol import cbor, framing, messages as m

PROTO = Path(__file__).resolve().parents[1] / "protocol"
CDDL = (PROTO / "messages.cddl").read_text()
VECTORS = json.loads((PROTO / "vectors" / "messages.json").read_text())


def from_json(obj):
    if isinstance(obj, dict) and set(obj) == {"$bytes"}:
        return bytes.fromhex(obj["$bytes"])
    if isinstance(obj, list):
        return [from_json(x) for x in obj]
    if isinstance(obj, dict):
        return {k: from_json(v) for k, v in obj.items()}
    return obj


@pytest.fixture(scope="module")
def schema() -> pycddl.Schema:
    return pycddl.Schema(CDDL)


def test_schema_constant_is_the_fingerprint_of_the_cddl():
    assert m.SCHEMA == m.schema_fingerprint(CDDL) == VECTORS["schema"]
    assert "`0x%08X`" % m.SCHEMA in (PROTO / "SPEC.md").read_text()  # the prose quotes the live value


def test_fingerprint_ignores_comments_and_layout_but_not_rules():
    assert m.schema_fingerprint(CDDL.replace("\n", "\n  ; a comment\n")) == m.SCHEMA
    assert m.schema_fingerprint(CDDL.replace("rid = 1..65535", "rid = 1..65534")) != m.SCHEMA


def test_host_reproduces_every_vector_and_each_validates(schema):
    for v in VECTORS["vectors"]:
        msg = from_json(v["message"])
        assert cbor.dumps(msg).hex() == v["cbor"], v["name"]
        assert framing.encode(bytes.fromhex(v["cbor"]), v["seq"], m.SCHEMA).hex() == v["frame"], v["name"]
        schema.validate_cbor(bytes.fromhex(v["cbor"]))
        dec = framing.Decoder(m.SCHEMA)
        ((seq, payload),) = dec.feed(bytes.fromhex(v["frame"]))
        assert seq == v["seq"] and cbor.loads(payload) == msg


def test_micropython_reproduces_every_vector():
    code = """
import binascii, cbor, framing, messages as m
def conv(o):
    if isinstance(o, dict) and len(o) == 1 and "$bytes" in o:
        return binascii.unhexlify(o["$bytes"])
    if isinstance(o, list):
        return [conv(x) for x in o]
    if isinstance(o, dict):
        return {k: conv(v) for k, v in o.items()}
    return o
for v in _IN:
    p = cbor.dumps(conv(v["message"]))
    f = framing.encode(p, v["seq"], m.SCHEMA)
    emit([v["name"], binascii.hexlify(p).decode(), binascii.hexlify(f).decode()])
"""
    out = run_json(code, VECTORS["vectors"])
    for v, (name, payload, frame) in zip(VECTORS["vectors"], out, strict=True):
        assert (name, payload, frame) == (v["name"], v["cbor"], v["frame"])


def test_every_error_code_is_in_the_spec():
    spec = (PROTO / "SPEC.md").read_text()
    for code, name in m.ERROR_NAMES.items():
        cell = "0x%02X" % code if code >= 0x20 else str(code)
        assert re.search(r"\| %s \| %s \|" % (re.escape(cell), re.escape(name)), spec), (code, name)


def _capturing_link(device: str) -> tuple[ln.BoardLink, list[bytes]]:
    """A link to the board that keeps every payload it receives, as received (for the CDDL)."""
    payloads: list[bytes] = []
    link = ln.BoardLink(ln.open_port(device), heartbeat_s=0.025)
    real_dispatch = link._dispatch

    def capture(payload: bytes) -> None:
        payloads.append(payload)
        real_dispatch(payload)

    link._dispatch = capture  # type: ignore[method-assign]
    return link, payloads


def test_real_board_frames_validate_against_the_cddl(virtual_board, schema):
    link, payloads = _capturing_link(virtual_board.device)
    try:
        ln.connect(link, timeout=10)
        link.request(m.GET_INFO, {})
        link.request(m.CONFIGURE, {"rate_hz": 2000, "channels": [0, 5], "samples_per_frame": 10})
        link.request(m.START, {})
        link.request(m.STIM_PROGRAM, {"programs": [{"kind": "pulse", "output": 0, "current_ua": 5000,
                                                    "width_us": 100, "rate_mhz": 9700}]})
        link.request(m.STIM_START, {})
        with pytest.raises(ln.BoardError):
            link.request(m.STIM_PROGRAM, {"programs": [{"kind": "pulse", "output": 9}]})
        with pytest.raises(ln.BoardError):
            link.request(99, {})
        time.sleep(0.6)
        link.request(m.STOP, {})
    finally:
        link.close()
    kinds = set()
    for p in payloads:
        schema.validate_cbor(p)  # raises with the reason on any mismatch
        msg = cbor.loads(p)
        kinds.add(msg[0] if msg[0] != m.EVENT else msg[2]["kind"])
    assert {m.WELCOME, m.INFO, m.ACK, m.ERROR, m.DATA, "stim"} <= kinds


def _vector(name: str) -> dict:
    return next(v for v in VECTORS["vectors"] if v["name"] == name)


def test_crc_byte_order_vector_on_both_sides():
    """SPEC 2: HCHK and the CRC trailer are big-endian, like every header field (the vector's CRC has four
    distinct bytes, so a little-endian trailer cannot pass by accident)."""
    v = _vector("crc-byte-order")
    frame = bytes.fromhex(v["frame"])
    assert frame[-4:] == v["crc32"].to_bytes(4, "big") != v["crc32"].to_bytes(4, "little")
    assert frame[8:10] == v["hchk"].to_bytes(2, "big") and frame[4:6] == b"\x12\x34"
    assert framing.crc32(frame[2:-4]) == v["crc32"]
    code = """
import binascii, framing
for v in _IN:
    f = binascii.unhexlify(v["frame"])
    emit([framing.crc32(f[2:len(f) - 4]), framing.crc32(f[2:8]) & 0xFFFF, binascii.hexlify(f[len(f) - 4:]).decode()])
"""
    (got,) = run_json(code, [v])
    assert got == [v["crc32"], v["hchk"], v["crc32"].to_bytes(4, "big").hex()]


def test_the_board_accepts_the_multi_program_vector_and_encodes_the_error_vectors_itself():
    """The every-kind stimulation set passes the firmware's supervisor whole; the firmware's allocation-free
    error encoder (link.Link.error) produces each error vector's frame byte for byte."""
    progs = from_json(_vector("stim-program-every-kind")["message"])[2]["programs"]
    errors = [v for v in VECTORS["vectors"] if from_json(v["message"])[0] == m.ERROR]
    assert len(errors) >= 3
    code = """
import binascii, boardcfg, link
from safety import Supervisor
emit(len(Supervisor(boardcfg.load()).check_programs(_IN["programs"])))
class Bsp:
    def host_write(self, buf, off, n):
        emit(binascii.hexlify(buf[off:off + n]).decode())
ln = link.Link(Bsp(), 64)
for v in _IN["errors"]:
    ln.tx_seq = v["seq"]
    body = v["message"][2]
    ln.error(v["message"][1], body["code"], body["detail"])
"""
    out = run_json(code, {"programs": progs, "errors": errors})
    assert out[0] == len(progs)
    assert out[1:] == [v["frame"] for v in errors]


def test_data_rice_vectors_decode_on_both_sides_and_the_board_encodes_them():
    """SPEC 5.4.1: each data-rice vector's block decodes to its counts with the codec on CPython and on
    MicroPython, and the board's viper encoder produces the compressed block byte for byte (the raw one it
    leaves to the raw fallback)."""
    from ionm.protocol import rice

    vs = [v for v in VECTORS["vectors"] if v["name"].startswith("data-rice")]
    assert {v["name"] for v in vs} == {"data-rice", "data-rice-raw"}
    for v in vs:
        block = from_json(v["message"])[4]
        assert rice.decode(block, v["channels"]) == v["counts"]
        assert block[0] == (rice.MODE_RICE if v["name"] == "data-rice" else rice.MODE_RAW)
    code = """
import array, binascii, rice, rice_encoder
for v in _IN:
    block = binascii.unhexlify(v["message"][4]["$bytes"])
    nch = v["channels"]
    pk = bytearray()
    for x in v["counts"]:
        x &= 0xFFFFFF
        pk.append(x >> 16)
        pk.append((x >> 8) & 0xFF)
        pk.append(x & 0xFF)
    out = bytearray(len(pk) + 1)
    n = rice_encoder.encode(pk, len(v["counts"]) // nch, nch, out, 0, len(pk) + 1, array.array("i", [0] * nch))
    emit([rice.decode(block, nch), binascii.hexlify(out[:n]).decode()])
"""
    out = run_json(code, vs)
    for v, (counts, encoded) in zip(vs, out, strict=True):
        assert counts == v["counts"]
        block = from_json(v["message"])[4]
        assert encoded == (block.hex() if block[0] == rice.MODE_RICE else "")


def test_real_board_rice_frames_validate_against_the_cddl(virtual_board, schema):
    link, payloads = _capturing_link(virtual_board.device)
    try:
        ln.connect(link, timeout=10)
        link.request(m.CONFIGURE, {"rate_hz": 2000, "channels": [0, 5, 9], "samples_per_frame": 16,
                                   "encoding": "rice"})
        link.request(m.START, {})
        time.sleep(0.4)
        link.request(m.STOP, {})
    finally:
        link.close()
    for p in payloads:
        schema.validate_cbor(p)
    assert any(cbor.loads(p)[0] == m.DATA_RICE for p in payloads)
    assert link.stats.blocks_undecodable == 0 and link.stats.samples_received > 0
