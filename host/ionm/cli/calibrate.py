"""`ionm calibrate`: calibrate a board's amplifier and stimulator (ionm.board.tools.calibrate)."""

from __future__ import annotations

import argparse
import getpass
import json
from dataclasses import asdict
from pathlib import Path

from ionm.board.tools.calibrate import GAIN, STIM_LEVELS_UA, Outcome, calibrate
from ionm.cli.common import fail

HELP = "calibrate a board's amplifier and stimulator; store it on the board and the host"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--port", required=True, help="serial device of the board (e.g. /dev/ttyACM0)")
    p.add_argument("--generator", metavar="RESOURCE",
                   help="VISA resource of the bench generator wired through the divider: the gain reference")
    p.add_argument("--operator", default=None, help="who calibrates (default: the login name)")
    p.add_argument("--store", help="directory for the host copy (default: ~/.local/share/ionm/calibration)")
    p.add_argument("--show", action="store_true", help="print the calibration the board holds; change nothing")
    p.add_argument("--json", action="store_true", help="machine-readable output")


# ---- command line ----------------------------------------------------------------------------------------------
def _print_outcome(o: Outcome) -> None:
    cal = o.calibration
    print("board %s: calibrated %s by %s (gain reference: %s; ADC at gain %d)" % (o.serial, cal.date, cal.operator,
                                                                                o.reference, GAIN))
    print(" ch   offset µV   gain error %   reference")
    for i, ch in enumerate(o.adc["channels"]):
        gain_err = (1.0 / (1.0 + cal.adc_gain_ppm[i] / 1e6) - 1.0) * 100.0
        print("%3d  %+10.3f   %+11.4f   %s" % (ch, cal.adc_offset_nv[i] / 1000.0, gain_err, o.channel_reference[i]))
    print("out  gain error %%   offset µA   (current-sense readback at %s µA)" % "/".join(map(str, STIM_LEVELS_UA)))
    for out, (slope, icpt) in enumerate(zip(o.stim["slope"], o.stim["intercept_ua"], strict=True)):
        print("%3d  %+11.4f   %+9.1f" % (out, (slope - 1.0) * 100.0, icpt))
    for v in o.verification:
        print("verify %-16s %s  %s" % (v["name"], "PASS" if v["passed"] else "FAIL",
                                      v["detail"] if v["value"] is None else "%.4g %s (limit %g %s), %s"
                                      % (v["value"], v["unit"], v["limit"], v["unit"], v["detail"])))
    for r in o.retries:
        print("capture taken again: %s" % r)
    print("stored on the board and in %s" % o.stored)


def _show(port: str, store: Path | None, as_json: bool) -> int:
    from ionm.board.tools import calibration as calmod
    from ionm.board.tools.session import ToolSession

    with ToolSession(port) as session:
        held, serial = session.calibration(), session.serial
    host = calmod.load(serial, store)
    same = host is not None and host[0].to_board() == held.to_board()
    if as_json:
        print(json.dumps({"board_serial": serial, **asdict(held), "host_copy_matches": same}, indent=1))
        return 0
    if held.date is None:
        print("board %s: not calibrated" % serial)
        return 0
    print("board %s: calibrated %s by %s" % (serial, held.date, held.operator))
    print(" ch   offset µV   gain correction ppm")
    for ch, (g, off) in enumerate(zip(held.adc_gain_ppm, held.adc_offset_nv, strict=True)):
        print("%3d  %+10.3f   %+10d" % (ch, off / 1000.0, g))
    print("out  gain correction ppm")
    for out, g in enumerate(held.stim_gain_ppm):
        print("%3d  %+10d" % (out, g))
    print("host copy: %s" % ("matches" if same else "absent" if host is None else "DIFFERS from the board"))
    return 0


def run(args: argparse.Namespace) -> int:
    from ionm.board import link as ln
    from ionm.board.tools.calibration import OutOfBounds
    from ionm.board.tools.instrument import GeneratorError
    from ionm.board.tools.measure import StimulatorError
    from ionm.board.tools.session import CaptureError

    store = Path(args.store) if args.store else None
    try:
        if args.show:
            return _show(args.port, store, args.json)
        operator = args.operator or getpass.getuser()
        outcome = calibrate(args.port, generator=args.generator, operator=operator, store=store)
    except OutOfBounds as exc:
        return fail("calibrate", 1, "refused, nothing stored: %s" % exc)
    except (ln.LinkError, CaptureError, GeneratorError) as exc:
        return fail("calibrate", 2, "%s" % exc)
    except (ln.BoardError, StimulatorError) as exc:
        return fail("calibrate", 1, "%s" % exc)
    if args.json:
        print(json.dumps({"board_serial": outcome.serial, **asdict(outcome.calibration),
                          "reference": outcome.channel_reference, "adc": outcome.adc, "stimulator": outcome.stim,
                          "verification": outcome.verification, "verified": outcome.verified,
                          "capture_retries": outcome.retries, "stored": outcome.stored}, indent=1))
    else:
        _print_outcome(outcome)
    if not outcome.verified:
        return fail("calibrate", 1, "the verification pass FAILED (see above)")
    return 0
