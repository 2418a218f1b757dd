"""`ionm impedance`: the electrode impedance check before a case (ionm.board.tools.impedance, SPEC 5.10).

Every recording channel's lead impedance (its two electrodes in series, ADS1299 AC lead-off at 24 nA) and
every stimulator output's electrode impedance (a sub-threshold probe pulse), judged: a channel is good up to
10 kOhm, an output up to the board's limit (above it the board refuses to stimulate on it).
Exit 0: everything good. Exit 1: a channel or output is high or open. Exit 2: no board, or it does not
answer. Exit 3: the board refused the request (e.g. acquisition running: stop the console first).
"""

from __future__ import annotations

import argparse
import json
import subprocess

from ionm.cli.common import fail, scenario_error

HELP = "check the electrodes: each channel's lead impedance and each stimulator output's, before a case"


def add_arguments(p: argparse.ArgumentParser) -> None:
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--port", metavar="PATH", help="the board's serial port (e.g. /dev/ttyACM0)")
    src.add_argument("--sim", action="store_true", help="the virtual board with a simulated patient")
    p.add_argument("--scenario", default="stable", help="--sim: scenario name or JSON path (default %(default)s)")
    p.add_argument("--seed", type=int, default=1, help="--sim: patient seed")
    p.add_argument("--fault", action="append", default=[], metavar="FAULT",
                   help="--sim: an electrode fault, impedance:OUTPUT:OHMS or lead:CH:OHMS (repeatable)")
    p.add_argument("--channels", help="comma-separated ADC channels (default: all)")
    p.add_argument("--outputs", help="comma-separated stimulator outputs, or 'none' (default: all)")
    p.add_argument("--json", action="store_true", help="print one JSON object instead of a table")


def _indices(text: str | None) -> list[int] | None:
    if text is None:
        return None
    return [] if text == "none" else [int(x) for x in text.split(",")]


def run(args: argparse.Namespace) -> int:
    from ionm.board import link as ln
    from ionm.board.boardcase import default_montage
    from ionm.board.stimulation import SSEP_OUTPUTS
    from ionm.board.tools.impedance import check, format_ohm

    try:
        channels, outputs = _indices(args.channels), _indices(args.outputs)
    except ValueError:
        return fail("impedance", 2, "--channels and --outputs take comma-separated numbers")
    names = {i: "%s (%s)" % (c["derivation"], c["label"]) for i, c in enumerate(default_montage())}
    sites = dict(SSEP_OUTPUTS)
    board = None
    try:
        if args.sim:
            err = scenario_error(args.scenario)
            if err:
                return fail("impedance", 2, err)
            from ionm.board.virtual import VirtualBoard

            board = VirtualBoard(scenario=args.scenario, seed=args.seed, faults=args.fault, stderr=subprocess.DEVNULL)
            board.__enter__()
            port = board.device
        else:
            port = args.port
        report, info = check(port, channels, outputs, names, sites)
    except ln.LinkError as exc:
        return fail("impedance", 2, "%s" % exc)
    except ln.BoardError as exc:
        return fail("impedance", 3, "the board refused: %s" % exc)
    finally:
        if board is not None:
            board.__exit__(None, None, None)
    if args.json:
        print(json.dumps({"board": info["board"], **report.as_dict()}))
        return 0 if report.ok else 1
    b = info["board"]
    print("board %s (%s): lead impedance with %d nA at %d Hz; good up to %s per channel"
          % (b["serial"], b["support"], report.lead_off_current_na, report.frequency_hz,
             format_ohm(report.channels[0].limit_ohm) if report.channels else "-"))
    if report.channels:
        print(" ch  %-44s %10s" % ("derivation", "impedance"))
        for r in report.channels:
            print("%3d  %-44s %10s  %s" % (r.index, r.name, format_ohm(r.ohm), r.status.upper() if r.status != "ok"
                                           else "ok"))
    if report.outputs:
        print("out  %-44s %10s  (stimulation refused above %s)" % ("site", "impedance", format_ohm(report.limit_ohm)))
        for r in report.outputs:
            print("%3d  %-44s %10s  %s" % (r.index, r.name, format_ohm(r.ohm), r.status.upper() if r.status != "ok"
                                           else "ok"))
    print("all electrodes good" if report.ok else "CHECK THE ELECTRODES MARKED HIGH OR OPEN")
    return 0 if report.ok else 1
