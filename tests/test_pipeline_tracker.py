"""The fast change tracker: noise model, grid Kalman filter and window estimates against known truth."""

from __future__ import annotations

import numpy as np
import pytest

from ionm.pipeline.evaluator import Evaluator
from ionm.pipeline.synthetic import make_ssep
from ionm.pipeline.tracker import noise_covariance


def _run(d):
    sw = d["sweeps"]
    ev = Evaluator(float(d["fs"]), int(d["pre_samples"]), sw.shape[-1], str(d["modality"]),
                   list(d["channel_names"]), float(d["baseline_end_s"]))
    states = []
    for i in range(len(sw)):
        states.append(ev.process(sw[i], float(d["stim_time_s"][i])).tracker)
    return ev, states


def test_noise_covariance_is_toeplitz_and_positive_definite():
    rng = np.random.default_rng(0)
    x = np.cumsum(rng.standard_normal((200, 64)), axis=1)  # strongly correlated
    c = noise_covariance(x - x.mean(axis=0))
    assert np.allclose(c, c.T) and np.allclose(np.diag(c), c[0, 0])
    assert np.allclose(c[1:, 1:], c[:-1, :-1])
    assert np.linalg.eigvalsh(c).min() > 0


@pytest.mark.parametrize("amp,lat", [(0.4, 1.0), (1.0, 1.15), (0.5, 1.10)])
def test_kalman_state_converges_to_the_scripted_amplitude_and_latency(amp, lat):
    d = make_ssep(900, seed=31, snr_db=-5.0, baseline_end_s=60.0,
                  amplitude=lambda t: np.where(t > 100, amp, 1.0), latency=lambda t: np.where(t > 100, lat, 1.0))
    ev, states = _run(d)
    t = d["stim_time_s"]
    late = [s for s, ti in zip(states, t, strict=True) if ti > 150 and s is not None]
    a = np.array([s.amplitude[0] for s in late])
    s_ = np.array([s.latency[0] for s in late])
    # Within 10 % of the amplitude and 1 % of the latency (1 % = 0.2 ms at N20) once settled.
    assert np.median(a) == pytest.approx(amp, abs=0.1)
    assert np.median(s_) == pytest.approx(lat, abs=0.01)
    sd_a = np.array([s.amplitude_sd[0] for s in late])
    assert np.mean(np.abs(a - amp) <= 2.5 * sd_a) > 0.9


def test_window_estimates_of_a_stable_channel_agree_with_baseline_within_their_error():
    d = make_ssep(800, seed=32, snr_db=-15.0, baseline_end_s=60.0)
    ev, _ = _run(d)
    est = ev.tracker.estimates()
    ok = est.valid[0]
    # Against the baseline: the window's error and the baseline's own (its calibration from split halves).
    z = (est.amplitude[0, ok] - 1.0) / est.level_se(1.0)[0, ok]
    assert ok.sum() >= 10 and np.all(np.abs(z) < 3.5)
    # Latency: within 5 % (1 ms at N20) on every window, 1 % on the longest. (Its posterior SD on the 0.01
    # grid is smaller than the scatter seen here at -15 dB: the template's own noise is not in it.)
    assert np.all(np.abs(est.latency[0, ok] - 1.0) < 0.05)
    assert abs(est.latency[0, ok][-1] - 1.0) < 0.01


def test_toeplitz_solver_matches_a_dense_solve():
    from ionm.pipeline.tracker import noise_autocovariance, toeplitz_solve

    rng = np.random.default_rng(1)
    x = np.cumsum(rng.standard_normal((300, 96)), axis=1)
    acov = noise_autocovariance(x - x.mean(axis=0))
    b = rng.standard_normal((5, 96))
    dense = np.linalg.solve(noise_covariance(x - x.mean(axis=0)), b.T).T
    assert np.allclose(toeplitz_solve(acov, b), dense, rtol=1e-8, atol=1e-10 * np.abs(dense).max())


def test_noise_forms_match_dense_quadratic_forms_per_channel():
    # The whitened energy b' C^-1 b the tracker weighs sweeps by, each channel with its own covariance.
    from ionm.pipeline.tracker import NoiseForms, ToeplitzSolver, noise_autocovariance

    rng = np.random.default_rng(2)
    xs = [np.cumsum(rng.standard_normal((300, 96)), axis=1), rng.standard_normal((300, 96))]
    solvers = [ToeplitzSolver(noise_autocovariance(x - x.mean(axis=0))) for x in xs]
    b = rng.standard_normal((4, 2, 96))
    dense = np.stack([np.einsum("kn,kn->k", b[:, c], np.linalg.solve(noise_covariance(x - x.mean(axis=0)),
                                                                     b[:, c].T).T) for c, x in enumerate(xs)], 1)
    forms = NoiseForms(np.stack([s.column for s in solvers]))
    assert np.allclose(forms(b), dense, rtol=1e-8)
    assert np.allclose(solvers[0].quadratic(b[:, 0]), dense[:, 0], rtol=1e-8)


def test_low_passed_template_lowers_the_fit_variance_and_keeps_the_calibration(monkeypatch):
    from ionm.pipeline import tracker
    from ionm.pipeline.conditioning import Conditioner

    # A noisy template (-18 dB per sweep, ~50 s of baseline): most of its noise lies above the cortical response's
    # own band, and the low-pass removes it.
    d = make_ssep(1400, seed=33, snr_db=-18.0, modality="ssep-lower")
    fs, pre, sw = float(d["fs"]), int(d["pre_samples"]), d["sweeps"][:, 0]
    cond = Conditioner(fs, sw.shape[-1], pre, (30.0, 1000.0), (0.5, 3.0))
    x = np.array([cond(sw[i], float(d["stim_time_s"][i])) for i in range(len(sw))])
    base, fresh = x[:250], x[250:]  # a short baseline (~50 s), measured on sweeps it never saw
    idx = np.arange(cond.blank.stop, sw.shape[-1], tracker.decimation_for(fs, 1000.0))
    args = (base.mean(0), base[0::2].mean(0), base[1::2].mean(0), base[:, idx], fs, pre, idx, len(base))
    chosen = tracker.build_bank(*args)
    monkeypatch.setattr(tracker, "TEMPLATE_CUTOFFS_HZ", (None,))
    plain = tracker.build_bank(*args)
    y_chosen = fresh[:, idx] @ chosen.filters[0, tracker.I1]
    y_plain = fresh[:, idx] @ plain.filters[0, tracker.I1]
    assert np.isfinite(chosen.cutoff_hz[0]) and y_chosen.var() < 0.8 * y_plain.var()
    # The fresh sweeps are unchanged: they read 1 within the calibration's error and their own.
    assert abs(y_chosen.mean() - 1.0) < 3.5 * np.hypot(y_chosen.std() / np.sqrt(len(y_chosen)), chosen.baseline_se[0])
    # ...and their variance is what the bank predicts (within 20 %).
    assert y_chosen.var() == pytest.approx(chosen.var[0, tracker.I1], rel=0.2)


def test_pools_join_a_midline_derivation_to_the_responding_side_only():
    from ionm.pipeline.modalities import is_midline, side_of, site_of
    from ionm.pipeline.tracker import pool_members

    names = ["CPz-CP4 (L tibial)", "CPz-CP3 (R tibial)", "Cz'-Fpz (tibial P37)", "PFLp-PFLd (L popliteal)", "ch4"]
    sites = [site_of(n, "ssep-lower") for n in names]
    sides = [side_of(n) for n in names]
    assert sites == ["cortical"] * 3 + ["peripheral", "cortical"] and sides == ["left", "right", None, "left", None]
    info = np.array([0.0, 0.1, 1.0, 10.0, 1.0])  # the left leg responds (its popliteal fossa carries the most)
    pools = pool_members(sites, sides, [is_midline(n) for n in names], info)
    assert pools[0] == [0, 2] and pools[2] == [2, 0]  # the left cortical channel and the midline
    assert pools[1] == [1] and pools[3] == [3] and pools[4] == [4]  # other side, other site, unknown place
    # The right leg responding instead takes the midline channel to the right side.
    info_r = np.array([0.0, 1.0, 1.0, 0.0, 0.0])
    pools = pool_members(sites, sides, [is_midline(n) for n in names], info_r)
    assert pools[1] == [1, 2] and pools[0] == [0]


def test_pooled_fit_weights_channels_by_their_variance():
    from ionm.pipeline.tracker import S_GRID, Pooling

    var = np.stack([np.full(len(S_GRID), 1.0), np.full(len(S_GRID), 3.0)])
    pool = Pooling([[0, 1], [1, 0]], var, np.eye(2), np.array([True, True]))
    y = np.stack([np.full(len(S_GRID), 1.0), np.full(len(S_GRID), 5.0)])
    yp, vp, ok = pool.combine(y, np.array([True, True]))
    # inverse-variance weights 3/4 and 1/4; the pooled variance 1 / (1 + 1/3)
    assert np.allclose(yp, 0.75 * 1.0 + 0.25 * 5.0) and np.allclose(vp, 0.75) and ok.all()
    # A sweep twice as noisy as usual on channel 0 (variance x4): weights 3/7 and 4/7.
    yp, vp, _ = pool.combine(y, np.array([True, True]), np.array([4.0, 1.0]))
    assert np.allclose(yp, (3 * 1.0 + 4 * 5.0) / 7) and np.allclose(vp, 12 / 7)
    # One member rejected: the other alone.
    yp, vp, ok = pool.combine(y, np.array([False, True]))
    assert np.allclose(yp, 5.0) and np.allclose(vp, 3.0) and ok.all()
