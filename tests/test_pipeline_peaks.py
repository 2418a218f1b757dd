"""Named peaks with manual override and uncertainty; MEP per-trial features."""

from __future__ import annotations

import numpy as np
import pytest

from ionm.pipeline import modalities
from ionm.pipeline.averaging import Average
from ionm.pipeline.peaks import PeakMarker, extremum, mep_features
from ionm.pipeline.synthetic import (
    SSEP_LOWER_COMPONENTS,
    SSEP_UPPER_COMPONENTS,
    make_mep,
    ssep_waveform,
)


def _true_extremum(components, polarity, lo, hi, latency=1.0):
    """Latency (ms) of the noise-free waveform's extremum, on a 1 µs grid."""
    t = np.arange(lo, hi, 0.001)
    w = ssep_waveform(t, components, latency=latency)
    return t[np.argmax(polarity * w)]


def _average(wave, noise_a=None, noise_b=None):
    a = wave if noise_a is None else wave + noise_a
    b = wave if noise_b is None else wave + noise_b
    return Average((a + b) / 2, a, b, np.array(100.0), np.array(0.0), np.array(0.0))


@pytest.mark.parametrize("fs", [4000.0, 8000.0, 16000.0])
@pytest.mark.parametrize("latency", [1.0, 1.13])
def test_n20_p25_latencies_within_one_sample(fs, latency):
    pre = int(0.005 * fs)
    t_ms = (np.arange(pre + int(0.05 * fs)) - pre) / fs * 1e3
    wave = ssep_waveform(t_ms, SSEP_UPPER_COMPONENTS, amplitude=1.0, latency=latency)
    marker = PeakMarker(modalities.get("ssep-upper"), "cortical", fs, pre)
    peaks = marker.measure(_average(wave))
    one_sample_ms = 1e3 / fs
    assert peaks["N20"].latency_ms == pytest.approx(_true_extremum(SSEP_UPPER_COMPONENTS, -1, 15, 25, latency),
                                                    abs=one_sample_ms)
    assert peaks["P25"].latency_ms == pytest.approx(_true_extremum(SSEP_UPPER_COMPONENTS, 1, 20, 32, latency),
                                                    abs=one_sample_ms)
    truth_p2p = np.ptp(ssep_waveform(np.arange(15, 32, 0.001), SSEP_UPPER_COMPONENTS, latency=latency))
    assert peaks["N20-P25"].amplitude_uv == pytest.approx(truth_p2p, rel=0.01)
    assert peaks["N20"].latency_se_ms == 0.0  # identical halves: no spread


def test_lower_limb_p37_n45():
    fs, pre = 8000.0, 40
    t_ms = (np.arange(pre + 720) - pre) / fs * 1e3
    wave = ssep_waveform(t_ms, SSEP_LOWER_COMPONENTS)
    peaks = PeakMarker(modalities.get("ssep-lower"), "cortical", fs, pre).measure(_average(wave))
    assert peaks["P37"].latency_ms == pytest.approx(_true_extremum(SSEP_LOWER_COMPONENTS, 1, 30, 45), abs=1e3 / fs)
    assert peaks["N45"].latency_ms == pytest.approx(_true_extremum(SSEP_LOWER_COMPONENTS, -1, 38, 55), abs=1e3 / fs)


def test_manual_override_pins_a_component_until_cleared():
    fs, pre = 8000.0, 40
    t_ms = (np.arange(pre + 400) - pre) / fs * 1e3
    wave = ssep_waveform(t_ms, SSEP_UPPER_COMPONENTS)
    marker = PeakMarker(modalities.get("ssep-upper"), "cortical", fs, pre)
    auto = marker.measure(_average(wave))["N20"]
    marker.override("N20", 21.0)
    pinned = marker.measure(_average(wave))["N20"]
    assert pinned.manual and pinned.latency_ms == 21.0
    assert pinned.amplitude_uv == pytest.approx(np.interp(21.0, t_ms, wave), abs=1e-9)
    marker.clear("N20")
    again = marker.measure(_average(wave))["N20"]
    assert not again.manual and again.latency_ms == auto.latency_ms
    with pytest.raises(KeyError):
        marker.override("P37", 40.0)


def test_uncertainty_from_split_halves_tracks_the_noise():
    rng = np.random.default_rng(11)
    fs, pre = 8000.0, 40
    t_ms = (np.arange(pre + 400) - pre) / fs * 1e3
    wave = ssep_waveform(t_ms, SSEP_UPPER_COMPONENTS)
    marker = PeakMarker(modalities.get("ssep-upper"), "cortical", fs, pre)
    errors, ses = [], []
    for _ in range(200):
        na, nb = 0.08 * rng.standard_normal((2, len(wave)))
        p = marker.measure(_average(wave, na, nb))["N20-P25"]
        errors.append(p.amplitude_uv - np.ptp(wave[(t_ms > 15) & (t_ms < 32)]))
        ses.append(p.amplitude_se_uv)
    # The mean split-half SE (a half-normal draw around the true SE, mean sqrt(2/pi) SE) matches the scatter.
    assert np.mean(ses) / np.sqrt(2 / np.pi) == pytest.approx(np.std(errors), rel=0.25)


def test_extremum_outside_the_sweep_is_nan():
    lat, val = extremum(np.zeros(100), 8000.0, 10, -1, 50.0, 60.0)
    assert np.isnan(lat) and np.isnan(val)


@pytest.mark.parametrize("seed", [2, 4])
def test_mep_trial_features_against_known_truth(seed):
    rng = np.random.default_rng(seed)
    n = 60
    onset = rng.uniform(18.0, 40.0, n)
    amp = rng.uniform(300.0, 1500.0, n)  # 300 µV and up: well above the 50 µV presence threshold
    d = make_mep(n, seed=seed, onset_ms=onset[:, None], amplitude_uv=amp[:, None], noise_uv=5.0, artefact_uv=0.0)
    fs, pre = float(d["fs"]), int(d["pre_samples"])
    sweeps = d["sweeps"][:, 0].astype(float)
    start = pre + int(0.004 * fs)
    f = mep_features(sweeps - sweeps[:, :pre].mean(axis=1, keepdims=True), fs, pre, start)
    truth = d["truth"]
    onset_err = np.abs(f.onset_ms - truth["onset_ms"][:, 0])
    # Onset = where the generated response leaves zero (its first phase rises from there as a quarter sine). The
    # detector finds it once the rise clears 2 noise SD: a few samples late at most (measured: median 0.03 ms,
    # max 0.21 ms over both seeds; before the onset detector's rewrite, against an e^-2 point, median 0.36 ms).
    assert np.median(onset_err) < 0.1 and np.percentile(onset_err, 95) < 0.25 and onset_err.max() < 0.5
    np.testing.assert_allclose(f.p2p_uv, truth["p2p_uv"][:, 0], rtol=0.05)
    area_err = np.abs(f.area_uv_ms / truth["area_uv_ms"][:, 0] - 1)
    assert np.median(area_err) < 0.05 and area_err.max() < 0.25


def test_mep_without_response_has_no_onset_and_noise_sized_amplitude():
    d = make_mep(5, seed=5, amplitude_uv=0.0, noise_uv=5.0, artefact_uv=0.0)
    x = d["sweeps"][:, 0].astype(float)
    f = mep_features(x, float(d["fs"]), int(d["pre_samples"]), int(d["pre_samples"]) + 32)
    assert np.all(np.isnan(f.onset_ms))
    assert np.all(f.p2p_uv < 60.0) and np.all(f.area_uv_ms == 0.0)
