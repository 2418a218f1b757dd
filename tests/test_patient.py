"""The virtual patient: determinism, block-size independence, and the physiology of single stimuli."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import signal

from ionm import board
from ionm_hw.patient import TRIGGER_OUTPUT, Pulse, VirtualPatient, load_scenario, scenario_names
from ionm_hw.sweeps import record_sweeps

FS = 8000.0
SCENARIOS = ["acute_cord_injury", "anaesthetic_depression", "cautery_heavy", "leadoff",
             "limb_positioning", "lumbar_fusion_l3_s1", "recovery", "relaxant_bolus_tcmep", "stable",
             "thoracic_fusion_t8_t12"]  # fmt: skip


def quiet(name: str = "stable", **noise: float) -> dict:
    """A scenario with every noise source off (unless given): the evoked physiology alone."""
    sc = load_scenario(name)
    sc["noise"].update(eeg_scale=0.0, emg_scale=0.0, floor_scale=0.0, mains_uv=0.0, cautery_per_min=0.0,
                       pops_per_min=0.0, emg_bursts_per_min=0.0)  # fmt: skip
    sc["noise"].update(noise)
    return sc


def busy() -> dict:
    """Everything happening at once in a few seconds: cautery, pops, EMG bursts, lead-off, stimuli."""
    sc = load_scenario("stable")
    sc["noise"].update(cautery_per_min=30.0, pops_per_min=60.0, emg_bursts_per_min=120.0)
    sc["events"] = [
        {"type": "cautery", "onset_s": 0.2, "duration_s": 0.3, "amplitude_uv": 800.0},
        {"type": "leadoff", "electrode": "Fz", "onset_s": 0.45, "end_s": 0.6},
        {"type": "change", "targets": ["tibial_*"], "onset_s": 0.1, "ramp_s": 0.5, "amplitude": 0.5, "latency": 1.1},
    ]
    return sc


def trains(first: int, n_pulses: int = 5, ipi_ms: float = 3.0) -> list[Pulse]:
    ipi = int(round(ipi_ms * FS / 1000))
    return [Pulse(first + k * ipi, TRIGGER_OUTPUT, 0.0, 50, False) for k in range(n_pulses)]


PULSES = [
    Pulse(100, 0, 25.0, 200, False),
    Pulse(950, 2, 35.0, 300, True),
    Pulse(2050, 1, 20.0, 200, False),
    *trains(3010),
    Pulse(3300, 3, 40.0, 300, False),
    Pulse(5990, 0, 25.0, 200, False),
]


def render_in_blocks(sc: dict, seed: int, sizes: list[int], pulses: list[Pulse] = PULSES) -> np.ndarray:
    p = VirtualPatient(sc, seed, FS)
    out, pos = [], 0
    for n in sizes:
        out.append(p.render(pos, n, [q for q in pulses if pos <= q.index < pos + n]))
        pos += n
    return np.concatenate(out)


def test_block_size_does_not_matter() -> None:
    sc = busy()
    whole = render_in_blocks(sc, 5, [8000])
    assert np.abs(whole).max() > 1e-3  # the busy scenario really is busy (cautery/pops/artefacts in mV)
    tens = render_in_blocks(sc, 5, [100] * 80)
    g = np.random.default_rng(0)
    sizes = [int(v) for v in g.integers(1, 300, 40)]
    sizes.append(8000 - sum(sizes))
    ragged = render_in_blocks(sc, 5, sizes)
    np.testing.assert_allclose(tens, whole, rtol=0, atol=1e-15)
    np.testing.assert_allclose(ragged, whole, rtol=0, atol=1e-15)


def test_first_index_may_jump_forward() -> None:
    sc = busy()
    pulses = [q for q in PULSES if not 3200 <= q.index < 3400] + [Pulse(3150, 2, 35.0, 300, False)]
    whole = VirtualPatient(sc, 9, FS).render(0, 8000, pulses)
    p = VirtualPatient(sc, 9, FS)
    a = p.render(0, 3200, [q for q in pulses if q.index < 3200])
    b = p.render(3400, 4600, [q for q in pulses if q.index >= 3400])  # samples 3200..3399 lost (overrun)
    np.testing.assert_allclose(a, whole[:3200], rtol=0, atol=1e-15)
    np.testing.assert_allclose(b, whole[3400:], rtol=0, atol=1e-15)
    # the tibial response to the pulse at 3150 (and the MEP of the train) carries on after the gap
    quiet_whole = VirtualPatient(quiet(), 9, FS).render(0, 8000, pulses)
    assert np.abs(quiet_whole[3400:3700, 2]).max() > 0.2e-6
    with pytest.raises(ValueError):
        p.render(7000, 10, [])  # going back in time


def test_seed_determinism() -> None:
    sc = busy()
    a = VirtualPatient(sc, 11, FS).render(0, 4000, PULSES[:3])
    b = VirtualPatient(sc, 11, FS).render(0, 4000, PULSES[:3])
    c = VirtualPatient(sc, 12, FS).render(0, 4000, PULSES[:3])
    np.testing.assert_array_equal(a, b)
    assert np.abs(a - c).max() > 1e-6


def test_channel_subset_is_the_same_signal() -> None:
    sc = busy()
    full = VirtualPatient(sc, 3, FS).render(0, 6000, PULSES)
    part = VirtualPatient(sc, 3, FS).render(0, 6000, PULSES, channels=[11, 2, 5])
    np.testing.assert_allclose(part, full[:, [11, 2, 5]], rtol=0, atol=1e-15)


def test_sweeps_are_windows_of_the_rendered_signal() -> None:
    sc = load_scenario("stable")
    rec = record_sweeps(sc, 4, modality="ssep-lower", duration_s=3.0, pre_ms=10, post_ms=80, channels=[2, 7, 11],
                        add_amplifier_noise=False)  # fmt: skip
    idx = np.round(rec["stim_time_s"] * FS).astype(int)
    assert len(idx) == 14 and np.allclose(np.diff(rec["stim_time_s"]), 1 / 4.7, atol=1 / FS)
    pulses = [Pulse(int(i), 2, 35.0, 300, False) for i in idx]
    x = VirtualPatient(sc, 4, FS).render(0, int(3 * FS), pulses, channels=[2, 7, 11]) * 1e6
    pre = rec["pre_samples"]
    for k, i in enumerate(idx):
        np.testing.assert_allclose(rec["sweeps"][k], x[i - pre : i + 640].T, rtol=1e-6, atol=1e-4)
    assert rec["sweeps"].dtype == np.float32 and rec["modality"] == "ssep-lower"
    assert rec["channel_names"][0].startswith("CPz-CP4")
    assert rec["truth"]["names"] == ["tibial_L_cortical", "tibial_L_popliteal"]
    assert rec["truth"]["channel"] == [0, 1]


def _peak_uv(sc: dict, seed: int, output: int, current: float, width: int, channel: int, window_ms: tuple) -> float:
    """Mean size of the negative peak in window_ms over 20 stimuli (noise-free patient), µV."""
    period = int(0.2 * FS)
    pulses = [Pulse(k * period + 10, output, current, width, False) for k in range(20)]
    x = VirtualPatient(sc, seed, FS).render(0, 20 * period, pulses, channels=[channel])[:, 0] * 1e6
    a, b = (int(w * FS / 1000) for w in window_ms)
    return float(np.mean([-x[q.index + a : q.index + b].min() for q in pulses]))


def test_recruitment_saturates_with_current() -> None:
    sc = quiet()
    median = [_peak_uv(sc, 2, 0, i, 200, 5, (7, 13)) for i in (2.0, 5.0, 10.0, 15.0, 25.0, 50.0)]  # Erb's N9
    assert all(np.diff(median) > 0)  # more current, more fibres
    assert median[0] < 0.02 * median[-1] and median[1] < 0.12 * median[-1]  # ~nothing below 5 mA
    assert median[4] > 0.85 * median[-1]  # near maximal at 25 mA
    tibial = [_peak_uv(sc, 2, 2, i, 300, 7, (6, 12)) for i in (5.0, 25.0, 35.0, 70.0)]  # popliteal
    assert tibial[0] < 0.05 * tibial[-1] and tibial[2] > 0.8 * tibial[-1]
    assert tibial[1] / tibial[-1] < median[4] / median[-1]  # the tibial nerve needs more current
    # strength–duration: the same current at a narrower pulse recruits less
    assert _peak_uv(sc, 2, 0, 10.0, 100, 5, (7, 13)) < _peak_uv(sc, 2, 0, 10.0, 400, 5, (7, 13))


def test_tcmep_follows_the_last_pulse_of_the_train() -> None:
    sc = quiet()
    starts = [int(k * 1.5 * FS) for k in range(6)]
    p = VirtualPatient(sc, 6, FS)
    x = p.render(0, int(9 * FS), [q for s in starts for q in trains(s)]) * 1e6
    ipi = int(3e-3 * FS)
    onsets = {}
    for ch, name in ((9, "APB"), (11, "AH"), (13, "TA")):
        first_rise = []
        for s in starts:
            last = s + 4 * ipi
            seg = np.abs(x[last + int(0.011 * FS) : last + int(0.1 * FS), ch])  # past the artefacts
            first_rise.append((np.argmax(seg > 0.05 * seg.max()) + int(0.011 * FS)) / FS * 1000)
        onsets[name] = float(np.median(first_rise))  # ms after the LAST pulse
    assert 15 <= onsets["APB"] <= 26
    assert 24 <= onsets["TA"] <= 38
    assert 30 <= onsets["AH"] <= 46
    assert onsets["APB"] < onsets["TA"] < onsets["AH"]
    # a single pulse hardly reaches the motoneurons; five do
    single = VirtualPatient(sc, 6, FS).render(0, int(9 * FS), [q for s in starts for q in trains(s, 1)]) * 1e6
    for s in starts:
        after_single = single[s + int(0.011 * FS) : s + int(0.1 * FS), 9]
        after_train = x[s + 4 * ipi + int(0.011 * FS) : s + 4 * ipi + int(0.1 * FS), 9]
        assert np.ptp(after_single) < 0.1 * np.ptp(after_train)


def test_mep_trial_variability_matches_reference() -> None:
    rec = record_sweeps(quiet(), 8, modality="mep", duration_s=400.0, rate_hz=0.5, pre_ms=5, post_ms=90,
                        add_amplifier_noise=False)  # fmt: skip
    pre = rec["pre_samples"]
    post = rec["sweeps"][:, :, pre + int(0.011 * FS) :]
    pp = post.max(-1) - post.min(-1)  # µV per train and muscle
    cv = pp.std(0) / pp.mean(0)
    ref = {"APB": 0.48, "AH": 0.35, "TA": 0.27}  # IONM-REFERENCE.md (thenar, AH, TA)
    assert pp.shape[0] == 200
    # the per-train truth is what a noise-free recording shows
    order = rec["truth"]["channel"]  # truth columns follow truth["names"]; channel maps them to sweeps
    assert sorted(order) == list(range(6))
    np.testing.assert_allclose(pp[:, order], rec["truth"]["p2p_uv"], rtol=1e-3)
    onset = rec["truth"]["onset_ms"]
    assert np.all((onset > 12) & (onset < 50)) and np.all(rec["truth"]["area_uv_ms"] > 0)
    for j, name in enumerate(rec["channel_names"]):
        muscle = next(m for m in ref if name.startswith(m))
        # sampling error of a CV from 200 lognormal trials is ~0.03: 0.1 is > 3 SE
        assert abs(cv[j] - ref[muscle]) < 0.1, (name, cv[j])
        assert 50 < np.median(pp[:, j]) < 2500  # 0.1–1.5 mV typical, single trials spread further


def test_stimulus_artefact_is_largest_near_the_stimulated_limb() -> None:
    sc = quiet()
    p = VirtualPatient(sc, 1, FS)
    names = p.channel_names
    for output, near in ((0, ("EpL", "APBL")), (3, ("PFR", "AHR", "TAR"))):
        x = VirtualPatient(sc, 1, FS).render(0, 160, [Pulse(10, output, 30.0, 200, False)])
        peak = np.abs(x[10:14]).max(0)
        is_near = np.array([n.startswith(near) for n in names])
        is_far = np.array([c.region == "head" or c.region.split("_")[0] in ("arm", "leg") for c in p.channels])
        is_far &= ~is_near  # the scalp and the other limbs (the neck sits in between)
        assert peak[is_near].min() > 2 * peak[~is_near].max()
        assert peak[is_near].min() > 4 * peak[is_far].max()
        assert peak[is_near].min() > 300e-6  # hundreds of µV to mV at 30 mA
        # brief: decayed within ~10 ms (muscles left out: the M-wave is there by then)
        no_mwave = np.array([c.kind != "muscle" for c in p.channels])
        assert np.abs(x[10 + int(0.012 * FS) :, no_mwave]).max() < 0.05 * peak.max()
    # biphasic pulses leave less of a tail than monophasic ones
    mono = VirtualPatient(sc, 1, FS).render(0, 80, [Pulse(10, 0, 30.0, 200, False)])
    bi = VirtualPatient(sc, 1, FS).render(0, 80, [Pulse(10, 0, 30.0, 200, True)])
    tail = slice(10 + int(0.001 * FS), 10 + int(0.004 * FS))
    assert np.abs(bi[tail, 5]).max() < 0.5 * np.abs(mono[tail, 5]).max()


def test_leadoff_flags_and_rails() -> None:
    sc = quiet()
    sc["events"] = [{"type": "leadoff", "electrode": "Fz", "onset_s": 0.25, "end_s": 0.5}]
    p = VirtualPatient(sc, 2, FS)
    uses_fz = np.array(["-Fz " in n or n.startswith("Fz-") for n in p.channel_names])
    assert uses_fz.sum() == 5
    rail = 0.5 * board.load()["adc"]["vref_v"]
    x = p.render(0, int(2.5 * FS), [])
    assert not p.leadoff(0, int(0.2 * FS)).any()
    np.testing.assert_array_equal(p.leadoff(int(0.3 * FS), 100), uses_fz)
    np.testing.assert_array_equal(p.leadoff(int(0.49 * FS), int(0.1 * FS)), uses_fz)  # off for part of the block
    assert not p.leadoff(int(0.51 * FS), 100).any()
    mid = x[int(0.35 * FS) : int(0.5 * FS)]
    assert np.all(np.abs(mid[:, uses_fz]) > 0.95 * rail)
    assert np.abs(mid[:, ~uses_fz]).max() < 1e-6
    assert np.abs(x[int(2.0 * FS) :, uses_fz]).max() < 0.02 * rail  # settled back after the electrode returns
    with pytest.raises(ValueError, match="not in the montage"):
        VirtualPatient({**sc, "events": [{"type": "leadoff", "electrode": "Oz", "onset_s": 1}]}, 2, FS)


def test_stimulating_electrode_impedance() -> None:
    sc = load_scenario("stable")
    sc["events"] = [{"type": "stim_electrode", "output": 2, "onset_s": 60, "end_s": 120, "impedance_ohm": 150e3}]
    p = VirtualPatient(sc, 3, FS)
    for out in (0, 1, 2, 3, TRIGGER_OUTPUT):
        z = [p.stim_impedance_ohm(out, int(t * FS)) for t in (0, 30, 600, 3000)]
        assert all(500 < v < 12000 for v in z)
    assert p.stim_impedance_ohm(2, int(90 * FS)) == 150e3
    assert p.stim_impedance_ohm(3, int(90 * FS)) < 12000
    assert p.stim_impedance_ohm(2, int(120 * FS)) < 12000


def test_recording_electrode_impedance_per_channel_side_scripted_and_open_while_off() -> None:
    """Each channel's (P, N) electrodes: needles of 1-6 kΩ, the same electrode the same in every channel that
    uses it (Fz); an electrode_impedance event sets one; a leadoff event makes it open."""
    sc = load_scenario("stable")
    sc["events"] = [{"type": "electrode_impedance", "electrode": "C3'", "onset_s": 10, "end_s": 20,
                     "impedance_ohm": 25e3}, {"type": "leadoff", "electrode": "Fz", "onset_s": 30, "end_s": 40}]
    p = VirtualPatient(sc, 3, FS)
    z = p.lead_impedance_ohm(0)
    assert z.shape == (16, 2) and (z >= 1000).all() and (z <= 6000).all()
    fz = [c.index for c in p.channels if c.electrodes[1] == "Fz"]
    assert len(fz) >= 3 and len({z[c, 1] for c in fz}) == 1
    assert p.lead_impedance_ohm(int(15 * FS))[0, 0] == 25e3 and p.lead_impedance_ohm(int(25 * FS))[0, 0] == z[0, 0]
    off = p.lead_impedance_ohm(int(35 * FS))
    assert (off[fz, 1] == p.OPEN_OHM).all() and (off[:, 0] < p.OPEN_OHM).all()


def test_truth_follows_the_script_and_honours_edits() -> None:
    sc = load_scenario("acute_cord_injury")
    p = VirtualPatient(sc, 1, FS)
    assert p.truth(0.0)["tibial_L_cortical"] == {"amplitude": 1.0, "latency": 1.0}
    mid = p.truth(730.0)["tibial_L_cortical"]
    assert 0.25 < mid["amplitude"] < 1.0 and 1.0 < mid["latency"] < 1.12
    assert p.truth(900.0)["tibial_L_cortical"] == pytest.approx({"amplitude": 0.25, "latency": 1.12})
    assert p.truth(900.0)["tibial_R_cortical"] == {"amplitude": 1.0, "latency": 1.0}
    assert set(p.truth(0.0)) >= {"median_L_erb", "tibial_R_popliteal", "mep_TA_L"}
    # a benchmark varying the severity and timing
    sc["events"][0].update(amplitude=0.6, onset_s=100.0)
    p = VirtualPatient(sc, 1, FS)
    assert p.truth(200.0)["tibial_L_cortical"]["amplitude"] == pytest.approx(0.6)


def test_scenario_loading() -> None:
    assert scenario_names() == SCENARIOS
    with pytest.raises(FileNotFoundError, match="acute_cord_injury.*stable"):
        load_scenario("no_such_case")
    a = load_scenario("stable")
    a["mains_hz"] = 60.0
    assert load_scenario("stable")["mains_hz"] == 50.0  # a fresh dict each time
    with pytest.raises(ValueError, match="matches no response"):
        VirtualPatient({"name": "x", "events": [{"type": "change", "targets": ["tibial_X_*"], "onset_s": 1}]}, 1, FS)


def test_background_levels() -> None:
    sc = load_scenario("stable")
    sc["noise"].update(mains_uv=0.0, cautery_per_min=0.0, pops_per_min=0.0, emg_bursts_per_min=0.0)
    p = VirtualPatient(sc, 5, FS)
    x = p.render(0, int(20 * FS), []) * 1e6
    rms = x.std(0)
    kinds = np.array([c.kind for c in p.channels])
    assert np.all((rms[kinds == "scalp"] > 2) & (rms[kinds == "scalp"] < 10))  # EEG: a few µV rms
    assert np.all((rms[kinds == "muscle"] > 2) & (rms[kinds == "muscle"] < 15))
    assert np.all(rms[kinds == "nerve"] < rms[kinds == "scalp"].min())  # bipolar limb pairs are quiet
    # EEG is 1/f-like: more power at 5–10 Hz than at 100–200 Hz on a scalp channel
    f, pxx = signal.welch(x[:, 1], FS, nperseg=4096)
    assert pxx[(f > 5) & (f < 10)].mean() > 20 * pxx[(f > 100) & (f < 200)].mean()


def test_neurotonic_bursts_on_muscles() -> None:
    sc = quiet(emg_bursts_per_min=20.0, emg_scale=1.0)
    p = VirtualPatient(sc, 4, FS)
    x = p.render(0, int(60 * FS), [], channels=[9, 10, 11, 12, 13, 14]) * 1e6
    win = int(0.05 * FS)
    env = np.sqrt((x[: len(x) // win * win].reshape(-1, win, 6) ** 2).mean(1))  # 50 ms rms
    floor = np.median(env, 0)
    bursts = env > 5 * floor
    assert bursts.any(0).sum() >= 3  # bursts on several muscles in a minute at this rate
    # inside the strongest burst the discharges repeat at 60–210 Hz
    k, ch = np.unravel_index(np.argmax(env / floor), env.shape)
    seg = x[k * win : (k + 1) * win, ch]
    seg = seg - seg.mean()
    ac = np.correlate(seg, seg, "full")[len(seg) - 1 :]
    lags = np.arange(len(ac)) / FS
    band = (lags > 1 / 220) & (lags < 1 / 55)
    f_fire = 1 / lags[band][np.argmax(ac[band])]
    assert 60 <= f_fire <= 215


def test_electrode_pops_step_then_decay() -> None:
    sc = quiet(pops_per_min=8.0)
    p = VirtualPatient(sc, 21, FS)
    x = p.render(0, int(30 * FS), []) * 1e6
    ch = int(np.argmax(np.abs(np.diff(x, axis=0)).max(0)))
    i = int(np.argmax(np.abs(np.diff(x[:, ch])))) + 1
    step = x[i, ch] - x[i - 1, ch]
    assert 100 <= abs(step) <= 4000  # 0.1–2 mV steps
    after = x[i : i + int(3 * FS), ch] * np.sign(step)
    half = int(np.argmax(after < 0.5 * after[0]))
    assert 0.05 * FS < half < 1.2 * FS  # decays with a 0.1–1.5 s time constant
