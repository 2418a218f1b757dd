"""How long a baseline takes: a simulated case (the console engine on the simulated source, unpaced) in which B is
pressed at --press s; prints every baseline line of the timeline, with its case time, and each stored baseline's
level SEs. docs/CONSOLE.md and docs/EVALUATION.md quote it.

    .venv/bin/python tools/baseline_time.py --press 3 --duration 150
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

from ionm.case.store import CaseStore
from ionm.case.timeline import short_name
from ionm.console.scripted import command, run_case
from ionm_hw.patient import load_scenario


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--scenario", default="stable")
    ap.add_argument("--press", type=float, default=60.0, help="case time B is pressed at (s)")
    ap.add_argument("--duration", type=float, default=150.0, help="case time to run (s)")
    ap.add_argument("--mep-every", type=float, default=4.0)
    ap.add_argument("--seed", type=int, default=1)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        store = CaseStore(Path(tmp) / "cases.db")
        try:
            engine, cid = run_case(store, load_scenario(args.scenario), duration_s=args.duration, seed=args.seed,
                                 mep_every=args.mep_every,
                                 actions=[(args.press, command("tech", "technologist", {"cmd": "baseline"}))])
            for e in engine.timeline:
                if e.get("kind") == "baseline":
                    print("%7.1f s  %s" % (e["t_s"], e["text"]))
            print("each baseline's tracked levels (relative SE), as stored:")
            for b in store.baselines(cid):
                names = engine.streams[b["stream"]].names
                levels = ["%s ±%.1f %%" % (short_name(nm), 100 * r["level_se"])
                          for nm, r in zip(names, b["refs"], strict=True) if r["level_se"] is not None]
                if levels:
                    print("  %s, sweeps %.1f-%.1f s: %s" % (b["stream"], b["first_t"], b["last_t"], ", ".join(levels)))
        finally:
            store.close()


if __name__ == "__main__":
    main()
