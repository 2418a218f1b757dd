# Firmware update over the protocol (SPEC §5.9): the image arrives in hashed chunks into a staging file on
# flash, is checked whole, and is unpacked into the inactive slot without ever being held in RAM (the
# board's heap is 192 KB and the image is about a third of that). main.py boots the new slot once as a
# trial; the firmware confirms it when a host completes a hello, and an unconfirmed trial is rolled back.
import binascii
import hashlib
import json
import os

import messages as m
import storage

MAX_IMAGE = 512 * 1024  # bytes: what the filesystem can hold beside the running slot
MAX_CHUNK = 4096
_COPY = 1024  # bytes per copy step while unpacking


def _hexdigest(h):
    return binascii.hexlify(h.digest()).decode()


class Updater:
    def __init__(self, bsp):
        self.bsp = bsp
        self.staging = storage.path(bsp, "fw_staging.bin")
        self.size = 0
        self.expected = b""
        self.received = 0
        self.hasher = None
        self.fh = None

    def begin(self, body):
        size, digest, chunk = body.get("size"), body.get("sha256"), body.get("chunk")
        if not isinstance(size, int) or not 0 < size <= MAX_IMAGE:
            raise m.ProtocolError(m.E_BAD_FIELD, "size must be 1..%d bytes" % MAX_IMAGE)
        if not isinstance(digest, bytes) or len(digest) != 32:
            raise m.ProtocolError(m.E_BAD_FIELD, "sha256 must be 32 bytes")
        if not isinstance(chunk, int) or not 0 < chunk <= MAX_CHUNK:
            raise m.ProtocolError(m.E_BAD_FIELD, "chunk must be 1..%d bytes" % MAX_CHUNK)
        self.abort()
        self.fh = open(self.staging, "wb")
        self.size, self.expected, self.received = size, digest, 0
        self.hasher = hashlib.sha256()
        return {}

    def chunk(self, body):
        if self.fh is None or self.hasher is None:
            raise m.ProtocolError(m.E_STATE, "fw-begin first")
        offset, data, digest = body.get("offset"), body.get("data"), body.get("sha256")
        if offset != self.received:
            raise m.ProtocolError(m.E_BAD_FIELD, "expected offset %d" % self.received)
        if not isinstance(data, bytes) or not data or self.received + len(data) > self.size:
            raise m.ProtocolError(m.E_BAD_FIELD, "data must be 1..%d bytes" % (self.size - self.received))
        if hashlib.sha256(data).digest() != digest:
            raise m.ProtocolError(m.E_BAD_FIELD, "chunk at %d: sha256 mismatch, resend from %d" % (offset, offset))
        self.fh.write(data)
        self.hasher.update(data)
        self.received += len(data)
        return {"received": self.received}

    def commit(self, boot):
        """Check the image, unpack it into the inactive slot, mark the slot for a trial boot. Returns
        (slot, hash hex)."""
        if self.fh is None or self.hasher is None:
            raise m.ProtocolError(m.E_STATE, "fw-begin first")
        self.fh.close()
        self.fh = None
        if self.received != self.size or self.hasher.digest() != self.expected:
            self.abort()
            raise m.ProtocolError(m.E_BAD_FIELD, "image incomplete or its sha256 differs: update abandoned")
        digest = binascii.hexlify(self.expected).decode()
        slot = "b" if boot.get("active") == "a" else "a"
        slot_dir = storage.path(self.bsp, "fw_" + slot)
        try:
            self._clear(slot_dir)
            names = self._unpack(slot_dir)
            storage.write_atomic(slot_dir + "/fw_manifest.json", json.dumps({"hash": digest, "files": names}).encode())
            boot["trial"], boot["tried"] = slot, False
            storage.write_atomic(storage.path(self.bsp, "fw_boot.json"), json.dumps(boot).encode())
        except (OSError, ValueError) as exc:
            raise m.ProtocolError(m.E_STORAGE, "update not installed: %s" % exc) from None
        finally:
            self.abort()
        return slot, digest

    def abort(self):
        if self.fh is not None:
            self.fh.close()
            self.fh = None
        try:
            os.remove(self.staging)
        except OSError:
            pass

    @staticmethod
    def _clear(d):
        try:
            for name in os.listdir(d):
                os.remove(d + "/" + name)
        except OSError:
            os.mkdir(d)

    def _unpack(self, slot_dir):
        """Stream the CBOR map {name: bytes} from the staging file into slot_dir."""
        names = []
        with open(self.staging, "rb") as src:
            major, count = _head(src)
            if major != 5:
                raise ValueError("the image is not a CBOR map")
            for _ in range(count):
                major, n = _head(src)
                if major != 3 or n > 64:
                    raise ValueError("file names must be text of at most 64 bytes")
                name = src.read(n).decode()
                if "/" in name or name.startswith(".") or not (name.endswith(".py") or name.endswith(".mpy")
                                                                or name.endswith(".json")):
                    raise ValueError("refusing file name %r" % name)
                major, n = _head(src)
                if major != 2:
                    raise ValueError("%s: contents must be a byte string" % name)
                with open(slot_dir + "/" + name, "wb") as dst:
                    while n:
                        block = src.read(min(n, _COPY))
                        if not block:
                            raise ValueError("%s: image truncated" % name)
                        dst.write(block)
                        n -= len(block)
                names.append(name)
        return names


def _head(fh):
    """(major type, argument) of the next definite-length CBOR head in a file."""
    b = fh.read(1)
    if not b:
        raise ValueError("image truncated")
    major, info = b[0] >> 5, b[0] & 0x1F
    if info < 24:
        return major, info
    width = {24: 1, 25: 2, 26: 4, 27: 8}.get(info)
    if width is None:
        raise ValueError("indefinite or reserved CBOR head in the image")
    raw = fh.read(width)
    if len(raw) != width:
        raise ValueError("image truncated")
    n = 0
    for x in raw:
        n = (n << 8) | x
    return major, n
