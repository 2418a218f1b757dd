"""The board as the console's source: sweeps from the live stream, stimulation through the firmware, and
link health. Works with the reference board or the virtual board alike (both are a serial port).

Stimulation commands are validated here against the board definition (the console's own check, for a clear
message) and then sent as firmware programs, which the board validates again: enabled SSEP outputs become
pulse programs interleaved within one period (e.g. four outputs at 4.7 Hz a quarter period apart), and the
TcMEP program is a trigger-train program started on demand or repeating.

When the board stops stimulation on its own (host silence: `watchdog` after 100 ms, `host-lost` after 2 s, which
also stops acquisition; or a reset), the host restarts what the technologist had running as soon as the board
answers again, and logs that it did (`board_events`, which the console turns into technical alarms). It does
so at most REARM_MAX times in REARM_WINDOW_S: a host that keeps starving the board gets a loud refusal, not a
loop. An output fault (impedance, compliance, over-current) is never re-armed automatically: the electrode needs
a person.

A montage with EEG channels (modality "eeg", e.g. the carotid procedure montage) also gives `eeg_source`: those
channels decimated to 250 SPS as EEG blocks for the console's EEG path (ionm.board.eegtap), from the same stream.

Before acquisition starts the board checks the electrodes (SPEC 5.10): every channel's lead impedance and
every stimulator output's; link health carries them (`lead_impedance_ohm`, `stim_impedance_ohm`), the latter
kept current by the impedance every delivered pulse measures.
"""

from __future__ import annotations

import copy
import queue
import threading
import time
from collections.abc import Iterator
from typing import Any

import numpy as np

from ionm.board.acquire import BoardSession, LiveCase, SweepSpec
from ionm.board.stimulation import DEFAULT_BAEP, SSEP_OUTPUTS, ProgramHolder, StimulationError, validate
from ionm.board.tools.impedance import GOOD_LEAD_OHM
from ionm.sweep import Sweep

RATE_HZ = 8000  # SSEP wants >= 5-10 kHz; 16 channels at 8 kHz use 80 % of the USB link budget
SAMPLES_PER_FRAME = 64
WINDOW_MS = {"ssep-upper": (5.0, 50.0), "ssep-lower": (5.0, 90.0), "mep": (45.0, 85.0)}
REARM_MAX = 3  # automatic re-arms allowed ...
REARM_WINDOW_S = 60.0  # ... within this many seconds
REARM_TRY_S = 30.0  # how long a re-arm keeps trying while the board does not answer
BOARD_EVENTS_KEPT = 200
PROBE_SETTLE_S = 0.1  # after pausing the other outputs, before the first probe pulse
HUNT_OOM_RETRIES = 3  # a hunt request refused for lack of board memory is asked again this many times ...
HUNT_OOM_PAUSE_S = 0.3  # ... after this pause
TOF_WINDOW_MS = 450.0  # recorded after each TOF pulse: its M-wave (3-15 ms) and the console's noise window (400 ms)
PROBE_PRE_MS = 40.0  # recorded before each manual probe pulse: the background the response is judged against
PROBE_WINDOW_MS = 45.0  # recorded after each manual probe pulse (a CMAP's onset is at most ~20 ms)
TOF_TIMEOUT_S = 5.0  # the 4 pulses take 1.5 s; their sweeps are cut one block after each window
STOPPED_BY = {"watchdog": "no frame from the host for 100 ms", "host-lost": "no frame from the host for 2 s "
              "(acquisition stopped too)", "recovered": "the board reset"}


def default_montage() -> list[dict[str, str]]:
    """The standard 16-channel montage (the same one the virtual patient is wired to)."""
    from ionm_hw.physiology.montage import DEFAULT_MONTAGE

    return DEFAULT_MONTAGE


def procedure_montage(name: str) -> list[dict[str, str]]:
    """A named procedure montage ("default", "carotid"; ionm_hw.physiology.montage), or ValueError naming them."""
    from ionm_hw.physiology.montage import PROCEDURE_MONTAGES

    if name not in PROCEDURE_MONTAGES:
        raise ValueError("no procedure montage %r; available: %s" % (name, ", ".join(PROCEDURE_MONTAGES)))
    return PROCEDURE_MONTAGES[name]


class BoardCase(ProgramHolder):
    def __init__(self, port: str, montage: list[dict[str, str]] | None = None,
                 program: dict[str, Any] | None = None, eeg_start_s: float | None = 0.0) -> None:
        from ionm.board.baeptap import BaepTap
        from ionm.board.eegtap import EegTap

        super().__init__(program)
        from ionm import board as board_def

        self._limits_aud_output = int(board_def.load()["stimulator"]["auditory"]["output"])
        self.montage = montage or default_montage()
        eeg = [i for i, c in enumerate(self.montage) if c.get("modality") == "eeg" and c.get("kind") == "eeg"]
        # the montage's EEG derivations, decimated from the board's stream (None: the montage records no EEG)
        self.eeg_source: EegTap | None = EegTap(eeg, [self.montage[i]["derivation"] for i in eeg], RATE_HZ,
                                                start_s=eeg_start_s) if eeg else None
        self._uv_per_count: tuple[int, np.ndarray] | None = None  # (cfg, µV per count per board channel)
        # the montage's BAEP derivations (Cz-A1, Cz-A2): clicks on the earphones, their sweeps to the BAEP path
        self._baep_channels = {c["derivation"]: i for i, c in enumerate(self.montage) if c.get("modality") == "baep"}
        self.baep_source: BaepTap | None = None
        if self._baep_channels:
            if "baep" not in self._program:
                self._program["baep"] = dict(DEFAULT_BAEP)
            b = self._program["baep"]
            self.baep_source = BaepTap(b["ear"], float(b["rate_hz"]), start_s=eeg_start_s)
        self.names = {i: "%s (%s)" % (c["derivation"], c["label"]) for i, c in enumerate(self.montage)}
        self.case = LiveCase({}, self.names)
        self._leadoff = 0
        self._board_events: list[dict[str, Any]] = []  # {seq, kind, detail, wall}: what the board did, and the host
        self._seq = 0
        self.stimulation_stopped: str | None = None  # why the board is not stimulating although the program says so
        self._rearms: list[float] = []  # monotonic times of automatic re-arms
        self._rearm_lock = threading.Lock()
        # Not the program's lock: apply() holds that while it waits for a reply, which the link's reader thread
        # delivers after the events before it.
        self._events_lock = threading.Lock()
        self._closed = False
        self._acquisition_stopped = False  # the board stopped acquisition (host-lost): start it again
        self.probe_paused = False  # a screw test or a TOF paused the other outputs (pause_for_probe)
        self._tof_sweeps: queue.Queue[Sweep] | None = None  # a TOF's sweeps, diverted from the stream
        self._probe_sweeps: queue.Queue[Sweep] | None = None  # the manual probe's, likewise
        # why the board stopped the probe session under way (watchdog, host-lost, fault, reset); None: it has not
        self._probe_stopped: str | None = None
        self.pulses_held = 0  # SSEP pulses the board held off around TcMEP trains (its status event)
        self.stim_impedance: dict[str, int | None] = {}  # site -> ohms (None: open), from the check and each pulse
        self.lead_impedance: dict[str, int | None] = {}  # channel name -> ohms at the check before the case
        self.session = BoardSession(port, on_data=self._data, on_event=self._event)
        conf = self.session.configure({"rate_hz": RATE_HZ, "samples_per_frame": SAMPLES_PER_FRAME})
        self.case.set_configuration(conf)
        self._check_impedance()  # before start: the check reprograms the ADC
        self.session.start()
        self._tcmep_index = -1
        self._load(self._program)

    # -- the console's Stimulation interface (limits and state from ProgramHolder) ---------------------------
    def apply(self, command: dict[str, Any]) -> dict[str, Any]:
        from ionm.board import link as ln

        with self._lock:
            if self.probe_paused:
                raise StimulationError("a screw test or a train-of-four is under way: the other outputs are paused "
                                       "until it ends (screw_stop ends a screw test)")
            new = validate(command, self._program, self._limits)
            if "baep" in new and new["baep"]["ear"] != self._program["baep"]["ear"]:
                raise StimulationError("the stimulated ear is chosen when the case starts (its BAEP is one stream)")
            try:
                if command.get("action") == "tcmep_train":
                    self.session.start_stimulation(self._tcmep_index)
                else:
                    self._load(new)
            except ln.BoardError as exc:  # the board's own limits refused it: say so, change nothing
                raise StimulationError("the board refused: %s" % exc.detail) from None
            self._program = new
            if command.get("action") != "tcmep_train":
                stopped, self.stimulation_stopped = self.stimulation_stopped, None  # the program is on the board again
                if command.get("action") == "resume":
                    self._log("resumed", "stimulation resumed by hand%s: %s" % (
                        " after %s" % stopped if stopped else "", ", ".join(self._running_list()) or "nothing"))
            return copy.deepcopy(new)

    def _load(self, program: dict[str, Any]) -> None:
        """Send the program to the board and start what should run."""
        programs: list[dict[str, Any]] = []
        specs: dict[int, SweepSpec] = {}
        enabled = [(int(o), v) for o, v in sorted(program["ssep"].items()) if v["enabled"]]
        for k, (o, v) in enumerate(enabled):
            rate_mhz = int(round(v["rate_hz"] * 1000))
            phase_us = int(k * 1e9 / rate_mhz / len(enabled))  # interleaved within one period
            programs.append({"kind": "pulse", "output": o, "current_ua": int(round(v["current_ma"] * 1000)),
                             "width_us": int(v["width_us"]), "rate_mhz": rate_mhz, "phase_us": phase_us})
            modality = "ssep-upper" if o < 2 else "ssep-lower"
            specs[len(programs) - 1] = self._spec(modality, SSEP_OUTPUTS[o])
        tc = program["tcmep"]
        programs.append({"kind": "tcmep", "count": int(tc["train_pulses"]), "ipi_us": int(round(tc["ipi_ms"] * 1000)),
                         "interval_ms": int(round(tc["repeat_s"] * 1000))})
        self._tcmep_index = len(programs) - 1
        specs[self._tcmep_index] = self._spec("mep", "TcMEP", train=int(tc["train_pulses"]))
        clicks = None
        b = program.get("baep")
        if b is not None and b["enabled"] and self.baep_source is not None:
            from ionm.board.baeptap import EDGE_MS, POST_MS, PRE_MS

            programs.append({"kind": "click", "output": self._limits_aud_output, "level_db": int(b["level_db"]),
                             "masking_db": int(b["masking_db"]), "polarity": b["polarity"], "ear": b["ear"],
                             "rate_mhz": int(round(b["rate_hz"] * 1000))})
            clicks = len(programs) - 1
            ipsi = "Cz-A1" if b["ear"] == "L" else "Cz-A2"  # the stimulated ear's derivation first
            chans = tuple(sorted(self._baep_channels.values(), key=lambda c: self.montage[c]["derivation"] != ipsi))
            specs[clicks] = SweepSpec("baep", "%s ear" % b["ear"], chans, PRE_MS + EDGE_MS, POST_MS + EDGE_MS,
                                      electrical=False)
        self.session.stop_stimulation()
        self.session.load_programs(programs)
        self.case.set_specs(specs)
        # one command, so one start index: started one by one, each program was timed from its own command's
        # arrival and a slow host shifted the outputs onto each other's responses
        together = list(range(len(enabled))) + ([self._tcmep_index] if tc["repeat_s"] else []) + \
            ([clicks] if clicks is not None else [])
        if together:
            self.session.start_stimulation(together)

    def _check_impedance(self) -> None:
        from ionm.board import link as ln

        try:
            reply = self.session.measure_impedance()
        except (ln.LinkError, ln.BoardError) as exc:  # the case goes on; the technologist is told
            self._log("impedance", "the electrode impedance check failed: %s" % exc)
            return
        self.lead_impedance = {self.names.get(c["channel"], str(c["channel"])): c["ohm"] for c in reply["channels"]}
        self.stim_impedance = {SSEP_OUTPUTS[o["output"]]: o["ohm"] for o in reply["outputs"]
                               if o["output"] in SSEP_OUTPUTS}

    def _spec(self, modality: str, source: str, train: int = 1) -> SweepSpec:
        pre, post = WINDOW_MS[modality]
        channels = tuple(i for i, c in enumerate(self.montage) if c["modality"] == modality)
        return SweepSpec(modality, source, channels, pre, post, train=train)

    # -- the handheld probe: screw tests (SPEC 5.11) --------------------------------------------------------
    def screw_channels(self, side: str) -> list[tuple[int, str]]:
        """The montage's muscle channels on `side` ('L'/'R'): (board channel, name as the sweeps name it)."""
        from ionm.board.hunt import muscle_channels

        return muscle_channels(self.montage, side)

    def pause_for_probe(self) -> list[str]:
        """Stop the other outputs (SSEP, a repeating TcMEP) for a screw test, returning what was paused: their
        pulses fall in the probe's response windows, and an SSEP artefact of a few hundred µV makes every channel
        "respond" near the lowest currents. stim-stop on the board; the program stays as the technologist set it,
        and resume_after_probe() loads it again."""
        with self._lock:
            self.probe_paused = True
            try:
                self.session.stop_stimulation()
            except Exception:
                self.probe_paused = False
                raise
        time.sleep(PROBE_SETTLE_S)  # the last pulse's responses (an M-wave, its F-waves) are over before the hunt
        return self._running_list()

    def resume_after_probe(self) -> None:
        """Start again what the technologist had running before the screw test."""
        with self._lock:
            try:
                self._load(copy.deepcopy(self._program))
                self.stimulation_stopped = None
            finally:
                self.probe_paused = False

    def hunt_screw(self, channels: list[int], *, hi_ma: float, p2p_uv: float, lo_ma: float = 0.5,
                   resolution_ma: float = 0.5, rate_hz: float = 5.0, stop: threading.Event | None = None) -> Any:
        """The board's threshold hunt on the probe output (BoardSession.hunt); stop_hunt() ends it.

        A board acquiring the full montage at 8 kSPS sometimes has too little heap left to load the hunt's modules
        and refuses the request with `internal: out of memory ... nothing was changed` (1 in ~8 on the virtual
        board). Nothing was delivered; the request is sent again after a pause (the board collects garbage between
        blocks), up to HUNT_OOM_RETRIES times."""
        from ionm.board import link as ln
        from ionm.protocol import messages as m

        for attempt in range(HUNT_OOM_RETRIES + 1):
            try:
                return self.session.hunt(channels, lo_ma=lo_ma, hi_ma=hi_ma, resolution_ma=resolution_ma,
                                         rate_hz=rate_hz, p2p_uv=p2p_uv)
            except ln.BoardError as exc:
                if exc.code != m.E_INTERNAL or "memory" not in exc.detail or attempt == HUNT_OOM_RETRIES or (
                        stop is not None and stop.is_set()):
                    raise
                self._log("hunt-retry", "hunt refused for lack of board memory (nothing delivered): asked again")
                time.sleep(HUNT_OOM_PAUSE_S)
        raise AssertionError("unreachable")

    def stop_hunt(self) -> None:
        """stim-stop: the hunt ends at once with what it found (the other outputs are paused already)."""
        self.session.stop_stimulation()

    # -- train-of-four (issue 20 item 5) -------------------------------------------------------------------
    def tof_channels(self) -> list[tuple[int, str]]:
        """The montage's muscle channels (both sides): (board channel, name as the sweeps name it)."""
        from ionm.board.hunt import muscle_channels

        return sorted(muscle_channels(self.montage, "L") + muscle_channels(self.montage, "R"))

    def deliver_tof(self, output: int, channel: int, *, current_ma: float, width_us: int = 200) -> dict[str, Any]:
        """The firmware's `tof` program (4 pulses at 2 Hz; the board itself refuses one sooner than
        safety.tof_interval_ms_min after the last) with the other outputs paused, as for a screw test: their pulses
        and M-waves would fall in the responses' and the noise's windows. Returns `channel`'s samples 0-450 ms
        after each pulse, end to end (µV), the pulses' indices in them, the rate and what was paused."""
        import numpy as np

        from ionm.board import link as ln

        paused = self.pause_for_probe()
        try:
            q: queue.Queue[Sweep] = queue.Queue()
            with self._lock:
                self._tof_sweeps = q
                try:
                    self.session.load_programs([{"kind": "tof", "output": int(output),
                                                 "current_ua": int(round(current_ma * 1000)),
                                                 "width_us": int(width_us)}])
                    self.case.set_specs({0: SweepSpec("tof", "TOF", (int(channel),), 0.0, TOF_WINDOW_MS)})
                    self.session.start_stimulation(0)
                except ln.BoardError as exc:  # its limits or its 15-s rule: nothing delivered
                    raise StimulationError("the board refused the train-of-four: %s" % exc.detail) from None
            sweeps: list[Sweep] = []
            end = time.monotonic() + TOF_TIMEOUT_S
            while len(sweeps) < 4:
                try:
                    sweeps.append(q.get(timeout=max(0.01, end - time.monotonic())))
                except queue.Empty:
                    raise StimulationError("the train-of-four's responses did not all arrive (%d of 4 in %.0f s)"
                                           % (len(sweeps), TOF_TIMEOUT_S)) from None
        finally:
            self._tof_sweeps = None
            self.resume_after_probe()
        n = sweeps[0].data_uv.shape[1]
        return {"samples_uv": np.concatenate([np.asarray(sw.data_uv[0], dtype=np.float64) for sw in sweeps]),
                "pulse_indices": [k * n for k in range(4)], "fs": sweeps[0].fs, "t_s": sweeps[0].t_s,
                "paused": paused}

    # -- the handheld probe, manual mode (nerve mapping; issue 20 item 4) -----------------------------------
    def run_probe(self, current_ma: float, rate_hz: float, channels: list[int], on_response: Any,
                  stop: threading.Event) -> int:
        """The firmware's `probe` program (current_ma at rate_hz on the probe output; its limits are
        safety.probe's) with the other outputs paused, until `stop`; on_response(samples µV [channel, n] of
        `channels` from 40 ms before to 45 ms after the pulse, fs, the pulse's sample in them) after each pulse.
        Returns the pulses seen."""
        from ionm.board import link as ln

        paused = self.pause_for_probe()
        pulses = 0
        try:
            q: queue.Queue[Sweep] = queue.Queue()
            with self._lock:
                self._probe_sweeps = q
                self._probe_stopped = None
                try:
                    self.session.load_programs([{"kind": "probe", "current_ua": int(round(current_ma * 1000)),
                                                 "rate_mhz": int(round(rate_hz * 1000))}])
                    self.case.set_specs({0: SweepSpec("probe", "probe", tuple(int(c) for c in channels),
                                                      PROBE_PRE_MS, PROBE_WINDOW_MS)})
                    self.session.start_stimulation(0)
                except ln.BoardError as exc:
                    raise StimulationError("the board refused the probe: %s" % exc.detail) from None
            while not stop.is_set():
                try:
                    sw = q.get(timeout=0.2)
                except queue.Empty:
                    # Nothing is delivered after a stop: a session left running would read as "no response" at
                    # a site that was never stimulated (the technologist probes again; no re-arm behind their back)
                    if self._probe_stopped is not None:
                        raise StimulationError("the board stopped the probe after %d pulse(s): %s: probe again"
                                               % (pulses, self._probe_stopped)) from None
                    continue
                pulses += 1
                on_response(sw.data_uv, sw.fs, sw.pre_samples)
        finally:
            self._probe_sweeps = None
            try:
                self.session.stop_stimulation()
            finally:
                self.resume_after_probe()
        del paused
        return pulses

    # -- the stream ---------------------------------------------------------------------------------------
    def _data(self, block: Any) -> None:
        self._leadoff = block.leadoff
        self.case.on_data(block)
        if self.eeg_source is not None:
            session = getattr(self, "session", None)  # (data arrive while the session is being opened)
            conf = session.conf_reply if session is not None else None
            if conf is None or block.cfg != conf["cfg"]:
                return  # (an old configuration's last frames, or before the session is open)
            if self._uv_per_count is None or self._uv_per_count[0] != conf["cfg"]:
                self._uv_per_count = (conf["cfg"], np.array([conf["vref_uv"] / conf["full_scale_code"] / g
                                                             for g in conf["gain"]]))
            self.eeg_source.feed(block.first_index, block.counts * self._uv_per_count[1])

    def _event(self, body: dict[str, Any]) -> None:
        self.case.on_event(body)
        kind = str(body.get("kind"))
        if kind == "stim" and "impedance_ohm" in body and body.get("output") in SSEP_OUTPUTS:
            self.stim_impedance[SSEP_OUTPUTS[body["output"]]] = body["impedance_ohm"]
            return
        if kind == "status":
            self.pulses_held = int(body.get("pulses_held", 0))
            return
        session = getattr(self, "session", None)  # (events arrive while the session is being opened)
        reset = kind == "boot" and session is not None and session.link.handshaken  # a boot mid-case
        if kind in ("watchdog", "fault", "overrun", "recovered", "host-lost", "latch-overflow") or reset:
            self._log(kind, str(body.get("detail") or _describe(body)))
        if self._probe_sweeps is not None and (kind in ("watchdog", "fault", "host-lost") or reset):
            self._probe_stopped = "%s (%s)" % (kind if not reset else "reset", body.get("detail") or _describe(body))
        if kind == "recovered" and self.session.conf_reply is not None:
            self.case.set_configuration(self.session.conf_reply)  # the reset board's configuration (new cfg id)
        if kind == "host-lost":
            self._acquisition_stopped = True  # restarted by the re-arm (it may already be waiting: watchdog)
        if kind == "fault":
            self.stimulation_stopped = "output fault: %s" % (body.get("detail") or body.get("fault"))
        elif kind in STOPPED_BY and self._running_list() and not self.probe_paused:  # (a pause resumes by itself)
            self.stimulation_stopped = STOPPED_BY[kind]
            # not on this thread: the link's reader delivers events, and a request needs it to read the reply
            threading.Thread(target=self._rearm, args=(kind,), name="ionm-rearm", daemon=True).start()

    def _log(self, kind: str, detail: str) -> None:
        with self._events_lock:
            self._seq += 1
            self._board_events.append({"seq": self._seq, "kind": kind, "detail": detail, "wall": time.time()})
            del self._board_events[:-BOARD_EVENTS_KEPT]

    def _running_list(self) -> list[str]:
        """What the technologist has running: enabled SSEP sites and a repeating TcMEP program. Read without the
        program's lock (see _events_lock): apply() replaces the program whole, never edits it in place."""
        p = self._program
        out = [SSEP_OUTPUTS[int(o)] for o, v in sorted(p["ssep"].items()) if v["enabled"]]
        if p["tcmep"]["repeat_s"]:
            out.append("TcMEP every %g s" % p["tcmep"]["repeat_s"])
        if p.get("baep") and p["baep"]["enabled"]:
            out.append("BAEP clicks %s ear %d dB nHL" % (p["baep"]["ear"], p["baep"]["level_db"]))
        return out

    def _rearm(self, why: str) -> None:
        """Restart what was running once the board answers (acquisition too after host-lost)."""
        from ionm.board import link as ln

        with self._rearm_lock:
            now = time.monotonic()
            self._rearms = [t for t in self._rearms if now - t < REARM_WINDOW_S]
            if len(self._rearms) >= REARM_MAX:
                self._log("rearm-refused", "stimulation stopped by the board %d times in %.0f s (last: %s): not "
                          "re-armed automatically; the host is overloaded or the link unreliable. Turn stimulation "
                          "on again by hand." % (len(self._rearms) + 1, REARM_WINDOW_S, STOPPED_BY[why]))
                return
            deadline = now + REARM_TRY_S
            while not self._closed:
                try:
                    if self.session.recovering.is_set():
                        raise ln.LinkError("the board is being reconfigured")
                    if self._acquisition_stopped:
                        self.session.start()
                        self._acquisition_stopped = False
                    with self._lock:  # (a screw test's pause waits for this, and this for it)
                        if self.probe_paused:  # a screw test paused the outputs: its resume loads the program
                            self._log("rearm-deferred", "stimulation not re-armed after %s: a screw test has the "
                                      "other outputs paused and restarts them when it ends" % STOPPED_BY[why])
                            return
                        self._load(copy.deepcopy(self._program))
                    break
                except (ln.LinkError, ln.BoardError) as exc:
                    if time.monotonic() > deadline:
                        self._log("rearm-failed", "stimulation could not be re-armed after %s: %s"
                                  % (STOPPED_BY[why], exc))
                        return
                    time.sleep(0.2)
            if self._closed:
                return
            self._rearms.append(time.monotonic())
            self.stimulation_stopped = None
            self._log("rearmed", "stimulation re-armed by the host after %s: %s"
                      % (STOPPED_BY[why], ", ".join(self._running_list()) or "nothing was running"))

    def link_health(self) -> dict[str, Any]:
        s = self.session.link.stats
        board = self.session.welcome["info"]["board"]
        return {
            "source": "board %s (%s)" % (board["serial"], board["support"]),
            "state": "recovering" if self.session.recovering.is_set() else "streaming",
            "samples_lost": s.samples_lost,
            "samples_received": s.samples_received,
            "frames_rejected": s.frames_rejected,
            "board_resets": s.board_resets,
            "sweeps": self.case.sweeps_cut,
            "leadoff": [self.names[i] for i in range(len(self.names)) if self._leadoff >> i & 1],
            "board_events": self._events_copy(),
            "stimulation_stopped": self.stimulation_stopped,
            "pulses_held": self.pulses_held,
            "sweeps_rejected": self.case.rejected_counts(),
            "artefacts_blanked": self.case.blanked,
            "stim_impedance_ohm": dict(self.stim_impedance),
            "lead_impedance_ohm": dict(self.lead_impedance),
            "lead_impedance_good_ohm": GOOD_LEAD_OHM,
        } | (self.eeg_source.link_health() if self.eeg_source is not None else {}) | (
            self.baep_source.link_health() if self.baep_source is not None else {})

    def _events_copy(self) -> list[dict[str, Any]]:
        with self._events_lock:
            return [dict(e) for e in self._board_events]

    # -- the console's source protocol ------------------------------------------------------------------
    def __iter__(self) -> Iterator[Sweep]:
        for sw in self.case.sweeps():
            if sw.modality == "baep":  # click-locked sweeps: to the BAEP path, as blocks
                if self.baep_source is not None:
                    self.baep_source.put(sw)
                continue
            if sw.modality in ("tof", "probe"):  # a TOF's or the probe's responses: to their caller, not a stream
                q = self._tof_sweeps if sw.modality == "tof" else self._probe_sweeps
                if q is not None:
                    q.put(sw)
                continue
            yield sw

    def close(self) -> None:
        """Stop stimulation and close the link. Idempotent: the engine closes its sources when it stops, and
        their owner closes them again."""
        if self._closed:
            return
        self._closed = True
        self.case.close()
        if self.eeg_source is not None:
            self.eeg_source.close()
        if self.baep_source is not None:
            self.baep_source.close()
        try:
            self.session.stop_stimulation()
        except Exception:  # closing after the board is gone must not raise
            pass
        self.session.close()


def _describe(body: dict[str, Any]) -> str:
    kind = body.get("kind")
    if kind == "overrun":
        return "%s samples lost inside the board (overrun)" % body.get("lost")
    if kind == "host-lost":
        return "no frame from the host for %s ms: acquisition and stimulation stopped" % body.get("silent_ms")
    if kind == "boot":
        return "the board reset (firmware %s)" % body.get("firmware")
    if kind == "latch-overflow":
        return "%s stimulus latches lost" % body.get("lost")
    return str(kind)
