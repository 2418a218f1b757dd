# Board support for the reference board: RP2350 (Pico 2) + 2x ADS1299 + constant-current stimulator.
#
# Timing comes from hardware, never from Python:
# - ADC reads: PIO state machine 0 waits for DRDY to fall and clocks the whole daisy chain (27 bytes per
#   chip) off DOUT itself; DMA moves the bytes from its RX FIFO into the block buffer. read_block() only
#   waits for the DMA transfer count to reach zero and re-arms it into the other half of a double buffer.
# - Sample clock and stimulus timing: PIO state machine 1 counts DRDY edges in X (X = ~index) and compares
#   with the target index in its OSR; on a match it raises PIO IRQ 0 and loads the next target. State
#   machine 2 waits for IRQ 0 and shapes the pulse (enable mask, width, biphasic polarity flip) from its own
#   FIFO, so the pulse starts on the exact DRDY edge of its sample index and its width is timed in PIO
#   cycles. Targets are queued in order; when nothing is armed the firmware queues "null" targets (mask 0)
#   a few samples ahead so that the comparator always holds a near target and new pulses queue behind it.
# - Host silence: machine.WDT resets the board if the main loop stops feeding it.
# The pins and limits come from board.json (boardcfg); nothing here restates them.
import time

import machine
import rp2
from micropython import const
from stdio_host import StdioHost

# The PIO assembler's names (wait, jmp, x, ...) exist only inside @rp2.asm_pio bodies. The type checker
# is told this flag is true (tools/mypy-firmware.ini: always_true) so it reads their stubs; the board
# never runs the import.
_TYPE_CHECKING_PIO = False
if _TYPE_CHECKING_PIO:
    from rp2.asm_pio_rp2350 import *  # noqa: F403

NAME = "rp2350"
_WDT_TIMEOUT_MS = const(2000)
_PIO_HZ = const(10_000_000)  # stimulus SM clock: 0.1 µs resolution for pulse widths
LATCH_SIZE = const(14)  # u32 index, i8 output, u32 µA, u16 µs, u8 flags, u16 volts (10 mV)
MAX_LATCHES = const(16)
_DREQ_PIO0_RX0 = const(4)  # RP2350 datasheet, DMA DREQ table
_PIO0_BASE = const(0x50200000)
_RXF0 = const(0x020)


@rp2.asm_pio(sideset_init=rp2.PIO.OUT_LOW, in_shiftdir=rp2.PIO.SHIFT_LEFT, autopush=True, push_thresh=8,
             fifo_join=rp2.PIO.JOIN_RX)
def _drdy_spi_read():
    # y = bits per sample - 1 (loaded once with exec); DRDY is the jmp pin; in_base = DOUT (MISO).
    wrap_target()
    wait(1, pin, 1)  # noqa: F405 - PIO assembler names
    wait(0, pin, 1)  # noqa: F405 - DRDY fell: a conversion is ready
    mov(x, y)  # noqa: F405
    label("bit")
    nop().side(1)  # noqa: F405 - SCLK high: the ADS1299 shifts out on the rising edge (SPI mode 1)
    in_(pins, 1).side(0)  # noqa: F405 - sample DOUT as SCLK falls
    jmp(x_dec, "bit")  # noqa: F405
    wrap()


@rp2.asm_pio()
def _drdy_comparator():
    # x = ~(sample index), decremented on every DRDY edge; osr = ~(next target index).
    wrap_target()
    wait(1, pin, 0)  # noqa: F405
    wait(0, pin, 0)  # noqa: F405
    jmp(x_dec, "cmp")  # noqa: F405
    label("cmp")
    mov(y, osr)  # noqa: F405
    jmp(x_not_y, "skip")  # noqa: F405
    irq(0)  # noqa: F405 - fire: the pulse shaper starts on this very edge
    mov(isr, x)  # noqa: F405 - latch the index of the pulse
    push(noblock)  # noqa: F405
    pull(noblock)  # noqa: F405 - next target (an empty FIFO leaves X in OSR: matches nothing later)
    label("skip")
    wrap()


@rp2.asm_pio(out_init=[rp2.PIO.OUT_LOW] * 4, sideset_init=rp2.PIO.OUT_LOW, out_shiftdir=rp2.PIO.SHIFT_RIGHT)
def _pulse_shaper():
    # FIFO words per pulse: width (PIO cycles), enable mask | biphasic << 4. Polarity pin is side-set.
    wrap_target()
    pull()  # noqa: F405
    mov(y, osr)  # noqa: F405 - width
    pull()  # noqa: F405 - mask and phase flag
    wait(1, irq, 0)  # type: ignore[arg-type]  # noqa: F405 - (the DSL reuses the name irq)
    out(pins, 4).side(0)  # noqa: F405 - enable the output(s), first phase
    mov(x, y)  # noqa: F405
    label("p1")
    jmp(x_dec, "p1")  # noqa: F405
    out(x, 1)  # noqa: F405 - biphasic?
    jmp(not_x, "end")  # noqa: F405
    mov(x, y).side(1)  # noqa: F405 - reverse polarity for the charge-balancing phase
    label("p2")
    jmp(x_dec, "p2")  # noqa: F405
    label("end")
    mov(pins, null).side(0)  # noqa: F405
    wrap()


class Board:
    # The reference board (revision A) has no insert-earphone driver fitted yet: the firmware refuses click
    # programs on it (limit-output), and arm_click/set_masking are never reached.
    HAS_AUDITORY = False

    def __init__(self, defn):
        adc = defn["adc"]
        pins = adc["pins"]
        spi = adc["spi"]
        self.defn = defn
        self.chips = adc["chips"]
        self._spi_cfg = spi
        self.adc_cs = [machine.Pin(p, machine.Pin.OUT, value=1) for p in pins["cs"]]
        self.adc_start = machine.Pin(pins["start"], machine.Pin.OUT, value=0)
        self.adc_reset = machine.Pin(pins["reset"], machine.Pin.OUT, value=1)
        self.adc_pwdn = machine.Pin(pins["pwdn"], machine.Pin.OUT, value=1)
        self.drdy = machine.Pin(pins["drdy"], machine.Pin.IN, machine.Pin.PULL_UP)
        self.adc_spi = self._make_spi()
        stim = defn["stimulator"]["pins"]
        self.enable = [machine.Pin(p, machine.Pin.OUT, value=0) for p in stim["enable"]]
        self.polarity = machine.Pin(stim["polarity"], machine.Pin.OUT, value=0)
        self.trigger_out = machine.Pin(defn["trigger"]["out_pin"], machine.Pin.OUT, value=0)
        self.dac_cs = machine.Pin(stim["dac_cs"], machine.Pin.OUT, value=1)
        self.current_sense = machine.ADC(machine.Pin(stim["current_sense_adc"]))
        self.voltage_cs = machine.Pin(stim["voltage_sense_cs"], machine.Pin.OUT, value=1)
        vs = defn["stimulator"]["voltage_sense"]
        self._v_full_10mv = int(vs["full_scale_v"] * 100)
        self._v_codes = (1 << vs["bits"]) - 1
        self._v_buf = bytearray(2)
        self._enable_pins = stim["enable"]
        self._dac_spi = machine.SPI(1)
        self._dac_buf = bytearray(3)
        self._dac_output = 0
        self._dac_ua = 0  # the DAC's setting (a probe puts it back)
        self.head = bytearray(8)
        self.latches = bytearray(LATCH_SIZE * MAX_LATCHES)
        self.host = StdioHost()
        self._dma = rp2.DMA()
        self._sm_read = None
        self._sm_cmp = None
        self._sm_pulse = None
        self._index = 0
        self._rate_hz = 0
        self._wdt = machine.WDT(timeout=_WDT_TIMEOUT_MS)

    def _make_spi(self):
        s = self._spi_cfg
        return machine.SPI(s["id"], baudrate=s["baudrate_hz"], polarity=s["polarity"], phase=s["phase"],
                           sck=machine.Pin(s["sck"]), mosi=machine.Pin(s["mosi"]), miso=machine.Pin(s["miso"]))

    # -- identity and clocks --------------------------------------------------------------------------
    def serial(self):
        return "".join("%02x" % b for b in machine.unique_id())

    def sleep_us(self, us):
        time.sleep_us(us)  # datasheet power-up waits only; sample timing is DRDY's

    def ticks_ms(self):
        return time.ticks_ms()

    def ticks_diff(self, a, b):
        return time.ticks_diff(a, b)

    def feed_watchdog(self):
        self._wdt.feed()

    def state_dir(self):
        return ""  # the flash filesystem's root

    def reset(self):
        machine.reset()

    # -- host link ------------------------------------------------------------------------------------------
    def host_wait(self, timeout_ms):
        return self.host.wait(timeout_ms)

    def host_read(self, buf, off, n):
        return self.host.read(buf, off, n)

    def host_write(self, buf, off, n):
        self.host.write(buf, off, n)

    # -- acquisition -------------------------------------------------------------------------------------------
    def start_stream(self, raw, rate_hz):
        """Hand SCLK to PIO (CS low on every chip: daisy-chain read), start the DRDY reader and DMA."""
        bits = 8 * 27 * self.chips
        sck = self._spi_cfg["sck"]
        for cs in self.adc_cs:
            cs.value(0)
        self._sm_read = rp2.StateMachine(0, _drdy_spi_read, freq=2 * self._spi_cfg["baudrate_hz"],
                                         sideset_base=machine.Pin(sck), in_base=machine.Pin(self._spi_cfg["miso"]))
        self._sm_read.put(bits - 1)
        self._sm_read.exec("pull()")
        self._sm_read.exec("mov(y, osr)")
        self._sm_cmp = rp2.StateMachine(1, _drdy_comparator, in_base=self.drdy)
        self._sm_cmp.exec("mov(x, invert(null))")  # index 0 -> x = ~0
        self._sm_pulse = rp2.StateMachine(2, _pulse_shaper, freq=_PIO_HZ, out_base=self.enable[0],
                                          sideset_base=self.polarity)
        self._index = 0
        self._rate_hz = rate_hz
        self._arm_dma(raw)
        for sm in (self._sm_pulse, self._sm_cmp, self._sm_read):
            sm.active(1)

    def _arm_dma(self, raw):
        self._raw = raw
        ctrl = self._dma.pack_ctrl(size=0, inc_read=False, inc_write=True, treq_sel=_DREQ_PIO0_RX0)
        self._dma.config(read=_PIO0_BASE + _RXF0, write=raw, count=len(raw), ctrl=ctrl, trigger=True)

    def stop_stream(self):
        for sm in (self._sm_read, self._sm_cmp, self._sm_pulse):
            if sm is not None:
                sm.active(0)
        self._dma.active(0)
        self.cancel_stimulation()
        for cs in self.adc_cs:
            cs.value(1)
        self.adc_spi = self._make_spi()  # take SCLK back from PIO for register access

    def read_block(self, raw):
        """Wait (on DMA, i.e. on DRDY) for the block, then re-arm. Allocates nothing."""
        while self._dma.active():
            pass
        idx = self._index
        h = self.head
        h[0] = (idx >> 24) & 0xFF
        h[1] = (idx >> 16) & 0xFF
        h[2] = (idx >> 8) & 0xFF
        h[3] = idx & 0xFF
        self._index = idx + len(raw) // (27 * self.chips)
        self._arm_dma(raw)
        n = 0
        sm = self._sm_cmp
        while sm is not None and sm.rx_fifo() and n < MAX_LATCHES:
            sm.get(self.latches, 0)  # latched ~index of a delivered pulse (decoded by the scheduler)
            n += 1
        return n

    def sample_now(self, rate_hz):
        """Index of the sample being converted now: the block DMA is filling, and how far it has got."""
        done = len(self._raw) - self._dma.count  # type: ignore[attr-defined]  # (rp2.DMA.count: transfers left)
        return self._index + done // (27 * self.chips)

    # -- stimulation -------------------------------------------------------------------------------------------
    def arm_pulse(self, index, output, current_ua, width_us, biphasic):
        shaper, comparator = self._sm_pulse, self._sm_cmp
        if shaper is None or comparator is None:
            raise OSError("stimulation needs acquisition running: pulses are timed by DRDY")
        self._set_dac(output, current_ua)
        shaper.put(width_us * (_PIO_HZ // 1_000_000))
        shaper.put(((1 << output) if output >= 0 else 0) | (16 if biphasic else 0))
        comparator.put(~index)

    def arm_trigger_train(self, index, count, ipi_us, first, last):
        """Triggers first..last-1 of a train of count whose first trigger is at sample index (the scheduler
        arms a train piecewise, never past the watchdog deadline)."""
        for k in range(first, last):
            self.arm_pulse(index + k * ipi_us * self._rate_hz // 1_000_000, -1, 0, self.defn["trigger"]["out_pulse_us"],
                           False)

    def _set_dac(self, output, current_ua):
        # DAC8551-class 16-bit DAC on SPI1 (CS from board.json): code = current / full scale. The current is
        # set before the pulse is queued; the output stage holds it until the enable pin opens.
        if output < 0:
            return
        self._dac_output, self._dac_ua = output, current_ua
        full_ua = int(self.defn["stimulator"]["current_ma_max"] * 1000)
        code = current_ua * 65535 // full_ua
        self._dac_buf[0] = 0
        self._dac_buf[1] = code >> 8
        self._dac_buf[2] = code & 0xFF
        self.dac_cs.value(0)
        self._dac_spi.write(self._dac_buf)
        self.dac_cs.value(1)

    def probe_output(self, output, current_ua, width_us):
        """A sub-threshold test pulse on `output`, timed in software (it is taken from the PIO for the probe
        and given back): the DAC set, the enable pin opened, both readbacks sampled at mid-pulse. Returns
        (current-sense µA, compliance voltage in 10 mV). Python's overhead lengthens the pulse to ~100-200 µs
        (still ~0.2 µC, far below any nerve's threshold). Written, not run on hardware."""
        full_ua = int(self.defn["stimulator"]["current_ma_max"] * 1000)
        armed_output, armed_ua = self._dac_output, self._dac_ua
        self._set_dac(output, current_ua)
        self._dac_output, self._dac_ua = armed_output, armed_ua
        pin = machine.Pin(self._enable_pins[output], machine.Pin.OUT, value=0)  # SIO, away from the PIO
        pin.value(1)
        time.sleep_us(width_us // 2)
        self.voltage_cs.value(0)
        self._dac_spi.readinto(self._v_buf)  # ADS7042-class: 2 leading zeros, 12 bits, MSB first
        self.voltage_cs.value(1)
        sense = self.current_sense.read_u16()
        time.sleep_us(width_us - width_us // 2)
        pin.value(0)
        if self._sm_pulse is not None:  # back to the pulse shaper
            machine.Pin(self._enable_pins[output], machine.Pin.ALT, alt=machine.Pin.ALT_PIO0)
        self._set_dac(self._dac_output, self._dac_ua)  # a pulse armed before the probe keeps its current
        code = ((self._v_buf[0] << 8) | self._v_buf[1]) >> 2 & self._v_codes
        return sense * full_ua // 65535, code * self._v_full_10mv // self._v_codes

    def cancel_stimulation(self):
        n = 0
        if self._sm_pulse is not None:
            self._sm_pulse.active(0)
            n = self._sm_pulse.tx_fifo()
        for pin in self.enable:
            pin.value(0)
        self.trigger_out.value(0)
        return n
