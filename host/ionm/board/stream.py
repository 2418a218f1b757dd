"""`ionm stream`: open a board, handshake, configure a default acquisition, stream, stop cleanly, and print
link statistics. The first thing to run against a new board or cable."""

from __future__ import annotations

import argparse
import json
import sys
import time
from typing import Any

HELP = "stream from a board and print link statistics"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--port", required=True, help="serial device of the board (e.g. /dev/ttyACM0)")
    p.add_argument("--seconds", type=float, default=5.0, help="how long to stream")
    p.add_argument("--rate", type=int, default=2000, help="samples per second per channel")
    p.add_argument("--channels", default="all", help="comma-separated channel numbers, or 'all'")
    p.add_argument("--samples-per-frame", type=int, default=32)
    p.add_argument("--input", default="normal", choices=("normal", "shorted", "test"))
    p.add_argument("--json", action="store_true", help="print one JSON object instead of a table")


def stream(port: str, seconds: float, config: dict[str, Any]) -> dict[str, Any]:
    from ionm import link as ln
    from ionm.protocol import messages as m

    transport = ln.open_port(port)
    blink = ln.BoardLink(transport, heartbeat_s=0.025)
    try:
        welcome = ln.connect(blink)
        conf = blink.request(m.CONFIGURE, config)
        blink.request(m.START, {})
        t0 = time.monotonic()
        time.sleep(seconds)
        stop = blink.request(m.STOP, {})
        elapsed = time.monotonic() - t0
        time.sleep(0.2)  # the frames in flight before STOP took effect
    finally:
        blink.close()
    s = blink.stats
    channels = conf["channels"]
    return {
        "port": port,
        "board": welcome["info"]["board"],
        "firmware": welcome["info"]["firmware"],
        "micropython": welcome["info"]["micropython"],
        "frames": s.frames,
        "data_frames": s.data_frames,
        "bytes": s.bytes,
        "frames_rejected": s.frames_rejected,
        "rejected_by_reason": s.rejected_by_reason,
        "samples_lost": s.samples_lost,
        "sequence_gaps": s.sequence_gaps,
        "board_resets": s.board_resets,
        "channels": len(channels),
        "sample_rate_hz": conf["rate_hz"],
        "samples_per_channel": [
            {"channel": ch, "received": blink.received_by_channel.get(ch, 0), "lost": blink.lost_by_channel.get(ch, 0)}
            for ch in channels],
        "board_samples": stop["samples"],
        "seconds": round(elapsed, 3),
        "bytes_per_s": round(s.bytes / elapsed) if elapsed else 0,
    }


def run(args: argparse.Namespace) -> int:
    from ionm import link as ln

    config: dict[str, Any] = {"rate_hz": args.rate, "samples_per_frame": args.samples_per_frame, "input": args.input}
    if args.channels != "all":
        config["channels"] = [int(c) for c in args.channels.split(",")]
    try:
        result = stream(args.port, args.seconds, config)
    except ln.LinkError as exc:
        print("ionm stream: %s" % exc, file=sys.stderr)
        return 2
    except ln.BoardError as exc:
        print("ionm stream: the board refused: %s" % exc, file=sys.stderr)
        return 3
    if args.json:
        print(json.dumps(result))
    else:
        for key in ("frames", "bytes", "frames_rejected", "samples_lost", "sequence_gaps", "channels",
                    "sample_rate_hz", "bytes_per_s"):
            print("%-16s %s" % (key, result[key]))
    return 0 if result["samples_lost"] == 0 and result["frames_rejected"] == 0 else 1
