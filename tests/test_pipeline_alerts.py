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
    # The truth reaches 50 % at 229 s and 65 % at 190 s. A response falling this fast (23 %/min) may alert a
    # little before it crosses the criterion, but not before the decline is well under way.
    assert all(a.t_s > 190.0 for a in ev.alerts)


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


def test_a_channel_whose_baseline_does_not_reproduce_falls_back_on_its_midline_derivation():
    # Issue 1: the best-placed cortical channel is too noisy to reproduce at baseline; the midline derivation of
    # the same response (Cz'-Fpz) does. The left channel is tracked through it and alerts with it.
    names = ["CPz-CP4 (L tibial cortical)", "CPz-CP3 (R tibial cortical)", "Cz'-Fpz (tibial cortical)",
             "PFLp-PFLd (L popliteal)"]
    drop = lambda t: np.where(t > 150, 0.2, 1.0)  # noqa: E731
    amp = lambda t: np.stack([drop(t), np.ones_like(t), drop(t), np.ones_like(t)], 1)  # noqa: E731
    d = make_ssep(int(230 * 4.7), seed=61, modality="ssep-lower", snr_db=np.array([-32.0, -32.0, -10.0, -3.0]),
                  n_channels=4, amplitude=amp, baseline_end_s=80.0, channel_names=names)
    ev, _ = _evaluate(d)
    assert ev.tracker.bank is not None and not ev.tracker.bank.valid[0]  # its own baseline did not reproduce
    assert list(ev.tracked) == [True, False, True, True]  # the right one has no reproducing derivation
    first = {a.channel_name: a for a in ev.alerts}
    assert set(first) == {names[0], names[2]}
    assert all(150.0 < a.t_s < 180.0 and a.criterion == "amplitude" and a.scope == "focal" for a in ev.alerts)


def test_high_trial_to_trial_variability_neither_alerts_when_stable_nor_hides_a_drop():
    # Issue 2: per-trial amplitude SD as large as the response itself (100 %), on top of -12 dB noise.
    for seed in (63, 64):
        kw = dict(seed=seed, snr_db=-12.0, baseline_end_s=60.0, jitter_sd=1.0, channel_names=NAMES[:1])
        ev, _ = _evaluate(make_ssep(int(420 * 4.7), **kw))
        assert ev.alerts == []
        ev, _ = _evaluate(make_ssep(int(300 * 4.7), amplitude=lambda t: np.where(t > 150, 0.3, 1.0), **kw))
        assert len(ev.alerts) == 1 and 150.0 < ev.alerts[0].t_s < 270.0


@pytest.mark.parametrize("seed", [65, 66])
def test_an_acute_latency_shift_alerts_on_latency_and_a_small_one_does_not(seed):
    # Issue 4: +15 % latency with the amplitude unchanged is found by the change test within seconds; +5 % only
    # warns.
    kw = dict(seed=seed, snr_db=-8.0, baseline_end_s=60.0, channel_names=NAMES[:1])
    ev, _ = _evaluate(make_ssep(int(200 * 4.7), latency=lambda t: np.where(t > 150, 1.15, 1.0), **kw))
    assert [a.criterion for a in ev.alerts] == ["latency"] and 150.0 < ev.alerts[0].t_s < 165.0
    assert ev.alerts[0].latency_ratio == pytest.approx(1.15, abs=0.03)
    ev, states = _evaluate(make_ssep(int(300 * 4.7), latency=lambda t: np.where(t > 150, 1.05, 1.0), **kw))
    assert ev.alerts == [] and states[-1] == ["warning"]


UPPER_LEVELS = ["C3'-Fz (R median cortical N20)", "Cv5-Fz (cervical N13)", "EpR-Fz (R Erb's point N9)"]


def _plexus_stretch(levels: list[float], seed: int):
    """The right median nerve at three levels, each declining from 150 s to 270 s to its level and held: a noisy
    cortical and cervical channel (baselines known to about +-8 % and +-10 %) and a precise Erb's point."""
    amp = lambda t: np.stack([np.interp(t, [150.0, 270.0], [1.0, lv]) for lv in levels], 1)  # noqa: E731
    d = make_ssep(int(600 * 4.7), seed=seed, snr_db=np.array([-18.0, -20.0, 0.0]), n_channels=3, amplitude=amp,
                  baseline_end_s=90.0, channel_names=UPPER_LEVELS)
    ev, _ = _evaluate(d)
    return {a.channel_name: a for a in reversed(ev.alerts)}, ev


def test_levels_of_one_nerve_held_just_past_the_criterion_alert_with_the_level_that_shows_it():
    # Issue 16 (live case, limb_positioning): a brachial plexus stretch to 45 % at every level. Erb's point alerts
    # on its own; the cortical and cervical levels cannot be shown below 50 % at z against baselines known to
    # +-8-11 %, and were missed. Their own averages read below 50 % while Erb's is in alert: they alert too.
    first, ev = _plexus_stretch([0.45, 0.45, 0.45], seed=1)
    assert [ev.baseline_level_se(c) > 0.07 for c in range(3)] == [True, True, False]
    assert set(first) == set(UPPER_LEVELS)
    # The truth crosses 50 % at 259 s, still falling: an alert from 240 s (59 %) is early, not false.
    assert all(a.criterion == "amplitude" and 240.0 < a.t_s < 600.0 for a in first.values())
    assert first[UPPER_LEVELS[2]].t_s < min(first[UPPER_LEVELS[0]].t_s, first[UPPER_LEVELS[1]].t_s)


def test_a_level_of_the_same_nerve_that_stays_above_the_criterion_is_not_drawn_into_alert():
    # Erb's point falls to 30 %, the cortical and cervical levels only to 75 % (central amplification): only
    # Erb's alerts. (Held at 62 %, a level is drawn in now and then, when its own average reads under 50 %:
    # tools/nerve_levels.py, docs/EVALUATION.md.)
    first, _ = _plexus_stretch([0.75, 0.75, 0.3], seed=4)
    assert list(first) == [UPPER_LEVELS[2]]


def _console_flow(target: str, amplitude: float, modality: str, seed: int, duration_s: float):
    """Sweeps of the virtual patient (record_sweeps: every channel of the stimulated site, as the console's stream
    holds them) through evaluators driven as the console drives them: baseline_end_s = inf, and at 30 s a fresh
    evaluator fed the recent sweeps (at most 400) has its baseline set, then carries on. A change of `target`
    to `amplitude` at 40 s."""
    import math
    from collections import deque

    from ionm_hw.patient import load_scenario
    from ionm_hw.sweeps import record_sweeps

    scn = load_scenario("stable")
    scn["events"] = [{"type": "change", "targets": [target], "onset_s": 40.0, "ramp_s": 0.0,
                      "amplitude": amplitude, "latency": 1.0}]
    d = record_sweeps(scn, seed, modality=modality, duration_s=duration_s, pre_ms=5.0,
                      post_ms=50.0 if modality == "ssep-upper" else 90.0)
    names = list(d["channel_names"])

    def fresh() -> Evaluator:
        return Evaluator(d["fs"], d["pre_samples"], d["sweeps"].shape[-1], modality, names, baseline_end_s=math.inf)

    ev, recent, alerts = fresh(), deque(maxlen=400), []
    for x, t in zip(d["sweeps"], d["stim_time_s"], strict=True):
        alerts += ev.process(x, float(t)).alerts
        recent.append((float(t), x))
        if not ev.baseline_set and t >= 30.0:
            ev = fresh()
            for tt, xx in recent:
                ev.process(xx, tt)
            ev.set_baseline()
    return ev, alerts, names, d["truth"]


@pytest.mark.parametrize("target,amplitude,modality,within_s", [
    ("median_L_cortical", 0.1, "ssep-upper", 40.0),
    ("tibial_L_cortical", 0.25, "ssep-lower", 40.0),
])
def test_console_baseline_then_a_drop_ten_seconds_later_alerts_on_the_cortical_channel(target, amplitude, modality,
                                                                                        within_s):
    # Issue 5 (live use): a baseline taken at 30 s, the response dropping at 40 s. The baseline has to serve as the
    # reference of the first windows after it; before, nothing (arm) or only a late latency alert (leg) came.
    ev, alerts, names, truth = _console_flow(target, amplitude, modality, seed=4, duration_s=40.0 + within_s + 5)
    channel = names[truth["channel"][truth["names"].index(target)]]
    assert ev.tracked[names.index(channel)]
    mine = [a for a in alerts if a.channel_name == channel]
    assert mine and 40.0 < mine[0].t_s < 40.0 + within_s and mine[0].criterion == "amplitude"
    assert all(a.t_s > 40.0 for a in alerts)


def test_mep_amplitude_criterion_needs_two_trials():
    amp = np.full((20, 1), 900.0)
    amp[10] = 80.0  # one small trial: common, no alert
    amp[14:] = 150.0  # -83 % from trial 14 on
    d = make_mep(20, seed=46, amplitude_uv=amp, baseline_end_s=60.0, channel_names=["R APB"])
    ev, states = _evaluate(d)
    assert [(a.criterion, a.t_s) for a in ev.alerts] == [("amplitude", float(d["stim_time_s"][15]))]
    assert states[10] == ["normal"] and states[15] == ["alert"]  # one small trial is not evidence
    assert ev.alerts[0].amplitude_ratio == pytest.approx(150 / 900, abs=0.03)


MEP_NAMES = ["APB-L (L APB)", "APB-R (R APB)", "AH-L (L AH)", "AH-R (R AH)", "TA-L (L TA)", "TA-R (R TA)"]


def _lognormal_trials(n: int, cv: float, seed: int, n_channels: int = 6) -> np.ndarray:
    """Trial amplitude factors (median 1) with the given trial-to-trial coefficient of variation."""
    sd = np.sqrt(np.log(1 + cv**2))
    return np.exp(np.random.default_rng(seed).normal(0.0, sd, (n, n_channels)))


def test_mep_normal_trial_variability_never_alerts():
    """CV 48 % (hand), every channel, 600 trains after a 5-train baseline: single small trials come and go,
    no channel alerts (an alert needs 2 of 3 trials at -80 %)."""
    amp = 1000.0 * _lognormal_trials(605, 0.48, seed=7)
    d = make_mep(605, seed=8, amplitude_uv=amp, interval_s=4.0, baseline_end_s=20.0, n_channels=6,
                 channel_names=MEP_NAMES, onset_ms=[[20, 20, 38, 38, 28, 28]])
    ev, _ = _evaluate(d)
    assert ev.tracked.all() and ev.alerts == []


def test_mep_channel_in_alert_does_not_alert_again_until_recovered():
    """Left TA to ~15 % (trials scattering across the 20 % line): one alert, however long it lasts; back to
    baseline, it recovers; a second drop is a second alert."""
    n = 120
    f = _lognormal_trials(n, 0.35, seed=11, n_channels=1)[:, 0]
    level = np.ones(n)
    level[20:90] = 0.15
    level[100:] = 0.08
    d = make_mep(n, seed=12, amplitude_uv=(800.0 * f * level)[:, None], interval_s=4.0, baseline_end_s=20.0,
                 channel_names=["TA-L (L TA)"], onset_ms=28.0)
    ev, states = _evaluate(d)
    t = d["stim_time_s"]
    assert [a.t_s for a in ev.alerts][:1] and t[20] < ev.alerts[0].t_s <= t[21]  # within 2 trains
    assert len(ev.alerts) == 2 and t[100] < ev.alerts[1].t_s <= t[101]
    assert "normal" in [st[0] for st in states[90:100]]


def test_one_sided_leg_mep_loss_with_unchanged_controls_is_focal():
    """Left leg muscles to 10 %; arms and the right leg unchanged at CV 27-48 %: two focal alerts."""
    n = 80
    f = _lognormal_trials(n, 0.45, seed=21)
    level = np.ones((n, 6))
    level[40:, 2] = level[40:, 4] = 0.10
    d = make_mep(n, seed=22, amplitude_uv=900.0 * f * level, interval_s=4.0, baseline_end_s=20.0, n_channels=6,
                 channel_names=MEP_NAMES, onset_ms=[[20, 20, 38, 38, 28, 28]])
    ev, _ = _evaluate(d)
    assert sorted(a.channel_name for a in ev.alerts) == [MEP_NAMES[2], MEP_NAMES[4]]
    assert {a.scope for a in ev.alerts} == {"focal"}
    assert all(d["stim_time_s"][40] < a.t_s <= d["stim_time_s"][41] for a in ev.alerts)


def test_scope_from_channel_sides():
    names = ["C4' (L median)", "C3' (R median)", "EpL (L Erb)"]
    assert scope_of(0, np.array([False, True, False]), names) == "global"
    assert scope_of(0, np.array([False, False, True]), names) == "focal"  # same side only
    assert scope_of(0, np.array([False, False, False]), names[:1]) == "unknown"
    # A channel recording the same response (a midline derivation pooled with it) is no control.
    mid = ["CPz-CP4 (L tibial)", "Cz'-Fpz (tibial)", "PFRp-PFRd (R popliteal)"]
    assert scope_of(0, np.array([False, True, False]), mid, same_response=[0, 1]) == "focal"
    assert scope_of(0, np.array([False, True, False]), mid) == "global"


def test_threshold_rise():
    assert threshold_rise_alert(np.array([250, 300, 380, 390]), 250.0)
    assert not threshold_rise_alert(np.array([250, 380, 300]), 250.0)


def test_non_finite_samples_reject_only_their_channel_with_their_own_reason():
    # A sweep file from another tool may carry NaN or inf (a dropped packet, a divide by zero upstream): that
    # channel's sweep is rejected as "nonfinite", counted once, and the other channel carries on.
    d = make_ssep(int(90 * 4.7), seed=46, snr_db=-8.0, n_channels=2, baseline_end_s=60.0, channel_names=NAMES)
    sw = np.array(d["sweeps"])
    sw[100, 0, 50] = np.nan
    sw[101, 1, 7] = np.inf
    sw[102, 0, :] = -np.inf
    ev = Evaluator(float(d["fs"]), int(d["pre_samples"]), sw.shape[-1], "ssep-upper", NAMES, 60.0)
    reasons = [ev.process(sw[i], float(d["stim_time_s"][i])).reasons for i in range(len(sw))]
    assert reasons[100] == ["nonfinite", None]
    assert reasons[101] == [None, "nonfinite"]
    assert reasons[102] == ["nonfinite", None]
    counts = ev.rejected()
    assert counts[NAMES[0]].get("nonfinite") == 2 and counts[NAMES[1]].get("nonfinite") == 1
    assert sum(counts[NAMES[0]].values()) == sum(r[0] is not None for r in reasons)
    assert ev.alerts == []


def test_one_outlying_baseline_trial_does_not_delay_an_mep_alert():
    """A baseline of 6 trains at CV 35 % with one trial at a fifth of the others (common: all-or-none, a
    missed volley): the channel's criterion must not follow that trial deep below 20 %. The TA then drops to
    12 %: alert within 2 trains. (With the plain SD of the baseline's log amplitudes its criterion fell far
    below 20 % and this drop took 6 trains; the live-case bench's left TA took 5-6.)"""
    n = 40
    f = _lognormal_trials(n, 0.35, seed=31, n_channels=1)[:, 0]
    f[3] = 0.2
    level = np.where(np.arange(n) >= 12, 0.12, 1.0)
    d = make_mep(n, seed=32, amplitude_uv=(800.0 * f * level)[:, None], interval_s=4.0, baseline_end_s=21.0,
                 channel_names=["TA-L (L TA)"], onset_ms=28.0)
    ev, _ = _evaluate(d)
    t = d["stim_time_s"]
    assert ev.mep_alerts.amplitude_level[0] >= 0.1
    assert ev.alerts and t[12] < ev.alerts[0].t_s <= t[13]


def test_mep_trials_drowned_in_cautery_are_not_a_loss():
    """Electrocautery during two trains after the baseline: every channel's background is hundreds of µV, so no
    response could have been seen. That is not a loss on six muscles at once (the live-case bench's
    cautery_heavy scenario raised six "loss" alerts at the first trains after B): those trials are rejected as
    "noise", and a real loss with a quiet background still alerts."""
    n = 16
    f = _lognormal_trials(n, 0.35, seed=41)
    amp = 900.0 * f
    amp[12:, 4] = 0.0  # then the left TA is lost, with a quiet background
    d = make_mep(n, seed=42, amplitude_uv=amp, interval_s=4.0, baseline_end_s=21.0, n_channels=6,
                 channel_names=MEP_NAMES, onset_ms=[[20, 20, 38, 38, 28, 28]])
    rng = np.random.default_rng(43)
    burst = 400.0 * rng.standard_normal(d["sweeps"][8:10].shape)  # 400 µV SD, broadband, the whole sweep
    d["sweeps"][8:10] += burst.astype(np.float32)
    ev, states = _evaluate(d)
    assert all(s == ["normal"] * 6 for s in states[:12])
    assert [a.channel_name for a in ev.alerts] == [MEP_NAMES[4]] and ev.alerts[0].criterion == "loss"
    assert all(sum(ev.rejected()[nm].values()) >= 2 for nm in MEP_NAMES)  # counted, by whichever reason


def test_an_mep_falling_through_the_criterion_alerts_at_the_second_train_past_it():
    """A corticospinal injury over 20 s (5 trains): the first train whose truth is past -80 % is drawn just
    above it (trial scatter at the crossing is a coin flip), the next one far below. Two consecutive trials
    that together are past the criterion (geometric mean, each counted no lower than half of it) and the last
    past it alone are the evidence: alert at the second train. (Two of three trials each past it, alone, waited
    for a third train: the live-case bench's worst MEP time to alert, 3 trains against a goal of 2.)"""
    f = _lognormal_trials(20, 0.35, seed=51, n_channels=1)[:, 0]
    f[:8] = np.clip(f[:8], 0.8, 1.25)  # a baseline of ordinary trials
    level = np.ones(20)
    level[8:] = [0.8, 0.6, 0.42, 0.24, 0.09, 0.1, 0.1, 0.1, 0.1, 0.1, 0.1, 0.1]
    f[8:] = 1.0  # the scripted level itself: the crossing trial (index 11) is at 24 %, the next at 9 %
    d = make_mep(20, seed=52, amplitude_uv=(800.0 * f * level)[:, None], interval_s=4.0, baseline_end_s=29.0,
                 channel_names=["TA-L (L TA)"], onset_ms=28.0)
    ev, _ = _evaluate(d)
    t = d["stim_time_s"]
    assert ev.alerts and ev.alerts[0].t_s == pytest.approx(t[12]), [a.t_s for a in ev.alerts]
    assert ev.alerts[0].criterion == "amplitude" and len(ev.alerts) == 1


def test_one_mep_trial_just_past_the_criterion_after_an_ordinary_one_is_not_an_alert():
    """The pair rule needs both trials low: an ordinary trial (50 %) then one at 15 % is scatter, not evidence."""
    f = np.ones(20)
    f[12], f[13] = 0.5, 0.15
    d = make_mep(20, seed=53, amplitude_uv=(800.0 * f)[:, None], interval_s=4.0, baseline_end_s=29.0,
                 channel_names=["TA-L (L TA)"], onset_ms=28.0)
    ev, _ = _evaluate(d)
    assert ev.alerts == []
