"""Fuzz the firmware as a hostile host would: the virtual board (the real firmware on MicroPython in the
board's heap, behind a pty) gets valid-CRC frames with fuzzed payloads and megabytes of random bytes,
interleaved; then it must still answer `hello`. Any firmware restart is a failure (the generator never
sends a well-formed `reset` or `fw-commit`, the two requests that restart the board on purpose).

    .venv/bin/python tools/fuzz_firmware.py --frames 100000 --random-mb 10 --seed 20261205

prints one JSON line: frames and random bytes sent, replies, restarts, the board's tracebacks (if any),
whether hello was answered, and the time taken. Exit status 0 when there were 0 restarts and a welcome.
tests/test_fuzz_firmware_mpy.py runs a small slice with the same generator and seed.
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from ionm.board import link as ln
from ionm.protocol import cbor, framing, messages as m

SEED = 20261205  # the recorded seed of the full run quoted in docs/SAFETY.md

# request types a fuzzed frame may carry as a well-formed envelope: all but the two that reset on purpose
_TYPES = [t for t in range(0, 40) if t not in (m.RESET, m.FW_COMMIT)]
_KEYS = ["versions", "schema", "rate_hz", "channels", "gain", "input", "samples_per_frame", "leadoff", "epochs",
         "pre_ms", "post_ms", "programs", "program", "kind", "output", "current_ua", "width_us", "waveform",
         "rate_mhz", "phase_us", "jitter_us", "averaged", "stop_ua", "step_ua", "count", "ipi_us", "interval_ms",
         "date", "operator", "adc_gain_ppm", "adc_offset_nv", "stim_gain_ppm", "size", "sha256", "chunk", "offset",
         "data", "outputs", "lo_ua", "hi_ua", "resolution_ua", "p2p_uv", "window_ms", "max_pulses", "level_db",
         "masking_db", "polarity", "ear", "x"]
_VALID = [
    [m.HELLO, 1, {"versions": [1], "schema": m.SCHEMA}], [m.GET_INFO, 2, {}],
    [m.CONFIGURE, 3, {"rate_hz": 2000, "channels": [0, 1, 2], "samples_per_frame": 16}],
    [m.START, 4, {}], [m.STOP, 5, {}], [m.HEARTBEAT, 0, {}],
    [m.STIM_PROGRAM, 6, {"programs": [{"kind": "pulse", "output": 0, "current_ua": 1000, "width_us": 100,
                                       "rate_mhz": 4700}, {"kind": "tcmep", "count": 3, "ipi_us": 2000}]}],
    [m.STIM_START, 7, {}], [m.STIM_STOP, 8, {}], [m.CAL_READ, 9, {}], [m.SELF_TEST, 10, {}],
    [m.CAL_WRITE, 11, {"date": "2026-12-05", "operator": "fuzz", "adc_gain_ppm": [0] * 16,
                       "adc_offset_nv": [0] * 16, "stim_gain_ppm": [0] * 4}],
    [m.IMPEDANCE, 12, {"channels": [0, 15], "outputs": [1]}],
    # the probe, train-of-four and the on-board threshold hunt (issue 20): the newest request paths
    [m.STIM_PROGRAM, 13, {"programs": [{"kind": "probe", "current_ua": 5000, "rate_mhz": 2000},
                                       {"kind": "tof", "output": 1, "current_ua": 20000, "width_us": 200},
                                       {"kind": "ramp", "output": 2, "current_ua": 1000, "stop_ua": 9000,
                                        "step_ua": 1000, "width_us": 200, "rate_mhz": 2000}]}],
    [m.HUNT, 14, {"lo_ua": 500, "hi_ua": 20000, "resolution_ua": 500, "rate_mhz": 4000, "channels": [0, 1],
                  "p2p_uv": 100, "window_ms": [5, 40], "max_pulses": 12}],
    # the earphones (issue 22): a click program beside a pulse program
    [m.STIM_PROGRAM, 15, {"programs": [{"kind": "click", "level_db": 80, "masking_db": 50, "polarity": "alternating",
                                        "ear": "R", "rate_mhz": 21100},
                                       {"kind": "pulse", "output": 0, "current_ua": 1000, "width_us": 100,
                                        "rate_mhz": 4700}]}],
]


def _value(rng: random.Random, depth: int = 0) -> Any:
    r = rng.random()
    if r < 0.3:
        return rng.choice([0, 1, -1, 23, 24, 255, 256, 65535, 65536, 2**31 - 1, 2**31, 2**32, 2**63, 2**64 - 1,
                           -2**63, -2**64, rng.randint(-10**6, 10**6), 2**200])
    if r < 0.4:
        return rng.choice([0.0, -0.0, 1.5, 1e300, float("nan"), float("inf"), float("-inf")])
    if r < 0.5:
        return rng.choice([True, False, None])
    if r < 0.62:
        return "".join(rng.choice("abc\u00e9\u4e2d\U0001f600") for _ in range(rng.choice([0, 1, 5, 40, 300])))
    if r < 0.7:
        return rng.randbytes(rng.choice([0, 1, 32, 200, 4096]))
    if depth > 4:
        return 0
    if r < 0.85:
        return [_value(rng, depth + 1) for _ in range(rng.choice([0, 1, 2, 8, 40]))]
    return {rng.choice(_KEYS): _value(rng, depth + 1) for _ in range(rng.choice([0, 1, 3, 10]))}


def _cbor_hostile(rng: random.Random) -> bytes:
    """Well-formed-looking heads that declare absurd sizes, deep nesting, indefinite items never closed."""
    choice = rng.randrange(6)
    if choice == 0:  # array/map/string of 2**32 or 2**64 items
        return bytes([rng.choice([0x9A, 0x9B, 0xBA, 0xBB, 0x5A, 0x5B, 0x7A, 0x7B])]) + rng.randbytes(8)
    if choice == 1:  # deep nesting
        return b"\x81" * rng.choice([20, 64, 200, 2000]) + b"\x00"
    if choice == 2:  # indefinite, unterminated
        return b"\x83\x01\x01\xbf" + b"\x9f" * rng.randrange(1, 300)
    if choice == 3:  # a bignum of thousands of bits
        return b"\x83\x05\x01\xa1\x67rate_hz\xc2\x59" + (4000).to_bytes(2, "big") + rng.randbytes(4000)
    if choice == 4:  # many small items: a big live structure from a small payload
        n = rng.choice([1000, 3000, 8000])
        return b"\x83\x14\x01\xa1\x68programs\x99" + n.to_bytes(2, "big") + b"\xa0" * n
    return b"\x83" + bytes([rng.randrange(256)]) + b"\x19\xff\xff\xa1\x64kind" + b"\x7f" + b"\x61a" * 2000 + b"\xff"


def fuzz_payload(rng: random.Random) -> bytes:
    """One payload, any of: random bytes (up to the maximum payload), a mutated valid request, a random
    request-shaped message, a hostile CBOR head. Never a well-formed reset or fw-commit."""
    while True:
        r = rng.random()
        if r < 0.2:
            n = rng.choice([0, 1, 2, 3, rng.randrange(64), rng.randrange(1024), rng.randrange(framing.MAX_PAYLOAD + 1),
                            framing.MAX_PAYLOAD])
            payload = rng.randbytes(n)
        elif r < 0.55:
            b = bytearray(cbor.dumps(rng.choice(_VALID)))
            for _ in range(rng.randrange(1, 4)):
                i = rng.randrange(len(b))
                op = rng.randrange(4)
                if op == 0:
                    b[i] ^= 1 << rng.randrange(8)
                elif op == 1:
                    b[i] = rng.choice([0x00, 0x17, 0x18, 0x1B, 0x5B, 0x7B, 0x9B, 0xBB, 0x9F, 0xBF, 0xFF, 0xF9, 0xFB])
                elif op == 2:
                    del b[i]
                else:
                    b[i:i] = rng.randbytes(rng.randrange(1, 9))
                if not b:
                    break
            payload = bytes(b)
        elif r < 0.85:
            msg = [rng.choice(_TYPES), _value(rng) if rng.random() < 0.2 else rng.randrange(65536),
                   _value(rng) if rng.random() < 0.15 else {rng.choice(_KEYS): _value(rng)
                                                             for _ in range(rng.choice([0, 1, 2, 4, 12]))}]
            try:
                payload = cbor.dumps(msg)
            except Exception:  # NaN keys and the like: try again
                continue
        else:
            payload = _cbor_hostile(rng)
        if len(payload) > framing.MAX_PAYLOAD or _resets(payload):
            continue
        return payload


def _resets(payload: bytes) -> bool:
    try:
        msg = cbor.loads(payload)
    except Exception:
        return False
    return isinstance(msg, list) and len(msg) == 3 and msg[0] in (m.RESET, m.FW_COMMIT)


class _Tap:
    """The serial port, recording what MicroPython prints on it when the firmware dies: the unix port writes an
    uncaught exception's traceback to stdout, which is the link."""

    def __init__(self, port: Any) -> None:
        self.port = port
        self.tail = b""
        self.tracebacks: list[str] = []

    def read(self, n: int) -> bytes:
        data = self.port.read(n)
        seen = self.tail + data
        at = seen.find(b"Traceback (most recent call last)")
        while at >= 0 and len(self.tracebacks) < 20:
            self.tracebacks.append(seen[at:at + 400].split(b"\xa5\x5a")[0].decode("ascii", "replace"))
            at = seen.find(b"Traceback (most recent call last)", at + 1)
        self.tail = data[-400:]
        return data

    def __getattr__(self, name: str) -> Any:
        return getattr(self.port, name)


def run(frames: int, random_bytes: int, seed: int = SEED, log: Any = None) -> dict[str, Any]:
    """Drive a fresh virtual board; returns the summary (see the module docstring)."""
    from ionm.board.virtual import VirtualBoard

    rng = random.Random(seed)
    tmp = Path(tempfile.mkdtemp(prefix="ionm-fuzz-"))
    err_path = tmp / "board.stderr"
    boots: list[dict] = []
    t0 = time.monotonic()
    with open(err_path, "w") as err, VirtualBoard(bench=True, stderr=err) as vb:
        tap = _Tap(ln.open_port(vb.device))
        link = ln.BoardLink(tap, on_event=lambda e: boots.append(e) if e.get("kind") == "boot"
                            else None, heartbeat_s=None)
        replies = [0]
        inner = link._dispatch

        def count(payload: bytes) -> None:  # every reply (ack, error, welcome, info) the board sent
            try:
                if cbor.loads(payload)[0] in (m.ACK, m.ERROR, m.WELCOME, m.INFO):
                    replies[0] += 1
            except Exception:
                pass
            inner(payload)

        link._dispatch = count  # type: ignore[method-assign]
        try:
            ln.connect(link, timeout=10)
            boots_at_start = len(boots)
            resets_at_start = vb.resets
            sent_frames = sent_random = 0
            seq = 0
            while sent_frames < frames or sent_random < random_bytes:
                # interleave: a frame, or a chunk of random bytes, in proportion to what is left of each
                left_f, left_r = frames - sent_frames, random_bytes - sent_random
                if left_r > 0 and (left_f <= 0 or rng.random() < left_r / (left_r + left_f * 400)):
                    chunk = rng.randbytes(min(left_r, rng.randrange(1, 4097)))
                    sent_random += len(chunk)
                else:
                    if rng.random() > 0.02:  # sometimes a repeated or jumping SEQ
                        seq = (seq + 1) & 0xFFFF
                    chunk = framing.encode(fuzz_payload(rng), seq, m.SCHEMA)
                    sent_frames += 1
                with link._tx_lock:
                    link.transport.write(chunk)
                if log is not None and sent_frames % 10000 == 0 and chunk[:2] == framing.SYNC:
                    print("%d frames, %d random bytes, %d replies, %d restarts, %.0f s" % (
                        sent_frames, sent_random, replies[0], vb.resets - resets_at_start, time.monotonic() - t0),
                        file=log, flush=True)
            # flush whatever half frame the random bytes left pending, then ask
            with link._tx_lock:
                link.transport.write(bytes(framing.MAX_PAYLOAD + framing.OVERHEAD))
            time.sleep(0.5)
            welcome: dict[str, Any] | None = None
            try:
                welcome = ln.connect(link, timeout=10)
            except (ln.LinkError, ln.BoardError) as exc:
                print("no welcome: %s" % exc, file=sys.stderr)
            result = {
                "seed": seed, "frames": sent_frames, "random_bytes": sent_random, "replies": replies[0],
                "restarts": vb.resets - resets_at_start, "boot_events": len(boots) - boots_at_start,
                "hello_answered": bool(welcome and welcome.get("schema") == m.SCHEMA),
                "host_frames_rejected": link.stats.frames_rejected, "seconds": round(time.monotonic() - t0, 1),
            }
        finally:
            link.close()
    result["tracebacks"] = tap.tracebacks
    return result


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--frames", type=int, default=100000)
    ap.add_argument("--random-mb", type=float, default=10.0)
    ap.add_argument("--seed", type=int, default=SEED)
    args = ap.parse_args()
    out = run(args.frames, int(args.random_mb * 1e6), args.seed, log=sys.stderr)
    print(json.dumps(out))
    return 0 if out["restarts"] == 0 and out["boot_events"] == 0 and out["hello_answered"] else 1


if __name__ == "__main__":
    sys.exit(main())
