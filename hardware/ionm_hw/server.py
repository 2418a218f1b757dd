"""The hardware-model process: the analogue world behind the firmware's virtual board-support module.

One client (the firmware on MicroPython, firmware/bsp_virtual.py) talks to it over a Unix socket with
small fixed binary records; everything is big-endian. Requests start with one opcode byte:

  b"H"                          -> u8 len, serial (ASCII)                      board identity
  b"S" u8 cs_mask, u16 n, n bytes -> n bytes                                   SPI transaction
  b"G" u8 pin, u8 level         -> (none)    pin: 0 START, 1 RESET, 2 PWDN     GPIO to the ADC
  b"P" u32 index, i8 output, u32 current_ua, u16 width_us, u8 flags -> (none)  arm one pulse (PIO FIFO)
  b"T" u32 index, u8 count, u16 ipi_us, u8 first, u8 last      -> (none)      arm triggers first..last-1 of a
                                                                               TcMEP train (first at index)
  b"C" u32 index, u8 level_db, u8 rarefaction, u8 right_ear -> (none)        arm one click on the earphones
  b"M" u8 right_ear, u8 level_db -> (none)                                     masking noise on that ear (0: off)
  b"X"                          -> u16 cancelled                               cancel everything armed (and the
                                                                               masking)
  b"D" u16 n                    -> block                                       DMA: next n samples
  b"Z" u8 output, u32 current_ua, u16 width_us -> u32 measured_ua, u16 voltage_10mv, u8 flags
                                                                               a sub-threshold impedance probe
                                                                               pulse, delivered now

A block is: u32 first_index, u16 n_latched, u16 late (how many samples the clock was past the block's last
sample when it was handed over: nonzero when the firmware is behind, as a DMA ring would hold), then
n * 27 * chips bytes (the RDATAC stream, exactly as DMA would store it), then n_latched latch records of 14 bytes
(u32 index, i8 output, u32 measured_ua, u16 width_us, u8 flags: bit0 biphasic, bit1 compliance-limited,
u16 voltage_10mv: the compliance-voltage readback in units of 10 mV) for the pulses the output stage
delivered inside the block: the PIO's latched sample indices and the two readbacks. A click's latch (output
stimulator.auditory.output, -2) carries its level in dB nHL in the measured field, and in its flags bit0 the
polarity (rarefaction) and bit1 the ear (right).

Electrode impedances. Stimulating electrodes: the patient's (drifting, scripted by stim_electrode events),
1 kOhm on the bench, or a fault `impedance:OUTPUT:OHMS[:FROM_S]` (from model time FROM_S on). Recording
electrodes (what the ADS1299's AC lead-off excitation sees): the patient's per electrode (open while an
electrode is off), 100 Ohm on the bench (the divider's source resistance on the P side), or a fault
`lead:CH:OHMS` (channel CH's P electrode).

Time is the ADC's sample clock. In real-time mode a block is handed over when the wall clock reaches its
last sample; a client more than OVERRUN_S late loses the samples in between (first_index jumps), as a DMA
ring would. In fast mode blocks are produced as soon as they are asked for.
"""

from __future__ import annotations

import argparse
import os
import signal
import socket
import struct
import sys
import time
from typing import Any

import numpy as np

from ionm import board as board_def
from ionm_hw.ads1299 import ADS1299Chain
from ionm_hw.generator import divider_ratio
from ionm_hw.stimulator import OutputStage

OVERRUN_S = 0.5  # DMA ring depth in seconds of samples: late by more than this loses data
PIN_NAMES = {0: "start", 1: "reset", 2: "pwdn"}
LATCH = struct.Struct(">IbIHBH")
BLOCK_HEAD = struct.Struct(">IHH")
PULSE_REQ = struct.Struct(">IbIHB")
TRAIN_REQ = struct.Struct(">IBHBB")
CLICK_REQ = struct.Struct(">IBBB")
MASK_REQ = struct.Struct(">BB")
PROBE_REQ = struct.Struct(">bIH")
PROBE_REPLY = struct.Struct(">IHB")
BENCH_STIM_OHM = 1000.0  # bench load resistor on every stimulator output
BENCH_LEAD_OHM = 100.0  # the bench divider's source resistance (99.9 kOhm || 100 Ohm) on each P input
TRAIN_PULSE_WIDTH_US = 50


class HardwareModel:
    def __init__(self, *, serial: str, scenario: str | None, seed: int, realtime: bool, inputs: str,
                 generator: Any = None, pulse_log: str | None = None, faults: list[str] | None = None) -> None:
        self.defn = board_def.load()
        self.serial = serial
        self.chain = ADS1299Chain(self.defn["adc"]["chips"], serial, self.defn["adc"]["vref_v"], seed)
        self.n_channels = board_def.n_channels(self.defn)
        self.stim = OutputStage(self.defn, serial, open(pulse_log, "a") if pulse_log else None)
        self.realtime = realtime
        self.inputs = inputs
        self.generator = generator
        self.scenario_name = scenario
        self.seed = seed
        self.patients: dict[int, Any] = {}
        self.armed: list[tuple[float, int, float, int, bool]] = []  # (index, output, mA, width, biphasic)
        # a click: (index, auditory output, level dB nHL, right ear (0/1), rarefaction)
        self.masking: tuple[str, int] | None = None  # the ear masked and its level (dB), while a click program runs
        self.next_index = 0  # acquisition sample index of the next conversion
        self.t_offset_s = 0.0  # model time at index 0 of this acquisition run
        self.t_model_s = 0.0
        self.wall0 = 0.0
        self.was_running = False
        self.divider = divider_ratio(self.defn)
        # stimulator output -> (ohms, from model time s): a stimulating electrode fault
        self.impedance_override: dict[int, tuple[float, float]] = {}
        self.lead_override: dict[int, float] = {}  # recording channel -> ohms of its P electrode
        for fault in faults or []:
            kind, _, rest = fault.partition(":")
            where, _, value = rest.partition(":")
            if kind == "impedance":
                ohms, _, since = value.partition(":")
                self.impedance_override[int(where)] = (float(ohms), float(since or 0.0))
            elif kind == "lead":
                self.lead_override[int(where)] = float(value)
            elif kind in ("dead", "gain"):
                self.chain.faults[int(where)] = "dead" if kind == "dead" else "gain:%s" % value
            else:
                raise ValueError("unknown fault %r: dead:CH, gain:CH:FRACTION, impedance:OUTPUT:OHMS[:FROM_S] or"
                                 " lead:CH:OHMS" % fault)

    # ---- the analogue inputs --------------------------------------------------------------------
    def _patient(self, fs: int) -> Any:
        if fs not in self.patients:
            from ionm_hw import patient

            scen = patient.load_scenario(self.scenario_name or "stable")
            self.patients[fs] = patient.VirtualPatient(scen, self.seed, float(fs), self.n_channels)
        return self.patients[fs]

    def _render(self, first: int, n: int, fs: int, pulses: list[Any]) -> tuple[np.ndarray, np.ndarray | None]:
        t0 = self.t_offset_s + first / fs
        if self.inputs == "patient":
            pat = self._patient(fs)
            base = int(round(self.t_offset_s * fs))  # the patient's clock runs across acquisition runs
            from ionm_hw.patient import Pulse

            shifted = [Pulse(p.index + base, p.output, p.delivered_ma, p.width_us, p.biphasic, p.level_db,
                             p.rarefaction, p.ear) for p in pulses]
            volts = pat.render(base + first, n, shifted)
            self._set_leads(pat.lead_impedance_ohm(base + first))
            return volts, pat.leadoff(base + first, n)
        leads = np.zeros((self.n_channels, 2))
        leads[self.defn["bench"]["generator_channels"], 0] = BENCH_LEAD_OHM
        self._set_leads(leads)
        volts = np.zeros((n, self.n_channels))
        if self.generator is not None:
            sig = self.generator.render(t0, n, float(fs)) * self.divider
            volts[:, self.defn["bench"]["generator_channels"]] += sig[:, None]
        return volts, None

    def _set_leads(self, leads: np.ndarray) -> None:
        """The recording electrodes' impedances (channel, P/N) that the ADC's lead-off excitation sees."""
        for ch, ohms in self.lead_override.items():
            leads[ch, 0] = ohms
        self.chain.lead_ohm = leads

    def _impedance(self, output: int, index: int, fs: int) -> float:
        fault = self.impedance_override.get(output)
        if fault is not None and self.t_offset_s + index / fs >= fault[1]:
            return fault[0]
        if self.inputs == "patient":
            return float(self._patient(fs).stim_impedance_ohm(output, index))
        return BENCH_STIM_OHM

    def probe(self, output: int, current_ua: int, width_us: int) -> bytes:
        """A sub-threshold test pulse on `output`, now (the next conversion's index): the readbacks."""
        fs = self.chain.rate_hz
        idx = self.next_index
        if not 0 <= output < self.stim.outputs:
            return PROBE_REPLY.pack(0, 0, 0)
        z = self._impedance(output, idx, fs)
        p = self.stim.deliver(idx, self.t_model_s, output, current_ua / 1000.0, width_us, False, z, probe=True)
        return PROBE_REPLY.pack(int(round(p.measured_ma * 1000)), min(int(round(p.voltage_v * 100)), 0xFFFF),
                                2 if p.compliance_limited else 0)

    # ---- requests ---------------------------------------------------------------------------------
    def block(self, n: int) -> bytes:
        fs = self.chain.rate_hz
        if not self.chain.running:
            self.was_running = False
            time.sleep(n / fs if self.realtime else 0)
            return BLOCK_HEAD.pack(self.next_index & 0xFFFFFFFF, 0, 0) + bytes(27 * len(self.chain.chips) * n)
        if not self.was_running:  # conversions (re)started: index 0, new wall-clock origin
            self.was_running = True
            self.t_offset_s = self.t_model_s
            self.next_index = 0
            self.wall0 = time.monotonic()
        late_samples = 0
        if self.realtime:
            due = self.wall0 + (self.next_index + n) / fs
            late = time.monotonic() - due
            if late > OVERRUN_S:  # the DMA ring overflowed: those samples are gone
                lost = int(late * fs) // n * n
                self.next_index += lost
                self._drop_armed_before(self.next_index)
                due += lost / fs
            wait = due - time.monotonic()
            if wait > 0:
                time.sleep(wait)
            else:
                late_samples = min(int(-wait * fs), 0xFFFF)
        first = self.next_index
        pulses = self._deliver_armed(first, n, fs)
        volts, leadoff = self._render(first, n, fs, pulses)
        raw = self.chain.convert(volts, leadoff)
        self.next_index += n
        self.t_model_s = self.t_offset_s + self.next_index / fs
        latches = b"".join(_latch(p, self.stim.auditory_output) for p in pulses)
        return BLOCK_HEAD.pack(first & 0xFFFFFFFF, len(pulses), late_samples) + raw + latches

    def _deliver_armed(self, first: int, n: int, fs: int) -> list[Any]:
        due = [a for a in self.armed if a[0] < first + n]
        if not due:
            return []
        self.armed = [a for a in self.armed if a[0] >= first + n]
        out = []
        for idx_f, output, ma, width, biphasic in sorted(due):
            idx = int(idx_f)
            if idx < first:  # armed too late for this sample: the PIO would have missed it
                continue
            t = self.t_offset_s + idx_f / fs
            if output == self.stim.auditory_output:  # (ma: the level in dB nHL; width: the right ear)
                out.append(self.stim.click(idx, t, ma, biphasic, "R" if width else "L"))
                continue
            pulse = self.stim.deliver(idx, t, output, ma, width, biphasic, self._impedance(output, idx, fs))
            if output < 0 and self.generator is not None:
                self.generator.trigger(t)
            out.append(pulse)
        return out

    def _drop_armed_before(self, index: int) -> None:
        self.armed = [a for a in self.armed if a[0] >= index]

    def arm_pulse(self, index: int, output: int, current_ua: int, width_us: int, flags: int) -> None:
        self.armed.append((float(index), output, current_ua / 1000.0, width_us, bool(flags & 1)))

    def arm_train(self, index: int, count: int, ipi_us: int, first: int, last: int) -> None:
        fs = self.chain.rate_hz
        for k in range(first, min(last, count)):  # the PIO times the inter-pulse interval in µs from the first edge
            self.armed.append((index + k * ipi_us * 1e-6 * fs, -1, 0.0, TRAIN_PULSE_WIDTH_US, False))

    def arm_click(self, index: int, level_db: int, rarefaction: int, right_ear: int) -> None:
        self.armed.append((float(index), self.stim.auditory_output, float(level_db), int(right_ear), bool(rarefaction)))

    def set_masking(self, right_ear: int, level_db: int) -> None:
        self.masking = ("R" if right_ear else "L", int(level_db)) if level_db else None

    def cancel(self) -> int:
        n = len(self.armed)
        self.armed = []
        self.masking = None  # the masking noise stops with the clicks
        return n


def _latch(p: Any, auditory_output: int) -> bytes:
    """One latch record (the module docstring): a click's carries its level, polarity and ear."""
    if p.output == auditory_output:
        return LATCH.pack(p.index & 0xFFFFFFFF, p.output, int(round(p.level_db)), p.width_us,
                          (1 if p.rarefaction else 0) | (2 if p.ear == "R" else 0), 0)
    return LATCH.pack(p.index & 0xFFFFFFFF, p.output, int(round(p.measured_ma * 1000)), p.width_us,
                      (1 if p.biphasic else 0) | (2 if p.compliance_limited else 0),
                      min(int(round(p.voltage_v * 100)), 0xFFFF))


def _recv_exact(conn: socket.socket, n: int) -> bytes:
    buf = bytearray()
    while len(buf) < n:
        chunk = conn.recv(n - len(buf))
        if not chunk:
            raise ConnectionError("firmware closed the connection")
        buf.extend(chunk)
    return bytes(buf)


def serve_client(model: HardwareModel, conn: socket.socket) -> None:
    while True:
        op = conn.recv(1)
        if not op:
            return
        if op == b"D":
            (n,) = struct.unpack(">H", _recv_exact(conn, 2))
            conn.sendall(model.block(n))
        elif op == b"S":
            cs, n = struct.unpack(">BH", _recv_exact(conn, 3))
            conn.sendall(model.chain.spi(cs, _recv_exact(conn, n)))
        elif op == b"G":
            pin, level = _recv_exact(conn, 2)
            model.chain.set_pin(PIN_NAMES.get(pin, "?"), level)
            if PIN_NAMES.get(pin) == "start" and level:
                model.was_running = False  # conversions restart: index 0, a new wall-clock origin
        elif op == b"P":
            model.arm_pulse(*PULSE_REQ.unpack(_recv_exact(conn, PULSE_REQ.size)))
        elif op == b"T":
            model.arm_train(*TRAIN_REQ.unpack(_recv_exact(conn, TRAIN_REQ.size)))
        elif op == b"C":
            model.arm_click(*CLICK_REQ.unpack(_recv_exact(conn, CLICK_REQ.size)))
        elif op == b"M":
            model.set_masking(*MASK_REQ.unpack(_recv_exact(conn, MASK_REQ.size)))
        elif op == b"Z":
            conn.sendall(model.probe(*PROBE_REQ.unpack(_recv_exact(conn, PROBE_REQ.size))))
        elif op == b"X":
            conn.sendall(struct.pack(">H", model.cancel()))
        elif op == b"H":
            s = model.serial.encode()
            conn.sendall(bytes([len(s)]) + s)
        else:
            raise ValueError("unknown request %r from the firmware" % op)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description="IONM hardware model (the virtual board's analogue world)")
    ap.add_argument("--socket", required=True, help="Unix socket path to listen on")
    ap.add_argument("--serial", default="SIM-0001")
    ap.add_argument("--scenario", default="stable")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--fast", action="store_true", help="virtual time as fast as possible (default: real time)")
    ap.add_argument("--inputs", choices=("patient", "bench"), default="patient")
    ap.add_argument("--generator", action="store_true", help="start the SCPI signal generator")
    ap.add_argument("--pulse-log", help="append every delivered pulse as a JSON line here")
    ap.add_argument("--fault", action="append", default=[],
                    help="dead:CH, gain:CH:FRACTION, impedance:OUTPUT:OHMS[:FROM_S] (a stimulating electrode,"
                         " from model time FROM_S) or lead:CH:OHMS (a recording electrode)")
    args = ap.parse_args(argv)

    gen = server = None
    if args.generator:
        from ionm_hw.generator import SignalGenerator
        from ionm_hw.scpi import ScpiServer

        gen = SignalGenerator()
        server = ScpiServer(gen)
        server.start()
    model = HardwareModel(serial=args.serial, scenario=args.scenario, seed=args.seed, realtime=not args.fast,
                          inputs=args.inputs, generator=gen, pulse_log=args.pulse_log, faults=args.fault)
    if os.path.exists(args.socket):
        os.unlink(args.socket)
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(args.socket)
    listener.listen(1)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    print("READY", server.resource if server else "", flush=True)
    try:
        while True:  # the firmware reconnects after a (simulated) board reset; the world persists
            conn, _ = listener.accept()
            with conn:
                try:
                    serve_client(model, conn)
                except (ConnectionError, BrokenPipeError):
                    pass
            model.cancel()  # a reset board has nothing armed
    finally:
        listener.close()
        if server is not None:
            server.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
