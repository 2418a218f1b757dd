"""Link benchmark: wire efficiency of real data frames per configuration, host decode rate against the
link's maximum sample rate, and the firmware's frame-building cost on MicroPython for small and large
frames (it must not grow with samples per frame beyond the memory copy)."""

from __future__ import annotations

import json
import time
from typing import Any

import cbor2
import numpy as np

from ionm import board
from ionm.board import mpy
from ionm.board.link import decode_samples
from ionm.protocol import framing, messages as m

CONFIGS = [(16, 1), (16, 8), (16, 22), (16, 64), (16, 170), (4, 86), (8, 43), (8, 256)]  # (channels, spf)

FW_CODE = """
import sys, json, time, micropython, frame_writer, messages as m
cfgs = json.loads(sys.stdin.read())
out = []
def timed(w, head, n):
    t0 = time.ticks_us()
    i = 0
    micropython.heap_lock()
    while i < n:
        w.build(head, 1, i)
        i += 1
    micropython.heap_unlock()
    return time.ticks_diff(time.ticks_us(), t0)
def copy_cost(buf, n):  # the memory copy itself: the same bytes moved with one slice assignment
    dst = bytearray(len(buf))
    t0 = time.ticks_us()
    i = 0
    while i < n:
        dst[:] = buf
        i += 1
    return time.ticks_diff(time.ticks_us(), t0)
for nch, spf, reps in cfgs:
    w = frame_writer.FrameWriter(2, list(range(nch)), spf, m.SCHEMA)
    head = bytearray(b"\\x00\\x01\\x00\\x00\\x00\\x00\\x00\\x00")
    start = w.build(head, 1, 0)
    us = timed(w, head, reps)
    out.append({"channels": nch, "spf": spf, "frame_bytes": w.end - start, "payload_bytes": w.nbytes,
                "us_per_frame": us / reps, "copy_us_per_frame": copy_cost(w.raw, reps) / reps})
print(json.dumps(out))
"""


def firmware_frames(configs: list[tuple[int, int]], reps: int) -> list[dict[str, Any]]:
    proc = mpy.run_code(FW_CODE, stdin=json.dumps([[c, s, reps] for c, s in configs]).encode(), timeout=600)
    if proc.returncode != 0:
        raise RuntimeError(proc.stdout.decode() + proc.stderr.decode())
    result: list[dict[str, Any]] = json.loads(proc.stdout.decode())
    return result


def host_decode_rate(seconds: float) -> float:
    """Channel-samples per second through the host's receive path (framing, cbor2, 24-bit unpacking)."""
    rng = np.random.default_rng(0)
    frames = []
    nch, spf = 16, 64
    for k in range(200):
        samples = rng.integers(0, 256, 3 * nch * spf, dtype=np.uint8).tobytes()
        frames.append(framing.encode(cbor2.dumps([m.DATA, 1, k * spf, 0, samples]), k, m.SCHEMA))
    stream = b"".join(frames)
    chunks = [stream[i:i + 4096] for i in range(0, len(stream), 4096)]
    n = 0
    t0 = time.perf_counter()
    while time.perf_counter() - t0 < seconds:
        dec = framing.Decoder(m.SCHEMA)
        for ch in chunks:
            for _seq, payload in dec.feed(ch):
                msg = cbor2.loads(payload)
                n += decode_samples(msg[4], nch).size
    return n / (time.perf_counter() - t0)


def run(quick: bool = False) -> dict[str, Any]:
    budget = board.load()["link"]["budget_bytes_per_s"]
    fw = firmware_frames(CONFIGS, 200 if quick else 2000)
    eff = [{"channels": f["channels"], "samples_per_frame": f["spf"], "payload_bytes": f["payload_bytes"],
            "wire_bytes": f["frame_bytes"], "efficiency": round(f["payload_bytes"] / f["frame_bytes"], 4)} for f in fw]
    big = [e for e in eff if e["payload_bytes"] >= 1024]
    link_max = budget / 3  # channel-samples per second the link can carry at 3 bytes each, no overhead
    rate = host_decode_rate(1.0 if quick else 3.0)
    # cost per frame = fixed + per_byte * payload: the fixed part is the Python work per frame, the rest
    # is the viper copy of the samples; a residual-free fit says nothing else grows with the frame size
    x = np.array([f["payload_bytes"] for f in fw], dtype=float)
    y = np.array([f["us_per_frame"] for f in fw])
    per_byte, fixed = np.polyfit(x, y, 1)
    worst_resid = float(np.max(np.abs(y - (fixed + per_byte * x)) / y))
    copy_per_byte = float(np.polyfit(x, [f["copy_us_per_frame"] for f in fw], 1)[0])
    small = min(fw, key=lambda f: f["payload_bytes"])
    large = max(fw, key=lambda f: f["payload_bytes"])
    res = {
        "wire_efficiency": eff,
        "min_efficiency_at_1KiB_or_more": min(e["efficiency"] for e in big),
        "host_decode_channel_samples_per_s": round(rate),
        "link_max_channel_samples_per_s": round(link_max),
        "host_decode_over_link_max": round(rate / link_max, 1),
        "firmware_frames": fw,
        "firmware_us_per_frame_small": round(small["us_per_frame"], 2),
        "firmware_us_per_frame_large": round(large["us_per_frame"], 2),
        "firmware_fixed_us_per_frame": round(float(fixed), 2),
        "firmware_ns_per_payload_byte": round(float(per_byte) * 1000, 3),
        "memcpy_ns_per_byte": round(copy_per_byte * 1000, 4),
        "firmware_cost_fit_worst_residual": round(worst_resid, 3),
    }
    res["summary"] = [
        "wire efficiency (payload/wire) for frames >= 1 KiB payload: min %.1f %% (goal >= 97 %%)"
        % (100 * res["min_efficiency_at_1KiB_or_more"]),
        "host decode %d channel-samples/s = %.0f x the link's maximum (%d/s) (goal >= 100 x)"
        % (rate, rate / link_max, link_max),
        "firmware frame build on MicroPython (unix port): %.1f µs for %d B of samples, %.1f µs for %d B"
        % (small["us_per_frame"], small["payload_bytes"], large["us_per_frame"], large["payload_bytes"]),
        "  cost = %.2f µs per frame + %.2f ns per payload byte (viper copy; memcpy %.3f ns/B); linear fit"
        " holds within %.0f %%" % (fixed, per_byte * 1000, copy_per_byte * 1000, 100 * worst_resid),
    ]
    return res
