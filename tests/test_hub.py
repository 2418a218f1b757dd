"""Oversight over NATS JetStream (ionm.hub): the real nats-server from its wheel, on loopback."""

from __future__ import annotations

import asyncio
import time

import pytest

from ionm.case.store import CaseStore
from ionm.console.scripted import ack_all, command, injury_scenario, run_case
from ionm.hub import bridge, messages as hm
from ionm.hub.natsserver import NatsServer
from ionm.hub.publisher import Publisher


def read_stream(url: str, durable: str, limit: int | None = None) -> list[dict]:
    """Messages of the IONM stream through a durable pull consumer (acknowledged as read)."""

    async def go() -> list[dict]:
        import nats

        nc = await nats.connect(url)
        js = nc.jetstream()
        sub = await js.pull_subscribe(hm.SUBJECTS, durable=durable, stream=hm.STREAM)
        out: list[dict] = []
        while limit is None or len(out) < limit:
            try:
                batch = await sub.fetch(min(100, (limit or 100) - len(out)) if limit else 100, timeout=1.0)
            except Exception:  # nats' TimeoutError: nothing more
                break
            for msg in batch:
                out.append(hm.decode(msg.data) | {"subject": msg.subject})
                await msg.ack()
        await nc.close()
        return out

    return asyncio.run(go())


def test_subjects_are_sanitised_and_messages_are_versioned_cbor():
    assert hm.subject("St. Mary's", "OR 3", "c.1", "alerts") == "ionm.St__Mary_s.OR_3.c_1.alerts"
    with pytest.raises(ValueError, match="unknown oversight message kind"):
        hm.subject("a", "b", "c", "sweeps")
    msg = hm.decode(hm.encode("event", 7, "c1", {"text": "baseline"}, sent=1.5))
    assert msg == {"v": hm.VERSION, "kind": "event", "seq": 7, "case": "c1", "sent": 1.5, "body": {"text": "baseline"}}
    with pytest.raises(ValueError):
        hm.decode(b"\xa1\x61v\x02")  # {"v": 2}


def test_a_hub_crash_mid_case_loses_nothing_and_back_fills_in_order_once(tmp_path):
    server = NatsServer(tmp_path / "hub").start()
    pub = Publisher(server.url, "site", "OR1", "case-1")
    try:
        for i in range(60):
            pub.publish("event", {"i": i})
        assert pub.flush(20)
        server.kill()  # the hub dies mid-case; the room keeps publishing
        for i in range(60, 120):
            pub.publish("trend", {"i": i})
            time.sleep(0.01)
        time.sleep(1.5)
        assert pub.pending > 0  # held while the hub is down
        server = NatsServer(tmp_path / "hub", port=server.port).start()  # back, on its store
        for i in range(120, 150):
            pub.publish("alerts", {"i": i})
        assert pub.flush(30), pub.last_error
    finally:
        pub.close()
    try:
        got = read_stream(server.url, "physician")
    finally:
        server.stop()
    assert [m["seq"] for m in got] == list(range(1, 151))  # every message, in order, once
    assert [m["body"]["i"] for m in got] == list(range(150))
    assert got[0]["subject"] == "ionm.site.OR1.case-1.event"


def test_the_physicians_durable_consumer_resumes_where_it_stopped_after_a_hub_restart(tmp_path):
    server = NatsServer(tmp_path / "hub").start()
    pub = Publisher(server.url, "site", "OR2", "case-2")
    try:
        for i in range(40):
            pub.publish("event", {"i": i})
        assert pub.flush(20)
        first = read_stream(server.url, "doc", limit=25)
        server.stop()
        server = NatsServer(tmp_path / "hub", port=server.port).start()
        rest = read_stream(server.url, "doc")
    finally:
        pub.close()
        server.stop()
    assert [m["seq"] for m in first] == list(range(1, 26))
    assert [m["seq"] for m in rest] == list(range(26, 41))


def test_a_console_case_publishes_its_alerts_and_timeline(tmp_path):
    server = NatsServer(tmp_path / "hub").start()
    store = CaseStore(tmp_path / "cases.db")
    pubs: list[Publisher] = []

    def attach(engine):
        pub = Publisher(server.url, "site", "OR4", engine.case["uid"])
        pubs.append(pub)
        bridge.attach(engine, pub)

    try:
        run_case(store, injury_scenario(16.0), duration_s=24.0, mep_every=1.0, actions=[
            (0.0, attach),
            (10.0, command("tech", "technologist", {"cmd": "baseline"})),
            (22.0, ack_all("doc", "physician", "surgeon informed")),
        ])
        assert pubs and pubs[0].flush(30), pubs[0].last_error if pubs else "not attached"
        got = read_stream(server.url, "doc")
        recorded = store.rows("alerts", 1)
    finally:
        for p in pubs:
            p.close()
        store.close()
        server.stop()
    kinds = {m["kind"] for m in got}
    assert {"header", "event", "alerts", "trend"} <= kinds
    events = [m["body"] for m in got if m["kind"] == "event"]
    assert any(e["kind"] == "alert" for e in events)
    assert any(e["kind"] == "ack" or "surgeon informed" in e["text"] for e in events)
    last_alerts = [m["body"]["alerts"] for m in got if m["kind"] == "alerts"][-1]
    assert last_alerts and all(a["ack"] for a in last_alerts)  # the acknowledgement reached the hub
    assert [m["seq"] for m in got] == list(range(1, len(got) + 1))
    assert sorted(a["uid"] for a in last_alerts) == sorted(r["uid"] for r in recorded)  # every recorded alert
