"""Soak the stimulation watchdog with a live host: the virtual board stimulates (SSEP pulses and repeating TcMEP
trains) while the host sends a heartbeat every --heartbeat-ms; every `watchdog` event is a spurious trip. Run
it under load to see what a busy machine does (issue 17: 0 trips in 30 minutes with two CPU hogs):

    ../shared/checks/under-load .venv/bin/python tools/watchdog_soak.py --minutes 30

Stimulation is started again after each trip, so that every trip in the run is counted. Prints one JSON
line: minutes, trips, stimuli delivered, and for each trip the board's view (its sample index when it tripped,
the index at which it last heard the host) and the host's (the wall-clock gap before the trip between the
heartbeats it wrote). Exit status 0 with no trip.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

from ionm.board import link as ln
from ionm.protocol import messages as m


def run(minutes: float, heartbeat_ms: float, rate_hz: int, samples_per_frame: int, relay: bool = True
        ) -> dict[str, Any]:
    from ionm.board.virtual import VirtualBoard

    tmp = Path(tempfile.mkdtemp(prefix="ionm-soak-"))
    events: list[tuple[float, dict]] = []
    sent: list[float] = []  # wall-clock time of every heartbeat written
    with open(tmp / "board.stderr", "w") as err, VirtualBoard(bench=True, stderr=err) as vb:
        port = ln.open_port(vb.device, relay=relay, heartbeat_s=heartbeat_ms / 1000.0)
        link = ln.BoardLink(port, on_event=lambda e: events.append((time.monotonic(), e)),
                            heartbeat_s=None)
        stop = threading.Event()

        def beat() -> None:
            period = heartbeat_ms / 1000.0
            while not stop.wait(period):
                link.send(m.HEARTBEAT, {})
                sent.append(time.monotonic())

        try:
            ln.connect(link, timeout=10)
            link.request(m.CONFIGURE, {"rate_hz": rate_hz, "samples_per_frame": samples_per_frame})
            link.request(m.START, {})
            threading.Thread(target=beat, daemon=True).start()
            period_us = 1e9 / 4700
            link.request(m.STIM_PROGRAM, {"programs": [
                {"kind": "pulse", "output": o, "current_ua": 5000, "width_us": 200, "rate_mhz": 4700,
                 "phase_us": int(o * period_us / 4)} for o in range(2)] + [
                {"kind": "tcmep", "count": 5, "ipi_us": 3000, "interval_ms": 2000}]})
            link.request(m.STIM_START, {})
            t_end = time.monotonic() + minutes * 60
            seen = 0
            while time.monotonic() < t_end:
                time.sleep(0.5)
                vb.poll()
                trips_now = sum(1 for _t, e in events if e["kind"] == "watchdog")
                if trips_now > seen:  # stimulation stopped: start it again, so that every trip is counted
                    seen = trips_now
                    try:
                        link.request(m.STIM_START, {})
                    except ln.BoardError:  # (a TcMEP train too soon after the last: next round)
                        seen -= 1
        finally:
            stop.set()
            link.close()
    trips = []
    for t, e in events:
        if e["kind"] != "watchdog":
            continue
        before = [s for s in sent if s <= t]
        gaps = [b - a for a, b in zip(before[-50:], before[-49:], strict=False)]
        trips.append({"index": e["index"], "last_host_index": e["last_host_index"],
                      "board_silence_ms": (e["index"] - e["last_host_index"]) * 1000 // rate_hz,
                      "host_max_gap_ms": round(max(gaps) * 1000, 1) if gaps else None})
    kinds: dict[str, int] = {}
    for _t, e in events:
        kinds[e["kind"]] = kinds.get(e["kind"], 0) + 1
    stims = sum(1 for _t, e in events if e["kind"] == "stim")
    return {"minutes": minutes, "heartbeat_ms": heartbeat_ms, "rate_hz": rate_hz, "stims": stims,
            "samples_per_frame": samples_per_frame, "trips": len(trips), "detail": trips[:10], "events": kinds,
            "heartbeats": len(sent), "relay": relay}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--minutes", type=float, default=30.0)
    ap.add_argument("--heartbeat-ms", type=float, default=10.0)
    ap.add_argument("--rate-hz", type=int, default=2000)
    ap.add_argument("--samples-per-frame", type=int, default=32)
    ap.add_argument("--no-relay", action="store_true",
                    help="the port in this process, as before the relay (ionm.board.relay): for comparison")
    args = ap.parse_args()
    out = run(args.minutes, args.heartbeat_ms, args.rate_hz, args.samples_per_frame, relay=not args.no_relay)
    print(json.dumps(out))
    return 0 if out["trips"] == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
