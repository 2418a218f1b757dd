"""Issue 20 item 3: pedicle-screw testing in the console. A screw_test command hunts the probe's threshold on the
muscles of the screw's side and reads it against the regional rules (ionm.pipeline.screws); each result is stored
(a programs row of kind screw_test), on the timeline, in the audit under who asked, on the report's screw page and
in the screws frame. Bad input is refused with a clear error and nothing delivered. On the board the firmware's own
hunt runs on MicroPython (the virtual board) with the other outputs paused during it; without a board the host runs
the same bracket-and-bisect against the simulated patient."""

from __future__ import annotations

import json
import math
import time
from pathlib import Path
from typing import Any

import pytest
from conftest import console_on_board

from ionm.board.simcase import SimulatedCase
from ionm.board.stimulation import RecordedStimulation, default_program
from ionm.case.store import CaseStore
from ionm.console.commands import CommandInvalid, Schema
from ionm.console.engine import CaseEngine, CommandError
from ionm.pipeline import screws as sc

TECH = ("tech", "technologist")
# screws of known half-recruitment currents (mA) on the left leg's muscles
SCREWS = [{"name": "breach", "thresholds_ma": {"TAL1-TAL2": 2.0, "AHL1-AHL2": 6.0}},
          {"name": "possible", "thresholds_ma": {"TAL1-TAL2": 6.5}},
          {"name": "intact", "thresholds_ma": {"TAL1-TAL2": 14.0}},
          {"name": "far", "thresholds_ma": {"TAL1-TAL2": 35.0}}]


def scenario(target: str = "breach") -> dict[str, Any]:
    from ionm_hw.patient import load_scenario

    scen = load_scenario("stable")
    scen["screws"] = SCREWS
    scen["events"] = [{"type": "probe", "target": target, "onset_s": 0}]
    return scen


class Counting:
    """The simulated case as the probe, counting the hunts it was asked for (nothing delivered = none)."""

    def __init__(self, src: SimulatedCase) -> None:
        self.src, self.hunts = src, 0

    def screw_channels(self, side: str) -> list[tuple[int, str]]:
        return self.src.screw_channels(side)

    def hunt_screw(self, *a: Any, **kw: Any) -> Any:
        self.hunts += 1
        return self.src.hunt_screw(*a, **kw)

    def touch(self, target: str) -> None:
        """The surgeon puts the probe on another screw."""
        self.src._patient.probe.contacts = [(target, 0.0, math.inf)]


@pytest.fixture
def rig(tmp_path: Path):
    store = CaseStore(tmp_path / "cases.db")
    cid = store.open_case(patient_id="SCREW-1", procedure="L3-S1 fusion")
    scen = scenario()
    src = SimulatedCase(scen, 3, speed=0.0, duration_s=5.0)
    probe = Counting(src)
    engine = CaseEngine(store, cid, stimulation=RecordedStimulation(default_program(scen)), probe=probe)
    engine.start()
    yield store, cid, engine, probe
    engine.stop()
    store.close()


def run_test(engine: CaseEngine, msg: dict[str, Any], n: int = 1, timeout: float = 30.0) -> list[dict[str, Any]]:
    """Submit a screw test as the technologist and wait until it has ended; the results it added."""
    before = engine.call(lambda: len(engine.screws))
    engine.submit(*TECH, dict({"cmd": "screw_test"}, **msg)).result(10)
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if engine.call(lambda: engine._screw_job is None and len(engine.screws) >= before + n):
            return engine.call(lambda: list(engine.screws[before:]))
        time.sleep(0.05)
    raise AssertionError("no screw result in %.0f s" % timeout)


def truth(probe: Counting, target: str, derivation: str) -> float:
    p = probe.src._patient
    ch = next(c.index for c in p.channels if c.derivation == derivation)
    t = p.probe.threshold_ma(target, ch, 100.0)
    assert t is not None
    return t


def test_each_screw_is_read_in_its_band_and_recorded_everywhere(rig) -> None:
    store, cid, engine, probe = rig
    got = {}
    for target, level in (("breach", "L4"), ("possible", "L5"), ("intact", "S1"), ("far", "L3")):
        probe.touch(target)
        (r,) = run_test(engine, {"level": level, "side": "L"})
        got[target] = r
        assert r["complete"] and r["reason"] == "done" and r["user"] == "tech"
        assert r["rule"] == "lumbosacral" and "Raynor" in r["rule_source"]
        assert set(r["thresholds_ma"]) == {n for _, n in probe.screw_channels("L")}
    # the lowest channel decides, within the resolution and the model's trial spread of the truth
    assert got["breach"]["lowest"]["channel"].startswith("TAL1-TAL2")
    assert abs(got["breach"]["lowest"]["threshold_ma"] - truth(probe, "breach", "TAL1-TAL2")) <= 0.5 + 0.1
    assert abs(got["possible"]["lowest"]["threshold_ma"] - truth(probe, "possible", "TAL1-TAL2")) <= 0.5 + 0.3
    assert [got[k]["colour"] for k in ("breach", "possible", "intact", "far")] == ["red", "amber", "green", "green"]
    assert got["breach"]["label"] == "likely breach" and got["possible"]["label"] == "possible breach"
    assert got["far"]["lowest"] is None and "no response up to 20 mA" in got["far"]["label"]  # default hi_ma 20
    # thoracic and cervical levels: their own rule, or none
    probe.touch("possible")
    (t8,) = run_test(engine, {"level": "T8", "side": "left"})
    (c5,) = run_test(engine, {"level": "c5", "side": "L"})
    assert t8["colour"] == "green" and t8["rule"] == "lower thoracic"  # ~6.2 mA > 6
    assert c5["colour"] == "grey" and c5["rule"] is None and c5["label"] == "no rule for C5"
    store.flush()
    # stored: one programs row each, the full record
    rows = [p for p in store.rows("programs", cid) if p["kind"] == "screw_test"]
    assert [p["body"]["uid"] for p in rows] == [r["uid"] for r in engine.call(lambda: engine.screws)]
    assert rows[0]["body"]["level"] == "L4" and rows[0]["body"]["side"] == "L" and rows[0]["user"] == "tech"
    assert rows[0]["body"]["rule_def"]["levels"] == ["L1", "S2"]
    assert all(p["body"]["paused"] == [] for p in rows)  # no board: nothing to pause
    # the audit says who asked, and every result
    audit = store.rows("audit", cid)
    asked = [a for a in audit if a["action"] == "screw_test"]
    results = [a for a in audit if a["action"] == "screw_test.result"]
    assert len(asked) == len(results) == 6 and {a["user"] for a in asked + results} == {"tech"}
    assert results[0]["detail"]["colour"] == "red" and results[0]["detail"]["level"] == "L4"
    # the timeline, live and as rebuilt from the store (report, resume)
    live = [e for e in engine.timeline if e["kind"] == "screw"]
    assert len(live) == 6 and live[0]["text"].startswith("screw L4 left: ") and "red, likely breach" in live[0][
        "text"] and live[0]["user"] == "tech"
    from ionm.case.timeline import timeline_from_store
    stored = [i["text"] for i in timeline_from_store(store, cid) if i["kind"] == "screw"]
    assert stored == [e["text"] for e in live]
    # the frame the page draws
    frame = engine.call(engine.screw_frame)
    assert frame["available"] and frame["running"] is None and frame["count"] == 6
    assert [r["colour"] for r in frame["results"]] == ["red", "amber", "green", "green", "green", "grey"]
    assert [r["name"] for r in frame["rules"]] == ["lumbosacral", "lower thoracic", "upper thoracic"]
    assert "screws" in engine.call(engine.snapshot)["frames"]
    json.dumps(frame, allow_nan=False)
    assert probe.hunts == 6


def test_the_report_has_a_page_with_every_screw(rig, tmp_path: Path) -> None:
    from ionm.case.report import screw_lines, write_report

    store, cid, engine, probe = rig
    out0 = tmp_path / "before.pdf"
    store.flush()
    pages0 = write_report(store, cid, str(out0))
    probe.touch("breach")
    run_test(engine, {"level": "L4", "side": "L"})
    probe.touch("intact")
    run_test(engine, {"level": "L4", "side": "R", "hi_ma": 12.0})
    store.flush()
    lines = screw_lines(store, cid)
    table = [ln for ln in lines if ln.startswith("  ") and not ln.startswith("  time")]
    assert len(table) == 2
    assert "L4 left" in table[0] and "RED" in table[0] and "likely breach" in table[0] and "tech" in table[0]
    assert "L4 right" in table[1] and "none <= 12" in table[1]
    assert any("Raynor" in ln for ln in lines)
    out = tmp_path / "case.pdf"
    assert write_report(store, cid, str(out)) == pages0 + 1
    assert out.read_bytes().startswith(b"%PDF")


@pytest.mark.parametrize("msg, says", [
    ({"level": "L9", "side": "L"}, "level must be one of C1-C7, T1-T12, L1-L5, S1-S5"),
    ({"level": "", "side": "L"}, "level must be"),
    ({"level": "L4 left", "side": "L"}, "level must be"),
    ({"level": "L4", "side": "both"}, "side must be L or R"),
    ({"level": "L4", "side": "L", "hi_ma": math.nan}, "hi_ma must be a finite number"),
    ({"level": "L4", "side": "L", "hi_ma": math.inf}, "hi_ma must be a finite number"),
    ({"level": "L4", "side": "L", "hi_ma": 40.5}, "within 0.1-40.0 mA"),
    ({"level": "L4", "side": "L", "hi_ma": 0.2}, "hi_ma must be a finite number 0.5"),
    ({"level": "L4", "side": "L", "hi_ma": 12.05}, "not a multiple of the DAC step"),
    ({"level": "L4", "side": "L", "hi_ma": "20"}, "hi_ma must be a finite number"),
    ({"level": "L4", "side": "L", "p2p_uv": 5.0}, "p2p_uv must be a finite number 10..10000"),
    ({"level": "L4", "side": "L", "p2p_uv": math.nan}, "p2p_uv must be a finite number"),
])
def test_bad_input_is_refused_with_a_clear_error_and_nothing_delivered(rig, msg, says) -> None:
    store, cid, engine, probe = rig
    with pytest.raises(CommandError, match=says):
        engine.submit(*TECH, dict({"cmd": "screw_test"}, **msg)).result(10)
    time.sleep(0.1)
    store.flush()
    assert probe.hunts == 0 and engine.call(lambda: engine.screws) == [] and engine._screw_job is None
    assert not [p for p in store.rows("programs", cid) if p["kind"] == "screw_test"]
    refused = [a for a in store.rows("audit", cid) if a["action"] == "screw_test.refused"]
    assert len(refused) == 1 and refused[0]["user"] == "tech" and says.split(" (")[0][:20] in refused[0]["detail"][
        "reason"]


def test_roles_a_second_test_and_a_source_without_probe_are_refused(rig, tmp_path: Path) -> None:
    store, cid, engine, probe = rig
    for role in ("physician", "read-only"):
        with pytest.raises(CommandError, match="may not screw_test"):
            engine.submit("doc", role, {"cmd": "screw_test", "level": "L4", "side": "L"}).result(10)
        with pytest.raises(CommandError, match="may not screw_stop"):
            engine.submit("doc", role, {"cmd": "screw_stop"}).result(10)
    with pytest.raises(CommandError, match="no screw test under way"):
        engine.submit(*TECH, {"cmd": "screw_stop"}).result(10)
    engine.submit(*TECH, {"cmd": "screw_test", "level": "L4", "side": "L", "dynamic": True}).result(10)
    with pytest.raises(CommandError, match="a screw test is under way"):
        engine.submit(*TECH, {"cmd": "screw_test", "level": "L5", "side": "L"}).result(10)
    engine.submit(*TECH, {"cmd": "screw_stop"}).result(10)
    end = time.monotonic() + 30
    while engine.call(lambda: engine._screw_job is not None) and time.monotonic() < end:
        time.sleep(0.02)
    assert engine.call(lambda: engine._screw_job) is None
    assert {r["level"] for r in engine.call(lambda: engine.screws)} <= {"L4"}  # the refused one never ran
    bare = CaseEngine(store, cid, stimulation=RecordedStimulation())
    bare.start()
    try:
        with pytest.raises(CommandError, match="no probe"):
            bare.submit(*TECH, {"cmd": "screw_test", "level": "L4", "side": "L"}).result(10)
    finally:
        bare.stop()


def test_dynamic_mode_rehunts_until_stopped_and_the_timeline_gets_only_changes(rig) -> None:
    store, cid, engine, probe = rig
    probe.touch("possible")
    engine.submit(*TECH, {"cmd": "screw_test", "level": "L5", "side": "L", "dynamic": True}).result(10)
    end = time.monotonic() + 30
    while engine.call(lambda: len(engine.screws)) < 3 and time.monotonic() < end:
        time.sleep(0.02)
    probe.touch("breach")  # the screw goes deeper: the band changes
    n = engine.call(lambda: len(engine.screws))
    while engine.call(lambda: len(engine.screws)) < n + 3 and time.monotonic() < end:
        time.sleep(0.02)
    assert engine.call(lambda: engine.screw_frame()["running"])["dynamic"]
    engine.submit(*TECH, {"cmd": "screw_stop"}).result(10)
    while engine.call(lambda: engine._screw_job is not None) and time.monotonic() < end:
        time.sleep(0.02)
    recs = engine.call(lambda: list(engine.screws))
    assert len(recs) >= 6 and all(r["dynamic"] and r["test"] == recs[0]["test"] for r in recs)
    colours = [r["colour"] for r in recs if r["complete"]]
    assert colours[0] == "amber" and "red" in colours
    texts = [e["text"] for e in engine.timeline if e["kind"] == "screw"]
    assert texts[0] == "dynamic screw test L5 left started (until stopped)"
    assert texts[-1].startswith("dynamic screw test L5 left ended: %d hunts, lowest " % len(recs))
    changes = [t for t in texts if t.startswith("dynamic screw L5 left")]
    assert 2 <= len(changes) < len(recs)  # the first and each change of band, not every hunt
    store.flush()
    assert len([p for p in store.rows("programs", cid) if p["kind"] == "screw_test"]) == len(recs)  # all stored
    assert [a["user"] for a in store.rows("audit", cid) if a["action"] == "screw_stop"] == ["tech"]


def test_a_resumed_console_keeps_the_screw_table(rig) -> None:
    store, cid, engine, probe = rig
    run_test(engine, {"level": "L4", "side": "L"})
    engine.stop()
    again = CaseEngine(store, cid, stimulation=RecordedStimulation(), probe=probe)
    again.resume()
    assert [r["uid"] for r in again.screws] == [r["uid"] for r in engine.screws]
    assert any(e["kind"] == "screw" for e in again.timeline)
    assert again.screw_frame()["results"][0]["colour"] == "red"


def test_custom_rules_change_the_band(tmp_path: Path) -> None:
    rules = sc.parse_rules([{"name": "strict lumbar", "levels": ["L1", "L5"], "source": "local",
                             "bands": [{"upper_ma": 10, "inclusive": False, "colour": "red", "label": "breach"},
                                       {"upper_ma": None, "colour": "green", "label": "ok"}]}])
    store = CaseStore(tmp_path / "c.db")
    cid = store.open_case()
    scen = scenario("possible")
    probe = Counting(SimulatedCase(scen, 3, speed=0.0, duration_s=5.0))
    engine = CaseEngine(store, cid, stimulation=RecordedStimulation(), probe=probe, screw_rules=rules)
    engine.start()
    try:
        (r,) = run_test(engine, {"level": "L5", "side": "L"})
        assert r["colour"] == "red" and r["rule"] == "strict lumbar" and r["label"] == "breach"
        assert engine.call(engine.screw_frame)["rules"][0]["name"] == "strict lumbar"
    finally:
        engine.stop()
        store.close()


def test_the_websocket_schema_checks_screw_commands() -> None:
    s = Schema()
    ok = s.check({"cmd": "screw_test", "req": 1, "level": "L4", "side": "L", "dynamic": False, "hi_ma": 20.0,
                  "p2p_uv": 100})
    assert ok["level"] == "L4"
    assert s.check({"cmd": "screw_stop"}) == {"cmd": "screw_stop"}
    for bad, field in (({"level": "L4", "side": "L", "hi_ma": math.nan}, "hi_ma"),
                       ({"level": "L4", "side": "L", "hi_ma": 41.0}, "hi_ma"),
                       ({"level": "L4", "side": "L", "p2p_uv": 1}, "p2p_uv"),
                       ({"level": 4, "side": "L"}, "level"), ({"side": "L"}, "level"),
                       ({"level": "L4", "side": "L", "dynamic": "yes"}, "dynamic"),
                       ({"level": "L4", "side": "L", "extra": 1}, "extra")):
        with pytest.raises(CommandInvalid) as err:
            s.check(dict({"cmd": "screw_test"}, **bad))
        assert err.value.field == field


def test_the_host_search_is_the_firmwares_line_for_line() -> None:
    """ionm.board.hunt.Bisection against firmware/hunt.py's Hunt (on CPython, as the bench runs it): the same
    currents, pulse for pulse, and the same results, for responses drawn at random over three channels."""
    import numpy as np

    from bench.hunt import FS, FULL, GAIN, VREF_UV, _firmware
    from ionm.board.hunt import Bisection

    hunt, huntreq, sup = _firmware()
    rng = np.random.default_rng(5)
    for trial in range(40):
        thr = rng.uniform(0.3, 45.0, 3)
        cfg = type("Cfg", (), {"rate_hz": FS, "channels": [0, 1, 2], "gains": [GAIN] * 3})()
        body = {"lo_ua": 500, "hi_ua": int(rng.choice([20000, 40000])), "resolution_ua": int(rng.choice([200, 500])),
                "rate_mhz": 5000, "channels": [0, 1, 2], "p2p_uv": 100, "window_ms": [5, 40], "max_pulses": 32}
        h = hunt.Hunt(huntreq.parse(sup, body, cfg), cfg, 2, VREF_UV)
        b = Bisection(3, lo_ua=body["lo_ua"], hi_ua=body["hi_ua"], resolution_ua=body["resolution_ua"], step_ua=100,
                      max_pulses=32)
        index = 0
        while True:
            cur, mine = h.next_current(), b.next_current()
            assert cur == mine, (trial, cur, mine)
            if cur is None:
                break
            resp = [bool(cur / 1000 >= t * rng.uniform(0.95, 1.05)) for t in thr]
            h.armed(index, cur)
            for j, r in enumerate(resp):
                h.mins[j], h.maxs[j] = 1 << 22, (1 << 22) + (int(200 * GAIN * FULL / VREF_UV) if r else 0)
            h.judge()
            b.judge(cur, resp)
            index += h.period
        assert h.reason == b.reason
        assert [(r["threshold_ua"], r["below_ua"]) for r in h.results()] == b.results()


# ---------------------------------------------------------------- the board: the firmware's hunt on MicroPython
KNOWN = {"AHL1-AHL2": 3.0, "TAL1-TAL2": 9.0, "APBL1-APBL2": 21.0}  # as tests/test_hunt_e2e.py


def board_scenario(tmp_path: Path) -> str:
    scen = {"name": "screw-console", "description": "a screw near L5 on the left; quiet muscles",
            "noise": {"mains_uv": 2.0, "emg_scale": 0.4, "cautery_per_min": 0, "pops_per_min": 0,
                      "emg_bursts_per_min": 0},
            "screws": [{"name": "L5 left", "thresholds_ma": KNOWN}],
            "events": [{"type": "probe", "target": "L5 left", "onset_s": 0}]}
    path = tmp_path / "screw.json"
    path.write_text(json.dumps(scen))
    return str(path)


def test_on_the_board_the_firmware_hunts_with_the_other_outputs_paused(tmp_path: Path) -> None:
    """The console's screw_test through BoardCase on the virtual board (firmware on MicroPython): the lowest
    threshold is the scenario's within 0.5 mA, no SSEP or TcMEP pulse is delivered between the first and the last
    probe pulse (the pulse log of the output stage), the SSEP outputs run again afterwards, the probe pulses are
    exactly the hunt's, and no stall alarm is raised for the paused streams."""
    from ionm import board
    from ionm_hw import patient as pt
    from ionm_hw.stimulator import OutputStage

    d = board.load()
    probe_out = d["stimulator"]["probe"]["output"]
    log = tmp_path / "pulses.jsonl"
    with console_on_board(tmp_path, board_scenario(tmp_path)) as (engine, case):
        # A hunt that the board's watchdog stopped (a starved host: this shared test machine's load has
        # reached 28 on 2 cores) or that failed is reported incomplete (grey), never completed behind the
        # user's back: press Test again, as a technologist would, up to 3 times.
        tries = []
        for _ in range(3):
            (r,) = run_test(engine, {"level": "L5", "side": "L"}, timeout=60)
            tries.append(r)
            if r["complete"]:
                break
            assert r["reason"] in ("watchdog", "host-lost", "error"), (r["reason"], r["error"])
            assert r["colour"] == "grey"
            time.sleep(1.0)
        time.sleep(1.5)  # the outputs resumed
        alarms = [a.text for a in engine.technical_alarms()]
        timeline = [e["text"] for e in engine.timeline]
    with open(log) as fh:
        pulses = [p for p in map(json.loads, fh) if not p.get("probe")]
    probe = [p for p in pulses if p["output"] == probe_out]
    others = [p for p in pulses if p["output"] != probe_out and 0 <= p["output"] < probe_out]
    # every delivered pulse accounted for: judged, or armed by a hunt that ended before its window closed
    assert sum(t["pulses"] for t in tries) <= len(probe) <= sum(t["armed"] for t in tries) and r["pulses"] >= 5, tries
    assert r["armed"] == r["pulses"]  # the complete hunt judged every pulse it armed
    hunt = probe[-r["pulses"]:]  # the complete hunt's pulses
    first, last = hunt[0]["index"], hunt[-1]["index"]
    assert others and min(p["index"] for p in others) < probe[0]["index"]  # SSEP ran before ...
    assert not [p for p in others if first - 100 <= p["index"] <= last + 100], "an SSEP pulse during the hunt"
    # no other output's pulse from 100 ms before any probe pulse (the pause settles that long) to the end of its
    # response window (40 ms): four SSEP outputs interleaved at 4.7 Hz, 53 ms apart, would put 2-3 in every such
    # span while running
    assert not [(p["index"], q["index"]) for p in probe for q in others if -800 <= q["index"] - p["index"] <= 320]
    assert max(p["index"] for p in others) > last  # ... and again after
    assert r["complete"], (r["reason"], r["error"], r["pulses"], r["thresholds_ma"])
    assert r["colour"] == "red" and r["paused"] == ["L median", "R median", "L tibial", "R tibial"]
    # the truth in the current the hunt requests (this output stage's DAC error), as tests/test_hunt_e2e.py
    pat = pt.VirtualPatient(pt.load_scenario(board_scenario(tmp_path)), 1, 8000.0, 16)
    stage = OutputStage(d, "SIM-0001")
    gain, offset = stage.dac_gain_error[probe_out], stage.dac_offset_ma[probe_out]
    truth_ma = (pat.probe.threshold_ma("L5 left", 11, 100.0) - offset) / (1 + gain)
    assert r["lowest"]["channel"].startswith("AHL1-AHL2")
    assert abs(r["lowest"]["threshold_ma"] - truth_ma) <= 0.5, (r["lowest"], truth_ma)
    assert not [a for a in alarms if a.startswith("no sweep")], alarms
    assert any(t.startswith("stimulation paused for the screw test: L median") for t in timeline)
    assert any(t.startswith("stimulation resumed after the screw test") for t in timeline)


def test_the_console_refuses_a_malformed_rules_file_at_start(tmp_path: Path) -> None:
    from conftest import run_ionm

    bad = tmp_path / "rules.json"
    bad.write_text(json.dumps([{"name": "x", "levels": ["L1", "L9"], "bands": [{"upper_ma": None,
                                                                               "colour": "red"}]}]))
    res = run_ionm("console", "--sim", "--direct", "--no-browser", "--db", str(tmp_path / "c.db"), "--screw-rules",
                   str(bad))
    assert res.returncode == 2 and "levels" in res.stderr and str(bad) in res.stderr, res.stderr
    assert not (tmp_path / "c.db").exists()  # refused before anything was opened


def test_a_hunt_refused_for_lack_of_board_memory_is_asked_again_and_other_refusals_are_not() -> None:
    """On the virtual board at 8 kSPS x 16 channels about one hunt request in eight was refused `internal: out of
    memory ... nothing was changed` (the board loads the hunt's modules per request); BoardCase asks again."""
    import threading

    from ionm.board import link as ln
    from ionm.board.boardcase import BoardCase
    from ionm.protocol import messages as m

    case = BoardCase.__new__(BoardCase)  # no board: only the session's hunt is needed
    case._events_lock, case._board_events, case._seq = threading.Lock(), [], 0
    calls: list[int] = []

    class Session:
        def __init__(self, errors: list[ln.BoardError]) -> None:
            self.errors = errors

        def hunt(self, *a: Any, **kw: Any) -> str:
            calls.append(1)
            if self.errors:
                raise self.errors.pop(0)
            return "result"

    oom = ln.BoardError(m.E_INTERNAL, "internal", "out of memory while handling the request; nothing was changed")
    case.session = Session([oom, oom])
    assert case.hunt_screw([11], hi_ma=20.0, p2p_uv=100.0) == "result" and len(calls) == 3
    assert len(case._board_events) == 2 and "memory" in case._board_events[0]["detail"]
    calls.clear()
    case.session = Session([ln.BoardError(m.E_LIMIT_IMPEDANCE, "limit-impedance", "open circuit")])
    with pytest.raises(ln.BoardError, match="open circuit"):
        case.hunt_screw([11], hi_ma=20.0, p2p_uv=100.0)
    assert len(calls) == 1


def test_on_the_board_a_dynamic_test_keeps_the_outputs_paused_until_screw_stop(tmp_path: Path) -> None:
    """Dynamic mode through BoardCase on the virtual board: hunts follow one another with the other outputs paused
    for the whole session (no SSEP pulse from before the first probe pulse to after the last); screw_stop ends the
    hunt under way at once (stim-stop) and the outputs run again."""
    from ionm import board

    probe_out = board.load()["stimulator"]["probe"]["output"]
    log = tmp_path / "pulses.jsonl"
    with console_on_board(tmp_path, board_scenario(tmp_path), settle_s=1.5) as (engine, case):
        engine.submit(*TECH, {"cmd": "screw_test", "level": "L5", "side": "L", "dynamic": True}).result(10)
        end = time.monotonic() + 60
        while engine.call(lambda: len(engine.screws)) < 2 and engine.call(
                lambda: engine._screw_job is not None) and time.monotonic() < end:
            time.sleep(0.05)
        time.sleep(0.5)  # into the next hunt
        if engine.call(lambda: engine._screw_job is not None):
            engine.submit(*TECH, {"cmd": "screw_stop"}).result(10)
        t_stop = time.monotonic()
        while engine.call(lambda: engine._screw_job is not None) and time.monotonic() < end:
            time.sleep(0.02)
        stopped_in = time.monotonic() - t_stop
        time.sleep(1.5)
        recs = engine.call(lambda: list(engine.screws))
        paused_ssep = case.probe_paused
    assert len(recs) >= 2 and all(r["dynamic"] for r in recs), [(r["reason"], r["pulses"]) for r in recs]
    assert recs[0]["complete"] or recs[0]["reason"] in ("watchdog", "host-lost"), recs[0]["reason"]
    assert stopped_in < 3.0  # the hunt under way ended at once, not after its 7-15 pulses
    assert not paused_ssep
    with open(log) as fh:
        pulses = [p for p in map(json.loads, fh) if not p.get("probe")]
    probe = [p for p in pulses if p["output"] == probe_out]
    others = [p for p in pulses if 0 <= p["output"] < probe_out]
    # (a pulse delivered as screw_stop arrived has no judged window: the hunt armed it, it was not judged)
    assert sum(r["pulses"] for r in recs) <= len(probe) <= sum(r["armed"] for r in recs)
    first, last = probe[0]["index"], probe[-1]["index"]
    if all(r["reason"] in ("done", "stopped") for r in recs):  # one pause for the whole session
        assert not [p for p in others if first - 800 <= p["index"] <= last + 320]
    assert max(p["index"] for p in others) > last  # running again after


def test_on_the_board_a_dynamic_test_hunts_again_after_the_board_stopped_a_hunt_for_host_silence(tmp_path: Path):
    """The probe is on the tool and the board stops a hunt because the host went quiet (0.4 s: its 100 ms watchdog):
    the hunt is recorded as incomplete ("watchdog", grey, not a reading) and the dynamic test hunts again by itself,
    as it would after any hunt, instead of ending while the surgeon still probes. Every pulse the output stage
    delivered is one the results account for: at least the judged ones, at most the armed ones."""
    from ionm import board

    probe_out = board.load()["stimulator"]["probe"]["output"]
    log = tmp_path / "pulses.jsonl"
    with console_on_board(tmp_path, board_scenario(tmp_path), settle_s=1.5, held=True) as (engine, case, proxy):
        engine.submit(*TECH, {"cmd": "screw_test", "level": "L5", "side": "L", "dynamic": True}).result(10)
        end = time.monotonic() + 30
        while engine.call(lambda: len(engine.screws)) < 1 and time.monotonic() < end:
            time.sleep(0.05)
        time.sleep(0.5)  # into the next hunt
        proxy.hold_host(0.4)
        while not engine.call(lambda: [r for r in engine.screws if r["reason"] == "watchdog"]) and \
                time.monotonic() < end:
            time.sleep(0.05)
        n_stopped = engine.call(lambda: len(engine.screws))
        while engine.call(lambda: len(engine.screws)) < n_stopped + 1 and time.monotonic() < end:
            time.sleep(0.05)
        running = engine.call(lambda: engine._screw_job is not None)
        if running:
            engine.submit(*TECH, {"cmd": "screw_stop"}).result(10)
        while engine.call(lambda: engine._screw_job is not None) and time.monotonic() < end:
            time.sleep(0.02)
        time.sleep(0.5)
        recs = engine.call(lambda: list(engine.screws))
    stopped = [r for r in recs if r["reason"] == "watchdog"]
    assert stopped, [(r["reason"], r["pulses"]) for r in recs]
    assert not stopped[0]["complete"] and stopped[0]["colour"] == "grey", stopped[0]
    assert running and recs.index(stopped[0]) < len(recs) - 1, [(r["reason"], r["pulses"]) for r in recs]
    assert recs[recs.index(stopped[0]) + 1]["test"] == stopped[0]["test"]  # the same dynamic test hunted on
    with open(log) as fh:
        probe = [p for p in map(json.loads, fh) if not p.get("probe") and p["output"] == probe_out]
    assert sum(r["pulses"] for r in recs) <= len(probe) <= sum(r["armed"] for r in recs), (
        len(probe), [(r["reason"], r["pulses"], r["armed"]) for r in recs])
