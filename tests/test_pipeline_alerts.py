"""Alerts: no alert on stable recordings, acute and gradual changes, scope, recovery, MEP criteria."""

from __future__ import annotations

import numpy as np
import pytest

from ionm.pipeline.alerts import scope_of, threshold_rise_alert
from ionm.pipeline.evaluator import Evaluator
from ionm.pipeline.synthetic import make_mep, make_ssep

NAMES = ["C4'-Fz (L median)", "C3'-Fz (R median)"]


def _evaluate(d):
    sw = d["sweeps"]
    ev = Evaluator(float(d["fs"]), int(d["pre_samples"]), sw.shape[-1], str(d["modality"]),
                   list(d["channel_names"]), float(d["baseline_end_s"]))
    states = []
    for i in range(len(sw)):
        states.append(ev.process(sw[i], float(d["stim_time_s"][i])).states)
    return ev, states


@pytest.mark.parametrize("seed", [41, 42])
def test_stable_recordings_do_not_alert(seed):
    d = make_ssep(int(420 * 4.7), seed=seed, snr_db=-15.0, n_channels=2, baseline_end_s=60.0,
                  channel_names=NAMES, jitter_sd=0.25)
    ev, _ = _evaluate(d)
    assert ev.alerts == []


def test_gradual_global_decline_below_the_criterion_alerts_with_global_scope():
    # Both sides fall together from 1 to 0.3 over 3 minutes: an anaesthetic-like, global change.
    amp = lambda t: np.interp(t, [100, 280], [1.0, 0.3])  # noqa: E731
    d = make_ssep(int(400 * 4.7), seed=43, snr_db=-8.0, n_channels=2, amplitude=amp, baseline_end_s=80.0,
                  channel_names=NAMES)
    ev, _ = _evaluate(d)
    assert ev.alerts, "a decline to 30 % must alert"
    assert all(a.scope == "global" for a in ev.alerts)
    assert all(a.t_s > 190.0 for a in ev.alerts)  # not before the truth reached 50 % (at 190 s)


def test_decline_that_stays_above_the_criterion_warns_but_does_not_alert():
    amp = lambda t: np.interp(t, [100, 250], [1.0, 0.6])  # noqa: E731
    d = make_ssep(int(400 * 4.7), seed=44, snr_db=-3.0, n_channels=2, amplitude=amp, baseline_end_s=80.0,
                  channel_names=NAMES)
    ev, states = _evaluate(d)
    assert ev.alerts == []
    assert states[-1] == ["warning", "warning"]


def test_recovery_returns_to_normal_without_a_second_alert():
    amp = lambda t: np.where((t > 120) & (t < 200), 0.2, 1.0)  # noqa: E731
    d = make_ssep(int(330 * 4.7), seed=45, snr_db=-8.0, amplitude=amp, baseline_end_s=80.0,
                  channel_names=NAMES[:1])
    ev, states = _evaluate(d)
    assert len(ev.alerts) == 1 and 120 < ev.alerts[0].t_s < 140
    t = d["stim_time_s"]
    assert states[int(np.searchsorted(t, 190.0))] == ["alert"]
    assert states[-1] == ["normal"]


def test_mep_amplitude_criterion_needs_two_trials():
    amp = np.full((20, 1), 900.0)
    amp[10] = 80.0  # one small trial: common, no alert
    amp[14:] = 150.0  # -83 % from trial 14 on
    d = make_mep(20, seed=46, amplitude_uv=amp, baseline_end_s=60.0, channel_names=["R APB"])
    ev, states = _evaluate(d)
    assert [(a.criterion, a.t_s) for a in ev.alerts] == [("amplitude", float(d["stim_time_s"][15]))]
    assert states[10] == ["warning"] and states[15] == ["alert"]
    assert ev.alerts[0].amplitude_ratio == pytest.approx(150 / 900, abs=0.03)


def test_scope_from_channel_sides():
    names = ["C4' (L median)", "C3' (R median)", "EpL (L Erb)"]
    assert scope_of(0, np.array([False, True, False]), names) == "global"
    assert scope_of(0, np.array([False, False, True]), names) == "focal"  # same side only
    assert scope_of(0, np.array([False, False, False]), names[:1]) == "unknown"


def test_threshold_rise():
    assert threshold_rise_alert(np.array([250, 300, 380, 390]), 250.0)
    assert not threshold_rise_alert(np.array([250, 380, 300]), 250.0)
