"""Recurrent laryngeal / vagus nerve monitoring (ionm.pipeline.rln) on the free-run generator's vagal responses."""

from __future__ import annotations

import json

import numpy as np
import pytest
from conftest import run_ionm

from ionm.pipeline import edffile, emg, rln
from ionm_hw.physiology import freerun

FS = 8000.0
NAMES = ["L vocalis ET", "R vocalis ET"]
SCENARIO = "hardware/scenarios/cionm/thyroid_vagal_traction.json"


def _vagal(duration_s: float, course: list[list[float]], *, peak_uv: float = 900.0, extra: list | None = None) -> dict:
    return {"kind": "vagal", "channel": 0, "times_s": list(np.arange(0.5, duration_s, 1.0)), "peak_uv": peak_uv,
            "latency_ms": 8.0, "course": course, **({} if extra is None else extra[0])}


def _run(script: list[dict], duration_s: float, seed: int, **kw) -> tuple[freerun.Recording, rln.VagalMonitor]:
    rec = freerun.render(duration_s, FS, 2, script, seed, **kw)
    return rec, rln.evaluate_continuous(rec.samples_uv, FS, NAMES, rec.vagal_times_s)


def test_the_vocalis_response_is_measured_as_scripted():
    rec, mon = _run([_vagal(30.0, [[0, 1.0, 1.0], [30, 0.5, 1.2]])], 30.0, 121, noise_uv=0.0,
                    spontaneous_per_min=0.0)
    truth = [t for t in rec.truth if t.kind == "vagal"]
    assert len(truth) == len(mon.responses) == 30
    for t, r in zip(truth, mon.responses, strict=True):
        assert r.amplitude_uv[0] == pytest.approx(t.peak_uv, rel=0.02)
        assert abs(r.latency_ms[0] - t.latency_ms) <= 1000 / FS  # one sample
        assert r.amplitude_uv[1] < 0.02 * t.peak_uv  # the other side: only the artefact's tail


def test_traction_raises_the_combined_event_before_loss_of_signal_then_recovery():
    rec, labels = freerun.render_scenario(SCENARIO, 121)
    mon = rln.evaluate_continuous(rec.samples_uv, rec.fs_hz, labels, rec.vagal_times_s)
    assert mon.monitored.tolist() == [True, False]  # the stimulated side only
    kinds = [e.kind for e in mon.events]
    assert [k for k in kinds if k != "amplitude"] == ["combined", "loss", "recovered"], kinds
    truth = [t for t in rec.truth if t.kind == "vagal"]
    base_a = float(np.median([t.peak_uv for t in truth[:rln.BASELINE_N]]))
    base_l = float(np.median([t.latency_ms for t in truth[:rln.BASELINE_N]]))
    combined_truth = next(t.onset_s for t in truth if t.peak_uv < 0.5 * base_a and t.latency_ms > 1.1 * base_l)
    los_truth = next(t.onset_s for t in truth if t.peak_uv < rln.LOS_UV)
    by_kind = {e.kind: e for e in mon.events}
    # Not before the truth met the criterion (the smoothing adds a few stimuli after it), and in time to act.
    assert combined_truth <= by_kind["combined"].t_s <= combined_truth + rln.SMOOTH_N + 5
    assert los_truth <= by_kind["loss"].t_s <= los_truth + rln.SMOOTH_N + 5
    assert by_kind["combined"].t_s < by_kind["loss"].t_s


def test_an_amplitude_drop_with_unchanged_latency_is_a_tube_warning_not_a_combined_event():
    _, mon = _run([_vagal(120.0, [[0, 1.0, 1.0], [40, 1.0, 1.0], [50, 0.4, 1.0], [120, 0.4, 1.0]])], 120.0, 122)
    assert [e.kind for e in mon.events] == ["amplitude"]
    assert mon.events[0].latency_ratio <= rln.LATENCY_RATIO


def test_stable_vagal_monitoring_with_cautery_and_discharges_raises_nothing():
    script = [_vagal(240.0, [[0, 1.0, 1.0]]),
              {"kind": "cautery", "onset_s": 60.0, "duration_s": 4.0, "peak_uv": 1500.0},
              {"kind": "cautery", "onset_s": 150.0, "duration_s": 2.0, "peak_uv": 800.0},
              {"kind": "neurotonic", "channel": 0, "onset_s": 100.0, "duration_s": 2.0, "rate_hz": 50.0,
               "peak_uv": 250.0},
              {"kind": "irrigation", "channel": 0, "onset_s": 120.0, "duration_s": 5.0, "per_s": 2.0}]
    _, mon = _run(script, 240.0, 123)
    assert mon.events == []
    rejected = sum(1 for r in mon.responses if not r.accepted[0])
    assert rejected >= 4  # the stimuli under cautery were not judged


def test_probe_loss_of_signal_is_below_100_uv():
    assert rln.loss_of_signal(88.0)
    assert not rln.loss_of_signal(150.0)


def test_evoked_vocalis_responses_are_blanked_from_free_run_detection():
    script = [_vagal(20.0, [[0, 1.0, 1.0]])]
    rec = freerun.render(20.0, FS, 2, script, 124, spontaneous_per_min=0.0)
    as_artefacts, _ = emg.detect(rec.samples_uv, FS, NAMES, rec.stim_times_s)
    assert [e for e in as_artefacts if e.kind != "cautery"], "the CMAP outlasts the artefact blanking"
    evoked, _ = emg.detect(rec.samples_uv, FS, NAMES, rec.stim_times_s, evoked_times_s=rec.vagal_times_s)
    assert [e for e in evoked if e.kind != "cautery"] == []


def test_ionm_evaluate_reports_vagal_monitoring_from_stim_vagal_annotations(tmp_path):
    rec, labels = freerun.render_scenario(SCENARIO, 125)
    path = tmp_path / "thyroid.bdf"
    edffile.save(path, rec.samples_uv, rec.fs_hz, labels, rec.stim_times_s, bdf=True, vagal_times_s=rec.vagal_times_s)
    assert edffile.load(path).vagal_times_s == pytest.approx(rec.vagal_times_s)
    out = run_ionm("evaluate", str(path), "--json", timeout=120)
    assert out.returncode == 0, out.stderr
    vagal = json.loads(out.stdout)["vagal"]
    assert vagal["stimuli"] == len(rec.vagal_times_s)
    assert vagal["baseline"]["L vocalis ET"]["monitored"] and not vagal["baseline"]["R vocalis ET"]["monitored"]
    assert [e["kind"] for e in vagal["events"] if e["kind"] != "amplitude"] == ["combined", "loss", "recovered"]
    # no discharge on the stimulated side's evoked responses: every reported one is scripted or spontaneous
    discharges = [t for t in rec.truth if t.kind in freerun.DISCHARGE_KINDS]
    for e in json.loads(out.stdout)["events"]:
        assert any(labels[t.channel] == e["channel"] and t.onset_s - 0.05 <= e["t_s"] <= t.end_s + 0.05
                   for t in discharges), e
    text = run_ionm("evaluate", str(path), timeout=120).stdout
    assert "continuous vagal monitoring" in text and "combined" in text
