"""Compile every firmware and protocol module for the board (mpy-cross, -march from board.json).

Usage: python tools/build_firmware.py --out build/firmware [--json]
Writes OUT/*.mpy (main.py and board.json are copied as they are: MicroPython runs main.py from source)
and OUT/manifest.json with size and SHA-256 of every file. Exits non-zero if any module fails to compile.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "host"))

from ionm.board import firmware as firmware_build  # noqa: E402


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default="build/firmware")
    args = ap.parse_args()
    try:
        manifest = firmware_build.build(Path(args.out))
    except firmware_build.BuildError as exc:
        print("make firmware: %s" % exc, file=sys.stderr)
        return 1
    for f in manifest["files"]:
        print("%-28s %7d  %s" % (f["name"], f["size"], f["sha256"][:16]))
    print("%d files for %s, firmware hash %s" % (len(manifest["files"]), manifest["arch"], manifest["hash"][:16]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
