"""The benchmarks' own logic (make bench runs them in full; here only their scoring, on known truth, and a
short throughput run for its report's shape: no timing is asserted)."""

from __future__ import annotations

import numpy as np

from bench import detection, pipeline_throughput


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
