"""Live sweeps from the virtual board with a patient: cut on the board's latched stimulus indices."""

from __future__ import annotations

import time

import numpy as np

from ionm.board.acquire import BoardSession, LiveCase, SweepSpec


def test_live_sweeps_are_locked_to_the_latched_stimulus(tmp_path):
    from ionm.board.virtual import VirtualBoard

    err = open(tmp_path / "board.stderr", "w")
    with VirtualBoard(scenario="stable", seed=3, stderr=err) as vb:
        spec = SweepSpec("ssep-upper", "L median", channels=tuple(range(16)), pre_ms=10, post_ms=50)
        case = LiveCase({0: spec}, channel_names={})
        others: list[dict] = []

        def on_event(e: dict) -> None:
            case.on_event(e)
            if e.get("kind") not in ("stim", "status", "boot"):
                others.append(e)

        session = BoardSession(vb.device, on_data=case.on_data, on_event=on_event)
        try:
            case.set_configuration(session.configure({"rate_hz": 4000, "samples_per_frame": 40}))
            session.start()
            session.load_programs([{"kind": "pulse", "output": 0, "current_ua": 25000, "width_us": 200,
                                    "rate_mhz": 4700}])
            session.start_stimulation()
            time.sleep(2.5)
            session.stop_stimulation()
            time.sleep(0.2)
        finally:
            session.close()
            case.close()
    err.close()
    sweeps = list(case.sweeps(timeout=1))
    assert not others, others  # no watchdog, fault or overrun
    assert 8 <= len(sweeps) <= 13  # 4.7 Hz for ~2.5 s
    fs = 4000
    for sw in sweeps:
        assert sw.data_uv.shape == (16, int(0.06 * fs)) and sw.pre_samples == 40
        assert sw.t_s == sw.stim_index / fs
        assert not np.isnan(sw.data_uv).any()
    # The stimulus artefact's onset is the sharpest edge of the average, and it sits on the latched sample:
    # one sample off and the largest jump would move with it.
    avg = np.mean([sw.data_uv for sw in sweeps], axis=0)
    jumps = np.abs(np.diff(avg, axis=1))
    ch = int(np.argmax(jumps.max(axis=1)))
    assert int(np.argmax(jumps[ch])) in (sweeps[0].pre_samples - 1, sweeps[0].pre_samples)
    gaps = np.diff([sw.stim_index for sw in sweeps]) / fs
    assert np.allclose(gaps, 1 / 4.7, atol=1.5 / fs)


def test_epoch_mode_sends_only_stimulus_windows_and_announces_the_gaps(tmp_path):
    """Board-side epochs: complete sweeps, nothing counted as lost, the rest of the time not sent."""
    from ionm.board.virtual import VirtualBoard

    err = open(tmp_path / "board.stderr", "w")
    with VirtualBoard(scenario="stable", seed=4, stderr=err) as vb:
        spec = SweepSpec("ssep-upper", "L median", channels=(0, 4, 5), pre_ms=10, post_ms=50)
        case = LiveCase({0: spec}, channel_names={})
        session = BoardSession(vb.device, on_data=case.on_data, on_event=case.on_event)
        try:
            conf = session.configure({"rate_hz": 4000, "samples_per_frame": 20, "channels": [0, 4, 5],
                                      "epochs": {"pre_ms": 10, "post_ms": 50}})
            assert conf["epochs"] == {"pre": 40, "post": 200}
            case.set_configuration(conf)
            session.start()
            session.load_programs([{"kind": "pulse", "output": 0, "current_ua": 25000, "width_us": 200,
                                    "rate_mhz": 4700}])
            session.start_stimulation()
            time.sleep(2.5)
            session.stop_stimulation()
            time.sleep(0.3)
            stats = session.link.stats
        finally:
            session.close()
            case.close()
    err.close()
    sweeps = list(case.sweeps(timeout=1))
    assert len(sweeps) >= 8
    for sw in sweeps:
        assert not np.isnan(sw.data_uv).any()  # every window arrived whole
    assert stats.samples_lost == 0 and stats.frames_rejected == 0
    assert stats.samples_skipped > 0
    # a 60 ms window per 213 ms stimulus period (plus block rounding): far less than streaming everything
    sent = stats.samples_received / (stats.samples_received + stats.samples_skipped)
    assert 0.2 < sent < 0.5


def test_a_second_acquisition_run_restarts_the_index_without_counting_a_loss(tmp_path):
    """After a stop (or the board's host-lost), START begins a new run at sample index 0. The link must not
    read that as 2^32 samples lost, and the sweeps of the new run must be cut again."""
    from ionm.board.virtual import VirtualBoard

    err = open(tmp_path / "board.stderr", "w")
    with VirtualBoard(scenario="stable", seed=3, stderr=err) as vb:
        spec = SweepSpec("ssep-upper", "L median", channels=tuple(range(16)), pre_ms=10, post_ms=50)
        case = LiveCase({0: spec}, channel_names={})
        session = BoardSession(vb.device, on_data=case.on_data, on_event=case.on_event)
        firsts: list[int] = []
        session.link.on_data = lambda block: (firsts.append(block.first_index), session._data(block))
        try:
            case.set_configuration(session.configure({"rate_hz": 4000, "samples_per_frame": 40}))
            session.load_programs([{"kind": "pulse", "output": 0, "current_ua": 25000, "width_us": 200,
                                    "rate_mhz": 4700}])
            for _run in range(2):
                session.start()
                session.start_stimulation()
                time.sleep(1.5)
                session.stop()
                time.sleep(0.2)
        finally:
            session.close()
            case.close()
    err.close()
    assert session.link.stats.samples_lost == 0
    restarts = [i for i in range(1, len(firsts)) if firsts[i] < firsts[i - 1]]
    assert len(restarts) == 1 and firsts[restarts[0]] == 0, firsts[:3]
    sweeps = list(case.sweeps(timeout=1))
    t = [sw.t_s for sw in sweeps]
    back = [i for i in range(1, len(t)) if t[i] < t[i - 1]]
    assert len(back) == 1 and back[0] >= 4 and len(t) - back[0] >= 4, t  # sweeps from both runs
    assert case.runs == 2
