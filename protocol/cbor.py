"""CBOR (RFC 8949) codec that runs unchanged on MicroPython and CPython.

The board and the host both import this one file, so a message encodes to the same bytes on either side.

- dumps(obj, default=None) -> bytes: deterministic encoding per RFC 8949 §4.2.1 (shortest heads, the
  shortest float width that holds the value exactly, definite lengths, map keys sorted bytewise by their
  encoding). Note: cbor2's canonical=True sorts keys length-first (RFC 8949 §4.2.3) instead; the two agree
  whenever a map's keys all encode to the same length, or sort bytewise into non-decreasing length.
- loads(data) -> obj and loads_prefix(data, offset) -> (obj, end): strict well-formedness checks; every
  failure is a CBORDecodeError, and no length is trusted before the input is known to hold it.

Decoded types: int, bytes, str, list, dict, float, bool, None, UNDEFINED, Simple, Tag (tags 2/3 become
int). Map keys must be hashable (arrays/maps as keys are rejected). Duplicate keys: the last one wins.
"""

import struct

_ARG_FORMATS = (">B", ">H", ">I", ">Q")  # argument after the initial byte, for additional info 24..27
MAX_DEPTH = 64  # nesting limit for both directions: bounds recursion (stack) on the board
_U64_END = 1 << 64


class CBORDecodeError(ValueError):
    pass


class CBOREncodeError(ValueError):
    pass


def _is_int(x):
    return isinstance(x, int) and x is not True and x is not False


class Tag:
    """A tagged item (major type 6) passed through undecoded: Tag(tag_number, value)."""

    def __init__(self, tag, value):
        if not _is_int(tag) or not 0 <= tag < _U64_END:
            raise ValueError("tag number must be an int in 0..2**64-1")
        self.tag = tag
        self.value = value

    def __eq__(self, other):
        return isinstance(other, Tag) and self.tag == other.tag and self.value == other.value

    def __hash__(self):
        return hash((self.tag, self.value))

    def __repr__(self):
        return f"Tag({self.tag}, {repr(self.value)})"


class Simple:
    """A simple value other than false/true/null/undefined: 0..19 or 32..255 (RFC 8949 §3.3)."""

    def __init__(self, value):
        if not _is_int(value) or not (0 <= value < 20 or 32 <= value < 256):
            raise ValueError("simple value must be in 0..19 or 32..255")
        self.value = value

    def __eq__(self, other):
        return isinstance(other, Simple) and self.value == other.value

    def __hash__(self):
        return hash(self.value) ^ 0x5A17

    def __repr__(self):
        return f"Simple({self.value})"


class _Undefined:
    def __repr__(self):
        return "UNDEFINED"

    def __bool__(self):
        return False


UNDEFINED = _Undefined()


# ---- floats. Encoding picks the width from the double's bit pattern with integer arithmetic, so the
# choice does not depend on how an interpreter's struct rounds or flushes subnormals to zero (and it
# also works on the board, whose MicroPython floats are single precision).

# (exponent bits, mantissa bits, initial byte) for half and single precision
_HALF = (5, 10, 0xF9)
_SINGLE = (8, 23, 0xFA)


def _narrow(sign, exp, sig, fmt):
    """Bits of value (-1)**sign * sig * 2**(exp-52) in a narrower format, or None if not exact.

    sig is the 53-bit double significand with its leading 1, exp the unbiased exponent.
    """
    ebits, mbits, _ = fmt
    bias = (1 << (ebits - 1)) - 1
    top = sign << (ebits + mbits)
    if exp > bias:
        return None
    if exp >= 1 - bias:  # normal in the narrow format
        drop = 52 - mbits
        if sig & ((1 << drop) - 1):
            return None
        return top | ((exp + bias) << mbits) | ((sig >> drop) & ((1 << mbits) - 1))
    drop = 52 - mbits + (1 - bias) - exp  # subnormal: value = k * 2**(1-bias-mbits)
    if drop > 53 or sig & ((1 << drop) - 1):
        return None
    return top | (sig >> drop)


def _encode_float(out, x):
    bits = struct.unpack(">Q", struct.pack(">d", x))[0]
    sign = bits >> 63
    exp = (bits >> 52) & 0x7FF
    mant = bits & ((1 << 52) - 1)
    if exp == 0x7FF:  # RFC 8949 §4.2.2: NaN as the half-precision quiet NaN, infinities as half
        out += b"\xf9\x7e\x00" if mant else (b"\xf9\xfc\x00" if sign else b"\xf9\x7c\x00")
        return
    if exp == 0 and mant == 0:
        out += b"\xf9\x80\x00" if sign else b"\xf9\x00\x00"
        return
    if exp:  # a double subnormal is below every narrower format's range
        for fmt, pack in ((_HALF, ">BH"), (_SINGLE, ">BI")):
            narrow = _narrow(sign, exp - 1023, mant | (1 << 52), fmt)
            if narrow is not None:
                out += struct.pack(pack, fmt[2], narrow)
                return
    out += struct.pack(">Bd", 0xFB, x)


def _half_to_float(bits):
    """Half-precision bits as a float, by hand: MicroPython's struct may lack the 'e' format."""
    exp = (bits >> 10) & 0x1F
    mant = bits & 0x3FF
    if exp == 0x1F:
        value = float("nan") if mant else float("inf")
    else:  # value = significand * 2**(exp - 25); scaling by a power of two is exact
        significand = float(mant | (0x400 if exp else 0))
        shift = max(exp, 1) - 25
        value = significand * (1 << shift) if shift >= 0 else significand / (1 << -shift)
    return -value if bits & 0x8000 else value


# ---- encoding

def _head(out, major, n):
    mt = major << 5
    if n < 24:
        out.append(mt | n)
    elif n < 0x100:
        out += struct.pack(">BB", mt | 24, n)
    elif n < 0x10000:
        out += struct.pack(">BH", mt | 25, n)
    elif n < 0x100000000:
        out += struct.pack(">BI", mt | 26, n)
    else:
        out += struct.pack(">BQ", mt | 27, n)


def _encode_int(out, n):
    major = 0
    if n < 0:
        major, n = 1, -1 - n
    if n < _U64_END:
        _head(out, major, n)
        return
    raw = n.to_bytes((len(f"{n:x}") + 1) // 2, "big")  # MicroPython ints lack bit_length()
    _head(out, 6, 2 + major)  # bignum: tag 2 (positive) or 3 (negative)
    _head(out, 2, len(raw))
    out += raw


def _sort_key(pair):
    return pair[0]


def _encode(out, obj, default, depth):
    if depth > MAX_DEPTH:
        raise CBOREncodeError(f"nesting deeper than {MAX_DEPTH} (or a reference cycle)")
    if obj is None:
        out.append(0xF6)
    elif obj is True or obj is False:  # before int: CPython's bool is an int
        out.append(0xF5 if obj else 0xF4)
    elif isinstance(obj, int):
        _encode_int(out, obj)
    elif isinstance(obj, str):
        try:
            raw = obj.encode("utf-8")
        except UnicodeError:
            raise CBOREncodeError("text is not encodable as UTF-8 (lone surrogate?)") from None
        _head(out, 3, len(raw))
        out += raw
    elif isinstance(obj, (bytes, bytearray, memoryview)):
        data = obj if not isinstance(obj, memoryview) else bytes(obj)  # len(memoryview) counts elements
        _head(out, 2, len(data))
        out += data
    elif isinstance(obj, float):
        _encode_float(out, obj)
    elif isinstance(obj, (list, tuple)):
        _head(out, 4, len(obj))
        for item in obj:
            _encode(out, item, default, depth + 1)
    elif isinstance(obj, dict):
        _encode_map(out, obj, default, depth)
    elif isinstance(obj, Tag):
        _head(out, 6, obj.tag)
        _encode(out, obj.value, default, depth + 1)
    elif isinstance(obj, Simple):
        _head(out, 7, obj.value)
    elif obj is UNDEFINED:
        out.append(0xF7)
    elif default is not None:
        _encode(out, default(obj), default, depth + 1)
    else:
        raise CBOREncodeError(f"cannot encode object of type {type(obj).__name__}")


def _encode_map(out, obj, default, depth):
    # Sort by the encoded key so the output is independent of dict iteration order, which differs
    # between CPython (insertion order) and MicroPython (hash order).
    pairs = []
    for key, value in obj.items():
        encoded_key = bytearray()
        _encode(encoded_key, key, default, depth + 1)
        pairs.append((bytes(encoded_key), value))
    pairs.sort(key=_sort_key)
    _head(out, 5, len(pairs))
    previous = None
    for key_bytes, value in pairs:
        if key_bytes == previous:
            raise CBOREncodeError("two map keys encode to the same bytes")
        previous = key_bytes
        out += key_bytes
        _encode(out, value, default, depth + 1)


def dumps(obj, default=None):
    """Deterministic CBOR encoding of obj.

    default: called with any object of an unsupported type; must return a supported object to encode
    in its place (unlike cbor2's default(encoder, value), it does not write to an encoder).
    """
    out = bytearray()
    _encode(out, obj, default, 0)
    return bytes(out)


# ---- decoding

# MicroPython's decoder checks only the byte structure; it accepts overlong forms, surrogates and
# code points above U+10FFFF, so _text() checks those to reject exactly what CPython rejects.
try:
    _LAX_UTF8 = str(b"\xed\xa0\x80", "utf-8") is not None  # a UTF-16 surrogate: strict decoders refuse
except UnicodeError:
    _LAX_UTF8 = False


def _text(raw):
    try:
        text = str(raw, "utf-8")
    except UnicodeError:
        text = None
    if text is not None and _LAX_UTF8 and len(text) != len(raw):  # non-ASCII: check what it let through
        for i in range(len(raw) - 1):
            c, d = raw[i], raw[i + 1]
            if (c in (0xC0, 0xC1) or c > 0xF4 or (c == 0xE0 and d < 0xA0) or (c == 0xED and d >= 0xA0)
                    or (c == 0xF0 and d < 0x90) or (c == 0xF4 and d >= 0x90)):
                text = None
                break
    if text is None:
        raise CBORDecodeError("invalid UTF-8 in text string")
    return text


class _Decoder:
    def __init__(self, data, pos):
        self.buf = memoryview(data)
        self.end = len(self.buf)
        self.pos = pos

    # Error messages use % formatting: on MicroPython it allocates about half what f-strings do, and
    # the errors for absurd declared lengths must stay within a few hundred bytes of heap.
    def fail(self, what):
        raise CBORDecodeError("%s at offset %d" % (what, self.pos))  # noqa: UP031

    def take(self, n):
        """The next n bytes as a view; checked against the input before anything is allocated."""
        start = self.pos
        if n > self.end - start:
            self.fail("declared length %d exceeds the %d bytes left" % (n, self.end - start))  # noqa: UP031
        self.pos = start + n
        return self.buf[start:start + n]

    def head(self):
        """(major type, additional info, argument); the argument is None for indefinite length."""
        if self.pos >= self.end:
            self.fail("truncated: item expected")
        initial = self.buf[self.pos]
        self.pos += 1
        major, info = initial >> 5, initial & 31
        if info < 24:
            return major, info, info
        if info < 28:
            size = 1 << (info - 24)  # 1, 2, 4 or 8 bytes of argument
            if size > self.end - self.pos:
                self.fail("truncated argument")
            self.pos += size
            return major, info, struct.unpack_from(_ARG_FORMATS[info - 24], self.buf, self.pos - size)[0]
        if info == 31 and major in (2, 3, 4, 5, 7):  # 7/31 is the break code
            return major, info, None
        self.pos -= 1
        self.fail(f"reserved or invalid initial byte 0x{initial:02x}")

    def at_break(self):
        if self.pos < self.end and self.buf[self.pos] == 0xFF:
            self.pos += 1
            return True
        return False

    def item(self, depth):
        if depth > MAX_DEPTH:
            self.fail(f"nesting deeper than {MAX_DEPTH}")
        major, info, arg = self.head()
        if major == 0:
            return arg
        if major == 1:
            return -1 - arg
        if major in (2, 3):
            return self.string(major, arg)
        if major == 4:
            return self.array(arg, depth)
        if major == 5:
            return self.map(arg, depth)
        if major == 6:
            return self.tag(arg, depth)
        return self.simple(info, arg)

    def string(self, major, length):
        if length is not None:
            raw = bytes(self.take(length))
            return raw if major == 2 else _text(raw)
        chunks = []  # type: list
        while not self.at_break():  # indefinite: definite-length chunks of the same major type
            chunk_major, _, chunk_length = self.head()
            if chunk_major != major or chunk_length is None:
                self.fail("bad chunk in indefinite-length string")
            raw = bytes(self.take(chunk_length))
            chunks.append(raw if major == 2 else _text(raw))
        return (b"" if major == 2 else "").join(chunks)

    def array(self, length, depth):
        items = []
        if length is None:
            while not self.at_break():
                items.append(self.item(depth + 1))
            return items
        if length > self.end - self.pos:  # each item takes at least one byte
            self.fail("array of %d items cannot fit in %d bytes" % (length, self.end - self.pos))  # noqa: UP031
        for _ in range(length):
            items.append(self.item(depth + 1))
        return items

    def map(self, length, depth):
        result = {}
        if length is not None and length > (self.end - self.pos) // 2:
            self.fail("map of %d pairs cannot fit in %d bytes" % (length, self.end - self.pos))  # noqa: UP031
        count = 0
        while (count < length) if length is not None else not self.at_break():
            key = self.item(depth + 1)
            value = self.item(depth + 1)
            try:
                result[key] = value
            except TypeError:
                self.fail("unhashable map key")
            count += 1
        return result

    def tag(self, number, depth):
        value = self.item(depth + 1)
        if number in (2, 3):
            if not isinstance(value, bytes):
                self.fail(f"bignum tag {number} needs a byte string")
            n = int.from_bytes(value, "big")
            return n if number == 2 else -1 - n
        return Tag(number, value)

    def simple(self, info, arg):
        if info < 20:
            return Simple(info)
        if info < 24:
            return (False, True, None, UNDEFINED)[info - 20]
        if info == 24:
            if arg < 32:  # RFC 8949 §3.3: not well-formed
                self.fail(f"two-byte simple value {arg} below 32")
            return Simple(arg)
        if info == 25:
            return _half_to_float(arg)
        if info == 26:  # single or double: unpack the argument bytes just read
            return struct.unpack_from(">f", self.buf, self.pos - 4)[0]
        if info == 27:
            return struct.unpack_from(">d", self.buf, self.pos - 8)[0]
        self.pos -= 1
        self.fail("unexpected break")


def _decode(decoder):
    try:
        return decoder.item(0)
    except RuntimeError:  # recursion limit of a small stack (e.g. the board) before MAX_DEPTH
        raise CBORDecodeError("nesting too deep for this interpreter") from None


def loads_prefix(data, offset=0):
    """Decode one item starting at offset; returns (obj, offset just past it). Bytes after it are left."""
    decoder = _Decoder(data, offset)
    if not 0 <= offset <= decoder.end:
        raise ValueError(f"offset {offset} outside the {decoder.end}-byte input")
    return _decode(decoder), decoder.pos


def loads(data):
    """Decode exactly one CBOR item that fills data (bytes, bytearray or memoryview)."""
    decoder = _Decoder(data, 0)
    obj = _decode(decoder)
    if decoder.pos != decoder.end:
        decoder.fail(f"{decoder.end - decoder.pos} trailing bytes after the item")
    return obj
