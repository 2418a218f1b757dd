"""Free-running EMG: the generator's truth (ionm_hw.physiology.freerun) and the detectors
(ionm.pipeline.emg) scored against it. Seeds 101-199 belong to these tests; bench/emg.py uses others."""

from __future__ import annotations

import numpy as np
import pytest

from ionm.pipeline import emg
from ionm_hw.physiology import freerun

FS = 8000.0
NAMES = ["L orbicularis oris", "L orbicularis oculi", "L mentalis"]
ONSET_TOL_S = 0.05


def _record(seed: int, duration_s: float = 90.0, **kw):
    script = freerun.random_script(seed, duration_s, len(NAMES), stim_rate_hz=2.0, **kw)
    return freerun.render(duration_s, FS, len(NAMES), script, seed)


@pytest.fixture(scope="module", params=[101, 102, 103])
def scored(request):
    rec = _record(request.param)
    events, a_train_s = emg.detect(rec.samples_uv, FS, NAMES, rec.stim_times_s)
    return rec, events, a_train_s


def _matches(truth: freerun.TruthEvent, events: list[emg.EmgEvent]) -> list[emg.EmgEvent]:
    return [e for e in events if e.channel == NAMES[truth.channel] and abs(e.t_s - truth.onset_s) <= ONSET_TOL_S]


def test_generator_is_deterministic_and_its_truth_is_in_the_samples():
    a, b, c = _record(101, 60.0), _record(101, 60.0), _record(102, 60.0)
    assert np.array_equal(a.samples_uv, b.samples_uv) and a.truth == b.truth
    assert not np.array_equal(a.samples_uv, c.samples_uv)
    trains = [t for t in a.truth if t.kind in ("a_train", "neurotonic")]
    assert trains
    artefact = np.zeros(a.samples_uv.shape[1], dtype=bool)  # 10 ms from each stimulus
    for s in a.stim_times_s:
        artefact[int(s * FS) : int((s + 0.01) * FS)] = True
    for t in trains:
        i0, i1 = int(t.onset_s * FS) - 8, int(t.end_s * FS) + 8
        peak = np.max(np.abs(a.samples_uv[t.channel, i0:i1][~artefact[i0:i1]]))
        assert peak == pytest.approx(t.peak_uv, abs=90.0)  # 3 µV noise, or a spontaneous MUP (≤ 80 µV) on top
        before = a.samples_uv[t.channel, int((t.onset_s - 0.02) * FS) : int((t.onset_s - 0.002) * FS)]
        assert np.max(np.abs(before)) < peak / 2  # nothing of the train before its onset


def test_every_neurotonic_discharge_and_a_train_is_found_with_its_onset(scored):
    rec, events, _ = scored
    trains = [t for t in rec.truth if t.kind in ("neurotonic", "a_train")]
    assert len(trains) >= 5
    for t in trains:
        hit = [e for e in _matches(t, events) if e.kind == t.kind]
        assert len(hit) == 1, (t, _matches(t, events))
        e = hit[0]
        assert e.end_s == pytest.approx(t.end_s, abs=ONSET_TOL_S)
        assert e.peak_uv == pytest.approx(t.peak_uv, rel=0.35)
        # A-trains are regular: their rate is exact; a neurotonic rate loses a discharge to a stimulus blank
        assert e.rate_hz == pytest.approx(t.rate_hz, rel=0.03 if t.kind == "a_train" else 0.25)


def test_no_discharge_is_reported_without_one_in_the_truth(scored):
    rec, events, _ = scored
    discharges = [t for t in rec.truth if t.kind in freerun.DISCHARGE_KINDS]
    for e in events:
        if e.kind == "cautery":
            continue
        near = [t for t in discharges if NAMES[t.channel] == e.channel
                and t.onset_s - ONSET_TOL_S <= e.t_s <= t.end_s + ONSET_TOL_S]
        assert near, e


def test_cautery_and_stimuli_alone_give_no_discharge_but_cautery_periods():
    script = [{"kind": "cautery", "onset_s": t, "duration_s": d, "peak_uv": uv}
              for t, d, uv in ((3.0, 2.0, 200.0), (9.0, 4.0, 2000.0), (16.0, 1.0, 600.0))]
    script.append({"kind": "stimulus", "times_s": list(np.arange(0.1, 20.0, 0.2)), "peak_uv": 5000.0})
    rec = freerun.render(20.0, FS, len(NAMES), script, 111, spontaneous_per_min=0.0)
    events, a_train_s = emg.detect(rec.samples_uv, FS, NAMES, rec.stim_times_s)
    assert [e for e in events if e.kind != "cautery"] == []
    assert a_train_s == dict.fromkeys(NAMES, 0.0)
    for t in (t for t in rec.truth if t.kind == "cautery"):
        for name in NAMES:
            hit = [e for e in events if e.kind == "cautery" and e.channel == name]
            assert any(abs(e.t_s - t.onset_s) < ONSET_TOL_S and abs(e.end_s - t.end_s) < 0.1 for e in hit), (t, hit)


def test_silence_gives_nothing_and_a_transected_nerve_falls_silent():
    script = [{"kind": "transection", "channel": 0, "onset_s": 5.0},
              {"kind": "neurotonic", "channel": 0, "onset_s": 2.0, "duration_s": 6.0, "rate_hz": 40.0,
               "peak_uv": 200.0},
              {"kind": "a_train", "channel": 0, "onset_s": 10.0, "duration_s": 2.0, "rate_hz": 100.0,
               "peak_uv": 200.0}]
    rec = freerun.render(15.0, FS, len(NAMES), script, 112, spontaneous_per_min=0.0)
    assert [t.kind for t in rec.truth] == ["neurotonic", "transection"]
    assert rec.truth[0].end_s < 5.0
    assert np.std(rec.samples_uv[0, int(5.1 * FS) :]) < 4.0  # background only (3 µV rms)
    events, _ = emg.detect(rec.samples_uv, FS, NAMES)
    assert [(e.channel, e.kind) for e in events] == [(NAMES[0], "neurotonic")]
    assert events[0].end_s < 5.0


def test_touch_and_irrigation_give_spikes_and_bursts_not_trains():
    script = [{"kind": "irrigation", "channel": c, "onset_s": 1.0, "duration_s": 20.0, "per_s": 2.0}
              for c in range(len(NAMES))]
    script += [{"kind": "spike", "channel": 1, "onset_s": 23.0, "peak_uv": 150.0},
               {"kind": "burst", "channel": 2, "onset_s": 24.0, "peak_uv": -150.0}]
    rec = freerun.render(26.0, FS, len(NAMES), script, 113, spontaneous_per_min=0.0)
    events, _ = emg.detect(rec.samples_uv, FS, NAMES)
    assert {e.kind for e in events} == {"spike", "burst"}
    truth = [t for t in rec.truth if t.kind in ("spike", "burst")]
    assert len(truth) > 60
    for t in truth:
        hit = [e for e in events if e.channel == NAMES[t.channel] and abs(e.t_s - t.onset_s) < 0.005]
        assert [e.kind for e in hit] == [t.kind], (t, hit)


def test_cumulative_a_train_time_builds_past_ten_seconds():
    # CPA tumour: repeated facial-nerve traction, A-trains of 1-3 s on orbicularis oris only.
    script = [{"kind": "a_train", "channel": 0, "onset_s": 2.0 + 5.0 * i, "duration_s": 1.0 + 0.5 * (i % 5),
               "rate_hz": 80.0 + 20 * i, "peak_uv": 120.0} for i in range(7)]
    rec = freerun.render(38.0, FS, len(NAMES), script, 114)
    events, a_train_s = emg.detect(rec.samples_uv, FS, NAMES)
    truth_s = sum(t.end_s - t.onset_s for t in rec.truth if t.kind == "a_train")
    assert truth_s > 10.0
    assert a_train_s[NAMES[0]] == pytest.approx(truth_s, abs=0.02 * 7)
    assert a_train_s[NAMES[1]] == a_train_s[NAMES[2]] == 0.0
    assert sum(e.end_s - e.t_s for e in events if e.kind == "a_train") == pytest.approx(a_train_s[NAMES[0]])


def test_stimulus_artefacts_need_their_times_and_are_blanked_with_them():
    script = [{"kind": "stimulus", "times_s": list(np.arange(0.5, 10.0, 0.25)), "peak_uv": 3000.0}]
    rec = freerun.render(10.0, FS, len(NAMES), script, 115, spontaneous_per_min=0.0)
    blind, _ = emg.detect(rec.samples_uv, FS, NAMES)
    assert len(blind) > 20  # without the stimulus times each artefact is a discharge
    blanked, _ = emg.detect(rec.samples_uv, FS, NAMES, rec.stim_times_s)
    assert blanked == []


@pytest.mark.parametrize("blocks", [[1], [37], [40], [8000], [3, 997, 12345]])
def test_streaming_in_blocks_gives_the_same_events_as_the_whole_record(blocks):
    rec = _record(104, 30.0)
    whole, whole_a = emg.detect(rec.samples_uv, FS, NAMES, rec.stim_times_s)
    assert len(whole) >= 5
    det = emg.FreeRunDetector(FS, NAMES)
    det.add_stimuli(rec.stim_times_s)
    got: list[emg.EmgEvent] = []
    pos, k = 0, 0
    n = rec.samples_uv.shape[1]
    step = 1 if blocks == [1] else None
    while pos < n:
        size = step or blocks[k % len(blocks)]
        if blocks == [1] and pos > 40000:  # sample by sample for 5 s, then whole frames: keeps the test short
            size = 40
        got += det.push(rec.samples_uv[:, pos : pos + size])
        pos += size
        k += 1
    got += det.finish()
    assert sorted(got, key=lambda e: (e.t_s, e.channel)) == whole
    assert det.cumulative_a_train_s() == whole_a


def test_events_of_a_cut_record_are_those_that_ended_before_the_cut():
    rec = _record(105, 40.0)
    whole, _ = emg.detect(rec.samples_uv, FS, NAMES, rec.stim_times_s)
    det = emg.FreeRunDetector(FS, NAMES)
    det.add_stimuli(rec.stim_times_s)
    early = det.push(rec.samples_uv[:, : int(20 * FS)])
    assert early and all(e in whole for e in early)
    assert all(e.end_s < 20.0 for e in early)


def test_a_rate_too_low_for_the_cautery_band_is_refused():
    with pytest.raises(ValueError, match="at least 4000 Hz"):
        emg.FreeRunDetector(2000.0, NAMES)
    with pytest.raises(ValueError, match="3 channels"):
        emg.FreeRunDetector(FS, NAMES[:2]).push(np.zeros((3, 100)))


@pytest.mark.parametrize("name", freerun.scenario_names())
def test_each_free_run_scenario_is_detected_as_scripted(name):
    rec, labels = freerun.render_scenario(name, 131)
    events, a_train_s = emg.detect(rec.samples_uv, rec.fs_hz, labels, rec.stim_times_s)
    trains = [t for t in rec.truth if t.kind in ("neurotonic", "a_train")]
    assert len(trains) >= 6
    for t in trains:
        assert [e.kind for e in events if e.channel == labels[t.channel]
                and abs(e.t_s - t.onset_s) <= ONSET_TOL_S] == [t.kind], t
    discharges = [t for t in rec.truth if t.kind in freerun.DISCHARGE_KINDS]
    for e in events:
        assert e.kind == "cautery" or any(
            labels[t.channel] == e.channel and t.onset_s - ONSET_TOL_S <= e.t_s <= t.end_s + ONSET_TOL_S
            for t in discharges), e
    for c, label in enumerate(labels):
        truth_s = sum(t.end_s - t.onset_s for t in rec.truth if t.kind == "a_train" and t.channel == c)
        assert a_train_s[label] == pytest.approx(truth_s, rel=0.01, abs=0.01)
    if name == "cpa_facial_traction":
        assert a_train_s["L orbicularis oris"] > 10.0  # the facial-nerve warning level is passed


def test_free_run_scenario_channels_are_checked(tmp_path):
    bad = tmp_path / "bad.json"
    bad.write_text('{"duration_s": 5, "channels": ["a"], "events": [{"kind": "spike", "channel": "b", '
                   '"onset_s": 1, "peak_uv": 50}]}')
    with pytest.raises(ValueError, match="'b' is not one of"):
        freerun.load_scenario(str(bad))
    with pytest.raises(FileNotFoundError, match="cpa_facial_traction"):
        freerun.load_scenario("no_such_case")


def test_an_open_train_is_visible_from_its_onset_before_it_ends():
    script = [{"kind": "neurotonic", "channel": 1, "onset_s": 1.0, "duration_s": 3.0, "rate_hz": 40.0,
               "peak_uv": 150.0}]
    rec = freerun.render(6.0, FS, len(NAMES), script, 116, spontaneous_per_min=0.0)
    det = emg.FreeRunDetector(FS, NAMES)
    assert det.push(rec.samples_uv[:, : int(0.9 * FS)]) == [] and det.ongoing() == []
    assert det.push(rec.samples_uv[:, int(0.9 * FS) : int(1.3 * FS)]) == []  # not ended: nothing final yet
    (now,) = det.ongoing()
    assert now.channel == NAMES[1] and now.kind == "ongoing"
    assert now.t_s == pytest.approx(rec.truth[0].onset_s, abs=0.005) and now.end_s > 1.2
    (final,) = det.push(rec.samples_uv[:, int(1.3 * FS) :])
    assert final.kind == "neurotonic" and final.t_s == now.t_s and det.ongoing() == []


@pytest.mark.parametrize("mains_hz", [50.0, 60.0])
def test_mains_hum_below_the_threshold_costs_no_train_and_adds_no_event(mains_hz):
    script = freerun.random_script(117, 60.0, len(NAMES), stim_rate_hz=2.0)
    clean = freerun.render(60.0, FS, len(NAMES), script, 117)
    hum = freerun.render(60.0, FS, len(NAMES), script, 117, mains_uv=15.0, mains_hz=mains_hz)
    hum_only = hum.samples_uv - clean.samples_uv  # the same noise and discharges, plus the hum
    assert np.max(np.abs(hum_only)) == pytest.approx(15.0, rel=0.1) and np.std(hum_only) > 7.0
    a, _ = emg.detect(clean.samples_uv, FS, NAMES, clean.stim_times_s)
    b, _ = emg.detect(hum.samples_uv, FS, NAMES, hum.stim_times_s)
    trains = [(e.channel, e.kind) for e in a if e.kind in ("neurotonic", "a_train")]
    assert len(trains) >= 4
    assert [(e.channel, e.kind) for e in b if e.kind in ("neurotonic", "a_train")] == trains
    # Spikes near the 30 µV threshold may fall under it with the hum; nothing may appear that is not there.
    for e in b:
        assert any(abs(e.t_s - x.t_s) < 0.005 and e.channel == x.channel for x in a), e
