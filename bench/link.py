"""Link benchmark: wire efficiency of real data frames per configuration, host decode rate against the
link's maximum sample rate, and the firmware's frame-building cost on MicroPython for small and large
frames (it must not grow with samples per frame beyond the memory copy). Lossless compression (SPEC 5.4.1):
the ratio on recorded-like EMG, EEG and EP from the hardware models, the board's rice frame cost against
its raw frame cost on the same blocks in the same run, and the full board's link load compressed."""

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


FULL_SCALE = 8388607
VREF_UV = 4.5e6
RICE_SPF = 32  # samples per frame of the compressed configurations measured


def _counts(uv: np.ndarray, fs: int, seed: int) -> np.ndarray:
    """µV [n_channels, n] -> int ADC counts [n, 16] as the ADS1299 model converts them at gain 24: its noise
    floor at this rate, a fixed offset per channel, channels tiled to the board's 16."""
    from ionm_hw.ads1299 import noise_uvrms

    rng = np.random.default_rng(seed)
    x = np.resize(uv, (16, uv.shape[1]))
    x = x + rng.normal(0.0, noise_uvrms(24, fs), x.shape) + rng.normal(0.0, 50.0, (16, 1))
    return np.clip(np.rint(x * 24 * FULL_SCALE / VREF_UV), -FULL_SCALE - 1, FULL_SCALE).astype(np.int64).T


def recorded_like(quick: bool) -> dict[str, tuple[int, np.ndarray]]:
    """(rate, counts [n, 16]) of free-running EMG (16 kSPS; a stretch with discharges and one with cautery),
    EEG (1 kSPS) and BAEP sweeps end to end (EP, rendered at 20 kSPS, interpolated to 16 kSPS), rendered by
    the hardware models from their scenarios."""
    from ionm_hw.physiology import baep, eeg, freerun

    seconds = 2.0 if quick else 8.0
    sc = freerun.load_scenario("lumbar_root_retraction")

    def window(t0: float, length: float) -> np.ndarray:  # the scenario's events from t0 on, cut at the end
        script = [dict(e, onset_s=e["onset_s"] - t0, **({"duration_s": min(e["duration_s"], t0 + length
                                                                             - e["onset_s"])}
                                                          if "duration_s" in e else {}))
                  for e in sc["events"] if "onset_s" in e and t0 <= e["onset_s"] < t0 + length - 0.1]
        uv: np.ndarray = freerun.render(length, 16000, len(sc["channels"]), script, 1).samples_uv
        return uv

    emg = window(58.0, seconds)  # neurotonic discharges (from 60 s on)
    cautery = window(10.0, min(seconds, 3.0))  # electrocautery throughout (800 µV, broadband): the worst stretch
    sc = eeg.load_scenario("cea_clamp_ischaemia")
    eg = eeg.render(4 * seconds, 1000, list(sc["channels"]), sc["events"], 2).samples_uv
    ep = baep.render_scenario("baep_stable", 3).sweeps_uv
    ep = ep[:, : int(seconds * baep.RATE_HZ)].reshape(ep.shape[0], -1)
    t = np.arange(int(ep.shape[1] * 16000 / baep.FS_HZ)) / 16000.0  # the model's 20 kSPS to the board's 16 kSPS
    ep = np.array([np.interp(t, np.arange(ep.shape[1]) / baep.FS_HZ, row) for row in ep])
    return {"emg": (16000, _counts(emg, 16000, 4)), "emg_cautery": (16000, _counts(cautery, 16000, 7)),
            "eeg": (1000, _counts(eg, 1000, 5)),
            "ep": (16000, _counts(ep, 16000, 6))}


def compression(counts: np.ndarray) -> dict[str, Any]:
    """The reference encoder (the board's bytes, tests/test_rice.py) over blocks of RICE_SPF x 16: block bytes
    against raw sample bytes, and the share of blocks sent raw (the fallback)."""
    from ionm.protocol import rice

    raw = coded = fallback = blocks = 0
    for s in range(0, counts.shape[0] - RICE_SPF + 1, RICE_SPF):
        flat = counts[s:s + RICE_SPF].ravel().tolist()
        block = rice.encode(flat, 16)
        raw += 3 * len(flat)
        coded += len(block)
        fallback += block[0] == rice.MODE_RAW
        blocks += 1
    return {"ratio": round(coded / raw, 4), "raw_fallback_blocks": fallback, "blocks": blocks}


RICE_FW_CODE = """
import sys, json, time, binascii, micropython, frame_writer, messages as m
blocks, reps = json.loads(sys.stdin.read())
blocks = [binascii.unhexlify(b) for b in blocks]
def timed(w):
    head = bytearray(8)
    t = 0
    for raw in blocks:
        w.raw[:] = raw
        t0 = time.ticks_us()
        micropython.heap_lock()
        i = 0
        while i < reps:
            w.build(head, 1, i)
            i += 1
        micropython.heap_unlock()
        t += time.ticks_diff(time.ticks_us(), t0)
    return t / (reps * len(blocks))
raw_w = frame_writer.FrameWriter(2, list(range(16)), %d, m.SCHEMA)
rice_w = frame_writer.FrameWriter(2, list(range(16)), %d, m.SCHEMA, None, True)
timed(raw_w)
timed(rice_w)
out = []
for _ in range(3):  # interleaved, so that a machine's load changes both alike
    out.append([timed(raw_w), timed(rice_w)])
print(json.dumps(out))
""" % (RICE_SPF, RICE_SPF)


def dma_blocks(counts: np.ndarray, n: int) -> list[str]:
    """The first n blocks of counts [samples, 16] as the ADS1299 chain clocks them out (2 chips x 27 bytes
    per sample: status 0xC00000, then 8 channels of 24-bit counts), hex."""
    out = []
    for b in range(n):
        rows = counts[b * RICE_SPF:(b + 1) * RICE_SPF] & 0xFFFFFF
        buf = bytearray()
        for row in rows:
            for chip in range(2):
                buf += b"\xc0\x00\x00"
                for v in row[8 * chip:8 * chip + 8]:
                    buf += int(v).to_bytes(3, "big")
        out.append(bytes(buf).hex())
    return out


def host_rice_decode_rate(counts: np.ndarray, blocks: int = 300) -> float:
    """Channel-samples per second through the host's data-rice decoder (ionm.board.link.decode_block, numpy
    finding the codes, one Python step per code) on blocks of EMG."""
    from ionm.board.link import decode_block
    from ionm.protocol import rice

    enc = [rice.encode(counts[s:s + RICE_SPF].ravel().tolist(), 16)
           for s in range(0, min(counts.shape[0], blocks * RICE_SPF) - RICE_SPF + 1, RICE_SPF)]
    t0 = time.perf_counter()
    n = sum(decode_block(b, 16).size for b in enc)
    return n / (time.perf_counter() - t0)


def rice_firmware_cost(counts: np.ndarray, quick: bool) -> dict[str, Any]:
    # 12 blocks of EMG (the heap holds their hex), each framed reps times in a row
    proc = mpy.run_code(RICE_FW_CODE, stdin=json.dumps([dma_blocks(counts, 12), 5 if quick else 40]).encode(),
                        timeout=600)
    if proc.returncode != 0:
        raise RuntimeError(proc.stdout.decode() + proc.stderr.decode())
    pairs = json.loads(proc.stdout.decode())
    ratios = sorted(r / w for w, r in pairs)
    raw_us, rice_us = min(p[0] for p in pairs), min(p[1] for p in pairs)
    n = 16 * RICE_SPF
    return {"raw_us_per_frame": round(raw_us, 2), "rice_us_per_frame": round(rice_us, 2),
            "raw_ns_per_sample": round(1000 * raw_us / n, 1), "rice_ns_per_sample": round(1000 * rice_us / n, 1),
            "rice_over_raw": round(ratios[len(ratios) // 2], 2)}


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
    defn = board.load()
    sigs = recorded_like(quick)
    comp = {name: dict(compression(c), rate_hz=fs) for name, (fs, c) in sigs.items()}
    cost = rice_firmware_cost(sigs["emg"][1], quick)
    # the full board continuous at the EMG ratio: frame overhead and CBOR head per frame, the blocks compressed
    frames_per_s = 16000 / RICE_SPF
    full_raw = frames_per_s * (framing.OVERHEAD + 19 + 3 * 16 * RICE_SPF)
    full_rice = frames_per_s * (framing.OVERHEAD + 19 + (1 + 3 * 16 * RICE_SPF) * comp["emg"]["ratio"])
    capacity = budget  # the board definition's sustained USB CDC budget (no USB link is measured here)
    full_cautery = frames_per_s * (framing.OVERHEAD + 19 + (1 + 3 * 16 * RICE_SPF) * comp["emg_cautery"]["ratio"])
    dec_rate = host_rice_decode_rate(sigs["emg"][1], 100 if quick else 300)
    res["rice"] = {"compression": comp, "firmware": cost, "full_board_raw_bytes_per_s": round(full_raw),
                   "full_board_rice_bytes_per_s": round(full_rice), "link_capacity_bytes_per_s": capacity,
                   "full_board_rice_load": round(full_rice / capacity, 3),
                   "fits_80pct": full_rice <= 0.8 * capacity,
                   "rice_expected_pct": defn["link"].get("rice_expected_pct"),
                   "host_rice_decode_channel_samples_per_s": round(dec_rate),
                   "full_board_rice_cautery_bytes_per_s": round(full_cautery),
                   "full_board_rice_cautery_load": round(full_cautery / capacity, 3)}
    res["summary"] = [
        "wire efficiency (payload/wire) for frames >= 1 KiB payload: min %.1f %% (goal >= 97 %%)"
        % (100 * res["min_efficiency_at_1KiB_or_more"]),
        "host decode %d channel-samples/s = %.0f x the link's maximum (%d/s) (goal >= 100 x)"
        % (rate, rate / link_max, link_max),
        "firmware frame build on MicroPython (unix port): %.1f µs for %d B of samples, %.1f µs for %d B"
        % (small["us_per_frame"], small["payload_bytes"], large["us_per_frame"], large["payload_bytes"]),
        "  cost = %.2f µs per frame + %.2f ns per payload byte (viper copy; memcpy %.3f ns/B); linear fit"
        " holds within %.0f %%" % (fixed, per_byte * 1000, copy_per_byte * 1000, 100 * worst_resid),
        "rice compression (block bytes / raw bytes, 16 ch x %d samples per block): %s"
        % (RICE_SPF, ", ".join("%s %.3f at %d SPS (%d/%d blocks raw)" % (k, v["ratio"], v["rate_hz"],
                                                                         v["raw_fallback_blocks"], v["blocks"])
                               for k, v in comp.items())),
        "rice frame build on MicroPython: %.1f µs vs raw %.1f µs per 16 x %d frame (%.1f vs %.1f ns per"
        " channel-sample): %.2f x the raw framing cost" % (cost["rice_us_per_frame"], cost["raw_us_per_frame"],
                                                            RICE_SPF, cost["rice_ns_per_sample"],
                                                            cost["raw_ns_per_sample"], cost["rice_over_raw"]),
        "16 ch x 16 kSPS continuous: raw %d B/s, rice %d B/s at the EMG ratio = %.0f %% of the link budget %d B/s"
        " (goal <= 80 %%: %s)" % (full_raw, full_rice, 100 * full_rice / capacity, capacity,
                                  "fits" if full_rice <= 0.8 * capacity else "does NOT fit"),
        "  during cautery (EMG ratio %.3f): rice %d B/s = %.0f %% of the budget"
        % (comp["emg_cautery"]["ratio"], full_cautery, 100 * full_cautery / capacity),
        "host rice decode %d channel-samples/s = %.1f x the full board's 256000/s"
        % (dec_rate, dec_rate / 256000),
    ]
    return res
