"""Brainstem auditory evoked potentials (ionm.pipeline.baep): waves on the model at known latencies, averaging and
rejection, the warning rule's two branches and their negatives, no alert on a stable BAEP, and causality, on the
simulated BAEP (ionm_hw.physiology.baep). Seeds 141-149 (the bench uses 9700 on)."""

from __future__ import annotations

import numpy as np
import pytest

from ionm.pipeline import baep
from ionm_hw.physiology import baep as sim

BASELINE_AT_S = 100.0


def _run(rec: sim.BaepRecording, stop: int | None = None) -> baep.BaepMonitor:
    x = rec.sweeps_uv[0, :stop]
    mon = baep.BaepMonitor(rec.fs_hz, rec.pre_samples, rec.rate_hz)
    nb = int(BASELINE_AT_S * rec.rate_hz)
    for i in range(0, x.shape[0], 50):
        if mon.baseline is None and i >= nb:
            mon.set_baseline(2000)
        mon.push(x[i:i + 50])
    return mon


def _alerts(mon: baep.BaepMonitor) -> list[baep.BaepEvent]:
    return [e for e in mon.events if e.kind != "recovered"]


def test_waves_marked_at_the_model_latencies_with_interpeak_intervals():
    clean = sim.render(10.0, [], 1, noise_uv=0.0, artefact_rate=0.0)
    waves, ipl = baep.mark_waves(baep.average(clean.sweeps_uv[0]).mean_uv, clean.fs_hz, clean.pre_samples)
    assert [waves[w].latency_ms for w in ("I", "III", "V")] == pytest.approx([1.7, 3.9, 5.7], abs=0.1)
    assert ipl["I-III"] == pytest.approx(2.2, abs=0.1)
    assert ipl["III-V"] == pytest.approx(1.8, abs=0.1)
    assert ipl["I-V"] == pytest.approx(4.0, abs=0.1)
    assert waves["V"].amplitude_uv > waves["I"].amplitude_uv > 0.1
    # stretched VIIIth nerve: III and V 1 ms later, I (cochlear) stays
    moved = sim.render(10.0, [{"kind": "retraction", "onset_s": 0.0, "ramp_s": 0.01, "latency_ms": 1.0}], 1,
                       noise_uv=0.0, artefact_rate=0.0)
    waves, ipl = baep.mark_waves(baep.average(moved.sweeps_uv[0]).mean_uv, moved.fs_hz, moved.pre_samples)
    assert waves["I"].latency_ms == pytest.approx(1.7, abs=0.1)
    assert waves["V"].latency_ms == pytest.approx(6.7, abs=0.1)
    assert ipl["I-V"] == pytest.approx(5.0, abs=0.1)


def test_monitor_marks_the_waves_of_its_running_average():
    rec = sim.render(300.0, [{"kind": "retraction", "onset_s": 150.0, "ramp_s": 10.0, "latency_ms": 1.0}], 148)
    mon = _run(rec)
    assert mon.baseline is not None
    assert mon.baseline.waves["V"].latency_ms == pytest.approx(5.7, abs=0.2)
    avg, waves, ipl = mon.marks(2000)
    assert avg.n == 2000
    assert waves["V"].latency_ms == pytest.approx(6.7, abs=0.2)
    assert ipl["I-V"] - mon.baseline.intervals["I-V"] == pytest.approx(1.0, abs=0.3)
    assert mon.n_rejected > 0 and mon.n_rejected < 0.03 * mon.n_seen


def test_plus_minus_reference_keeps_the_noise_and_cancels_the_response():
    rec = sim.render(60.0, [], 141, artefact_rate=0.0)
    avg = baep.average(rec.sweeps_uv[0])
    clean = sim.render(10.0, [], 1, noise_uv=0.0, artefact_rate=0.0)
    truth = baep.average(clean.sweeps_uv[0]).mean_uv
    # the average's noise is the sweeps' noise over sqrt(n); the ± reference measures it without the response
    assert avg.noise_uv == pytest.approx(sim.NOISE_UV / np.sqrt(avg.n), rel=0.2)
    assert float(np.std(avg.mean_uv - truth)) == pytest.approx(avg.noise_uv, rel=0.3)
    assert float(np.abs(baep.average(clean.sweeps_uv[0]).plus_minus_uv).max()) < 0.05
    assert float(np.std(avg.half_a_uv - avg.half_b_uv)) == pytest.approx(2 * avg.noise_uv, rel=0.3)


def test_artefact_sweeps_are_rejected():
    quiet = sim.render(30.0, [], 142, artefact_rate=0.0)
    noisy = sim.render(30.0, [], 142, artefact_rate=0.2)
    assert baep.reject(quiet.sweeps_uv[0]).mean() > 0.99
    assert baep.reject(noisy.sweeps_uv[0]).mean() == pytest.approx(0.8, abs=0.05)


def test_alert_rule_branches_and_negatives():
    se1 = 3.0  # one sweep's standard error: 1000 sweeps put the baseline's V ~10 of its errors above noise
    assert baep.criterion(baep.WindowState(1000, 0.2, 0.05, 0.1), se1) == "loss"
    assert baep.criterion(baep.WindowState(1000, 1.2, 0.35, 0.08), se1) == "latency_amplitude"
    assert baep.criterion(baep.WindowState(1000, 1.5, 1.0, 0.1), se1) is None  # +1.5 ms alone
    assert baep.criterion(baep.WindowState(1000, 0.0, 0.35, 0.08), se1) is None  # -65 % alone
    assert baep.criterion(baep.WindowState(1000, 0.9, 0.35, 0.08), se1) is None  # +0.9 ms with -65 %
    assert baep.criterion(baep.WindowState(1000, 1.2, 0.48, 0.08), se1) is None  # -52 % but not with confidence
    # a V too noisy to see in a short window is not called lost there
    assert baep.criterion(baep.WindowState(100, 0.0, 0.05, 0.3), se1) is None


@pytest.mark.parametrize("event, expect", [
    ({"kind": "loss", "onset_s": 200.0, "ramp_s": 2.0}, True),
    ({"kind": "retraction", "onset_s": 200.0, "ramp_s": 20.0, "latency_ms": 1.5, "amplitude": 0.3}, True),
    ({"kind": "retraction", "onset_s": 200.0, "ramp_s": 20.0, "latency_ms": 1.5, "amplitude": 1.0}, False),
    ({"kind": "retraction", "onset_s": 200.0, "ramp_s": 20.0, "latency_ms": 0.0, "amplitude": 0.5}, False),
])
def test_changes_on_the_simulated_baep(event, expect):
    for seed in (143, 144):
        rec = sim.render(420.0, [event], seed)
        alerts = _alerts(_run(rec))
        if expect:
            assert alerts and all(e.t_s > 200.0 for e in alerts), (seed, alerts)
            assert alerts[0].t_s - 220.0 < 90.0
        else:
            assert not alerts, (seed, alerts)


def test_no_alert_on_a_stable_baep():
    for seed in (145, 146):
        assert _alerts(_run(sim.render(900.0, [], seed))) == []


def test_decisions_are_causal():
    rec = sim.render(400.0, [{"kind": "loss", "onset_s": 250.0, "ramp_s": 2.0}], 147)
    full = _run(rec)
    cut = int(285.0 * rec.rate_hz)
    part = _run(rec, stop=cut)
    assert full.events and full.events[0].sweep > cut  # the alert comes after the cut ...
    early = [e for e in full.events if e.sweep <= cut]
    assert part.events == early
    n = len(part.states)
    assert [s for _, s in full.states[:n]] == [s for _, s in part.states]  # ... and everything before it agrees
    assert full.states[:n] == part.states


def test_scenarios_load_and_meet_their_description():
    names = sim.scenario_names()
    assert {"baep_stable", "mvd_cn8_retraction", "cpa_tumour_loss"} <= set(names)
    for name in names:
        sc = sim.load_scenario(name)
        assert sc["name"] == name and sc["duration_s"] > BASELINE_AT_S + 200
        assert set(sc["channels"]) <= set(sim.WAVES)
        t = np.arange(0.0, sc["duration_s"], 1.0)
        sim.truth(t, sc["events"])  # valid kinds
    t = np.arange(0.0, 1100.0, 1.0)
    shift, gain, _ = sim.truth(t, sim.load_scenario("mvd_cn8_retraction")["events"])
    met = np.flatnonzero((shift >= 1.0) & (gain <= 0.5))
    assert t[met[0]] == pytest.approx(571.0, abs=1.0) and t[met[-1]] < 900.0  # recovers on release
    shift, gain, _ = sim.truth(t[:900], sim.load_scenario("cpa_tumour_loss")["events"])
    assert gain[602] == 0.0 and gain[599] == 1.0
    with pytest.raises(ValueError):
        sim.truth(t, [{"kind": "tumour", "onset_s": 1.0}])


RETRACTION_RELEASED = {"kind": "retraction", "onset_s": 200.0, "ramp_s": 60.0, "end_s": 400.0, "recovery_s": 60.0,
                       "latency_ms": 1.5, "amplitude": 0.3}


@pytest.mark.parametrize("seed", [141, 143, 148])
def test_one_alert_per_retraction_and_one_recovery_after_the_release(seed):
    """V +1.5 ms at 30 % from 260 s to the release at 400 s, back by 460 s: one alert, one recovery, no storm
    (windows holding the plateau's sweeps must not re-alert once V is back, nor a recovery be called on the
    plateau because one update's windows missed the criterion)."""
    mon = _run(sim.render(700.0, [RETRACTION_RELEASED], seed))
    kinds = [(e.kind, round(e.t_s)) for e in mon.events]
    assert len(_alerts(mon)) == 1, kinds
    rec = [e for e in mon.events if e.kind == "recovered"]
    assert len(rec) == 1 and rec[0].t_s > 400.0, kinds


@pytest.mark.parametrize("seed", [148, 149])
def test_a_lost_wave_v_is_never_called_recovered(seed):
    mon = _run(sim.render(900.0, [{"kind": "loss", "onset_s": 200.0, "ramp_s": 2.0}], seed))
    assert [e.kind for e in mon.events] == ["loss"], [(e.kind, round(e.t_s)) for e in mon.events]
