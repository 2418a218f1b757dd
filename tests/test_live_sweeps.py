"""Live sweeps from the virtual board with a patient: cut on the board's latched stimulus indices."""

from __future__ import annotations

import time

import numpy as np

from ionm.acquire import BoardSession, LiveCase, SweepSpec


def test_live_sweeps_are_locked_to_the_latched_stimulus(tmp_path):
    from ionm.sim import VirtualBoard

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
