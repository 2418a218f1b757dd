"""`ionm evaluate FILE.npz`: the offline evaluation of a sweep file (ionm.pipeline.offline), as text or JSON."""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from ionm.cli.common import fail
from ionm.pipeline.offline import evaluate

HELP = "evaluate a sweep file (.npz) offline: alerts or per-trial features"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("file", metavar="FILE.npz", help="sweep file (keys: fs, pre_samples, sweeps, stim_time_s, "
                        "modality, baseline_end_s, optional channel_names)")
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    parser.add_argument("--trials", action="store_true", help="per-sweep features instead of alerts")
    parser.add_argument("--mains", choices=("50", "60", "both", "off"), default="both",
                        help="mains frequency to cancel (default: both 50 and 60 Hz)")
    parser.add_argument("--until", type=float, default=None, metavar="T_S",
                        help="evaluate only sweeps stimulated at or before T_S seconds")


def _print_text(res: dict[str, Any], trials: bool) -> None:
    from ionm.pipeline.evaluator import WEAK_BASELINE_SE

    if trials:
        for row in res["trials"]:
            print("  ".join("%s=%s" % (k, v) for k, v in row.items()))
        return
    print("%d sweeps, %d channels, modality %s, baseline up to %.1f s"
          % (res["n_sweeps"], len(res["channels"]), res["file_modality"], res["baseline_end_s"]))
    for name, b in res["baseline"].items():
        se = b["level_se"]
        weak = (" (known to ±%.0f %%: a change takes longer to confirm)" % (100 * se)
                if se and se > WEAK_BASELINE_SE else "")
        print("  %-40s baseline %s µV at %s ms%s" % (name, b["amplitude_uv"], b["latency_ms"],
                                                      weak if b["tracked"] else " (not tracked)"))
    if not res["alerts"]:
        print("no alerts")
    for a in res["alerts"]:
        print("ALERT t=%.1f s  %s  %s  amplitude x%s  latency x%s  (%s)" % (
            a["t_s"], a["channel"], a["criterion"], a["amplitude_ratio"], a["latency_ratio"], a["scope"]))
    for name, counts in res["rejected"].items():
        if counts:
            print("  rejected on %s: %s" % (name, ", ".join("%s %d" % kv for kv in counts.items())))


def run(args: argparse.Namespace) -> int:
    from ionm.pipeline import sweepfile

    try:
        sf = sweepfile.load(args.file)
    except sweepfile.SweepFileError as exc:
        return fail("evaluate", 2, "%s" % exc)
    if args.until is not None:
        sf = sf.until(args.until)
    res = evaluate(sf, trials=args.trials, mains=args.mains)
    if args.json:
        json.dump(res, sys.stdout, ensure_ascii=False, allow_nan=False)
        sys.stdout.write("\n")
    else:
        _print_text(res, args.trials)
    return 0
