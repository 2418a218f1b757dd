"""Measurements shared by `ionm calibrate` and `ionm bench`, each one capture on a ToolSession.

Units: µV input-referred, µA, Hz. Every function returns numbers per channel (or per output) in the
order of the capture, and takes the calibration to apply (None: raw, as the board converts).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from ionm.board.tools import analysis
from ionm.board.tools.calibration import Calibration
from ionm.board.tools.session import ATTEMPTS, ToolSession

# ADS1299 internal test signal (CONFIG2 INT_CAL = 1, CAL_AMP0 = 0): a square wave of ±VREF/2.4 mV, i.e.
# ±vref_uv / 2400 µV, at fCLK / 2^21 (~0.98 Hz). It passes through the same PGA as an external input.
TEST_SIGNAL_DIVISOR = 2400.0
STIM_RATE_MHZ = 4700  # 4.7 Hz: never divides 50 or 60 Hz mains
STIM_WIDTH_US = 100


def test_signal_nominal_uv(vref_uv: float) -> float:
    return vref_uv / TEST_SIGNAL_DIVISOR


@dataclass
class Levels:
    channels: list[int]
    amplitude_uv: np.ndarray  # per channel: half the step of the test signal, or a sine's peak
    offset_uv: np.ndarray  # per channel: mean level
    rms_uv: np.ndarray  # per channel: residual (noise) rms
    nominal_uv: float  # what amplitude_uv should be on a perfect board


def test_signal(session: ToolSession, *, rate_hz: int, gain: int, seconds: float,
                cal: Calibration | None = None, channels: list[int] | None = None) -> Levels:
    """The internal test signal on every channel: its amplitude against the nominal ±VREF/2.4 mV."""
    config = {"rate_hz": rate_hz, "gain": gain, "input": "test", "leadoff": False, "samples_per_frame": 50}
    if channels is not None:
        config["channels"] = channels
    rec = session.record(config, int(seconds * rate_hz))
    uv = rec.uv(cal)
    fits = [analysis.square_levels(uv[:, i]) for i in range(uv.shape[1])]
    amp = np.array([f.amplitude for f in fits])
    off = np.array([f.offset for f in fits])
    return Levels(rec.channels, amp, off, np.zeros_like(amp), test_signal_nominal_uv(rec.conf["vref_uv"]))


def shorted(session: ToolSession, *, rate_hz: int, gain: int, seconds: float,
            cal: Calibration | None = None) -> tuple[Levels, np.ndarray]:
    """Inputs shorted inside the ADS1299: per-channel offset (mean) and noise (rms about it), and the µV
    record (n_samples, n_channels) for spectra."""
    rec = session.record({"rate_hz": rate_hz, "gain": gain, "input": "shorted", "leadoff": False,
                          "samples_per_frame": 50}, int(seconds * rate_hz))
    uv = rec.uv(cal)
    mean = uv.mean(axis=0)
    return Levels(rec.channels, np.zeros_like(mean), mean, uv.std(axis=0), 0.0), uv


def sine(session: ToolSession, *, rate_hz: int, gain: int, seconds: float, freq_hz: float, input_vpp_uv: float,
         cal: Calibration | None = None, channels: list[int] | None = None) -> Levels:
    """A sine the generator already plays (input_vpp_uv at the amplifier input): per-channel fitted
    peak amplitude against input_vpp_uv / 2."""
    config = {"rate_hz": rate_hz, "gain": gain, "input": "normal", "leadoff": False, "samples_per_frame": 50}
    if channels is not None:
        config["channels"] = channels
    rec = session.record(config, int(seconds * rate_hz))
    uv = rec.uv(cal)
    fits = [analysis.sine_fit(uv[:, i], rec.rate_hz, freq_hz) for i in range(uv.shape[1])]
    return Levels(rec.channels, np.array([f.amplitude for f in fits]), np.array([f.offset for f in fits]),
                  np.array([f.residual_rms for f in fits]), input_vpp_uv / 2.0)


@dataclass
class StimReadback:
    requested_ua: list[int]  # the levels
    dac_ua: np.ndarray  # (outputs, levels): the DAC setting the board made, with the calibration it held
    readback_ua: np.ndarray  # (outputs, levels): mean current-sense readback of the pulses
    pulses: np.ndarray  # (outputs, levels): pulses reported

    def fit(self, output: int, against: str = "dac") -> tuple[float, float]:
        """(slope, intercept µA) of readback against the DAC setting (or the request)."""
        x = self.dac_ua[output] if against == "dac" else np.array(self.requested_ua, dtype=np.float64)
        slope, intercept = np.polyfit(x, self.readback_ua[output], 1)
        return float(slope), float(intercept)


class StimulatorError(Exception):
    pass


def stimulator_readback(session: ToolSession, *, outputs: int, levels_ua: list[int], pulses: int, rate_hz: int,
                        stim_gain_ppm: list[int] | None = None) -> StimReadback:
    """Pulses on every output (one program each, a quarter period apart) at each level into the bench load;
    the stim events' current_ua is the board's current-sense readback. stim_gain_ppm: what the board holds,
    to know the DAC setting it made (firmware safety.Supervisor.dac_ua: current × (1e6 + ppm) // 1e6)."""
    period_us = 1_000_000_000 // STIM_RATE_MHZ
    dac = np.zeros((outputs, len(levels_ua)))
    readback = np.zeros((outputs, len(levels_ua)))
    counts = np.zeros((outputs, len(levels_ua)), dtype=int)
    ppm = stim_gain_ppm or [0] * outputs
    for j, level in enumerate(levels_ua):
        programs = [{"kind": "pulse", "output": o, "current_ua": level, "width_us": STIM_WIDTH_US,
                     "waveform": "biphasic", "rate_mhz": STIM_RATE_MHZ, "phase_us": o * period_us // outputs}
                    for o in range(outputs)]
        seconds = (pulses + 0.5) * period_us / 1e6
        for attempt in range(ATTEMPTS):
            rec = session.record({"rate_hz": rate_hz, "channels": [0], "samples_per_frame": 10, "leadoff": False},
                                 int(math.ceil(seconds * rate_hz)), programs=programs)
            got = {o: [e["current_ua"] for e in rec.events if e.get("program") == o and e.get("output") == o]
                   for o in range(outputs)}
            short = [o for o in range(outputs) if len(got[o]) < pulses]
            if not short:
                break
            # a watchdog stop (the host's frames late) is the host's problem: once more; a fault is the board's
            said = "; ".join(e.get("detail") or e["kind"] for e in rec.other_events if e["kind"] != "overrun")
            problem = "output %d: %d of %d pulses at %d µA reported by the board%s" % (
                short[0], len(got[short[0]]), pulses, level, " (%s)" % said if said else "")
            if attempt + 1 == ATTEMPTS or any(e["kind"] == "fault" for e in rec.other_events):
                raise StimulatorError(problem)
            session.retries.append(problem)
        for o in range(outputs):
            dac[o, j] = level * (1_000_000 + ppm[o]) // 1_000_000
            readback[o, j] = float(np.mean(got[o][:pulses]))
            counts[o, j] = len(got[o])
    return StimReadback(list(levels_ua), dac, readback, counts)
