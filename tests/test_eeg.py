"""Quantitative EEG (ionm.pipeline.eeg): every index against signals of known spectra, and the carotid-clamp
judgement on the simulated EEG (ionm_hw.physiology.eeg)."""

from __future__ import annotations

import numpy as np
import pytest

from ionm.pipeline import eeg
from ionm_hw.physiology import eeg as sim

FS = 250.0
T = np.arange(int(eeg.EPOCH_S * FS)) / FS
CH = ["F3-C3", "C3-P3", "P3-O1", "T3-C3", "F4-C4", "C4-P4", "P4-O2", "T4-C4"]


def sine(f_hz: float, amp_uv: float) -> np.ndarray:
    return amp_uv * np.sin(2 * np.pi * f_hz * T)


def test_band_powers_and_ratios_of_known_sinusoids():
    # 10 Hz at 20 µV peak: 200 µV² of alpha; 2 Hz at 20 µV: 200 µV² of delta
    x = np.stack([sine(10, 20), sine(2, 20), sine(10, 20) + sine(2, 20), sine(20, 10)])
    ind = eeg.indices(x, FS)
    assert ind.band_uv2["alpha"][0] == pytest.approx(200.0, rel=0.1)
    assert ind.band_uv2["delta"][1] == pytest.approx(200.0, rel=0.1)
    assert ind.relative_alpha[0] == pytest.approx(1.0, abs=0.02)
    assert ind.relative_alpha[2] == pytest.approx(0.5, abs=0.03)
    assert ind.alpha_delta[2] == pytest.approx(1.0, rel=0.1)
    assert ind.band_uv2["beta"][3] == pytest.approx(50.0, rel=0.1)
    assert ind.sef95_hz[0] == pytest.approx(10.0, abs=1.0)
    assert ind.sef95_hz[3] == pytest.approx(20.0, abs=1.0)
    assert ind.sef95_hz[2] == pytest.approx(10.0, abs=1.0)  # 95 % of the power is below the 10 Hz line


def test_burst_suppression_ratio_counts_only_long_quiet_stretches():
    t = np.arange(int(10 * FS)) / FS
    bursts = 40 * np.sin(2 * np.pi * 6 * t)
    env = np.ones_like(t)
    env[(t >= 2) & (t < 5)] = 0  # 3 s suppressed
    env[(t >= 7) & (t < 7.3)] = 0  # 0.3 s: too short to count
    x = bursts * env + np.random.default_rng(1).normal(0, 0.5, t.size)
    bsr = eeg.burst_suppression_ratio(x[None, :], FS)[0]
    assert bsr == pytest.approx(0.3, abs=0.04)
    assert eeg.burst_suppression_ratio(bursts[None, :], FS)[0] < 0.02


def test_hemispheric_asymmetry_of_homologous_pairs():
    total = np.array([300.0, 100.0, 100.0, 100.0, 100.0, 100.0, 100.0, 100.0])
    asym = eeg.asymmetry(total, CH)
    assert asym["F3-C3/F4-C4"] == pytest.approx(0.5)
    assert asym["C3-P3/C4-P4"] == pytest.approx(0.0)
    assert [eeg.side_of(n) for n in ("F3-C3", "C4-P4", "Cz-Pz", "C3-C4")] == ["L", "R", None, None]


def _run(rec: sim.EegRecording, baseline_at_s: float = 240.0) -> eeg.EegMonitor:
    mon = eeg.EegMonitor(rec.fs_hz, rec.channel_names)
    n = int(rec.fs_hz)  # pushed a second at a time, as a live stream would be
    for i in range(0, rec.samples_uv.shape[1], n):
        mon.push(rec.samples_uv[:, i:i + n])
        if mon.baseline is None and mon.epochs and mon.epochs[-1].t_s >= baseline_at_s:
            mon.set_baseline(60.0)
    return mon


@pytest.mark.parametrize("seed", [131, 132])
def test_a_clamp_that_starves_one_hemisphere_is_ischaemia_on_that_side_then_recovers(seed):
    sc = sim.load_scenario("cea_clamp_ischaemia")
    mon = _run(sim.render_scenario("cea_clamp_ischaemia", seed))
    assert [(e.kind, e.side) for e in mon.events] == [("ischaemia", "L"), ("recovered", "L")]
    assert sc["clamp_s"] < mon.events[0].t_s <= sc["clamp_s"] + 30  # seconds after the clamp
    assert mon.events[1].t_s > sc["shunt_s"]


@pytest.mark.parametrize("seed", [133, 134])
def test_an_anaesthetic_bolus_is_global_slowing_not_ischaemia(seed):
    mon = _run(sim.render_scenario("cea_anaesthetic_bolus", seed))
    assert [(e.kind, e.side) for e in mon.events] == [("global", None), ("recovered", None)]
    during = [e for e in mon.epochs if 400 <= e.t_s <= 470]
    assert np.median([np.median(e.bsr) for e in during]) > 0.2  # burst suppression is measured


def test_a_stable_eeg_raises_nothing_for_half_an_hour():
    rec = sim.render(1800.0, FS, CH, [], 135)
    assert _run(rec).events == []


def test_the_judgement_needs_a_baseline_and_says_so():
    mon = eeg.EegMonitor(FS, CH)
    with pytest.raises(ValueError, match="no EEG epoch"):
        mon.set_baseline(0.0)
