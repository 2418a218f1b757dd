"""How many trials an MEP baseline needs: a Monte Carlo of the console's MEP alert rule (ionm.pipeline.alerts.
MepAlerts, as the evaluator sets it from a baseline) against log-normal trial-to-trial scatter. docs/EVALUATION.md
quotes it.

Per baseline size n and trial CV: the baseline is the median of n trials (and their robust log SD sets the
channel's level, as Evaluator.set_baseline does); then
- false alerts per 8 h per channel (a train every 4 s) while the response holds at each --hold level (1.0: stable;
  0.65: the anaesthetic fade of the anaesthetic_depression scenario, never an 80 % drop);
- the share of deep drops (to each --drop level at once) alerted by the 2nd and the 3rd train.

    .venv/bin/python tools/mep_baseline_trials.py --trials 6 12
"""

from __future__ import annotations

import argparse

import numpy as np

from ionm.pipeline import modalities
from ionm.pipeline.alerts import MepAlerts
from ionm.pipeline.evaluator import robust_log_sd

TRAINS_PER_8H = 8 * 3600 / 4.0


def _case(g: np.random.Generator, n: int, cv: float, level: float, trains: int) -> tuple[int, int | None]:
    """(alerts raised, train of the first alert or None) for one channel: baseline of n trials, then `trains`
    trials at `level` of it."""
    sigma = np.sqrt(np.log1p(cv * cv))
    base = np.exp(g.normal(0.0, sigma, n))
    alerts = MepAlerts(modalities.get("mep"), ["c"])
    alerts.set_spread(np.array([robust_log_sd(base)]))
    ratios = level * np.exp(g.normal(0.0, sigma, trains)) / np.median(base)
    first = None
    yes, no = np.array([True]), np.array([False])
    for k, r in enumerate(ratios):
        alerts.update(np.array([r]), np.array([1.0]), no, float(k), yes, yes)
        if alerts.events and first is None:
            first = k + 1
    return len(alerts.events), first


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--trials", type=int, nargs="+", default=[6, 12], help="baseline sizes (trials)")
    ap.add_argument("--cv", type=float, nargs="+", default=[0.48, 0.35, 0.27], help="trial CVs (APB, AH, TA)")
    ap.add_argument("--hold", type=float, nargs="+", default=[1.0, 0.65], help="levels held (ratio)")
    ap.add_argument("--drop", type=float, nargs="+", default=[0.1, 0.15], help="deep drops (ratio)")
    ap.add_argument("--cases", type=int, default=300, help="cases of 30 min per (n, CV, hold)")
    ap.add_argument("--seed", type=int, default=1)
    args = ap.parse_args()
    g = np.random.default_rng(args.seed)
    trains = int(1800 / 4.0)
    for n in args.trials:
        for cv in args.cv:
            parts = []
            for hold in args.hold:
                raised = sum(_case(g, n, cv, hold, trains)[0] for _ in range(args.cases))
                parts.append("false at %.2f: %.2f per 8 h" % (hold, raised / (args.cases * trains) * TRAINS_PER_8H))
            for drop in args.drop:
                firsts = np.array([_case(g, n, cv, drop, 4)[1] or 99 for _ in range(10 * args.cases)])
                parts.append("drop to %.2f: %.0f %% by train 2, %.0f %% by 3" % (
                    drop, 100 * np.mean(firsts <= 2), 100 * np.mean(firsts <= 3)))
            print("baseline %2d trials, CV %.0f %%: %s" % (n, 100 * cv, "; ".join(parts)))


if __name__ == "__main__":
    main()
