# ADS1299 driver for a daisy chain of chips (TI SBAS499C). Bus and pins are injected: `spi` has
# write_readinto(); `cs` is a list of Pin-like objects (one per chip, active low); start/reset/pwdn are
# Pin-like. Register access addresses one chip; the DRDY-driven block reads are done by the board support
# (DMA on the RP2350), not here.
from micropython import const

_ID = const(0x00)
_CONFIG1 = const(0x01)
_CONFIG2 = const(0x02)
_CONFIG3 = const(0x03)
_LOFF = const(0x04)
_CH1SET = const(0x05)
_BIAS_SENSP = const(0x0D)
_BIAS_SENSN = const(0x0E)
_LOFF_SENSP = const(0x0F)
_LOFF_SENSN = const(0x10)
_LOFF_FLIP = const(0x11)
_LOFF_STATP = const(0x12)
_MISC1 = const(0x15)
_CONFIG4 = const(0x17)

_WAKEUP = const(0x02)
_RESET = const(0x06)
_START = const(0x08)
_STOP = const(0x0A)
_RDATAC = const(0x10)
_SDATAC = const(0x11)
_RREG = const(0x20)
_WREG = const(0x40)

ID_ADS1299 = const(0x3E)  # ID register, 8-channel part (bits 3:0 = 1110)
_ID_MASK = const(0x0F)

_FLEAD_OFF_AC_FDR4 = const(0x03)  # LOFF.FLEAD_OFF: AC lead-off excitation at fDR/4

RATES_HZ = (16000, 8000, 4000, 2000, 1000, 500, 250)  # CONFIG1.DR codes 0..6
ILEAD_OFF_NA = (6, 24, 6000, 24000)  # LOFF.ILEAD_OFF codes 0..3
GAINS = (1, 2, 4, 6, 8, 12, 24)  # CHnSET.GAIN codes 0..6
MUX = {"normal": 0, "shorted": 1, "test": 5}
BYTES_PER_CHIP = const(27)  # 24-bit status + 8 x 24-bit channels


class ADS1299Error(Exception):
    pass


class ADS1299:
    def __init__(self, spi, cs, start, reset, pwdn, sleep_us):
        self.spi = spi
        self.cs = cs
        self.start_pin = start
        self.reset_pin = reset
        self.pwdn_pin = pwdn
        self.sleep_us = sleep_us  # datasheet power-up/reset waits only; never for sample timing
        self.chips = len(cs)
        self._tx = bytearray(2 + 24)
        self._rx = bytearray(2 + 24)
        self._cmd = bytearray(1)
        self._cmd_rx = bytearray(1)
        for pin in cs:
            pin.value(1)

    # -- SPI primitives ----------------------------------------------------------------------------
    def _select(self, chip):
        if chip < 0:
            for pin in self.cs:
                pin.value(0)
        else:
            self.cs[chip].value(0)

    def _deselect(self):
        for pin in self.cs:
            pin.value(1)

    def command(self, opcode, chip=-1):
        """Send one opcode to one chip, or to all (chip = -1)."""
        self._cmd[0] = opcode
        self._select(chip)
        self.spi.write_readinto(self._cmd, self._cmd_rx)
        self._deselect()

    def rreg(self, chip, addr, n=1):
        tx = memoryview(self._tx)[:2 + n]
        rx = memoryview(self._rx)[:2 + n]
        tx[0] = _RREG | addr
        tx[1] = n - 1
        for i in range(n):
            tx[2 + i] = 0
        self._select(chip)
        self.spi.write_readinto(tx, rx)
        self._deselect()
        return bytes(rx[2:])

    def wreg(self, chip, addr, data):
        n = len(data)
        tx = memoryview(self._tx)[:2 + n]
        rx = memoryview(self._rx)[:2 + n]
        tx[0] = _WREG | addr
        tx[1] = n - 1
        for i in range(n):
            tx[2 + i] = data[i]
        self._select(chip)
        self.spi.write_readinto(tx, rx)
        self._deselect()

    # -- datasheet procedures -----------------------------------------------------------------------
    def power_up(self):
        """Datasheet §10.1 power-up sequencing: PWDN and RESET high, wait tPOR, pulse RESET, stop the
        power-on RDATAC so registers can be written, then check every chip's ID."""
        self.pwdn_pin.value(1)
        self.reset_pin.value(1)
        self.start_pin.value(0)
        self.sleep_us(150000)  # tPOR: 2^18 tCLK at 2.048 MHz ~ 128 ms
        self.reset_pin.value(0)
        self.sleep_us(10)  # >= 2 tCLK
        self.reset_pin.value(1)
        self.sleep_us(20)  # 18 tCLK before use
        self.command(_SDATAC)
        for chip in range(self.chips):
            ident = self.rreg(chip, _ID)[0]
            if ident & _ID_MASK != ID_ADS1299 & _ID_MASK:
                raise ADS1299Error("chip %d: ID 0x%02x is not an ADS1299" % (chip, ident))

    def read_ids(self):
        return [self.rreg(c, _ID)[0] for c in range(self.chips)]

    def configure(self, rate_hz, channels, leadoff=True, test_amp_x2=False, ac_leadoff_na=0):
        """rate_hz: one of RATES_HZ. channels: per-channel (gain, mux name, enabled) for all 8*chips.
        ac_leadoff_na (one of ILEAD_OFF_NA): instead of DC lead-off detection, AC lead-off excitation at
        fDR/4 of that current, sourced into the P and sunk from the N input of every normal channel (the
        impedance check: a channel then reads a square wave of the current times its electrodes'
        impedances). Must be called in SDATAC mode (after stop())."""
        dr = RATES_HZ.index(rate_hz)
        for chip in range(self.chips):
            # CONFIG1: reserved bit 7 set, daisy-chain mode (bit 6 = 0), clock out only on chip 0.
            self.wreg(chip, _CONFIG1, bytes([0x90 | (0x20 if chip == 0 else 0) | dr]))
            # CONFIG2: test signal generated internally, ~1 Hz square wave.
            self.wreg(chip, _CONFIG2, bytes([0xD0 | (0x04 if test_amp_x2 else 0)]))
            # CONFIG3: internal reference buffer on, bias reference internal, bias buffer on.
            self.wreg(chip, _CONFIG3, bytes([0xEC]))
            sets = bytearray(8)
            loff = 0
            for k in range(8):
                gain, mux, enabled = channels[chip * 8 + k]
                sets[k] = (0 if enabled else 0x80) | (GAINS.index(gain) << 4) | MUX[mux]
                if enabled and mux == "normal":
                    loff |= 1 << k
            self.wreg(chip, _CH1SET, sets)
            if ac_leadoff_na:
                # AC lead-off: ILEAD_OFF at fDR/4, P sources and N sinks (LOFF_FLIP 0), comparators off (the
                # amplitude is measured from the samples, not thresholded)
                self.wreg(chip, _LOFF, bytes([ILEAD_OFF_NA.index(ac_leadoff_na) << 2 | _FLEAD_OFF_AC_FDR4]))
                self.wreg(chip, _LOFF_FLIP, bytes([0x00]))
                self.wreg(chip, _LOFF_SENSP, bytes([loff]))
                self.wreg(chip, _LOFF_SENSN, bytes([loff]))
                self.wreg(chip, _CONFIG4, bytes([0x00]))
            else:
                # DC lead-off: 6 nA, 95 % comparator threshold, on the inputs in use.
                self.wreg(chip, _LOFF, bytes([0x00]))
                self.wreg(chip, _LOFF_SENSP, bytes([loff if leadoff else 0]))
                self.wreg(chip, _LOFF_SENSN, bytes([loff if leadoff else 0]))
                self.wreg(chip, _CONFIG4, bytes([0x02 if leadoff else 0x00]))
            # Verify: a register that did not take is a broken bus, not something to stream through.
            back = self.rreg(chip, _CH1SET, 8)
            if back != bytes(sets):
                raise ADS1299Error("chip %d: CHnSET read back %r, wrote %r" % (chip, back, bytes(sets)))

    def start(self):
        """RDATAC then START high: conversions run, DRDY paces the board support's block reads."""
        self.command(_RDATAC)
        self.start_pin.value(1)

    def stop(self):
        self.start_pin.value(0)
        self.command(_SDATAC)
