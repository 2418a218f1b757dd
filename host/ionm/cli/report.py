"""`ionm report CASE --out FILE.pdf`: the case report (ionm.case.report)."""

from __future__ import annotations

import argparse

from ionm.case.report import write_report
from ionm.cli.common import add_db_argument, fail

HELP = "write the case report (PDF): summary, baselines, alerts with waveforms, notes, closing status"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("case", nargs="?", help="case id or uid (default: the newest)")
    add_db_argument(p)
    p.add_argument("--out", required=True, metavar="FILE.pdf")


def run(args: argparse.Namespace) -> int:
    from ionm.case.store import CaseStore, StoreError

    store = CaseStore(args.db)
    try:
        n = write_report(store, args.case, args.out)
    except StoreError as exc:
        return fail("report", 2, "%s" % exc)
    finally:
        store.close()
    print("ionm report: %d pages -> %s" % (n, args.out))
    return 0

