"""`ionm demo` (what `make demo` runs): the virtual board with a patient scenario, and the live view.

Until the web console lands this shows live link statistics in the terminal: the board streams the
scenario's signals and the numbers say whether anything is lost. Ctrl-C stops board and view.
"""

from __future__ import annotations

import argparse
import sys
import time
from typing import Any

HELP = "the virtual board and the console, for a first look"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--scenario", default="stable")
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--seconds", type=float, default=0, help="stop after this long (0: until Ctrl-C)")


def run(args: argparse.Namespace) -> int:
    from ionm import link as ln
    from ionm.protocol import messages as m
    from ionm.sim import VirtualBoard

    print("ionm demo: starting the virtual board (firmware on MicroPython, scenario %r)..." % args.scenario)
    last: dict[str, Any] = {}

    def on_data(block: ln.DataBlock) -> None:
        last["block"] = block

    with VirtualBoard(scenario=args.scenario, seed=args.seed) as board:
        print("ionm demo: the board is at %s (any ionm tool can open it while this runs)" % board.device)
        link = ln.BoardLink(ln.open_port(board.device), on_data=on_data, heartbeat_s=0.025)
        try:
            welcome = ln.connect(link, timeout=10)
            info = welcome["info"]
            print("ionm demo: board %s, firmware %s on %s %s" % (
                info["board"]["serial"], info["firmware"]["version"], info["micropython"]["implementation"],
                info["micropython"]["version"]))
            conf = link.request(m.CONFIGURE, {"rate_hz": 4000, "samples_per_frame": 64})
            link.request(m.START, {})
            print("ionm demo: streaming %d channels at %d Hz; Ctrl-C to stop\n" % (len(conf["channels"]),
                                                                                  conf["rate_hz"]))
            t0 = time.monotonic()
            while not args.seconds or time.monotonic() - t0 < args.seconds:
                time.sleep(1.0)
                s = link.stats
                block = last.get("block")
                uv = ""
                if block is not None:
                    scale = conf["vref_uv"] / conf["full_scale_code"] / conf["gain"][0]
                    uv = "  ch0 %+9.1f µV" % (float(block.counts[-1, 0]) * scale)
                sys.stdout.write("\r%6.0f s  frames %7d  bytes %10d  rejected %d  lost %d  gaps %d%s   " % (
                    time.monotonic() - t0, s.frames, s.bytes, s.frames_rejected, s.samples_lost,
                    s.sequence_gaps, uv))
                sys.stdout.flush()
        except KeyboardInterrupt:
            pass
        finally:
            try:
                link.request(m.STOP, {}, timeout=0.5, retries=0)
            except (ln.LinkError, ln.BoardError):
                pass
            link.close()
    print("\nionm demo: stopped")
    return 0
