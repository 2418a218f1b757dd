# Board support for the virtual board: the firmware runs on the MicroPython unix port, the host link is
# this process's stdin/stdout (a pseudo-terminal, the same byte stream as USB CDC on the board), and the
# ADS1299 chain, stimulator and PIO live in the hardware-model process (hardware/ionm_hw/server.py), reached
# over a Unix socket with the small binary records documented there.
import os
import socket  # type: ignore[import-not-found]  # unix port only: the board has no sockets here
import struct
import sys
import time

from micropython import const
from stdio_host import StdioHost

NAME = "virtual"
_PIN_START = const(0)
_PIN_RESET = const(1)
_PIN_PWDN = const(2)
_HEAD_SIZE = const(8)
LATCH_SIZE = const(14)  # u32 index, i8 output, u32 µA, u16 µs, u8 flags, u16 volts (10 mV)
MAX_LATCHES = const(16)


class _ModelPin:
    """An output pin whose level the model sees (START/RESET/PWDN), or a chip select tracked locally."""

    def __init__(self, bsp, pin_id):
        self.bsp = bsp
        self.pin_id = pin_id
        self.level = 1

    def value(self, v=None):
        if v is None:
            return self.level
        self.level = v
        if self.pin_id >= 0:
            self.bsp._req2[0] = ord("G")
            self.bsp._req2[1] = self.pin_id
            self.bsp._req2[2] = v
            self.bsp.sock.write(self.bsp._req2)


class _ModelSPI:
    """machine.SPI look-alike: a transaction goes to the chips whose CS pin is low."""

    def __init__(self, bsp, cs_pins):
        self.bsp = bsp
        self.cs_pins = cs_pins
        self._head = bytearray(4)

    def write_readinto(self, tx, rx):
        mask = 0
        for i in range(len(self.cs_pins)):
            if self.cs_pins[i].level == 0:
                mask |= 1 << i
        struct.pack_into(">BBH", self._head, 0, 83, mask, len(tx))  # "S"
        self.bsp.sock.write(self._head)
        self.bsp.sock.write(tx)
        self.bsp.sock.readinto(rx)


class Board:
    HAS_AUDITORY = True  # the model's insert earphones (board.json stimulator.auditory)

    def __init__(self, defn):
        path = os.getenv("IONM_MODEL_SOCKET")
        if not path:
            raise OSError("IONM_MODEL_SOCKET is not set: the virtual board needs the hardware model")
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        # The unix port's connect() takes a raw sockaddr: struct sockaddr_un is the family (native u16)
        # followed by the NUL-terminated path.
        addr = struct.pack("H", socket.AF_UNIX) + path.encode() + bytes(1)
        for _ in range(100):  # the model may still be starting
            try:
                self.sock.connect(addr)
                break
            except OSError:
                time.sleep_ms(50)
        else:
            raise OSError("cannot reach the hardware model at %s" % path)
        self._req2 = bytearray(3)
        self._dreq = bytearray(3)
        self._xreq = bytearray(b"X")
        self._pulse = bytearray(1 + 12)
        self._train = bytearray(1 + 9)
        self._click = bytearray(1 + 7)
        self._mask = bytearray(1 + 2)
        self._probe = bytearray(1 + 7)
        self._probe_reply = bytearray(7)
        self._u16 = bytearray(2)
        self.head = bytearray(_HEAD_SIZE)  # u32 first_index, u16 n_latched, u16 samples late
        self._end = 0
        self._late = 0
        self._t_end = time.ticks_us()
        self.latches = bytearray(LATCH_SIZE * MAX_LATCHES)
        self._latch_views = [memoryview(self.latches)[i * LATCH_SIZE:(i + 1) * LATCH_SIZE]
                             for i in range(MAX_LATCHES)]
        self._latch_spill = bytearray(LATCH_SIZE)
        cs = [_ModelPin(self, -1) for _ in defn["adc"]["pins"]["cs"]]
        self.adc_spi = _ModelSPI(self, cs)
        self.adc_cs = cs
        self.adc_start = _ModelPin(self, _PIN_START)
        self.adc_reset = _ModelPin(self, _PIN_RESET)
        self.adc_pwdn = _ModelPin(self, _PIN_PWDN)
        self.host = StdioHost()
        self.sock.write(b"H")
        n = self.sock.read(1)[0]
        self._serial = self.sock.read(n).decode()

    # -- identity and clocks --------------------------------------------------------------------------
    def serial(self):
        return self._serial

    def sleep_us(self, us):
        time.sleep_us(us)

    def ticks_ms(self):
        return time.ticks_ms()

    def ticks_diff(self, a, b):
        return time.ticks_diff(a, b)

    def feed_watchdog(self):
        pass  # the unix port has no machine.WDT; the sim restarts a firmware that exits

    def state_dir(self):
        return os.getenv("IONM_STATE_DIR") or "."

    def reset(self):
        sys.exit(75)  # the sim restarts an exited firmware, as the board's reset would

    # -- host link ------------------------------------------------------------------------------------------
    def host_wait(self, timeout_ms):
        return self.host.wait(timeout_ms)

    def host_read(self, buf, off, n):
        return self.host.read(buf, off, n)

    def host_write(self, buf, off, n):
        self.host.write(buf, off, n)

    # -- acquisition: DRDY-paced blocks, as DMA delivers them ------------------------------------------
    def start_stream(self, raw, rate_hz):
        pass  # the model's DMA is armed per block by read_block()

    def stop_stream(self):
        pass

    def read_block(self, raw):
        """Wait for the next block of len(raw) bytes; fills raw, self.head and self.latches. Returns the
        number of pulse latches. Allocates nothing (runs under heap_lock)."""
        n = len(raw) // (27 * len(self.adc_cs))
        d = self._dreq
        d[0] = 68  # "D"
        d[1] = n >> 8
        d[2] = n & 0xFF
        self.sock.write(d)
        self.sock.readinto(self.head)
        self.sock.readinto(raw)
        h = self.head
        # the hardware clock: this block ends at first + n; the model says how many samples its clock was
        # past that when it handed the block over (head[6:8], nonzero when the firmware is late)
        self._end = ((h[0] << 24) | (h[1] << 16) | (h[2] << 8) | h[3]) + n
        self._late = (h[6] << 8) | h[7]
        self._t_end = time.ticks_us()
        nl = (h[4] << 8) | h[5]
        i = 0
        while i < nl:
            if i < MAX_LATCHES:
                self.sock.readinto(self._latch_views[i])
            else:
                self.sock.readinto(self._latch_spill)  # more than the latch FIFO holds: counted, dropped
            i += 1
        return nl

    def sample_now(self, rate_hz):
        """Index of the sample being converted now: the end of the last block read, plus how late it was
        handed over, plus the time since."""
        return self._end + self._late + time.ticks_diff(time.ticks_us(), self._t_end) * rate_hz // 1000000

    # -- stimulation: the PIO fires at a sample index ----------------------------------------------------
    def arm_pulse(self, index, output, current_ua, width_us, biphasic):
        struct.pack_into(">BIbIHB", self._pulse, 0, 80, index, output, current_ua, width_us, 1 if biphasic else 0)
        self.sock.write(self._pulse)

    def arm_trigger_train(self, index, count, ipi_us, first, last):
        """Triggers first..last-1 of a train of count whose first trigger is at sample index."""
        struct.pack_into(">BIBHBB", self._train, 0, 84, index, count, ipi_us, first, last)
        self.sock.write(self._train)

    def arm_click(self, index, level_db, rarefaction, right_ear):
        """A click on the earphones at sample index: the attenuator set to level_db (dB nHL), the polarity."""
        struct.pack_into(">BIBBB", self._click, 0, 67, index, level_db, 1 if rarefaction else 0,
                         1 if right_ear else 0)  # "C"
        self.sock.write(self._click)

    def set_masking(self, right_ear, level_db):
        """White-noise masking of one ear at level_db (0: off); cancel_stimulation silences it."""
        struct.pack_into(">BBB", self._mask, 0, 77, 1 if right_ear else 0, level_db)  # "M"
        self.sock.write(self._mask)

    def probe_output(self, output, current_ua, width_us):
        """A sub-threshold test pulse on `output`, now: (current-sense µA, compliance voltage in 10 mV)."""
        struct.pack_into(">BbIH", self._probe, 0, 90, output, current_ua, width_us)  # "Z"
        self.sock.write(self._probe)
        self.sock.readinto(self._probe_reply)
        r = self._probe_reply
        return (r[0] << 24) | (r[1] << 16) | (r[2] << 8) | r[3], (r[4] << 8) | r[5]

    def cancel_stimulation(self):
        self.sock.write(self._xreq)
        self.sock.readinto(self._u16)
        return (self._u16[0] << 8) | self._u16[1]
