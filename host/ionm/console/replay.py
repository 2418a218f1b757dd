"""A recorded case replayed through a fresh engine, exactly as it ran live.

The recorded sweeps (ionm.case.replay.StoredCase) go through a new engine and pipeline; the recorded notes,
acknowledgements and stimulation changes appear in the timeline when they happened; manual peak marks are set
again when they were set. The engine works on a scratch store, so nothing done during a replay enters the case
record.

The alerts are reproduced exactly (the evaluation is deterministic given the sweeps and the baselines). Live, a
baseline is built on a background thread from a span of recorded sweeps and swapped in whenever it is ready:
until then the stream's previous evaluator goes on (and may alert), and the new one is caught up with the
sweeps that came meanwhile (and may alert for them). So a replay does not ask for baselines and build them in its
own time, which would swap them in at other sweeps: every recorded baseline row (those the engine completed by
itself included) is rebuilt from its recorded span [first_t, last_t] and swapped in right after the stream's
sweep after which it was swapped in live: the newest sweep of the stream recorded before the baseline row (by the
wall clock of the engine thread, which wrote both). A replay never completes a baseline by itself: the record
holds those rebuilds already.
"""

from __future__ import annotations

import concurrent.futures as cf
import functools
from typing import Any

import numpy as np

from ionm.case.replay import StoredCase, StoredEeg
from ionm.case.store import CaseStore
from ionm.case.timeline import timeline_from_store
from ionm.console.engine import CaseEngine, CommandError, Stream


class ReplayEngine(CaseEngine):
    """An engine that takes its baselines from the record: it never rebuilds one by itself."""

    def __init__(self, *args: Any, **kw: Any):
        super().__init__(*args, **kw)
        # recorded baselines built ahead on one thread, in the order they are needed; the engine waits for one
        # only if it gets there first
        self.builder = cf.ThreadPoolExecutor(max_workers=1, thread_name_prefix="replay-baselines")

    def stop(self) -> None:
        self.builder.shutdown(wait=False, cancel_futures=True)
        super().stop()

    def _readiness(self, st: Stream, ev: Any, sweeps: list[tuple[float, np.ndarray]], user: str, t_req: float,
                   extension: int) -> str:
        text = super()._readiness(st, ev, sweeps, user, t_req, extension)
        st.collecting = None  # the recorded rebuilds (if any) follow as baseline rows of their own
        return text


def applied_at(store: CaseStore, case_id: int, b: dict[str, Any]) -> float | None:
    """Stimulus time of the stream's newest sweep recorded before baseline row b: the live engine swapped the
    baseline in right after processing it."""
    rows = store.query("SELECT MAX(t_s) FROM sweeps WHERE case_id = ? AND stream = ? AND wall <= ?",
                       (case_id, b["stream"], b["wall"]))
    return None if rows[0][0] is None else float(rows[0][0])


def _build(engine: CaseEngine, store: CaseStore, case_id: int, b: dict[str, Any], meta: dict[str, Any]) -> Any:
    """A fresh evaluator with recorded baseline b set (any thread): fed the recorded sweeps b was built from."""
    names = list(meta["channel_names"])
    ev = engine._evaluator(float(meta["fs"]), int(meta["pre_samples"]), int(meta["n_samples"]), meta["modality"],
                           names, meta["source"])
    sweeps = [(sw.t_s, np.asarray(sw.data_uv, dtype=np.float32))
              for sw, _ in store.iter_sweeps(case_id, b["stream"], t_from=b["first_t"], t_to=b["last_t"])]
    for t, x in sweeps:
        ev.process(x, t)
    ev.set_baseline()
    return ev, sweeps


def _mark(engine: CaseEngine, user: str, msg: dict[str, Any]) -> None:
    try:
        engine._peak(user, msg)
    except CommandError as exc:
        engine._event("event", "[recorded] peak mark not applied: %s" % exc, user)


def prepare(store: CaseStore, case_id: int, scratch: CaseStore, speed: float,
            from_s: float = 0.0) -> tuple[ReplayEngine, StoredCase]:
    """The engine (on the scratch store) and source of a replay, with the recorded baselines and events
    scheduled."""
    case = store.case(case_id)
    rid = scratch.open_case(patient_id=case["patient_id"], procedure=case["procedure"],
                            meta={"replay_of": case["uid"], "source": "replay"}, user="replay")
    engine = ReplayEngine(scratch, rid, queue_size=32 if speed <= 0 else 2048)
    meta = {s["key"]: s for s in store.streams(case_id)}

    def swap_in(b: dict[str, Any], built: cf.Future[Any], extension: int) -> None:
        st = engine.streams.get(b["stream"])
        if st is None:
            return
        ev, sweeps = built.result()
        st.catchup = [(t, x) for t, x in st.recent if t > b["last_t"]]  # what came while it was being built
        engine._baseline_ready(st, ev, sweeps, "%s (recorded)" % b["user"], b["t_s"], extension)

    seen: dict[tuple[str, float], int] = {}
    planned = []
    for b in store.baselines(case_id):
        t = applied_at(store, case_id, b)
        if t is None or t < from_s or b["stream"] not in meta:
            continue
        extension = seen.get((b["stream"], b["t_s"]), 0)
        seen[(b["stream"], b["t_s"])] = extension + 1
        planned.append((t, b, extension))
    planned.sort(key=lambda p: p[0])
    for t, b, extension in planned:
        built = engine.builder.submit(_build, engine, store, case_id, b, meta[b["stream"]])
        engine.at(t, functools.partial(swap_in, b, built, extension))
    for m in store.rows("peak_marks", case_id):
        if m["t_s"] >= from_s:
            msg = {"stream": m["stream"], "channel": m["channel"], "name": m["name"], "latency_ms": m["latency_ms"]}
            engine.at(m["t_s"], functools.partial(_mark, engine, m["user"], msg))
    for item in timeline_from_store(store, case_id):
        # free-run EMG events too (its samples are not recorded: they are shown as recorded, not re-detected), and the
        # BAEP's recoveries (its sweeps are not recorded either); the EEG is replayed (eeg_source)
        kinds = ("note", "ack", "stim", "screw", "tof", "probe", "emg", "baep")
        if item["kind"] in kinds and item["t_s"] >= from_s:
            engine.at(item["t_s"], functools.partial(engine._event, item["kind"], "[recorded] " + item["text"],
                                                     item["user"]))
    source = StoredCase(store, case_id, speed, from_s)
    engine.link_health = source.link_health
    # the EEG: its recorded baselines (user and time from the programs row) set again where they were set
    engine.eeg_recorded_baselines = [p["body"] | {"user": p["user"]} for p in store.rows("programs", case_id)
                                     if p["kind"] == "eeg_baseline" and float(p["body"]["to_s"]) >= from_s]
    return engine, source


def eeg_source(store: CaseStore, case_id: int, speed: float, from_s: float = 0.0) -> StoredEeg | None:
    """The recorded EEG of a case as a source for the replay's engine (run_eeg_source), or None without EEG."""
    if not any(s["modality"] == "eeg" for s in store.streams(case_id)):
        return None
    return StoredEeg(store, case_id, speed, from_s)
