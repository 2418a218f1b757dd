"""The case engine, the simulated case, stimulation limits and the fan-out to web clients (no browser)."""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path

import numpy as np
import pytest

from ionm.board.simcase import SimulatedCase
from ionm.board.stimulation import RecordedStimulation, StimulationError, limits, validate
from ionm.case.store import CaseStore
from ionm.case.timeline import short_name
from ionm.console.engine import CaseEngine, CommandError
from ionm.console.scripted import ack_all, command, injury_scenario, run_case
from ionm.console.server import DISPLAY_BURST, MAX_BACKLOG, MAX_MESSAGE_BYTES, Client, Hub
from ionm.pipeline.evaluator import WEAK_BASELINE_SE

TECH = ("tech", "technologist")


@pytest.fixture(scope="module")
def injured_case(tmp_path_factory: pytest.TempPathFactory):
    """A simulated case with a left leg motor injury at 16 s: baselines at 10 s, alert, acknowledgement."""
    db = tmp_path_factory.mktemp("engine") / "cases.db"
    store = CaseStore(db)
    engine, cid = run_case(store, injury_scenario(16.0), duration_s=26.0, mep_every=1.0, actions=[
        (10.0, command(*TECH, {"cmd": "baseline"})),
        (12.0, command(*TECH, {"cmd": "note", "text": "prone, arms tucked"})),
        (24.0, ack_all("doc", "physician", "surgeon informed, correction released")),
    ])
    yield store, engine, cid
    store.close()


def test_simulated_case_interleaves_sites_at_their_rates() -> None:
    sc = SimulatedCase("stable", speed=0.0, duration_s=6.0)
    sc.stimulation.apply({"action": "tcmep", "repeat_s": 2.0})
    sweeps = list(sc)
    by = {}
    for sw in sweeps:
        by.setdefault(sw.source, []).append(sw.t_s)
    assert set(by) == {"L median", "R median", "L tibial", "R tibial", "TcMEP"}
    for site in ("L median", "R median", "L tibial", "R tibial"):
        period = np.diff(by[site])
        assert np.allclose(period, 1 / 4.7, atol=1.5 / 8000), site  # continuous across rendering chunks
    assert np.allclose(np.diff(by["TcMEP"]), 2.0, atol=1e-3)
    firsts = sorted(v[0] for k, v in by.items() if k != "TcMEP")
    assert min(np.diff(firsts)) > 0.03  # the four outputs are staggered, not simultaneous


def test_stimulation_is_bounded_by_the_board() -> None:
    lim = limits()
    stim = RecordedStimulation()
    with pytest.raises(StimulationError, match="current"):
        stim.apply({"action": "ssep", "output": 0, "current_ma": lim["current_ma_max"] + 1})
    with pytest.raises(StimulationError, match="charge"):
        stim.apply({"action": "ssep", "output": 0, "current_ma": 90.0, "width_us": 1000})
    with pytest.raises(StimulationError, match="mains"):
        stim.apply({"action": "ssep", "output": 0, "rate_hz": 5.0})
    with pytest.raises(StimulationError, match="pulses"):
        stim.apply({"action": "tcmep", "train_pulses": lim["train_pulses_max"] + 1})
    assert stim.state()["ssep"]["0"]["current_ma"] == 25.0  # nothing refused was applied
    new = validate({"action": "ssep", "output": 0, "current_ma": 30.0}, stim.state(), lim)
    assert new["ssep"]["0"]["current_ma"] == 30.0
    stim.apply({"action": "tcmep_train"})
    with pytest.raises(StimulationError, match="apart"):
        stim.apply({"action": "tcmep_train"})


def test_injury_raises_focal_alert_acknowledged_in_the_record(injured_case) -> None:
    store, engine, cid = injured_case
    alerts = store.rows("alerts", cid)
    assert alerts, "no alert after the injury"
    assert all(a["t_s"] > 16.0 for a in alerts)  # nothing before the injury
    assert all(a["t_s"] < 21.0 for a in alerts)  # detected within 5 s at one train a second
    injured = {"AHL1-AHL2 (L abductor hallucis)", "TAL1-TAL2 (L tibialis anterior)"}
    assert {a["channel_name"] for a in alerts} <= injured
    acks = store.rows("acks", cid)
    assert {a["alert_uid"] for a in acks} == {a["uid"] for a in alerts}
    assert all(a["user"] == "doc" and "surgeon informed" in a["note"] for a in acks)
    audit = store.rows("audit", cid)
    assert [a["detail"]["alert"] for a in audit if a["action"] == "ack"] == [a["uid"] for a in alerts]
    assert any(a["action"] == "note" and a["user"] == "tech" for a in audit)
    assert len({b["stream"] for b in store.baselines(cid)}) == 5
    assert store.verify_audit()


def test_engine_enforces_roles_and_notes(tmp_path: Path) -> None:
    store = CaseStore(tmp_path / "c.db")
    cid = store.open_case()
    engine = CaseEngine(store, cid, stimulation=RecordedStimulation())
    engine.start()
    try:
        for role, cmd in (("read-only", {"cmd": "note", "text": "x"}), ("read-only", {"cmd": "ack", "alert": "a"}),
                          ("physician", {"cmd": "stim", "command": {"action": "stop_all"}}),
                          ("physician", {"cmd": "baseline"})):
            with pytest.raises(CommandError, match="may not"):
                engine.submit("u", role, cmd).result(5)
        with pytest.raises(CommandError, match="confirmation"):
            engine.submit(*TECH, {"cmd": "stim", "command": {"action": "tcmep_train"}}).result(5)
        with pytest.raises(CommandError, match="mA"):
            engine.submit(*TECH, {"cmd": "stim", "command": {"action": "ssep", "output": 1,
                                                             "current_ma": 500}}).result(5)
        engine.submit(*TECH, {"cmd": "stim", "command": {"action": "tcmep_train"}, "confirmed": True}).result(5)
    finally:
        engine.stop()
    actions = [(a["user"], a["action"]) for a in store.rows("audit", cid)]
    assert actions.count(("u", "denied")) == 4
    assert ("tech", "stim.refused") in actions and ("tech", "stim") in actions
    assert [p["body"]["command"]["action"] for p in store.rows("programs", cid)] == ["tcmep_train"]
    store.close()


def test_hub_keeps_only_the_newest_frame_for_a_slow_client() -> None:
    async def scenario() -> None:
        hub = Hub(asyncio.get_running_loop())
        slow = Client.__new__(Client)
        Client.__init__(slow, None)  # type: ignore[arg-type]
        slow.resync = False
        hub.clients.add(slow)
        for k in range(200):  # 200 updates of one stream while the client sends nothing
            hub._distribute([("stream:a", json.dumps({"k": k}), 100.0 + k)], [json.dumps({"k": "trend", "i": k})])
        assert list(slow.frames) == ["stream:a"] and json.loads(slow.frames["stream:a"]) == {"k": 199}
        assert slow.arr0["stream:a"] == 100.0  # latency is counted from the oldest sweep the frame stands for
        (msg,), _ = hub.update_messages(slow)
        body = json.loads(msg)
        assert body["frames"]["stream:a"]["k"] == 199 and len(body["appends"]) == 200
        for _ in range(MAX_BACKLOG + 1):  # incremental items overflow: a fresh snapshot instead
            hub._distribute([], ["{}"])
        assert slow.resync and not slow.appends

    asyncio.run(scenario())


def test_hub_holds_display_frames_to_the_viewers_byte_budget_but_never_alerts_or_events() -> None:
    """A viewer's byte budget (DISPLAY_BYTES_PER_S) holds back only display frames (waveforms, baselines), which
    wait in their slots, coalesced to the newest, until the budget allows; alerts, technical alarms, link health
    and incremental items (timeline events, trend points, stack traces) go out at once; no message exceeds
    MAX_MESSAGE_BYTES unless it is one frame alone."""
    async def scenario() -> None:
        hub = Hub(asyncio.get_running_loop())
        c = Client.__new__(Client)
        Client.__init__(c, None)  # type: ignore[arg-type]
        c.resync = False
        hub.clients.add(c)
        big = json.dumps({"wave": "x" * 9000})
        now = time.monotonic()
        for k in range(8):  # a burst of waveform frames: more bytes than the budget
            hub._distribute([("stream:s%d" % k, big, 1.0 + k)], [])
        msgs = []
        while part := hub.update_messages(c, now)[0]:  # the sender, woken again and again at the same moment
            msgs += part
        assert all(len(m) <= MAX_MESSAGE_BYTES for m in msgs)
        sent = [k for m in msgs for k in json.loads(m)["frames"]]
        assert sum(len(m) for m in msgs) >= DISPLAY_BURST and len(sent) < 8  # the budget is spent, ...
        assert sent == ["stream:s%d" % k for k in range(len(sent))]  # ... on the frames waiting longest
        assert c.timer is not None  # a wake-up for when the budget allows the rest
        for k in range(5):  # newer waveforms, then an alert, a technical alarm and an event, all at once
            hub._distribute([("stream:s7", json.dumps({"k": k, "wave": "x" * 9000}), 9.0)], [])
        hub._distribute([("alerts", json.dumps({"alerts": [{"uid": "A1"}]}), None),
                         ("technical", json.dumps({"alarms": [{"key": "stall"}]}), None)],
                        [json.dumps({"k": "event", "id": 7, "kind": "alert"})])
        msgs, _ = hub.update_messages(c, now + 0.01)
        bodies = [json.loads(m) for m in msgs]
        assert {k for b in bodies for k in b["frames"]} == {"alerts", "technical"}  # not held by the budget
        assert [a["id"] for b in bodies for a in b["appends"]] == [7]
        held = set(c.frames)
        assert held == {"stream:s%d" % k for k in range(len(sent), 8)}
        got: dict[str, list[dict]] = {}
        t = now + 0.01
        while c.frames:  # the budget refills: every held frame goes, once, the newest of each
            t += 0.5
            for m in hub.update_messages(c, t)[0]:
                for k, v in json.loads(m)["frames"].items():
                    got.setdefault(k, []).append(v)
        assert set(got) == held and all(len(v) == 1 for v in got.values()) and got["stream:s7"][0]["k"] == 4
        hub._distribute([("stream:s0", big, 20.0)], [])  # a slow link: bytes still on their way hold them too
        assert hub.update_messages(c, t + 10.0, backlog=10**6)[0] == [] and "stream:s0" in c.frames
        assert hub.update_messages(c, t + 10.1, backlog=0)[0] and not c.frames
        huge = json.dumps({"alerts": [{"uid": "A%d" % i, "label": "x" * 200} for i in range(400)]})
        hub._distribute([("alerts", huge, None), ("stream:s2", big, 30.0)], [])
        msgs, _ = hub.update_messages(c, t + 20.0)
        assert any(json.loads(m)["frames"].get("alerts") for m in msgs if len(m) > MAX_MESSAGE_BYTES)
        assert all(len(m) <= MAX_MESSAGE_BYTES for m in msgs if "alerts" not in json.loads(m)["frames"])
        if c.timer is not None:
            c.timer.cancel()

    asyncio.run(scenario())


def test_baseline_event_names_the_weak_baselines_and_stores_their_level_se(injured_case) -> None:
    # A 10 s baseline (~47 sweeps per site) leaves some cortical levels known to worse than ±10 %: the
    # technologist is told which, at the moment the baseline is set, and the case keeps each level's SE.
    store, engine, cid = injured_case
    texts = [e["text"] for e in engine.timeline if e.get("kind") == "baseline"]
    weak_seen = 0
    for b in store.baselines(cid):
        st = engine.streams[b["stream"]]
        if st.modality == "mep":
            continue
        text = next(t for t in texts if t.startswith("baseline %s from " % b["stream"]))
        tail = text.partition("(weak")[2]
        for c, ref in enumerate(b["refs"]):
            se = ref["level_se"]
            assert (se is not None) == ref["tracked"]
            if se is None or not st.show[c]:
                continue
            assert 0 < se <= 1 / 3
            named = short_name(st.names[c]) + " level ±%.0f %%" % (100 * se) in tail
            assert named == (se > WEAK_BASELINE_SE), (b["stream"], st.names[c], se)
            weak_seen += named
    assert weak_seen > 0


def test_a_resumed_case_keeps_its_clock_when_the_source_restarts_at_zero(tmp_path: Path) -> None:
    """After a crash the board (real or virtual) boots again and counts its samples from 0. The case clock goes
    on from the stored case time: no (stream, time) is stored twice, and trends and averages continue."""
    store = CaseStore(tmp_path / "cases.db")
    try:
        from ionm_hw.patient import load_scenario

        _, cid = run_case(store, load_scenario("stable"), duration_s=14.0, mep_every=2.0,
                          actions=[(6.0, command(*TECH, {"cmd": "baseline"}))])
        store.flush()
        n_before = store.count_sweeps(cid)
        stim = RecordedStimulation()
        stim.apply({"action": "tcmep", "repeat_s": 2.0})
        engine = CaseEngine(store, cid, stimulation=stim, queue_size=32)
        last_t = engine.resume()
        assert last_t > 13.0
        source = SimulatedCase("stable", 2, speed=0.0, stimulation=stim, duration_s=14.0)  # from t = 0 again
        engine.start()
        engine.run_source(source)
        assert engine.wait_idle(120.0)
        engine.stop()
        assert store.duplicates_refused == 0
        assert engine.t_s > last_t + 12.0  # the clock moved on by what the new source delivered
        after = [sw.t_s for sw, _ in store.iter_sweeps(cid, t_from=last_t + 1e-9)]
        assert store.count_sweeps(cid) == n_before + len(after) == n_before + source.sweeps_sent
        for key in {s["key"] for s in store.streams(cid)}:
            t = [sw.t_s for sw, _ in store.iter_sweeps(cid, key)]
            assert np.all(np.diff(t) > 0), key  # one time line per stream, never going back
        trend_after = [m for m in store.rows("measurements", cid) if m["t_s"] > last_t + 5.0]
        assert {m["stream"] for m in trend_after} == {s["key"] for s in store.streams(cid)}
        assert any(t > last_t + 5.0 for t, _, _ in store.averages(cid, "ssep-upper/L median"))
        events = [a for a in store.rows("audit", cid) if a["action"] == "source.clock"]
        assert len(events) == 1 and events[0]["detail"]["offset_s"] > last_t
    finally:
        store.close()


def test_an_early_baseline_says_what_each_channel_needs_and_completes_by_itself(tmp_path: Path) -> None:
    """B pressed after 3 s (~14 sweeps a site): the technologist is told, per channel not yet reproducible, how
    many more sweeps and about how many seconds it needs; the baseline keeps collecting and completes by itself,
    and channels untracked at first are then tracked (no channel stays silently untracked)."""
    from ionm_hw.patient import load_scenario

    store = CaseStore(tmp_path / "cases.db")
    try:
        engine, cid = run_case(store, load_scenario("stable"), duration_s=90.0, mep_every=2.0,
                               actions=[(3.0, command(*TECH, {"cmd": "baseline"}))])
        texts = [(e["t_s"], e["text"]) for e in engine.timeline if e.get("kind") == "baseline"]
        ssep = [k for k in engine.streams if k.startswith("ssep")]
        firsts = {k: next(x for _, x in texts if x.startswith("baseline %s from " % k)) for k in ssep}
        # 14 sweeps reproduce no cortical SSEP: every site is told what it needs and that it goes on collecting.
        for first in firsts.values():
            assert "still collecting, completes by itself" in first and "more sweeps (~" in first, first
        # done: no channel waits any more (a weak one may still be refining: "updated by itself", no "still
        # collecting")
        done = [k for k in ssep if any(x.startswith("baseline %s completed by itself from " % k) or (
            x.startswith("baseline %s updated by itself from " % k) and "still collecting" not in x) for _, x in texts)]
        assert done, texts
        for k in done:
            rows = [b for b in store.baselines(cid) if b["stream"] == k]
            first, final = rows[0]["refs"], rows[-1]["refs"]
            assert len(rows) >= 2
            assert sum(r["tracked"] for r in final) > sum(r["tracked"] for r in first), (k, first, final)
            col = engine.streams[k].collecting
            assert col is None or col["names"] == col["refining"], col
        assert any(a["action"] == "baseline.extend" for a in store.rows("audit", cid))
    finally:
        store.close()


def test_a_channel_not_reproducible_yet_keeps_collecting_until_the_cap_instead_of_being_given_up(tmp_path: Path
                                                                                                   ) -> None:
    """A small cervical N13 in loud noise: at B (282 sweeps) its response is not found at all, and estimates from
    a few hundred sweeps are guesses beyond the 1200-sweep cap. Before, the console said "not reproducible, not
    tracked" at once and never looked again (the live-case bench: cervical channels untracked for the whole
    case); the response is there and is tracked from ~1200 sweeps, so the baseline must go on collecting for it."""
    import functools

    from ionm.pipeline.synthetic import ssep_montage_chunks, ssep_montage_header
    from ionm.sweep import Sweep

    h = ssep_montage_header("ssep-upper")
    names = tuple(str(n) for n in h["channel_names"])
    cervical = short_name("Cv5-Fz (cervical N13)")

    def sweeps():
        k = 0
        for chunk in ssep_montage_chunks(1400, seed=5, modality="ssep-upper", noise_scale=4.0):
            for t, x in zip(chunk["stim_time_s"], chunk["sweeps"], strict=True):
                yield Sweep(float(t), k, "ssep-upper", "L median", float(h["fs"]), int(h["pre_samples"]),
                            tuple(range(len(names))), names, x)
                k += 1

    store = CaseStore(tmp_path / "cases.db")
    try:
        cid = store.open_case(patient_id="T", procedure="noisy N13")
        engine = CaseEngine(store, cid, queue_size=32)
        engine.at(60.0, functools.partial(command(*TECH, {"cmd": "baseline"}), engine))
        engine.start()
        engine.run_source(sweeps())
        assert engine.wait_idle(240.0)
        engine.stop()
        texts = [e["text"] for e in engine.timeline if e.get("kind") == "baseline"]
        assert "%s is not reproducible yet, looks again after" % cervical in texts[0], texts
        assert not any("not reproducible, not tracked: " in x and cervical in x.split("not tracked: ")[1]
                       for x in texts[:-1]), texts
        rows = store.baselines(cid)
        c = names.index("Cv5-Fz (cervical N13)")
        assert not rows[0]["refs"][c]["tracked"] and rows[-1]["refs"][c]["tracked"], [r["refs"][c] for r in rows]
        assert any(a["action"] == "baseline.extend" for a in store.rows("audit", cid))
    finally:
        store.close()


def test_an_mep_baseline_is_the_median_of_the_last_twelve_trials(tmp_path: Path) -> None:
    """A hand muscle's trials scatter with a CV of ~48 %: the median of 6 is known to about ±23 % (log SD), and a
    baseline that much too high turned anaesthetic fade to 65 % into a false 80 % drop (live-case bench, left
    APB). B takes the last 12 trials (48 s at a train every 4 s), each channel's baseline their median."""
    from ionm_hw.patient import load_scenario

    store = CaseStore(tmp_path / "cases.db")
    try:
        # a train every 2 s: every trial gets its row in `measurements` (trend points are 1 s apart)
        _, cid = run_case(store, load_scenario("stable"), duration_s=33.0, mep_every=2.0,
                          actions=[(30.5, command(*TECH, {"cmd": "baseline"}))])
        base = next(b for b in store.baselines(cid) if b["stream"].startswith("mep"))
        trials = [m["body"] for m in store.rows("measurements", cid)
                  if m["stream"] == base["stream"] and m["t_s"] <= base["t_s"]]
        assert len(trials) >= 15
        for c, ref in enumerate(base["refs"]):
            amps = [t["amp_uv"][c] for t in trials[-12:] if t["lat_ms"][c] is not None]
            assert len(amps) == 12 and ref["tracked"]
            assert ref["amp_uv"] == pytest.approx(float(np.median(amps)), abs=0.06), c  # rows keep 0.1 µV
    finally:
        store.close()


# A whole case unpaced: four minutes of the default montage with the baseline rebuilt as it doubles. With three
# CPU-bound processes competing it took 190 s, past the suite's default timeout of 2 min (a hang detector).
@pytest.mark.slow
@pytest.mark.timeout(600)
def test_a_weak_baseline_refines_by_itself_while_stable_and_never_takes_in_a_change(tmp_path: Path) -> None:
    """B at 60 s (~280 sweeps a site) leaves cortical levels known to ±10-25 %: a change to 45 % cannot be told from
    the 50 % criterion against that (the live-case bench's limb_positioning case missed it). Such channels keep
    refining (the baseline rebuilt from every sweep since it began, doubling), so their level's SE falls; a stream
    that begins to change stops refining and its change never enters its baseline."""
    from ionm.console.scripted import injury_scenario

    onset_s = 150.0  # the left tibial SSEP to 25 % (acute_cord_injury), the other sites unchanged
    store = CaseStore(tmp_path / "cases.db")
    try:
        engine, cid = run_case(store, injury_scenario(onset_s), duration_s=240.0, mep_every=4.0,
                               actions=[(60.0, command(*TECH, {"cmd": "baseline"}))], timeout_s=600)
        texts = [e["text"] for e in engine.timeline if e.get("kind") == "baseline"]
        refined = 0
        for key in ("ssep-upper/L median", "ssep-upper/R median", "ssep-lower/R tibial"):
            rows = [b for b in store.baselines(cid) if b["stream"] == key]
            first = next(x for x in texts if x.startswith("baseline %s from " % key))
            if "refining by itself" not in first:
                continue
            weak = first.partition("refining by itself while the response stays stable: ")[2]
            assert len(rows) >= 2, (key, texts)
            for c, name in enumerate(engine.streams[key].names):
                if short_name(name) + " with ~" in weak:
                    se0, se1 = rows[0]["refs"][c]["level_se"], rows[-1]["refs"][c]["level_se"]
                    assert se1 < 0.8 * se0, (key, name, se0, se1)
                    refined += 1
        assert refined >= 2, texts
        assert any(a["action"] == "baseline.readiness" and a["detail"]["refining"]
                   for a in store.rows("audit", cid))
        hurt = "ssep-lower/L tibial"
        assert any(a["stream"] == hurt for a in store.rows("alerts", cid))
        assert all(b["last_t"] < onset_s for b in store.baselines(cid) if b["stream"] == hurt)
        assert engine.streams[hurt].collecting is None
        assert any(x.startswith("baseline %s: stopped " % hurt) for x in texts), texts
    finally:
        store.close()


def test_a_source_publishing_after_the_server_stopped_is_not_an_error():
    """The free-run source's thread can hand over a block of sound (and the engine a batch of frames) just after
    the console's event loop has closed at shutdown: under load that raised 'Event loop is closed' in the
    source's thread. With no loop there is no viewer to hand them to; they are dropped."""
    import asyncio

    import numpy as np

    from ionm.console.server import Hub

    loop = asyncio.new_event_loop()
    hub = Hub(loop)
    loop.close()
    hub.publish_audio({"wall0": 0.0}, np.zeros((1, 160), dtype=np.int16))
    hub.publish([("case", "{}", None)], [])
