"""Constant-current stimulator output stage: current DAC with its own error, compliance limiting at high
electrode impedance, a current-sense and a compliance-voltage readback, and the delivered-pulse log that
tests read.

The firmware decides what to deliver; this is what the patient actually receives. A pulse the output stage
cannot drive (impedance x current above the compliance voltage) is delivered at the compliance-limited
current and flagged, exactly what the current-sense readback lets the firmware detect. The voltage across
the electrodes, sampled during the pulse (at most the compliance voltage), divided by the sensed current is
the electrode impedance the firmware measures; a sub-threshold probe pulse (probe=True in the log) gives it
before any stimulus is delivered.
"""

from __future__ import annotations

import json
import zlib
from collections import deque
from dataclasses import asdict, dataclass
from typing import IO, Any

import numpy as np


@dataclass(frozen=True)
class DeliveredPulse:
    index: int  # acquisition sample index at which the pulse began
    t_s: float  # model time, seconds
    output: int  # 0..outputs-1, or -1 for the TcMEP trigger output
    requested_ma: float
    delivered_ma: float
    measured_ma: float  # what the current-sense readback reports
    width_us: int
    biphasic: bool
    impedance_ohm: float
    compliance_limited: bool
    voltage_v: float = 0.0  # what the compliance-voltage readback reports (across the electrodes, mid-pulse)
    probe: bool = False  # a sub-threshold impedance probe, not a stimulus
    level_db: float = 0.0  # a click on the earphones (stimulator.auditory.output): its level, dB nHL
    rarefaction: bool = False  # ... and polarity (condensation when False)
    ear: str = ""  # ... and the ear it was played to, "L" or "R"


class OutputStage:
    def __init__(self, board_def: dict[str, Any], serial: str, log: IO[str] | None = None) -> None:
        stim = board_def["stimulator"]
        self.auditory_output = int(stim["auditory"]["output"])  # the insert earphones: clicks, no current
        self.click_us = int(stim["auditory"]["width_us"])
        # outputs 0..outputs-1 and the handheld probe's (stimulator.probe.output, monopolar, 0-40 mA at 200 µs)
        self.outputs = max(int(stim["outputs"]), int(stim["probe"]["output"]) + 1)
        self.compliance_v = float(stim["compliance_v"])
        rng = np.random.default_rng(zlib.crc32(("%s/stim" % serial).encode()))
        # Per-output DAC gain error (fraction) and offset (mA); current-sense gain error (fraction).
        self.dac_gain_error = rng.normal(0.0, 0.01, self.outputs)
        self.dac_offset_ma = rng.normal(0.0, 0.05, self.outputs)
        self.sense_gain_error = rng.normal(0.0, 0.002, self.outputs)
        self.voltage_gain_error = rng.normal(0.0, 0.002, self.outputs)  # compliance-voltage readback
        self.log = log
        self.delivered: deque[DeliveredPulse] = deque(maxlen=10000)  # recent pulses; the log file keeps all

    def click(self, index: int, t_s: float, level_db: float, rarefaction: bool, ear: str) -> DeliveredPulse:
        """A click on the insert earphones (board.json stimulator.auditory): no current into the patient."""
        pulse = DeliveredPulse(int(index), float(t_s), self.auditory_output, 0.0, 0.0, 0.0, self.click_us, False, 0.0,
                               False,
                               level_db=float(level_db), rarefaction=bool(rarefaction), ear=str(ear))
        self.delivered.append(pulse)
        if self.log is not None:
            self.log.write(json.dumps(asdict(pulse)) + "\n")
            self.log.flush()
        return pulse

    def deliver(self, index: int, t_s: float, output: int, current_ma: float, width_us: int, biphasic: bool,
                impedance_ohm: float, probe: bool = False) -> DeliveredPulse:
        if output < 0:  # trigger to an external stimulator: a logic pulse, no current from this board
            pulse = DeliveredPulse(int(index), float(t_s), int(output), 0.0, 0.0, 0.0, int(width_us), False, 0.0, False)
        else:
            dac_ma = max(0.0, current_ma * (1.0 + self.dac_gain_error[output]) + self.dac_offset_ma[output])
            if current_ma == 0:
                dac_ma = 0.0
            limit_ma = self.compliance_v / impedance_ohm * 1e3
            delivered = min(dac_ma, limit_ma)
            measured = delivered * (1.0 + self.sense_gain_error[output])
            volts = min(delivered * 1e-3 * impedance_ohm, self.compliance_v) * (1.0 + self.voltage_gain_error[output])
            pulse = DeliveredPulse(int(index), float(t_s), int(output), float(current_ma), float(delivered),
                                   float(measured), int(width_us), bool(biphasic), float(impedance_ohm),
                                   bool(dac_ma > limit_ma), float(volts), bool(probe))
        self.delivered.append(pulse)
        if self.log is not None:
            self.log.write(json.dumps(asdict(pulse)) + "\n")
            self.log.flush()
        return pulse
