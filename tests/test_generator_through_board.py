"""The simulated signal generator, driven with pyvisa/pyvisa-py like a bench instrument, reaches the ADS1299
through the bench divider: a 1 kHz sine of 50 µVpp at the input is seen in the firmware's samples at the
right amplitude (within the unit's modelled gain error) and frequency."""

from __future__ import annotations

import time

import numpy as np
import pytest
import pyvisa

from ionm.board import link as ln
from ionm.board.acquire import BoardSession
from ionm_hw.generator import generator_volts_for


def test_generator_sine_at_the_input_is_measured_by_the_board(tmp_path):
    from ionm.board.virtual import VirtualBoard

    err = open(tmp_path / "board.stderr", "w")
    blocks: list[ln.DataBlock] = []
    with VirtualBoard(bench=True, generator=True, stderr=err) as vb:
        rm = pyvisa.ResourceManager("@py")
        gen = rm.open_resource(vb.generator_resource, read_termination="\n", write_termination="\n")
        try:
            assert "SIMGEN" in gen.query("*IDN?")
            vpp = generator_volts_for(50e-6)  # 50 µVpp at the amplifier input through the divider
            gen.write("*RST;:OUTP:LOAD INF;:SOUR1:FUNC SIN;:FREQ 1000;:VOLT %.6g;:VOLT:OFFS 0;:OUTP1 ON" % vpp)
            assert gen.query("*OPC?") == "1" and gen.query("SYST:ERR?").startswith("0,")
            session = BoardSession(vb.device, on_data=blocks.append)
            try:
                conf = session.configure({"rate_hz": 8000, "channels": [0, 7, 12], "samples_per_frame": 80})
                session.start()
                time.sleep(1.5)
                session.stop()
            finally:
                session.close()
        finally:
            gen.close()
            rm.close()
    err.close()
    counts = np.concatenate([b.counts for b in blocks])[2000:]  # skip the first 0.25 s
    uv = counts * (conf["vref_uv"] / conf["full_scale_code"] / conf["gain"][0])
    t = np.arange(len(uv)) / 8000
    design = np.column_stack([np.sin(2 * np.pi * 1000 * t), np.cos(2 * np.pi * 1000 * t), np.ones_like(t)])
    for ch in range(3):
        coef, *_ = np.linalg.lstsq(design, uv[:, ch], rcond=None)
        amplitude_pp = 2 * np.hypot(coef[0], coef[1])
        assert amplitude_pp == pytest.approx(50.0, rel=0.01)  # gain error of a good unit is ~0.2 %
        resid = uv[:, ch] - design @ coef
        assert resid.std() < 2.0  # what remains is amplifier noise, not an unexplained signal
