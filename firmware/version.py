# Firmware identity reported in INFO. The hash is the SHA-256 recorded by `ionm flash` in
# /fw_manifest.json on a flashed board; elsewhere (the virtual board) it is computed from the sources.
import binascii
import hashlib
import json
import os

FIRMWARE_VERSION = "0.1.0"


def _source_dirs():
    import boardcfg
    import framing

    dirs = []
    for mod in (boardcfg, framing):
        f = getattr(mod, "__file__", "")
        cut = f.rfind("/")
        dirs.append(f[:cut] if cut > 0 else ".")
    return dirs


def firmware_hash():
    try:
        with open("/fw_manifest.json") as fh:
            return json.load(fh)["hash"]
    except (OSError, ValueError, KeyError):
        pass
    h = hashlib.sha256()
    for d in _source_dirs():
        for name in sorted(os.listdir(d)):
            if name.endswith(".py"):
                with open(d + "/" + name, "rb") as fh:
                    h.update(fh.read())
    return binascii.hexlify(h.digest()).decode()
