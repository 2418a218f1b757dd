"""Firmware benchmark on MicroPython (the virtual board, fast virtual time): a 10-minute acquisition in
board time; reports the heap high-water mark against the board's heap, and the data rate the firmware
sustains against the rate the configuration needs in real time."""

from __future__ import annotations

import time
from typing import Any

from ionm import board
from ionm.board.acquire import BoardSession


def virtual_case(model_s: float) -> dict[str, Any]:
    """A simulated case in fast virtual time: the patient, four interleaved SSEP programs, the firmware."""
    from ionm.board.virtual import VirtualBoard

    rate = 4000
    with VirtualBoard(scenario="acute_cord_injury", seed=2, fast=True, stderr=open("/dev/null", "w")) as vb:
        session = BoardSession(vb.device)
        try:
            session.configure({"rate_hz": rate, "samples_per_frame": 160})
            session.load_programs([{"kind": "pulse", "output": o, "current_ua": 30000, "width_us": 200,
                                    "rate_mhz": 4700, "phase_us": o * 53191} for o in range(4)])
            t0 = time.monotonic()
            session.start()
            session.start_stimulation()
            while session.link.stats.samples_received < model_s * rate:
                time.sleep(0.2)
            wall = time.monotonic() - t0
            session.stop()
        finally:
            session.close()
    return {"model_seconds": model_s, "wall_seconds": round(wall, 1), "realtime_factor": round(model_s / wall, 1),
            "samples_lost": session.link.stats.samples_lost}


def run(quick: bool = False) -> dict[str, Any]:
    from ionm.board.virtual import VirtualBoard

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
    case = virtual_case(120.0 if quick else 1800.0)
    res["virtual_case"] = case
    res["summary"] = [
        "%d s of board time (%d ch x %d Hz, %d samples/frame) in %.0f s: %.1f x real time, %d samples lost"
        % (res["model_seconds"], channels, rate, spf, wall, realtime_factor, s.samples_lost),
        "live-heap high-water %d B of %d B (%.0f %%); %.0f µs per frame for the whole loop incl. model and host"
        % (peak, heap, 100 * peak / heap, res["us_per_frame_whole_loop"]),
        "simulated case (patient, 4 interleaved SSEP programs, 16 ch x 4 kHz): %d s of board time in %.0f s"
        " wall, %.1f x real time, %d samples lost" % (case["model_seconds"], case["wall_seconds"],
                                                      case["realtime_factor"], case["samples_lost"]),
    ]
    return res
