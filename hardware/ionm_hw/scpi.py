"""SCPI over a raw TCP socket for the simulated generator (the LAN-instrument convention of port 5025).

A program message ends at a newline; its units are separated by ';' and may hold quoted strings and
IEEE 488.2 definite-length blocks (#<n><len><bytes>, whose bytes may contain newlines). Queries in one
message produce one response line, their answers joined by ';'. Headers follow SCPI: short or long
mnemonic forms, any case, optional nodes ([SOURce1:]...), channel suffix 1 allowed where a real
two-channel instrument takes one, and a unit after ';' resolves first relative to the previous unit's
path (SOUR:FREQ 1;VOLT 2 sets SOUR:VOLT), then from the root (lenient, as many instruments are).

Errors never end a connection: they go to the SCPI error queue (SYST:ERR?, standard codes). A bad
unit is skipped and the message goes on (so a query after it still answers), except where the lexer
loses its place (unterminated string, broken block, stray separator): the rest of that message is lost.
The error queue and settings are instrument-wide, shared by every connection, as on a real instrument.

Run `python -m ionm_hw.scpi --port 5025` to serve a free-running generator by hand.
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import re
import socket
import struct
import threading
from collections import deque
from collections.abc import Callable, Iterator

from ionm_hw.generator import GeneratorError, Settings, SignalGenerator

MAX_MESSAGE_BYTES = 2 * 1024 * 1024  # a 65536-point ASCII arb is ~0.7 MB
ERROR_QUEUE_LEN = 20
MAX_CLIENTS = 8
POLL_S = 0.1  # how often blocked socket calls look at the stop flag
DAC_FULL_SCALE = 32767  # DATA:ARB:DAC codes -32767..32767 map to -1..1

ERRORS = {
    0: "No error",
    -101: "Invalid character",
    -102: "Syntax error",
    -103: "Invalid separator",
    -104: "Data type error",
    -108: "Parameter not allowed",
    -109: "Missing parameter",
    -113: "Undefined header",
    -114: "Header suffix out of range",
    -121: "Invalid character in number",
    -131: "Invalid suffix",
    -151: "Invalid string data",
    -161: "Invalid block data",
    -211: "Trigger ignored",
    -221: "Settings conflict",
    -222: "Data out of range",
    -223: "Too much data",
    -224: "Illegal parameter value",
    -225: "Out of memory",
    -256: "File name not found",
    -300: "Device-specific error",
    -350: "Queue overflow",
    -363: "Input buffer overrun",
}

# Unit suffixes per quantity (SCPI: M is milli except in MHZ/MOHM, which are mega).
UNITS: dict[str, dict[str, float]] = {
    "HZ": {"HZ": 1.0, "KHZ": 1e3, "MHZ": 1e6, "MAHZ": 1e6, "GHZ": 1e9},
    "VPP": {"VPP": 1.0, "MVPP": 1e-3, "UVPP": 1e-6, "V": 1.0, "MV": 1e-3, "UV": 1e-6},
    "V": {"V": 1.0, "MV": 1e-3, "UV": 1e-6},
    "S": {"S": 1.0, "MS": 1e-3, "US": 1e-6, "NS": 1e-9, "KS": 1e3},
    "DEG": {"DEG": 1.0},
    "PCT": {"PCT": 1.0},
    "OHM": {"OHM": 1.0, "KOHM": 1e3, "MOHM": 1e6},
    "": {},
}
_NUMBER = re.compile(r"([+-]?(?:\d+(?:\.\d*)?|\.\d+)(?:[eE][+-]?\d+)?)\s*([A-Za-z%]*)")
_NODE = re.compile(r"([A-Za-z]+)(\d*)")
_PATTERN_NODE = re.compile(r"\[:?([A-Za-z]+)(#?):?\]|:?([A-Za-z]+)(#?)")
_SPECIAL = re.compile(rb"[\n\"'#]")


class ScpiError(Exception):
    def __init__(self, code: int, detail: str = "") -> None:
        super().__init__(f"{code}: {detail}")
        self.code = code
        self.detail = detail


# ---- framing: bytes -> program messages ---------------------------------------------------------
def _block_end(buf: bytearray | bytes, i: int) -> int | None:
    """Index just after the definite-length block whose '#' is at i; -1 if none starts there; None if
    the header is not complete yet."""
    if i + 1 >= len(buf):
        return None
    n = buf[i + 1] - 0x30
    if not 1 <= n <= 9:
        return -1  # '#0' (indefinite, ends with the message) or not a block at all
    digits = bytes(buf[i + 2 : i + 2 + n])
    if len(digits) < n:
        return None
    return i + 2 + n + int(digits) if digits.isdigit() else -1


class MessageFramer:
    """Splits a byte stream into program messages at newlines outside definite-length blocks.

    Over-long messages are dropped up to the next newline and reported as -363 (an int in feed's result).
    """

    def __init__(self, max_message_bytes: int = MAX_MESSAGE_BYTES) -> None:
        self.max_message_bytes = max_message_bytes
        self._buf = bytearray()
        self._pos = 0  # bytes of the current message already scanned
        self._quote = 0  # the quote byte we are inside, 0 if none ('#' in a string starts no block)
        self._discarding = False

    def feed(self, data: bytes) -> list[bytes | int]:
        self._buf += data
        out: list[bytes | int] = []
        while True:
            if self._discarding:
                nl = self._buf.find(b"\n", self._pos)
                if nl < 0:
                    self._buf.clear()
                    self._pos = 0
                    return out
                self._next_message(nl + 1)
                continue
            m = _SPECIAL.search(self._buf, self._pos)
            if m is None:
                self._pos = len(self._buf)
                if self._pos > self.max_message_bytes:
                    self._overrun(out)
                    continue
                return out
            i, c = m.start(), self._buf[m.start()]
            if c == 0x0A:
                if i > self.max_message_bytes:
                    self._overrun(out)
                    continue
                out.append(bytes(self._buf[:i]))
                self._next_message(i + 1)
            elif self._quote:
                self._quote = 0 if c == self._quote else self._quote
                self._pos = i + 1
            elif c != 0x23:  # an opening quote
                self._quote = c
                self._pos = i + 1
            else:
                end = _block_end(self._buf, i)
                if end is not None and end > self.max_message_bytes:
                    self._overrun(out)
                elif end == -1:
                    self._pos = i + 1
                elif end is None or end > len(self._buf):
                    self._pos = i  # wait for the rest of the block
                    return out
                else:
                    self._pos = end

    def _next_message(self, start: int) -> None:
        del self._buf[:start]
        self._pos = self._quote = 0
        self._discarding = False

    def _overrun(self, out: list[bytes | int]) -> None:
        out.append(-363)
        self._discarding = True


# ---- lexing: program message -> units -----------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class Param:
    kind: str  # "text" (numbers, mnemonics), "string" (quoted) or "block" (binary)
    text: str = ""
    data: bytes = b""


@dataclasses.dataclass(frozen=True)
class Unit:
    header: str
    params: list[Param]


def _skip_ws(msg: bytes, i: int) -> int:
    while i < len(msg) and msg[i] in b" \t\r":
        i += 1
    return i


def program_units(msg: bytes) -> Iterator[Unit]:
    """The units of one program message; raises ScpiError where the syntax breaks."""
    i, n = 0, len(msg)
    while True:
        i = _skip_ws(msg, i)
        if i >= n:
            return
        if msg[i] == 0x3B:  # empty unit (';;'): tolerated
            i += 1
            continue
        j = i
        while j < n and msg[j] not in b" \t\r;":
            j += 1
        header, i = msg[i:j].decode("latin-1"), _skip_ws(msg, j)
        params: list[Param] = []
        while i < n and msg[i] != 0x3B:
            param, i = _param(msg, i)
            params.append(param)
            i = _skip_ws(msg, i)
            if i < n and msg[i] == 0x2C:
                i = _skip_ws(msg, i + 1)
                if i >= n or msg[i] == 0x3B:
                    raise ScpiError(-109, f"{_printable(header)}: nothing after ','")
            elif i < n and msg[i] != 0x3B:
                raise ScpiError(-103, f"{_printable(header)}: expected ',' or ';' after a parameter")
        yield Unit(header, params)
        i += 1


def _param(msg: bytes, i: int) -> tuple[Param, int]:
    c = msg[i]
    if c in b"'\"":
        parts, j = [], i + 1
        while True:
            k = msg.find(bytes([c]), j)
            if k < 0:
                raise ScpiError(-151, "unterminated string")
            if k + 1 < len(msg) and msg[k + 1] == c:  # doubled quote = one quote character
                parts.append(msg[j : k + 1])
                j = k + 2
                continue
            parts.append(msg[j:k])
            return Param("string", text=b"".join(parts).decode("latin-1")), k + 1
    if c == 0x23 and i + 1 < len(msg) and msg[i + 1] == 0x30:  # '#0': indefinite block, rest of message
        return Param("block", data=msg[i + 2 :]), len(msg)
    if c == 0x23 and i + 1 < len(msg) and 0x31 <= msg[i + 1] <= 0x39:
        end = _block_end(msg, i)
        if end is None or end < 0 or end > len(msg):
            raise ScpiError(-161, "block header malformed or longer than the message")
        return Param("block", data=msg[i + 2 + msg[i + 1] - 0x30 : end]), end
    j = i
    while j < len(msg) and msg[j] not in b",;":
        j += 1
    return Param("text", text=msg[i:j].decode("latin-1").strip()), j


def _printable(text: str, limit: int = 60) -> str:
    clean = "".join(ch if 32 <= ord(ch) < 127 and ch != '"' else "?" for ch in text)
    return clean if len(clean) <= limit else clean[:limit] + "..."


# ---- header patterns ----------------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class _Node:
    short: str
    long: str
    optional: bool
    suffix: bool  # takes the channel suffix (only 1 exists)


def _compile(pattern: str) -> tuple[_Node, ...]:
    """'[SOURce#:]VOLTage[:LEVel]' -> nodes: [] optional, # channel suffix, capitals the short form."""
    nodes = []
    for m in _PATTERN_NODE.finditer(pattern):
        word = m.group(1) or m.group(3)
        optional, suffix = m.group(1) is not None, bool(m.group(2) or m.group(4))
        nodes.append(_Node(_short(word), word.upper(), optional, suffix))
    return tuple(nodes)


def _short(word: str) -> str:
    """'FREQuency' -> 'FREQ'."""
    return "".join(ch for ch in word if ch.isupper())


def _match(pattern: tuple[_Node, ...], nodes: list[tuple[str, str]], p: int = 0, r: int = 0) -> int:
    """0: no match; 1: match; 2: match but with a channel suffix other than 1."""
    if p == len(pattern):
        return 1 if r == len(nodes) else 0
    node = pattern[p]
    if r < len(nodes):
        name, suffix = nodes[r]
        if name in (node.short, node.long) and (not suffix or node.suffix):
            found = _match(pattern, nodes, p + 1, r + 1)
            if found:
                return 2 if suffix not in ("", "1") else found
    return _match(pattern, nodes, p + 1, r) if node.optional else 0


def _choice(text: str, words: tuple[str, ...]) -> str | None:
    """The short form of the word (given as 'SINusoid') that text names, if any."""
    up = text.upper()
    for word in words:
        if up in (_short(word), word.upper()):
            return _short(word)
    return None


Handler = Callable[["ScpiInstrument", list[Param]], str | None]


@dataclasses.dataclass(frozen=True)
class _Command:
    nodes: tuple[_Node, ...]
    write: Handler | None
    query: Handler | None


# ---- the instrument -----------------------------------------------------------------------------
class ScpiInstrument:
    """Executes program messages against a SignalGenerator; holds the error queue and status byte."""

    def __init__(self, generator: SignalGenerator) -> None:
        self.gen = generator
        self.big_endian = True  # FORMat:BORDer NORMal
        self._errors: deque[tuple[int, str]] = deque()
        self._esr = 0  # standard event status register
        self._lock = threading.Lock()

    # errors / status
    def push_error(self, code: int, detail: str = "") -> None:
        text = ERRORS.get(code, "Error") + (f"; {_printable(detail, 200)}" if detail else "")
        with self._lock:
            # ESR bits: 5 command (-1xx), 4 execution (-2xx), 3 device (-3xx), 2 query (-4xx) error.
            self._esr |= {1: 32, 2: 16, 3: 8, 4: 4}.get(-code // 100, 0)
            if len(self._errors) < ERROR_QUEUE_LEN - 1:
                self._errors.append((code, text))
            elif len(self._errors) == ERROR_QUEUE_LEN - 1:
                self._errors.append((-350, ERRORS[-350]))

    def pop_error(self) -> str:
        with self._lock:
            code, text = self._errors.popleft() if self._errors else (0, ERRORS[0])
        return f'{code},"{text}"'

    def clear_status(self) -> None:
        with self._lock:
            self._errors.clear()
            self._esr = 0

    def read_esr(self) -> int:
        with self._lock:
            esr, self._esr = self._esr, 0
            return esr

    def set_opc(self) -> None:
        with self._lock:
            self._esr |= 1

    def error_count(self) -> int:
        with self._lock:
            return len(self._errors)

    # execution
    def execute(self, message: bytes) -> str | None:
        """Run one program message; the response line (with its newline) if it held queries."""
        replies: list[str] = []
        path: list[tuple[str, str]] = []
        try:
            for unit in program_units(message):
                try:
                    with self.gen.lock:
                        path, reply = self._unit(unit, path)
                    if reply is not None:
                        replies.append(reply)
                except GeneratorError as exc:
                    self.push_error(exc.code, exc.detail)
                except ScpiError as exc:
                    self.push_error(exc.code, exc.detail)
        except ScpiError as exc:  # the lexer cannot find the next unit: the rest of the message is lost
            self.push_error(exc.code, exc.detail)
        except Exception as exc:  # a bug must cost one message, never the server
            self.push_error(-300, f"{type(exc).__name__}: {exc}")
        return ";".join(replies) + "\n" if replies else None

    def _unit(self, unit: Unit, path: list[tuple[str, str]]) -> tuple[list[tuple[str, str]], str | None]:
        header = unit.header
        is_query = header.endswith("?")
        name = header[:-1] if is_query else header
        if name.startswith("*"):
            key = name[1:].upper() + ("?" if is_query else "")
            if key not in _COMMON:
                raise ScpiError(-113, header)
            return path, _COMMON[key](self, unit.params)
        absolute = name.startswith(":")
        parts = name[1:].split(":") if absolute else name.split(":")
        matches = [_NODE.fullmatch(part) for part in parts]
        if not parts or any(m is None for m in matches):
            raise ScpiError(-102, f"malformed header {header}")
        nodes = [(m.group(1).upper(), m.group(2)) for m in matches if m is not None]
        for candidate in ([nodes] if absolute or not path else [path + nodes, nodes]):
            for command in _COMMANDS:
                found = _match(command.nodes, candidate)
                if not found:
                    continue
                if found == 2:
                    raise ScpiError(-114, header)
                handler = command.query if is_query else command.write
                if handler is None:
                    raise ScpiError(-113, f"{header} ({'no query form' if is_query else 'query only'})")
                return candidate[:-1], handler(self, unit.params)
        raise ScpiError(-113, header)


# ---- parameter helpers --------------------------------------------------------------------------
def _count(params: list[Param], lo: int, hi: int) -> None:
    if len(params) < lo:
        raise ScpiError(-109, f"needs {lo} parameter(s)")
    if len(params) > hi:
        raise ScpiError(-108, f"takes at most {hi} parameter(s)")


def _text(param: Param) -> str:
    if param.kind != "text":
        raise ScpiError(-104, f"expected a number or mnemonic, got {param.kind} data")
    return param.text


def _number(param: Param, unit: str) -> float:
    text = _text(param)
    m = _NUMBER.fullmatch(text)
    if m is None:
        raise ScpiError(-104 if text[:1].isalpha() else -121, f"not a number: {text}")
    value = float(m.group(1))
    suffix = m.group(2).upper()
    if suffix:
        if suffix not in UNITS[unit]:
            raise ScpiError(-131, f"{suffix} is no unit for {unit or 'a count'}")
        value *= UNITS[unit][suffix]
    return value


def _limit_keyword(inst: ScpiInstrument, setting: str, text: str) -> float | None:
    """MIN/MAX/DEF for a numeric setting, else None."""
    word = _choice(text, ("MINimum", "MAXimum", "DEFault"))
    if word == "DEF":
        return float(getattr(Settings(), setting))
    if word in ("MIN", "MAX"):
        lo, hi = inst.gen.limits(setting)
        return lo if word == "MIN" else hi
    return None


def _fmt(value: float) -> str:
    return f"{9.9e37 if math.isinf(value) else value:+.14E}"


def _numeric(setting: str, unit: str, integer: bool = False) -> tuple[Handler, Handler]:
    def write(inst: ScpiInstrument, params: list[Param]) -> None:
        _count(params, 1, 1)
        keyword = _limit_keyword(inst, setting, _text(params[0]))
        value = keyword if keyword is not None else _number(params[0], unit)
        inst.gen.set(setting, int(round(value)) if integer and math.isfinite(value) else value)

    def query(inst: ScpiInstrument, params: list[Param]) -> str:
        _count(params, 0, 1)
        value = _limit_keyword(inst, setting, _text(params[0])) if params else inst.gen.get(setting)
        if value is None:
            raise ScpiError(-224, "query takes MIN, MAX or DEF")
        return str(int(value)) if integer else _fmt(value)

    return write, query


def _enum(setting: str, words: tuple[str, ...]) -> tuple[Handler, Handler]:
    def write(inst: ScpiInstrument, params: list[Param]) -> None:
        _count(params, 1, 1)
        short = _choice(_text(params[0]), words)
        if short is None:
            raise ScpiError(-224, f"{_text(params[0])} not one of {', '.join(words)}")
        inst.gen.set(setting, short)

    def query(inst: ScpiInstrument, params: list[Param]) -> str:
        _count(params, 0, 0)
        return str(inst.gen.get(setting))

    return write, query


def _flag(text: str) -> bool:
    word = _choice(text, ("ON", "OFF"))
    if word is not None:
        return word == "ON"
    m = _NUMBER.fullmatch(text)
    if m is None or m.group(2):
        raise ScpiError(-224, f"{text} is not ON, OFF, 1 or 0")
    return round(float(m.group(1))) != 0


def _boolean(setting: str) -> tuple[Handler, Handler]:
    def write(inst: ScpiInstrument, params: list[Param]) -> None:
        _count(params, 1, 1)
        inst.gen.set(setting, _flag(_text(params[0])))

    def query(inst: ScpiInstrument, params: list[Param]) -> str:
        _count(params, 0, 0)
        return "1" if inst.gen.get(setting) else "0"

    return write, query


def _name(param: Param) -> str:
    if param.kind == "block":
        raise ScpiError(-104, "expected a waveform name")
    return param.text


# ---- command handlers that are not a plain setting ----------------------------------------------
def _load_write(inst: ScpiInstrument, params: list[Param]) -> None:
    _count(params, 1, 1)
    text = _text(params[0])
    if _choice(text, ("INFinity",)):
        value = math.inf
    else:
        keyword = _limit_keyword(inst, "load_ohm", text)
        value = keyword if keyword is not None else _number(params[0], "OHM")
        value = math.inf if value >= 9.9e37 else value  # SCPI's INF
    inst.gen.set("load_ohm", value)


def _load_query(inst: ScpiInstrument, params: list[Param]) -> str:
    _count(params, 0, 0)
    return _fmt(inst.gen.get("load_ohm"))


def _arb_points(inst: ScpiInstrument, params: list[Param], dac: bool) -> list[float]:
    if len(params) == 1 and params[0].kind == "block":
        item = "h" if dac else "f"  # int16 DAC codes or float32 values
        data = params[0].data
        if len(data) % struct.calcsize(item):
            raise ScpiError(-161, f"block of {len(data)} bytes is not whole {item} items")
        order = ">" if inst.big_endian else "<"
        values = [float(v) for v in struct.unpack(f"{order}{len(data) // struct.calcsize(item)}{item}", data)]
    else:
        values = [_number(p, "") for p in params]
    if dac:
        if any(abs(v) > DAC_FULL_SCALE for v in values):
            raise ScpiError(-222, f"DAC codes must lie in [-{DAC_FULL_SCALE}, {DAC_FULL_SCALE}]")
        values = [v / DAC_FULL_SCALE for v in values]
    return values


def _data_arb(dac: bool) -> Handler:
    def write(inst: ScpiInstrument, params: list[Param]) -> None:
        _count(params, 2, 1 << 20)
        inst.gen.load_arb(_name(params[0]), _arb_points(inst, params[1:], dac))

    return write


def _catalog(inst: ScpiInstrument, params: list[Param]) -> str:
    _count(params, 0, 0)
    return ",".join(f'"{name}"' for name in inst.gen.arb_names()) or '""'


def _clear(inst: ScpiInstrument, params: list[Param]) -> None:
    _count(params, 0, 0)
    inst.gen.clear_arbs()


def _arb_select(inst: ScpiInstrument, params: list[Param]) -> None:
    _count(params, 1, 1)
    inst.gen.set("arb_name", _name(params[0]))


def _arb_selected(inst: ScpiInstrument, params: list[Param]) -> str:
    _count(params, 0, 0)
    return f'"{inst.gen.get("arb_name")}"'


def _byte_order_write(inst: ScpiInstrument, params: list[Param]) -> None:
    _count(params, 1, 1)
    word = _choice(_text(params[0]), ("NORMal", "SWAPped"))
    if word is None:
        raise ScpiError(-224, "byte order is NORMal or SWAPped")
    inst.big_endian = word == "NORM"


def _byte_order_query(inst: ScpiInstrument, params: list[Param]) -> str:
    _count(params, 0, 0)
    return "NORM" if inst.big_endian else "SWAP"


def _apply(function: str) -> Handler:
    """APPLy:<function> [freq[,amplitude[,offset]]]: set them in one go and switch the output on."""

    def write(inst: ScpiInstrument, params: list[Param]) -> None:
        _count(params, 0, 3)
        s = inst.gen.settings()
        values = [s.frequency_hz, s.amplitude_vpp, s.offset_v]
        for k, (param, setting, unit) in enumerate(
            zip(params, ("frequency_hz", "amplitude_vpp", "offset_v"), ("HZ", "VPP", "V"), strict=False)
        ):
            keyword = _choice(_text(param), ("DEFault",))
            values[k] = float(getattr(Settings(), setting)) if keyword else _number(param, unit)
        inst.gen.set("function", function)
        inst.gen.set("frequency_hz", values[0])
        inst.gen.set_levels(values[1], values[2])
        inst.gen.set("output_on", True)

    return write


def _apply_query(inst: ScpiInstrument, params: list[Param]) -> str:
    _count(params, 0, 0)
    s = inst.gen.settings()
    return f'"{s.function} {_fmt(s.frequency_hz)},{_fmt(s.amplitude_vpp)},{_fmt(s.offset_v)}"'


def _event(action: Callable[[ScpiInstrument], object]) -> Handler:
    def write(inst: ScpiInstrument, params: list[Param]) -> None:
        _count(params, 0, 0)
        action(inst)

    return write


def _reply(answer: Callable[[ScpiInstrument], str]) -> Handler:
    def query(inst: ScpiInstrument, params: list[Param]) -> str:
        _count(params, 0, 0)
        return answer(inst)

    return query


_FUNCTION_WORDS = ("SINusoid", "SQUare", "PULSe", "ARBitrary", "DC")
_SPEC: list[tuple[str, tuple[Handler | None, Handler | None]]] = [
    ("[SOURce#:]FUNCtion[:SHAPe]", _enum("function", _FUNCTION_WORDS)),
    ("[SOURce#:]FREQuency[:CW]", _numeric("frequency_hz", "HZ")),
    ("[SOURce#:]VOLTage[:LEVel][:IMMediate][:AMPLitude]", _numeric("amplitude_vpp", "VPP")),
    ("[SOURce#:]VOLTage[:LEVel][:IMMediate]:OFFSet", _numeric("offset_v", "V")),
    ("[SOURce#:]PHASe[:ADJust]", _numeric("phase_deg", "DEG")),
    ("[SOURce#:]FUNCtion:PULSe:WIDTh", _numeric("pulse_width_s", "S")),
    ("[SOURce#:]FUNCtion:SQUare:DCYCle", _numeric("square_duty_pct", "PCT")),
    ("[SOURce#:]FUNCtion:ARBitrary", (_arb_select, _arb_selected)),
    ("[SOURce#:]BURSt:STATe", _boolean("burst_on")),
    ("[SOURce#:]BURSt:MODE", _enum("burst_mode", ("TRIGgered", "GATed"))),
    ("[SOURce#:]BURSt:NCYCles", _numeric("burst_ncycles", "", integer=True)),
    ("[SOURce#:]BURSt:INTernal:PERiod", _numeric("burst_period_s", "S")),
    ("[SOURce#:]DATA:ARBitrary#", (_data_arb(dac=False), None)),
    ("[SOURce#:]DATA:ARBitrary#:DAC", (_data_arb(dac=True), None)),
    ("[SOURce#:]DATA:VOLatile:CATalog", (None, _catalog)),
    ("[SOURce#:]DATA:VOLatile:CLEar", (_clear, None)),
    ("TRIGger#:SOURce", _enum("trigger_source", ("IMMediate", "EXTernal", "BUS"))),
    ("TRIGger#:DELay", _numeric("trigger_delay_s", "S")),
    ("TRIGger#:SLOPe", _enum("trigger_slope", ("POSitive", "NEGative"))),
    ("TRIGger#[:IMMediate]", (_event(lambda inst: inst.gen.bus_trigger(forced=True)), None)),
    ("OUTPut#[:STATe]", _boolean("output_on")),
    ("OUTPut#:LOAD", (_load_write, _load_query)),
    ("FORMat:BORDer", (_byte_order_write, _byte_order_query)),
    ("SYSTem:ERRor[:NEXT]", (None, _reply(lambda inst: inst.pop_error()))),
    ("SYSTem:VERSion", (None, _reply(lambda inst: "1999.0"))),
    ("[SOURce#:]APPLy", (None, _apply_query)),
] + [(f"[SOURce#:]APPLy:{word}", (_apply(_short(word)), None)) for word in _FUNCTION_WORDS]
_COMMANDS = [_Command(_compile(pattern), write, query) for pattern, (write, query) in _SPEC]

_COMMON: dict[str, Handler] = {
    "IDN?": _reply(lambda inst: f"IONM,SIMGEN-1,{inst.gen.serial},1.0"),
    "RST": _event(lambda inst: inst.gen.reset()),
    "CLS": _event(lambda inst: inst.clear_status()),
    "OPC": _event(lambda inst: inst.set_opc()),
    "OPC?": _reply(lambda inst: "1"),  # commands complete before the next is parsed
    "WAI": _event(lambda inst: None),
    "TRG": _event(lambda inst: inst.gen.bus_trigger()),
    "TST?": _reply(lambda inst: "0"),
    "ESR?": _reply(lambda inst: str(inst.read_esr())),
    "STB?": _reply(lambda inst: "4" if inst.error_count() else "0"),  # bit 2: error queue not empty
}


# ---- the TCP server -----------------------------------------------------------------------------
class ScpiServer:
    """Serves one generator over SCPI-on-raw-TCP; several clients at once (each in its own thread)."""

    def __init__(
        self,
        generator: SignalGenerator,
        host: str = "127.0.0.1",
        port: int = 0,
        *,
        max_message_bytes: int = MAX_MESSAGE_BYTES,
        max_clients: int = MAX_CLIENTS,
    ) -> None:
        self.instrument = ScpiInstrument(generator)
        self.host = host
        self._requested_port = port
        self._max_message_bytes = max_message_bytes
        self._max_clients = max_clients
        self._listener: socket.socket | None = None
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._clients: dict[socket.socket, threading.Thread] = {}
        self._acceptor: threading.Thread | None = None

    @property
    def port(self) -> int:
        if self._listener is None:
            raise RuntimeError("server not started")
        return int(self._listener.getsockname()[1])

    @property
    def resource(self) -> str:
        """The VISA resource string (pyvisa-py: ResourceManager('@py'))."""
        return f"TCPIP0::{self.host}::{self.port}::SOCKET"

    def start(self) -> ScpiServer:
        self._stop.clear()
        self._listener = socket.create_server((self.host, self._requested_port))
        self._listener.settimeout(POLL_S)
        self._acceptor = threading.Thread(target=self._accept_loop, name="scpi-accept", daemon=True)
        self._acceptor.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        if self._acceptor is not None:
            self._acceptor.join(timeout=2.0)
        if self._listener is not None:
            self._listener.close()
        with self._lock:
            clients = list(self._clients.items())
        for conn, thread in clients:
            try:
                conn.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            thread.join(timeout=2.0)

    def __enter__(self) -> ScpiServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def _accept_loop(self) -> None:
        assert self._listener is not None
        while not self._stop.is_set():
            try:
                conn, _ = self._listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            with self._lock:
                if len(self._clients) >= self._max_clients:
                    conn.close()
                    continue
                thread = threading.Thread(target=self._serve, args=(conn,), name="scpi-client", daemon=True)
                self._clients[conn] = thread
                thread.start()

    def _serve(self, conn: socket.socket) -> None:
        framer = MessageFramer(self._max_message_bytes)
        try:
            conn.settimeout(POLL_S)
            conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)  # answers are small; don't wait
            while not self._stop.is_set():
                try:
                    data = conn.recv(65536)
                except TimeoutError:
                    continue
                if not data:
                    return  # the client went away, possibly mid-message: its partial message is dropped
                for item in framer.feed(data):
                    if isinstance(item, int):
                        self.instrument.push_error(item, f"message over {self._max_message_bytes} B dropped")
                        continue
                    reply = self.instrument.execute(item)
                    if reply:
                        conn.sendall(reply.encode("ascii", "replace"))
        except OSError:
            pass  # reset by the client or shut down by stop()
        finally:
            with self._lock:
                self._clients.pop(conn, None)
            conn.close()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m ionm_hw.scpi", description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on (default loopback)")
    parser.add_argument("--port", type=int, default=5025, help="TCP port (0: any free port)")
    parser.add_argument("--serial", default="SG000001", help="serial number reported by *IDN?")
    args = parser.parse_args(argv)
    server = ScpiServer(SignalGenerator(serial=args.serial), args.host, args.port).start()
    print(server.resource, flush=True)
    try:
        threading.Event().wait()
    except KeyboardInterrupt:
        pass
    finally:
        server.stop()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
