"""NATS identities of rooms and physicians: nkeys (Ed25519 key pairs, the `nkeys` package, as nats-py signs with it).

A user's seed (the private key, "SU...") stays with its owner in a file only the owner may read (mode 0600); the
hub's access file holds only the public key ("U...", `"nkey"` in an entry: ionm.hub.access), and nats-server
checks at each connection that the client signed the server's challenge with the matching seed, so no secret
crosses the network and the hub holds none. keygen() makes one (`ionm hub --keygen NAME --key-dir DIR`),
read_seed() reads and checks one (`ionm console --nkey-seed FILE`). docs/OVERSIGHT.md.
"""

from __future__ import annotations

import base64
import binascii
import os
import re
import stat
from pathlib import Path

import nkeys

NAME = re.compile(r"^[A-Za-z0-9_-]{1,64}$")
SEED_SUFFIX = ".nk"


class IdentityError(ValueError):
    """A seed file or a key that cannot be used; the message never holds a seed."""


def new_seed() -> str:
    """A new user seed ("SU..."), from the operating system's randomness."""
    return bytes(nkeys.encode_seed(os.urandom(32), nkeys.PREFIX_BYTE_USER)).decode()


def _keypair(seed: str) -> nkeys.KeyPair:
    try:
        prefix, raw = nkeys.decode_seed(seed.encode())
        if prefix != nkeys.PREFIX_BYTE_USER or len(raw) != 32 or not _checksum_ok(seed):
            raise nkeys.ErrInvalidSeed()
        return nkeys.from_seed(seed.encode())
    except (nkeys.NkeysError, ValueError, TypeError):
        raise IdentityError("not a user nkey seed") from None


def _decode(text: str) -> bytes:
    return base64.b32decode(text + "=" * (-len(text) % 8))


def _checksum_ok(text: str) -> bool:
    try:
        raw = _decode(text)
    except (binascii.Error, ValueError):
        return False
    return len(raw) > 2 and bytes(nkeys.crc16_checksum(bytearray(raw[:-2]))) == raw[-2:]


def public_key(seed: str) -> str:
    """The user public key ("U...", 56 characters) of a seed."""
    return bytes(_keypair(seed).public_key).decode()


def is_user_public_key(text: str) -> bool:
    """A user public key: "U", 56 base32 characters, 32 bytes of key and a valid checksum (never a seed)."""
    if not isinstance(text, str) or len(text) != 56 or not text.startswith("U") or not _checksum_ok(text):
        return False
    return _decode(text)[0] == nkeys.PREFIX_BYTE_USER


def read_seed(path: str | Path) -> str:
    """The seed in a file that only its owner may read (no group or other permission bits: nats' own tools and
    ssh take the same care); IdentityError says what is wrong without showing the file's contents."""
    path = Path(path)
    try:
        st = path.stat()
    except OSError:
        raise IdentityError("no seed file %s" % path) from None
    if not stat.S_ISREG(st.st_mode):
        raise IdentityError("no seed file %s (not a regular file)" % path)
    mode = stat.S_IMODE(st.st_mode)
    if mode & 0o077:
        raise IdentityError("the seed file %s may be read by others (mode %04o): chmod 600 %s" % (path, mode, path))
    try:
        seed = path.read_text().strip()
    except (OSError, UnicodeDecodeError):
        raise IdentityError("cannot read the seed file %s" % path) from None
    try:
        _keypair(seed)
    except IdentityError:
        raise IdentityError("%s is not a user nkey seed (ionm hub --keygen makes one)" % path) from None
    return seed


def keygen(name: str, key_dir: str | Path) -> tuple[Path, str]:
    """A new identity for `name`: its seed written to KEY_DIR/NAME.nk (mode 0600, created exclusively: an existing
    identity is never overwritten; KEY_DIR made with mode 0700 if missing); (the seed file, the public key)."""
    if not NAME.match(str(name)):
        raise IdentityError("a name is 1 to 64 of A-Z a-z 0-9 _ -, not %r" % (name,))
    key_dir = Path(key_dir)
    try:
        key_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    except OSError as exc:
        raise IdentityError("cannot make the key directory %s: %s" % (key_dir, exc.strerror)) from None
    path = key_dir / (name + SEED_SUFFIX)
    seed = new_seed()
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        raise IdentityError("%s exists: an identity is never overwritten (remove it first to replace it)"
                            % path) from None
    except OSError as exc:
        raise IdentityError("cannot write %s: %s" % (path, exc.strerror)) from None
    with os.fdopen(fd, "w") as f:
        os.fchmod(f.fileno(), 0o600)  # whatever the umask
        f.write(seed + "\n")
    return path, public_key(seed)
