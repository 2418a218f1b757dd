"""`ionm export CASE --edf OUT | --csv OUT`: a recorded case as EDF+/BDF+ or CSV (ionm.case.export)."""

from __future__ import annotations

import argparse
from pathlib import Path

from ionm.case.export import slug, write_csv, write_edf
from ionm.cli.common import add_db_argument, fail

HELP = "export a recorded case: EDF+/BDF+ with annotations (--edf) or CSV (--csv)"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("case", nargs="?", help="case id or uid (default: the newest)")
    add_db_argument(p)
    p.add_argument("--edf", metavar="OUT", help="EDF+ (or BDF+ if OUT ends in .bdf), one file per stream")
    p.add_argument("--csv", metavar="OUT", help="measurements and events as CSV")
    p.add_argument("--stream", help="only this stream (e.g. 'ssep-lower/L tibial')")
    p.add_argument("--discontinuous", action="store_true",
                   help="EDF+D: every sweep at its true case time (EDFlib/pyedflib cannot read +D files)")


def run(args: argparse.Namespace) -> int:
    from ionm.case.store import CaseStore, StoreError

    if not args.edf and not args.csv:
        return fail("export", 2, "say what to write: --edf OUT and/or --csv OUT")
    store = CaseStore(args.db)
    try:
        case = store.case(args.case)
        cid = int(case["id"])
        modality = {s["key"]: s["modality"] for s in store.streams(cid)}
        keys = list(modality)
        if args.stream:
            if args.stream not in keys:
                raise StoreError("no stream %r in case %s (streams: %s)" % (args.stream, case["uid"], ", ".join(keys)))
            keys = [args.stream]
        if args.edf:
            out = Path(args.edf)
            bdf = out.suffix.lower() == ".bdf"
            for key in keys:
                if modality[key] == "baep":  # its averages only are recorded (the report and the console show them)
                    print("ionm export: %s: BAEP averages only, no EDF" % key)
                    continue
                path = out if len(keys) == 1 else out.with_name("%s.%s%s" % (out.stem, slug(key), out.suffix or ".edf"))
                n = write_edf(store, cid, key, path, bdf, args.discontinuous)
                print("ionm export: %s: %d %s -> %s" % (key, n, "s of EEG" if modality[key] == "eeg" else "sweeps",
                                                        path))
        if args.csv:
            n = write_csv(store, cid, Path(args.csv), args.stream)
            print("ionm export: %d rows -> %s" % (n, args.csv))
    except StoreError as exc:
        return fail("export", 2, "%s" % exc)
    finally:
        store.close()
    return 0

