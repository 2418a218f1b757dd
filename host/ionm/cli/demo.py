"""`ionm demo` (what `make demo` runs): the case console on the virtual board, ready for a first look.

It starts the virtual board — the firmware from firmware/ on MicroPython, a simulated patient with an acute
cord injury scripted a few minutes in — opens a new case in a demo store (build/demo/cases.db), makes a
technologist and an oversight-physician account with fresh passwords, and serves the console. Open the URL
in one browser as the technologist and in a second one as the physician: both see the case live. Baselines
are set automatically after a minute (or press B); the alert that follows the injury asks to be
acknowledged (A). Ctrl-C stops the console and the board; the case stays in the store (replay, export and
report work on it).
"""

from __future__ import annotations

import argparse
import os
import secrets
import sys
from pathlib import Path

HELP = "the case console on the virtual board, for a first look"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--scenario", default="acute_cord_injury", help="default %(default)s")
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--listen", default="127.0.0.1:8080", metavar="HOST:PORT")
    p.add_argument("--no-browser", action="store_true", help="do not open a browser")
    p.add_argument("--db", default=str(Path("build") / "demo" / "cases.db"))
    p.add_argument("--events-at", type=float, default=150.0, metavar="S",
                   help="when the scenario's injury begins, seconds into the case (default %(default)s)")


def run(args: argparse.Namespace) -> int:
    from ionm.case.store import CaseStore
    from ionm.cli import console as console_cmd
    from ionm.console.auth import Accounts

    Path(args.db).parent.mkdir(parents=True, exist_ok=True)
    store = CaseStore(args.db)
    accounts = Accounts(store)
    existing = {str(a["name"]) for a in accounts.list()}
    creds = {}
    for name, role in (("tech", "technologist"), ("doctor", "physician")):
        password = secrets.token_urlsafe(9)
        if name in existing:
            accounts.set_password(name, password, by="ionm demo")
        else:
            accounts.add(name, role, password, by="ionm demo")
        creds[name] = (role, password)
    store.close()
    print("ionm demo: accounts for this run (store %s):" % args.db)
    for name, (role, password) in creds.items():
        print("    %-12s %-8s password %s" % (role, name, password))
    print("ionm demo: log in as the technologist in one browser and as the physician in a second one.")
    no_browser = args.no_browser or not (os.environ.get("DISPLAY") or sys.platform == "darwin")
    cargs = ["--sim", "--scenario", args.scenario, "--seed", str(args.seed), "--listen", args.listen,
             "--db", args.db, "--new-case", "--auto-baseline", "60", "--events-at", str(args.events_at),
             "--mep-every", "10", "--patient-id", "DEMO-0001", "--procedure", "simulated posterior fusion"]
    if no_browser:
        cargs.append("--no-browser")
    parser = argparse.ArgumentParser(prog="ionm console")
    console_cmd.add_arguments(parser)
    return console_cmd.run(parser.parse_args(cargs))
