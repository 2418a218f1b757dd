"""Run a snippet on the MicroPython unix port (the board's heap and module path) with JSON in and out."""

from __future__ import annotations

import json
from typing import Any

from ionm.board import mpy

PRELUDE = """
import sys, json
_IN = json.loads(sys.stdin.read())
def emit(obj):
    sys.stdout.write(json.dumps(obj) + "\\n")
"""


def run_json(code: str, data: Any = None, timeout: float = 60) -> list[Any]:
    """Run PRELUDE + code under MicroPython with `data` as _IN; returns the emitted JSON lines.
    Fails the calling test with MicroPython's own traceback if the snippet raises."""
    proc = mpy.run_code(PRELUDE + code, stdin=json.dumps(data).encode(), timeout=timeout)
    if proc.returncode != 0:
        raise AssertionError("MicroPython failed (%d):\n%s%s" % (proc.returncode, proc.stdout.decode(),
                                                              proc.stderr.decode()))
    return [json.loads(line) for line in proc.stdout.decode().splitlines() if line.strip()]
