"""The live-case benchmark's plan and scoring on known truth (make bench runs the cases themselves, in real time:
nothing here starts a board, and no timing is asserted)."""

from __future__ import annotations

import copy
import math

import numpy as np

from bench import detection, live_case


def _scenario() -> dict:
    return {"events": [
        {"type": "change", "targets": ["tibial_*_cortical"], "onset_s": 600.0, "ramp_s": 30.0, "amplitude": 0.3,
         "latency": 1.1, "recovery": {"onset_s": 900.0, "ramp_s": 180.0, "amplitude": 0.9, "latency": 1.02}},
        {"type": "leadoff", "electrode": "CPz", "onset_s": 620.0, "end_s": 700.0},
        {"type": "cautery", "onset_s": 610.0, "duration_s": 5.0, "amplitude_uv": 1500.0}]}


def test_natural_plan_moves_events_as_the_console_does():
    from ionm.cli.console import shift_events

    moved, plan = live_case.compress_events(_scenario(), 80.0)
    ref = shift_events(_scenario(), 80.0)
    for a, b in zip(moved["events"], ref["events"], strict=True):
        for k in ("onset_s", "ramp_s", "end_s", "duration_s"):
            if k in b:
                assert math.isclose(a[k], b[k], abs_tol=1e-9), k
        if "recovery" in b:
            assert math.isclose(a["recovery"]["onset_s"], b["recovery"]["onset_s"])
            assert math.isclose(a["recovery"]["ramp_s"], b["recovery"]["ramp_s"])
    assert not plan["compressed"] and plan["last_keypoint_s"] == 80.0 + 480.0


def test_compact_plan_keeps_short_stretches_and_shortens_long_ones():
    moved, plan = live_case.compress_events(_scenario(), 80.0, 30.0)
    change, leadoff, cautery = moved["events"]
    # keypoints 600, 610, 615, 620, 630, 700, 900, 1080: every stretch up to 30 s kept, longer ones cut to 30 s
    assert change["onset_s"] == 80.0 and math.isclose(change["ramp_s"], 30.0)
    assert math.isclose(cautery["onset_s"], 90.0) and math.isclose(cautery["duration_s"], 5.0)
    assert math.isclose(leadoff["onset_s"], 100.0) and math.isclose(leadoff["end_s"], 140.0)
    assert math.isclose(change["recovery"]["onset_s"], 170.0) and math.isclose(change["recovery"]["ramp_s"], 30.0)
    assert plan["compressed"] and math.isclose(plan["last_keypoint_s"], 200.0)
    _, p = live_case.case_plan({"events": []}, compact=True)
    assert p["end_s"] == live_case.BASELINE_AT_S + live_case.MIN_OBSERVED_S


def test_compact_plan_keeps_plateaus_longer_than_ramps_and_starts_after_the_longest_baseline():
    # The same keypoints; where no truth changes (630-700: the injury's plateau, lead-off under way; 700-900) the
    # stretch keeps up to 90 s, where one changes (ramps, cautery) up to 30 s.
    moved, plan = live_case.compress_events(_scenario(), 80.0, 30.0, 90.0)
    change, leadoff, _ = moved["events"]
    assert math.isclose(leadoff["onset_s"], 100.0) and math.isclose(leadoff["end_s"], 180.0)
    assert math.isclose(change["recovery"]["onset_s"], 270.0) and math.isclose(change["recovery"]["ramp_s"], 30.0)
    assert plan["compressed"] and math.isclose(plan["last_keypoint_s"], 300.0)
    # The bench's own plan: events once a baseline pressed at B has collected all it may (1200 SSEP sweeps)
    assert live_case.EVENTS_AT_S * 4.7 > 1200 and live_case.EVENTS_AT_S > live_case.BASELINE_AT_S
    scn, p = live_case.case_plan(_scenario(), compact=True)
    assert scn["events"][0]["onset_s"] == live_case.EVENTS_AT_S == p["events_at_s"]
    assert math.isclose(p["end_s"], live_case.EVENTS_AT_S + 220.0 + live_case.TAIL_S)
    assert scn["duration_s"] == p["end_s"]


def test_compact_plan_keeps_a_plateau_just_past_a_criterion_at_its_real_length():
    # limb_positioning: a 10-min decline to 45 % (5 % past the SSEP criterion), held 7 min, then recovery. Cut to
    # 90 s, that plateau holds ~400 sweeps: too few for any test to tell 45 % from 50 % (the evaluator alerts
    # 1-4 min into the real plateau). A plateau well past its criterion (the injury at 30 %) is still cut.
    near = {"events": [{"type": "change", "targets": ["median_R_*"], "onset_s": 300.0, "ramp_s": 600.0,
                        "amplitude": 0.45, "latency": 1.05,
                        "recovery": {"onset_s": 1320.0, "ramp_s": 300.0, "amplitude": 0.95, "latency": 1.0}}]}
    moved, plan = live_case.compress_events(near, 80.0, 30.0, 90.0)
    (change,) = moved["events"]
    assert math.isclose(change["ramp_s"], 30.0)  # the decline is a ramp: shortened
    assert math.isclose(change["recovery"]["onset_s"], 80.0 + 30.0 + 420.0)  # the 420 s plateau kept whole
    mep = copy.deepcopy(near)
    mep["events"][0].update(targets=["mep_TA_L"], amplitude=0.18)  # 2 % past the MEP criterion (20 %)
    assert math.isclose(live_case.compress_events(mep, 80.0, 30.0, 90.0)[0]["events"][0]["recovery"]["onset_s"],
                        80.0 + 30.0 + 420.0)
    for far in (0.3, 0.6):  # well past the criterion, or not reaching it: the plateau is cut to 90 s
        other = copy.deepcopy(near)
        other["events"][0]["amplitude"] = far
        moved, _ = live_case.compress_events(other, 80.0, 30.0, 90.0)
        assert math.isclose(moved["events"][0]["recovery"]["onset_s"], 80.0 + 30.0 + 90.0)


def test_mep_events_use_the_mep_criterion_and_ssep_events_the_detection_benchs():
    t = np.arange(6.0)
    amp = np.array([1.0, 0.4, 0.25, 0.15, 0.1, 0.9])
    lat = np.ones(6)
    assert live_case.criterion_events(t, amp, lat, "mep") == [(3.0, 4.0)]
    assert live_case.criterion_events(t, amp, lat, "ssep-lower") == detection._events(t, amp, lat) == [(1.0, 4.0)]


def test_stream_scoring_counts_misses_false_and_duplicate_alerts_per_channel():
    t = np.arange(0.0, 200.0, 0.25)
    amp = np.where((t >= 50) & (t < 100), 0.3, 1.0)
    one = np.ones_like(t)
    truth = {"a": ("resp1", amp, one), "b": ("resp1", amp, one), "c": ("resp2", amp, one), "d": (None, one, one)}
    # resp1 caught on a at 60 s (and again at 80 s: a duplicate) and on b at 65 s; resp2 missed; an alert on a
    # long after its event, and one on d (whose stimulus evokes nothing there), are false.
    alerts = {"a": [60.0, 80.0, 100.0 + detection.GRACE_S + 5.0], "b": [65.0], "d": [20.0]}
    r = live_case.score_stream("ssep-lower", t, truth, alerts, {("a", 60.0): 0.5})
    units = {u["response"]: u for u in r["units"]}
    assert not units["resp1"]["missed"] and units["resp1"]["channel"] == "a"
    assert units["resp1"]["case_s"] == 10.0 and units["resp1"]["tta_s"] == 10.5
    assert units["resp2"]["missed"]
    assert r["channels"]["a"]["false"] == [135.0] and r["channels"]["d"]["false"] == [20.0]
    assert r["channels"]["a"]["duplicates"] == [{"event_start": 50.0, "alerts": [80.0]}]
    assert r["channels"]["b"]["false"] == [] and r["channels"]["b"]["duplicates"] == []


def test_mep_time_to_alert_is_counted_in_trains():
    t = np.arange(0.0, 100.0, 4.0)
    amp = np.where(t >= 40, 0.1, 1.0)
    r = live_case.score_stream("mep", t, {"m": ("mep_AH_L", amp, np.ones_like(t))}, {"m": [44.0]})
    assert r["units"][0]["trains"] == 2 and r["units"][0]["case_s"] == 4.0


def test_missing_sweeps_do_not_count_the_holdoff_around_tcmep_trains():
    t = np.array([0.0, 0.2, 0.4, 0.8, 1.0, 1.6, 1.8])  # one gap of 1 sweep at 0.6, one of 2 at 1.2 and 1.4
    assert live_case._missing(t, np.zeros(0)) == 3
    assert live_case._missing(t, np.array([0.6])) == 2


def test_differences_are_alerts_in_one_list_only():
    live = [{"stream": "s", "channel": "c", "criterion": "amplitude", "t_s": 10.0},
            {"stream": "s", "channel": "c", "criterion": "loss", "t_s": 20.0}]
    off = [{"stream": "s", "channel": "c", "criterion": "amplitude", "t_s": 10.0000001},
           {"stream": "s", "channel": "c", "criterion": "loss", "t_s": 24.0}]
    d = live_case._diff(live, off)
    assert [(x["only"], x["t_s"]) for x in d] == [("live", 20.0), ("offline", 24.0)]


def test_an_alert_while_the_truth_falls_into_an_event_is_early_not_false():
    t = np.arange(0.0, 100.0, 4.0)
    amp = np.interp(t, [0.0, 40.0, 60.0], [1.0, 1.0, 0.1])  # 1 -> 0.1 over 40..60 s: <= 20 % from 60 s
    r = live_case.score_stream("mep", t, {"m": ("mep_TA_L", amp, np.ones_like(t))}, {"m": [52.0]})
    u = r["units"][0]
    assert not u["missed"] and u["change_from"] == 44.0 and u["case_s"] == -8.0 and u["trains"] == 0
    assert r["channels"]["m"]["false"] == []
    r = live_case.score_stream("mep", t, {"m": ("mep_TA_L", amp, np.ones_like(t))}, {"m": [40.0]})
    assert r["units"][0]["missed"] and r["channels"]["m"]["false"] == [40.0]


def test_probe_events_make_no_keypoints_so_a_fusion_case_is_as_long_as_a_stable_one():
    """The bench's technologist never stimulates the probe output, so a screw under the probe changes no truth
    it scores: the fusion scenarios' 12 probe events (a minute apart) made them 15-17 min of case time each,
    a third of every pass, for nothing the bench measures."""
    from ionm_hw.patient import load_scenario

    _, stable = live_case.case_plan(load_scenario("stable"), True)
    for name in ("lumbar_fusion_l3_s1", "thoracic_fusion_t8_t12"):
        _, plan = live_case.case_plan(load_scenario(name), True)
        assert plan["keypoints"] == [] and plan["end_s"] == stable["end_s"], name
    mixed = _scenario()
    mixed["events"].append({"type": "probe", "target": "L4 left", "onset_s": 2000.0, "end_s": 2020.0})
    assert live_case._keypoints(mixed["events"]) == live_case._keypoints(_scenario()["events"])
