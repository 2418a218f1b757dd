"""The virtual patient's pedicle screws (issue 20 item 6, model part): a screw's distance from its root sets the
threshold of each muscle of the myotome, responses follow a sigmoid recruitment curve of the delivered current
with trial-to-trial variability, and the probe's contact sets its impedance."""

from __future__ import annotations

import numpy as np

from ionm_hw import patient as pt
from ionm_hw.physiology import screws

FS = 4000.0


def make(screw_list, events) -> pt.VirtualPatient:
    scen = pt.load_scenario("stable")
    scen.update(screws=screw_list, events=events)
    return pt.VirtualPatient(scen, 3, FS, 16)


def p2p_uv(vp: pt.VirtualPatient, index: int, current_ma: float, ch: int) -> float:
    r = vp.probe.response(index, current_ma, 16)
    return 0.0 if r is None else r[1].get(ch, 0.0)


def test_distance_from_the_root_sets_the_threshold_breach_below_4_ma_intact_above_8():
    vp = make([{"name": "L4 left", "root": "L4", "side": "L", "distance_mm": 0.5},
               {"name": "L4 right", "root": "L4", "side": "R", "distance_mm": 2.5}], [])
    tal, tar, ahl = 13, 14, 11  # L and R tibialis anterior (L4), L abductor hallucis (S1: not L4's)
    breach = vp.probe.threshold_ma("L4 left", tal, 100.0)
    intact = vp.probe.threshold_ma("L4 right", tar, 100.0)
    assert breach is not None and breach < 4.0
    assert intact is not None and intact > 8.0
    assert vp.probe.threshold_ma("L4 left", tar, 100.0) is None  # the other side's muscles do not respond
    assert vp.probe.threshold_ma("L4 left", ahl, 100.0) is None  # nor another root's


def test_responses_follow_a_sigmoid_of_the_current_with_trial_to_trial_variability():
    vp = make([{"name": "s", "thresholds_ma": {"TAL1-TAL2": 10.0}}], [{"type": "probe", "target": "s", "onset_s": 0}])
    currents = [6.0, 9.0, 10.0, 11.0, 14.0, 20.0]
    med = []
    for k, c in enumerate(currents):
        trials = [p2p_uv(vp, 4000 * (100 * k + j), c, 13) for j in range(60)]
        med.append(float(np.median(trials)))
        if c == 10.0:
            assert np.std(trials) / np.mean(trials) > 0.1  # a threshold is a probability, trial to trial
    assert med == sorted(med) and med[0] < 10 and med[-1] > 0.9 * vp.probe.amp_uv[13]
    assert abs(med[2] - 0.5 * vp.probe.amp_uv[13]) < 0.2 * vp.probe.amp_uv[13]  # half recruited at I50
    t = vp.probe.threshold_ma("s", 13, 100.0)
    below = np.median([p2p_uv(vp, 4000 * (900 + j), t - 0.5, 13) for j in range(60)])
    above = np.median([p2p_uv(vp, 4000 * (950 + j), t + 0.5, 13) for j in range(60)])
    assert below < 100.0 < above


def test_the_probe_is_open_in_the_air_and_on_tissue_evokes_nothing():
    vp = make([{"name": "s", "thresholds_ma": {"TAL1-TAL2": 5.0}}],
              [{"type": "probe", "target": "air", "onset_s": 10, "end_s": 20},
               {"type": "probe", "target": "s", "onset_s": 20}])
    assert vp.stim_impedance_ohm(screws.PROBE_OUTPUT, int(5 * FS)) < 5000  # tissue
    assert vp.stim_impedance_ohm(screws.PROBE_OUTPUT, int(15 * FS)) > 1e9  # air: open
    assert vp.probe.response(int(5 * FS), 30.0, 16) is None  # no root within reach
    assert p2p_uv(vp, int(25 * FS), 30.0, 13) > 100.0


def test_the_fusion_scenarios_breach_exactly_the_screws_they_say():
    """hardware/scenarios: a posterior L3-S1 fusion (12 screws, two breaching) and a T8-T12 fusion (10 screws,
    one breaching): the lowest threshold of each screw over the recorded muscles is in the band the scenario
    states (lumbar < 4 mA breach, > 8 mA intact; lower thoracic 6 mA), and each screw is probed in turn."""
    for name, n_screws in (("lumbar_fusion_l3_s1", 12), ("thoracic_fusion_t8_t12", 10)):
        scen = pt.load_scenario(name)
        vp = pt.VirtualPatient(scen, 3, FS, 16)
        exp = scen["expected"]
        assert len(scen["screws"]) == n_screws
        lowest = {}
        for s in scen["screws"]:
            ts = [vp.probe.threshold_ma(s["name"], ch, 100.0) for ch in range(16)]
            ts = [t for t in ts if t is not None]
            lowest[s["name"]] = min(ts) if ts else None
            t_mid = next(ev["onset_s"] + 10 for ev in scen["events"]
                         if ev.get("type") == "probe" and ev["target"] == s["name"])
            assert vp.probe.target(t_mid) == s["name"]
        breached = sorted(k for k, v in lowest.items() if v is not None and v < exp["breach_below_ma"])
        assert breached == sorted(exp["breached"]), lowest
        assert all(v is None or v > exp["intact_above_ma"] for k, v in lowest.items() if k not in breached), lowest


def _tof_on_the_thumb(vp: pt.VirtualPatient, t_s: float) -> list[float]:
    """Four median-nerve pulses at 2 Hz on output 0 from t_s: each thenar M-wave's peak to peak, µV."""
    ch = next(c.index for c in vp.channels if c.derivation.startswith("APBL"))
    first = int(t_s * FS)
    pulses = [pt.Pulse(first + int(k * 0.5 * FS), 0, 25.0, 200, False) for k in range(4)]
    sig = vp.render(first, int(2.0 * FS), pulses)[:, ch] * 1e6
    out = []
    for p in pulses:  # the M-wave lies 3-15 ms after its pulse (after the artefact)
        a = p.index - first
        out.append(float(np.ptp(sig[a + int(0.003 * FS):a + int(0.015 * FS)])))
    return out


def test_train_of_four_gives_each_count_0_to_4_as_a_relaxant_bolus_takes_effect_and_wears_off():
    """Issue 20 items 5-7 (model part): after the relaxant_bolus_tcmep scenario's bolus the four thenar M-waves
    of a TOF on the median output fade and vanish, counts 0 to 4 as it wears off, the fourth still faded when it
    is back; the scenario's expected counts hold; the SSEP (sensory) does not change."""
    from ionm_hw.physiology import blockade

    scen = pt.load_scenario("relaxant_bolus_tcmep")
    vp = pt.VirtualPatient(scen, 3, FS, 16)
    for t, lo, hi in scen["expected"]["tof"]:
        count, _ = blockade.tof(vp.blockade.depth(t))
        assert lo <= count <= hi, (t, count)
    # a time for each count, on the recovery (depth falls monotonically after the peak)
    times = np.arange(730.0, 3600.0, 5.0)
    spans: dict[int, list[float]] = {}
    for t in times:
        spans.setdefault(blockade.tof(vp.blockade.depth(float(t)))[0], []).append(float(t))
    assert set(spans) == {0, 1, 2, 3, 4}, spans.keys()
    when = {c: ts[len(ts) // 2] for c, ts in spans.items()}  # the middle of each count's stretch
    base = _tof_on_the_thumb(vp, 100.0)  # before the bolus: four equal M-waves
    assert min(base) > 0.9 * max(base) and base[0] > 1000
    checks = sorted([(when[c], c) for c in when] + [(spans[4][0] + 30, "early")])  # rendered in time order
    for t, what in checks:
        waves = _tof_on_the_thumb(vp, t)
        if what == "early":  # the first minutes of count 4: all four back, the fourth still faded
            assert min(waves) > 0.05 * base[0] and waves[3] / waves[0] < 0.5, waves
            continue
        present = [w > 0.05 * base[0] for w in waves]
        assert present == [k < what for k in range(4)], (what, t, waves)
    assert vp.truth(900.0)["median_L_cortical"]["amplitude"] == 1.0  # the relaxant acts on muscle only
