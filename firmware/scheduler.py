# The stimulation scheduler: validated programs become pulses armed at exact sample indices of the ADC
# clock (the board support's PIO fires them on that DRDY edge and latches the index). Pulse times are
# computed from the program start (t_k = phase + k * 1e9 / rate_mHz µs), never accumulated, so a 4.7 Hz
# program does not drift in eight hours. Pulses are armed only a short horizon ahead and never past the
# watchdog deadline (last host frame + watchdog_ms): a board whose host went quiet stops by construction.
# No other stimulus falls near a TcMEP train: pulses from the hold-off before its first trigger to the
# hold-off after its last are held (not delivered, counted), so that no SSEP sweep holds a train and no
# MEP window holds an SSEP pulse or the muscle response it evokes.
import random

import messages as m

_HORIZON_MS = 20  # how far ahead pulses are handed to the PIO
HUNT_PID = -2  # the program id of a hunt's pulses (stim events' `program`)
TRIGGER = -1  # the output of TcMEP triggers (the external stimulator's); the earphones' is board.json's (-2)


def _train_samples(prog, fs):
    """Samples from a train's first trigger to its last."""
    return (prog["count"] - 1) * prog["ipi_us"] * fs // 1000000


def _trigger_offset(prog, k, fs):
    """Samples from a train's first trigger to its k-th (the PIO times the interval in µs from the first
    edge; this is the latest sample the k-th can fall on)."""
    return k * prog["ipi_us"] * fs // 1000000


class Running:
    def __init__(self, pid, prog, t0_us):
        self.pid = pid
        self.prog = prog
        self.t0_us = t0_us
        self.k = 0
        self.done = False
        self.sub = 0  # tcmep: triggers of the current train already armed (0: no train under way)
        self.train_at = 0  # tcmep: sample index of the current train's first trigger

    def next_pulse(self):
        """(t_us, current_ua) of the k-th pulse, or None when the program has run its course."""
        p = self.prog
        kind = p["kind"]
        if kind == "tcmep":
            if p["interval_ms"] == 0 and self.k > 0:
                return None
            t = self.t0_us + self.k * p["interval_ms"] * 1000
            return t, 0
        if kind == "tof" and self.k >= p["count"]:
            return None
        current = p["current_ua"]
        if kind == "ramp":
            current = p["current_ua"] + self.k * p["step_ua"]
            if current > p["stop_ua"]:
                return None
        t = self.t0_us + p["phase_us"] + self.k * 1000000000 // p["rate_mhz"]
        if p["jitter_us"]:
            t += random.getrandbits(20) % (p["jitter_us"] + 1)
        return t, current


class Scheduler:
    def __init__(self, bsp, supervisor):
        self.bsp = bsp
        self.sup = supervisor
        self.refused = None  # (index, output, detail, fault) of a pulse that broke a limit as it was armed
        self.programs = []
        self.running = []
        self.fs = 0
        self.armed = []  # (index, program id, output, requested µA) awaiting their latch, in index order
        self.last_train_index = None
        self.last_train_samples = 0  # first to last trigger of the last train
        self.last_tof_index = None  # the first pulse of the last train-of-four (one per 15 s at most)
        self.last_click_index = None  # the last click armed (the earphones' minimum interval)
        self.rarefaction_next = True  # alternating clicks: the polarity of the next one armed (held ones skip none)
        self.last_index = [None] * supervisor.n_outputs  # per output: the most recent armed pulse
        self.pulses_armed = 0
        self.pulses_skipped = 0  # pulses dropped to keep the minimum interval (two programs, jitter)
        self.pulses_held = 0  # pulses not delivered because they fell in a TcMEP train's hold-off
        self.hunt = None  # the threshold hunt (hunt.Hunt) running or ended and not yet reported (SPEC 5.11)

    @property
    def active(self):
        return bool(self.running)

    def load(self, programs):
        """Replace the programs (already validated by the supervisor). Stops whatever was running."""
        self.stop()
        self.programs = programs

    def check_blocks(self, fs, block):
        """block: samples per DMA block; a block longer than half the watchdog cannot be scheduled safely."""
        if block * 1000 > fs * self.sup.watchdog_ms // 2:
            raise m.ProtocolError(m.E_STATE, "stimulation needs blocks of at most %d ms; this configuration's are"
                                  " %d ms (fewer samples per frame)" % (self.sup.watchdog_ms // 2, block * 1000 // fs))

    def start(self, now_index, fs, block, only=None):
        """Start all programs (or the programs whose ids are in the tuple `only`) together, from the next
        horizon on: one start index for all of them, so their phases interleave them exactly. Returns it."""
        self.check_blocks(fs, block)
        start = now_index + max(fs * _HORIZON_MS // 1000, 2 * block)
        ids = range(len(self.programs)) if only is None else only
        if only is not None and [pid for pid in ids if self.programs[pid]["kind"] == "tcmep"]:
            # pulses armed (or just delivered) inside the coming train's hold-off cannot be taken back:
            # the train waits until they are far enough behind it (at most the hold-off, 100 ms)
            before = self.sup.holdoff_before_ms * fs // 1000
            for last in self.last_index:
                if last is not None and last + before > start:
                    start = last + before
        tof_ms = self.sup.tof_interval_ms_min
        for pid in ids:  # refused before anything changes: a refused request has no effect
            prog = self.programs[pid]
            if prog["kind"] == "tof" and self.last_tof_index is not None:
                since_ms = (start - self.last_tof_index) * 1000 // fs
                if since_ms < tof_ms:
                    raise m.ProtocolError(m.E_LIMIT_RATE, "the last train-of-four was %d ms ago; at most one every"
                                          " %d ms (repeated trains fatigue the junction and misread the block)"
                                          % (since_ms, tof_ms))
            if prog["kind"] == "tcmep" and self.last_train_index is not None:
                since_ms = (start - self.last_train_index) * 1000 // fs
                if since_ms < self.sup.train_interval_ms_min:
                    raise m.ProtocolError(m.E_LIMIT_TRAIN_INTERVAL, "the last TcMEP train was %d ms ago;"
                                          " the minimum is %d ms" % (since_ms, self.sup.train_interval_ms_min))
        if self.running and only is None:
            self.stop()
        elif only is not None:  # a program started again restarts it (it never runs twice)
            self.running = [r for r in self.running if r.pid not in ids]
        self.fs = fs
        t0 = start * 1000000 // fs
        for pid in ids:
            prog = self.programs[pid]
            if prog["kind"] == "click":  # the other ear's masking noise, on until any stop (cancel_stimulation)
                self.bsp.set_masking(prog["ear"] == "L", prog["masking_db"])
                self.rarefaction_next = True
            if prog["kind"] == "tcmep":
                self.last_train_index = start  # taken now: a second request before it is armed is refused
                self.last_train_samples = _train_samples(prog, fs)
            elif prog["kind"] == "tof":
                self.last_tof_index = start  # (likewise)
            self.running.append(Running(pid, prog, t0))
        return start

    def stop(self, reason="stopped"):
        """Cancel everything armed and end every program (a hunt with `reason`). Returns the count cancelled."""
        cancelled = 0
        if self.running or self.armed:
            cancelled = self.bsp.cancel_stimulation()
        self.running = []
        self.armed = []
        if self.hunt is not None and self.hunt.reason is None:
            self.hunt.reason = reason
        return cancelled

    def tick(self, next_index, deadline_index, block, lead=0, on_arm=None):
        """Arm every pulse due before min(next_index + horizon + lead, deadline_index). The horizon covers
        at least the next block (block samples): ticks come once per block, and a pulse not armed before
        its block is read would be late. lead (samples) extends the horizon so that epoch windows are known
        before their pre-stimulus samples arrive; on_arm(index) is told of every pulse armed."""
        if not self.running:
            return
        fs = self.fs
        limit = min(next_index + max(fs * _HORIZON_MS // 1000, 2 * block) + lead, deadline_index)
        for run in self.running:
            if run.pid == HUNT_PID:  # a threshold hunt: its pulses are its own (hunt.py)
                if not run.prog["hunt"].tick(self, run, next_index, limit, on_arm):
                    return
                continue
            if run.sub and not self._arm_triggers(run, limit):
                continue  # a train under way, cut at the limit: the rest of it waits for the next tick
            while True:
                nxt = run.next_pulse()
                if nxt is None:
                    run.done = True
                    break
                t_us, current = nxt
                index = (t_us * fs + 999999) // 1000000  # the first sample at or after t
                if index >= limit:
                    break
                if index < next_index:  # a stalled loop must not fire a burst of late pulses: skip them
                    self.pulses_skipped += 1
                    run.k += 1
                    continue
                p = run.prog
                # Backstop whatever the programs say: no output pulses faster than its maximum rate, no
                # TcMEP train closer than the minimum train interval to the previous one.
                if p["kind"] == "tcmep":
                    last = self.last_train_index if run.k else None  # (start() reserved the first train)
                    gap = self.sup.train_interval_ms_min * fs // 1000
                elif p["kind"] == "click":
                    last = self.last_click_index
                    gap = fs * 1000 // self.sup.clicks[4]
                else:
                    last = self.last_index[p["output"]]
                    gap = fs * 1000 // self.sup.rate_limit_mhz(p["output"])
                if last is not None and index - last < gap:
                    self.pulses_skipped += 1
                    run.k += 1
                    continue
                if p["kind"] != "tcmep" and self._held(index):
                    self.pulses_held += 1
                    run.k += 1
                    continue
                if p["kind"] == "tcmep":
                    # A train's triggers are armed one by one up to the limit, like any pulse, so that a host
                    # that falls silent mid-train stops it at the watchdog deadline, not after the train.
                    self.last_train_index = index
                    self.last_train_samples = _train_samples(p, fs)
                    self.armed.append((index, run.pid, -1, 0))
                    self.pulses_armed += 1
                    if on_arm is not None:
                        on_arm(index)
                    run.train_at = index
                    run.sub = 0
                    if not self._arm_triggers(run, limit):
                        break
                    continue
                elif p["kind"] == "click":
                    # the earphones: no current stage, no electrode (their limits were checked on the program);
                    # alternating polarity starts with rarefaction and alternates over the clicks delivered, so a
                    # held click does not put two of one polarity in a row (the cochlear microphonic cancels)
                    pol = p["polarity"]
                    rare = pol == "rarefaction" or (pol == "alternating" and self.rarefaction_next)
                    if pol == "alternating":
                        self.rarefaction_next = not rare
                    self.bsp.arm_click(index, p["level_db"], rare, p["ear"] == "R")
                    self.last_click_index = index
                else:
                    # the DAC setting that delivers `current` (calibration gain), checked once more against
                    # every delivery limit as it is armed: a program validated before a calibration change
                    # (or any path that bypassed validation) never reaches the output stage
                    out = p["output"]
                    dac = self.sup.dac_ua(out, current)
                    err = self.sup.delivery_error(out, dac if dac > current else current, p["width_us"],
                                                  2 if p["biphasic"] else 1)
                    if err is not None:
                        self.refused = (index, out, "pulse refused as it was armed: " + err[1], "limit")
                        self.stop()
                        return
                    zerr = self.sup.impedance_error(out)  # the last measurement: probe or delivered pulse
                    if zerr is not None:
                        self.refused = (index, out, "pulse refused as it was armed: " + zerr, "impedance")
                        self.stop()
                        return
                    self.bsp.arm_pulse(index, out, dac, p["width_us"], p["biphasic"])
                    self.last_index[p["output"]] = index
                self.armed.append((index, run.pid, p["output"], current))
                self.pulses_armed += 1
                if on_arm is not None:
                    on_arm(index)
                run.k += 1
        self.running = [r for r in self.running if not r.done]

    def _arm_triggers(self, run, limit):
        """Arm the current train's triggers that fall before limit. True when the whole train is armed (the
        run moves on to its next train), False when some wait for a later tick."""
        p = run.prog
        k = run.sub
        count = p["count"]
        while k < count and run.train_at + _trigger_offset(p, k, self.fs) < limit:
            k += 1
        if k > run.sub:
            self.bsp.arm_trigger_train(run.train_at, count, p["ipi_us"], run.sub, k)
            run.sub = k
        if k < count:
            return False
        run.sub = 0
        run.k += 1
        return True

    def _held(self, index):
        """Does a pulse at sample `index` fall in the hold-off of the last train or of a coming one?"""
        fs = self.fs
        before = self.sup.holdoff_before_ms * fs // 1000
        after = self.sup.holdoff_after_ms * fs // 1000
        t = self.last_train_index
        if t is not None and t - before <= index <= t + self.last_train_samples + after:
            return True
        for run in self.running:
            p = run.prog
            if p["kind"] != "tcmep":
                continue
            nxt = run.next_pulse()  # the run's next train (not consumed: tcmep times are exact)
            if nxt is None:
                continue
            t = (nxt[0] * fs + 999999) // 1000000
            if t - before <= index <= t + _train_samples(p, fs) + after:
                return True
        return False

    def rebase(self, old_end, old_fs, new_fs, gap_ms):
        """Acquisition restarted (its sample index begins at 0 again): move the remembered pulse and train
        times onto the new clock, in the past by the time between the runs, so that the minimum intervals
        still hold across a stop and start (clearing them would let a quick restart bypass them)."""
        def conv(i):
            if i is None:
                return None
            return (i - old_end) * new_fs // old_fs - gap_ms * new_fs // 1000

        self.last_index = [conv(i) for i in self.last_index]
        self.last_train_index = conv(self.last_train_index)
        self.last_tof_index = conv(self.last_tof_index)
        self.last_click_index = conv(self.last_click_index)

    def match_latch(self, index, output):
        """(program id, requested µA) of the armed pulse a latch reports, or (-1, 0)."""
        armed = self.armed
        for i in range(len(armed)):
            a = armed[i]
            if a[2] == output and (a[0] == index or (output == TRIGGER and a[0] <= index)):
                if output == TRIGGER:  # a TcMEP train latches each of its pulses; drop the entry after the last
                    return a[1], 0
                del armed[i]
                return a[1], a[3]
        return -1, 0

    def forget_before(self, index):
        """Drop TcMEP entries whose trains are over (their pulses latch one by one)."""
        self.armed = [a for a in self.armed if a[2] != TRIGGER or a[0] + self.fs // 10 > index]
