# Threshold hunting on the board (SPEC 5.11): the lowest probe current that evokes a response on each watched
# channel, found by bisection without the host in the loop (a host's latency would slow every step).
#
# Every pulse updates every channel's bracket (below: the highest current without a response, above: the
# lowest with one); the next current bisects the bracket of the unresolved channel with the lowest `above`
# (the lowest threshold, the one a screw test is about, is resolved first). A channel is resolved when its
# bracket is no wider than the resolution, when the lowest current of the range responded (threshold at or
# below it) or when the highest did not (none in the range). Over 0.5-40 mA at 0.5 mA that is 7 pulses for
# one channel, whatever the threshold (a linear ramp needs one per step up to it).
#
# Response detection: the samples of [pulse + window start, pulse + window end) of each watched channel are
# scanned as the blocks arrive, for their minimum and maximum (raw ADC counts, the DMA block as read): a viper
# loop over preallocated arrays, allocation-free (it runs after every block). A response is a peak-to-peak of
# at least the criterion, converted to counts once, at the start, with the channel's configured gain. A window
# with samples lost in it (an overrun) proves nothing: the same current is delivered again.
#
# The request's validation and the start are in huntreq.py: both modules are loaded by a hunt request and
# dropped when the hunt has been reported (the heap is tight; each is small enough to compile while acquiring).
import array

import micropython
from micropython import const

_CHIP_BYTES = const(27)
_NONE = const(-1)
_FULL_SCALE = const(8388607)


@micropython.viper
def _scan(raw: ptr8, stride: int, s0: int, s1: int, offs: ptr16, nsel: int, lo: ptr32, hi: ptr32):
    # minimum and maximum of each selected channel's 24-bit samples s0..s1-1 of a block (as offset binary)
    j = 0
    while j < nsel:
        mn = int(lo[j])
        mx = int(hi[j])
        s = s0
        while s < s1:
            o = s * stride + int(offs[j])
            # offset binary (two's complement with the sign bit flipped): 0..2^24-1, in the same order as the
            # signed values, and never negative (ptr32 loads are unsigned on a 64-bit port)
            v = ((int(raw[o]) ^ 0x80) << 16) | (int(raw[o + 1]) << 8) | int(raw[o + 2])
            if v < mn:
                mn = v
            if v > mx:
                mx = v
            s += 1
        lo[j] = mn
        hi[j] = mx
        j += 1


class Hunt:
    """One hunt: its validated parameters (huntreq.parse), the brackets, and the response window under way."""

    def __init__(self, p, cfg, chips, vref_uv):
        out, lo, hi, res, step, rate, crit, win, maxp, chans = p
        fs = cfg.rate_hz
        self.output = out
        self.lo, self.hi, self.res, self.step = lo, hi, res, step
        self.rate_mhz = rate
        self.period = fs * 1000 // rate  # samples between pulses
        self.w0 = win[0] * fs // 1000
        self.w1 = win[1] * fs // 1000
        if self.w1 <= self.w0:
            self.w1 = self.w0 + 1
        self.p2p_uv = crit
        self.max_pulses = maxp
        self.channels = chans
        n = len(chans)
        self.nsel = n
        self.stride = _CHIP_BYTES * chips
        self.offs = array.array("H", [(ch // 8) * _CHIP_BYTES + 3 + 3 * (ch % 8) for ch in chans])
        self.gains = [cfg.gains[cfg.channels.index(ch)] for ch in chans]
        self.vref_uv = vref_uv
        # the criterion in counts, per channel (its gain): counts = µV x gain x full scale / vref
        self.crit = [(crit * g * _FULL_SCALE + vref_uv - 1) // vref_uv for g in self.gains]
        self.mins = array.array("I", [0] * n)
        self.maxs = array.array("I", [0] * n)
        self.below = [lo - step] * n  # the hunt floor: nothing known yet
        self.above = [hi + step] * n  # the hunt ceiling
        self.pulses = 0
        self.reason = None  # why it ended (None: running)
        self.due = 0  # sample of the next pulse
        self.pulse_index = _NONE  # the pulse whose window is being scanned (-1: none)
        self.current = 0
        self.expect = 0  # the next sample index the scan expects (a gap: samples lost)
        self.gap = False
        self.last = None  # (index, current_ua, p2p_uv list, responses list) of the last judged pulse

    # -- the search ------------------------------------------------------------------------------------
    def resolved(self, j):
        return self.above[j] - self.below[j] <= self.res or self.above[j] <= self.lo or self.below[j] >= self.hi

    def next_current(self):
        """The current of the next pulse (µA), or None when every channel is resolved or the pulse budget is
        spent (reason set)."""
        best = -1
        for j in range(self.nsel):
            if not self.resolved(j) and (best < 0 or self.above[j] < self.above[best]):
                best = j
        if best < 0:
            self.reason = "done"
            return None
        if self.pulses >= self.max_pulses:
            self.reason = "pulses"
            return None
        b, a, step = self.below[best], self.above[best], self.step
        mid = (b + a) // 2 // step * step
        if mid <= b:
            mid = b + step
        if mid >= a:
            mid = a - step
        if mid < self.lo:
            mid = self.lo
        if mid > self.hi:
            mid = self.hi
        return mid

    def armed(self, index, current):
        self.pulse_index = index
        self.current = current
        self.pulses += 1
        self.expect = index + self.w0
        self.gap = False
        for j in range(self.nsel):
            self.mins[j] = 0xFFFFFF
            self.maxs[j] = 0

    @property
    def waiting(self):
        return self.pulse_index != _NONE

    # -- response detection (after every block; allocation-free) ---------------------------------------
    def scan(self, raw, first, nsamp):
        """Fold the block [first, first + nsamp) into the window's minima and maxima. True when the window
        is complete (judge() next). Allocates nothing."""
        p = self.pulse_index
        if p == _NONE:
            return False
        a = p + self.w0
        b = p + self.w1
        end = first + nsamp
        if end <= a:
            return False
        s0 = a - first if a > first else 0
        s1 = b - first if b < end else nsamp
        if s0 < s1:
            if first + s0 > self.expect:
                self.gap = True  # samples of the window never arrived (an overrun)
            # (viper pointer parameters take any buffer; the stubs' ptr types do not say so)
            _scan(raw, self.stride, s0, s1, self.offs, self.nsel, self.mins, self.maxs)  # type: ignore[arg-type]
            self.expect = first + s1
        return end >= b

    def judge(self):
        """The window is over: update the brackets (unless samples were lost in it: the same current is then
        delivered again, and the pulse still counts against max_pulses, since it reached the patient) and
        return the pulse's record (index, current_ua, p2p µV per channel, response per channel); the next pulse
        is due one period after this one."""
        p2p = []
        resp = []
        cur = self.current
        for j in range(self.nsel):
            c = self.maxs[j] - self.mins[j]
            if c < 0:  # nothing scanned
                c = 0
            r = c >= self.crit[j]
            p2p.append(c * self.vref_uv // (self.gains[j] * _FULL_SCALE))
            resp.append(r)
            if self.gap:
                continue
            if r:
                if cur < self.above[j]:
                    self.above[j] = cur
            elif cur > self.below[j]:
                self.below[j] = cur
        rec = (self.pulse_index, cur, p2p, resp, self.gap)
        self.due = self.pulse_index + self.period
        self.pulse_index = _NONE
        return rec

    def results(self):
        """Per channel: threshold_ua (the lowest current that evoked a response; null when none did up to
        hi_ua) and below_ua (the highest current that did not; null when none was tried below)."""
        out = []
        for j in range(self.nsel):
            a, b = self.above[j], self.below[j]
            out.append(
                {
                    "channel": self.channels[j],
                    "threshold_ua": a if a <= self.hi else None,
                    "below_ua": b if b >= self.lo else None,
                }
            )
        return out

    # -- scheduling (the scheduler calls tick for the hunt's run) -----------------------------------------
    def tick(self, sched, run, next_index, limit, on_arm):
        """Arm the next pulse when its current is decided and its time is before `limit` (the horizon, never past
        the watchdog deadline). The same checks as every pulse: the output's minimum interval, the TcMEP hold-off,
        every delivery limit and the electrode's impedance as it is armed. False when a limit stopped all
        stimulation."""
        if self.reason is not None:
            run.done = True
            return True
        if self.pulse_index != _NONE:
            return True  # its last pulse's response is not judged yet
        current = self.next_current()
        if current is None:
            run.done = True
            return True
        sup = sched.sup
        out = self.output
        fs = sched.fs
        index = self.due if self.due > next_index else next_index  # a late decision delays a pulse, never skips it
        last = sched.last_index[out]
        gap = fs * 1000 // sup.rate_limit_mhz(out)
        if last is not None and index - last < gap:
            index = last + gap
        if sched._held(index):  # a TcMEP train's hold-off: after it
            self.due = index + fs * (sup.holdoff_before_ms + sup.holdoff_after_ms) // 1000
            return True
        if index >= limit:
            return True
        width = sup.probe_width_us
        dac = sup.dac_ua(out, current)
        err = sup.delivery_error(out, dac if dac > current else current, width, 1)
        if err is not None:
            sched.refused = (index, out, "hunt pulse refused as it was armed: " + err[1], "limit")
            sched.stop("limit")
            return False
        zerr = sup.impedance_error(out)
        if zerr is not None:
            sched.refused = (index, out, "hunt pulse refused as it was armed: " + zerr, "impedance")
            sched.stop("fault")
            return False
        sched.bsp.arm_pulse(index, out, dac, width, False)
        sched.last_index[out] = index
        sched.armed.append((index, run.pid, out, current))
        sched.pulses_armed += 1
        self.armed(index, current)
        if on_arm is not None:
            on_arm(index)
        return True

    # -- the firmware's side: events --------------------------------------------------------------------
    def scan_block(self, fw):
        """The block just read, into the response window; a complete window becomes a hunt-pulse event."""
        acq = fw.acq
        if self.reason is not None or self.pulse_index == _NONE:
            return
        n = acq.writer.nsamp
        if self.scan(acq.writer.raw, acq.next_index - n, n):
            index, current, p2p, resp, gap = self.judge()
            ev = {
                "kind": "hunt-pulse",
                "index": index,
                "current_ua": current,
                "channels": self.channels,
                "p2p_uv": p2p,
                "responses": resp,
            }
            if gap:
                ev["lost"] = True
            fw.link.event(ev)

    def report(self, fw):
        """The hunt has ended (done, out of pulses, stopped, watchdog, fault, ...): its thresholds."""
        fw.scheduler.hunt = None
        fw.link.event(
            {
                "kind": "hunt-done",
                "reason": self.reason,
                "pulses": self.pulses,
                "lo_ua": self.lo,
                "hi_ua": self.hi,
                "resolution_ua": self.res,
                "p2p_uv": self.p2p_uv,
                "results": self.results(),
            }
        )
        drop()


def drop():
    """Unload the hunt's modules (loaded again by the next hunt request)."""
    import gc
    import sys

    sys.modules.pop("huntreq", None)
    sys.modules.pop("hunt", None)
    gc.collect()
