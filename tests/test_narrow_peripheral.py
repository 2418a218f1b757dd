"""Sharp peripheral responses (Erb's point N9, popliteal fossa; 0.8 ms wide at half height) through the evaluator
as `ionm evaluate` runs it: latency jitter and wander of a fraction of a millisecond, mains and baseline drift,
and no change of the truth, raise no alert; true changes still do (issue 16, item 9).

The recordings are multi-derivation (cortical, cervical or midline, both nerve channels) from
ionm.pipeline.synthetic.ssep_montage_chunks, rendered a thousand sweeps at a time. Before the fix, a popliteal
response whose latency wandered by up to 0.8 ms (9 % of 8.7 ms, short of the 110 % criterion) raised latency alerts
at "111-113 %" (16 per 8 h over seeds 40-41), and the N9's acute-drop statistic reached z 26 against the
4.25 that marks an acute change: measured at the latency its reference had, a sharp response that moved a few
tenths of a millisecond reads as a response that collapsed.

Below, the same channels of the virtual patient under near-continuous electrocautery (cautery_heavy): the tails of
bursts that the rejector lets through must weigh as little as their noise says, not as clean sweeps.
"""

from __future__ import annotations

import numpy as np
import pytest

from ionm.pipeline.evaluator import Evaluator, EvaluatorConfig
from ionm.pipeline.synthetic import ssep_montage_chunks, ssep_montage_header

NERVE = {"ssep-upper": "EpL-Fz (L Erb's point N9)", "ssep-lower": "PFLp-PFLd (L popliteal fossa)"}
BASELINE_END_S = 240.0
JITTER_MS = 0.3  # trial-to-trial latency SD
WANDER_PEAK_MS = 0.8  # slow wander 0 -> 0.8 ms -> 0 every WANDER_PERIOD_S: 8.2 % of the N9, 9.2 % of the popliteal
WANDER_PERIOD_S = 600.0


def _wander(t: np.ndarray) -> np.ndarray:
    """Latency shift (ms, not truth) of every derivation's response: none at baseline, then a slow rise and fall."""
    return 0.5 * WANDER_PEAK_MS * (1.0 - np.cos(2 * np.pi * np.maximum(t - BASELINE_END_S, 0.0) / WANDER_PERIOD_S))


def _run(modality: str, seed: int, duration_s: float, **kw) -> tuple[Evaluator, list[float]]:
    """Evaluate a recording sweep by sweep as `ionm evaluate` does (mains 50 and 60 Hz); also the largest acute-drop
    z of the nerve channel on every sweep (the window statistic the alerts read, windows of >= 16 sweeps)."""
    h = ssep_montage_header(modality, baseline_end_s=BASELINE_END_S)
    names = list(h["channel_names"])
    ev = Evaluator(float(h["fs"]), int(h["pre_samples"]), h["n_samples"], modality, names,
                   float(h["baseline_end_s"]), EvaluatorConfig(mains_hz=(50.0, 60.0)))
    nerve = names.index(NERVE[modality])
    estimates = ev.tracker.estimates
    drop_z: list[float] = []

    def watched():  # the evaluator's own call, observed
        est = estimates()
        ok = est.valid[nerve] & (est.n >= ev.ssep_alerts.min_n)
        drop_z.append(float(np.max(np.where(ok, est.drop_z[nerve], -np.inf))))
        return est

    ev.tracker.estimates = watched  # type: ignore[method-assign]
    for chunk in ssep_montage_chunks(int(duration_s * 4.7), seed=seed, modality=modality, **kw):
        for x, t in zip(chunk["sweeps"], chunk["stim_time_s"], strict=True):
            ev.process(x, float(t))
    return ev, drop_z


@pytest.mark.parametrize("modality,seed,mains_hz", [("ssep-lower", 41, 60.0), ("ssep-upper", 40, 50.0)])
def test_sub_millisecond_jitter_and_wander_of_a_sharp_nerve_response_raise_no_alert(modality, seed, mains_hz):
    # 15 min after the baseline: the wander peaks at 0.8 ms at 9 and 19 min. Mains at 20 µV (a lognormal factor per
    # derivation), 100 µV of baseline drift (0.05-2 Hz), 0.3 ms jitter: the truth never changes.
    ev, drop_z = _run(modality, seed, BASELINE_END_S + 900.0, wander=_wander, latency_jitter_ms=JITTER_MS,
                      mains_hz=mains_hz, mains_uv=20.0, drift_uv=100.0)
    nerve = ev.names.index(NERVE[modality])
    assert ev.tracked[nerve]
    assert [(a.channel_name, a.criterion, round(a.latency_ratio, 3)) for a in ev.alerts] == []
    # The evidence itself, not only its outcome: an acute drop (z > 4.25) lets one 16-sweep window beyond 110 %
    # make a latency alert, so the nerve must never look like one. Before: z 26 (upper), 26 (lower).
    assert max(drop_z) < ev.ssep_alerts.z_change


@pytest.mark.parametrize("modality", ["ssep-upper", "ssep-lower"])
@pytest.mark.parametrize("amplitude,latency,criterion", [(0.4, 1.0, "amplitude"), (1.0, 1.15, None)])
def test_true_changes_of_a_sharp_nerve_response_are_still_found_within_seconds(modality, amplitude, latency,
                                                                                criterion):
    # A drop to 40 % or a move to 115 % latency of the nerve response alone, at 300 s, under the same jitter and
    # a slow wander (three sinusoids, 0.2 ms SD). Before the fix: 7-21 s (drop) and 3-5 s (latency) on seeds 1-3.
    onset = 300.0
    names = list(ssep_montage_header(modality)["channel_names"])
    nerve = names.index(NERVE[modality])

    def scripted(value: float):
        def truth(t: np.ndarray) -> np.ndarray:
            out = np.ones((len(t), len(names)))
            out[:, nerve] = np.where(t >= onset, value, 1.0)
            return out
        return truth

    ev, _ = _run(modality, 1, onset + 60.0, amplitude=scripted(amplitude), latency=scripted(latency),
                 latency_jitter_ms=JITTER_MS, latency_wander_ms=0.2)
    mine = [a for a in ev.alerts if a.channel == nerve]
    assert all(a.t_s >= onset for a in ev.alerts)
    assert mine and mine[0].t_s < onset + 30.0
    if criterion:
        assert mine[0].criterion == criterion


# -- cautery: the tails of bursts that pass rejection ---------------------------------------------------------------
# The live-case benchmark's cautery_heavy case (issue 16, item 9) alerted on a right Erb's point N9 whose truth never
# changed ("amplitude 0.41, latency 0.96", 50 s after the baseline; `ionm evaluate` on the same sweeps agreed). With
# bursts of 0.3-3 mV four times a minute, more than half of the rejector's last 100 sweeps (21 s) are cautery, so
# its running median is the cautery's: a burst's tail of 70-80 µV RMS (18 times the 4 µV of a clean sweep) then reads
# quieter than usual, is accepted, and was weighed as a clean sweep. Three of them moved the nerve's amplitude
# estimate from 0.94 to 4.8.

CAUTERY_NERVE = {"ssep-upper": ("R median", 1, "EpR-Fz (R Erb's point N9)"),
                 "ssep-lower": ("R tibial", 3, "PFRp-PFRd (R popliteal fossa)")}


def _cautery_case(modality: str, seed: int, duration_s: float) -> tuple[Evaluator, int, float]:
    """The virtual patient under cautery_heavy's random bursts (its one scripted burst left out), the right limb's
    montage evaluated as `ionm evaluate` does with the baseline at 60 s; also the largest distance of the nerve's
    amplitude estimate (Kalman state) from 1 after the baseline."""
    from ionm_hw.patient import load_scenario
    from ionm_hw.sweeps import record_sweeps

    site, output, nerve_name = CAUTERY_NERVE[modality]
    scn = load_scenario("cautery_heavy")
    scn["events"] = []
    d = record_sweeps(scn, seed, modality=modality, duration_s=duration_s, pre_ms=5.0,
                      post_ms=50.0 if modality == "ssep-upper" else 90.0, output=output)
    names = list(d["channel_names"])
    ev = Evaluator(float(d["fs"]), int(d["pre_samples"]), d["sweeps"].shape[-1], modality, names, 60.0,
                   stimulated=site)
    nerve = names.index(nerve_name)
    worst = 0.0
    for x, t in zip(d["sweeps"], d["stim_time_s"], strict=True):
        ev.process(x, float(t))
        if ev.baseline_set:
            worst = max(worst, abs(float(ev.tracker.kalman.state().amplitude[nerve]) - 1.0))
    return ev, nerve, worst


@pytest.mark.parametrize("modality", ["ssep-upper", "ssep-lower"])
def test_cautery_tails_that_pass_rejection_raise_no_alert_on_a_sharp_nerve_response(modality):
    # 5 min after the baseline, nothing changes. Before the fix: 2 amplitude alerts on the right popliteal channel
    # ("0.12, latency 1.28" at 129 s, "0.09, 1.35" at 306 s; 2 more in the next 10 min), and the N9's and the
    # popliteal response's amplitude estimates reached 2.4 and 2.6 (0.34 and 0.21 from 1 after).
    ev, nerve, worst = _cautery_case(modality, seed=1, duration_s=360.0)
    assert ev.tracked[nerve]
    assert [(a.t_s, a.channel_name, a.criterion) for a in ev.alerts] == []
    # The evidence, not only its outcome: the nerve's estimate never reaches the amplitude criterion (0.5 from 1).
    assert worst < 1.0 - ev.modality.amplitude_ratio_alert


def test_a_sweep_weighs_less_by_its_noise_variance_against_the_baseline_sweeps():
    # The weight the tracker gives a sweep follows its noise against the baseline's sweeps, not against the
    # rejector's running median: baseline noise plus k = 4 times another baseline sweep's noise holds 1 + k^2 = 17
    # times the baseline's noise variance, and weighs about 1/17; an ordinary sweep keeps its full weight.
    modality = "ssep-upper"
    h = ssep_montage_header(modality, baseline_end_s=60.0)
    names = list(h["channel_names"])
    ev = Evaluator(float(h["fs"]), int(h["pre_samples"]), h["n_samples"], modality, names, 60.0)
    nerve = names.index(NERVE[modality])
    clean, noisy = [], []
    prev = None
    for chunk in ssep_montage_chunks(int(120 * 4.7), seed=3, modality=modality):
        for raw, t in zip(chunk["sweeps"], chunk["stim_time_s"], strict=True):
            ev.process(raw, float(t))
            if not ev.baseline_set:
                continue
            x = ev.cond(np.asarray(raw, dtype=np.float64), float(t))
            ok = np.ones(len(names), dtype=bool)
            if prev is not None:
                # Another sweep less the baseline average is noise of the baseline's kind (its spectrum, its
                # mains residue), the response and its trial-to-trial variability aside.
                ev.tracker.update(x + 4.0 * (prev - ev.accum.halves()[0]), ok, float(t))
                noisy.append(float(ev.tracker.noise_scale[nerve]))
            ev.tracker.update(x, ok, float(t))
            clean.append(float(ev.tracker.noise_scale[nerve]))
            prev = x
    assert np.median(noisy) == pytest.approx(17.0, rel=0.25)
    assert np.mean(np.array(clean) == 1.0) >= 0.95
