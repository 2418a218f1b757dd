"""`ionm sim` as a user runs it: the generator's resource on line 2, and the same seed giving the same data
through the whole virtual board (firmware, ADC model, patient) in fast virtual time."""

from __future__ import annotations

import os
import signal
import subprocess

import numpy as np
import pyvisa
from conftest import ionm_cmd

from ionm.board.acquire import BoardSession


def test_generator_resource_is_printed_alone_on_the_second_line():
    proc = subprocess.Popen(ionm_cmd("sim", "--bench", "--generator"), stdout=subprocess.PIPE,
                            stderr=subprocess.DEVNULL, text=True, start_new_session=True)
    try:
        device = proc.stdout.readline().strip()
        resource = proc.stdout.readline().strip()
        assert os.path.exists(device)
        assert resource.startswith("TCPIP0::127.0.0.1::") and resource.endswith("::SOCKET")
        rm = pyvisa.ResourceManager("@py")
        gen = rm.open_resource(resource, read_termination="\n", write_termination="\n")
        assert "SIMGEN" in gen.query("*IDN?")
        gen.close()
        rm.close()
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        assert proc.wait(timeout=10) == 0


def record(seed: int, n_samples: int = 8000) -> np.ndarray:
    from ionm.board.virtual import VirtualBoard

    blocks = []
    with VirtualBoard(scenario="stable", seed=seed, fast=True, stderr=subprocess.DEVNULL) as vb:
        session = BoardSession(vb.device, on_data=blocks.append)
        try:
            session.configure({"rate_hz": 4000, "samples_per_frame": 50, "channels": [0, 5, 9]})
            session.start()
            while sum(b.counts.shape[0] for b in blocks) < n_samples:
                session.link.any_frame.wait(0.05)
            session.stop()
        finally:
            session.close()
    return np.concatenate([b.counts for b in blocks])[:n_samples]


def test_the_same_seed_gives_the_same_samples():
    a, b, c = record(5), record(5), record(6)
    assert np.array_equal(a, b)
    assert not np.array_equal(a, c)


def test_sim_refuses_an_unknown_scenario_at_start_and_lists_the_available_ones():
    from ionm_hw.patient import scenario_names

    done = subprocess.run(ionm_cmd("sim", "--scenario", "no-such-scenario"), capture_output=True, text=True,
                          timeout=60, start_new_session=True)
    assert done.returncode == 2
    assert done.stdout == ""  # no serial device was announced: nothing was started
    assert "no-such-scenario" in done.stderr
    for name in scenario_names():
        assert name in done.stderr
    assert "Traceback" not in done.stderr


def test_console_sim_refuses_an_unknown_scenario_before_opening_a_case(tmp_path):
    from conftest import store_with_technologist

    from ionm.case.store import CaseStore
    from ionm_hw.patient import scenario_names

    db = store_with_technologist(tmp_path / "cases.db")
    for extra in ([], ["--direct"]):
        done = subprocess.run(ionm_cmd("console", "--sim", *extra, "--scenario", "no-such-scenario", "--db", str(db),
                                       "--no-browser", "--listen", "127.0.0.1:0"),
                              capture_output=True, text=True, timeout=60, start_new_session=True)
        assert done.returncode == 2, done.stderr
        assert "no-such-scenario" in done.stderr
        for name in scenario_names():
            assert name in done.stderr
        assert "Traceback" not in done.stderr
    store = CaseStore(db)
    try:
        assert store.open_case_id() is None  # refused before anything entered the record
    finally:
        store.close()



PRIORITY_PROBE = """
import subprocess, sys
from ionm.board.virtual import VirtualBoard, priority_of
stderr = {"default": None, "devnull": subprocess.DEVNULL, "fd": 2}[sys.argv[1]]
with VirtualBoard(scenario="stable", seed=1, stderr=stderr) as vb:
    print("|".join([vb.priority, priority_of(vb.model.pid), priority_of(vb.firmware.pid)]))
"""


def run_priority_probe(*prefix: str, stderr: str = "default") -> tuple[list[str], str]:
    """(the board's stated priority, its model's and its firmware's as the OS has them), and its stderr; the board's
    stderr the default (sys.stderr), subprocess.DEVNULL or a file descriptor (as the CLI tools give it)."""
    import sys

    proc = subprocess.run([*prefix, sys.executable, "-c", PRIORITY_PROBE, stderr], capture_output=True, text=True,
                          timeout=60)
    assert proc.returncode == 0, proc.stderr
    return proc.stdout.strip().split("|"), proc.stderr


def test_the_virtual_board_says_what_priority_the_os_gave_it_and_warns_when_it_got_none():
    """The board's processes run ahead of the host where the OS allows it, so the checks' load lands on the host
    software; where it does not, the board says so on its stderr instead of leaving host-silence stops to look
    like the host's fault."""
    import shutil

    (stated, model, firmware), err = run_priority_probe()
    assert stated == model == firmware, (stated, model, firmware)
    assert ("normal priority" in err) == (stated == "normal"), (stated, err)
    drop = ("setpriv", "--bounding-set", "-sys_nice", "--inh-caps", "-sys_nice")
    if stated == "normal" or shutil.which("setpriv") is None or subprocess.run([*drop, "true"]).returncode != 0:
        return  # no privilege to lose (the warning was checked above), or no way to drop it here
    # the same user without CAP_SYS_NICE (as a container may run the checks): neither real time nor a raised nice
    got, err = run_priority_probe(*drop)
    assert got == ["normal"] * 3, got
    assert "normal priority" in err and "CAP_SYS_NICE" in err, err
    # as `ionm impedance --sim` starts it (stderr=DEVNULL: said to no one) and with a file descriptor
    got, err = run_priority_probe(*drop, stderr="devnull")
    assert got == ["normal"] * 3 and "normal priority" not in err, (got, err)
    got, err = run_priority_probe(*drop, stderr="fd")
    assert got == ["normal"] * 3 and "normal priority" in err, (got, err)
