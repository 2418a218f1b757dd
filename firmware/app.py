# The firmware's main loop: thin. It wires the board support, the ADS1299 driver, the link and the
# acquisition engine together and dispatches host requests. Host silence stops stimulation (watchdog) and,
# after HOST_LOST_MS, acquisition too, so a board left streaming to nobody does not block on a full link.
import gc
import sys

import boardcfg
import bootslot
import link
import messages as m
import storage
import version
from acquisition import Acquisition, parse_config
from ads1299 import ADS1299
from link import Link
from micropython import const
from safety import OPEN, UNKNOWN, Supervisor
from scheduler import Scheduler
from updater import Updater

HOST_LOST_MS = 2000
IDLE_WAIT_MS = 20
STATUS_EVERY_BLOCKS = 64  # a status event (heap, counters) about every 64 blocks of acquisition
# A pulse latch as the board support fills bsp.latches: u32 index, i8 output, u32 current-sense µA, u16 width
# µs, u8 flags (bit 0 biphasic, bit 1 compliance-limited), u16 compliance-voltage readback in 10 mV.
LATCH_SIZE = const(14)


def _program_ids(value, n):
    """stim-start's `program`: an index, or an array of distinct indices (the programs started together,
    from one start index, so that their phase_us interleave them as written). A tuple, or bad-field."""
    ids = value if isinstance(value, list) else [value]
    ok = 0 < len(ids) <= n
    for pid in ids if ok else ():
        if not isinstance(pid, int) or isinstance(pid, bool) or not 0 <= pid < n:
            ok = False
            break
    if not ok or len(set(ids)) != len(ids):
        raise m.ProtocolError(m.E_BAD_FIELD, "program must be an index 0..%d, or an array of distinct ones (leave"
                              " it out for all)" % (n - 1))
    return tuple(ids)


class Firmware:
    def __init__(self, bsp_module, slot=None, rolled_back=False, defn=None, arena=None):
        self.defn = defn if defn is not None else boardcfg.load()
        # The acquisition's data frame and DMA block, allocated once while the heap is whole (main.py does it
        # before loading the firmware's modules): a configuration whose two fit (16 channels at 8 kSPS and 64
        # samples per frame: 6.6 kB) never fails for fragmentation.
        if arena is None:
            arena = bytearray(self.defn["mcu"]["block_arena_bytes"])
        self.block_arena = arena
        self.bsp = bsp_module.Board(self.defn)
        self.bsp_name = bsp_module.NAME
        adc = self.defn["adc"]
        self.chips = adc["chips"]
        self.adc = ADS1299(self.bsp.adc_spi, self.bsp.adc_cs, self.bsp.adc_start, self.bsp.adc_reset,
                           self.bsp.adc_pwdn, self.bsp.sleep_us)
        self.adc.power_up()
        self.link = Link(self.bsp, self.defn["link"]["max_request_bytes"])
        self.acq = None
        self.cfg_id = 0
        self.last_host_ms = self.bsp.ticks_ms()
        self.last_host_index = 0  # acquisition sample index when the host was last heard (watchdog clock)
        self.poll_index = 0  # the sample being converted when the host link was last read
        self.calibration = storage.Calibration(self.bsp, self.defn)
        self.supervisor = Supervisor(self.defn, self.calibration)
        self.scheduler = Scheduler(self.bsp, self.supervisor)
        self.program_specs = None  # the programs as the host sent them (validated again at every stim-start)
        self.updater = Updater(self.bsp)
        self.slot = slot
        self.fw_hash = version.firmware_hash()
        self.heap_peak = 0
        self.last_run = None  # (end index, rate, ticks_ms at stop) of the previous acquisition run
        self.handlers = {
            m.HELLO: self.on_hello,
            m.GET_INFO: self.on_get_info,
            m.CONFIGURE: self.on_configure,
            m.START: self.on_start,
            m.STOP: self.on_stop,
            m.HEARTBEAT: self.on_heartbeat,
            m.STIM_PROGRAM: self.on_stim_program,
            m.STIM_START: self.on_stim_start,
            m.STIM_STOP: self.on_stim_stop,
            m.CAL_READ: self.on_cal_read,
            m.CAL_WRITE: self.on_cal_write,
            m.SELF_TEST: self.on_self_test,
            m.IMPEDANCE: self.on_impedance,
            m.HUNT: self.on_hunt,
            m.FW_BEGIN: self.on_fw_begin,
            m.FW_CHUNK: self.on_fw_chunk,
            m.FW_COMMIT: self.on_fw_commit,
            m.RESET: self.on_reset,
        }
        boot = {"kind": "boot", "firmware": version.FIRMWARE_VERSION, "schema": m.SCHEMA, "slot": slot or "base",
                "hash": self.fw_hash}
        if rolled_back:
            boot["rollback"] = True
        self.link.event(boot)

    # -- identity ------------------------------------------------------------------------------------
    def info(self):
        impl = sys.implementation
        return {
            "firmware": {"version": version.FIRMWARE_VERSION, "hash": self.fw_hash},
            "micropython": {"implementation": impl.name, "version": "%d.%d.%d" % impl.version[:3],
                            "machine": getattr(impl, "_machine", ""), "mpy": getattr(impl, "_mpy", 0)},
            "board": {"name": self.defn["name"], "revision": self.defn["revision"], "serial": self.bsp.serial(),
                      "support": self.bsp_name},
            "calibration": {"date": self.calibration.data["date"]},
        }

    def capabilities(self):
        adc = self.defn["adc"]
        lk = self.defn["link"]
        sup = self.supervisor
        return {"channels": self.chips * adc["channels_per_chip"], "rates_hz": adc["rates_hz"],
                "gains": adc["gains"], "stim_outputs": self.defn["stimulator"]["outputs"],
                "max_payload": lk["max_payload_bytes"], "max_request": lk["max_request_bytes"],
                "link_budget_bytes_per_s": lk["budget_bytes_per_s"],
                "heartbeat_interval_ms": lk["host_heartbeat_interval_ms"], "stim": sup.limits()}

    # -- requests -------------------------------------------------------------------------------------------
    def on_hello(self, rid, body):
        versions = body.get("versions", [])
        if not isinstance(versions, list) or m.VERSION not in versions:
            raise m.ProtocolError(m.E_VERSION, "board speaks protocol version %d; host offered %r"
                                  % (m.VERSION, versions))
        if "schema" in body:  # all 32 bits: the frame header carries only the low 16
            schema = body["schema"]
            if not isinstance(schema, int) or isinstance(schema, bool):
                raise m.ProtocolError(m.E_BAD_FIELD, "schema must be an unsigned integer")
            if schema != m.SCHEMA:
                raise m.ProtocolError(m.E_VERSION, "host schema 0x%08x differs from the board's 0x%08x: other"
                                      " message definitions" % (schema & 0xFFFFFFFF, m.SCHEMA))
        self.link.send([m.WELCOME, rid, {"version": m.VERSION, "schema": m.SCHEMA, "caps": self.capabilities(),
                                         "info": self.info()}])
        bootslot.confirm()  # a host got this far with the running firmware: a trial slot is kept

    def on_get_info(self, rid, body):
        self.link.send([m.INFO, rid, self.info()])

    def on_configure(self, rid, body):
        if self.acq is not None and self.acq.running:
            raise m.ProtocolError(m.E_STATE, "stop acquisition before configuring")
        cfg = parse_config(body, self.defn, (self.cfg_id + 1) & 0xFF)
        self.acq = None  # release the old buffers before allocating the new ones
        self.acq = Acquisition(self.bsp, self.adc, self.link, cfg, self.chips, self.block_arena)
        self.cfg_id = cfg.cfg_id
        self.link.ack(rid, {"cfg": cfg.cfg_id, "rate_hz": cfg.rate_hz, "channels": cfg.channels,
                            "epochs": {"pre": cfg.pre, "post": cfg.post} if cfg.post else None,
                            "gain": cfg.gains, "input": cfg.inputs, "samples_per_frame": cfg.samples_per_frame,
                            "vref_uv": int(self.defn["adc"]["vref_v"] * 1000000), "full_scale_code": 8388607,
                            "wire_bytes_per_s": cfg.wire_bytes_per_s(), "encoding": cfg.encoding,
                            "expected_bytes_per_s": cfg.expected_bytes_per_s()})

    def on_start(self, rid, body):
        if self.acq is None:
            raise m.ProtocolError(m.E_STATE, "configure before start")
        if not self.acq.running:
            if self.last_run is not None:  # the sample index restarts: keep the stimulation intervals honest
                end, fs, stopped_ms = self.last_run
                gap = self.bsp.ticks_diff(self.bsp.ticks_ms(), stopped_ms)
                self.scheduler.rebase(end, fs, self.acq.cfg.rate_hz, max(gap, 0))
            self.acq.start()
            self.poll_index = self.last_host_index = 0  # the watchdog clock restarts with the sample index
        self.link.ack(rid, {"cfg": self.acq.cfg.cfg_id})

    def on_stop(self, rid, body):
        samples = 0
        self.scheduler.stop("acquisition-stopped")
        if self.scheduler.hunt is not None:
            self.scheduler.hunt.report(self)  # stimulation is timed by the ADC clock: it cannot outlive it
        if self.acq is not None and self.acq.running:
            self.acq.stop()
            samples = self.acq.next_index
            self.last_run = (samples, self.acq.cfg.rate_hz, self.bsp.ticks_ms())
        self.link.ack(rid, {"samples": samples})

    def on_stim_program(self, rid, body):
        programs = self.supervisor.check_programs(body.get("programs"))  # all or nothing
        if not getattr(self.bsp, "HAS_AUDITORY", False) and [p for p in programs if p["kind"] == "click"]:
            raise m.ProtocolError(m.E_LIMIT_OUTPUT, "this board has no earphone driver fitted: click programs"
                                  " cannot run here")
        self.scheduler.load(programs)
        self.program_specs = body.get("programs")
        self.link.ack(rid, {"programs": len(programs)})

    def on_stim_start(self, rid, body):
        if self.acq is None or not self.acq.running:
            raise m.ProtocolError(m.E_STATE, "start acquisition first: pulses are timed by the ADC sample clock")
        if not self.scheduler.programs:
            raise m.ProtocolError(m.E_STATE, "load a stimulation program first")
        # validated again: a calibration written since stim-program changes what the outputs deliver
        self.supervisor.check_programs(self.program_specs)
        programs = self.scheduler.programs
        only = None  # absent: all programs
        if "program" in body:  # an index, or an array of distinct indices started together (null is not "all")
            only = _program_ids(body["program"], len(programs))
        fs = self.acq.cfg.rate_hz
        self.scheduler.check_blocks(fs, self.acq.writer.nsamp)
        # Every output the started programs drive is measured now, with a sub-threshold probe pulse, and
        # refused above the impedance limit before any stimulus is delivered (TcMEP triggers drive no output
        # of this board: the external stimulator measures its own electrodes).
        outputs = 0
        for pid in (range(len(programs)) if only is None else only):
            for shape in programs[pid]["shapes"]:
                outputs |= 1 << shape[0]
        for out in range(self.supervisor.n_outputs):
            if outputs >> out & 1:
                self.probe_output(out)
                err = self.supervisor.impedance_error(out)
                if err is not None:
                    raise m.ProtocolError(m.E_LIMIT_IMPEDANCE, err + ": nothing was started")
        start = self.scheduler.start(self.acq.next_index, fs, self.acq.writer.nsamp, only)
        self.link.ack(rid, {"start_index": start})

    def probe_output(self, output):
        """Measure an output's electrode impedance with the sub-threshold probe pulse (board.json
        stimulator.impedance_probe; the DAC calibrated like any pulse) and record it. Returns the ohms, OPEN
        or UNKNOWN."""
        sup = self.supervisor
        err = sup.delivery_error(output, sup.driven_ua(output, sup.probe_ua), sup.probe_us, 1)
        if err is not None:  # a board.json whose probe breaks a limit: never delivered
            raise m.ProtocolError(err[0], "impedance probe: " + err[1])
        measured, volts = self.bsp.probe_output(output, sup.dac_ua(output, sup.probe_ua), sup.probe_us)
        ohm = sup.impedance_from(sup.probe_ua, measured, volts)
        sup.note_impedance(output, ohm)
        return ohm

    def on_impedance(self, rid, body):
        """The technologist's check before a case (SPEC 5.10): firmware/impedance.py, imported for the check
        and dropped after it (the heap is tight: its code is not worth keeping for the whole case)."""
        if self.acq is not None and self.acq.running:
            raise m.ProtocolError(m.E_STATE, "stop acquisition first: the impedance check reprograms the ADC")
        import impedance

        try:
            self.link.ack(rid, impedance.check(self, body))
        finally:
            sys.modules.pop("impedance", None)
            gc.collect()

    def on_stim_stop(self, rid, body):
        self.link.ack(rid, {"cancelled": self.scheduler.stop("stopped")})

    def on_hunt(self, rid, body):
        """A threshold hunt on the probe output (SPEC 5.11): firmware/huntreq.py and hunt.py, loaded for the hunt
        and dropped when it has been reported (the heap is tight, and most cases never hunt)."""
        if self.acq is None or not self.acq.running:
            raise m.ProtocolError(m.E_STATE, "start acquisition first: hunt pulses and responses are timed by the"
                                  " ADC sample clock")
        gc.collect()
        import huntreq

        huntreq.request(self, rid, body)

    def on_cal_read(self, rid, body):
        self.link.ack(rid, self.calibration.data)

    def on_cal_write(self, rid, body):
        if self.scheduler.active:
            raise m.ProtocolError(m.E_STATE, "stop stimulation before changing the calibration")
        cal = self.calibration.store(body)
        self.link.ack(rid, {"date": cal["date"]})

    def on_self_test(self, rid, body):
        checks = []
        ids = self.adc.read_ids() if self.acq is None or not self.acq.running else []
        checks.append({"name": "adc-id", "passed": all(i & 0x1F == 0x1E for i in ids),
                       "detail": "ID registers %s" % ["0x%02x" % i for i in ids] if ids else "skipped: acquiring"})
        try:
            ok = True
            if self.acq is None or not self.acq.running:
                saved = self.adc.rreg(0, 0x05)
                for probe in (b"\x61", b"\x15"):  # two patterns, then the register as it was
                    self.adc.wreg(0, 0x05, probe)
                    ok = ok and self.adc.rreg(0, 0x05) == probe
                self.adc.wreg(0, 0x05, saved)
            checks.append({"name": "adc-registers", "passed": ok, "detail": "CH1SET write/read-back"})
        except Exception as exc:
            checks.append({"name": "adc-registers", "passed": False, "detail": str(exc)})
        gc.collect()
        free = gc.mem_free()
        checks.append({"name": "heap", "passed": free > 32768, "detail": "%d bytes free" % free})
        checks.append({"name": "board-definition", "passed": bool(self.defn.get("safety")),
                       "detail": "%s rev %s" % (self.defn["name"], self.defn["revision"])})
        checks.append({"name": "calibration", "passed": self.calibration.data["date"] is not None,
                       "detail": "calibrated %s" % self.calibration.data["date"]})
        self.link.ack(rid, {"passed": all(c["passed"] for c in checks), "checks": checks})

    def on_fw_begin(self, rid, body):
        if self.acq is not None and self.acq.running:
            raise m.ProtocolError(m.E_STATE, "stop acquisition before updating the firmware")
        self.link.ack(rid, self.updater.begin(body))

    def on_fw_chunk(self, rid, body):
        self.link.ack(rid, self.updater.chunk(body))

    def on_fw_commit(self, rid, body):
        slot, digest = self.updater.commit(bootslot.boot_record())
        self.link.ack(rid, {"slot": slot, "hash": digest})
        self.bsp.reset()  # boot the new slot as a trial

    def on_reset(self, rid, body):
        self.scheduler.stop()
        self.link.ack(rid, {})
        self.bsp.reset()

    def on_heartbeat(self, rid, body):
        pass  # any valid frame counts as host activity; heartbeats are not acknowledged (bandwidth)

    # -- loop ---------------------------------------------------------------------------------------------------
    def service_host(self):
        """Read the host's frames and handle its requests. Hearing the host (SPEC 5.6): any frame that passed
        the frame layer (header, CRC, schema), whatever its payload. Its time on the watchdog clock is the
        sample being converted when the board reads it: the hardware's clock, not the index of the last
        block processed, which lags it while the loop catches up after a stall (the cause of spurious trips
        with a live host, issue 17: a backlog of blocks made a 10 ms heartbeat gap look like 100 ms)."""
        acq = self.acq
        now = self.bsp.sample_now(acq.cfg.rate_hz) if acq is not None and acq.running else self.poll_index
        acq = None
        reader = self.link.reader
        frames = reader.frames
        msgs = self.link.poll()
        if reader.frames != frames:
            self.last_host_ms = self.bsp.ticks_ms()
            self.last_host_index = now
        self.poll_index = now
        for msg in msgs:
            mtype, rid, body = msg
            handler = self.handlers.get(mtype)
            try:
                if handler is None:
                    raise m.ProtocolError(m.E_UNKNOWN_TYPE, "unknown message type %r" % mtype)
                handler(rid, body)
            except m.ProtocolError as exc:
                self.link.error(rid, exc.code, exc.detail)
            except MemoryError:  # a request too big for the heap: refused, the board keeps running
                body = None
                gc.collect()
                self.link.error(rid, m.E_INTERNAL, link.OOM_DETAIL)
            except Exception as exc:  # a bug must not take the board down; say what happened
                self.link.error_from(rid, m.E_INTERNAL, "%s: %s", (type(exc).__name__, exc))

    def check_host(self):
        silent = self.bsp.ticks_diff(self.bsp.ticks_ms(), self.last_host_ms)
        if silent > HOST_LOST_MS and self.acq is not None and self.acq.running:
            self.scheduler.stop("host-lost")
            self.acq.stop()
            self.last_run = (self.acq.next_index, self.acq.cfg.rate_hz, self.bsp.ticks_ms())
            self.link.event({"kind": "host-lost", "silent_ms": silent, "index": self.acq.next_index})

    def after_block(self):
        """Stimulus latches of the block just read become events; faults stop stimulation."""
        acq = self.acq
        if acq is None:
            return
        sched = self.scheduler
        sup = self.supervisor
        lat = self.bsp.latches
        size = LATCH_SIZE
        for i in range(min(acq.latched, len(lat) // size)):
            o = i * size
            index = (lat[o] << 24) | (lat[o + 1] << 16) | (lat[o + 2] << 8) | lat[o + 3]
            output = lat[o + 4] - 256 if lat[o + 4] > 127 else lat[o + 4]
            measured = (lat[o + 5] << 24) | (lat[o + 6] << 16) | (lat[o + 7] << 8) | lat[o + 8]
            width = (lat[o + 9] << 8) | lat[o + 10]
            flags = lat[o + 11]
            volts = (lat[o + 12] << 8) | lat[o + 13]  # compliance-voltage readback, 10 mV units
            pid, requested = sched.match_latch(index, output)
            if output == sup.auditory_output:  # a click on the earphones: its level (dB nHL), polarity and ear
                import auditory

                self.link.event(auditory.stim_event(index, output, pid, measured, flags))
                continue
            if output < 0:  # a TcMEP trigger: no current from this board
                self.link.event({"kind": "stim", "index": index, "output": output, "program": pid,
                                 "current_ua": measured, "width_us": width, "biphasic": bool(flags & 1)})
                continue
            ohm = sup.impedance_from(requested, measured, volts)
            sup.note_impedance(output, ohm)
            self.link.event({"kind": "stim", "index": index, "output": output, "program": pid,
                             "current_ua": measured, "width_us": width, "biphasic": bool(flags & 1),
                             "impedance_ohm": ohm if ohm >= 0 else None})
            if ohm == OPEN or ohm > sup.impedance_ohm_max:
                self.stim_fault("impedance", index, output, "output %d: electrode impedance %s during stimulation,"
                                " above the limit %d ohm" % (output, "open" if ohm == OPEN else "%d ohm" % ohm,
                                                            sup.impedance_ohm_max), ohm)
            elif flags & 2:
                self.stim_fault("compliance", index, output, "output %d could not drive %d µA (delivered %d µA):"
                                " electrode impedance too high" % (output, requested, measured))
            elif output >= 0:
                err = self.supervisor.readback_error(requested, measured, width, 2 if flags & 1 else 1, output)
                if err is not None:
                    self.stim_fault("over-current", index, output, "output %d %s" % (output, err))
        if acq.latched > len(lat) // size:
            self.link.event({"kind": "latch-overflow", "lost": acq.latched - len(lat) // size})
        sched.forget_before(acq.next_index)
        if sched.hunt is not None:
            sched.hunt.scan_block(self)

    def arm(self):
        """Host silence stops stimulation (the hardware's clock past the watchdog deadline); arm what is due,
        never past that deadline."""
        acq = self.acq
        sched = self.scheduler
        if acq is None or not acq.running or not sched.active:
            return
        watchdog = self.supervisor.watchdog_ms * acq.cfg.rate_hz // 1000
        deadline = self.last_host_index + watchdog
        now = self.bsp.sample_now(acq.cfg.rate_hz)
        if now < acq.next_index:
            now = acq.next_index
        if now >= deadline:
            cancelled = sched.stop("watchdog")
            self.link.event({"kind": "watchdog", "index": now, "last_host_index": self.last_host_index,
                             "cancelled": cancelled, "detail": "no frame from the host for %d ms: stimulation stopped"
                             % self.supervisor.watchdog_ms})
            return
        if acq.epochs:
            sched.tick(acq.next_index, deadline, acq.writer.nsamp, acq.cfg.pre + acq.writer.nsamp, acq.window)
        else:
            sched.tick(acq.next_index, deadline, acq.writer.nsamp)
        if sched.refused is not None:  # a pulse broke a limit as it was armed: nothing more is delivered
            index, output, detail, fault = sched.refused
            sched.refused = None
            self.stim_fault(fault, index, output, detail)

    def status(self):
        """Heap and link counters: how close the board runs to its memory, seen from the host. Collecting
        here, every STATUS_EVERY_BLOCKS blocks, keeps GC pauses small and at a known place in the loop
        (the DMA ring absorbs them) instead of large whenever the heap happens to fill."""
        gc.collect()
        used = gc.mem_alloc()  # live data: what the firmware really needs
        if used > self.heap_peak:
            self.heap_peak = used
        acq = self.acq
        self.link.event({"kind": "status", "index": acq.next_index if acq else 0, "heap_used": used,
                         "heap_free": gc.mem_free(), "heap_peak": self.heap_peak,
                         "rx_rejected": self.link.reader.rejected_total(), "rx_bad": self.link.bad_messages,
                         "samples_lost": acq.samples_lost if acq else 0,
                         "pulses_skipped": self.scheduler.pulses_skipped,
                         "pulses_held": self.scheduler.pulses_held})

    def stim_fault(self, fault, index, output, detail, ohm=UNKNOWN):
        cancelled = self.scheduler.stop("limit" if fault == "limit" else "fault")
        ev = {"kind": "fault", "fault": fault, "index": index, "output": output, "cancelled": cancelled,
              "detail": detail + "; stimulation stopped"}
        if fault == "impedance":
            ev["impedance_ohm"] = ohm if ohm >= 0 else None
        self.link.event(ev)

    def run(self):
        while True:
            acq = self.acq
            if acq is not None and acq.running:
                acq.step()
                self.after_block()
                status = acq.blocks % STATUS_EVERY_BLOCKS == 0
                acq = None  # a configure request replaces the acquisition: its old buffers must be free to reuse
                self.service_host()  # before the watchdog looks at host silence: what has arrived counts
                self.arm()
                if self.scheduler.hunt is not None and self.scheduler.hunt.reason is not None:
                    self.scheduler.hunt.report(self)
                if status:
                    self.status()
            else:
                self.bsp.host_wait(IDLE_WAIT_MS)
                acq = None
                self.service_host()
            self.check_host()
            if self.scheduler.hunt is not None and self.scheduler.hunt.reason is not None:
                self.scheduler.hunt.report(self)
            self.bsp.feed_watchdog()


def main(slot=None, rolled_back=False, defn=None, arena=None):
    if sys.platform == "rp2":
        import bsp_rp2350 as bsp_module
    else:
        import bsp_virtual as bsp_module
    Firmware(bsp_module, slot, rolled_back, defn, arena).run()
