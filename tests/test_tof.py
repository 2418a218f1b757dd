"""ionm.pipeline.tof on the virtual patient's train-of-four: the count 0-4 and T4/T1 as a relaxant bolus takes
effect and wears off (issue 20 items 5 and 7), and the reliability of muscle-based monitoring below count 2."""

from __future__ import annotations

import pytest

from ionm.pipeline import tof
from ionm_hw import patient as pt
from ionm_hw.physiology import blockade

FS = 4000.0


def test_each_count_0_to_4_is_read_from_the_patients_thumb_and_muscle_monitoring_is_flagged_below_2():
    scen = pt.load_scenario("relaxant_bolus_tcmep")
    vp = pt.VirtualPatient(scen, 5, FS, 16)
    ch = next(c.index for c in vp.channels if c.derivation.startswith("APBL"))
    spans: dict[int, list[float]] = {}
    for t in range(730, 3600, 5):
        spans.setdefault(blockade.tof(vp.blockade.depth(float(t)))[0], []).append(float(t))
    times = [100.0] + sorted(ts[len(ts) // 2] for ts in spans.values())
    reference = None
    seen = {}
    for t in times:  # one TOF each, in time order, on the left median output
        first = int(t * FS)
        pulses = [pt.Pulse(first + int(k * 0.5 * FS), 0, 25.0, 200, False) for k in range(4)]
        sig = vp.render(first, int(2 * FS), pulses)[:, ch] * 1e6
        res = tof.evaluate(tof.responses(sig, [p.index - first for p in pulses], FS), reference)
        if reference is None:  # before the bolus: the unblocked reference
            assert res.count == 4 and res.ratio == pytest.approx(1.0, abs=0.15)
            reference = res.p2p_uv[0]
            continue
        expect, ratio = blockade.tof(vp.blockade.depth(t))
        assert res.count == expect, (t, res)
        assert res.muscle_monitoring_reliable == (expect >= 2)
        if expect == 4:
            assert res.ratio == pytest.approx(ratio, abs=0.1)
        seen[res.count] = res
    assert set(seen) == {0, 1, 2, 3, 4}


def test_a_later_response_without_the_earlier_ones_is_not_counted():
    assert tof.evaluate([900.0, 20.0, 400.0, 10.0], 1000.0).count == 1
    assert tof.evaluate([0.0, 0.0, 0.0, 0.0], 1000.0).count == 0
    with pytest.raises(ValueError):
        tof.evaluate([1.0, 2.0, 3.0])
