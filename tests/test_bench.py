"""The benchmarks' own logic (make bench runs them in full; here only their scoring, on known truth, and a
short throughput run for its report's shape: no timing is asserted)."""

from __future__ import annotations

import numpy as np
import pytest

from bench import detection, emg, pipeline_throughput


def test_events_are_the_stretches_where_the_truth_meets_a_criterion():
    t = np.arange(10.0)
    amp = np.array([1, 1, 0.4, 0.3, 1, 1, 1, 0.9, 0.9, 0.2])
    lat = np.array([1, 1, 1, 1, 1, 1.12, 1, 1, 1, 1])
    assert detection._events(t, amp, lat) == [(2.0, 3.0), (5.0, 5.0), (9.0, 9.0)]


def test_scoring_counts_time_to_alert_misses_late_detections_and_false_alerts():
    events = [(100.0, 200.0), (400.0, 410.0), (700.0, 800.0)]
    # First event caught 12 s in (a second alert in it is not false), the second caught in the grace after
    # it ended, the third missed; one alert in no event is false.
    alerts = [50.0, 112.0, 150.0, 410.0 + detection.GRACE_S - 1.0]
    tta, missed, false = detection._score(alerts, events)
    assert tta == [12.0, detection.GRACE_S + 9.0] and missed == 1 and false == 1
    assert detection._score([410.0 + detection.GRACE_S + 1.0], events[1:2]) == ([], 1, 1)


def test_detection_summary_names_each_missed_run_with_its_baseline():
    base = {"median_s": 10.0, "worst_s": 20.0, "missed": 0, "events": 2, "false_alerts": 0, "false_per_8h": 0.0}
    out = {"runs": 2, "monitored_hours": 0.5, "ratio_median_tta": 0.2, "ratio_worst_tta": 0.4,
           "evaluator": {**base, "missed": 1, "missed_runs": [
               {"seed": 7, "kind": "loss", "modality": "ssep-lower", "scored_channel": "CPz-CP4",
                "scored_level_se": 0.187, "loss_z_bound": [{"whole_event": 3.8, "longest_window": 2.86}],
                "event_starts": [343.2]}]},
           "reference": base,
           "mep_accuracy": {"detected": 4, "trials": 4, "onset_abs_error_ms": {"median": 0.3, "p95": 2.6},
                            "p2p_abs_rel_error": {"median": 0.011}, "area_abs_rel_error": {"median": 0.025}}}
    lines = detection._summary(out)
    assert "1 of 2 missed" in lines[1] and "0 of 2 missed" in lines[2]
    missed = [ln for ln in lines if ln.startswith("missed:")]
    assert len(missed) == 1 and "seed 7" in missed[0] and "±19 %" in missed[0] and "3.8" in missed[0]


def test_throughput_report_lists_every_pass_and_reports_the_best():
    r = pipeline_throughput.run(quick=True)
    passes = r["realtime_ratio_passes"]
    assert len(passes) == pipeline_throughput.PASSES and all(p > 0 for p in passes)
    assert r["realtime_ratio"] == max(passes)
    assert 0 < r["sweep_latency_ms"]["p50"] <= r["sweep_latency_ms"]["p99"] <= r["sweep_latency_ms"]["max"]
    assert len(r["summary"]) == 2 and "best of %d passes" % pipeline_throughput.PASSES in r["summary"][0]


def test_emg_scoring_finds_trains_by_kind_and_onset_and_counts_discharges_with_no_truth():
    from ionm.pipeline.emg import EmgEvent
    from ionm_hw.physiology.freerun import TruthEvent

    names = ["a", "b"]
    truth = [TruthEvent("a_train", 0, 10.0, 12.0, 100.0, 100.0), TruthEvent("neurotonic", 1, 20.0, 21.0, 40.0, 90.0),
             TruthEvent("neurotonic", 0, 30.0, 31.0, 40.0, 90.0), TruthEvent("spike", 1, 40.0, 40.0, None, 60.0)]
    events = [EmgEvent(10.03, 12.0, "a", "a_train", 100.0, 100.0),  # found, 30 ms late
              EmgEvent(20.06, 21.0, "b", "neurotonic", 40.0, 90.0),  # 60 ms late: missed
              EmgEvent(30.0, 31.0, "a", "burst", None, 90.0),  # wrong kind: missed, but not false
              EmgEvent(40.0, 40.0, "a", "spike", None, 60.0),  # the spike was on b: false
              EmgEvent(50.0, 52.0, "a", "cautery", None, 500.0)]  # cautery is never a false discharge
    s = emg._score(truth, events, names)
    assert s["found"] == {"neurotonic": 0, "a_train": 1} and s["total"] == {"neurotonic": 2, "a_train": 1}
    assert s["onset_errors_s"] == [pytest.approx(0.03)]
    assert [m["onset_s"] for m in s["missed"]] == [20.0, 30.0]
    assert s["false"] == [{"t_s": 40.0, "channel": "a", "kind": "spike"}]


def test_hunt_bench_runs_the_firmwares_hunt_and_counts_a_ramp_to_the_first_response():
    """bench/hunt.py: the board's bisection (firmware/hunt.py on CPython) resolves one channel over 0.5-40 mA to
    0.5 mA in 7 pulses wherever the threshold, and the ramp needs one pulse per 0.5 mA step up to it."""
    from bench import hunt as hb

    hunt, huntreq, sup = hb._firmware()
    for i50 in (1.5, 12.0, 33.0):
        m1 = hb._Muscle(i50, 7)
        pulses, found = hb.hunt_once(hunt, huntreq, sup, m1)
        tol = 0.5 + 0.05 * m1.truth_ma  # the resolution and the model's trial-to-trial spread (wider at high currents)
        assert pulses == 7 and found is not None and abs(found - m1.truth_ma) <= tol
        n, at = hb.ramp_once(hb._Muscle(i50, 7))
        assert at is not None and n == round((at - 0.5) / 0.5) + 1 and abs(at - m1.truth_ma) <= tol


def test_hub_outage_scoring_counts_the_outage_the_back_fill_order_repeats_and_gaps():
    """bench/hub.py's outage figures from (seq, created, arrived at the hub) in arrival order: outage [100, 160)."""
    from bench import hub

    before = [(1, 90.0, 90.1), (2, 95.0, 95.1)]
    outage = [(3, 120.0, 163.0), (4, 150.0, 163.5)]  # created while cut, back-filled after the restore
    after = [(5, 161.0, 164.0), (6, 170.0, 170.1)]
    s = hub.outage_score(before + outage + after, 100.0, 160.0)
    assert s == {"messages": 6, "during_outage": 2, "through_the_cut": 0, "backfill_s": 3.5, "in_order": True,
                 "duplicates": 0, "lost": 0}
    # the back-fill out of order, one message twice and one never arrived (5 missing below 6)
    s = hub.outage_score(before + [outage[1], outage[0], outage[0], after[1]], 100.0, 160.0)
    assert s["in_order"] is False and s["duplicates"] == 1 and s["lost"] == 1 and s["backfill_s"] == 3.5
    assert hub.outage_score(before, 100.0, 160.0)["backfill_s"] == 0.0  # nothing was missing at the restore
    assert hub.outage_score([(1, 130.0, 130.2)], 100.0, 160.0)["through_the_cut"] == 1  # the cut was no cut


def test_hub_page_catch_up_is_the_first_view_showing_a_message_from_after_the_restore():
    from bench import hub

    heard = [(150.0, 99.0), (160.5, 99.0), (163.0, 150.0), (164.2, 160.0), (165.0, 164.0)]
    assert hub.view_catchup_s(heard, 160.0) == 4.2
    assert hub.view_catchup_s(heard[:3], 160.0) is None
