"""One side or both: how often the EEG judgement (ionm.pipeline.eeg) calls a carotid clamp ischaemia on the clamped
side, and an anaesthetic bolus anything but global, over many seeds. docs/EVALUATION.md ("EEG") quotes it.

Per seed: cea_clamp_ischaemia (missed: no ischaemia on the left after the clamp, e.g. called global) and
cea_anaesthetic_bolus (false: any ischaemia alert), the baseline set as the bench sets it (at 240 s, from 60 s).
--rule absolute runs the one-sided test this project used before (the other side not past half the drops by one
scatter, and 3 epochs of confirmation) for comparison; the default is the monitor as it is.

    .venv/bin/python tools/eeg_sides.py --seeds 90
    .venv/bin/python tools/eeg_sides.py --seeds 90 --rule absolute
"""

from __future__ import annotations

import argparse
import json
from concurrent.futures import ProcessPoolExecutor

import numpy as np

from ionm.pipeline import eeg

CLAMP_SEEDS = 20000  # seeds from here (the tests use 131-199, the bench 9500-9909: not these)
BOLUS_SEEDS = 21000


def _absolute(rel: dict[str, float], adr: dict[str, float], scatter: dict[str, tuple[float, float]], met: str,
              other: str) -> bool:
    """The earlier test: the other side past half of either drop, by one scatter."""
    return bool(np.log(rel[other]) <= np.log(1 - eeg.ALPHA_DROP * eeg.OTHER_SIDE_FRACTION) - scatter[other][0]
                or np.log(adr[other]) <= np.log(1 - eeg.ADR_DROP * eeg.OTHER_SIDE_FRACTION) - scatter[other][1])


def _one(job: tuple[str, int, str]) -> tuple[str, int, list[tuple[str, str | None, float]]]:
    from ionm_hw.physiology import eeg as sim

    name, seed, rule = job
    if rule == "absolute":
        eeg.other_side_changed = _absolute
        eeg.ISCHAEMIA_CONFIRM_EPOCHS = eeg.CONFIRM_EPOCHS
    rec = sim.render_scenario(name, seed)
    mon = eeg.EegMonitor(rec.fs_hz, rec.channel_names)
    n = int(rec.fs_hz)
    for i in range(0, rec.samples_uv.shape[1], n):
        mon.push(rec.samples_uv[:, i:i + n])
        if mon.baseline is None and mon.epochs and mon.epochs[-1].t_s >= 240.0:
            mon.set_baseline(60.0)
    return name, seed, [(e.kind, e.side, e.t_s) for e in mon.events]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seeds", type=int, default=30)
    ap.add_argument("--rule", choices=("monitor", "absolute"), default="monitor")
    ap.add_argument("--jobs", type=int, default=2)
    args = ap.parse_args()
    jobs = ([("cea_clamp_ischaemia", CLAMP_SEEDS + i, args.rule) for i in range(args.seeds)]
            + [("cea_anaesthetic_bolus", BOLUS_SEEDS + i, args.rule) for i in range(args.seeds)])
    missed: list[int] = []
    false: list[int] = []
    delays: list[float] = []
    with ProcessPoolExecutor(args.jobs) as ex:
        for name, seed, events in ex.map(_one, jobs):
            if name == "cea_clamp_ischaemia":
                hits = [t for kind, side, t in events if kind == "ischaemia" and side == "L" and t > 300.0]
                if hits:
                    delays.append(hits[0] - 300.0)
                else:
                    missed.append(seed)
            elif any(kind == "ischaemia" for kind, _, _ in events):
                false.append(seed)
    print(json.dumps({"rule": args.rule, "seeds": args.seeds, "clamp_missed": len(missed), "missed_seeds": missed,
                      "bolus_ischaemia": len(false), "false_seeds": false,
                      "clamp_to_alert_s_median": float(np.median(delays)) if delays else None,
                      "clamp_to_alert_s_worst": max(delays) if delays else None}))


if __name__ == "__main__":
    main()
