"""The case engine: case state built from sweeps through the pipeline, commands, and frames for the clients.

One engine thread does everything that changes case state, in order: it takes sweeps from a queue (filled by
the source thread), runs each through its stream's Evaluator (ionm.pipeline), records it, and executes user
commands between sweeps — so there are no locks on case state. What the clients see leaves as frames: small
JSON documents, each the whole current state of one part (a stream's averages, the alerts, link health),
so a client that falls behind can skip to the newest without missing anything; only trend points, stack traces
and timeline events are incremental (see server.Hub). What they carry is bounded as the page draws it
(ionm.console.display): compact traces, no waveform of a hidden channel, the baseline in a frame of its own;
the alerts grouped per channel, only the newest listed one by one (ionm.console.alerts).

A stream is one stimulated site (modality/source, e.g. "ssep-lower/L tibial"); each has its own Evaluator.
Baselines are set on demand (B): a new Evaluator is fed the stream's recent raw sweeps and its baseline set on
a background thread (set_baseline costs ~1 s per stream, longer than a sweep period), then caught up with the
sweeps that arrived meanwhile and swapped in. The same mechanism re-baselines and, after a restart, rebuilds the
baselines recorded in the store from the recorded sweeps.

Sources are swappable: any iterable of ionm.sweep.Sweep, optionally with link_health() -> dict and close().

Free-running EMG (run_emg_source: an iterable of ionm.sweep.EmgBlock) takes a path of its own
(ionm.console.freerun): each block is turned into sound on the source's thread as it arrives and handed to the
audio subscribers at once; the engine thread then analyses it (events to the timeline, the store and, for the
cumulative A-train time of a facial channel, an alert) and sends its display columns.
"""

from __future__ import annotations

import concurrent.futures as cf
import functools
import json
import math
import queue
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np

from ionm.board.stimulation import Stimulation, StimulationError
from ionm.case.store import CaseStore
from ionm.case.timeline import (
    SURGICAL_EVENTS,
    alert_label,
    describe_stim,
    describe_surgical_event,
    fmt_case_time,
    short_name,
    timeline_from_store,
)
from ionm.console.alerts import AlertBoard
from ionm.console.display import (
    STACK_DIGITS,
    STACK_POINTS,
    STACK_SHOWN,
    append_trend,
    bounded_snapshot,
    compact_trend,
    trace,
)
from ionm.console.technical import EEG_HELD_S, STALL_S, Alarm, TechnicalAlarms
from ionm.sweep import BaepBlock, EegBlock, EmgBlock, Sweep

ROLES = ("technologist", "physician", "read-only")
PERMISSIONS: dict[str, set[str]] = {
    "technologist": {"baseline", "ack", "note", "stim", "peak", "close", "screw_test", "screw_stop", "tof",
                     "tof_every", "probe", "probe_stop", "emg_warning", "mark"},
    "physician": {"ack", "note"},
    "read-only": set(),
}
DISPLAY_POINTS = 400  # samples per displayed trace: enough for a 400 px wide plot
STACK_EVERY_S = 10.0  # case seconds between traces of the waveform stack (and stored averages)
STACK_DEPTH = STACK_SHOWN  # the stack traces a viewer keeps (ionm.console.display)
TREND_EVERY_S = 1.0  # case seconds between trend points per stream
# Recent sweeps a baseline is built from. MEP: 12 trials (48 s at a train every 4 s). A hand muscle's trials
# scatter with a CV of ~48 %, so the median of 6 is known to ~±23 % (log SD), and a baseline that high read
# anaesthetic fade to 65 % as an 80 % drop; 12 give a third of the false alerts at that fade and detect a deep drop
# as fast (tools/mep_baseline_trials.py, docs/EVALUATION.md).
BASELINE_SWEEPS = {"mep": 12, "ssep": 400}
# A baseline that leaves channels untracked keeps collecting up to this many sweeps (SSEP: ~4 min at 4.7 Hz),
# then completes by itself; a channel that would need more is reported as not reproducible.
BASELINE_SWEEPS_MAX = {"mep": 15, "ssep": 1200}
BASELINE_EXTENSIONS_MAX = 8  # automatic rebuilds per baseline request (each one's estimate is better)
LINK_EVERY_S = 1.0
TECHNICAL_EVERY_S = 0.25  # how often the technical alarms are checked (wall s)
PUBLISH_EVERY_S = 0.1  # when sweeps queue up (fast replay), frames at least this often
CLOCK_BACKSTEP_S = 1.0  # a source's time going back further than this (any stream) is a restarted clock
CLOCK_GAP_MIN_S = 0.5  # case time put between the last sweep before a clock restart and the first after it
# Screw tests (the handheld probe's threshold hunt, SPEC 5.11; ionm.pipeline.screws reads the result)
SCREW_LO_MA = 0.5
SCREW_RESOLUTION_MA = 0.5
SCREW_RATE_HZ = 5.0
SCREW_HI_MA = 20.0  # default top of the hunt: above every default rule's bounds (4, 6, 8, 12 mA)
SCREW_P2P_UV = 100.0  # default response criterion, as the commercial systems'
SCREW_SHOWN = 40  # results a viewer is sent (the store and the report have every one)
SCREW_RESUME_GRACE_S = 3.0  # after the other outputs resume, before a silent stream counts as stalled
# a dynamic screw test hunts again after the board stopped a hunt for host silence, at most this many times in a
# row (the probe is still on the tool; more in a row is a link that needs the technologist, and the test ends)
SCREW_DYNAMIC_SILENCE_RETRIES = 3
# Train-of-four (issue 20 item 5): 4 pulses at 2 Hz on a stimulator output, the 4 M-waves on one muscle channel
# (ionm.pipeline.tof). At most one per TOF_INTERVAL_S of case time (board.json safety.tof_interval_ms_min, which
# the firmware enforces on its own clock too); count < tof.UNRELIABLE_BELOW makes MEP and EMG unreliable.
# The manual probe (issue 20 item 4): pulses at a set current and rate until probe_stop, each response measured
PROBE_RATE_HZ = 2.0
PROBE_P2P_UV = 100.0  # a response is present at this peak to peak (the screw tests' criterion)
PROBE_MEASURE_MS = (3.0, 40.0)  # after the pulse: past its artefact, to the end of a CMAP
PROBE_NOISE_FACTOR = 2.0  # ... and this times the background's peak to peak before the pulse
PROBE_PRESENT_FRACTION = 0.5  # a session's response: present on at least this fraction of its pulses ...
PROBE_REPEATS_MIN = 2  # ... and on at least this many
PROBE_MAX_S = 300.0  # wall seconds a session may run before it stops by itself
PROBE_SHOWN = 40
TOF_WIDTH_US = 200
TOF_CURRENT_MA = 25.0  # when the output has no SSEP current set
TOF_NOISE_UV = 50.0  # the lowest noise floor of a response (ionm.pipeline.tof's default) ...
TOF_NOISE_FACTOR = 3.0  # ... or this times the peak to peak of the same window TOF_NOISE_AFTER_S after each pulse
TOF_NOISE_AFTER_S = 0.4
TOF_SHOWN = 120  # results a viewer is sent (the trend); the store and the report have every one
MUSCLE_MODALITIES = ("mep", "emg")  # alerts that carry the TOF state when the last count is below 2
EMG_QUEUE_BLOCKS = 3000  # free-run blocks waiting for the engine thread: 60 s of 20-ms blocks before the source waits
EMG_PUBLISH_S = 0.1  # display columns go out at least this much at a time (case s)
NEURO_QUEUE_BLOCKS = 400  # EEG / BAEP blocks waiting for the engine thread (100 s of EEG) before a source waits
NEURO_BLOCKS_PER_STEP = 40  # at most this many analysed per engine step, so that commands and sweeps are not starved


def tof_interval_s() -> float:
    from ionm import board

    return float(board.load()["safety"]["tof_interval_ms_min"]) / 1000.0


class CommandError(Exception):
    pass


def _num(v: Any, digits: int = 3) -> float | None:
    try:
        f = float(v)
    except (TypeError, ValueError):
        return None
    return round(f, digits) if math.isfinite(f) else None


def _merge_columns(cols: list[dict[str, Any]]) -> dict[str, Any]:
    """Consecutive free-run display items as one (their columns follow each other)."""
    if len(cols) == 1:
        return cols[0]
    return {"k": "emg", "t0": cols[0]["t0"], "dt": cols[0]["dt"],
            "lo": [sum((c["lo"][i] for c in cols), []) for i in range(len(cols[0]["lo"]))],
            "hi": [sum((c["hi"][i] for c in cols), []) for i in range(len(cols[0]["hi"]))]}


def decimate(x: np.ndarray, points: int = DISPLAY_POINTS) -> tuple[np.ndarray, int]:
    """[..., n] -> [..., <= points] by block means (keeps peak latency within a block); returns the step."""
    step = max(1, int(math.ceil(x.shape[-1] / points)))
    m = x.shape[-1] // step * step
    return x[..., :m].reshape(*x.shape[:-1], -1, step).mean(axis=-1), step


@dataclass
class Stream:
    key: str
    modality: str
    source: str
    fs: float
    pre: int
    n: int
    names: list[str]
    channels: tuple[int, ...]
    evaluator: Any
    display_cond: Any  # stateless conditioning for the single-trial (MEP) display
    show: list[bool]
    seq: int = 0
    rejected: int = 0
    recent: deque[tuple[float, np.ndarray]] = field(default_factory=deque)
    baseline: dict[str, Any] | None = None
    baseline_pending: bool = False
    catchup: list[tuple[float, np.ndarray]] | None = None
    # a baseline still collecting for untracked channels or refining weak ones: {user, t_req, first_t, extension,
    # names (both), refining (the weak ones), have (sweeps since first_t), due_n (sweeps it waits for), due_t (about
    # when, case s; NaN: rate unknown), eta}
    collecting: dict[str, Any] | None = None
    stack: deque[dict[str, Any]] = field(default_factory=lambda: deque(maxlen=STACK_DEPTH))
    last_stack_t: float = -math.inf
    last_trend_t: float = -math.inf
    t_s: float = 0.0
    last_trial: np.ndarray | None = None  # MEP: the newest conditioned trial
    last_mep: Any = None
    last_tracker: Any = None
    states: list[str] = field(default_factory=list)
    dirty: bool = False
    arr0: float | None = None  # arrival (wall) of the oldest sweep not yet in a published frame
    arr1: float = 0.0


class CaseEngine:
    """Case state for one case of the store. Feed it with run_source() (or put_sweep()), command it with submit(),
    listen with subscribe()."""

    def __init__(self, store: CaseStore, case_id: int, *, stimulation: Stimulation | None = None,
                 link_health: Callable[[], dict[str, Any]] | None = None, auto_baseline_s: float | None = None,
                 queue_size: int = 2048, evaluator_config: Any = None, record: bool = True,
                 stall_alarm_s: float = STALL_S, probe: Any = None, screw_rules: Any = None,
                 a_train_warn_s: float | None = None):
        self.store = store
        self.case_id = int(case_id)
        self.case = store.case(case_id)
        self.stimulation = stimulation
        self.link_health = link_health
        self.auto_baseline_s = auto_baseline_s
        self.evaluator_config = evaluator_config
        self.record = record  # False for replays into a scratch store that must not grow (not used by default)
        self.streams: dict[str, Stream] = {}
        self.alerts = AlertBoard()  # grouped per channel, bounded as viewers are sent it (ionm.console.alerts)
        self.timeline: list[dict[str, Any]] = []
        self.trend: dict[str, list[dict[str, Any]]] = {}
        self.link: dict[str, Any] = {}
        self.technical = TechnicalAlarms(stall_s=stall_alarm_s)
        self._last_technical = 0.0
        self.paused_source = False
        self.t_s = 0.0
        self.stats: dict[str, Any] = {"sweeps": 0, "frames": 0, "engine_latency_ms": deque(maxlen=2000)}
        self._sweeps: queue.Queue[Sweep | None] = queue.Queue(maxsize=queue_size)
        self._arrivals: dict[int, float] = {}
        self._commands: queue.SimpleQueue[tuple[Callable[[], Any], cf.Future[Any]]] = queue.SimpleQueue()
        self._subscribers: list[Callable[[list[tuple[str, str, float | None]], list[str]], None]] = []
        self._baseline_jobs: queue.SimpleQueue[Callable[[], None]] = queue.SimpleQueue()
        self._running = False
        self._source_done = threading.Event()
        self._thread: threading.Thread | None = None
        self._bl_thread: threading.Thread | None = None
        self._last_publish = 0.0
        self._last_link = 0.0
        self._alert_seq = 0
        self._timeline_seq = 0
        self._sources: list[Any] = []
        self.errors: deque[str] = deque(maxlen=100)
        self._schedule: list[tuple[float, Callable[[], None]]] = []  # (case time, action): replays
        # Case time = source time + offset. A board counts samples from its boot, so after a board reset or a
        # console restart its sweeps start again near 0; the offset keeps the case clock going forward.
        self.clock_offset_s = 0.0
        self._last_sweep_wall: float | None = None  # wall clock of the newest sweep recorded
        # Screw tests: the source's probe (screw_channels, hunt_screw, and on a board pause_for_probe,
        # resume_after_probe, stop_hunt), the regional rules, the results, the test under way.
        from ionm.pipeline import screws as sc

        self.probe = probe
        self.screw_rules = tuple(screw_rules) if screw_rules is not None else sc.DEFAULT_RULES
        self.screws: list[dict[str, Any]] = []
        self._screw_job: dict[str, Any] | None = None
        self._screw_seq = 0
        self._screw_job_seq = 0
        self._probe_pause_until = 0.0  # wall: until then the paused streams are not expected to deliver
        # Train-of-four: the results, the TOF under way, the last one's case time (the 15-s rule), the unblocked
        # T1 per (output, channel) (the first TOF with all four responses), the automatic repeat.
        self.tofs: list[dict[str, Any]] = []
        self._tof_job: dict[str, Any] | None = None
        self._tof_last_t = -math.inf
        self._tof_ref: dict[tuple[int, int], float] = {}
        self._tof_every: dict[str, Any] | None = None
        self._tof_seq = 0
        self.tof_interval_s = tof_interval_s()
        self.probes: list[dict[str, Any]] = []  # manual probe sessions' records
        self._probe_job: dict[str, Any] | None = None
        self._probe_seq = 0
        # Free-running EMG (ionm.console.freerun): the monitor (made with the first block), blocks waiting for the
        # engine thread (never dropped), the sound's listeners, display columns not yet sent.
        from ionm.console import freerun

        self.a_train_warn_s = float(a_train_warn_s if a_train_warn_s is not None else freerun.A_TRAIN_WARN_S)
        self.emg: freerun.FreeRunMonitor | None = None
        self._emg_blocks: queue.Queue[tuple[EmgBlock, np.ndarray]] = queue.Queue(maxsize=EMG_QUEUE_BLOCKS)
        self._emg_sources: list[Any] = []
        self._emg_done = threading.Event()
        self._emg_last_wall: float | None = None  # wall clock of the newest block from the source
        self._emg_restore: tuple[list[dict[str, Any]], list[str]] = ([], [])
        self._emg_columns: list[dict[str, Any]] = []
        self._emg_dirty = False
        self._audio_subscribers: list[Callable[[dict[str, Any], np.ndarray], None]] = []
        self.stats["emg_blocks"] = 0
        self.stats["emg_behind_max_s"] = 0.0  # the most the analysis has been behind the source (s)
        self.stats["emg_columns_skipped"] = 0  # display columns not sent while the analysis caught up
        # EEG and BAEP (ionm.console.eeg, ionm.console.baep): each view made with its source's first block; the blocks
        # of both wait for the engine thread in one queue (never dropped), with their arrival's wall clock.
        from ionm.console.baep import BaepView
        from ionm.console.eeg import EegView

        self.eeg: EegView | None = None
        self.baep: BaepView | None = None
        self._neuro_blocks: queue.Queue[tuple[str, float, EegBlock | BaepBlock]] = queue.Queue(
            maxsize=NEURO_QUEUE_BLOCKS)
        self._neuro_sources: dict[str, tuple[Any, threading.Event]] = {}  # stream -> (source, ended)
        self._neuro_streams: set[str] = set()  # streams recorded in the store's streams table
        self._eeg_seq = 0  # EEG records stored
        self._eeg_restore: dict[str, Any] | None = None  # a resumed case's EEG, run through again on its first block
        self.eeg_recorded_baselines: list[dict[str, Any]] = []  # a replay: the record's EEG baselines, set again
        self._baep_restore: list[tuple[float, str, np.ndarray]] = []  # a resumed case's BAEP averages (its stack)
        self._baep_shown: float | None = None  # case time of the BAEP average last sent
        self.eeg_end_s = 0.0  # a resumed case: the end of its recorded EEG, where an EEG source should go on
        self.clamp: dict[str, Any] | None = None  # {"clamp_s", "shunt_s"} from the clamp on to the clamp off
        self.stats["neuro_blocks"] = 0

    # ================================================================ lifecycle
    def start(self) -> None:
        # Import the pipeline now (scipy takes a second): not on the first sweep, where it would delay the view.
        from ionm.pipeline import conditioning, evaluator  # noqa: F401

        self._running = True
        self._thread = threading.Thread(target=self._loop, name="case-engine", daemon=True)
        self._thread.start()
        self._bl_thread = threading.Thread(target=self._baseline_loop, name="case-baselines", daemon=True)
        self._bl_thread.start()

    def stop(self) -> None:
        if self._probe_job is not None:
            self._probe_job["stop"].set()
        job = self._screw_job
        if job is not None:
            job["stop"].set()
            stop_hunt = getattr(self.probe, "stop_hunt", None)
            if stop_hunt is not None:
                try:
                    stop_hunt()
                except Exception:  # stopping: the board may be gone
                    pass
        for src in self._sources + self._emg_sources + [v[0] for v in self._neuro_sources.values()]:
            close = getattr(src, "close", None)
            if close:
                close()
        self._running = False
        if self._thread:
            self._thread.join(timeout=10)
        self._baseline_jobs.put(lambda: None)
        self.store.flush()

    def run_source(self, source: Iterable[Sweep]) -> threading.Thread:
        """Iterate the source on its own thread, feeding the engine (blocking when the queue is full, which only
        a faster-than-real-time source can fill)."""
        self._sources.append(source)
        self._source_done.clear()

        def pump() -> None:
            try:
                for sw in source:
                    if not self._running:
                        break
                    self.put_sweep(sw)
            finally:
                self._source_done.set()

        t = threading.Thread(target=pump, name="sweep-source", daemon=True)
        t.start()
        return t

    def run_emg_source(self, source: Iterable[EmgBlock]) -> threading.Thread:
        """Iterate a free-run EMG source on its own thread (put_emg for each block)."""
        self._emg_sources.append(source)
        self._emg_done.clear()

        def pump() -> None:
            try:
                for block in source:
                    if not self._running:
                        break
                    self.put_emg(block)
            finally:
                self._emg_done.set()

        t = threading.Thread(target=pump, name="emg-source", daemon=True)
        t.start()
        return t

    def put_emg(self, block: EmgBlock) -> None:
        """A block of free-running EMG (the source's thread): its sound goes to the audio subscribers now, before
        any analysis; the block waits for the engine thread (blocking only when EMG_QUEUE_BLOCKS are waiting)."""
        from ionm.console import freerun

        if self.emg is None:
            mon = freerun.FreeRunMonitor(block.fs, block.channel_names, warn_s=self.a_train_warn_s)
            mon.restore(*self._emg_restore)
            self.emg = mon
        hp = self.emg.audio.filtered(block)
        if self._audio_subscribers:
            pcm = self.emg.audio.pcm(hp)
            meta = {"t_s": block.t_s, "index0": block.first_index // self.emg.audio.factor,
                    "wall0": block.acquired_wall - (block.n - 1) / block.fs}
            for cb in self._audio_subscribers:
                cb(meta, pcm)
        self._emg_last_wall = time.time()
        self._emg_blocks.put((block, hp))

    def run_eeg_source(self, source: Iterable[EegBlock], stream: str | None = None) -> threading.Thread:
        """Iterate an EEG source (ionm.sweep.EegBlock) on its own thread; its blocks are analysed on the engine's."""
        from ionm.console.eeg import STREAM

        return self._run_neuro(source, stream or STREAM)

    def run_baep_source(self, source: Iterable[BaepBlock], stream: str | None = None) -> threading.Thread:
        """Iterate a BAEP source (ionm.sweep.BaepBlock) on its own thread; its blocks are analysed on the engine's."""
        from ionm.console.baep import stream_key

        return self._run_neuro(source, stream or str(getattr(source, "stream", stream_key("L"))))

    def _run_neuro(self, source: Iterable[Any], stream: str) -> threading.Thread:
        done = threading.Event()
        self._neuro_sources[stream] = (source, done)

        def pump() -> None:
            try:
                for block in source:
                    if not self._running:
                        break
                    self._neuro_blocks.put((stream, time.time(), block))
            except Exception as exc:  # a failed source is not an ended one: its stream stays expected, so the stall
                self.errors.append(repr(exc))  # alarm says the monitoring stopped
                self.store.audit(self.case_id, "system", "source.error", {"stream": stream, "error": repr(exc)})
                return
            done.set()

        t = threading.Thread(target=pump, name="source-" + stream, daemon=True)
        t.start()
        return t

    def subscribe_audio(self, callback: Callable[[dict[str, Any], np.ndarray], None]) -> None:
        """callback(meta, pcm) on the free-run source's thread for every block: meta {t_s, wall0, index0}, pcm int16
        [channels, samples] at ionm.console.freerun.AUDIO_RATE_HZ. It must not block."""
        self._audio_subscribers.append(callback)

    def at(self, t_s: float, action: Callable[[], None]) -> None:
        """Run action on the engine thread once the case reaches t_s (a replay re-enacts recorded baselines and
        shows recorded notes when they happened). Call before start()."""
        self._schedule.append((float(t_s), action))
        self._schedule.sort(key=lambda x: x[0])

    def put_sweep(self, sweep: Sweep) -> None:
        self._arrivals[id(sweep)] = time.time()
        self._sweeps.put(sweep)

    def subscribe(self, callback: Callable[[list[tuple[str, str, float | None]], list[str]], None]) -> None:
        """callback(frames, appends) on the engine thread: frames are (key, json, arrival of the oldest sweep in
        it or None), appends json strings. It must not block (the server hands them to its event loop)."""
        self._subscribers.append(callback)

    def wait_idle(self, timeout: float = 60.0) -> bool:
        """Until the source is exhausted and every queued sweep processed (tests, replays), and so are the EEG and
        BAEP sources and their blocks."""
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            if self._source_done.is_set() and self._sweeps.empty() and not any(
                    s.baseline_pending for s in self.streams.values()) and all(
                    done.is_set() for _, done in self._neuro_sources.values()) and self._neuro_blocks.empty():
                return self.call(lambda: True, timeout=max(0.1, end - time.monotonic()))
            time.sleep(0.02)
        return False

    # ================================================================ commands
    def submit(self, user: str, role: str, msg: dict[str, Any]) -> cf.Future[Any]:
        """A user command, executed on the engine thread between sweeps; the future holds the reply."""
        return self._submit(lambda: self._command(user, role, msg))

    def call(self, fn: Callable[[], Any], timeout: float = 30.0) -> Any:
        """Run fn on the engine thread and return its result (tests, snapshots)."""
        return self._submit(fn).result(timeout)

    def _submit(self, fn: Callable[[], Any]) -> cf.Future[Any]:
        fut: cf.Future[Any] = cf.Future()
        self._commands.put((fn, fut))
        return fut

    def _command(self, user: str, role: str, msg: dict[str, Any]) -> dict[str, Any]:
        cmd = str(msg.get("cmd", ""))
        if cmd not in PERMISSIONS.get(role, set()):
            self.store.audit(self.case_id, user, "denied", {"cmd": cmd, "role": role})
            raise CommandError("%s may not %s" % (role, cmd or "do that"))
        if cmd == "note":
            text = str(msg.get("text", "")).strip()
            if not text:
                raise CommandError("empty note")
            now = self.now_s()
            self.store.add_note(self.case_id, now, user, text)
            self.store.audit(self.case_id, user, "note", {"t_s": now, "text": text})
            self._event("note", text, user, t_s=now)
            return {"t_s": now}
        if cmd == "ack":
            return self._ack(user, str(msg.get("alert", "")), str(msg.get("note", "")).strip(),
                             bool(msg.get("group")))
        if cmd == "baseline":
            if msg.get("stream") and str(msg["stream"]).split("/")[0] in ("eeg", "baep"):
                return {"streams": [self._neuro_baseline(str(msg["stream"]), user)]}
            keys = [str(msg["stream"])] if msg.get("stream") else list(self.streams)
            started = [k for k in keys if k in self.streams and self.request_baseline(k, user)]
            if not msg.get("stream"):  # all streams: EEG and BAEP too, those that can have one now
                for k in self._neuro_keys():
                    try:
                        started.append(self._neuro_baseline(k, user))
                    except CommandError:
                        pass
            if not started:
                raise CommandError("no stream to set a baseline on (no sweeps yet, or one is being set)")
            return {"streams": started}
        if cmd == "stim":
            return self._stim(user, dict(msg.get("command") or {}), bool(msg.get("confirmed")))
        if cmd == "peak":
            return self._peak(user, msg)
        if cmd == "screw_test":
            return self._screw_test(user, msg)
        if cmd == "screw_stop":
            return self._screw_stop(user)
        if cmd == "tof":
            return self._tof(user, msg)
        if cmd == "tof_every":
            return self._tof_every_cmd(user, msg)
        if cmd == "probe":
            return self._probe_cmd(user, msg)
        if cmd == "probe_stop":
            return self._probe_stop_cmd(user)
        if cmd == "emg_warning":
            return self._emg_warning(user, float(msg["s"]))
        if cmd == "mark":
            return self._mark(user, str(msg.get("event", "")))
        if cmd == "close":
            self.store.close_case(self.case_id, user, str(msg.get("note", "")))
            self._event("event", "case closed", user)
            return {"closed": True}
        raise CommandError("unknown command %r" % cmd)

    def _ack(self, user: str, uid: str, note: str, group: bool = False) -> dict[str, Any]:
        """Acknowledge an alert; with group, also every unacknowledged alert of its channel raised before it (one
        note for all; each in the store and the audit trail; one timeline line and one alerts frame)."""
        members = self.alerts.to_acknowledge(uid, group)
        if not members:
            known = self.alerts.known(uid)
            if known is None:
                rows = self.store.query("SELECT user FROM acks WHERE case_id = ? AND alert_uid = ?",
                                        (self.case_id, uid))
                if rows:  # acknowledged long ago: no longer held, but in the store
                    raise CommandError("alert already acknowledged by %s" % rows[0][0])
                raise CommandError("no alert %r" % uid)
            raise CommandError("alert already acknowledged by %s" % known["ack"]["user"])
        if not note:
            raise CommandError("an acknowledgement needs a note (what was done, who was told)")
        for a in members:
            self.store.add_ack(self.case_id, a["uid"], self.now_s(), user, note)
            self.store.audit(self.case_id, user, "ack", {"alert": a["uid"], "note": note, "t_s": self.now_s()})
        self.alerts.acknowledge(members, {"user": user, "note": note, "wall": time.time(), "t_s": self.now_s()})
        last = members[-1]
        more = " (%d alerts of this channel)" % len(members) if len(members) > 1 else ""
        self._event("ack", "%s: %s%s" % (last["label"], note, more), user)
        self._publish_alerts()
        return {"alert": uid, "count": len(members)}

    def _stim(self, user: str, command: dict[str, Any], confirmed: bool) -> dict[str, Any]:
        if self.stimulation is None:
            raise CommandError("no stimulator connected")
        if command.get("action") == "tcmep_train" and not confirmed:
            raise CommandError("a TcMEP train needs confirmation (bite block in place, surgeon warned)")
        try:
            state = self.stimulation.apply(command)
        except StimulationError as exc:
            self.store.audit(self.case_id, user, "stim.refused", {"command": command, "reason": str(exc)})
            raise CommandError(str(exc)) from None
        self.store.add_program(self.case_id, self.t_s, user, "stimulation", {"command": command, "program": state})
        self.store.audit(self.case_id, user, "stim", {"command": command})
        self._event("stim", describe_stim(command), user)
        self._publish_stim()
        return {"program": state}

    # ---------------------------------------------------------------- screw tests
    def _screw_refuse(self, user: str, msg: dict[str, Any], reason: str) -> CommandError:
        self.store.audit(self.case_id, user, "screw_test.refused",
                         {"request": {k: v for k, v in msg.items() if k != "req"}, "reason": reason})
        return CommandError(reason)

    def _screw_test(self, user: str, msg: dict[str, Any]) -> dict[str, Any]:
        """Test a screw: the probe's threshold hunt on the muscle channels of its side, in a thread of its own (a
        hunt takes seconds; the engine goes on); each result is recorded by _screw_result on the engine thread.
        Every value is checked before anything is delivered."""
        from ionm.board.hunt import HuntError, request_body
        from ionm.pipeline import screws as sc

        if self.probe is None or not hasattr(self.probe, "hunt_screw"):
            raise self._screw_refuse(user, msg, "no probe on this source: screw tests need the board or the "
                                     "simulated patient")
        if self._tof_job is not None:
            raise self._screw_refuse(user, msg, "a train-of-four is under way (1.5 s)")
        if self._probe_job is not None:
            raise self._screw_refuse(user, msg, "a probe session is under way: probe_stop ends it")
        if self._screw_job is not None:
            j = self._screw_job
            raise self._screw_refuse(user, msg, "a screw test is under way (%s %s): screw_stop ends it"
                                     % (j["level"], sc.SIDES[j["side"]]))
        try:
            level, side = sc.parse_level(msg.get("level")), sc.parse_side(msg.get("side"))
        except sc.RuleError as exc:
            raise self._screw_refuse(user, msg, str(exc)) from None
        hi_ma, p2p_uv = msg.get("hi_ma", SCREW_HI_MA), msg.get("p2p_uv", SCREW_P2P_UV)
        for name, v, lo, hi in (("hi_ma", hi_ma, SCREW_LO_MA, math.inf), ("p2p_uv", p2p_uv, 10.0, 10000.0)):
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) or not lo <= v <= hi:
                raise self._screw_refuse(user, msg, "%s must be a finite number %g..%g (got %r)" % (name, lo, hi, v))
        try:  # the probe's limits (board.json safety.probe), as the board would check them
            request_body([0], lo_ma=SCREW_LO_MA, hi_ma=float(hi_ma), resolution_ma=SCREW_RESOLUTION_MA,
                         rate_hz=SCREW_RATE_HZ, p2p_uv=float(p2p_uv))
        except HuntError as exc:
            raise self._screw_refuse(user, msg, str(exc)) from None
        channels = list(self.probe.screw_channels(side))
        if not channels:
            raise self._screw_refuse(user, msg, "no muscle channel on the %s side in this montage" % sc.SIDES[side])
        self._screw_job_seq += 1
        job: dict[str, Any] = {"id": self._screw_job_seq, "user": user, "level": level, "side": side,
                               "dynamic": bool(msg.get("dynamic")), "hi_ma": float(hi_ma), "p2p_uv": float(p2p_uv),
                               "channels": channels, "stop": threading.Event(), "hunts": 0, "paused": [],
                               "lowest": None, "colour": None, "t_s": self.t_s}
        self._screw_job = job
        self.store.audit(self.case_id, user, "screw_test", {
            "level": level, "side": side, "dynamic": job["dynamic"], "hi_ma": job["hi_ma"], "p2p_uv": job["p2p_uv"],
            "channels": [n for _, n in channels], "t_s": round(self.t_s, 3)})
        if job["dynamic"]:
            self._event("screw", "dynamic screw test %s %s started (until stopped)" % (level, sc.SIDES[side]), user)
        threading.Thread(target=self._screw_run, args=(job,), name="screw-test", daemon=True).start()
        self._publish_screws()
        return {"test": job["id"], "level": level, "side": side, "dynamic": job["dynamic"],
                "channels": [n for _, n in channels]}

    def _screw_stop(self, user: str) -> dict[str, Any]:
        job = self._screw_job
        if job is None:
            raise CommandError("no screw test under way")
        job["stop"].set()
        stop_hunt = getattr(self.probe, "stop_hunt", None)
        if stop_hunt is not None:  # the board's hunt ends at once (stim-stop); not on the engine thread
            threading.Thread(target=stop_hunt, name="screw-stop", daemon=True).start()
        self.store.audit(self.case_id, user, "screw_stop", {"test": job["id"], "level": job["level"],
                                                             "side": job["side"], "t_s": round(self.t_s, 3)})
        return {"test": job["id"], "stopping": True}

    def _screw_run(self, job: dict[str, Any]) -> None:
        """The test's own thread: pause the other outputs (board), hunt (again and again when dynamic, until
        screw_stop), resume them; every result and failure goes to the engine thread."""
        pause = getattr(self.probe, "pause_for_probe", None)
        resume = getattr(self.probe, "resume_after_probe", None)
        paused_ok = False
        try:
            if pause is not None:
                self._probe_pause_until = math.inf
                job["paused"] = list(pause())
                paused_ok = True
                if job["paused"]:
                    self._submit(functools.partial(self._event, "event", "stimulation paused for the screw test: %s"
                                                   % ", ".join(job["paused"]), "system"))
            while not job["stop"].is_set():
                try:
                    res = self.probe.hunt_screw([c for c, _ in job["channels"]], hi_ma=job["hi_ma"],
                                                p2p_uv=job["p2p_uv"], lo_ma=SCREW_LO_MA,
                                                resolution_ma=SCREW_RESOLUTION_MA, rate_hz=SCREW_RATE_HZ,
                                                stop=job["stop"])
                except Exception as exc:
                    self._submit(functools.partial(self._screw_result, job, None, str(exc)))
                    break
                self._submit(functools.partial(self._screw_result, job, res, None))
                silenced = res.reason == "watchdog"  # (host-lost stops acquisition too: the re-arm restarts it)
                job["silenced"] = job.get("silenced", 0) + 1 if silenced else 0
                if not job["dynamic"] or not (res.reason in ("done", "pulses") or (
                        silenced and job["silenced"] <= SCREW_DYNAMIC_SILENCE_RETRIES)):
                    break
        except Exception as exc:  # the pause failed: nothing was hunted
            self._submit(functools.partial(self._screw_result, job, None,
                                           "the other outputs could not be paused: %s" % exc))
        finally:
            if resume is not None and (paused_ok or self._probe_pause_until == math.inf):
                try:
                    resume()
                except Exception as exc:
                    self._submit(functools.partial(
                        self._technical_record,
                        "the other outputs could not be resumed after the screw test: %s; turn them on again" % exc,
                        "screw_test.resume_failed", {"error": str(exc)}))
                self._probe_pause_until = time.time() + SCREW_RESUME_GRACE_S
            self._submit(lambda: self._screw_end(job))

    def _screw_result(self, job: dict[str, Any], res: Any, error: str | None) -> None:
        """One hunt's result, on the engine thread: read against the rules, stored (programs row kind
        "screw_test"), audited under the user who asked, on the timeline, sent to the viewers."""
        from ionm.case.timeline import describe_screw
        from ionm.pipeline import screws as sc

        names = dict(job["channels"])
        th: dict[str, float | None] = {}
        below: dict[str, float | None] = {}
        if res is not None:
            th = {names[c]: res.thresholds_ma.get(c) for c in names}
            below = {names[c]: res.below_ma.get(c) for c in names}
        low = sc.lowest(th)
        reason = "error" if res is None else str(res.reason)
        complete = reason == "done"
        band = sc.classify(job["level"], low[1] if low else None, job["hi_ma"], self.screw_rules)
        if not complete:  # stopped, out of pulses or failed: what it found so far, not a reading
            band = dict(band, colour="grey", label="incomplete (%s)" % (error or reason), determined=False)
        rule = sc.rule_for(job["level"], self.screw_rules)
        self._screw_seq += 1
        job["hunts"] += 1
        shown = not job["dynamic"] or job["hunts"] == 1 or band["colour"] != job["colour"] or not complete
        rec = {"uid": "%s-S%d" % (self.case["uid"], self._screw_seq), "test": job["id"], "t_s": round(self.t_s, 3),
               "user": job["user"], "level": job["level"], "side": job["side"],
               "screw": "%s %s" % (job["level"], sc.SIDES[job["side"]]), "dynamic": job["dynamic"],
               "hunt": job["hunts"], "reason": reason, "complete": complete, "error": error,
               "hi_ma": job["hi_ma"], "p2p_uv": job["p2p_uv"], "thresholds_ma": th, "below_ma": below,
               "lowest": None if low is None else {"channel": low[0], "threshold_ma": low[1]},
               "colour": band["colour"], "label": band["label"], "rule": band["rule"], "rule_source": band["source"],
               "rule_def": None if rule is None else sc.rule_json(rule),
               "pulses": 0 if res is None else len(res.pulses),
               "armed": 0 if res is None else (len(res.pulses) if res.armed is None else res.armed),
               "paused": list(job["paused"]), "timeline": shown}
        self.store.add_program(self.case_id, rec["t_s"], job["user"], "screw_test", rec)
        self.store.audit(self.case_id, job["user"], "screw_test.result",
                         {k: rec[k] for k in ("uid", "level", "side", "lowest", "colour", "label", "rule", "reason",
                                              "pulses", "t_s")})
        if low is not None and (job["lowest"] is None or low[1] < job["lowest"]):
            job["lowest"] = low[1]
        job["colour"] = band["colour"]
        if shown:
            self._event("screw", describe_screw(rec), job["user"])
        self.screws.append(rec)
        self._publish_screws()

    def _screw_end(self, job: dict[str, Any]) -> None:
        from ionm.pipeline import screws as sc

        if self._screw_job is job:
            self._screw_job = None
        if job["dynamic"]:
            low = job["lowest"]
            self._event("screw", "dynamic screw test %s %s ended: %d hunts, lowest %s" % (
                job["level"], sc.SIDES[job["side"]], job["hunts"],
                "no response" if low is None else "%.1f mA" % low), job["user"])
        if job["paused"]:
            self._event("event", "stimulation resumed after the screw test: %s" % ", ".join(job["paused"]), "system")
        self._publish_screws()

    def screw_frame(self) -> dict[str, Any]:
        """What the screw panel draws: the rules, the test under way, the newest results (newest last)."""
        from ionm.pipeline import screws as sc

        j = self._screw_job
        available = self.probe is not None and hasattr(self.probe, "hunt_screw")
        if not available and not self.screws:  # no probe, nothing tested: a few bytes in every snapshot
            return {"available": False, "running": None, "results": [], "count": 0}
        keep = ("uid", "t_s", "user", "level", "side", "screw", "dynamic", "hunt", "reason", "complete", "hi_ma",
                "thresholds_ma", "lowest", "colour", "label", "rule", "pulses")
        # the rules without their sources (in each stored result and the report): the panel's legend
        rules = [{k: v for k, v in r.items() if k != "source"} for r in sc.rules_json(self.screw_rules)]
        return {"available": available, "rules": rules,
                "defaults": {"hi_ma": SCREW_HI_MA, "p2p_uv": SCREW_P2P_UV},
                "running": None if j is None else {"test": j["id"], "level": j["level"], "side": j["side"],
                                                   "dynamic": j["dynamic"], "user": j["user"], "hunts": j["hunts"]},
                "results": [{k: r.get(k) for k in keep} for r in self.screws[-SCREW_SHOWN:]],
                "count": len(self.screws)}

    def _publish_screws(self) -> None:
        self._emit([("screws", self.screw_frame())], [])

    # ---------------------------------------------------------------- train-of-four
    def _tof_refuse(self, user: str, msg: dict[str, Any], reason: str) -> CommandError:
        self.store.audit(self.case_id, user, "tof.refused",
                         {"request": {k: v for k, v in msg.items() if k != "req"}, "reason": reason,
                          "t_s": round(self.t_s, 3)})
        return CommandError(reason)

    def _tof_channels(self) -> dict[int, str]:
        fn = getattr(self.probe, "tof_channels", None)
        return dict(fn()) if fn is not None else {}

    def _tof_check(self, user: str, msg: dict[str, Any], now: bool = True) -> dict[str, Any]:
        """Every value of a TOF request checked, and (now) the 15-s rule, before anything is delivered: the job,
        or CommandError (audited as tof.refused)."""
        from ionm.board.stimulation import SSEP_OUTPUTS

        if self.probe is None or not hasattr(self.probe, "deliver_tof"):
            raise self._tof_refuse(user, msg, "no stimulator for a train-of-four on this source (the board or the "
                                   "simulated patient)")
        if now and self._tof_job is not None:
            raise self._tof_refuse(user, msg, "a train-of-four is under way")
        if now and self._screw_job is not None:
            raise self._tof_refuse(user, msg, "a screw test is under way: screw_stop ends it")
        if now and self._probe_job is not None:
            raise self._tof_refuse(user, msg, "a probe session is under way: probe_stop ends it")
        since = self.t_s - self._tof_last_t
        if now and since < self.tof_interval_s:
            raise self._tof_refuse(user, msg, "the last train-of-four was %.1f s ago: at most one per %g s (the "
                                   "board enforces it too); next in %.1f s"
                                   % (since, self.tof_interval_s, self.tof_interval_s - since))
        output, channel = msg.get("output"), msg.get("channel")
        if isinstance(output, bool) or not isinstance(output, int) or output not in SSEP_OUTPUTS:
            raise self._tof_refuse(user, msg, "output must be one of %s (a stimulator output: %s), not %r" % (
                ", ".join(map(str, SSEP_OUTPUTS)), ", ".join("%d %s" % kv for kv in SSEP_OUTPUTS.items()), output))
        chans = self._tof_channels()
        if isinstance(channel, bool) or not isinstance(channel, int) or channel not in chans:
            raise self._tof_refuse(user, msg, "channel must be a muscle channel of this montage (%s), not %r" % (
                ", ".join("%d %s" % (c, short_name(n)) for c, n in sorted(chans.items())), channel))
        current = msg.get("current_ma")
        if current is None:
            current = TOF_CURRENT_MA
            if self.stimulation is not None:
                site = self.stimulation.state()["ssep"].get(str(output)) or {}
                current = float(site.get("current_ma") or TOF_CURRENT_MA)
        lim = self.stimulation.limits() if self.stimulation is not None else None
        top = float(lim["current_ma_max"]) if lim else 100.0
        if isinstance(current, bool) or not isinstance(current, (int, float)) or not math.isfinite(current) \
                or not 0 < current <= top:
            raise self._tof_refuse(user, msg, "current_ma must be a finite number in (0, %g] (got %r)" % (top, current))
        return {"user": user, "output": output, "site": SSEP_OUTPUTS[output], "channel": channel,
                "channel_name": chans[channel], "current_ma": float(current), "t_s": self.t_s}

    def _tof(self, user: str, msg: dict[str, Any], auto: bool = False) -> dict[str, Any]:
        """Deliver one train-of-four in a thread of its own (the 4 pulses take 1.5 s; the engine goes on); the
        result is recorded by _tof_result on the engine thread."""
        job = self._tof_check(user, msg)
        job["auto"] = auto
        self._tof_job = job
        job["prev_last_t"], self._tof_last_t = self._tof_last_t, self.t_s
        self.store.audit(self.case_id, user, "tof", {k: job[k] for k in ("output", "channel", "channel_name",
                                                                         "current_ma", "t_s", "auto")})
        threading.Thread(target=self._tof_run, args=(job,), name="tof", daemon=True).start()
        self._publish_tof()
        return {"output": job["output"], "channel": job["channel"], "current_ma": job["current_ma"]}

    def _tof_run(self, job: dict[str, Any]) -> None:
        """The TOF's own thread. On a board the other outputs are paused for it (BoardCase.deliver_tof): the
        stall alarm does not count their streams meanwhile."""
        board = hasattr(self.probe, "pause_for_probe")
        if board:
            self._probe_pause_until = math.inf
        try:
            res = self.probe.deliver_tof(job["output"], job["channel"], current_ma=job["current_ma"],
                                         width_us=TOF_WIDTH_US)
        except Exception as exc:
            self._submit(functools.partial(self._tof_result, job, None, str(exc)))
            return
        finally:
            if board:
                self._probe_pause_until = time.time() + SCREW_RESUME_GRACE_S
        self._submit(functools.partial(self._tof_result, job, res, None))

    def _tof_result(self, job: dict[str, Any], res: Any, error: str | None) -> None:
        """One TOF's result, on the engine thread: count and T4/T1 (ionm.pipeline.tof) stored (programs row kind
        "tof"), audited under the user who asked, on the timeline, sent to the viewers; below count 2 a warning."""
        from ionm.case.timeline import describe_tof
        from ionm.pipeline import tof as tf

        if self._tof_job is job:
            self._tof_job = None
        self._tof_seq += 1
        rec: dict[str, Any] = {
            "uid": "%s-T%d" % (self.case["uid"], self._tof_seq), "t_s": round(float(job["t_s"]), 3),
            "user": job["user"], "auto": job["auto"], "output": job["output"], "site": job["site"],
            "channel": job["channel"], "channel_name": job["channel_name"], "current_ma": job["current_ma"],
            "width_us": TOF_WIDTH_US, "error": error, "p2p_uv": None, "noise_uv": None, "count": None, "ratio": None,
            "t1_fraction": None, "reference_uv": None, "reliable": None,
            "rule": "TOF count >= %d for reliable MEP and EMG (Sloan & Heyer 2002; Macdonald et al. 2013)"
                    % tf.UNRELIABLE_BELOW}
        if res is not None:
            key = (job["output"], job["channel"])
            ref = self._tof_ref.get(key)
            x, idx, fs = np.asarray(res["samples_uv"], dtype=np.float64), list(res["pulse_indices"]), res["fs"]
            p2p = tf.responses(x, idx, fs)
            # the noise floor: the same window late after each pulse (its M-wave long over), x TOF_NOISE_FACTOR;
            # without it a train blocked to 2 % reads 4 small "responses" when there is no reference T1
            late = [i + int(TOF_NOISE_AFTER_S * fs) for i in idx]
            noise = float(np.median(tf.responses(x, late, fs))) if all(j + int(0.015 * fs) <= len(x) for j in late) \
                else 0.0
            r = tf.evaluate(p2p, ref, noise_uv=max(TOF_NOISE_UV, TOF_NOISE_FACTOR * noise))
            if ref is None and r.count == 4:  # the first full train: the unblocked reference T1
                self._tof_ref[key] = ref = r.p2p_uv[0]
            rec["paused"] = list(res.get("paused") or [])
            rec.update(p2p_uv=[_num(v, 1) for v in r.p2p_uv], noise_uv=_num(noise, 1), count=r.count,
                       ratio=_num(r.ratio, 3),
                       t1_fraction=_num(r.t1_fraction, 3), reference_uv=_num(ref, 1),
                       reliable=r.muscle_monitoring_reliable)
        else:  # nothing measured: the 15-s clock goes on from the TOF before (the board may not have delivered)
            self._tof_last_t = job["prev_last_t"]
        self.store.add_program(self.case_id, rec["t_s"], job["user"], "tof", rec)
        self.store.audit(self.case_id, job["user"], "tof.result",
                         {k: rec[k] for k in ("uid", "output", "channel_name", "count", "ratio", "p2p_uv", "error",
                                              "t_s")})
        self._event("tof", describe_tof(rec), job["user"])
        self.tofs.append(rec)
        self._publish_tof()

    def _tof_every_cmd(self, user: str, msg: dict[str, Any]) -> dict[str, Any]:
        """Repeat the TOF every s seconds of case time (>= the 15-s rule), on the given output and channel or the
        last TOF's; s = 0 stops it. The first is checked (and delivered) now."""
        s = msg.get("s")
        if isinstance(s, bool) or not isinstance(s, (int, float)) or not math.isfinite(s) or not (
                s == 0 or self.tof_interval_s <= s <= 3600):
            raise self._tof_refuse(user, msg, "s must be 0 (stop) or %g..3600 s (got %r)" % (self.tof_interval_s, s))
        if s == 0:
            was = self._tof_every
            self._tof_every = None
            self.store.audit(self.case_id, user, "tof_every", {"s": 0, "t_s": round(self.t_s, 3)})
            if was is not None:
                self._event("tof", "automatic train-of-four stopped", user)
            self._publish_tof()
            return {"every_s": None}
        last = self.tofs[-1] if self.tofs else {}
        req = {k: msg.get(k, last.get(k)) for k in ("output", "channel", "current_ma")}
        job = self._tof_check(user, req, now=False)  # refused (nothing delivered, nothing repeated) if wrong
        req["current_ma"] = job["current_ma"]
        self._tof_every = dict(req, s=float(s), user=user, next_t=self.t_s)  # the first as soon as allowed
        self.store.audit(self.case_id, user, "tof_every", dict(req, s=float(s), t_s=round(self.t_s, 3)))
        self._event("tof", "train-of-four every %g s (%s, %s)" % (s, job["site"], short_name(job["channel_name"])),
                    user)
        self._tof_due()
        self._publish_tof()
        return {"every_s": float(s)}

    def _tof_due(self) -> None:
        """The automatic TOF, when due and allowed (engine thread, after each sweep)."""
        ev = self._tof_every
        if ev is None or self._tof_job is not None or self.t_s < ev["next_t"] or \
                self.t_s - self._tof_last_t < self.tof_interval_s:
            return
        ev["next_t"] = self.t_s + ev["s"]
        try:
            self._tof(ev["user"], {k: ev[k] for k in ("output", "channel", "current_ma")}, auto=True)
        except CommandError as exc:  # (audited as tof.refused) the repeat stops: a person must look
            self._tof_every = None
            self._event("tof", "automatic train-of-four stopped: %s" % exc, "system")
            self._publish_tof()

    def _tof_attached(self, st: Stream) -> dict[str, Any] | None:
        """The TOF state an alert of a muscle stream carries: the last TOF's, when its count is below 2."""
        from ionm.pipeline import tof as tf

        if st.modality not in MUSCLE_MODALITIES:
            return None
        last = next((r for r in reversed(self.tofs) if r["count"] is not None), None)
        if last is None or last["count"] >= tf.UNRELIABLE_BELOW:
            return None
        return {"uid": last["uid"], "count": last["count"], "ratio": last["ratio"], "t_s": last["t_s"],
                "channel_name": last["channel_name"]}

    def tof_warning(self) -> str | None:
        from ionm.pipeline import tof as tf

        last = next((r for r in reversed(self.tofs) if r["count"] is not None), None)
        if last is None or last["count"] >= tf.UNRELIABLE_BELOW:
            return None
        return ("TOF %d/4 at %s: MEP and EMG unreliable (neuromuscular blockade; TOF count >= %d needed)"
                % (last["count"], fmt_case_time(last["t_s"]), tf.UNRELIABLE_BELOW))

    def tof_frame(self) -> dict[str, Any]:
        """What the TOF panel draws: the outputs and muscle channels it may use, the TOF under way, the repeat,
        the warning (count < 2), and the newest results (count and T4/T1 over case time, newest last)."""
        from ionm.board.stimulation import SSEP_OUTPUTS

        available = self.probe is not None and hasattr(self.probe, "deliver_tof")
        if not available and not self.tofs:
            return {"available": False, "results": [], "count": 0, "warning": None}
        j, ev = self._tof_job, self._tof_every
        keep = ("uid", "t_s", "user", "auto", "site", "channel_name", "current_ma", "count", "ratio", "t1_fraction",
                "error")
        return {"available": available, "interval_s": self.tof_interval_s,
                "outputs": {str(o): s for o, s in SSEP_OUTPUTS.items()},
                "channels": [[c, short_name(n)] for c, n in sorted(self._tof_channels().items())],
                "next_allowed_t_s": _num(self._tof_last_t + self.tof_interval_s, 2)
                if math.isfinite(self._tof_last_t) else None,
                "running": None if j is None else {"site": j["site"], "channel_name": short_name(j["channel_name"]),
                                                   "user": j["user"]},
                "every": None if ev is None else {"s": ev["s"], "output": ev["output"], "channel": ev["channel"]},
                "warning": self.tof_warning(),
                "results": [{k: r.get(k) for k in keep} for r in self.tofs[-TOF_SHOWN:]], "count": len(self.tofs)}

    def _publish_tof(self) -> None:
        self._emit([("tof", self.tof_frame())], [])

    # ---------------------------------------------------------------- the handheld probe, manual mode
    def _probe_refuse(self, user: str, msg: dict[str, Any], reason: str) -> CommandError:
        self.store.audit(self.case_id, user, "probe.refused",
                         {"request": {k: v for k, v in msg.items() if k != "req"}, "reason": reason})
        return CommandError(reason)

    def _probe_cmd(self, user: str, msg: dict[str, Any]) -> dict[str, Any]:
        """Manual probe (nerve mapping: facial nerve, recurrent laryngeal nerve, a root): pulses of `ma` at
        `rate_hz` until probe_stop, each response measured per muscle channel (amplitude, onset latency); the
        session's record (response present at X mA, or not) is stored when it ends. Every value checked before
        anything is delivered."""
        from ionm import board

        if self.probe is None or not hasattr(self.probe, "run_probe"):
            raise self._probe_refuse(user, msg, "no probe on this source: the board or the simulated patient")
        for busy, what in ((self._probe_job, "a probe session is under way: probe_stop ends it"),
                           (self._screw_job, "a screw test is under way: screw_stop ends it"),
                           (self._tof_job, "a train-of-four is under way")):
            if busy is not None:
                raise self._probe_refuse(user, msg, what)
        lim = board.load()["safety"]["probe"]
        ma, rate, label = msg.get("ma"), msg.get("rate_hz", PROBE_RATE_HZ), msg.get("label", "")
        if isinstance(ma, bool) or not isinstance(ma, (int, float)) or not math.isfinite(ma) or \
                not 0 < ma <= float(lim["current_ma_max"]) or abs(ma * 10 - round(ma * 10)) > 1e-6:
            raise self._probe_refuse(user, msg, "ma must be a finite number in (0, %g] mA on the DAC's 0.1 mA step "
                                     "(got %r)" % (float(lim["current_ma_max"]), ma))
        if isinstance(rate, bool) or not isinstance(rate, (int, float)) or not math.isfinite(rate) or \
                not 0.5 <= rate <= float(lim["rate_hz_max"]):
            raise self._probe_refuse(user, msg, "rate_hz must be a finite number 0.5..%g (got %r)"
                                     % (float(lim["rate_hz_max"]), rate))
        if not isinstance(label, str) or len(label) > 80:
            raise self._probe_refuse(user, msg, "label must be a text of at most 80 characters")
        chans = dict(self._tof_channels())
        if not chans:
            raise self._probe_refuse(user, msg, "no muscle channel in this montage")
        self._probe_seq += 1
        job: dict[str, Any] = {"id": self._probe_seq, "user": user, "ma": float(ma), "rate_hz": float(rate),
                               "label": label.strip(), "channels": sorted(chans.items()), "stop": threading.Event(),
                               "pulses": 0, "t_s": self.t_s, "last": None, "best": {}, "first_present": None,
                               "started": time.time()}
        self._probe_job = job
        self.store.audit(self.case_id, user, "probe", {"ma": job["ma"], "rate_hz": job["rate_hz"],
                                                       "label": job["label"], "t_s": round(self.t_s, 3)})
        self._event("probe", "probe%s at %g mA, %g/s started" % (" (%s)" % job["label"] if job["label"] else "",
                                                                 job["ma"], job["rate_hz"]), user)
        threading.Thread(target=self._probe_run, args=(job,), name="probe", daemon=True).start()
        self._publish_probe()
        return {"session": job["id"], "ma": job["ma"], "rate_hz": job["rate_hz"]}

    def _probe_stop_cmd(self, user: str) -> dict[str, Any]:
        job = self._probe_job
        if job is None:
            raise CommandError("no probe session under way")
        job["stop"].set()
        job["stopped_by"] = user
        self.store.audit(self.case_id, user, "probe_stop", {"session": job["id"], "t_s": round(self.t_s, 3)})
        return {"session": job["id"], "stopping": True}

    def _probe_run(self, job: dict[str, Any]) -> None:
        board = hasattr(self.probe, "pause_for_probe")
        if board:
            self._probe_pause_until = math.inf
        error = None

        def on_response(x: Any, fs: float, pre: int) -> None:
            if time.time() - job["started"] > PROBE_MAX_S:  # a forgotten probe stops by itself
                job["stop"].set()
                job["timed_out"] = True
            self._submit(functools.partial(self._probe_response, job, np.asarray(x, dtype=np.float64), float(fs),
                                           int(pre)))

        try:
            self.probe.run_probe(job["ma"], job["rate_hz"], [c for c, _ in job["channels"]], on_response, job["stop"])
        except Exception as exc:
            error = str(exc)
        finally:
            if board:
                self._probe_pause_until = time.time() + SCREW_RESUME_GRACE_S
            self._submit(functools.partial(self._probe_end, job, error))

    def _probe_response(self, job: dict[str, Any], x: np.ndarray, fs: float, pre: int) -> None:
        """One probe pulse's responses, on the engine thread: per muscle channel the peak to peak 3-40 ms after
        the pulse and the onset latency; present when at least PROBE_P2P_UV and PROBE_NOISE_FACTOR times the
        peak to peak of the same length before the pulse (the muscle's background), with its largest
        deflection at least 1 ms into the window (one largest at the start is the artefact's decaying tail).
        The onset: back from the largest deflection to the last 1 ms quiet stretch (below 20 % of it and half
        the background's peak to peak) before it."""
        a, b = pre + int(PROBE_MEASURE_MS[0] * fs / 1000), pre + int(PROBE_MEASURE_MS[1] * fs / 1000)
        job["pulses"] += 1
        per = []
        for k, (_, name) in enumerate(job["channels"]):
            w = x[k, a:b] - float(np.median(x[k, a:b])) if x.shape[1] > a else np.zeros(1)
            p2p = float(np.ptp(w))
            noise = float(np.ptp(x[k, max(0, pre - (b - a)):pre])) if pre > 0 else 0.0
            present = p2p >= max(PROBE_P2P_UV, PROBE_NOISE_FACTOR * noise) and \
                int(np.argmax(np.abs(w))) >= int(0.001 * fs)
            lat = None
            if present:
                mag = np.abs(w)
                thr = max(0.2 * float(mag.max()), 0.5 * noise)
                quiet, run = max(1, int(0.001 * fs)), 0
                onset = int(np.argmax(mag))
                while onset > 0 and run < quiet:
                    onset -= 1
                    run = run + 1 if mag[onset] < thr else 0
                onset += run
                lat = (a - pre + onset) / fs * 1000.0
            per.append({"channel": short_name(name), "p2p_uv": _num(p2p, 1), "lat_ms": _num(lat, 2),
                        "present": present})
            if present:
                best = job["best"].setdefault(name, {"p2p_uv": -1.0, "lat_ms": None, "pulses": 0})
                if p2p > best["p2p_uv"]:  # the largest response, and its latency
                    best.update(p2p_uv=_num(p2p, 1), lat_ms=_num(lat, 2))
                best["pulses"] += 1
        if job["first_present"] is None and any(r["present"] for r in per):
            job["first_present"] = round(self.t_s, 3)
        job["last"] = per
        self._publish_probe()

    def _probe_end(self, job: dict[str, Any], error: str | None) -> None:
        """The session's record: stored (programs row kind "probe"), audited under who asked, on the timeline."""
        from ionm.case.timeline import describe_probe

        if self._probe_job is job:
            self._probe_job = None
        # present in the record: on at least half the pulses (and 2); a single pulse over the criterion is noise
        # or the artefact's tail as often as a nerve (a response that counts is reproducible)
        need = max(PROBE_REPEATS_MIN, math.ceil(PROBE_PRESENT_FRACTION * job["pulses"]))
        present = {short_name(n): v for n, v in sorted(job["best"].items(), key=lambda kv: -kv[1]["p2p_uv"])
                   if v["pulses"] >= need}
        rec = {"uid": "%s-P%d" % (self.case["uid"], job["id"]), "t_s": round(float(job["t_s"]), 3),
               "user": job["user"], "label": job["label"], "ma": job["ma"], "rate_hz": job["rate_hz"],
               "pulses": job["pulses"], "criterion_uv": PROBE_P2P_UV, "present": present,
               "response": bool(present), "first_present_t_s": job["first_present"],
               "timed_out": bool(job.get("timed_out")), "error": error,
               "t_end_s": round(self.t_s, 3)}
        self.store.add_program(self.case_id, rec["t_s"], job["user"], "probe", rec)
        self.store.audit(self.case_id, job["user"], "probe.result",
                         {k: rec[k] for k in ("uid", "label", "ma", "pulses", "response", "present", "error")})
        self._event("probe", describe_probe(rec), job["user"])
        self.probes.append(rec)
        self._publish_probe()

    def probe_frame(self) -> dict[str, Any]:
        """What the probe panel draws: the session under way with the newest pulse's responses per channel
        (amplitude, latency), and the newest records."""
        from ionm import board

        available = self.probe is not None and hasattr(self.probe, "run_probe")
        if not available and not self.probes:
            return {"available": False, "running": None, "records": [], "count": 0}
        lim = board.load()["safety"]["probe"]
        j = self._probe_job
        return {"available": available, "ma_max": float(lim["current_ma_max"]),
                "rate_hz_max": float(lim["rate_hz_max"]), "criterion_uv": PROBE_P2P_UV,
                "running": None if j is None else {"ma": j["ma"], "rate_hz": j["rate_hz"], "label": j["label"],
                                                   "pulses": j["pulses"], "user": j["user"], "last": j["last"]},
                "records": [{k: r.get(k) for k in ("uid", "t_s", "user", "label", "ma", "pulses", "present",
                                                     "response", "error")} for r in self.probes[-PROBE_SHOWN:]],
                "count": len(self.probes)}

    def _publish_probe(self) -> None:
        self._emit([("probe", self.probe_frame())], [])

    def _peak(self, user: str, msg: dict[str, Any]) -> dict[str, Any]:
        st = self.streams.get(str(msg.get("stream")))
        if st is None or st.modality == "mep":
            raise CommandError("no SSEP stream %r" % msg.get("stream"))
        ch, name = int(msg.get("channel", -1)), str(msg.get("name", ""))
        if not 0 <= ch < len(st.names):
            raise CommandError("no channel %d" % ch)
        lat = msg.get("latency_ms")
        try:
            if lat is None:
                st.evaluator.markers[ch].clear(name)
            else:
                st.evaluator.markers[ch].override(name, float(lat))
        except KeyError as exc:
            raise CommandError(str(exc)) from None
        self.store.add_peak_mark(self.case_id, st.key, self.t_s, user, ch, name, None if lat is None else float(lat))
        self.store.audit(self.case_id, user, "peak", {"stream": st.key, "channel": ch, "name": name,
                                                       "latency_ms": lat})
        st.dirty = True
        return {}

    # ================================================================ the engine thread
    def _loop(self) -> None:
        while self._running:
            try:
                self._step()
            except Exception as exc:  # one bad sweep or frame must not stop monitoring: record and go on
                self.errors.append(repr(exc))
                self.store.audit(self.case_id, "system", "engine.error", {"error": repr(exc), "t_s": self.t_s})
        self._run_commands()

    def _step(self) -> None:
        self._run_commands()
        try:
            sw = self._sweeps.get(timeout=0.02 if self._emg_sources or self._neuro_sources else 0.05)
        except queue.Empty:
            sw = None
        if sw is not None:
            self._process(sw, self._arrivals.pop(id(sw), time.time()))
        if self.emg is not None:
            self._drain_emg()
        if self._neuro_sources:
            self._drain_neuro()
        now = time.monotonic()
        if self._sweeps.empty() or now - self._last_publish >= PUBLISH_EVERY_S:
            self._publish_dirty()
        if self.link_health is not None and now - self._last_link >= LINK_EVERY_S:
            self._last_link = now
            self._poll_link()
        if now - self._last_technical >= TECHNICAL_EVERY_S:
            self._last_technical = now
            self._check_technical()

    def _run_commands(self) -> None:
        while True:
            try:
                fn, fut = self._commands.get_nowait()
            except queue.Empty:
                return
            try:
                fut.set_result(fn())
            except BaseException as exc:
                fut.set_exception(exc)

    def _new_stream(self, sw: Sweep, key: str) -> Stream:
        from ionm.pipeline import conditioning, modalities

        names = list(sw.channel_names)
        show = modalities.monitored(sw.source, names)  # the evaluator applies the same rule (never tracked)
        m = modalities.get(sw.modality)
        cond = conditioning.Conditioner(sw.fs, sw.data_uv.shape[1], sw.pre_samples, m.band_hz, m.blank_ms, ())
        depth = BASELINE_SWEEPS_MAX["mep" if sw.modality == "mep" else "ssep"]
        st = Stream(key, sw.modality, sw.source, float(sw.fs), int(sw.pre_samples), int(sw.data_uv.shape[1]), names,
                    tuple(sw.channels), self._evaluator(sw.fs, sw.pre_samples, sw.data_uv.shape[1], sw.modality, names,
                                                        sw.source),
                    cond, show, recent=deque(maxlen=depth), states=["normal"] * len(names))
        self.streams[key] = st
        self.trend.setdefault(key, [])
        return st

    def _evaluator(self, fs: float, pre: int, n: int, modality: str, names: list[str], source: str) -> Any:
        from ionm.pipeline.evaluator import Evaluator, EvaluatorConfig

        # baseline_end_s = inf: the evaluator never sets a baseline by itself; the engine decides when.
        return Evaluator(fs, pre, n, modality, names, baseline_end_s=math.inf,
                         config=self.evaluator_config or EvaluatorConfig(), stimulated=source)

    def _case_time(self, sw: Sweep, key: str) -> Sweep:
        """The sweep on the case clock. A source whose time went back (a stream's time not increasing, or any
        stream more than CLOCK_BACKSTEP_S behind the case) restarted its clock: the case time goes on from where
        it was, by the wall time that passed (at least CLOCK_GAP_MIN_S), and the restart is audited."""
        t = sw.t_s + self.clock_offset_s
        st = self.streams.get(key)
        if (st is not None and t <= st.t_s) or t < self.t_s - CLOCK_BACKSTEP_S:
            gap = CLOCK_GAP_MIN_S
            if self._last_sweep_wall is not None:
                gap = max(gap, time.time() - self._last_sweep_wall)
            self.clock_offset_s = self.t_s + gap - sw.t_s
            t = sw.t_s + self.clock_offset_s
            detail = {"offset_s": round(self.clock_offset_s, 6), "source_t_s": sw.t_s, "case_t_s": round(t, 6)}
            self.store.audit(self.case_id, "system", "source.clock", detail)
            self._event("event", "the source's clock restarted (board reset or console restart): case time goes on "
                        "at %.1f s" % t, "system")
        return sw if t == sw.t_s else replace(sw, t_s=t)

    def _process(self, sw: Sweep, arrival: float) -> None:
        key = "%s/%s" % (sw.modality, sw.source)
        sw = self._case_time(sw, key)
        self._last_sweep_wall = time.time()
        self.technical.sweep(key, self._last_sweep_wall)
        st = self.streams.get(key)
        if st is None:
            st = self._new_stream(sw, key)
            self.store.add_stream(self.case_id, key, sw)
            self.store.add_program(self.case_id, sw.t_s, "system", "montage",
                                   {"stream": key, "channels": list(sw.channels), "names": st.names})
            self._event("event", "stream %s started (%d channels)" % (key, len(st.names)), "system")
        data = np.asarray(sw.data_uv, dtype=np.float32)
        res = st.evaluator.process(data, sw.t_s)
        st.recent.append((sw.t_s, data))
        if st.catchup is not None:
            st.catchup.append((sw.t_s, data))
        self.store.add_sweep(self.case_id, key, st.seq, sw, res.reasons)
        st.seq += 1
        st.rejected += any(r is not None for r in res.reasons)
        st.t_s = self.t_s = max(self.t_s, sw.t_s)
        st.states = list(res.states)
        if res.mep is not None:
            st.last_mep = res.mep
            st.last_trial = st.display_cond(data.astype(np.float64), sw.t_s)
        if res.tracker is not None:
            st.last_tracker = res.tracker
        for ev in res.alerts:
            self._alert(st, ev)
        if sw.t_s - st.last_trend_t >= TREND_EVERY_S:
            st.last_trend_t = sw.t_s
            self._trend_point(st)
        if sw.t_s - st.last_stack_t >= STACK_EVERY_S:
            st.last_stack_t = sw.t_s
            self._stack_push(st, "periodic")
        while self._schedule and self._schedule[0][0] <= self.t_s:
            self._schedule.pop(0)[1]()
        if self.auto_baseline_s is not None and sw.t_s >= self.auto_baseline_s and st.baseline is None \
                and not st.baseline_pending:
            self.request_baseline(key, "system")
        if st.collecting is not None and st.collecting["refining"] and any(s != "normal" for s in st.states):
            self._stop_refining(st)
        if st.collecting is not None:
            st.collecting["have"] += 1
            if st.collecting["have"] >= st.collecting["due_n"] and not st.baseline_pending:
                self._extend_baseline(st)
        if self._tof_every is not None:
            self._tof_due()
        st.dirty = True
        st.arr0 = arrival if st.arr0 is None else st.arr0
        st.arr1 = arrival
        self.stats["sweeps"] += 1

    # ---------------------------------------------------------------- what a stream shows
    def _display(self, st: Stream) -> tuple[np.ndarray, list[float]]:
        """The traces shown for a stream [ch, n] (µV): the running average (SSEP) or the newest trial (MEP)."""
        if st.modality == "mep":
            x = st.last_trial if st.last_trial is not None else np.zeros((len(st.names), st.n))
            return x, [1.0] * len(st.names)
        avg = st.evaluator.averages.estimate()
        return avg.mean, [float(v) for v in avg.n]

    def _ratios(self, st: Stream) -> tuple[list[float | None], list[float | None]]:
        ev = st.evaluator
        n = len(st.names)
        if not ev.baseline_set:
            return [None] * n, [None] * n
        if st.modality == "mep" and st.last_mep is not None:
            amp = st.last_mep.p2p_uv / ev.mep_baseline[:, 0]
            lat = st.last_mep.onset_ms / ev.mep_baseline[:, 1]
        elif st.last_tracker is not None:
            amp, lat = st.last_tracker.amplitude, st.last_tracker.latency
        else:
            return [None] * n, [None] * n
        return ([_num(a, 4) if ev.tracked[c] else None for c, a in enumerate(amp)],
                [_num(v, 4) if ev.tracked[c] else None for c, v in enumerate(lat)])

    def _measures(self, st: Stream) -> tuple[list[float | None], list[float | None], list[list[dict[str, Any]]]]:
        """Per channel: amplitude µV and latency ms of the main measure, and the marked peaks."""
        n = len(st.names)
        amp: list[float | None] = [None] * n
        lat: list[float | None] = [None] * n
        marks: list[list[dict[str, Any]]] = [[] for _ in range(n)]
        if st.modality == "mep":
            if st.last_mep is not None:
                for c in range(n):
                    amp[c], lat[c] = _num(st.last_mep.p2p_uv[c], 1), _num(st.last_mep.onset_ms[c], 2)
                    if lat[c] is not None:
                        marks[c].append({"name": "onset", "lat": lat[c], "amp": 0.0})
            return amp, lat, marks
        for c in range(n):
            peaks = st.evaluator.peaks(c)
            pair = st.evaluator.markers[c].pair
            main = peaks.get("%s-%s" % pair) if pair else None
            if main is None and peaks:
                main = next(iter(peaks.values()))
            if main is not None:
                amp[c], lat[c] = _num(abs(main.amplitude_uv), 3), _num(main.latency_ms, 2)
            marks[c] = [{"name": p.name, "lat": _num(p.latency_ms, 2), "amp": _num(p.amplitude_uv, 3),
                         "manual": p.manual} for nm, p in peaks.items() if "-" not in nm]
        return amp, lat, marks

    def _stream_frame(self, st: Stream) -> dict[str, Any]:
        ev = st.evaluator
        x, counts = self._display(st)
        wave, step = decimate(np.asarray(x, dtype=np.float64))
        amp, lat, marks = self._measures(st)
        ra, rl = self._ratios(st)
        m = ev.modality
        chans = []
        for c, name in enumerate(st.names):
            ref = st.baseline["refs"][c] if st.baseline is not None else None
            chans.append({
                "name": short_name(name), "show": st.show[c], "state": st.states[c],
                # a channel the page does not show carries no waveform (its numbers stay: a few bytes)
                "n": round(counts[c], 1), "wave": trace(wave[c]) if st.show[c] else None,
                "peaks": marks[c] if st.show[c] else [], "amp": amp[c], "lat": lat[c], "amp_ratio": ra[c],
                "lat_ratio": rl[c],
                "ref": ref,
            })
        return {
            "key": st.key, "modality": st.modality, "source": st.source, "t_s": round(st.t_s, 3), "seq": st.seq,
            "rejected": st.rejected, "x0_ms": -st.pre / st.fs * 1000.0, "dt_ms": step / st.fs * 1000.0,
            "units": "µV", "channels": chans,
            "baseline": None if st.baseline is None else {"t_s": st.baseline["t_s"], "user": st.baseline["user"]},
            "baseline_pending": st.baseline_pending,
            "collecting": None if st.collecting is None else {
                "due_in_s": _num(round(max(st.collecting["due_t"] - st.t_s, 0.0), 1)),
                "channels": st.collecting["eta"]},
            "criteria": {"amp_alert": _num(m.amplitude_ratio_alert), "lat_alert": _num(m.latency_ratio_alert),
                         "amp_warning": _num(m.amplitude_ratio_warning), "lat_warning": _num(m.latency_ratio_warning)},
        }

    def _base_frame(self, st: Stream) -> dict[str, Any] | None:
        """The baseline waveforms of a stream's shown channels: a frame of its own (base:KEY), sent when a baseline
        is set rather than with every sweep."""
        if st.baseline is None:
            return None
        wave, step = decimate(np.asarray(st.baseline["mean"], dtype=np.float64))
        return {"key": st.key, "t_s": st.baseline["t_s"], "dt_ms": step / st.fs * 1000.0,
                "waves": [trace(w) if st.show[c] else None for c, w in enumerate(wave)]}

    def _stack_trace(self, st: Stream, t_s: float, x: np.ndarray) -> dict[str, Any]:
        """One trace of the waveform stack as the page draws it (faint, behind the newest): STACK_POINTS points,
        STACK_DIGITS digits, shown channels only. Sent as an append (k "stack"); a viewer keeps the newest
        STACK_SHOWN."""
        wave, step = decimate(np.asarray(x, dtype=np.float64), STACK_POINTS)
        return {"k": "stack", "s": st.key, "t_s": round(t_s, 2), "dt_ms": step / st.fs * 1000.0,
                "waves": [trace(w, STACK_DIGITS) if st.show[c] else None for c, w in enumerate(wave)]}

    def _stack_push(self, st: Stream, why: str) -> None:
        x, counts = self._display(st)
        self.store.add_average(self.case_id, st.key, st.t_s, why, counts, x)
        if why != "periodic":
            return
        item = self._stack_trace(st, st.t_s, x)
        st.stack.append(item)
        self._emit([], [item])

    def _trend_point(self, st: Stream) -> None:
        amp, lat, _ = self._measures(st)
        ra, rl = self._ratios(st)
        body = {"amp_uv": amp, "lat_ms": lat, "amp": ra, "lat": rl, "states": st.states}
        self.store.add_measurement(self.case_id, st.key, st.t_s, body)
        point = {"k": "trend", "s": st.key, "t": round(st.t_s, 2), "amp": ra, "lat": rl}
        append_trend(self.trend[st.key], point)  # bounded however long the case: the store has every point
        self._emit([], [point])

    # ---------------------------------------------------------------- alerts and the timeline
    def _alert(self, st: Stream, ev: Any) -> None:
        self._alert_seq += 1
        uid = "%s-A%d" % (self.case["uid"], self._alert_seq)
        row = {"uid": uid, "stream": st.key, "t_s": float(ev.t_s), "channel": int(ev.channel),
               "channel_name": ev.channel_name, "criterion": ev.criterion,
               "amplitude_ratio": _num(ev.amplitude_ratio, 4), "latency_ratio": _num(ev.latency_ratio, 4),
               "scope": ev.scope}
        self.store.add_alert(self.case_id, row)
        tof = self._tof_attached(st)
        if tof is not None:  # the alerts table keeps its columns: the TOF state is a record of its own, by uid
            self.store.add_program(self.case_id, row["t_s"], "system", "alert_tof", {"alert": uid, "tof": tof})
        self.store.audit(self.case_id, "system", "alert", row if tof is None else row | {"tof": tof})
        self._stack_push(st, "alert")
        if tof is not None:
            row = row | {"tof": tof}
        label = alert_label(row)
        self.alerts.add(row | {"label": label, "wall": time.time(), "ack": None})
        self._event("alert", label, "system")
        self._publish_alerts()

    def _event(self, kind: str, text: str, user: str, t_s: float | None = None, wall: float | None = None) -> None:
        self._timeline_seq += 1
        item = {"k": "event", "id": self._timeline_seq, "t_s": round(self.t_s if t_s is None else t_s, 2),
                "wall": round(time.time() if wall is None else wall, 3), "kind": kind, "user": user, "text": text}
        self.timeline.append(item)
        self._emit([], [item])

    # ---------------------------------------------------------------- baselines
    def request_baseline(self, key: str, user: str) -> bool:
        """Start setting a stream's baseline from its recent sweeps (engine thread). False if it cannot now."""
        st = self.streams[key]
        if st.baseline_pending or not st.recent:
            return False
        sweeps = list(st.recent)[-BASELINE_SWEEPS["mep" if st.modality == "mep" else "ssep"]:]
        st.collecting = None  # a new request replaces any baseline still collecting
        self._start_baseline(st, sweeps, user, self.t_s, extension=0)
        self.store.audit(self.case_id, user, "baseline.request", {"stream": key, "sweeps": len(sweeps)})
        return True

    def _start_baseline(self, st: Stream, sweeps: list[tuple[float, np.ndarray]], user: str, t_req: float,
                        extension: int) -> None:
        st.baseline_pending = True
        st.catchup = []
        st.dirty = True
        self._baseline_jobs.put(lambda: self._build_baseline(st, sweeps, user, t_req, extension))

    def _extend_baseline(self, st: Stream) -> None:
        """The baseline collected long enough for its untracked channels: build it again from every sweep since
        it began (engine thread). Not while a channel of the stream is in alert: a change must not become the
        reference."""
        col = st.collecting
        assert col is not None
        if any(s == "alert" for s in st.states):
            st.collecting = None
            self._event("baseline", "baseline %s: stopped collecting for %s (the stream is in alert)"
                        % (st.key, ", ".join(col["names"])), "system")
            return
        sweeps = [(t, x) for t, x in st.recent if t >= col["first_t"]]
        self.store.audit(self.case_id, "system", "baseline.extend", {"stream": st.key, "sweeps": len(sweeps),
                                                                     "for": col["names"]})
        self._start_baseline(st, sweeps, col["user"], col["t_req"], extension=col["extension"] + 1)

    def _stop_refining(self, st: Stream) -> None:
        """Refining is for a stable response: the first sweep with a channel out of normal stops it (engine thread).
        An untracked channel still waiting goes on collecting until the stream alerts (_extend_baseline)."""
        col = st.collecting
        assert col is not None
        self._event("baseline", "baseline %s: stopped refining %s (the stream is changing)"
                    % (st.key, ", ".join(col["refining"])), "system")
        col["names"] = [nm for nm in col["names"] if nm not in col["refining"]]
        col["refining"] = []
        if not col["names"]:
            st.collecting = None

    def _baseline_loop(self) -> None:
        while self._running:
            job = self._baseline_jobs.get()
            job()

    def _build_baseline(self, st: Stream, sweeps: list[tuple[float, np.ndarray]], user: str, t_req: float,
                        extension: int = 0) -> None:
        """Baseline thread: a fresh evaluator fed with the recent sweeps, baseline set; then swapped in."""
        try:
            ev = self._evaluator(st.fs, st.pre, st.n, st.modality, st.names, st.source)
            for t, x in sweeps:
                ev.process(x, t)
            ev.set_baseline()
        except Exception as exc:
            err = repr(exc)
            self._submit(lambda: self._baseline_failed(st, user, err))
            return
        self._submit(lambda: self._baseline_ready(st, ev, sweeps, user, t_req, extension))

    def _readiness(self, st: Stream, ev: Any, sweeps: list[tuple[float, np.ndarray]], user: str, t_req: float,
                   extension: int) -> str:
        """Per untracked channel, how many more sweeps (and about how many seconds) its baseline needs; the
        stream keeps collecting for them and completes by itself (st.collecting): it is built again once that
        many more sweeps have come. '' when all are tracked."""
        more = ev.baseline_readiness()
        st.collecting = None
        untracked = [c for c in range(len(st.names)) if st.show[c] and more[c] != 0]
        n = len(sweeps)
        cap = st.recent.maxlen or math.inf  # BASELINE_SWEEPS_MAX: the sweeps a stream keeps to build from
        # A weak baseline (level known to worse than ±10 %) keeps refining, doubling its sweeps up to the cap while
        # the stream stays normal: a change just past a criterion (45 % against 50 %) can only be told from a
        # baseline known to a few per cent (docs/EVALUATION.md, limb_positioning). The alerts it judges by meanwhile
        # are those of the baseline as it stands.
        refining = {short_name(st.names[c]): int(min(n, cap - n)) for c in ev.weak_baselines()
                    if st.show[c] and more[c] == 0} \
            if st.modality != "mep" and extension < BASELINE_EXTENSIONS_MAX and n < cap else {}
        if not untracked and not refining:
            return ""
        span = sweeps[-1][0] - sweeps[0][0]
        per_s = (n - 1) / span if n > 1 and span > 0 else 0.0  # sweeps per second on this stream (0: unknown yet)
        unit = "trials" if st.modality == "mep" else "sweeps"
        waiting: dict[str, int] = {}
        # No response found yet, or an estimate beyond the cap: from a few hundred sweeps of a small N13 or a P37 of
        # 0.3 µV both are guesses (one said 29,000 more sweeps for a channel tracked at 1,200), so look again with
        # twice the sweeps (the noise of the average down by 1/sqrt(2)); only the cap ends the collecting.
        unsure: list[str] = []
        hopeless: list[str] = []
        for c in untracked:
            m, name = more[c], short_name(st.names[c])
            if extension >= BASELINE_EXTENSIONS_MAX or n >= cap:
                hopeless.append(name)
            elif m is None or n + m > cap:
                unsure.append(name)
            else:
                waiting[name] = int(m)
        waiting.update({name: int(min(n, cap - n)) for name in unsure})
        parts = []
        if waiting or refining:
            due = {**refining, **waiting}
            need = max(due.values())
            have = sum(1 for t, _ in st.recent if t >= sweeps[0][0])  # the sweeps so far, with any that came since
            st.collecting = {"user": user, "t_req": t_req, "first_t": sweeps[0][0], "extension": extension,
                             "names": list(due), "refining": list(refining), "have": have, "due_n": n + need,
                             "due_t": self.t_s + need / per_s if per_s > 0 else math.nan,
                             "eta": {nm: round(m / per_s) if per_s > 0 else None for nm, m in due.items()}}
        if waiting:
            parts.append("still collecting, completes by itself: " + ", ".join(
                "%s %s ~%d more %s%s" % (nm, "is not reproducible yet, looks again after" if nm in unsure else "needs",
                                          m, unit, " (~%.0f s)" % (m / per_s) if per_s > 0 else "")
                for nm, m in waiting.items()))
        if refining:
            parts.append("refining by itself while the response stays stable: " + ", ".join(
                "%s with ~%d more %s%s" % (nm, m, unit, " (~%.0f s)" % (m / per_s) if per_s > 0 else "")
                for nm, m in refining.items()))
        if hopeless:
            parts.append("not reproducible, not tracked: %s" % ", ".join(hopeless))
        self.store.audit(self.case_id, "system", "baseline.readiness",
                         {"stream": st.key, "waiting": waiting, "refining": refining, "not_reproducible": hopeless})
        return " (" + "; ".join(parts) + ")"

    def _baseline_failed(self, st: Stream, user: str, err: str) -> None:
        st.baseline_pending, st.catchup, st.dirty = False, None, True
        self.store.audit(self.case_id, user, "baseline.failed", {"stream": st.key, "error": err})
        self._event("event", "baseline of %s failed: %s" % (st.key, err), "system")

    def _baseline_ready(self, st: Stream, ev: Any, sweeps: list[tuple[float, np.ndarray]], user: str,
                        t_req: float, extension: int = 0) -> None:
        for t, x in st.catchup or []:
            res = ev.process(x, t)
            for a in res.alerts:
                self._alert(st, a)
        for ch, marker in enumerate(st.evaluator.markers):  # manual peak marks outlive the swap
            for name, lat in marker.overrides.items():
                ev.markers[ch].override(name, lat)
        st.evaluator, st.catchup, st.baseline_pending = ev, None, False
        if st.modality == "mep":
            mean = np.median(np.stack([st.display_cond(x.astype(np.float64), t) for t, x in sweeps]), axis=0)
        else:
            mean = ev.accum.halves()[0]
        refs = []
        for c in range(len(st.names)):
            amp, lat = ev.baseline_reference(c)
            se = ev.baseline_level_se(c) if st.modality != "mep" else float("nan")
            refs.append({"amp_uv": _num(amp), "lat_ms": _num(lat), "tracked": bool(ev.tracked[c]),
                         "level_se": _num(se, 4)})
        peaks = [{nm: {"lat": _num(p.latency_ms), "amp": _num(p.amplitude_uv)} for nm, p in bp.items()}
                 for bp in ev.baseline_peaks]
        first_t, last_t = sweeps[0][0], sweeps[-1][0]
        st.baseline = {"t_s": round(t_req, 2), "user": user, "mean": mean, "refs": refs}
        st.states = ["normal"] * len(st.names)
        self.store.add_baseline(self.case_id, st.key, t_req, user, first_t, last_t, refs, peaks, mean)
        self.store.audit(self.case_id, user, "baseline", {"stream": st.key, "t_s": t_req, "sweeps": len(sweeps),
                                                          "first_t": first_t, "last_t": last_t,
                                                          "tracked": [r["tracked"] for r in refs]})
        more = self._readiness(st, ev, sweeps, user, t_req, extension)
        verb = "from" if not extension else "updated by itself from" if st.collecting else "completed by itself from"
        text = "baseline %s %s %d sweeps" % (st.key, verb, len(sweeps)) + more
        weak = [(short_name(st.names[c]), se) for c, se in ev.weak_baselines().items() if st.show[c]]
        if weak:
            text += " (weak baseline, a change takes longer to confirm: %s)" % ", ".join(
                "%s level ±%.0f %%" % (nm, 100 * se) for nm, se in weak)
        self._event("baseline", text, user)
        self._stack_push(st, "baseline")
        base = self._base_frame(st)
        if base is not None:
            self._emit([("base:" + st.key, base)], [])
        st.dirty = True

    # ---------------------------------------------------------------- free-running EMG
    def _drain_emg(self) -> None:
        """Analyse every free-run block waiting (engine thread): events to the store, the timeline and the page,
        the A-train warning, display columns. Nothing is skipped but display columns that would be off the screen
        before they arrive (the analysis more than VIEW_S behind)."""
        from ionm.case.timeline import EMG_TIMELINE_KINDS, describe_emg
        from ionm.console import freerun

        assert self.emg is not None
        mon = self.emg
        if self._emg_last_wall is not None:
            self.technical.sweep(freerun.STREAM, self._emg_last_wall)
        appends: list[dict[str, Any]] = []
        while True:
            try:
                block, hp = self._emg_blocks.get_nowait()
            except queue.Empty:
                break
            events, cols = mon.process(block, hp)
            self.stats["emg_blocks"] += 1
            behind = self._emg_blocks.qsize() * block.n / block.fs
            self.stats["emg_behind_max_s"] = max(self.stats["emg_behind_max_s"], behind)
            if cols is not None:
                if behind > freerun.VIEW_S:  # off the screen before it could be drawn: the snapshot has it
                    self.stats["emg_columns_skipped"] += len(cols["lo"][0]) if cols["lo"] else 0
                else:
                    self._emg_columns.append(cols)
            for ev in events:
                self.store.add_program(self.case_id, ev["t_s"], "system", "emg", ev)
                appends.append({"k": "emgev", **ev})
                if ev["kind"] in EMG_TIMELINE_KINDS:
                    self._event("emg", describe_emg(ev), "system", t_s=ev["t_s"])
                self._emg_dirty = True
            for c in mon.due_warnings():
                self._emg_alert(c)
                self._emg_dirty = True
        if self._emg_columns and (self._emg_columns[-1]["t0"] - self._emg_columns[0]["t0"] >= EMG_PUBLISH_S
                                  or self._emg_blocks.empty()):
            appends.append(_merge_columns(self._emg_columns))
            self._emg_columns = []
        ongoing = bool(mon.detector.ongoing())
        frames = [("emg", mon.frame())] if self._emg_dirty or ongoing or mon.blocks % 25 == 0 else []
        self._emg_dirty = ongoing  # a discharge under way is redrawn until it ends
        if frames or appends:
            self._emit(frames, appends)

    def now_s(self) -> float:
        """The case time of what a user does now: the newest sweep's, or the free-run EMG's if that is newer (a case
        of free-run EMG alone has no sweeps). Free-run EMG does not move self.t_s, the sweeps' clock, whose restarts
        are told by sweeps falling behind it."""
        return max(self.t_s, self.emg.t_s if self.emg is not None else 0.0,
                   self.eeg.t_s if self.eeg is not None else 0.0, self.baep.t_s if self.baep is not None else 0.0)

    def _emg_warning(self, user: str, s: float) -> dict[str, Any]:
        """Set the cumulative A-train time at which a facial channel warns (s), for the rest of the case: recorded,
        audited and on the timeline. A channel already warned is not warned again; one already past the new
        threshold is warned at once."""
        if not s > 0:
            raise CommandError("the A-train warning must be above 0 s")
        old = self.a_train_warn_s
        self.a_train_warn_s = s
        if self.emg is not None:
            self.emg.warn_s = s
        body = {"warn_s": s, "was_s": old}
        now = self.now_s()
        self.store.add_program(self.case_id, now, user, "emg_warning", body)
        self.store.audit(self.case_id, user, "emg_warning", body | {"t_s": round(now, 3)})
        self._event("emg", "free-run EMG: A-train warning at %g s (was %g s)" % (s, old), user, t_s=now)
        if self.emg is not None:
            for c in self.emg.due_warnings():
                self._emg_alert(c)
            self._emit([("emg", self.emg.frame())], [])
        return {"warn_s": s}

    def _emg_alert(self, c: int) -> None:
        """The cumulative A-train time of facial channel c reached the threshold: an alert (banner, store, audit,
        timeline), once per channel and case."""
        from ionm.console import freerun

        assert self.emg is not None
        ch = self.emg.channels[c]
        self._alert_seq += 1
        uid = "%s-A%d" % (self.case["uid"], self._alert_seq)
        t_s = round(self.emg.t_s, 3)
        row: dict[str, Any] = {"uid": uid, "stream": freerun.STREAM, "t_s": t_s, "channel": c,
               "channel_name": ch.name,
               "criterion": "cumulative A-train time %.1f s (warning at %g s)" % (ch.a_train_s, self.emg.warn_s),
               "amplitude_ratio": None, "latency_ratio": None, "scope": "focal"}
        self.store.add_alert(self.case_id, row)
        self.store.audit(self.case_id, "system", "alert", row | {"a_train_s": round(ch.a_train_s, 3)})
        label = alert_label(row)
        self.alerts.add(row | {"label": label, "wall": time.time(), "ack": None})
        self._event("alert", label, "system", t_s=t_s)
        self._publish_alerts()

    # ---------------------------------------------------------------- EEG and BAEP
    def _neuro_keys(self) -> list[str]:
        return [k for k in (self.eeg.stream if self.eeg is not None else None,
                            self.baep.stream if self.baep is not None else None) if k]

    def _drain_neuro(self) -> None:
        """Analyse the EEG and BAEP blocks waiting (engine thread, at most NEURO_BLOCKS_PER_STEP): EEG records to the
        store, events to alerts and the timeline, display items to the viewers."""
        appends: list[dict[str, Any]] = []
        frames: list[tuple[str, dict[str, Any]]] = []
        eeg_changed = baep_changed = False
        for _ in range(NEURO_BLOCKS_PER_STEP):
            try:
                stream, wall, block = self._neuro_blocks.get_nowait()
            except queue.Empty:
                break
            self.technical.sweep(stream, wall)
            self.stats["neuro_blocks"] += 1
            if isinstance(block, EegBlock):
                new = self._eeg_block(block)
                appends += new
                eeg_changed = eeg_changed or any(a["k"] == "eegep" for a in new)
            else:
                baep_changed = self._baep_block(block) or baep_changed
        if eeg_changed and self.eeg is not None:
            frames.append(("eeg", self.eeg.frame()))
        if baep_changed and self.baep is not None:
            frames.append(("baep", self.baep.frame()))
        if frames or appends:
            self._emit(frames, appends)

    def _eeg_block(self, block: EegBlock) -> list[dict[str, Any]]:
        from ionm.console import eeg as ev

        if self.eeg is None:
            self.eeg = ev.EegView(block.fs, list(block.channel_names), t0_s=block.t_s)
            self.eeg.clamp = self.clamp
            if self._eeg_restore is not None:
                self._eeg_rebuild(self._eeg_restore)
        view = self.eeg
        events, appends = view.process(block)
        while self.eeg_recorded_baselines and view.t_s >= float(self.eeg_recorded_baselines[0]["to_s"]) - 1e-6:
            b = self.eeg_recorded_baselines.pop(0)  # a replay: where it was set live, from the EEG it was set from
            self._neuro_baseline(ev.STREAM, "%s (recorded)" % b.get("user", "?"), from_s=float(b["from_s"]))
        if self.record:
            for t_s, idx, x in view.store_records(block):
                sw = Sweep(t_s, idx, "eeg", "EEG", block.fs, 0, tuple(range(x.shape[0])), tuple(view.names), x)
                if ev.STREAM not in self._neuro_streams:
                    self.store.add_stream(self.case_id, ev.STREAM, sw)
                    self._neuro_streams.add(ev.STREAM)
                self.store.add_sweep(self.case_id, ev.STREAM, self._eeg_seq, sw, [None] * x.shape[0])
                self._eeg_seq += 1
        if self.auto_baseline_s is not None and view.baseline_info is None and view.t_s >= self.auto_baseline_s:
            try:
                self._neuro_baseline(ev.STREAM, "auto")
            except CommandError:
                pass
        for e in events:
            self._eeg_event(e)
        return appends

    def _eeg_event(self, e: Any) -> None:
        from ionm.console import eeg as ev

        assert self.eeg is not None
        t = round(self.eeg.t0_s + e.t_s, 2)
        from ionm.case.timeline import describe_eeg_recovery, eeg_ratios

        body = e.as_json() | {"t_s": t}
        if self.clamp is not None:
            body["clamp"] = dict(self.clamp)
        ratios = eeg_ratios(body)
        self.store.add_program(self.case_id, t, "system", "eeg_event", body)
        if e.kind == "recovered":
            self._event("eeg", describe_eeg_recovery(body), "system", t_s=t)
            return
        if e.kind == "ischaemia":
            side = str(e.side)
            row = {"channel": 0 if side == "L" else 1, "channel_name": "%s hemisphere" % side, "scope": "focal",
                   "criterion": "unilateral ischaemia (%s)%s" % (ratios, self._since_clamp(t))}
        else:
            row = {"channel": 2, "channel_name": "both hemispheres", "scope": "global",
                   "criterion": "bilateral slowing, the anaesthetic pattern, not ischaemia (%s; BSR %d %%)%s"
                                % (ratios, round(100 * e.bsr), self._since_clamp(t))}
        self._neuro_alert(ev.STREAM, t, row, {"eeg": body})

    def _since_clamp(self, t_s: float) -> str:
        """", 32 s after clamp on" (and the shunt's time) while clamped; "" otherwise."""
        if self.clamp is None:
            return ""
        text = ", %.0f s after clamp on" % (t_s - self.clamp["clamp_s"])
        if self.clamp.get("shunt_s") is not None:
            text += ", shunt open for %.0f s" % (t_s - self.clamp["shunt_s"])
        return text

    def _neuro_alert(self, stream: str, t_s: float, fields: dict[str, Any], detail: dict[str, Any]) -> None:
        """An EEG or BAEP alert: stored, audited, on the banner and the timeline, acknowledged like any other."""
        self._alert_seq += 1
        uid = "%s-A%d" % (self.case["uid"], self._alert_seq)
        row: dict[str, Any] = {"uid": uid, "stream": stream, "t_s": t_s, "amplitude_ratio": None,
                               "latency_ratio": None} | fields
        self.store.add_alert(self.case_id, row)
        self.store.audit(self.case_id, "system", "alert", row | detail)
        label = alert_label(row)
        self.alerts.add(row | {"label": label, "wall": time.time(), "ack": None})
        self._event("alert", label, "system", t_s=t_s)
        self._publish_alerts()

    def _baep_block(self, block: BaepBlock) -> bool:
        """One BAEP block; True when the page's BAEP state changed (a new average, an alert, a baseline)."""
        from ionm.console import baep as bv

        if self.baep is None:
            self.baep = bv.BaepView(block.fs, block.pre_samples, block.rate_hz, list(block.channel_names),
                                    block.side, t0_s=block.t_s)
            if self.record and self.baep.stream not in self._neuro_streams:
                n = int(block.sweeps_uv.shape[2])
                self.store.add_stream(self.case_id, self.baep.stream, Sweep(
                    block.t_s, 0, "baep", "%s ear" % block.side, block.fs, block.pre_samples,
                    tuple(range(len(block.channel_names))), tuple(block.channel_names),
                    np.zeros((len(block.channel_names), n), dtype=np.float32)))
                self._neuro_streams.add(self.baep.stream)
            self.baep.restore(self._baep_restore)
        view = self.baep
        state = view.state
        events, to_store = view.process(block)
        for why, mean, n in to_store:
            self.store.add_average(self.case_id, view.stream, view.t_s, why, [n] * mean.shape[0], mean)
        if self.auto_baseline_s is not None and view.baseline_info is None and view.t_s >= self.auto_baseline_s:
            try:
                self._neuro_baseline(view.stream, "auto")
            except CommandError:
                pass
        for e in events:
            self._baep_event(e)
        changed = bool(events) or state != view.state or (
            view.current is not None and view.current["t_s"] != self._baep_shown)
        self._baep_shown = view.current["t_s"] if view.current is not None else None
        return changed

    def _baep_event(self, e: Any) -> None:
        assert self.baep is not None
        view = self.baep
        t = view.event_time(e)
        from ionm.case.timeline import baep_wave_v, describe_baep_recovery

        body = e.as_json() | {"t_s": t, "stream": view.stream}
        self.store.add_program(self.case_id, t, "system", "baep_event", body)
        what = baep_wave_v(body)
        if e.kind == "recovered":
            self._event("baep", describe_baep_recovery(view.stream, body), "system", t_s=t)
            return
        if len(view.kept):
            mean = view._mean(min(len(view.kept), 1000))
            self.store.add_average(self.case_id, view.stream, t, "alert", [min(len(view.kept), 1000)] * mean.shape[0],
                                   mean)
        base_v = (view.baseline_info or {}).get("waves", {}).get("V", {}).get("ms")
        lat = (base_v + e.latency_shift_ms) / base_v if base_v else None
        criterion = ("wave V lost (%s)" % what if e.kind == "loss" else
                     "wave V later by >= 1 ms with its amplitude halved (%s)" % what)
        self._neuro_alert(view.stream, t, {"channel": 0, "channel_name": view.names[0], "scope": "focal",
                                           "criterion": criterion, "amplitude_ratio": _num(e.amplitude_ratio, 4),
                                           "latency_ratio": _num(lat, 4)}, {"baep": body})

    def _mark(self, user: str, event: str) -> dict[str, Any]:
        """A surgical event (SURGICAL_EVENTS) now: recorded (programs, `surgical_event`), audited, on the timeline. A
        clamp renews the EEG's baseline from the EEG before it (the last 3 min, at least 40 s), unless the EEG is in
        a changed state then (its baseline is kept: a re-baseline would end the state under way) or too short."""
        if event not in SURGICAL_EVENTS:
            raise CommandError("unknown surgical event %r (%s)" % (event, ", ".join(SURGICAL_EVENTS)))
        now = self.now_s()
        body: dict[str, Any] = {"event": event, "t_s": round(now, 3)}
        if event == "clamp":
            body["eeg_baseline"] = self._baseline_at_clamp(user)
            self.clamp = {"clamp_s": round(now, 2), "shunt_s": None}
        elif event == "shunt" and self.clamp is not None:
            self.clamp["shunt_s"] = round(now, 2)
        elif event == "declamp":
            self.clamp = None
        self.store.add_program(self.case_id, now, user, "surgical_event", body)
        self.store.audit(self.case_id, user, "mark", body)
        self._event("surgical", describe_surgical_event(body), user, t_s=now)
        if self.eeg is not None:
            self.eeg.clamp = self.clamp
            self._emit([("eeg", self.eeg.frame())], [])
        return body

    def _baseline_at_clamp(self, user: str) -> str:
        """The clamp's effect on the EEG's baseline: "renewed", or why it was not."""
        if self.eeg is None:
            return "no EEG"
        mon = self.eeg.monitor
        if mon.mode[0] != "normal" or any(v != "normal" for v in mon.state.values()):
            return "kept: the EEG is not normal now (%s)" % ", ".join(
                "%s %s" % (k, v) for k, v in sorted(mon.state.items()) if v != "normal")
        try:
            self._neuro_baseline(self.eeg.stream, "%s (clamp on)" % user)
        except CommandError as exc:
            return "not set: %s" % exc
        return "renewed"

    def _neuro_baseline(self, key: str, user: str, from_s: float | None = None) -> str:
        """Set the EEG's or the BAEP's baseline now (engine thread): recorded (programs), audited, on the timeline.
        Raises CommandError when that stream has no data or too little yet."""
        from ionm.case.timeline import describe_baep_baseline, describe_eeg_baseline

        now = self.now_s()
        if self.eeg is not None and key == self.eeg.stream:
            try:
                info = self.eeg.set_baseline(now, from_s=from_s)
            except ValueError as exc:
                raise CommandError(str(exc)) from None
            text = describe_eeg_baseline(info)
            self.store.add_program(self.case_id, now, user, "eeg_baseline", info)
            self.store.audit(self.case_id, user, "baseline", {"stream": key, "t_s": round(now, 3)} | info)
            self._event("baseline", text, user, t_s=now)
            self._emit([("eeg", self.eeg.frame())], [])
            return key
        if self.baep is not None and key == self.baep.stream:
            try:
                info, mean = self.baep.set_baseline(now)
            except ValueError as exc:
                raise CommandError(str(exc)) from None
            text = describe_baep_baseline(info | {"stream": key})
            self.store.add_average(self.case_id, key, now, "baseline", [info["sweeps"]] * mean.shape[0], mean)
            self.store.add_program(self.case_id, now, user, "baep_baseline", info | {"stream": key})
            self.store.audit(self.case_id, user, "baseline", {"stream": key, "t_s": round(now, 3)} | info)
            self._event("baseline", text, user, t_s=now)
            self._emit([("baep", self.baep.frame())], [])
            return key
        raise CommandError("no %s data yet to set a baseline on" % key.split("/")[0].upper())

    def _resume_neuro(self, programs: list[dict[str, Any]]) -> float:
        """A resumed case: the recorded EEG is run through a fresh view with its first new block (its DSA, trends and
        the monitor's state come back, the recorded baseline set where it was set, its events not raised again);
        the BAEP's sweeps are not recorded, so its baseline must be set again. Returns the case time the EEG and
        BAEP reached."""
        cid = self.case_id
        last = 0.0
        for meta in self.store.streams(cid):
            if meta["modality"] == "eeg":
                rows = self.store.query("SELECT COUNT(*), MAX(t_s) FROM sweeps WHERE case_id = ? AND stream = ?",
                                        (cid, meta["key"]))
                self._eeg_seq = int(rows[0][0])
                if self._eeg_seq:
                    self.eeg_end_s = float(rows[0][1]) + float(meta["n_samples"]) / float(meta["fs"])
                    last = max(last, self.eeg_end_s)
                    self._eeg_restore = {"baselines": [p["body"] for p in programs if p["kind"] == "eeg_baseline"]}
                self._neuro_streams.add(meta["key"])
            elif meta["modality"] == "baep":
                self._neuro_streams.add(meta["key"])
                avgs = self.store.averages(cid, meta["key"])
                if avgs:
                    last = max(last, avgs[-1][0])
                self._baep_restore = avgs
                if any(p["kind"] == "baep_baseline" for p in programs):
                    self._event("baep", "BAEP %s: its sweeps are not recorded, so the baseline set before the restart "
                                "is not restored: set it again" % meta["key"].split("/", 1)[-1], "system", t_s=last)
        return last

    def _eeg_rebuild(self, restore: dict[str, Any]) -> None:
        """Run the recorded EEG through the fresh view (no display, no store, no alerts: they are recorded)."""
        from ionm.console import eeg as ev

        assert self.eeg is not None
        view: Any = None
        pending = list(restore["baselines"])
        for sw, _ in self.store.iter_sweeps(self.case_id, ev.STREAM):
            if view is None:
                view = ev.EegView(sw.fs, list(sw.channel_names), t0_s=sw.t_s)
            view.process(EegBlock(sw.t_s, sw.stim_index, sw.fs, sw.channel_names, sw.data_uv), display=False)
            while pending and view.t_s >= float(pending[0]["to_s"]) - 1e-6:
                b = pending.pop(0)
                view.set_baseline(float(b["t_s"]), from_s=float(b["from_s"]))
        if view is not None:
            self.eeg = view

    # ---------------------------------------------------------------- link health, stimulation
    def _poll_link(self) -> None:
        assert self.link_health is not None
        try:
            link = dict(self.link_health())
        except Exception as exc:
            link = {"state": "error", "error": repr(exc)}
        old = set(self.link.get("leadoff", []))
        new = set(link.get("leadoff", []))
        for name in sorted(new - old):
            self._event("event", "lead off: %s" % short_name(name), "system")
            self.store.audit(self.case_id, "system", "leadoff", {"channel": name, "t_s": self.t_s})
        for name in sorted(old - new):
            self._event("event", "lead back on: %s" % short_name(name), "system")
            self.store.audit(self.case_id, "system", "leadon", {"channel": name, "t_s": self.t_s})
        for ev in self.technical.new_board_events(link.get("board_events", [])):
            text = "board: %s" % ev["detail"]
            self._technical_record(text, "board." + str(ev["kind"]), {"seq": ev["seq"], "detail": ev["detail"]})
        stim_changed = link.get("stimulation_stopped") != self.link.get("stimulation_stopped")
        self.link = link
        self._emit([("link", link | {"t_s": round(self.t_s, 2)})], [])
        if stim_changed:
            self._publish_stim()

    # ---------------------------------------------------------------- technical alarms
    def _running_streams(self) -> dict[str, float]:
        """Streams whose stimulation is on (those a stalled source leaves without sweeps), each with the
        interval its program stimulates at (s; 0 if not known); and free-run EMG while its source runs."""
        out = self._running_sweep_streams()
        if self._emg_sources and not self._emg_done.is_set():
            from ionm.console.freerun import STREAM

            out[STREAM] = 0.0
        for stream, (_, done) in self._neuro_sources.items():  # EEG and BAEP while their sources run
            if not done.is_set():
                out[stream] = 0.0
        return out

    def _running_sweep_streams(self) -> dict[str, float]:
        if self._source_done.is_set() or not self._sources:
            return {}
        if time.time() < self._probe_pause_until:  # a screw test paused the other outputs
            return {}
        if self.stimulation is None:
            return dict.fromkeys(self.streams, 0.0)
        from ionm.board.stimulation import SSEP_OUTPUTS

        p = self.stimulation.state()
        every = {SSEP_OUTPUTS[int(o)]: 1.0 / float(v.get("rate_hz") or math.inf) for o, v in p["ssep"].items()
                 if v.get("enabled")}
        out = {}
        for k, st in self.streams.items():
            if st.modality == "mep" and p["tcmep"].get("repeat_s"):
                out[k] = float(p["tcmep"]["repeat_s"])
            elif st.modality != "mep" and st.source in every:
                out[k] = every[st.source]
        return out

    def _check_technical(self) -> None:
        quality: dict[str, str] = {}
        held = self.eeg.held_alarm(EEG_HELD_S) if self.eeg is not None else None
        if held:
            quality["eeg-artefact"] = held
        raised, cleared = self.technical.check(time.time(), self.t_s, self._running_streams(), self.link, quality)
        for a in raised:
            self._technical_record("TECHNICAL ALARM: %s" % a.text, "technical.raise", {"key": a.key, "text": a.text})
        for a in cleared:
            lasted = time.time() - a.since_wall
            self._technical_record("technical alarm cleared after %.0f s: %s" % (lasted, a.text), "technical.clear",
                                   {"key": a.key, "text": a.text, "lasted_s": round(lasted, 1)})
        if raised or cleared:
            self._publish_technical()

    def _technical_record(self, text: str, action: str, detail: dict[str, Any]) -> None:
        """On every viewer's timeline, in the audit trail and in the case record (report, export)."""
        self.store.add_note(self.case_id, self.t_s, "system", text, kind="technical")
        self.store.audit(self.case_id, "system", action, detail | {"t_s": round(self.t_s, 3)})
        self._event("technical", text, "system")

    def _publish_technical(self) -> None:
        self._emit([("technical", self.technical.frame())], [])

    def technical_alarms(self) -> list[Alarm]:
        return list(self.technical.active.values())

    def _stim_frame(self) -> dict[str, Any]:
        assert self.stimulation is not None
        # what the board is doing, beside what the program asks for: they differ when the board stopped it
        return {"program": self.stimulation.state(), "limits": self.stimulation.limits(),
                "board_stopped": self.link.get("stimulation_stopped")}

    def _publish_stim(self) -> None:
        if self.stimulation is not None:
            self._emit([("stim", self._stim_frame())], [])

    def _publish_alerts(self) -> None:
        self._emit([("alerts", self.alerts.frame())], [])

    # ---------------------------------------------------------------- frames out
    def _publish_dirty(self) -> None:
        frames = []
        now = time.time()
        for st in self.streams.values():
            if not st.dirty:
                continue
            f = self._stream_frame(st)
            f["arr0"], f["arr1"] = st.arr0, st.arr1
            frames.append(("stream:" + st.key, f))
            if st.arr0 is not None:
                self.stats["engine_latency_ms"].append((now - st.arr0) * 1000.0)
            st.dirty, st.arr0 = False, None
        self._last_publish = time.monotonic()
        if frames:
            self.stats["frames"] += len(frames)
            self._emit(frames, [])

    def _emit(self, frames: list[tuple[str, dict[str, Any]]], appends: list[dict[str, Any]]) -> None:
        if not self._subscribers:
            return
        fj = [(k, json.dumps(v, separators=(",", ":"), allow_nan=False), v.get("arr0")) for k, v in frames]
        aj = [json.dumps(a, separators=(",", ":"), allow_nan=False) for a in appends]
        for cb in self._subscribers:
            cb(fj, aj)

    def snapshot(self) -> dict[str, Any]:
        """The whole state for a new client (engine thread: use call(engine.snapshot))."""
        frames = {"stream:" + k: self._stream_frame(st) for k, st in self.streams.items()}
        frames.update({"stack:" + k: {"key": k, "traces": list(st.stack)} for k, st in self.streams.items()})
        for k, st in self.streams.items():
            base = self._base_frame(st)
            if base is not None:
                frames["base:" + k] = base
        frames["alerts"] = self.alerts.frame()
        if self.link:
            frames["link"] = self.link | {"t_s": round(self.t_s, 2)}
        if self.stimulation is not None:
            frames["stim"] = self._stim_frame()
        frames["technical"] = self.technical.frame()
        frames["screws"] = self.screw_frame()
        frames["tof"] = self.tof_frame()
        frames["probe"] = self.probe_frame()
        frames["case"] = self.case_info()
        if self.emg is not None:
            frames["emg"] = self.emg.frame()
            frames["emgview"] = self.emg.view_frame()
        if self.eeg is not None:
            frames["eeg"] = self.eeg.frame()
            frames["eegview"] = self.eeg.view_frame()
        if self.baep is not None:
            frames["baep"] = self.baep.frame()
        # bounded as the page draws it, however long the case (ionm.console.display); the store has everything
        return bounded_snapshot({"frames": frames}, self.trend, self.timeline,
                                {k: st.show for k, st in self.streams.items()})

    def case_info(self) -> dict[str, Any]:
        c = self.store.case(self.case_id)
        return {"id": c["id"], "uid": c["uid"], "patient_id": c["patient_id"], "procedure": c["procedure"],
                "created": c["created"], "closed": c["closed"], "meta": c["meta"]}

    # ================================================================ resuming a case after a restart
    def resume(self) -> float:
        """Rebuild the state of a case from the store (call before start()); returns the last recorded stimulus
        time, from which the source should continue."""
        cid = self.case_id
        last_t = 0.0
        walls = self.store.query("SELECT MAX(wall) FROM sweeps WHERE case_id = ?", (cid,))
        self._last_sweep_wall = walls[0][0] if walls and walls[0][0] is not None else None
        baselines = {b["stream"]: b for b in self.store.baselines(cid)}  # the newest per stream wins
        for meta in self.store.streams(cid):
            key = meta["key"]
            if meta["modality"] in ("eeg", "baep"):  # EEG and BAEP: below
                continue
            rows = self.store.query("SELECT COUNT(*), MAX(t_s) FROM sweeps WHERE case_id = ? AND stream = ?",
                                    (cid, key))
            count, t_max = int(rows[0][0]), rows[0][1]
            if not count:
                continue
            last_t = max(last_t, float(t_max))
            b = baselines.get(key)
            first = None
            for sw, _ in self.store.iter_sweeps(cid, key, t_from=float(t_max) - 120.0):
                if first is None:
                    first = sw
                    st = self._new_stream(sw, key)
                st.evaluator.process(np.asarray(sw.data_uv), sw.t_s)
                st.recent.append((sw.t_s, np.asarray(sw.data_uv)))
                st.t_s = sw.t_s
            st.seq = count
            if b is not None:
                ev = self._evaluator(st.fs, st.pre, st.n, st.modality, st.names, st.source)
                used = [(sw.t_s, np.asarray(sw.data_uv)) for sw, _ in
                        self.store.iter_sweeps(cid, key, t_from=b["first_t"], t_to=b["last_t"])]
                for t, x in used:
                    ev.process(x, t)
                ev.set_baseline()
                for t, x in st.recent:
                    if t > b["last_t"]:
                        ev.process(x, t)
                st.evaluator = ev
                st.baseline = {"t_s": b["t_s"], "user": b["user"], "mean": b["mean"], "refs": b["refs"]}
            st.last_trend_t = st.last_stack_t = st.t_s
            self.trend[key] = compact_trend([{"k": "trend", "s": key, "t": round(float(m["t_s"]), 2),
                                              "amp": m["body"]["amp"], "lat": m["body"]["lat"]}
                                             for m in self.store.rows("measurements", cid) if m["stream"] == key])
            for t, why, mean in self.store.averages(cid, key):
                if why == "periodic":
                    st.stack.append(self._stack_trace(st, t, np.asarray(mean, dtype=np.float64)))
        acks = {a["alert_uid"]: a for a in self.store.rows("acks", cid)}
        programs = self.store.rows("programs", cid)
        tofs = {p["body"]["alert"]: p["body"]["tof"] for p in programs if p["kind"] == "alert_tof"}
        for a in self.store.rows("alerts", cid):
            ack = acks.get(a["uid"])
            row = {k: a[k] for k in ("uid", "stream", "t_s", "channel", "channel_name", "criterion",
                                     "amplitude_ratio", "latency_ratio", "scope")}
            if a["uid"] in tofs:
                row["tof"] = tofs[a["uid"]]
            self.alerts.add(row | {"label": alert_label(row), "wall": a["wall"],
                                   "ack": None if ack is None else {"user": ack["user"], "note": ack["note"],
                                                                    "wall": ack["wall"], "t_s": ack["t_s"]}})
        self._alert_seq = len(self.alerts)
        self.screws = [p["body"] for p in programs if p["kind"] == "screw_test"]
        self.tofs = [p["body"] for p in programs if p["kind"] == "tof"]
        self.probes = [p["body"] for p in programs if p["kind"] == "probe"]
        self._probe_seq = len(self.probes)
        self._tof_seq = len(self.tofs)
        for r in self.tofs:  # the 15-s rule and the unblocked references outlive a restart
            if r.get("error") is None:
                self._tof_last_t = max(self._tof_last_t, float(r["t_s"]))
                if r.get("reference_uv") is not None:
                    self._tof_ref.setdefault((int(r["output"]), int(r["channel"])), float(r["reference_uv"]))
        self._screw_seq = len(self.screws)
        self._screw_job_seq = max([int(r.get("test", 0)) for r in self.screws] + [0])
        from ionm.console import freerun

        emg_alerts = [a["channel_name"] for a in self.store.rows("alerts", cid) if a["stream"] == freerun.STREAM]
        emg_events = [p["body"] for p in programs if p["kind"] == "emg"]
        for p in programs:
            if p["kind"] == "emg_warning":  # the threshold set during the case outlives a restart
                self.a_train_warn_s = float(p["body"]["warn_s"])
        self._emg_restore = (emg_events, emg_alerts)
        # free-run EMG has no sweeps: its newest recorded event is how far it went (the quiet after it is not known)
        last_t = max([last_t] + [float(e["end_s"]) for e in emg_events])
        for p in programs:  # the clamp state the surgical events left
            ev = p["body"].get("event") if p["kind"] == "surgical_event" else None
            if ev == "clamp":
                self.clamp = {"clamp_s": round(float(p["t_s"]), 2), "shunt_s": None}
            elif ev == "shunt" and self.clamp is not None:
                self.clamp["shunt_s"] = round(float(p["t_s"]), 2)
            elif ev == "declamp":
                self.clamp = None
        last_t = max(last_t, self._resume_neuro(programs))
        for item in timeline_from_store(self.store, cid):
            self._event(item["kind"], item["text"], item["user"], item["t_s"], item["wall"])
        self.t_s = last_t
        self.store.audit(cid, "system", "case.resume", {"t_s": last_t})
        self._event("event", "case resumed after a restart at %.1f s" % last_t, "system")
        return last_t
