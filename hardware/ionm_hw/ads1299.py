"""ADS1299 daisy chain at register level (TI SBAS499C), as the firmware's SPI bus sees it.

What is modelled: the register map with datasheet reset values, the SPI opcodes (WAKEUP, STANDBY, RESET,
START, STOP, RDATAC, SDATAC, RDATA, RREG, WREG), RDATAC mode (registers are not accessible until SDATAC,
as on the chip), per-channel gain and input mux (normal, shorted, test signal), the internal test signal,
DC lead-off status in LOFF_STATP/N and in the 24-bit status word, AC lead-off excitation (LOFF.FLEAD_OFF =
fDR/4: the ILEAD_OFF current source on the P inputs and sink on the N inputs of LOFF_SENSP/N, reversed by
LOFF_FLIP, alternating every two conversions, so that a channel reads a square wave of ILEAD_OFF times its
electrodes' impedances; electrode impedances come from lead_ohm), daisy-chain output order, 24-bit
two's-complement codes, input-referred noise from datasheet Table 1, and per-unit gain and offset errors
derived from the board serial (so that calibration has something real to correct).

Not modelled: the sinc decimation filter's frequency response (samples are instantaneous), the bias
drive loop, the temperature and supply channels (they read zero volts), single-shot mode.
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass, field

import numpy as np

# Register addresses (datasheet §9.6).
ID, CONFIG1, CONFIG2, CONFIG3, LOFF = 0x00, 0x01, 0x02, 0x03, 0x04
CH1SET = 0x05
BIAS_SENSP, BIAS_SENSN, LOFF_SENSP, LOFF_SENSN, LOFF_FLIP = 0x0D, 0x0E, 0x0F, 0x10, 0x11
LOFF_STATP, LOFF_STATN, GPIO, MISC1, MISC2, CONFIG4 = 0x12, 0x13, 0x14, 0x15, 0x16, 0x17
N_REGS = 0x18
READ_ONLY = {ID, LOFF_STATP, LOFF_STATN}

RESET_VALUES = bytes([
    0x3E,  # ID: ADS1299 (8 channels), REV_ID
    0x96, 0xC0, 0x60, 0x00,  # CONFIG1 (250 SPS, daisy mode), CONFIG2, CONFIG3, LOFF
    0x61, 0x61, 0x61, 0x61, 0x61, 0x61, 0x61, 0x61,  # CHnSET: gain 24, input shorted
    0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00,  # BIAS_SENSP/N, LOFF_SENSP/N, LOFF_FLIP, LOFF_STATP/N
    0x0F, 0x00, 0x00, 0x00,  # GPIO, MISC1, MISC2, CONFIG4
])

# SPI opcodes (datasheet Table 10).
WAKEUP, STANDBY, RESET, START, STOP = 0x02, 0x04, 0x06, 0x08, 0x0A
RDATAC, SDATAC, RDATA = 0x10, 0x11, 0x12
RREG, WREG = 0x20, 0x40

DATA_RATES_HZ = (16000, 8000, 4000, 2000, 1000, 500, 250)  # CONFIG1.DR = 0..6
ILEAD_OFF_A = (6e-9, 24e-9, 6e-6, 24e-6)  # LOFF.ILEAD_OFF[1:0] (bits 3:2)
FLEAD_OFF_AC_FDR4 = 3  # LOFF.FLEAD_OFF[1:0] (bits 1:0): AC lead-off excitation at fDR/4
GAINS = (1, 2, 4, 6, 8, 12, 24)  # CHnSET.GAIN = 0..6
MUX_NORMAL, MUX_SHORTED, MUX_TEST = 0, 1, 5
F_CLK_HZ = 2.048e6
FULL_SCALE_CODE = (1 << 23) - 1

# Input-referred noise, µVrms, gain 1, 5 V supply, 4.5 V reference (datasheet Table 1), by data rate.
_NOISE_G1_UVRMS = {16000: 21.70, 8000: 6.93, 4000: 4.33, 2000: 3.06, 1000: 2.17, 500: 1.53, 250: 1.08}
# The PGA's own floor dominates at high gain: 0.14 µVrms at 250 SPS, gain 24 (datasheet headline
# "1 µVpp in 70 Hz"), growing with the square root of the bandwidth.
_PGA_FLOOR_UVRMS_250 = 0.133


def noise_uvrms(gain: int, rate_hz: int) -> float:
    floor = _PGA_FLOOR_UVRMS_250 * (rate_hz / 250.0) ** 0.5
    return float(np.hypot(_NOISE_G1_UVRMS[rate_hz] / gain, floor))


@dataclass
class UnitErrors:
    """Per-unit analogue errors of one chip, fixed for a board serial (datasheet: gain error ±0.5 % max
    at gain 24 is typical of a good unit; offsets tens of µV)."""

    gain_error: np.ndarray  # fractional, per channel
    offset_v: np.ndarray  # input-referred, per channel

    @staticmethod
    def for_serial(serial: str, chip: int, n: int = 8) -> UnitErrors:
        rng = np.random.default_rng(zlib.crc32(("%s/ads%d" % (serial, chip)).encode()))
        return UnitErrors(gain_error=rng.normal(0.0, 0.002, n), offset_v=rng.normal(0.0, 15e-6, n))


@dataclass
class Chip:
    """One ADS1299: its registers and its unit errors."""

    errors: UnitErrors
    regs: bytearray = field(default_factory=lambda: bytearray(RESET_VALUES))
    rdatac: bool = True  # the chip powers up in RDATAC mode
    standby: bool = False

    def reset(self) -> None:
        self.regs[:] = RESET_VALUES
        self.rdatac = True
        self.standby = False


class ADS1299Chain:
    """n_chips ADS1299 sharing SCLK/DIN/START/RESET/PWDN, one CS per chip, DOUT daisy-chained to the MCU
    (chip 0 nearest the MCU). Register access selects one chip by its CS; data reads in RDATAC clock the
    whole chain (chip 0's status and channels first, then chip 1's)."""

    BYTES_PER_CHIP = 27  # 3 status + 8 channels x 3

    def __init__(self, n_chips: int, serial: str, vref_v: float = 4.5, seed: int = 0) -> None:
        self.chips = [Chip(UnitErrors.for_serial(serial, i)) for i in range(n_chips)]
        self.vref_v = vref_v
        self.running = False  # conversions started (START pin high or START opcode)
        self.start_pin = 0
        self.pwdn = 1
        self.rng = np.random.default_rng(zlib.crc32(("%s/noise/%d" % (serial, seed)).encode()))
        self.test_phase_samples = 0  # position in the internal test-signal square wave
        self.faults: dict[int, str] = {}  # channel -> "dead" | "gain:<err>", injected by tests/bench
        self.leadoff_inputs = np.zeros(8 * n_chips, dtype=bool)
        # (channel, 0 = P / 1 = N) electrode impedance, ohms: what a lead-off current develops a voltage across
        self.lead_ohm = np.zeros((8 * n_chips, 2))
        self.conversions = 0  # since conversions started: the phase of the fDR/4 lead-off excitation

    # ---- pins -----------------------------------------------------------------------------------
    def set_pin(self, name: str, level: int) -> None:
        if name == "start":
            self.start_pin = level
            if level and not self.running:
                self.conversions = 0
            self.running = bool(level)  # conversions run while START is high (or after the START opcode)
        elif name == "reset" and level == 0:
            for chip in self.chips:
                chip.reset()
            self.running = False
        elif name == "pwdn":
            self.pwdn = level
            if level == 0:
                for chip in self.chips:
                    chip.reset()
                self.running = False

    # ---- SPI --------------------------------------------------------------------------------------
    def spi(self, cs_mask: int, tx: bytes) -> bytes:
        """One transaction with the chips whose CS is low (bit i = chip i). Returns the bytes clocked out
        on DOUT (from chip 0, the one wired to the MCU's MISO)."""
        selected = [c for i, c in enumerate(self.chips) if cs_mask >> i & 1]
        rx = bytearray(len(tx))
        if not selected or self.pwdn == 0:
            return bytes(rx)
        i = 0
        while i < len(tx):
            op = tx[i]
            if (op & 0xE0) in (RREG, WREG):
                if i + 1 >= len(tx):
                    break
                addr, count = op & 0x1F, tx[i + 1] + 1
                body = i + 2
                if (op & 0xE0) == RREG:
                    first = selected[0]  # only the chip nearest the MCU drives DOUT for RREG
                    if not first.rdatac:
                        for k in range(count):
                            if body + k < len(rx) and addr + k < N_REGS:
                                rx[body + k] = first.regs[addr + k]
                else:
                    for chip in selected:
                        if chip.rdatac:
                            continue  # WREG is ignored in RDATAC mode (datasheet §9.5.3)
                        for k in range(count):
                            if body + k < len(tx) and addr + k < N_REGS and addr + k not in READ_ONLY:
                                chip.regs[addr + k] = tx[body + k]
                i = body + count
                continue
            for chip in selected:
                self._command(chip, op)
            i += 1
        return bytes(rx)

    def _command(self, chip: Chip, op: int) -> None:
        if op == RESET:
            chip.reset()
            self.running = False
        elif op == START:
            if not self.running:
                self.conversions = 0
            self.running = True
        elif op == STOP:
            self.running = False
        elif op == RDATAC:
            chip.rdatac = True
        elif op == SDATAC:
            chip.rdatac = False
        elif op == STANDBY:
            chip.standby = True
        elif op == WAKEUP:
            chip.standby = False

    # ---- configuration decoded from registers ----------------------------------------------------
    @property
    def rate_hz(self) -> int:
        dr = self.chips[0].regs[CONFIG1] & 0x07
        return DATA_RATES_HZ[min(dr, 6)]

    def channel_gain(self, ch: int) -> int:
        return GAINS[min((self.chips[ch // 8].regs[CH1SET + ch % 8] >> 4) & 0x07, 6)]

    def channel_mux(self, ch: int) -> int:
        return self.chips[ch // 8].regs[CH1SET + ch % 8] & 0x07

    def channel_powered(self, ch: int) -> bool:
        return not self.chips[ch // 8].regs[CH1SET + ch % 8] & 0x80

    def test_signal(self, n: int) -> np.ndarray:
        """Internal test signal (CONFIG2): square wave ±VREF/2.4 mV (x2 with CAL_AMP) at fCLK/2^21 or
        fCLK/2^20, or DC; volts, one value per sample."""
        cfg2 = self.chips[0].regs[CONFIG2]
        amp = (self.vref_v / 2.4e3) * (2.0 if cfg2 & 0x04 else 1.0)
        freq = {0: F_CLK_HZ / 2**21, 1: F_CLK_HZ / 2**20}.get(cfg2 & 0x03)
        k = self.test_phase_samples + np.arange(n)
        self.test_phase_samples += n
        if freq is None:  # DC
            return np.full(n, amp)
        half_period = self.rate_hz / (2.0 * freq)
        return np.where((k // half_period).astype(np.int64) % 2 == 0, amp, -amp)

    def lead_off_excitation(self, n: int) -> np.ndarray:
        """Volts the AC lead-off excitation adds to each channel over the next n conversions, (n, channels):
        +-ILEAD_OFF x (Z_P [LOFF_SENSP] + Z_N [LOFF_SENSN]), the sign alternating every two conversions
        (fDR/4); zero unless LOFF.FLEAD_OFF selects fDR/4. Advances the excitation's phase."""
        k = self.conversions + np.arange(n)
        self.conversions += n
        out = np.zeros((n, 8 * len(self.chips)))
        for i, chip in enumerate(self.chips):
            loff = chip.regs[LOFF]
            if loff & 0x03 != FLEAD_OFF_AC_FDR4:
                continue
            amps = ILEAD_OFF_A[(loff >> 2) & 0x03]
            square = np.where((k // 2) % 2 == 0, 1.0, -1.0) * amps
            for c in range(8):
                ch = i * 8 + c
                ohms = (self.lead_ohm[ch, 0] if chip.regs[LOFF_SENSP] >> c & 1 else 0.0) + \
                       (self.lead_ohm[ch, 1] if chip.regs[LOFF_SENSN] >> c & 1 else 0.0)
                sign = -1.0 if chip.regs[LOFF_FLIP] >> c & 1 else 1.0
                out[:, ch] = sign * square * ohms
        return out

    # ---- conversion ---------------------------------------------------------------------------------
    def convert(self, inputs_v: np.ndarray, leadoff: np.ndarray | None = None) -> bytes:
        """RDATAC stream for len(inputs_v) samples: inputs_v is (n, 8*chips) differential volts at the
        channel inputs. Returns n * 27 * chips bytes, chip 0 first, exactly as clocked out of DOUT."""
        n, nch = inputs_v.shape
        rate = self.rate_hz
        volts = np.empty((n, nch))
        test = self.test_signal(n)
        excitation = self.lead_off_excitation(n)
        for ch in range(nch):
            mux = self.channel_mux(ch)
            errs = self.chips[ch // 8].errors
            if mux == MUX_NORMAL:
                v = inputs_v[:, ch] + excitation[:, ch]
            elif mux == MUX_TEST:
                v = test
            else:  # shorted and the unmodelled supply/temperature inputs read zero volts
                v = np.zeros(n)
            gain = self.channel_gain(ch)
            g_err = errs.gain_error[ch % 8]
            fault = self.faults.get(ch, "")
            if fault.startswith("gain:"):
                g_err = float(fault[5:])
            noise = self.rng.normal(0.0, noise_uvrms(gain, rate) * 1e-6, n)
            volts[:, ch] = (v + errs.offset_v[ch % 8] + noise) * (1.0 + g_err)
            if fault == "dead" or not self.channel_powered(ch):
                volts[:, ch] = 0.0
            volts[:, ch] *= gain
        lsb = self.vref_v / FULL_SCALE_CODE
        codes = np.rint(np.clip(volts / lsb, -(1 << 23), FULL_SCALE_CODE)).astype(np.int32)
        return self._pack(codes, leadoff)

    def leadoff_status(self, leadoff: np.ndarray | None) -> list[tuple[int, int]]:
        """(LOFF_STATP, LOFF_STATN) per chip: a channel's bits are set when its electrode is off and DC
        lead-off sensing is enabled for it with the comparators powered (CONFIG4.PD_LOFF_COMP)."""
        out = []
        for i, chip in enumerate(self.chips):
            statp = statn = 0
            if leadoff is not None and chip.regs[CONFIG4] & 0x02:
                for k in range(8):
                    if leadoff[i * 8 + k]:
                        statp |= chip.regs[LOFF_SENSP] & (1 << k)
                        statn |= chip.regs[LOFF_SENSN] & (1 << k)
            chip.regs[LOFF_STATP], chip.regs[LOFF_STATN] = statp, statn
            out.append((statp, statn))
        return out

    def _pack(self, codes: np.ndarray, leadoff: np.ndarray | None) -> bytes:
        n = codes.shape[0]
        chips = len(self.chips)
        frame = np.empty((n, chips, self.BYTES_PER_CHIP), dtype=np.uint8)
        for i, (statp, statn) in enumerate(self.leadoff_status(leadoff)):
            gpio = self.chips[i].regs[GPIO] >> 4
            frame[:, i, 0] = 0xC0 | statp >> 4
            frame[:, i, 1] = (statp & 0x0F) << 4 | statn >> 4
            frame[:, i, 2] = (statn & 0x0F) << 4 | gpio
        u = codes.astype(np.uint32).reshape(n, chips, 8)
        frame[:, :, 3::3] = (u >> 16) & 0xFF
        frame[:, :, 4::3] = (u >> 8) & 0xFF
        frame[:, :, 5::3] = u & 0xFF
        return frame.tobytes()


def decode_stream(raw: bytes, chips: int) -> tuple[np.ndarray, np.ndarray]:
    """Inverse of the RDATAC stream (for tests): (codes (n, 8*chips) int32, status (n, chips) uint32)."""
    a = np.frombuffer(raw, dtype=np.uint8).reshape(-1, chips, ADS1299Chain.BYTES_PER_CHIP)
    status = (a[:, :, 0].astype(np.uint32) << 16) | (a[:, :, 1].astype(np.uint32) << 8) | a[:, :, 2]
    ch = a[:, :, 3:].reshape(a.shape[0], chips, 8, 3).astype(np.int32)
    codes = (ch[..., 0] << 16) | (ch[..., 1] << 8) | ch[..., 2]
    codes = np.where(codes & 0x800000, codes - (1 << 24), codes)
    return codes.reshape(a.shape[0], chips * 8), status
