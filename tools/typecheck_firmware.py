"""Type-check firmware/ and protocol/ against the MicroPython stubs of the reference board (RP2350,
micropython-rp2-rpi-pico2-stubs + micropython-stdlib-stubs as the typeshed), not CPython's standard library.

Usage: python tools/typecheck_firmware.py --stubs build/stubs
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--stubs", default="build/stubs")
    args = ap.parse_args()
    stubs = (ROOT / args.stubs).resolve()
    if not (stubs / "stdlib" / "VERSIONS").is_file():
        print("typecheck: no MicroPython stubs in %s (make lint installs them)" % stubs, file=sys.stderr)
        return 2
    env = dict(os.environ, MYPYPATH=os.pathsep.join([str(stubs), str(ROOT / "firmware"), str(ROOT / "protocol")]))
    files = sorted(str(p) for p in (ROOT / "firmware").glob("*.py")) + sorted(
        str(p) for p in (ROOT / "protocol").glob("*.py"))
    cmd = [sys.executable, "-m", "mypy", "--config-file", str(ROOT / "tools" / "mypy-firmware.ini"),
           "--custom-typeshed-dir", str(stubs), *files]
    return subprocess.run(cmd, env=env, cwd=ROOT).returncode


if __name__ == "__main__":
    sys.exit(main())
