"""`make bench`: every benchmark in this folder, each reported as ratios against a reference measured in the
same run. Results print as a table and are written to build/bench.json.

Usage: python -m bench [--quick] [--only NAME ...]
"""

from __future__ import annotations

import argparse
import importlib
import json
import sys
import time
from pathlib import Path

ORDER = ["link", "firmware", "pipeline_throughput", "store_ledger", "snapshot_size", "detection", "live_case", "emg",
         "freerun_audio",
         "eeg", "baep", "hunt", "hub"]


def main() -> int:
    ap = argparse.ArgumentParser(description="ionm benchmarks")
    ap.add_argument("--quick", action="store_true", help="shorter runs (for a smoke check)")
    ap.add_argument("--only", nargs="*", default=None)
    args = ap.parse_args()
    results = {}
    for name in args.only or ORDER:
        try:
            mod = importlib.import_module("bench.%s" % name)
        except ModuleNotFoundError as exc:
            if exc.name != "bench.%s" % name:
                raise
            print("== %s: not present" % name)
            continue
        t0 = time.monotonic()
        print("== %s" % name, flush=True)
        res = mod.run(quick=args.quick)
        res["wall_s"] = round(time.monotonic() - t0, 1)
        results[name] = res
        for line in res.get("summary", []):
            print("   " + line)
    out = Path("build") / "bench.json"
    out.parent.mkdir(exist_ok=True)
    out.write_text(json.dumps(results, indent=1, default=str))
    print("results: %s" % out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
