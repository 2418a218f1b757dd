"""An alert storm in a long case (issue 18 item 6): what every viewer is sent stays bounded, grouped per channel as
a Cadwell or Natus user reads it, while the store keeps every alert and every one stays acknowledgeable.

The storm goes through the engine's own alert path (the pipeline's AlertEvent, engine._alert: store, audit,
timeline) on a real simulated case's streams; the viewers are real WebSocket clients of a real ConsoleServer."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from ionm.board.simcase import SimulatedCase
from ionm.board.stimulation import RecordedStimulation, default_program
from ionm.case.store import CaseStore
from ionm.console.auth import Accounts
from ionm.console.engine import CaseEngine
from ionm.console.server import MAX_MESSAGE_BYTES, ConsoleServer
from ionm.pipeline.alerts import AlertEvent
from ionm_hw.patient import load_scenario

STORM = 3000  # alerts, over every channel the default montage shows
USERS = {"tech": ("technologist", "tech-password-1"), "doc": ("physician", "doc-password-1")}
SNAPSHOT_GOAL = 200_000  # bytes (issue 18 item 6)


def _size(obj: Any) -> int:
    return len(json.dumps(obj, separators=(",", ":")))


class Viewer:
    """A logged-in viewer's socket; keeps the newest alerts frame it was sent and the size of every message."""

    def __init__(self, url: str, user: str):
        self.url, self.user = url, user
        self.alerts: dict[str, Any] | None = None
        self.snapshot: dict[str, Any] | None = None
        self.snapshot_bytes = 0
        self.update_sizes: list[int] = []
        self.replies: dict[int, dict[str, Any]] = {}
        self.changed = asyncio.Event()
        self.req = 0

    async def open(self) -> None:
        self.session = aiohttp.ClientSession(cookie_jar=aiohttp.CookieJar(unsafe=True))
        async with self.session.post(self.url + "login", data={"user": self.user, "password": USERS[self.user][1]},
                                     allow_redirects=False, headers={"Origin": self.url.rstrip("/")}) as r:
            assert r.status == 303
        self.ws = await self.session.ws_connect(self.url + "ws", origin=self.url.rstrip("/"), max_msg_size=0)
        self.task = asyncio.create_task(self._read())
        await self.until(lambda: self.snapshot is not None)

    async def _read(self) -> None:
        async for m in self.ws:
            assert m.type == aiohttp.WSMsgType.TEXT
            body = json.loads(m.data)
            if body["type"] == "snapshot":
                self.snapshot, self.snapshot_bytes = body, len(m.data)
            elif body["type"] == "update":
                self.update_sizes.append(len(m.data))
            elif body["type"] == "reply":
                self.replies[body["req"]] = body
            if "alerts" in body.get("frames", {}):
                self.alerts = body["frames"]["alerts"]
            self.changed.set()

    async def until(self, cond: Any, timeout: float = 10.0) -> None:
        async def wait() -> None:
            while not cond():
                self.changed.clear()
                await self.changed.wait()
        await asyncio.wait_for(wait(), timeout)

    async def ask(self, msg: dict[str, Any]) -> dict[str, Any]:
        self.req += 1
        req = self.req
        await self.ws.send_str(json.dumps(msg | {"req": req}))
        await self.until(lambda: req in self.replies, 30.0)
        return self.replies[req]

    async def close(self) -> None:
        await self.ws.close()
        await self.session.close()
        self.task.cancel()


def _group_key(stream: str, channel: int) -> str:
    return "%s#%d" % (stream, channel)


def _recorded(store: CaseStore, cid: int) -> tuple[dict[str, dict[str, Any]], dict[str, dict[str, Any]]]:
    """Per channel group from the store: count, unacknowledged, first and last time; and the acks by alert."""
    store.flush()
    acks: dict[str, dict[str, Any]] = {}
    for a in store.rows("acks", cid):
        assert a["alert_uid"] not in acks, "acknowledged twice: %s" % a["alert_uid"]
        acks[a["alert_uid"]] = a
    groups: dict[str, dict[str, Any]] = {}
    for a in store.rows("alerts", cid):
        g = groups.setdefault(_group_key(a["stream"], a["channel"]), {"count": 0, "unacked": 0, "first_t_s": a["t_s"],
                                                                       "uids": []})
        g["count"] += 1
        g["unacked"] += a["uid"] not in acks
        g["last_t_s"] = a["t_s"]
        g["uids"].append(a["uid"])
    return groups, acks


def _check_counts(frame: dict[str, Any], store: CaseStore, cid: int) -> None:
    """The frame's counts are the store's: totals and, per channel group, count, unacknowledged, first and last."""
    groups, acks = _recorded(store, cid)
    assert frame["total"] == sum(g["count"] for g in groups.values())
    assert frame["unacked"] == sum(g["unacked"] for g in groups.values())
    shown = {g["key"]: g for g in frame["groups"]}
    assert set(shown) == set(groups)
    for key, g in groups.items():
        f = shown[key]
        assert (f["count"], f["unacked"]) == (g["count"], g["unacked"]), key
        assert f["first_t_s"] == pytest.approx(g["first_t_s"], abs=0.01)
        assert f["last_t_s"] == pytest.approx(g["last_t_s"], abs=0.01)
        assert f["latest"]["uid"] == g["uids"][-1]  # the newest alert of the channel, with its values
        pending = [u for u in g["uids"] if u not in acks]
        assert f["ack_uid"] == (pending[-1] if pending else None)  # what acknowledging the channel needs
    # the individual alerts, in the order raised: the newest, and the newest unacknowledged ones without a gap
    uids = [a["uid"] for a in frame["alerts"]]
    order = [a["uid"] for a in store.rows("alerts", cid)]
    assert uids == sorted(uids, key=order.index) and uids[-1] == order[-1]
    pending = [u for u in order if u not in acks]
    listed = [u for u in uids if u not in acks]
    assert listed == pending[len(pending) - len(listed):]
    assert all(a["ack"] is None for a in frame["alerts"] if a["uid"] in listed)
    assert all(a["ack"]["user"] == acks[a["uid"]]["user"] for a in frame["alerts"] if a["uid"] in acks)


def test_an_alert_storm_stays_bounded_and_every_alert_acknowledgeable(tmp_path: Path) -> None:
    store = CaseStore(tmp_path / "cases.db")
    for name, (role, pw) in USERS.items():
        Accounts(store).add(name, role, pw)
    cid = store.open_case(patient_id="STORM", procedure="alert storm")
    scenario = load_scenario("stable")
    program = default_program(scenario)
    program["tcmep"]["repeat_s"] = 4.0
    stim = RecordedStimulation(program)
    engine = CaseEngine(store, cid, stimulation=stim)
    engine.start()
    engine.run_source(SimulatedCase(scenario, 1, speed=0.0, stimulation=stim, duration_s=4.5))
    assert engine.wait_idle(120)
    channels = [(st, c) for st in engine.streams.values() for c in range(len(st.names)) if st.show[c]]
    assert len(channels) >= 18

    def storm(n: int, t0: float) -> None:
        for i in range(n):
            st, c = channels[i % len(channels)]
            engine._alert(st, AlertEvent(t_s=t0 + i * 9.5, channel=c, channel_name=st.names[c],
                                         criterion="amplitude", amplitude_ratio=0.3 + (i % 7) / 100,
                                         latency_ratio=1.02, scope="focal"))

    engine.call(lambda: storm(STORM, 10.0), timeout=600)
    server = ConsoleServer(engine, store)
    url = server.start_in_thread()

    async def scenario_() -> None:
        tech, doc = Viewer(url, "tech"), Viewer(url, "doc")
        await tech.open()
        await doc.open()
        try:
            for v in (tech, doc):
                assert v.snapshot is not None
                frame = v.snapshot["frames"]["alerts"]
                # bounded whatever the storm: the alert frame fits one update message, the snapshot its goal
                assert _size(frame) <= MAX_MESSAGE_BYTES, _size(frame)
                assert v.snapshot_bytes <= SNAPSHOT_GOAL, v.snapshot_bytes
                _check_counts(frame, store, cid)
                assert frame["total"] == frame["unacked"] == STORM and len(frame["groups"]) == len(channels)
                assert len(frame["alerts"]) < 100
            frame = tech.snapshot["frames"]["alerts"]
            groups, _ = _recorded(store, cid)
            # the oldest alert of the case is not listed individually, yet acknowledgeable on its own
            oldest = next(iter(groups.values()))["uids"][0]
            assert oldest not in {a["uid"] for a in frame["alerts"]}
            r = await tech.ask({"cmd": "ack", "alert": oldest, "note": "electrode re-seated"})
            assert r["ok"], r
            # a channel acknowledged as a group: every one of its unacknowledged alerts, once, with the one note
            g = frame["groups"][0]
            r = await doc.ask({"cmd": "ack", "alert": g["ack_uid"], "group": True, "note": "surgeon informed"})
            assert r["ok"] and r["result"]["count"] == g["unacked"] - (oldest in groups[g["key"]]["uids"]), r
            for v in (tech, doc):  # every viewer is told at once
                await v.until(lambda v=v: v.alerts is not None and v.alerts["unacked"] < STORM - 1)
                _check_counts(v.alerts, store, cid)
                assert next(x for x in v.alerts["groups"] if x["key"] == g["key"])["unacked"] == 0
            _, acks = _recorded(store, cid)
            assert {u for u in groups[g["key"]]["uids"] if u != oldest} <= {u for u, a in acks.items()
                                                                          if a["note"] == "surgeon informed"}
            # acknowledging again is refused, and acknowledging nothing does nothing
            r = await doc.ask({"cmd": "ack", "alert": g["ack_uid"], "group": True, "note": "again"})
            assert not r["ok"] and "already acknowledged" in r["error"]
            # a new alert on the acknowledged channel reaches every viewer at once, in one bounded message
            sizes = {v.user: len(v.update_sizes) for v in (tech, doc)}
            st, c = next((s, ch) for s, ch in channels if _group_key(s.key, ch) == g["key"])
            engine.call(lambda: engine._alert(st, AlertEvent(t_s=STORM * 10.0, channel=c, channel_name=st.names[c],
                                                             criterion="loss", amplitude_ratio=0.05,
                                                             latency_ratio=float("nan"), scope="focal")))
            for v in (tech, doc):
                await v.until(lambda v=v: v.alerts["total"] == STORM + 1, 5.0)
                new = next(x for x in v.alerts["groups"] if x["key"] == g["key"])
                assert new["unacked"] == 1 and new["latest"]["criterion"] == "loss"
                assert new["ack_uid"] == new["latest"]["uid"] == v.alerts["alerts"][-1]["uid"]
                assert v.alerts["groups"][0]["key"] == g["key"]  # the newest first: the banner's top row
                assert max(v.update_sizes[sizes[v.user]:]) <= MAX_MESSAGE_BYTES
                _check_counts(v.alerts, store, cid)
            # a new viewer sees the same counts
            late = Viewer(url, "doc")
            await late.open()
            try:
                assert late.snapshot is not None and late.snapshot_bytes <= SNAPSHOT_GOAL
                _check_counts(late.snapshot["frames"]["alerts"], store, cid)
            finally:
                await late.close()
            # every channel acknowledged by its group from the console: nothing left, nothing acknowledged twice
            while tech.alerts["unacked"]:
                top = next(x for x in tech.alerts["groups"] if x["unacked"])
                r = await tech.ask({"cmd": "ack", "alert": top["ack_uid"], "group": True, "note": "reviewed"})
                assert r["ok"] and r["result"]["count"] == top["unacked"], r
                await tech.until(lambda top=top: next(x for x in tech.alerts["groups"]
                                                      if x["key"] == top["key"])["unacked"] == 0)
            _check_counts(tech.alerts, store, cid)
        finally:
            await tech.close()
            await doc.close()

    try:
        asyncio.run(scenario_())
        groups, acks = _recorded(store, cid)
        alerts = store.rows("alerts", cid)
        assert len(alerts) == len({a["uid"] for a in alerts}) == STORM + 1  # none dropped from the store
        assert set(acks) == {a["uid"] for a in alerts}
        audit = [a for a in store.rows("audit", cid) if a["action"] == "ack"]
        assert sorted(a["detail"]["alert"] for a in audit) == sorted(acks)  # one audit row per alert
        # a console restarted on the case rebuilds the same groups from the store
        again = CaseEngine(store, cid)
        again.resume()
        _check_counts(again.alerts.frame(), store, cid)
    finally:
        server.stop_thread()
        engine.stop()
        store.close()
