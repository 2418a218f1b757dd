"""Technical alarms: a stalled stream, stimulation the board stopped, lost samples and the link's state are
raised once, cleared when they end, and recorded apart from the neurophysiological alerts."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from pathlib import Path

from ionm.board.simcase import SimulatedCase
from ionm.board.stimulation import RecordedStimulation
from ionm.case.store import CaseStore
from ionm.console.engine import CaseEngine
from ionm.console.technical import TechnicalAlarms
from ionm.sweep import Sweep


def test_a_stream_that_stops_delivering_raises_one_alarm_that_clears_when_it_resumes() -> None:
    ta = TechnicalAlarms(stall_s=2.0)
    for k in range(6):
        ta.sweep("ssep-upper/L median", 100.0 + 0.213 * k)
    last = 100.0 + 0.213 * 5
    assert ta.check(last + 1.9, 10.0, {"ssep-upper/L median"}, {}) == ([], [])
    raised, cleared = ta.check(last + 2.1, 10.5, {"ssep-upper/L median"}, {})
    assert [a.key for a in raised] == ["stall:ssep-upper/L median"] and not cleared
    assert "no sweep from ssep-upper/L median for 2 s" in raised[0].text
    assert ta.check(last + 5.0, 11.0, {"ssep-upper/L median"}, {}) == ([], [])  # still on, not raised again
    assert "for 5 s" in ta.active["stall:ssep-upper/L median"].text
    ta.sweep("ssep-upper/L median", last + 5.1)
    raised, cleared = ta.check(last + 5.2, 11.2, {"ssep-upper/L median"}, {})
    assert not raised and [a.key for a in cleared] == ["stall:ssep-upper/L median"]


def test_a_slow_stream_is_late_after_three_of_its_intervals_and_a_stopped_one_never() -> None:
    ta = TechnicalAlarms(stall_s=2.0)
    for k in range(4):
        ta.sweep("mep/TcMEP", 4.0 * k)
    assert ta.check(12.0 + 11.0, 20.0, {"mep/TcMEP"}, {}) == ([], [])  # a TcMEP train every 4 s: 11 s is not late
    assert [a.key for a in ta.check(12.0 + 12.5, 21.0, {"mep/TcMEP"}, {})[0]] == ["stall:mep/TcMEP"]
    assert [a.key for a in ta.check(12.0 + 13.0, 21.5, set(), {})[1]] == ["stall:mep/TcMEP"]  # turned off: cleared


def test_a_slow_stream_is_not_late_before_its_intervals_are_known() -> None:
    """The first TcMEP trains of a case (one every 4 s): 3 s after the first, before two intervals have been
    seen, is not a stall (the live-case bench raised "no sweep from mep/TcMEP for 2 s" at 3 s and 6 s of every
    case); the program's interval is the expectation until the arrivals give one."""
    ta = TechnicalAlarms(stall_s=2.0)
    ta.sweep("mep/TcMEP", 0.0)
    assert ta.check(3.0, 3.0, {"mep/TcMEP": 4.0}, {}) == ([], [])
    ta.sweep("mep/TcMEP", 4.0)
    assert ta.check(7.0, 7.0, {"mep/TcMEP": 4.0}, {}) == ([], [])
    assert [a.key for a in ta.check(16.5, 16.5, {"mep/TcMEP": 4.0}, {})[0]] == ["stall:mep/TcMEP"]
    assert ta.check(3.0, 3.0, {"mep/TcMEP"}, {})[0] == []  # a set: no expectation, as before


def test_board_stop_link_state_and_loss_rate() -> None:
    ta = TechnicalAlarms(loss_fraction=0.001, loss_window_s=5.0)
    link = {"state": "streaming", "samples_lost": 0, "samples_received": 0,
            "stimulation_stopped": "no frame from the host for 100 ms"}
    raised, _ = ta.check(0.0, 1.0, set(), link)
    assert [a.key for a in raised] == ["board-stim"] and "no frame from the host" in raised[0].text
    link = link | {"stimulation_stopped": None, "samples_received": 80_000, "samples_lost": 40}  # 0.05 %
    raised, cleared = ta.check(1.0, 2.0, set(), link)
    assert not raised and [a.key for a in cleared] == ["board-stim"]
    link = link | {"samples_received": 160_000, "samples_lost": 400}  # 360 of 80 360 in the last second
    assert [a.key for a in ta.check(2.0, 3.0, set(), link)[0]] == ["loss"]
    for k in range(3, 10):  # no more losses: once the window has moved past them, the alarm clears
        link = link | {"samples_received": 80_000 * k}
        raised, cleared = ta.check(float(k), float(k + 1), set(), link)
        if cleared:
            break
    assert [a.key for a in cleared] == ["loss"] and k <= 8
    assert [a.key for a in ta.check(10.0, 11.0, set(), link | {"state": "recovering"})[0]] == ["link"]


def test_board_events_are_passed_on_once() -> None:
    ta = TechnicalAlarms()
    evs = [{"seq": 1, "kind": "watchdog", "detail": "a"}, {"seq": 2, "kind": "rearmed", "detail": "b"}]
    assert [e["seq"] for e in ta.new_board_events(evs)] == [1, 2]
    assert ta.new_board_events(evs) == []
    assert [e["seq"] for e in ta.new_board_events(evs + [{"seq": 3, "kind": "overrun", "detail": "c"}])] == [3]


class StallingSource:
    """A simulated case that stops delivering for `stall_s` of wall time after `after` sweeps, like a board whose
    stimulation stopped, with a board event and a stopped stimulator in its link health meanwhile."""

    def __init__(self, stim: RecordedStimulation, after: int, stall_s: float) -> None:
        self.sim = SimulatedCase("stable", 1, speed=0.0, stimulation=stim, duration_s=8.0)
        self.after, self.stall_s = after, stall_s
        self.stopped: str | None = None
        self.events: list[dict] = []
        self.done = threading.Event()

    def link_health(self) -> dict:
        return {"source": "stalling", "state": "streaming", "samples_lost": 0, "sweeps": 0,
                "board_events": list(self.events), "stimulation_stopped": self.stopped}

    def __iter__(self) -> Iterator[Sweep]:
        for k, sw in enumerate(self.sim):
            if k == self.after:
                self.stopped = "no frame from the host for 100 ms"
                self.events.append({"seq": 1, "kind": "watchdog", "detail": "no frame from the host for 100 ms: "
                                    "stimulation stopped"})
                time.sleep(self.stall_s)
                self.events.append({"seq": 2, "kind": "rearmed", "detail": "stimulation re-armed by the host"})
                self.stopped = None
            time.sleep(0.002)
            yield sw
        self.done.set()


def test_the_engine_records_technical_alarms_apart_from_alerts(tmp_path: Path) -> None:
    store = CaseStore(tmp_path / "cases.db")
    try:
        cid = store.open_case()
        stim = RecordedStimulation()
        source = StallingSource(stim, after=40, stall_s=3.5)
        engine = CaseEngine(store, cid, stimulation=stim, link_health=source.link_health, queue_size=32,
                            stall_alarm_s=2.0)
        frames: list = []
        engine.subscribe(lambda fr, _ap: frames.extend(json for key, json, _ in fr if key == "technical"))
        engine.start()
        engine.run_source(source)
        assert engine.wait_idle(60.0)
        deadline = time.monotonic() + 20.0  # the next link poll sees the board stimulating again
        while engine.call(engine.technical_alarms) and time.monotonic() < deadline:
            time.sleep(0.1)
        engine.stop()
        notes = [n for n in store.rows("notes", cid) if n["kind"] == "technical"]
        texts = [n["text"] for n in notes]
        raised = [t for t in texts if t.startswith("TECHNICAL ALARM: no sweep from ssep-")]
        assert len(raised) == 4, texts  # each of the four SSEP streams, once
        assert sum(t.startswith("technical alarm cleared") and "no sweep" in t for t in texts) == 4
        assert "TECHNICAL ALARM: stimulation stopped by the board: no frame from the host for 100 ms" in texts
        assert any(t.startswith("board: no frame from the host") for t in texts)
        assert any(t.startswith("board: stimulation re-armed") for t in texts)
        actions = [a["action"] for a in store.rows("audit", cid)]
        assert actions.count("technical.raise") == 5 and actions.count("technical.clear") == 5
        assert "board.watchdog" in actions and "board.rearmed" in actions
        assert not store.rows("alerts", cid)  # none of it is a neurophysiological alert
        shown = [json.loads(f)["alarms"] for f in frames]  # what every viewer is sent
        assert max(len(a) for a in shown) == 5 and shown[-1] == []
        assert [i["kind"] for i in engine.timeline].count("technical") == len(notes)
        assert store.verify_audit()
    finally:
        store.close()
