"""Threshold hunting (issue 20): pulses per hunt to +/-0.5 mA over thresholds 0.5-40 mA, the board's hunt against
a linear ramp measured in the same run (goals: <= 8 pulses median, <= 12 worst).

The hunt is the firmware's own code (firmware/hunt.py, huntreq.py: its bisection, its brackets, its judging of
each window's peak to peak against the criterion in counts), run here on CPython (its viper scan replaced by
the window's peak to peak as the virtual patient gives it; the scan itself is tested on MicroPython). Each
pulse's response is the virtual patient's pedicle-screw model (ionm_hw.physiology.screws): a logistic
recruitment curve with trial-to-trial excitability and size, on a muscle channel with background noise drawn
per pulse. The truth for a threshold is the current at which the median response reaches the criterion
(100 uV). The ramp goes up from 0.5 mA in 0.5 mA steps until a response, as a manual ramp or a `ramp`
program would. Thresholds (I50) are a grid over 0.8-42 mA (criterion thresholds of about 0.5-40 mA), several trial seeds
each.
"""

from __future__ import annotations

import builtins
import sys
import types
from types import SimpleNamespace
from typing import Any

import numpy as np

LO_UA, HI_UA, RES_UA, CRIT_UV = 500, 40000, 500, 100
FS, GAIN, VREF_UV, FULL = 4000, 24, 4500000, 8388607
NOISE_UV_P2P = (20.0, 45.0)  # background peak to peak in the window, quiet muscle (model: 30-50 uV typical)


def _firmware() -> tuple[Any, Any, Any]:
    """hunt, huntreq and safety from firmware/, importable on CPython (micropython's decorators as no-ops)."""
    from ionm import paths

    if "micropython" not in sys.modules:
        mp = types.ModuleType("micropython")
        mp.viper = lambda f: f  # type: ignore[attr-defined]
        mp.const = lambda x: x  # type: ignore[attr-defined]
        mp.native = lambda f: f  # type: ignore[attr-defined]
        sys.modules["micropython"] = mp
        for name in ("ptr8", "ptr16", "ptr32", "uint"):
            setattr(builtins, name, object)
    for d in (paths.firmware_dir(), paths.protocol_dir()):
        if str(d) not in sys.path:
            sys.path.append(str(d))
    import boardcfg
    import hunt
    import huntreq
    import safety

    sup = safety.Supervisor(boardcfg._drop_docs(__import__("json").loads(paths.board_file().read_text())))
    return hunt, huntreq, sup


class _Muscle:
    """One channel's responses to probe pulses: the screw model's recruitment and its trial variability."""

    def __init__(self, i50_ma: float, seed: int) -> None:
        from ionm_hw.physiology import screws

        ch = SimpleNamespace(index=0, derivation="TAL1-TAL2")
        scen = {"screws": [{"name": "s", "thresholds_ma": {"TAL1-TAL2": i50_ma}}],
                "events": [{"type": "probe", "target": "s", "onset_s": 0}]}
        self.model = screws.ProbeModel(scen, [ch], seed, float(FS))
        self.truth_ma = self.model.threshold_ma("s", 0, CRIT_UV)
        self.rng = np.random.default_rng(seed)
        self.k = 0

    def p2p_uv(self, current_ma: float) -> float:
        self.k += 1
        r = self.model.response(self.k * FS, current_ma, 1)
        resp = r[1].get(0, 0.0) if r is not None else 0.0
        return max(resp, float(self.rng.uniform(*NOISE_UV_P2P)))


def hunt_once(hunt: Any, huntreq: Any, sup: Any, muscle: _Muscle) -> tuple[int, float | None]:
    cfg = SimpleNamespace(rate_hz=FS, channels=[0], gains=[GAIN])
    body = {"lo_ua": LO_UA, "hi_ua": HI_UA, "resolution_ua": RES_UA, "rate_mhz": 5000, "channels": [0],
            "p2p_uv": CRIT_UV, "window_ms": [5, 40]}
    h = hunt.Hunt(huntreq.parse(sup, body, cfg), cfg, 2, VREF_UV)
    index = 0
    while True:
        cur = h.next_current()
        if cur is None:
            break
        h.armed(index, cur)
        counts = int(muscle.p2p_uv(cur / 1000) * GAIN * FULL / VREF_UV)
        h.mins[0], h.maxs[0] = 1 << 22, (1 << 22) + counts
        h.judge()
        index += h.period
    t = h.results()[0]["threshold_ua"]
    return h.pulses, (t / 1000 if t is not None else None)


def ramp_once(muscle: _Muscle) -> tuple[int, float | None]:
    n = 0
    for cur in range(LO_UA, HI_UA + 1, RES_UA):
        n += 1
        if muscle.p2p_uv(cur / 1000) >= CRIT_UV:
            return n, cur / 1000
    return n, None


def run(quick: bool = False) -> dict[str, Any]:
    hunt, huntreq, sup = _firmware()
    grid = np.round(np.linspace(0.8, 42.0, 20 if quick else 80), 2)
    seeds = range(2 if quick else 5)
    rows = []
    for i50 in grid:
        for s in seeds:
            m1 = _Muscle(float(i50), 1000 + s)
            hp, ht = hunt_once(hunt, huntreq, sup, m1)
            m2 = _Muscle(float(i50), 1000 + s)
            rp, rt = ramp_once(m2)
            truth = m1.truth_ma
            rows.append((truth, hp, ht, rp, rt))
    rows = [r for r in rows if r[0] is not None and 0.5 <= r[0] <= 40.0]
    hp = np.array([r[1] for r in rows])
    rp = np.array([r[3] for r in rows])

    def within(values: list[tuple[float, float | None]]) -> float:
        ok = [t is not None and abs(t - truth) <= 0.5 for truth, t in values]
        return float(np.mean(ok))

    h_ok = within([(r[0], r[2]) for r in rows])
    r_ok = within([(r[0], r[4]) for r in rows])
    res = {"hunts": len(rows), "hunt_median": float(np.median(hp)), "hunt_worst": int(hp.max()),
           "ramp_median": float(np.median(rp)), "ramp_worst": int(rp.max()), "hunt_within_0_5_ma": h_ok,
           "ramp_within_0_5_ma": r_ok, "goal_met": bool(np.median(hp) <= 8 and hp.max() <= 12)}
    res["summary"] = [
        "%d hunts, thresholds %.1f-%.1f mA (criterion %d uV, 0.5 mA resolution)"
        % (len(rows), min(r[0] for r in rows), max(r[0] for r in rows), CRIT_UV),
        "board hunt: %.0f pulses median, %d worst; within +/-0.5 mA of the truth: %.0f %%"
        % (res["hunt_median"], res["hunt_worst"], 100 * h_ok),
        "linear ramp (0.5 mA steps): %.0f pulses median, %d worst; within +/-0.5 mA: %.0f %%"
        % (res["ramp_median"], res["ramp_worst"], 100 * r_ok),
        "ratio ramp/hunt (median): %.1f; goal <= 8 median, <= 12 worst: %s"
        % (res["ramp_median"] / res["hunt_median"], "met" if res["goal_met"] else "NOT met"),
    ]
    return res
