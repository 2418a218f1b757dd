"""How late a pseudo-terminal delivers a byte on this machine: the virtual board's link, measured apart from it.

Why: the board stops stimulating 100 ms after it last heard the host (protocol/SPEC.md §5.6). On the virtual
board the host's heartbeats reach the firmware through a pty, and Linux hands pty bytes to the reader from a
kernel worker thread (tty flip-buffer work on an unbound workqueue) that runs at normal priority, whatever
the priority of the writer and the reader. Under CPU load that worker waits its turn, so a heartbeat can sit
in the kernel longer than the watchdog allows although both ends run in real time. This tool writes one byte
every --period-ms into a raw pty and reads it on the other side, both ends in real time where allowed
(SCHED_FIFO 50), and prints one JSON line: the delivery latency's percentiles and maximum, how many bytes
took longer than --limit-ms, and as the reference the same real-time thread's oversleep of a --period-ms sleep
(the scheduler alone, without the pty). Compare idle with loaded:

    .venv/bin/python tools/pty_latency.py --seconds 60
    ../shared/checks/under-load .venv/bin/python tools/pty_latency.py --seconds 60
"""

from __future__ import annotations

import argparse
import json
import os
import pty
import select
import threading
import time
import tty

RT_PRIORITY = 50


def _realtime() -> bool:
    try:
        os.sched_setscheduler(0, os.SCHED_FIFO, os.sched_param(RT_PRIORITY))
        return True
    except (OSError, AttributeError):
        return False


def _percentiles(ms: list[float]) -> dict[str, float]:
    s = sorted(ms)
    if not s:
        return {}
    return {"p50": round(s[len(s) // 2], 2), "p99": round(s[int(len(s) * 0.99)], 2),
            "p999": round(s[int(len(s) * 0.999)], 2), "max": round(s[-1], 2)}


def measure(seconds: float, period_ms: float, limit_ms: float) -> dict:
    master, slave = pty.openpty()
    tty.setraw(master)
    tty.setraw(slave)
    arrived: list[float] = []
    done = threading.Event()

    def reader() -> None:
        _realtime()
        p = select.poll()
        p.register(master, select.POLLIN)
        while not done.is_set():
            if not p.poll(100):
                continue
            data = os.read(master, 4096)
            now = time.monotonic()
            arrived.extend([now] * len(data))  # bytes read together arrived together

    realtime = _realtime()
    t = threading.Thread(target=reader, name="pty-reader")
    t.start()
    sent: list[float] = []
    oversleep: list[float] = []
    period = period_ms / 1000.0
    t_end = time.monotonic() + seconds
    while time.monotonic() < t_end:
        sent.append(time.monotonic())
        os.write(slave, b"h")
        before = time.monotonic()
        time.sleep(period)
        oversleep.append((time.monotonic() - before - period) * 1e3)
    deadline = time.monotonic() + 5.0
    while len(arrived) < len(sent) and time.monotonic() < deadline:
        time.sleep(0.01)
    done.set()
    t.join()
    os.close(master)
    os.close(slave)
    latency = [(b - a) * 1e3 for a, b in zip(sent, arrived, strict=False)]
    return {"seconds": seconds, "period_ms": period_ms, "realtime": realtime, "bytes": len(sent),
            "lost": len(sent) - len(latency), "pty_latency_ms": _percentiles(latency),
            "over_limit": sum(1 for x in latency if x > limit_ms), "limit_ms": limit_ms,
            "reference_oversleep_ms": _percentiles(oversleep), "loadavg_1min": os.getloadavg()[0]}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seconds", type=float, default=60.0)
    ap.add_argument("--period-ms", type=float, default=25.0, help="one byte this often (the host's heartbeat)")
    ap.add_argument("--limit-ms", type=float, default=75.0,
                    help="latency that, after a heartbeat period of 25 ms, leaves the board's 100 ms watchdog "
                         "without a frame")
    args = ap.parse_args()
    print(json.dumps(measure(args.seconds, args.period_ms, args.limit_ms)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
