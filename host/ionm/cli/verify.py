"""`ionm verify CASE`: check a recorded case against its ledger and the anchor file (ionm.case.ledger).

Exit 0: every record of the case is in the chain, unaltered, and the chain reaches its anchored head.
Exit 1: tampering (or damage) found; the first bad record is named. Exit 2: no such store or case.
"""

from __future__ import annotations

import argparse
import os

from ionm.cli.common import add_db_argument, fail

HELP = "check a recorded case for tampering: every record against its ledger and the anchored chain head"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("case", nargs="?", help="case id or uid (default: the newest)")
    add_db_argument(p)
    p.add_argument("--all", action="store_true", help="list every problem, not only the first")


def run(args: argparse.Namespace) -> int:
    import sqlite3

    from ionm.case.ledger import find_case, verify

    if not os.path.isfile(args.db):
        return fail("verify", 2, "no case store %s" % args.db)
    try:  # read-only: verifying must not write to the store or move its anchor
        case = find_case(args.db, args.case)
    except sqlite3.Error as exc:
        return fail("verify", 2, "%s is not a case store: %s" % (args.db, exc))
    if case is None:
        return fail("verify", 2, "no case %r in %s" % (args.case, args.db) if args.case else "no cases in %s" % args.db)
    res = verify(args.db, int(case["id"]))
    if res["ok"]:
        print("ionm verify: case %s intact: %d records chained, head %s, anchored at %d%s" % (
            case["uid"], res["entries"], res["head"], res["anchor"]["rows"] if res["anchor"] else 0,
            "".join("; " + n for n in res["notes"])))
        return 0
    print("ionm verify: case %s NOT intact: %s" % (case["uid"], res["first"]))
    if args.all:
        for p in res["problems"][1:]:
            print("  also: %s" % p)
    elif len(res["problems"]) > 1:
        print("  (%d problems in all; --all lists them)" % len(res["problems"]))
    return 1
