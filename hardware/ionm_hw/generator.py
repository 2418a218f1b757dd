"""Simulated function/arbitrary generator: instrument settings and waveform synthesis.

The hardware model owns one SignalGenerator and asks it, block by block, for the voltage at the
generator's output terminals; the bench divider (board.json `bench`, see divider_ratio) then brings it
down to amplifier-input levels. Settings arrive from any thread (the SCPI server): every public method
takes the instrument lock.

Model-time semantics:
- render() samples the ideal waveform at discrete instants (point samples, infinitely fast edges, no
  output filter, no anti-aliasing): the ADS1299 also samples at discrete instants and the levels the
  bench uses are far below its Nyquist limits. Samples are a pure function of model time and settings,
  so rendering [0, 1 s) in one block or in 100 gives the same samples; a frequency change is therefore
  not phase-continuous (the phase follows frequency * model time).
- A sample within EDGE_EPS_CYCLES of an edge (square/pulse transition, arb step, burst start/end) counts
  as after the edge, so sample grids that land exactly on edges render deterministically.
- The output is the open-circuit terminal voltage; the bench divider (~100 kOhm) is treated as high-Z
  (the 50 Ohm source impedance costs 0.05 %). OUTPut:LOAD only changes how the instrument scales its
  settings, as on a real instrument: with LOAD 50 the terminals show twice the programmed amplitude.
"""

from __future__ import annotations

import bisect
import dataclasses
import math
import re
import threading
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import numpy.typing as npt

OUTPUT_IMPEDANCE_OHM = 50.0
HIGH_Z = math.inf
PEAK_V_MAX = 5.0  # |terminal voltage| into high-Z, i.e. 10 Vpp
AMPLITUDE_VPP_MIN = 1e-3
ARB_POINTS_MIN = 8
ARB_POINTS_MAX = 65536
ARB_SLOTS_MAX = 32  # volatile arb memory: names held at once
ARB_NAME = re.compile(r"^[A-Za-z][A-Za-z0-9_]{0,11}$")  # 12 characters, as on common LAN generators
EDGE_EPS_CYCLES = 1e-9
PENDING_BURSTS_MAX = 10000

FUNCTIONS = ("SIN", "SQU", "PULS", "ARB", "DC")
TRIGGER_SOURCES = ("IMM", "EXT", "BUS")
TRIGGER_SLOPES = ("POS", "NEG")
BURST_MODES = ("TRIG",)

# Fixed ranges (lo, hi) of numeric settings; amplitude and offset limit each other (peak_limits).
RANGES: dict[str, tuple[float, float]] = {
    "frequency_hz": (1e-6, 20e6),
    "phase_deg": (-360.0, 360.0),
    "pulse_width_s": (16e-9, 1e3),
    "square_duty_pct": (0.01, 99.99),
    "burst_ncycles": (1, 100_000_000),
    "burst_period_s": (1e-6, 8000.0),
    "trigger_delay_s": (0.0, 1000.0),
    "load_ohm": (1.0, 10e3),  # or HIGH_Z
}


class GeneratorError(Exception):
    """A refused setting; code is the SCPI error number (-222 data out of range, ...)."""

    def __init__(self, code: int, detail: str) -> None:
        super().__init__(f"{code}: {detail}")
        self.code = code
        self.detail = detail


@dataclasses.dataclass
class Settings:
    """Power-on / *RST state. The output starts OFF, as on a real instrument."""

    function: str = "SIN"
    frequency_hz: float = 1000.0
    amplitude_vpp: float = 0.1
    offset_v: float = 0.0
    phase_deg: float = 0.0
    pulse_width_s: float = 100e-6
    square_duty_pct: float = 50.0
    arb_name: str = ""
    output_on: bool = False
    load_ohm: float = HIGH_Z
    burst_on: bool = False
    burst_mode: str = "TRIG"
    burst_ncycles: int = 1
    burst_period_s: float = 10e-3
    trigger_source: str = "IMM"
    trigger_delay_s: float = 0.0
    trigger_slope: str = "POS"


def _load_factor(load_ohm: float) -> float:
    """Terminal (open-circuit) volts per programmed volt for the load the instrument assumes."""
    return 1.0 if math.isinf(load_ohm) else (load_ohm + OUTPUT_IMPEDANCE_OHM) / load_ohm


def _in_range(name: str, value: float) -> None:
    lo, hi = RANGES[name]
    if not (lo <= value <= hi):
        raise GeneratorError(-222, f"{name} {value:g} outside [{lo:g}, {hi:g}]")


class SignalGenerator:
    """One-channel function/arbitrary generator (thread-safe)."""

    def __init__(self, serial: str = "SG000001", trigger_pulse_s: float | None = None) -> None:
        """trigger_pulse_s: width of the board's trigger pulse (for TRIG:SLOP NEG); default board.json."""
        self.serial = serial
        self._trigger_pulse_s = trigger_pulse_s
        self.lock = threading.RLock()
        self._s = Settings()
        self._arbs: dict[str, npt.NDArray[np.float64]] = {}  # volatile memory, upper-case names
        self._bursts: list[float] = []  # start times (model s) of externally/bus triggered bursts
        self._frontier_s = 0.0  # model time just after the last rendered sample
        self.ignored_triggers = 0  # edges that arrived during a burst (real instruments drop them too)

    # ---- state -----------------------------------------------------------------------------
    def reset(self) -> None:
        """*RST: default settings, no pending bursts. Arbs in volatile memory are kept."""
        with self.lock:
            self._s = Settings()
            self._bursts.clear()

    def settings(self) -> Settings:
        """A copy of the current settings."""
        with self.lock:
            return dataclasses.replace(self._s)

    def peak_limits(self) -> dict[str, tuple[float, float]]:
        """Current ranges of amplitude_vpp and offset_v: |offset| + Vpp/2 must stay within the peak limit."""
        with self.lock:
            peak = PEAK_V_MAX / _load_factor(self._s.load_ohm)
            return {
                "amplitude_vpp": (AMPLITUDE_VPP_MIN, 2.0 * (peak - abs(self._s.offset_v))),
                "offset_v": (-(peak - self._s.amplitude_vpp / 2), peak - self._s.amplitude_vpp / 2),
            }

    def limits(self, name: str) -> tuple[float, float]:
        """(min, max) of a numeric setting as the instrument would accept it now."""
        return self.peak_limits()[name] if name in ("amplitude_vpp", "offset_v") else RANGES[name]

    def get(self, name: str) -> Any:
        with self.lock:
            return getattr(self._s, name)

    def set(self, name: str, value: Any) -> None:
        """Validate and apply one setting; raises GeneratorError (and changes nothing) if refused."""
        check = getattr(self, f"_check_{name}", None)
        if check is None:
            raise ValueError(f"no setting {name!r}; see Settings")
        with self.lock:
            check(value)
            setattr(self._s, name, value)

    def set_levels(self, amplitude_vpp: float, offset_v: float) -> None:
        """Set amplitude and offset together (checked as a pair, so the order of change cannot matter)."""
        with self.lock:
            peak = PEAK_V_MAX / _load_factor(self._s.load_ohm)
            if not (AMPLITUDE_VPP_MIN <= amplitude_vpp and abs(offset_v) + amplitude_vpp / 2 <= peak):
                raise GeneratorError(-222, f"{amplitude_vpp:g} Vpp at {offset_v:g} V offset is out of range")
            self._s.amplitude_vpp, self._s.offset_v = amplitude_vpp, offset_v

    def _check_function(self, value: str) -> None:
        if value not in FUNCTIONS:
            raise GeneratorError(-224, f"function {value!r} not in {FUNCTIONS}")
        if value == "ARB" and not self._s.arb_name:
            raise GeneratorError(-221, "no arbitrary waveform selected (FUNC:ARB <name>)")

    def _check_frequency_hz(self, value: float) -> None:
        _in_range("frequency_hz", value)

    def _check_amplitude_vpp(self, value: float) -> None:
        lo, hi = self.peak_limits()["amplitude_vpp"]
        if not (lo <= value <= hi):
            raise GeneratorError(-222, f"amplitude {value:g} Vpp outside [{lo:g}, {hi:g}] at this offset")

    def _check_offset_v(self, value: float) -> None:
        lo, hi = self.peak_limits()["offset_v"]
        if not (lo <= value <= hi):
            raise GeneratorError(-222, f"offset {value:g} V outside [{lo:g}, {hi:g}] at this amplitude")

    def _check_phase_deg(self, value: float) -> None:
        _in_range("phase_deg", value)

    def _check_pulse_width_s(self, value: float) -> None:
        # A width >= period is accepted: the pulse then stays high (render clamps), as the period may
        # legitimately be set after the width.
        _in_range("pulse_width_s", value)

    def _check_square_duty_pct(self, value: float) -> None:
        _in_range("square_duty_pct", value)

    def _check_arb_name(self, value: str) -> None:
        if value.upper() not in self._arbs:
            raise GeneratorError(-256, f"no arbitrary waveform named {value!r}")

    def _check_output_on(self, value: bool) -> None:
        pass

    def _check_load_ohm(self, value: float) -> None:
        if not math.isinf(value):
            _in_range("load_ohm", value)
        peak = _load_factor(value) * (abs(self._s.offset_v) + self._s.amplitude_vpp / 2)
        if peak > PEAK_V_MAX:
            raise GeneratorError(-221, f"load {value:g} Ohm would need {peak:g} V at the terminals")

    def _check_burst_on(self, value: bool) -> None:
        pass

    def _check_burst_mode(self, value: str) -> None:
        if value not in BURST_MODES:
            raise GeneratorError(-224, f"burst mode {value!r} not in {BURST_MODES}")

    def _check_burst_ncycles(self, value: int) -> None:
        _in_range("burst_ncycles", value)

    def _check_burst_period_s(self, value: float) -> None:
        _in_range("burst_period_s", value)

    def _check_trigger_source(self, value: str) -> None:
        if value not in TRIGGER_SOURCES:
            raise GeneratorError(-224, f"trigger source {value!r} not in {TRIGGER_SOURCES}")

    def _check_trigger_delay_s(self, value: float) -> None:
        _in_range("trigger_delay_s", value)

    def _check_trigger_slope(self, value: str) -> None:
        if value not in TRIGGER_SLOPES:
            raise GeneratorError(-224, f"trigger slope {value!r} not in {TRIGGER_SLOPES}")

    # ---- arbitrary waveforms ---------------------------------------------------------------
    def load_arb(self, name: str, points: Sequence[float] | npt.NDArray[np.floating[Any]]) -> None:
        """Store an arbitrary waveform (values -1..1, one period) in volatile memory under name."""
        if not ARB_NAME.match(name):
            raise GeneratorError(-224, f"arb name {name!r}: letter then up to 11 letters/digits/_")
        table = np.asarray(points, dtype=np.float64).ravel()
        if not (ARB_POINTS_MIN <= table.size <= ARB_POINTS_MAX):
            raise GeneratorError(-222, f"{table.size} arb points, need {ARB_POINTS_MIN}..{ARB_POINTS_MAX}")
        if not np.all(np.isfinite(table)) or np.any(np.abs(table) > 1.0):
            raise GeneratorError(-222, "arb values must lie in [-1, 1]")
        with self.lock:
            if name.upper() not in self._arbs and len(self._arbs) >= ARB_SLOTS_MAX:
                raise GeneratorError(-225, f"volatile memory holds {ARB_SLOTS_MAX} arbs; clear it first")
            table.setflags(write=False)
            self._arbs[name.upper()] = table

    def arb_names(self) -> list[str]:
        with self.lock:
            return sorted(self._arbs)

    def clear_arbs(self) -> None:
        with self.lock:
            if self._s.function == "ARB":
                raise GeneratorError(-221, "cannot clear arb memory while FUNC ARB is playing")
            self._arbs.clear()
            self._s.arb_name = ""

    # ---- triggers --------------------------------------------------------------------------
    def trigger(self, t_s: float) -> None:
        """The board's trigger pulse rising at model time t_s, cabled to the external trigger input.

        Starts a burst at the selected edge (rising; with TRIG:SLOP NEG the falling one, a pulse width
        later) + delay when burst mode is on and the trigger source is EXT; ignored otherwise, and
        ignored while a burst is still playing (counted in ignored_triggers).
        """
        with self.lock:
            if self._s.burst_on and self._s.trigger_source == "EXT":
                edge_s = t_s + (self._pulse_width_s() if self._s.trigger_slope == "NEG" else 0.0)
                self._start_burst(edge_s + self._s.trigger_delay_s)

    def _pulse_width_s(self) -> float:
        if self._trigger_pulse_s is None:
            from ionm import board

            self._trigger_pulse_s = float(board.load()["trigger"]["out_pulse_us"]) * 1e-6
        return self._trigger_pulse_s

    def bus_trigger(self, forced: bool = False) -> None:
        """*TRG (needs TRIG:SOUR BUS) or TRIGger (forced, any source).

        A command has no model time: the burst starts at the first not-yet-rendered instant plus delay.
        """
        with self.lock:
            if not forced and self._s.trigger_source != "BUS":
                raise GeneratorError(-211, "*TRG needs TRIGger:SOURce BUS")
            if self._s.burst_on:
                self._start_burst(self._frontier_s + self._s.trigger_delay_s)

    def _burst_s(self) -> float:
        return self._s.burst_ncycles / self._s.frequency_hz

    def _start_burst(self, start_s: float) -> None:
        i = bisect.bisect_left(self._bursts, start_s)
        length = self._burst_s()
        if (i > 0 and self._bursts[i - 1] + length > start_s) or (
            i < len(self._bursts) and start_s + length > self._bursts[i]
        ):
            self.ignored_triggers += 1
            return
        self._bursts.insert(i, start_s)
        del self._bursts[:-PENDING_BURSTS_MAX]

    # ---- synthesis -------------------------------------------------------------------------
    def render(self, t0_s: float, n: int, fs_hz: float) -> npt.NDArray[np.float64]:
        """Volts at the generator terminals for n point samples at t0_s + k / fs_hz (0 V while OUTP OFF)."""
        if n < 0 or not fs_hz > 0:
            raise ValueError(f"need n >= 0 and fs_hz > 0, got n={n}, fs_hz={fs_hz}")
        t = _sample_times(t0_s, n, fs_hz)
        with self.lock:
            s = dataclasses.replace(self._s)
            table = self._arbs.get(s.arb_name.upper()) if s.function == "ARB" else None
            bursts = list(self._bursts)
            # Bursts that ended before this block will not be asked for again (the model moves forward).
            if s.burst_on and s.frequency_hz > 0:
                length = self._burst_s()
                self._bursts = [b for b in self._bursts if b + length >= t0_s]
            self._frontier_s = max(self._frontier_s, t0_s + n / fs_hz)
        if not s.output_on:
            return np.zeros(n)
        scale = _load_factor(s.load_ohm)
        offset, half = s.offset_v * scale, s.amplitude_vpp * scale / 2
        if s.function == "DC":
            return np.full(n, offset)
        if not s.burst_on:
            return offset + half * _shape(s, table, s.frequency_hz * t + s.phase_deg / 360.0)
        idle = offset - half if s.function == "PULS" else offset
        out = np.full(n, idle)
        if s.trigger_source == "IMM":
            # Internally triggered bursts every BURS:INT:PER (at least one burst long) from model time 0.
            period = max(s.burst_period_s, s.burst_ncycles / s.frequency_hz)
            starts = np.floor(t / period + EDGE_EPS_CYCLES) * period
            _play(out, s, table, t, starts, offset, half)
        else:
            length = s.burst_ncycles / s.frequency_hz
            for b in bursts:
                if n and b <= t[-1] and b + length >= t[0]:
                    _play(out, s, table, t, np.full(n, b), offset, half)
        return out


def _sample_times(t0_s: float, n: int, fs_hz: float) -> npt.NDArray[np.float64]:
    """Sample instants. Blocks that start on the fs grid use integer sample indices, so that a run
    rendered in one block or in many gives bit-identical times (and samples)."""
    k0 = t0_s * fs_hz
    first = round(k0)
    if abs(k0 - first) <= 1e-6:
        return (first + np.arange(n, dtype=np.float64)) / fs_hz
    return t0_s + np.arange(n, dtype=np.float64) / fs_hz


def _play(
    out: npt.NDArray[np.float64],
    s: Settings,
    table: npt.NDArray[np.float64] | None,
    t: npt.NDArray[np.float64],
    starts: npt.NDArray[np.float64],
    offset: float,
    half: float,
) -> None:
    """Write the burst(s) beginning at starts (one start per sample) into out, where playing."""
    cycles = s.frequency_hz * (t - starts)
    playing = (cycles >= -EDGE_EPS_CYCLES) & (cycles < s.burst_ncycles - EDGE_EPS_CYCLES)
    cycles = np.maximum(cycles[playing], 0.0)
    out[playing] = offset + half * _shape(s, table, cycles + s.phase_deg / 360.0)


def _shape(s: Settings, table: npt.NDArray[np.float64] | None, cycles: npt.NDArray[np.float64]) -> Any:
    """The normalised waveform (-1..1) at the given phase in cycles."""
    frac = np.clip(cycles - np.floor(cycles + EDGE_EPS_CYCLES), 0.0, 1.0)
    if s.function == "SIN":
        return np.sin(2.0 * np.pi * frac)
    if s.function == "SQU":
        return np.where(frac < s.square_duty_pct / 100.0 - EDGE_EPS_CYCLES, 1.0, -1.0)
    if s.function == "PULS":
        high = min(s.pulse_width_s * s.frequency_hz, 1.0)  # a width >= period stays high
        return np.where(frac < high - EDGE_EPS_CYCLES, 1.0, -1.0)
    if table is None:  # cannot happen (FUNC ARB needs a stored arb); stay at the offset, never raise mid-loop
        return np.zeros_like(frac)
    # Sample-and-hold DAC: point i holds for 1/N of the period.
    index = np.minimum(np.floor(frac * table.size + 1e-6).astype(np.int64), table.size - 1)
    return table[index]


# ---- bench divider ---------------------------------------------------------------------------
def divider_ratio(board_def: Mapping[str, Any] | None = None) -> float:
    """Amplifier-input volts per generator-terminal volt of the bench divider (board.json `bench`)."""
    if board_def is None:
        import ionm.board

        board_def = ionm.board.load()
    bench = board_def["bench"]
    top, bottom = float(bench["divider_r_top_ohm"]), float(bench["divider_r_bottom_ohm"])
    if top < 0 or bottom <= 0:
        raise ValueError(f"bench divider needs r_top >= 0 and r_bottom > 0, got {top}, {bottom}")
    return bottom / (top + bottom)


def at_input(volts: Any, board_def: Mapping[str, Any] | None = None) -> Any:
    """Generator-terminal volts (scalar or array) -> volts across the amplifier input."""
    return volts * divider_ratio(board_def)


def generator_volts_for(input_volts: float, board_def: Mapping[str, Any] | None = None) -> float:
    """The generator setting that puts input_volts across the amplifier input (e.g. 50e-6 -> 0.05)."""
    return input_volts / divider_ratio(board_def)
