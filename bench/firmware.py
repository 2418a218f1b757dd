"""Firmware benchmark on MicroPython (the virtual board, fast virtual time): a 10-minute acquisition in
board time; reports the heap high-water mark against the board's heap, and the data rate the firmware
sustains against the rate the configuration needs in real time."""

from __future__ import annotations

import time
from typing import Any

from ionm import board
from ionm.acquire import BoardSession


def run(quick: bool = False) -> dict[str, Any]:
    from ionm.sim import VirtualBoard

    model_s = 60.0 if quick else 600.0
    rate, spf, channels = 4000, 64, 16
    heap = board.load()["mcu"]["heap_bytes"]
    statuses: list[dict[str, Any]] = []
    with VirtualBoard(bench=True, fast=True, stderr=open("/dev/null", "w")) as vb:
        session = BoardSession(vb.device, on_event=lambda e: statuses.append(e) if e.get("kind") == "status" else None)
        try:
            session.configure({"rate_hz": rate, "samples_per_frame": spf})
            t0 = time.monotonic()
            session.start()
            target = int(model_s * rate)
            while session.link.stats.samples_received < target:
                time.sleep(0.2)
            wall = time.monotonic() - t0
            session.stop()
        finally:
            session.close()
    s = session.link.stats
    peak = max(st["heap_peak"] for st in statuses)
    realtime_factor = (s.samples_received / rate) / wall
    res = {
        "model_seconds": s.samples_received / rate,
        "wall_seconds": round(wall, 1),
        "frames": s.data_frames,
        "samples_lost": s.samples_lost,
        "heap_bytes": heap,
        "heap_peak_bytes": peak,
        "heap_peak_fraction": round(peak / heap, 3),
        "realtime_factor": round(realtime_factor, 2),
        "us_per_frame_whole_loop": round(wall / s.data_frames * 1e6, 1),
    }
    res["summary"] = [
        "%d s of board time (%d ch x %d Hz, %d samples/frame) in %.0f s: %.1f x real time, %d samples lost"
        % (res["model_seconds"], channels, rate, spf, wall, realtime_factor, s.samples_lost),
        "live-heap high-water %d B of %d B (%.0f %%); %.0f µs per frame for the whole loop incl. model and host"
        % (peak, heap, 100 * peak / heap, res["us_per_frame_whole_loop"]),
    ]
    return res
