"""Fuzz the firmware's whole request path on MicroPython: random bytes and mutated valid frames go through
Firmware.service_host (frame decoder, CBOR, envelope checks, handlers, safety supervisor). No exception may
escape, nothing may hang, and the heap must stay bounded."""

from __future__ import annotations

from mpyrun import run_json

FUZZ = """
import gc, random, time, sys
from __main__ import _IN, emit, defn, arena
import app, cbor, framing, messages as m

class Pin:
    def __init__(self):
        self.v = 1
    def value(self, v=None):
        if v is None:
            return self.v
        self.v = v

class Spi:  # a register file per chip, enough for the ADS1299 driver's power-up and configuration
    def __init__(self, cs):
        self.cs = cs
        self.regs = [bytearray(24) for _ in cs]
        for r in self.regs:
            r[0] = 0x3E
    def write_readinto(self, tx, rx):
        chips = [i for i in range(len(self.cs)) if self.cs[i].v == 0]
        op = tx[0]
        if op & 0xE0 in (0x20, 0x40) and len(tx) > 2:
            addr, n = op & 0x1F, tx[1] + 1
            for k in range(n):
                if addr + k < 24:
                    if op & 0xE0 == 0x40:
                        for c in chips:
                            self.regs[c][addr + k] = tx[2 + k]
                    elif chips:
                        rx[2 + k] = self.regs[chips[0]][addr + k]

class Board:
    def __init__(self, defn):
        self.adc_cs = [Pin(), Pin()]
        self.adc_spi = Spi(self.adc_cs)
        self.adc_start = Pin(); self.adc_reset = Pin(); self.adc_pwdn = Pin()
        self.inbox = bytearray()
        self.sent = 0
        self.resets = 0
        self.head = bytearray(8)
        self.latches = bytearray(12 * 16)
    def serial(self): return "FUZZ"
    def sleep_us(self, us): pass
    def ticks_ms(self): return time.ticks_ms()
    def ticks_diff(self, a, b): return time.ticks_diff(a, b)
    def feed_watchdog(self): pass
    def host_wait(self, ms): return bool(self.inbox)
    def host_read(self, buf, off, n):
        n = min(n, len(self.inbox))
        for i in range(n):
            buf[off + i] = self.inbox[i]
        self.inbox = self.inbox[n:]
        return n
    def host_write(self, buf, off, n): self.sent += n
    def state_dir(self): return _IN["state_dir"]
    def reset(self): self.resets += 1
    def start_stream(self, raw, rate): pass
    def stop_stream(self): pass
    def cancel_stimulation(self): return 0

class Mod:
    NAME = "fuzz"
    Board = Board

fw = app.Firmware(Mod, None, False, defn, arena)
bsp = fw.bsp
random.seed(_IN["seed"])
valid = [
    [m.HELLO, 1, {"versions": [1]}], [m.GET_INFO, 2, {}],
    [m.CONFIGURE, 3, {"rate_hz": 2000, "channels": [0, 1, 2], "samples_per_frame": 16}],
    [m.STIM_PROGRAM, 4, {"programs": [{"kind": "pulse", "output": 0, "current_ua": 1000, "width_us": 100,
                                       "rate_mhz": 4700}]}],
    [m.STIM_STOP, 5, {}], [m.HEARTBEAT, 6, {}], [m.STOP, 7, {}], [m.START, 8, {}],
]
frames = [framing.encode(cbor.dumps(v), i, m.SCHEMA) for i, v in enumerate(valid)]
gc.collect()
base = gc.mem_alloc()
peak = 0
escaped = 0
t0 = time.ticks_ms()
for it in range(_IN["iterations"]):
    r = random.getrandbits(3)
    if r < 3:
        chunk = bytes(random.getrandbits(8) for _ in range(random.getrandbits(7)))
    else:
        f = bytearray(frames[random.getrandbits(3)])
        for _ in range(random.getrandbits(2)):
            i = random.getrandbits(10) % len(f)
            kind = random.getrandbits(2)
            if kind == 0:
                f[i] ^= 1 << random.getrandbits(3)
            elif kind == 1:
                f = f[:i] + f[i + 1:]
            elif kind == 2:
                f = f[:i] + f[i:i + 1] + f[i:]
            if not f:
                break
        chunk = bytes(f)
    bsp.inbox.extend(chunk)
    try:
        fw.service_host()
        if fw.acq is not None and fw.acq.running:
            fw.acq.running = False  # no DMA here; the request path is what is fuzzed
    except Exception as e:
        escaped += 1
        emit({"escaped": repr(e)})
    if it % 50 == 0:
        gc.collect()
        peak = max(peak, gc.mem_alloc() - base)
emit({"escaped": escaped, "peak_bytes": peak, "sent": bsp.sent, "ms": time.ticks_diff(time.ticks_ms(), t0),
      "bad_messages": fw.link.bad_messages, "rejected": fw.link.reader.rejected,
      "frames": fw.link.reader.frames})
"""


# The board boots as main.py does (the block arena, then the firmware's modules); this harness is loaded after
# it as a module of its own, so that its code does not take the heap the firmware boots in, and compiled by mpy-cross
# beforehand (as the board's own modules are), so that compiling it does not either: compiling it takes a few kB of
# contiguous heap, which the firmware, grown by the earphones' click programs, no longer leaves.
BOOT = """
import gc, sys
import boardcfg
defn = boardcfg.load()
gc.collect()
arena = bytearray(defn["mcu"]["block_arena_bytes"])
import app
sys.path.append(_IN["harness_dir"])
import fuzzharness
"""


def _compiled_harness(d) -> None:
    """fuzzharness.mpy in d: the harness compiled by mpy-cross (bytecode, for any port)."""
    import subprocess

    from ionm.board.firmware import mpy_cross_exe

    (d / "fuzzharness.py").write_text(FUZZ)
    subprocess.run([mpy_cross_exe(), "-o", str(d / "fuzzharness.mpy"), str(d / "fuzzharness.py")], check=True)
    (d / "fuzzharness.py").unlink()


def test_random_and_mutated_frames_never_escape_hang_or_grow_the_heap(tmp_path):
    _compiled_harness(tmp_path)
    out = run_json(BOOT, {"seed": 1234, "iterations": 3000, "state_dir": str(tmp_path),
                          "harness_dir": str(tmp_path)}, timeout=120)
    summary = out[-1]
    assert summary["escaped"] == 0, out[:-1][:5]
    assert summary["frames"] > 100  # mutated-but-valid frames got through and were handled
    assert sum(summary["rejected"]) > 100  # and damaged ones were rejected
    assert summary["sent"] > 0  # replies and errors went out
    assert summary["peak_bytes"] < 40 * 1024, summary  # bounded: no growth with the amount of input


def _fuzz_tool():
    import importlib.util

    from conftest import ROOT

    spec = importlib.util.spec_from_file_location("fuzz_firmware", ROOT / "tools" / "fuzz_firmware.py")
    assert spec and spec.loader
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_a_seeded_slice_of_the_hostile_host_fuzz_never_restarts_the_virtual_board():
    """A slice of tools/fuzz_firmware.py (the full run is 100 000 valid-CRC frames and 10 MB of random bytes,
    docs/SAFETY.md): valid-CRC frames with fuzzed payloads of up to the maximum length and random bytes, through
    the pty into the firmware on MicroPython in the board's heap. No restart, every frame answered, and `hello`
    still welcomed afterwards."""
    fuzz = _fuzz_tool()
    out = fuzz.run(frames=1500, random_bytes=150_000, seed=fuzz.SEED)
    assert out["restarts"] == 0 and out["boot_events"] == 0, out["tracebacks"]
    assert out["hello_answered"], out
    # nearly every fuzzed frame is a request the board answers (all but well-formed heartbeats, and frames a
    # random false SYNC swallowed); the connect() at the start and the end adds its own replies
    assert out["replies"] >= 0.9 * out["frames"], out
