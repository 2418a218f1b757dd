"""A MicroPython board reached over its raw REPL, through mpremote's transport (the library `mpremote
connect PORT fs cp ...` uses): run code, write a file, hash a file on the board, rename, remove.

The seam is small on purpose (ReplBoard): `ionm flash` needs only these operations, and a test can drive
the real MicroPython unix port on a pseudo-terminal through the very same code.
"""

from __future__ import annotations

import ast
import contextlib
import io
from collections.abc import Callable
from typing import Any

WRITE_CHUNK = 512  # bytes per raw-REPL write: the RP2350's USB CDC and the unix port both take it


class ReplError(Exception):
    """No raw REPL on the port, or code on the board failed."""


class ReplBoard:
    def __init__(self, port: str, *, soft_reset: bool = True, timeout: float = 5.0) -> None:
        from mpremote.transport import TransportError
        from mpremote.transport_serial import SerialTransport

        self._error: type[Exception] = TransportError
        try:
            # A serial timeout: on a pty mpremote reads byte by byte and would otherwise block forever on a
            # board that never answers (one running the ionm firmware, whose link ignores Ctrl-C).
            self.t: Any = SerialTransport(port, timeout=1)
        except Exception as exc:
            raise ReplError("cannot open %s: %s" % (port, exc)) from exc
        self.soft_reset = soft_reset
        try:
            with contextlib.redirect_stdout(io.StringIO()):  # mpremote prints what it got when it fails
                self.t.enter_raw_repl(soft_reset=soft_reset, timeout_overall=timeout)
        except self._error as exc:
            self.t.close()
            raise ReplError("no MicroPython raw REPL on %s (%s)" % (port, exc)) from exc

    def exec(self, code: str) -> str:
        try:
            return bytes(self.t.exec(code)).decode(errors="replace")
        except self._error as exc:
            lines = str(exc).strip().splitlines()
            raise ReplError("on the board: %s" % (lines[-1] if lines else exc)) from exc

    def eval(self, expression: str) -> Any:
        return ast.literal_eval(self.exec("print(repr(%s))" % expression).strip())

    def implementation(self) -> dict[str, Any]:
        """name, version (x.y.z), machine and mpy (sys.implementation._mpy) of the board's MicroPython."""
        name, version, machine, mpy = self.eval(
            "(__import__('sys').implementation.name, '%d.%d.%d' % __import__('sys').implementation.version[:3],"
            " getattr(__import__('sys').implementation, '_machine', ''),"
            " getattr(__import__('sys').implementation, '_mpy', 0))")
        return {"implementation": name, "version": version, "machine": machine, "mpy": mpy}

    def write_file(self, name: str, data: bytes, progress: Callable[[int, int], None] | None = None) -> None:
        try:
            self.t.fs_writefile(name, data, chunk_size=WRITE_CHUNK, progress_callback=progress)
        except (self._error, OSError) as exc:
            raise ReplError("writing %s on the board: %s" % (name, exc)) from exc

    def sha256(self, name: str) -> str:
        try:
            return bytes(self.t.fs_hashfile(name, "sha256")).hex()
        except (self._error, OSError) as exc:
            raise ReplError("hashing %s on the board: %s" % (name, exc)) from exc

    def close(self, *, restart: bool = False) -> None:
        """Leave the raw REPL; with restart, soft-reset so that the board runs main.py (the new firmware)."""
        try:
            self.t.exit_raw_repl()
            if restart:
                self.t.serial.write(b"\x04")  # Ctrl-D in the friendly REPL: soft reset, main.py runs
        finally:
            self.t.close()
