"""`ionm evaluate FILE.npz`: evaluate a sweep file offline, causally, as the live pipeline would.

Default output: the alerts (one per transition into the alert state). --trials: per-sweep features instead
(MEP: onset latency, peak-to-peak, area per channel; SSEP: the tracker's amplitude and latency with their
uncertainty). --json prints one JSON object; without it, a readable summary. The file format is described
in docs/EVALUATION.md ("Sweep files") and ionm.pipeline.sweepfile.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from typing import Any

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


def _num(v: Any, digits: int = 4) -> float | None:
    f = float(v)
    return None if not math.isfinite(f) else round(f, digits)


def evaluate(sf: Any, *, trials: bool = False, mains: str = "both") -> dict[str, Any]:
    """Run the evaluator over a SweepFile; the JSON-ready result of `ionm evaluate` (--trials if trials)."""
    from ionm.pipeline.evaluator import Evaluator, EvaluatorConfig

    mains_hz = {"50": (50.0,), "60": (60.0,), "both": (50.0, 60.0), "off": ()}[mains]
    ev = Evaluator(sf.fs, sf.pre_samples, sf.n_samples, sf.modality, sf.channel_names, sf.baseline_end_s,
                   EvaluatorConfig(mains_hz=mains_hz))
    rows: list[dict[str, Any]] = []
    for i in range(sf.n_sweeps):
        r = ev.process(sf.sweeps[i], float(sf.stim_time_s[i]))
        if not trials:
            continue
        for c, name in enumerate(sf.channel_names):
            row: dict[str, Any] = {"t_s": round(float(sf.stim_time_s[i]), 6), "channel": name,
                                   "rejected": r.reasons[c]}
            if r.mep is not None:
                row.update(onset_ms=_num(r.mep.onset_ms[c], 3), p2p_uv=_num(r.mep.p2p_uv[c], 2),
                           area_uv_ms=_num(r.mep.area_uv_ms[c], 3))
            else:
                ks = r.tracker
                tracked = ks is not None and bool(ev.tracked[c])
                amp_uv, lat_ms = ev.baseline_reference(c) if tracked else (float("nan"), float("nan"))
                nan = float("nan")
                a, s = (ks.amplitude[c], ks.latency[c]) if tracked and ks else (nan, nan)
                a_sd, s_sd = (ks.amplitude_sd[c], ks.latency_sd[c]) if tracked and ks else (nan, nan)
                row.update(amplitude_ratio=_num(a), amplitude_ratio_sd=_num(a_sd),
                           latency_ratio=_num(s), latency_ratio_sd=_num(s_sd),
                           amplitude_uv=_num(a * amp_uv, 3), amplitude_sd_uv=_num(a_sd * amp_uv, 3),
                           latency_ms=_num(s * lat_ms, 3), latency_sd_ms=_num(s_sd * lat_ms, 3))
            rows.append(row)
    out: dict[str, Any] = {"file_modality": sf.modality, "n_sweeps": sf.n_sweeps, "channels": sf.channel_names,
                           "baseline_end_s": sf.baseline_end_s, "rejected": ev.rejected()}
    if trials:
        out["trials"] = rows
    else:
        out["alerts"] = [a.as_json() for a in ev.alerts]
        out["final_state"] = dict(zip(sf.channel_names, ev.mep_alerts.state if ev.modality.single_trial
                                      else ev.ssep_alerts.state, strict=True))
        out["baseline"] = {name: {"amplitude_uv": _num(ev.baseline_reference(c)[0], 3),
                                  "latency_ms": _num(ev.baseline_reference(c)[1], 3),
                                  "tracked": bool(ev.tracked[c]),
                                  "level_se": _num(ev.baseline_level_se(c), 4)}
                           for c, name in enumerate(sf.channel_names)}
    return out


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
        print("ionm evaluate: %s" % exc, file=sys.stderr)
        return 2
    if args.until is not None:
        sf = sf.until(args.until)
    res = evaluate(sf, trials=args.trials, mains=args.mains)
    if args.json:
        json.dump(res, sys.stdout, ensure_ascii=False, allow_nan=False)
        sys.stdout.write("\n")
    else:
        _print_text(res, args.trials)
    return 0
