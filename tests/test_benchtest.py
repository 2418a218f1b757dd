"""`ionm bench` on the virtual board with the simulated generator: a healthy board passes every check and
the report holds what it measured; a dead channel, or a 5 % gain error left uncalibrated, fails with the
check and the channel named. Plus the estimators the checks rest on, against known truth."""

from __future__ import annotations

import argparse
import json
import time

import numpy as np
import pytest

from ionm.board.tools import analysis, bench as benchtest, limits
from ionm.board.tools.progress import ProgressBar
from ionm.cli import bench as bench_cmd


def run_bench(vb, capsys, *extra: str) -> tuple[int, str, str]:
    p = argparse.ArgumentParser()
    bench_cmd.add_arguments(p)
    status = bench_cmd.run(p.parse_args(["--port", vb.device, "--generator", vb.generator_resource, *extra]))
    out, err = capsys.readouterr()
    return status, out, err


@pytest.fixture
def bench_board(request, tmp_path):
    from ionm.board.virtual import VirtualBoard

    log = open(tmp_path / "board.stderr", "w")
    with VirtualBoard(bench=True, generator=True, faults=getattr(request, "param", []), stderr=log) as vb:
        yield vb
    log.close()


GAINS = (1, 2, 4, 6, 8, 12, 24)
EXPECTED_CHECKS = {"stimulator_accuracy", "noise", "averaging_slope", "mains_rejection", "channel_match",
                   "upper_3db", "passband_flatness", "timing"} | {"amplitude_gain_%d" % g for g in GAINS}


def test_a_healthy_board_passes_and_the_report_says_what_was_measured(bench_board, tmp_path, capsys):
    status, out, err = run_bench(bench_board, capsys, "--report", str(tmp_path / "rep"))
    assert status == 0, out + err
    report = json.loads((tmp_path / "rep" / "report.json").read_text())
    assert report["passed"] is True and report["board_serial"] == "SIM-0001" and report["partial"] is False
    checks = {c["name"]: c for c in report["checks"]}
    assert set(checks) == EXPECTED_CHECKS
    for c in report["checks"]:
        assert {"name", "passed", "value", "limit", "unit"} <= set(c) and c["passed"], c
    lim = limits.bench_limits()[0]
    assert checks["noise"]["limit"] == [lim["noise_uvrms_min"], lim["noise_uvrms_max"]]
    # the modelled unit: no filter response, so no −3 dB point below Nyquist; 1/√N averaging; exact timing
    assert checks["upper_3db"]["value"] == benchtest.RESPONSE_HZ[-1]
    assert "no −3 dB point" in checks["upper_3db"]["detail"]
    assert checks["averaging_slope"]["value"] == pytest.approx(-0.5, abs=0.05)
    assert checks["timing"]["value"] == 0
    assert "PASSED" in (tmp_path / "rep" / "report.txt").read_text() and "PASSED" in out
    for png in ("frequency_response.png", "noise.png"):
        assert (tmp_path / "rep" / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.mark.slow
@pytest.mark.parametrize("bench_board", [["dead:5"]], indirect=True)
def test_a_dead_channel_fails_and_is_named(bench_board, tmp_path, capsys):
    # (the healthy board's test runs every group; the groups that can see a channel suffice here)
    status, out, _err = run_bench(bench_board, capsys, "--report", str(tmp_path / "rep"),
                                  "--only", "noise,amplitude,timing")
    assert status == 1 and "FAILED" in out and "partial bench: only noise, amplitude, timing" in out
    report = json.loads((tmp_path / "rep" / "report.json").read_text())
    assert report["passed"] is False and report["partial"] is True
    assert {c["name"] for c in report["checks"]} == EXPECTED_CHECKS - {
        "stimulator_accuracy", "upper_3db", "passband_flatness"}
    failed = {c["name"]: c for c in report["checks"] if not c["passed"]}
    assert "amplitude_gain_24" in failed and failed["amplitude_gain_24"]["value"] == pytest.approx(100.0)
    for c in failed.values():
        assert c["channels_failed"] == [5], c  # the dead channel, and no other
    assert {"noise", "timing", "channel_match"} <= set(failed)  # no noise at all is not a working amplifier


@pytest.mark.slow
@pytest.mark.parametrize("bench_board", [["gain:3:0.05"]], indirect=True)
def test_an_uncalibrated_gain_error_fails_and_is_named(bench_board, tmp_path, capsys):
    status, out, _err = run_bench(bench_board, capsys, "--json", "--only", "amplitude")
    assert status == 1
    report = json.loads(out)
    assert report["groups"] == ["amplitude"] and report["partial"] is True
    failed = {c["name"]: c for c in report["checks"] if not c["passed"]}
    assert set(failed) == {"amplitude_gain_%d" % g for g in GAINS} | {"channel_match"}, failed
    for c in failed.values():
        assert c["channels_failed"] == [3]
    assert failed["amplitude_gain_24"]["value"] == pytest.approx(5.0, abs=0.1)


def test_an_unknown_group_of_checks_is_refused_before_the_board_is_touched(tmp_path, capsys):
    p = argparse.ArgumentParser()
    bench_cmd.add_arguments(p)
    status = bench_cmd.run(p.parse_args(["--port", str(tmp_path / "no-such-port"), "--generator", "TCPIP::x",
                                         "--only", "noise,gains"]))
    assert status == 2 and "no group of checks called gains" in capsys.readouterr().err


# ---- estimators against known truth ---------------------------------------------------------------------------
def test_sine_fit_recovers_amplitude_despite_a_clock_mismatch():
    fs, f_true = 8000.0, 40.0 * (1 + 200e-6)  # a generator 200 ppm fast against the board's clock
    t = np.arange(16000) / fs
    x = 123.4 * np.sin(2 * np.pi * f_true * t + 0.7) + 5.0
    three = analysis.sine_fit(x, fs, 40.0, refine=False)
    four = analysis.sine_fit(x, fs, 40.0)
    assert four.amplitude == pytest.approx(123.4, rel=1e-6) and four.frequency_hz == pytest.approx(f_true, rel=1e-8)
    assert four.offset == pytest.approx(5.0, abs=1e-6)
    assert abs(three.amplitude / 123.4 - 1) > 10 * abs(four.amplitude / 123.4 - 1)  # what the refinement buys


def test_sine_fit_of_silence_is_zero():
    assert analysis.sine_fit(np.zeros(2000), 2000.0, 40.0).amplitude == 0.0


def test_square_levels_ignore_the_edges():
    x = np.where((np.arange(4096) // 512) % 2 == 0, 1875.0, -1875.0) + 12.0
    x[511:514] = 0.0  # a smeared edge, as the sinc filter makes it
    lv = analysis.square_levels(x)
    assert lv.amplitude == pytest.approx(1875.0) and lv.offset == pytest.approx(12.0) and lv.transitions == 7


def test_averaging_slope_of_white_noise_is_minus_one_half():
    rng = np.random.default_rng(3)
    sweeps = rng.normal(0, 1, (64, 400, 8))
    rms = analysis.averaging_rms(sweeps, [1, 2, 4, 8, 16, 32, 64])
    assert analysis.averaging_slope(rms) == pytest.approx(-0.5, abs=0.03)
    same = np.repeat(rng.normal(0, 1, (1, 400, 8)), 64, axis=0)  # a signal locked to the sweeps: no gain
    assert analysis.averaging_slope(analysis.averaging_rms(same, [1, 4, 16, 64])) == pytest.approx(0.0, abs=1e-9)


def test_upper_3db_of_a_sinc3_response():
    fs = 8000.0
    f = np.linspace(10, 3990, 400)
    gain_db = 20 * np.log10(np.abs(np.sinc(f / fs)) ** 3)
    assert analysis.upper_3db(f, gain_db) == pytest.approx(0.262 * fs, rel=0.01)  # the ADS1299's figure
    assert analysis.upper_3db(f, np.zeros_like(f)) is None


def test_progress_bar_writes_one_line_when_not_a_terminal(capsys):
    import io

    stream = io.StringIO()
    with ProgressBar("flash", 1000, stream=stream) as bar:
        for n in range(0, 1001, 100):
            bar.update(n)
    text = stream.getvalue()
    assert text.count("\n") == 1 and "\r" not in text and "100% 1000/1000 B" in text


def test_a_capture_with_a_gap_is_refused_even_when_the_gap_completes_it():
    """The loss accounting of a capture, fed blocks directly: a gap is a loss (retry=True), never data."""
    import threading

    from ionm.board import link as ln
    from ionm.board.tools.session import CaptureError, ToolSession

    s = object.__new__(ToolSession)  # no board: only the data path
    s._cv, s.events, s._blocks, s._cfg, s._base, s._expected, s._lost = threading.Condition(), [], [], 7, None, 0, 0
    block = np.zeros((50, 2), dtype=np.int32)
    s._on_data(ln.DataBlock(7, 1000, 0, block))  # the first block sets the origin, wherever it starts
    s._on_data(ln.DataBlock(8, 1050, 0, block))  # another configuration's block: ignored
    s._on_data(ln.DataBlock(7, 1050, 0, block))
    s._wait(lambda: s._expected >= 1100, time.monotonic() + 1, 0, 1)  # contiguous: fine
    s._on_data(ln.DataBlock(7, 1150, 0, block))  # 50 samples per channel missing
    with pytest.raises(CaptureError) as err:
        s._wait(lambda: s._expected >= 1200, time.monotonic() + 1, 0, 1)
    assert err.value.retry and "50 samples per channel lost" in str(err.value)
    assert [b.first_index for b in s._blocks] == [1000, 1050, 1150]
