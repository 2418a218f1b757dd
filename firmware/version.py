# Firmware identity reported in INFO. The hash is the SHA-256 recorded in the running slot's manifest (a
# protocol update) or in /fw_manifest.json (`ionm flash`, and the virtual board, which runs the same build);
# elsewhere (the firmware run from the source tree, as the firmware tests run it) it is computed from the sources.
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
    import bootslot

    base = (bootslot.state_dir() or "") + "/fw_manifest.json"  # `ionm flash` writes it at the flash root
    for manifest in (bootslot.SLOT_DIR + "/fw_manifest.json" if bootslot.SLOT_DIR else "", base):
        if not manifest:
            continue
        try:
            with open(manifest) as fh:
                return json.load(fh)["hash"]
        except (OSError, ValueError, KeyError):
            pass
    h = hashlib.sha256()
    buf = bytearray(1024)  # read in pieces: a whole source file in one allocation fails on a fragmented heap
    view = memoryview(buf)
    for d in _source_dirs():
        for name in sorted(os.listdir(d)):
            if name.endswith(".py"):
                with open(d + "/" + name, "rb") as fh:
                    while True:
                        n = fh.readinto(buf)
                        if not n:
                            break
                        h.update(view[:n])
    return binascii.hexlify(h.digest()).decode()
