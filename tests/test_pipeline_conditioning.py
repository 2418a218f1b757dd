"""Conditioning: calibration, blanking, zero-phase filtering, mains cancellation, artifact rejection."""

from __future__ import annotations

import numpy as np
import pytest

from ionm.pipeline.conditioning import (
    ArtifactRejector,
    MainsCanceller,
    TrialMainsFit,
    bandpass,
    blank_slice,
    blank_stimulus,
    counts_to_uv,
    lsb_uv,
)
from ionm.pipeline.synthetic import SSEP_UPPER_COMPONENTS, ssep_waveform

FS = 8000.0


def test_counts_to_uv_uses_gain_correction_and_offset_per_channel():
    # ADS1299 at gain 24, Vref 4.5 V: full scale ±187.5 mV over 2^23 codes.
    assert lsb_uv(24) == pytest.approx(187_500.0 / 2**23)
    counts = np.array([[1000, -1000], [2**23 - 1, 0]])
    uv = counts_to_uv(counts, pga_gain=[24, 12], gain_correction=[0.01, -0.02], offset_uv=[5.0, -3.0])
    lsb = 4.5e6 / 2**23
    expect = np.array([[(1000 * lsb / 24 - 5.0) * 1.01, (-1000 * lsb / 24 - 5.0) * 1.01],
                       [((2**23 - 1) * lsb / 12 + 3.0) * 0.98, 3.0 * 0.98]])
    np.testing.assert_allclose(uv, expect, rtol=1e-12)


def test_blanking_interpolates_a_straight_line_over_the_artefact_only():
    n, pre = 200, 40
    x = np.sin(np.arange(n) / 7.0)
    dirty = x.copy()
    sl = blank_slice(FS, pre, n, (0.5, 2.0))
    assert (sl.start, sl.stop) == (pre - 4, pre + 17)
    dirty[sl] += 500.0
    out = blank_stimulus(dirty, FS, pre, (0.5, 2.0))
    np.testing.assert_array_equal(out[: sl.start], x[: sl.start])
    np.testing.assert_array_equal(out[sl.stop:], x[sl.stop:])
    line = np.interp(np.arange(sl.start, sl.stop), [sl.start - 1, sl.stop], [x[sl.start - 1], x[sl.stop]])
    np.testing.assert_allclose(out[sl], line)


@pytest.mark.parametrize("fs", [8000.0, 16000.0])
def test_zero_phase_band_pass_keeps_peak_latencies_within_one_sample(fs):
    pre = int(0.005 * fs)
    n = pre + int(0.05 * fs)
    t_ms = (np.arange(n) - pre) / fs * 1e3
    wave = ssep_waveform(t_ms, SSEP_UPPER_COMPONENTS)
    out = bandpass(wave + 300.0, fs, (30.0, 1000.0))  # an electrode offset too
    for lo, hi, sign in ((17.0, 22.0, -1), (22.0, 29.0, 1)):
        win = (t_ms >= lo) & (t_ms <= hi)
        before = np.flatnonzero(win)[np.argmax(sign * wave[win])]
        after = np.flatnonzero(win)[np.argmax(sign * out[win])]
        assert abs(int(after) - int(before)) <= 1


def test_mains_canceller_removes_hum_and_keeps_the_evoked_response():
    rng = np.random.default_rng(3)
    pre, n, rate = 40, 440, 4.7
    t_ms = (np.arange(n) - pre) / FS * 1e3
    ep = ssep_waveform(t_ms, SSEP_UPPER_COMPONENTS)
    canc = MainsCanceller(FS, n, pre, mains_hz=(50.0, 60.0))
    residual, kept = [], []
    for i in range(200):
        t0 = i / rate + 0.013 * i % 0.2
        t_abs = t0 + (np.arange(n) - pre) / FS
        hum = 20 * np.sin(2 * np.pi * 50 * t_abs + 1) + 6 * np.sin(2 * np.pi * 150 * t_abs + 2)
        noise = rng.standard_normal(n)
        out = canc.apply(ep + hum + noise, t0)
        if i >= 30:
            residual.append(out - ep - noise)
            kept.append(out - noise)
    hum_left = np.sqrt(np.mean(np.square(residual)))
    assert hum_left < 0.05 * 20 / np.sqrt(2)  # < 5 % of the hum's RMS (14 µV)
    avg = np.mean(kept, axis=0)
    # The response is not cancelled: its average comes through within 3 % of its energy.
    assert np.dot(avg, ep) / np.dot(ep, ep) == pytest.approx(1.0, abs=0.03)


@pytest.mark.parametrize("mains_hz", [50.0, 60.0])
def test_a_single_trial_loses_its_own_hum_over_the_whole_sweep_and_keeps_its_response(mains_hz):
    # A TcMEP trial: 45 ms before the train's last pulse, of which the 32 ms before the train are fitted;
    # hum of 30 µV with a 3rd harmonic at a random phase; a 100 µV response at 30 ms that the fit never sees.
    g = np.random.default_rng(3)
    pre, n = 360, 1040  # 45 ms and 130 ms at 8 kHz
    t = (np.arange(n) - pre) / FS
    fit = np.zeros(n, dtype=bool)
    fit[: pre - 104] = True  # up to 13 ms before the last pulse (the train's blanking)
    resp = 100.0 * np.exp(-0.5 * ((t - 0.030) / 0.002) ** 2)
    phase = g.uniform(0, 2 * np.pi, size=(2, 1))
    hum = 30.0 * np.sin(2 * np.pi * mains_hz * t + phase) + 6.0 * np.sin(2 * np.pi * 3 * mains_hz * t + 2 * phase)
    noise = g.normal(0.0, 2.0, size=(2, n))
    x = resp + hum + noise + 40.0  # and an offset
    out = TrialMainsFit(FS, n, pre, (50.0, 60.0), fit).apply(x)
    resid = out - resp - noise
    # Hum and offset gone to within the noise's share of the fit, far from the fitted samples too.
    assert np.max(np.abs(resid)) < 3.0
    assert np.max(np.abs(resid[:, pre:])) < 3.0
    # The input is not changed unless in_place.
    np.testing.assert_allclose(x, resp + hum + noise + 40.0)


def test_a_trial_fit_needs_a_mains_period_of_fit_samples_and_is_otherwise_left_alone():
    n, pre = 800, 120
    fit = np.zeros(n, dtype=bool)
    fit[: pre - 104] = True  # 2 ms: the old 15 ms pre-train window less the blanking
    x = np.random.default_rng(1).normal(size=(3, n)) + 25.0 * np.sin(2 * np.pi * 60.0 * np.arange(n) / FS)
    np.testing.assert_array_equal(TrialMainsFit(FS, n, pre, (50.0, 60.0), fit).apply(x), x)


def test_artifact_rejection_counts_each_reason_exactly():
    rng = np.random.default_rng(5)
    n_ch, n = 2, 400
    rej = ArtifactRejector(n_ch, amplitude_uv=100.0)
    planted = {(30, 0): "saturation", (31, 0): "saturation", (50, 1): "cautery", (60, 0): "amplitude",
               (61, 1): "amplitude", (70, 1): "flat"}
    seen = {}
    for i in range(120):
        raw = 5.0 * rng.standard_normal((n_ch, n)) + 200.0  # 200 µV electrode offset
        cond = raw - raw.mean(axis=1, keepdims=True)
        for (k, ch), reason in planted.items():
            if k != i:
                continue
            if reason == "saturation":
                raw[ch, 100:140] = 187_500.0
                cond[ch, 100:140] = 0.0
            elif reason == "cautery":
                burst = 60.0 * rng.standard_normal(n) * (-1.0) ** np.arange(n)  # broadband, mostly high
                raw[ch] += burst
                cond[ch] += burst * 0.3
            elif reason == "amplitude":
                bump = 150.0 * np.exp(-0.5 * ((np.arange(n) - 200) / 40.0) ** 2)  # slow: EMG/movement
                raw[ch] += bump
                cond[ch] += bump
            elif reason == "flat":
                raw[ch] = 93_000.0
                cond[ch] = 0.0
        for ch, r in enumerate(rej.check(raw, cond)):
            if r is not None:
                seen[(i, ch)] = r
    assert seen == planted
    assert rej.counts[0] == {"flat": 0, "saturation": 2, "cautery": 0, "amplitude": 1}
    assert rej.counts[1] == {"flat": 1, "saturation": 0, "cautery": 1, "amplitude": 1}


def test_rejection_learns_a_lasting_rise_of_noise_instead_of_rejecting_everything():
    rng = np.random.default_rng(8)
    rej = ArtifactRejector(1, amplitude_uv=1e6, history=60)
    reasons = []
    for i in range(300):
        sd = 2.0 if i < 100 else 10.0  # the noise level rises fivefold and stays
        x = sd * rng.standard_normal((1, 300))
        reasons.append(rej.check(x, x)[0])
    assert all(r == "amplitude" for r in reasons[100:115])
    assert all(r is None for r in reasons[200:])


@pytest.mark.parametrize("fs, band, n", [(16000.0, (30.0, 1000.0), 1600), (16000.0, (10.0, 3000.0), 1600),
                                         (4000.0, (30.0, 1000.0), 400)])
def test_bandpass_equals_sosfiltfilt_with_constant_padding(fs, band, n):
    # The right extension's passes go through a precomputed linear map; the result must be scipy's own.
    from scipy import signal as sps

    from ionm.pipeline.conditioning import bandpass, bandpass_sos

    rng = np.random.default_rng(7)
    x = rng.normal(0, 10, (16, n)) + np.linspace(0, 50, n)
    ref = sps.sosfiltfilt(bandpass_sos(fs, *band, 2), x, axis=-1, padtype="constant",
                          padlen=min(n - 1, int(fs / band[0])))
    scale = np.max(np.abs(ref))
    assert np.max(np.abs(bandpass(x, fs, band) - ref)) < 1e-9 * scale
    assert np.max(np.abs(bandpass(x[3], fs, band) - ref[3])) < 1e-9 * scale
