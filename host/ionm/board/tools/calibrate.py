"""`ionm calibrate`: measure a board's per-channel amplifier gain and offset and its stimulator outputs'
current gain, refuse implausible results, store the calibration on the board (cal-write) and on the host,
and verify it with a second pass.

- Offset: inputs shorted inside the ADS1299; the mean is the channel's offset as the host must subtract it.
- Gain: the ADS1299's internal test signal (±VREF/2.4 mV square wave) passes through the same PGA as an
  electrode; its measured amplitude against the nominal is the channel's gain error. With --generator, a
  sine from the bench generator through the divider is the reference instead (BENCH-WIRING.md; the test
  signal's own accuracy is that of the reference voltage), for the channels wired to it.
- Stimulator: pulses into the bench load on every output; the board's current-sense readback against the
  DAC setting gives the output's gain (and an offset, checked against its bound but not correctable).

Calibrated at gain 24, the gain IONM recordings use; the correction applies to the channel at every gain.
`ionm calibrate --show` prints what the board holds.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

RATE_HZ = 2000  # one rate for every capture (sinc³ droop at 10 Hz: 0.01 %)
GAIN = 24
TEST_SIGNAL_S = 3.0  # three periods of the ~0.98 Hz test signal
SHORTED_S = 1.0
GENERATOR_HZ = 10.0
GENERATOR_VPP_UV = 1000.0  # 1 mVpp at the input: 1 Vpp at the generator, well above its fixed error
GENERATOR_S = 2.0
STIM_LEVELS_UA = [5000, 10000, 20000]
STIM_PULSES = 3


@dataclass
class Outcome:
    serial: str
    calibration: Any  # ionm.board.tools.calibration.Calibration
    reference: str  # "generator" | "test signal" (per channel in channel_reference)
    channel_reference: list[str]
    adc: dict[str, Any]  # measured: offset_uv, amplitude_uv, nominal_uv per channel
    stim: dict[str, Any]  # measured: slope, intercept_ua per output
    verification: list[dict[str, Any]] = field(default_factory=list)  # {name, passed, value, limit, unit, detail}
    stored: str | None = None  # host file
    retries: list[str] = field(default_factory=list)  # captures taken again, and why

    @property
    def verified(self) -> bool:
        return all(v["passed"] for v in self.verification)


class CalibrationRefused(Exception):
    pass


def measure_adc(session: Any, gen: Any, defn: dict[str, Any]) -> tuple[list[int], list[int], list[str], dict[str, Any]]:
    """(gain ppm, offset nV, reference per channel, measurements) from raw captures."""
    from ionm.board.tools import measure

    zero, _uv = measure.shorted(session, rate_hz=RATE_HZ, gain=GAIN, seconds=SHORTED_S)
    ts = measure.test_signal(session, rate_hz=RATE_HZ, gain=GAIN, seconds=TEST_SIGNAL_S)
    measured, nominal = ts.amplitude_uv.copy(), [ts.nominal_uv] * len(ts.channels)
    reference = ["test signal"] * len(ts.channels)
    ext = None
    if gen is not None:
        wired = [c for c in defn["bench"]["generator_channels"] if c in ts.channels]
        gen.sine(GENERATOR_HZ, GENERATOR_VPP_UV * 1e-6)
        try:
            ext = measure.sine(session, rate_hz=RATE_HZ, gain=GAIN, seconds=GENERATOR_S, freq_hz=GENERATOR_HZ,
                               input_vpp_uv=GENERATOR_VPP_UV, channels=wired)
        finally:
            gen.off()
        for k, ch in enumerate(ext.channels):
            i = ts.channels.index(ch)
            measured[i], nominal[i], reference[i] = ext.amplitude_uv[k], ext.nominal_uv, "generator"
    gain_ppm, offset_nv = [], []
    for i in range(len(ts.channels)):
        ratio = nominal[i] / measured[i] if measured[i] > 0 else float("inf")
        gain_ppm.append(int(round((ratio - 1.0) * 1e6)) if ratio != float("inf") else 10**9)
        offset_nv.append(int(round(zero.offset_uv[i] * 1000)))
    info = {"channels": ts.channels, "offset_uv": zero.offset_uv.round(3).tolist(),
            "noise_uvrms": zero.rms_uv.round(4).tolist(),
            "test_signal_uv": ts.amplitude_uv.round(3).tolist(), "test_signal_nominal_uv": ts.nominal_uv,
            "generator_uv": None if ext is None else dict(zip(ext.channels, ext.amplitude_uv.round(3).tolist(),
                                                              strict=True)),
            "generator_nominal_uv": None if ext is None else ext.nominal_uv}
    return gain_ppm, offset_nv, reference, info


def measure_stim(session: Any, defn: dict[str, Any], held_ppm: list[int]) -> tuple[list[int], dict[str, Any]]:
    """(stim gain ppm per output, measurements). The fit is against the DAC setting the board made, so the
    result does not depend on the calibration the board held before."""
    from ionm.board.tools import measure

    outputs = int(defn["stimulator"]["outputs"])
    rb = measure.stimulator_readback(session, outputs=outputs, levels_ua=STIM_LEVELS_UA, pulses=STIM_PULSES,
                                     rate_hz=RATE_HZ, stim_gain_ppm=held_ppm or None)
    ppm, slopes, intercepts = [], [], []
    for o in range(outputs):
        slope, intercept = rb.fit(o)
        slopes.append(round(slope, 6))
        intercepts.append(round(intercept, 1))
        ppm.append(int(round((1.0 / slope - 1.0) * 1e6)) if slope > 0 else 10**9)
    return ppm, {"levels_ua": STIM_LEVELS_UA, "slope": slopes, "intercept_ua": intercepts,
                 "readback_ua": rb.readback_ua.round(1).tolist()}


def explain_adc(gain_ppm: list[int], reference: list[str], adc: dict[str, Any], defn: dict[str, Any]) -> None:
    """OutOfBounds naming each channel whose gain correction is implausible, with what was measured."""
    from ionm.board.tools.calibration import OutOfBounds

    bound = defn["adc"]["calibration_bounds"]["gain_correction_max"]
    bad = []
    for i, ch in enumerate(adc["channels"]):
        if abs(gain_ppm[i]) <= bound * 1e6:
            continue
        if reference[i] == "generator":
            got, nominal = adc["generator_uv"][ch], adc["generator_nominal_uv"]
        else:
            got, nominal = adc["test_signal_uv"][i], adc["test_signal_nominal_uv"]
        what = ("no signal: a dead channel or an open input" if got < 0.01 * nominal else
                "a gain correction of %+.1f %%" % (gain_ppm[i] / 1e4))
        bad.append("ADC channel %d: the %s reads %.1f µV against %.1f µV nominal, %s; the plausible bound is "
                   "±%.0f %% (board.json adc.calibration_bounds.gain_correction_max)"
                   % (ch, reference[i], got, nominal, what, bound * 100))
    if bad:
        raise OutOfBounds("; ".join(bad))


def check_offsets(stim: dict[str, Any], defn: dict[str, Any]) -> None:
    from ionm.board.tools.calibration import OutOfBounds

    bound = defn["stimulator"]["calibration_bounds"]["offset_max_ua"]
    bad = ["stimulator output %d: offset %+.0f µA is outside ±%d µA (board.json stimulator.calibration_bounds."
           "offset_max_ua)" % (o, b, bound) for o, b in enumerate(stim["intercept_ua"]) if abs(b) > bound]
    if bad:
        raise OutOfBounds("; ".join(bad))


def verify(session: Any, gen: Any, cal: Any, reference: list[str], stored: Any, defn: dict[str, Any],
           tol: dict[str, float]) -> list[dict[str, Any]]:
    """Second pass with the calibration read back from the board applied: the gain reference and the
    shorted inputs now read their nominal values, and the outputs deliver what is requested."""
    import numpy as np

    from ionm.board.tools import measure

    checks = []
    same = stored.to_board() == cal.to_board()
    checks.append({"name": "stored", "passed": same, "value": None, "limit": None, "unit": "",
                   "detail": "cal-read returns what was written" if same else "cal-read differs from what was written"})
    zero, _uv = measure.shorted(session, rate_hz=RATE_HZ, gain=GAIN, seconds=SHORTED_S, cal=stored)
    worst = int(np.argmax(np.abs(zero.offset_uv)))
    checks.append(_check("adc offset", float(abs(zero.offset_uv[worst])), tol["adc_offset_uv"], "µV",
                         "channel %d" % zero.channels[worst]))
    ts = measure.test_signal(session, rate_hz=RATE_HZ, gain=GAIN, seconds=TEST_SIGNAL_S, cal=stored)
    err = (ts.amplitude_uv / ts.nominal_uv - 1.0) * 100.0
    idx = [i for i, r in enumerate(reference) if r == "test signal"]
    if gen is not None and any(r == "generator" for r in reference):
        wired = [ts.channels[i] for i, r in enumerate(reference) if r == "generator"]
        gen.sine(GENERATOR_HZ, GENERATOR_VPP_UV * 1e-6)
        try:
            ext = measure.sine(session, rate_hz=RATE_HZ, gain=GAIN, seconds=GENERATOR_S, freq_hz=GENERATOR_HZ,
                               input_vpp_uv=GENERATOR_VPP_UV, cal=stored, channels=wired)
        finally:
            gen.off()
        for k, ch in enumerate(ext.channels):
            err[ts.channels.index(ch)] = (ext.amplitude_uv[k] / ext.nominal_uv - 1.0) * 100.0
        idx = list(range(len(ts.channels)))
    if idx:
        w = max(idx, key=lambda i: abs(err[i]))
        checks.append(_check("adc gain", float(abs(err[w])), tol["adc_gain_pct"], "%",
                             "channel %d against its %s" % (ts.channels[w], reference[w])))
    outputs = int(defn["stimulator"]["outputs"])
    rb = measure.stimulator_readback(session, outputs=outputs, levels_ua=STIM_LEVELS_UA, pulses=STIM_PULSES,
                                     rate_hz=RATE_HZ, stim_gain_ppm=stored.stim_gain_ppm)
    slopes = [rb.fit(o, against="request")[0] for o in range(outputs)]
    w = int(np.argmax([abs(s - 1.0) for s in slopes]))
    checks.append(_check("stimulator gain", abs(slopes[w] - 1.0) * 100.0, tol["stim_gain_pct"], "%",
                         "output %d: readback/request slope %.5f" % (w, slopes[w])))
    return checks


def _check(name: str, value: float, limit: float, unit: str, detail: str) -> dict[str, Any]:
    return {"name": name, "passed": bool(value <= limit), "value": round(value, 6), "limit": limit, "unit": unit,
            "detail": detail}


def calibrate(port: str, *, generator: str | None = None, operator: str, store: Path | None = None) -> Outcome:
    """Measure, check bounds, write to the board, verify, keep the host copy. Raises OutOfBounds (nothing
    written), or returns an Outcome whose verification may have failed."""
    from ionm import board
    from ionm.board.tools import calibration as calmod, limits
    from ionm.board.tools.instrument import Generator
    from ionm.board.tools.session import ToolSession
    from ionm.protocol import messages as m

    defn = board.load()
    tol = limits.bench_limits(defn)[0]["calibration_verify"]
    gen = Generator(generator) if generator else None
    try:
        with ToolSession(port) as session:
            held = session.calibration()
            gain_ppm, offset_nv, reference, adc = measure_adc(session, gen, defn)
            explain_adc(gain_ppm, reference, adc, defn)  # refuse before anything is written, naming the channel
            stim_ppm, stim = measure_stim(session, defn, held.stim_gain_ppm)
            check_offsets(stim, defn)
            cal = calmod.Calibration(date=calmod.now_iso(), operator=operator, adc_gain_ppm=gain_ppm,
                                     adc_offset_nv=offset_nv, stim_gain_ppm=stim_ppm)
            calmod.check_bounds(cal, defn)  # the bounds the board enforces on cal-write, with what was measured
            outcome = Outcome(session.serial, cal, "generator" if "generator" in reference else "test signal",
                              reference, adc, stim)
            session.request(m.CAL_WRITE, cal.to_board())
            stored = session.calibration()
            outcome.verification = verify(session, gen, cal, reference, stored, defn, tol)
            info = session.info
            outcome.retries = session.retries
    finally:
        if gen is not None:
            gen.close()
    outcome.stored = str(calmod.save(cal, outcome.serial, store, extra={
        "reference": reference, "adc": adc, "stimulator": stim, "verification": outcome.verification,
        "verified": outcome.verified, "board": info["board"], "firmware": info["firmware"],
        "capture_retries": outcome.retries}))
    return outcome
