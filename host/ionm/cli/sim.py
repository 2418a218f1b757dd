"""`ionm sim`: the virtual board (ionm.board.virtual) until SIGINT/SIGTERM; stdout line 1 is its serial device,
line 2 (with --generator) the signal generator's VISA resource."""

from __future__ import annotations

import argparse
import signal
import time
from typing import Any

from ionm.board.virtual import VirtualBoard
from ionm.cli.common import fail, scenario_error

HELP = "run the virtual board (firmware on MicroPython + hardware model)"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--scenario", default="stable", help="hardware/scenarios/NAME.json (default: stable)")
    p.add_argument("--seed", type=int, default=1, help="the same seed gives the same data")
    p.add_argument("--serial", default="SIM-0001", help="board serial (sets the unit's analogue errors)")
    p.add_argument("--fast", action="store_true", help="virtual time as fast as possible (default: real time)")
    p.add_argument("--bench", action="store_true",
                   help="amplifier inputs wired to the signal generator through the bench divider, not a patient")
    p.add_argument("--generator", action="store_true", help="start the SCPI signal generator (prints its resource)")
    p.add_argument("--pulse-log", help="append each delivered stimulus pulse as a JSON line to this file")
    p.add_argument("--fault", action="append", default=[], metavar="SPEC",
                   help="inject a fault: dead:CH, gain:CH:FRACTION, impedance:OUTPUT:OHMS (repeatable)")
    p.add_argument("--state-dir", help="the board's flash filesystem (calibration, firmware slots); default: fresh")


def run(args: argparse.Namespace) -> int:
    problem = scenario_error(args.scenario)
    if problem:
        return fail("sim", 2, problem)
    stopping = False

    def stop(_sig: int, _frame: Any) -> None:
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGINT, stop)
    signal.signal(signal.SIGTERM, stop)
    try:
        board = VirtualBoard(scenario=args.scenario, seed=args.seed, serial=args.serial, fast=args.fast,
                             bench=args.bench, generator=args.generator, pulse_log=args.pulse_log,
                             faults=args.fault, state_dir=args.state_dir)
    except (RuntimeError, FileNotFoundError) as exc:
        return fail("sim", 1, "%s" % exc)
    try:
        print(board.device, flush=True)
        if args.generator:
            print(board.generator_resource, flush=True)
        while not stopping:
            time.sleep(0.1)
            if stopping:
                break
            try:
                board.poll()
            except RuntimeError as exc:
                if stopping:
                    break
                return fail("sim", 1, "%s" % exc)
    finally:
        board.close()
    return 0
