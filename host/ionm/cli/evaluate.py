"""`ionm evaluate FILE`: a sweep file (.npz: alerts or per-trial features, ionm.pipeline.offline) or a continuous
EDF/EDF+/BDF recording (.edf, .bdf: free-running EMG events, ionm.pipeline.emg, and with "stim vagal"
annotations continuous vagal monitoring, ionm.pipeline.rln), as text or JSON."""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

import numpy as np

from ionm.cli.common import fail
from ionm.pipeline.offline import evaluate

HELP = "evaluate a sweep file (.npz: alerts or per-trial features) or an EDF/BDF recording (free-run EMG events)"
CONTINUOUS_SUFFIXES = (".edf", ".bdf")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("file", metavar="FILE", help="sweep file .npz (keys: fs, pre_samples, sweeps, stim_time_s, "
                        "modality, baseline_end_s, optional channel_names), or a continuous .edf/.bdf recording "
                        "(labelled channels, EDF+ 'stim' annotations for stimulus times): free-run EMG events")
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    parser.add_argument("--trials", action="store_true", help="per-sweep features instead of alerts (sweep files)")
    parser.add_argument("--mains", choices=("50", "60", "both", "off"), default="both",
                        help="mains frequency to cancel in sweep files (default: both 50 and 60 Hz)")
    parser.add_argument("--until", type=float, default=None, metavar="T_S",
                        help="evaluate only sweeps stimulated at or before T_S seconds (EDF/BDF: samples up to T_S)")


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


def _print_emg_text(res: dict[str, Any]) -> None:
    print("%s: %d channels at %g Hz, %.1f s, %d stimuli" % (res["file"], len(res["channels"]), res["fs_hz"],
                                                           res["duration_s"], res["n_stimuli"]))
    if not res["events"]:
        print("no discharges")
    for e in res["events"]:
        rate = "" if e["rate_hz"] is None else "  %.1f Hz" % e["rate_hz"]
        print("%10.3f–%.3f s  %-24s %-10s %6.0f µV%s" % (e["t_s"], e["end_s"], e["channel"], e["kind"], e["peak_uv"],
                                                        rate))
    for c in res["cautery"]:
        print("%10.3f–%.3f s  %-24s cautery (suppressed)" % (c["t_s"], c["end_s"], c["channel"]))
    for name, s in res["a_train_cumulative_s"].items():
        if s > 0:
            print("cumulative A-train time on %s: %.2f s" % (name, s))
    vagal = res.get("vagal")
    if vagal:
        print("continuous vagal monitoring: %d stimuli" % vagal["stimuli"])
        for name, b in vagal["baseline"].items():
            if b["monitored"]:
                print("  baseline %-24s %6.0f µV at %.2f ms" % (name, b["amplitude_uv"], b["latency_ms"]))
            else:
                print("  %-24s not monitored (no response of 200 µV at baseline)" % name)
        for e in vagal["events"]:
            print("%10.3f s  %-24s %-10s amplitude %3.0f %% (%.0f µV), latency %3.0f %%"
                  % (e["t_s"], e["channel"], e["kind"], 100 * e["amplitude_ratio"], e["amplitude_uv"],
                     100 * e["latency_ratio"]))


def _run_continuous(args: argparse.Namespace) -> int:
    from ionm.pipeline import edffile, emg, rln

    if args.trials:
        return fail("evaluate", 2, "--trials applies to sweep files (.npz), not to a continuous recording")
    try:
        rec = edffile.load(args.file)
    except edffile.EdfFileError as exc:
        return fail("evaluate", 2, "%s: %s" % (args.file, exc))
    x = rec.samples_uv
    if args.until is not None:
        x = x[:, : max(int(args.until * rec.fs), 0)]
    events, a_train_s = emg.detect(x, rec.fs, rec.channel_names, rec.stim_times_s, evoked_times_s=rec.vagal_times_s)
    res: dict[str, Any] = {
        "file": str(args.file), "fs_hz": rec.fs, "channels": rec.channel_names,
        "duration_s": round(x.shape[1] / rec.fs, 6), "n_stimuli": len(rec.stim_times_s),
        "events": [e.as_json() for e in events if e.kind != "cautery"],
        "cautery": [e.as_json() for e in events if e.kind == "cautery"],
        "a_train_cumulative_s": {k: round(v, 4) for k, v in a_train_s.items()},
    }
    if rec.vagal_times_s:  # continuous vagal monitoring (ionm.pipeline.rln)
        mon = rln.evaluate_continuous(x, rec.fs, rec.channel_names, rec.vagal_times_s)
        res["vagal"] = {
            "stimuli": len(mon.responses),
            "baseline": {name: {"amplitude_uv": _num(mon.baseline_amplitude[c], 1),
                                "latency_ms": _num(mon.baseline_latency[c], 2), "monitored": bool(mon.monitored[c])}
                         for c, name in enumerate(rec.channel_names)},
            "events": [e.as_json() for e in mon.events]}
    if args.json:
        json.dump(res, sys.stdout, ensure_ascii=False, allow_nan=False)
        sys.stdout.write("\n")
    else:
        _print_emg_text(res)
    return 0


def _num(v: float, digits: int) -> float | None:
    return round(float(v), digits) if np.isfinite(v) else None


def run(args: argparse.Namespace) -> int:
    from ionm.pipeline import sweepfile

    if str(args.file).lower().endswith(CONTINUOUS_SUFFIXES):
        return _run_continuous(args)
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
