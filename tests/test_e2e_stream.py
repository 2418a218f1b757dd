"""End to end as a user runs it: `ionm sim` and `ionm stream` as separate processes."""

from __future__ import annotations

import json
import os
import pty
import signal
import subprocess
import time

import pytest
from conftest import ionm_cmd, run_ionm


@pytest.fixture
def sim_process():
    proc = subprocess.Popen(ionm_cmd("sim", "--bench"), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, start_new_session=True)
    try:
        device = proc.stdout.readline().strip()
        yield proc, device
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGTERM)
            proc.wait(timeout=10)


def _children(pid: int) -> list[str]:
    """'PID full command line' of each child process (from /proc: ps would truncate)."""
    out = subprocess.run(["ps", "-o", "pid=", "--ppid", str(pid)], capture_output=True, text=True).stdout
    kids = []
    for p in out.split():
        try:
            with open("/proc/%s/cmdline" % p, "rb") as fh:
                kids.append("%s %s" % (p, fh.read().replace(b"\0", b" ").decode()))
        except OSError:
            pass
    return kids


def test_sim_runs_firmware_on_micropython_and_stream_reports_a_clean_link(sim_process):
    proc, device = sim_process
    assert device.startswith("/dev/pts/") and os.path.exists(device)
    kids = _children(proc.pid)
    # the board runs the build (.mpy) `ionm flash` would deploy: its main.py from build/virtual-board/
    assert any("micropython" in k and "heapsize=192K" in k and "build/virtual-board/" in k and k.strip().endswith(
        "/main.py") for k in kids), kids
    assert any("ionm_hw.server" in k for k in kids), kids

    result = run_ionm("stream", "--port", device, "--seconds", "2", "--json", timeout=60)
    assert result.returncode == 0, result.stderr
    stats = json.loads(result.stdout)
    # The board says what runs it: this is MicroPython executing firmware/, not CPython.
    assert stats["micropython"]["implementation"] == "micropython"
    assert stats["board"]["support"] == "virtual"
    for key in ("frames", "bytes", "frames_rejected", "samples_lost", "sequence_gaps", "channels",
                "sample_rate_hz", "samples_per_channel"):
        assert key in stats
    assert stats["frames"] > 0 and stats["frames_rejected"] == 0
    assert stats["samples_lost"] == 0 and stats["sequence_gaps"] == 0
    assert stats["channels"] == 16 and stats["sample_rate_hz"] == 2000
    # every sample the board produced arrived, on every channel
    for ch in stats["samples_per_channel"]:
        assert ch["received"] == stats["board_samples"] and ch["lost"] == 0
    assert stats["board_samples"] >= 2000 * 1.5


def test_sim_stops_both_children_on_sigterm(sim_process):
    proc, device = sim_process
    kids = [int(k.split()[0]) for k in _children(proc.pid)]
    assert len(kids) == 2
    os.killpg(proc.pid, signal.SIGTERM)
    assert proc.wait(timeout=10) == 0
    time.sleep(0.2)
    for pid in kids:
        assert not os.path.exists("/proc/%d" % pid) or open("/proc/%d/stat" % pid).read().split()[2] == "Z"


def test_sim_sigint_alone_stops_it_cleanly(sim_process):
    proc, _device = sim_process
    proc.send_signal(signal.SIGINT)
    assert proc.wait(timeout=10) == 0


def test_stream_missing_port_is_a_clear_error():
    result = run_ionm("stream", "--port", "/dev/does-not-exist", "--seconds", "1", "--json")
    assert result.returncode != 0
    assert "/dev/does-not-exist" in result.stderr and "does not exist" in result.stderr
    assert "Traceback" not in result.stderr


def test_stream_silent_port_says_nothing_answers():
    master, slave = pty.openpty()  # a port with nothing behind it
    try:
        result = run_ionm("stream", "--port", os.ttyname(slave), "--seconds", "1", "--json")
    finally:
        os.close(master)
        os.close(slave)
    assert result.returncode != 0
    assert "nothing answers" in result.stderr and "Traceback" not in result.stderr


def test_stream_port_speaking_something_else_is_named_as_such():
    master, slave = pty.openpty()
    import threading

    stop = threading.Event()

    def chatter() -> None:  # a device that prints text, like a board running some other firmware
        while not stop.is_set():
            try:
                os.write(master, b"MicroPython v1.24 REPL >>> \r\n")
            except OSError:
                return
            time.sleep(0.05)

    t = threading.Thread(target=chatter, daemon=True)
    t.start()
    try:
        result = run_ionm("stream", "--port", os.ttyname(slave), "--seconds", "1", "--json")
    finally:
        stop.set()
        t.join()
        os.close(master)
        os.close(slave)
    assert result.returncode != 0
    assert "not with the ionm protocol" in result.stderr and "Traceback" not in result.stderr


def test_a_killed_sim_takes_its_children_with_it():
    """kill -9 leaves no cleanup code to run: the children must still not outlive the virtual board."""
    proc = subprocess.Popen(ionm_cmd("sim", "--bench"), stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                            text=True)
    proc.stdout.readline()
    kids = [int(k.split()[0]) for k in _children(proc.pid)]
    assert len(kids) == 2
    proc.kill()
    proc.wait(timeout=5)
    deadline = time.monotonic() + 5
    alive = kids
    while alive and time.monotonic() < deadline:
        time.sleep(0.1)
        alive = [p for p in kids if os.path.exists("/proc/%d" % p)
                 and open("/proc/%d/stat" % p).read().split()[2] != "Z"]
    assert not alive
