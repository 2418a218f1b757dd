"""Averaging: block, moving-window and exponential averages with split-half noise and SNR."""

from __future__ import annotations

import numpy as np
import pytest

from ionm.pipeline.averaging import (
    BlockAverager,
    ExponentialAverager,
    MovingAverager,
    PerChannelAverages,
    make_averager,
    noise_and_snr,
)

N = 300
SIGMA = 4.0  # µV per sample, white


def _template(n: int = N) -> np.ndarray:
    t = np.arange(n)
    return 2.0 * np.exp(-0.5 * ((t - 120) / 10.0) ** 2) - 1.5 * np.exp(-0.5 * ((t - 170) / 15.0) ** 2)


def _feed(avg, sweeps, accepted=None):
    for i, s in enumerate(sweeps):
        avg.update(s, None if accepted is None else accepted[i])


def test_moving_window_is_exactly_the_mean_of_the_last_n_accepted_sweeps():
    rng = np.random.default_rng(1)
    sweeps = rng.standard_normal((250, 2, N))
    accepted = rng.random((250, 2)) > 0.2
    avg = MovingAverager(2, N, n=40)
    _feed(avg, sweeps, accepted)
    est = avg.estimate()
    for ch in range(2):
        last = sweeps[accepted[:, ch], ch][-40:]
        np.testing.assert_allclose(est.mean[ch], last.mean(axis=0), atol=1e-12)
        assert est.n[ch] == 40
        # Halves: alternate accepted sweeps.
        np.testing.assert_allclose(np.sort([est.half_a[ch, 0], est.half_b[ch, 0]]),
                                   np.sort([last[0::2, 0].mean(), last[1::2, 0].mean()]), atol=1e-12)


def test_block_average_publishes_complete_blocks_only():
    rng = np.random.default_rng(2)
    sweeps = rng.standard_normal((130, 1, N))
    avg = BlockAverager(1, N, n=50)
    _feed(avg, sweeps)
    est = avg.estimate()
    np.testing.assert_allclose(est.mean[0], sweeps[50:100, 0].mean(axis=0), atol=1e-12)
    assert est.n[0] == 50


@pytest.mark.parametrize("kind,n", [("block", 200), ("moving", 200), ("exponential", 200)])
def test_split_half_noise_and_snr_match_the_known_truth(kind, n):
    rng = np.random.default_rng(7)
    template = _template()
    avg = make_averager(kind, 1, N, n)
    for _ in range(600):
        avg.update(template[None] + SIGMA * rng.standard_normal((1, N)))
    est = avg.estimate()
    n_eff = est.n[0]
    expected_noise = SIGMA / np.sqrt(n_eff)
    # One split-half estimate over 300 samples: its own relative error is ~1/sqrt(2*300) ≈ 4 %.
    assert est.noise_uv[0] == pytest.approx(expected_noise, rel=0.15)
    true_snr = 10 * np.log10(np.mean(template**2) / expected_noise**2)
    assert est.snr_db[0] == pytest.approx(true_snr, abs=1.0)
    resid = est.mean[0] - template
    assert np.sqrt(np.mean(resid**2)) == pytest.approx(expected_noise, rel=0.15)


def test_exponential_average_follows_a_step_with_its_time_constant():
    avg = ExponentialAverager(1, 4, n=50)
    for _ in range(500):
        avg.update(np.ones((1, 4)))
    for _ in range(50):
        avg.update(np.zeros((1, 4)))
    # After one time constant of sweeps at the new level, 1/e of the old level is left.
    assert avg.estimate().mean[0, 0] == pytest.approx(np.exp(-1.0), abs=0.02)


def test_noise_and_snr_of_a_noise_free_average():
    t = _template()
    noise, snr = noise_and_snr(t[None], t[None], t[None])
    assert noise[0] == 0.0 and snr[0] > 100


def test_kinds_are_selectable_per_channel():
    rng = np.random.default_rng(4)
    sweeps = rng.standard_normal((120, 2, N))
    per = PerChannelAverages([("moving", 20), ("block", 100)], N)
    _feed(per, sweeps)
    est = per.estimate()
    np.testing.assert_allclose(est.mean[0], sweeps[-20:, 0].mean(axis=0), atol=1e-12)
    np.testing.assert_allclose(est.mean[1], sweeps[:100, 1].mean(axis=0), atol=1e-12)
    with pytest.raises(ValueError, match="unknown averager"):
        make_averager("median", 1, N)
