"""A recorded case replayed through a fresh engine, exactly as it ran live.

The recorded sweeps (ionm.case.replay.StoredCase) go through a new engine and pipeline; the recorded
baselines are set again at the moments they were set, and the recorded notes, acknowledgements and
stimulation changes appear in the timeline when they happened. The engine works on a scratch store, so
nothing done during a replay enters the case record.
"""

from __future__ import annotations

import functools

from ionm.case.replay import StoredCase
from ionm.case.store import CaseStore
from ionm.case.timeline import timeline_from_store
from ionm.console.engine import CaseEngine


def prepare(store: CaseStore, case_id: int, scratch: CaseStore, speed: float,
            from_s: float = 0.0) -> tuple[CaseEngine, StoredCase]:
    """The engine (on the scratch store) and source of a replay, with the recorded baselines and events
    scheduled."""
    case = store.case(case_id)
    rid = scratch.open_case(patient_id=case["patient_id"], procedure=case["procedure"],
                            meta={"replay_of": case["uid"], "source": "replay"}, user="replay")
    engine = CaseEngine(scratch, rid, queue_size=32 if speed <= 0 else 2048)

    def baseline(stream: str, user: str) -> None:
        if stream in engine.streams:
            engine.request_baseline(stream, "%s (recorded)" % user)

    for b in store.baselines(case_id):
        if b["t_s"] >= from_s:
            engine.at(b["t_s"], functools.partial(baseline, b["stream"], b["user"]))
    for item in timeline_from_store(store, case_id):
        if item["kind"] in ("note", "ack", "stim") and item["t_s"] >= from_s:
            engine.at(item["t_s"], functools.partial(engine._event, item["kind"], "[recorded] " + item["text"],
                                                     item["user"]))
    source = StoredCase(store, case_id, speed, from_s)
    engine.link_health = source.link_health
    return engine, source
