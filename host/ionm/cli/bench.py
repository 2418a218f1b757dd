"""`ionm bench`: verify a board on the bench with the signal generator (ionm.board.tools.bench)."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from ionm.board.tools.bench import GROUPS, bench, summary, write_report
from ionm.cli.common import fail

HELP = "verify a board on the bench with the signal generator; checks against board.json limits"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--port", required=True, help="serial device of the board (e.g. /dev/ttyACM0)")
    p.add_argument("--generator", required=True, metavar="RESOURCE",
                   help="VISA resource of the bench generator (e.g. TCPIP::192.168.1.20::5025::SOCKET)")
    p.add_argument("--report", metavar="DIR", help="write report.json, report.txt and PNG plots here")
    p.add_argument("--json", action="store_true", help="print report.json instead of the summary")
    p.add_argument("--only", metavar="GROUP[,GROUP]", default=(),
                   type=lambda s: tuple(x.strip() for x in s.split(",") if x.strip()),
                   help="run only these groups of checks (%s); the report says it is partial" % ", ".join(GROUPS))


def run(args: argparse.Namespace) -> int:
    from ionm.board import link as ln
    from ionm.board.tools.instrument import GeneratorError
    from ionm.board.tools.measure import StimulatorError
    from ionm.board.tools.session import CaptureError

    unknown = sorted(set(args.only) - set(GROUPS))
    if unknown:  # before the board and the generator are touched
        return fail("bench", 2, "--only: no group of checks called %s (groups: %s)"
                    % (", ".join(unknown), ", ".join(GROUPS)))
    try:
        report = bench(args.port, args.generator, args.only)
    except (ln.LinkError, GeneratorError, CaptureError) as exc:
        return fail("bench", 2, "%s" % exc)
    except (ln.BoardError, StimulatorError) as exc:
        return fail("bench", 2, "%s" % exc)
    if args.report:
        write_report(report, Path(args.report))
    if args.json:
        plain = {k: v for k, v in report.items() if k != "data"}
        print(json.dumps(plain, indent=1, default=str))
    else:
        sys.stdout.write(summary(report))
    return 0 if report["passed"] else 1
