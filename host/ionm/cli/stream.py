"""`ionm stream`: stream from a board and print link statistics (ionm.board.stream)."""

from __future__ import annotations

import argparse
import json
from typing import Any

from ionm.board.stream import stream
from ionm.cli.common import fail

HELP = "stream from a board and print link statistics"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--port", required=True, help="serial device of the board (e.g. /dev/ttyACM0)")
    p.add_argument("--seconds", type=float, default=5.0, help="how long to stream")
    p.add_argument("--rate", type=int, default=2000, help="samples per second per channel")
    p.add_argument("--channels", default="all", help="comma-separated channel numbers, or 'all'")
    p.add_argument("--samples-per-frame", type=int, default=32)
    p.add_argument("--input", default="normal", choices=("normal", "shorted", "test"))
    p.add_argument("--encoding", default="raw", choices=("raw", "rice"),
                   help="rice: the board compresses the samples losslessly (SPEC 5.4.1)")
    p.add_argument("--json", action="store_true", help="print one JSON object instead of a table")


def run(args: argparse.Namespace) -> int:
    from ionm.board import link as ln

    config: dict[str, Any] = {"rate_hz": args.rate, "samples_per_frame": args.samples_per_frame, "input": args.input}
    if args.encoding != "raw":
        config["encoding"] = args.encoding
    if args.channels != "all":
        config["channels"] = [int(c) for c in args.channels.split(",")]
    try:
        result = stream(args.port, args.seconds, config)
    except ln.LinkError as exc:
        return fail("stream", 2, "%s" % exc)
    except ln.BoardError as exc:
        return fail("stream", 3, "the board refused: %s" % exc)
    if args.json:
        print(json.dumps(result))
    else:
        for key in ("frames", "bytes", "frames_rejected", "samples_lost", "sequence_gaps", "channels",
                    "sample_rate_hz", "bytes_per_s", "blocks_undecodable"):
            print("%-16s %s" % (key, result[key]))
    ok = result["samples_lost"] == 0 and result["frames_rejected"] == 0 and result["blocks_undecodable"] == 0
    return 0 if ok else 1
