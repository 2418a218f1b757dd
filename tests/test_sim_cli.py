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
