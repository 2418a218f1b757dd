"""Oversight over NATS JetStream (ionm.hub): the real nats-server from its wheel, on loopback."""

from __future__ import annotations

import asyncio
import json
import time

import pytest

from ionm.case.store import CaseStore
from ionm.console.alerts import AlertBoard
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
    msg = hm.decode(hm.encode("event", 7, "c1", {"text": "baseline"}, sent=1.5, session=3))
    assert msg == {"v": hm.VERSION, "kind": "event", "seq": 7, "session": 3, "case": "c1", "sent": 1.5,
                   "body": {"text": "baseline"}}
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
    assert {"header", "event", "alerts", "trend", "average"} <= kinds
    assert any(m["body"].get("baseline") for m in got if m["kind"] == "average")  # the baselines' waveforms
    events = [m["body"] for m in got if m["kind"] == "event"]
    assert any(e["kind"] == "alert" for e in events)
    assert any(e["kind"] == "ack" or "surgeon informed" in e["text"] for e in events)
    last_alerts = [m["body"]["alerts"] for m in got if m["kind"] == "alerts"][-1]
    assert last_alerts and all(a["ack"] for a in last_alerts)  # the acknowledgement reached the hub
    assert [m["seq"] for m in got] == list(range(1, len(got) + 1))
    assert sorted(a["uid"] for a in last_alerts) == sorted(r["uid"] for r in recorded)  # every recorded alert


def test_a_resumed_case_is_a_new_session_not_taken_for_repeats(tmp_path):
    server = NatsServer(tmp_path / "hub").start()
    try:
        for _run in range(2):  # the console restarted on the same case: seq starts at 1 again
            pub = Publisher(server.url, "site", "OR5", "case-5")
            for i in range(10):
                pub.publish("event", {"i": i})
            assert pub.flush(20), pub.last_error
            pub.close()
            time.sleep(0.01)
        got = read_stream(server.url, "doc")
    finally:
        server.stop()
    assert len(got) == 20
    assert len({m["session"] for m in got}) == 2


def test_ionm_hub_shows_every_rooms_case_with_unacknowledged_alerts_first(tmp_path):
    import json
    import signal
    import subprocess
    import urllib.request

    from conftest import ionm_cmd

    from ionm.hub.natsserver import free_port

    web_port, nats_port, leaf_port = free_port(), free_port(), free_port()
    proc = subprocess.Popen(ionm_cmd("hub", "--listen", "127.0.0.1:%d" % web_port, "--nats", "127.0.0.1:%d" % nats_port,
                                     "--leaf", "127.0.0.1:%d" % leaf_port, "--store", str(tmp_path / "store")),
                            stdout=subprocess.PIPE, text=True)
    try:
        assert "NATS JetStream at nats://127.0.0.1:%d" % nats_port in proc.stdout.readline()
        assert "leaf nodes at nats-leaf://127.0.0.1:%d" % leaf_port in proc.stdout.readline()
        assert "oversight page" in proc.stdout.readline()
        quiet = Publisher("nats://127.0.0.1:%d" % nats_port, "General", "OR 1", "case-a")
        quiet.publish("header", {"uid": "case-a", "procedure": "L4-L5 fusion"})
        alarmed = Publisher("nats://127.0.0.1:%d" % nats_port, "General", "OR 2", "case-b")
        alarmed.publish("header", {"uid": "case-b", "procedure": "thyroidectomy"})
        alarmed.publish("alerts", {"alerts": [{"uid": "case-b-A1", "label": "L vocalis: combined event", "ack": None}]})
        # a storm: the console's alert frame lists a few alerts and counts them all per channel (console.alerts)
        board = AlertBoard()
        for i in range(60):
            row = {"uid": "case-c-A%d" % (i + 1), "stream": "mep/TcMEP", "t_s": 10.0 * i, "channel": i % 3,
                   "channel_name": "ch%d" % (i % 3), "criterion": "amplitude", "amplitude_ratio": 0.3,
                   "latency_ratio": 1.0, "scope": "focal", "wall": 0.0, "ack": None}
            board.add(row | {"label": "TcMEP ch%d: alert %d" % (i % 3, i + 1)})
        board.acknowledge(board.to_acknowledge("case-c-A10", group=False), {"user": "doc", "note": "seen",
                                                                             "t_s": 0.0, "wall": 0.0})
        stormy = Publisher("nats://127.0.0.1:%d" % nats_port, "General", "OR 3", "case-c")
        stormy.publish("header", {"uid": "case-c", "procedure": "scoliosis"})
        stormy.publish("alerts", board.frame())
        assert quiet.flush(20) and alarmed.flush(20) and stormy.flush(20)
        quiet.close()
        alarmed.close()
        stormy.close()
        view: dict = {}
        for _ in range(100):
            with urllib.request.urlopen("http://127.0.0.1:%d/state.json" % web_port, timeout=5) as r:
                view = json.loads(r.read())
            if len(view["cases"]) == 3:
                break
            time.sleep(0.1)
        assert [c["case"] for c in view["cases"]] == ["case-c", "case-b", "case-a"]  # the unacknowledged first
        assert [c["unacknowledged"] for c in view["cases"]] == [59, 1, 0]  # every one counted, not the listed few
        assert view["cases"][0]["newest_alert"]["label"] == "TcMEP ch2: alert 60"
        assert view["cases"][1]["newest_alert"]["label"] == "L vocalis: combined event"
        assert (view["cases"][1]["room"], view["cases"][2]["procedure"]) == ("OR_2", "L4-L5 fusion")
        with urllib.request.urlopen("http://127.0.0.1:%d/" % web_port, timeout=5) as r:
            assert b"ionm oversight" in r.read()
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=20) == 0


def test_ionm_console_publish_sends_the_live_case_to_the_hub(tmp_path):
    """As a room runs it: `ionm console --sim --direct --publish URL --site --room`; the case reaches the stream
    under its site and room, and a stopped console has sent what it had queued."""
    import signal
    import subprocess
    import sys

    from conftest import ROOT, store_with_technologist

    server = NatsServer(tmp_path / "hub").start()
    db = store_with_technologist(tmp_path / "cases.db")
    log = tmp_path / "console.log"
    proc = subprocess.Popen([sys.executable, "-m", "ionm.cli", "console", "--sim", "--direct", "--scenario", "stable",
                             "--db", str(db), "--no-browser", "--listen", "127.0.0.1:0", "--auto-baseline", "3",
                             "--publish", server.url, "--site", "General", "--room", "OR 9"],
                            stdout=open(log, "wb"), stderr=subprocess.STDOUT, cwd=ROOT)
    try:
        for _ in range(600):
            if "opened case" in log.read_text(errors="replace"):
                break
            time.sleep(0.05)
        time.sleep(8.0)
        proc.send_signal(signal.SIGINT)
        assert proc.wait(30) == 0, log.read_text(errors="replace")
        got = read_stream(server.url, "doc")
    finally:
        if proc.poll() is None:
            proc.kill()
        server.stop()
    assert "publishing to %s as General/OR 9" % server.url in log.read_text(errors="replace")
    assert got and all(m["subject"].startswith("ionm.General.OR_9.") for m in got)
    assert got[0]["kind"] == "header"
    assert any(m["kind"] == "event" and m["body"]["kind"] == "baseline" for m in got)
    assert [m["seq"] for m in got] == list(range(1, len(got) + 1))


# -- the room's own JetStream, a leaf node of the hub (ionm.hub.leaf) ----------------------------------------------

def hub_server(store, leaf_port: int, port: int | None = None, accounts: str = "") -> NatsServer:
    from ionm.hub import leaf

    return NatsServer(store, port=port, name="ionm-hub", conf=leaf.hub_conf("127.0.0.1", leaf_port, accounts))


def stream_messages(url: str, **auth) -> list[tuple[str, str, dict]]:
    """(subject, Nats-Msg-Id, message) of every message in the hub's IONM stream, in stream order."""

    async def go() -> list[tuple[str, str, dict]]:
        import nats

        nc = await nats.connect(url, **auth)
        js = nc.jetstream()
        try:
            state = (await js.stream_info(hm.STREAM)).state
            out = []
            for seq in range(state.first_seq, state.last_seq + 1):
                m = await js.get_msg(hm.STREAM, seq)
                out.append((m.subject, (m.headers or {}).get("Nats-Msg-Id", ""), hm.decode(m.data)))
            return out
        finally:
            await nc.close()

    return asyncio.run(go())


def wait_for_count(url: str, n: int, deadline_s: float, **auth) -> int:
    """Poll the hub's stream until it holds n messages (or the deadline passes); the count it last saw."""

    async def count() -> int:
        import nats

        nc = await nats.connect(url, connect_timeout=2, allow_reconnect=False, **auth)
        try:
            return int((await nc.jetstream().stream_info(hm.STREAM)).state.messages)
        finally:
            await nc.close()

    end, seen = time.monotonic() + deadline_s, -1
    while time.monotonic() < end:
        try:
            seen = asyncio.run(count())
        except Exception:  # the hub is (re)starting, or has no stream yet
            seen = -1
        if seen >= n:
            return seen
        time.sleep(0.2)
    return seen


def test_a_room_keeps_publishing_through_a_hub_outage_and_the_hub_gets_everything_in_order_once(tmp_path):
    """The room's console publishes to the room's own JetStream (a leaf node); the hub's stream sources it. The
    hub's server stops for a few seconds while the room goes on; back on the same store and ports, the hub's
    stream holds every message, in the room's order, once, under the hub's subjects, with its message id."""
    from ionm.hub import leaf
    from ionm.hub.natsserver import free_port

    leaf_port = free_port()
    hub = hub_server(tmp_path / "hub", leaf_port).start()
    keeper = leaf.SourceKeeper(hub.url)
    room = leaf.RoomServer(tmp_path / "room", "General", "OR 1", "nats-leaf://127.0.0.1:%d" % leaf_port).start()
    pub = Publisher(room.url, "General", "OR 1", "case-1", prefix="ionmroom", ensure=False)
    try:
        for i in range(40):
            pub.publish("event", {"i": i})
        assert pub.flush(20), pub.last_error
        assert wait_for_count(hub.url, 40, 30) == 40, keeper.sources.last_error
        hub.stop()  # the hub goes away; the room goes on, and its stream acknowledges every message
        for i in range(40, 100):
            pub.publish("trend", {"i": i})
            time.sleep(0.02)
        assert pub.flush(20), pub.last_error
        time.sleep(2.0)
        hub = hub_server(tmp_path / "hub", leaf_port, port=hub.port).start()  # back, on its store and ports
        for i in range(100, 120):
            pub.publish("alerts", {"i": i})
        assert pub.flush(20), pub.last_error
        assert wait_for_count(hub.url, 120, 45) == 120, (keeper.sources.stats, keeper.sources.last_error)
        time.sleep(1.0)  # nothing more comes: no repeats
        got = stream_messages(hub.url)
        stats = dict(keeper.sources.stats)
    finally:
        pub.close()
        keeper.close()
        room.stop()
        hub.stop()
    assert len(got) == 120
    assert [m["seq"] for _s, _id, m in got] == list(range(1, 121))  # in the room's order, once
    assert [mid for _s, mid, _m in got] == [hm.msg_id("case-1", pub.session, i) for i in range(1, 121)]
    assert [m["body"]["i"] for _s, _id, m in got] == list(range(120))
    assert {s.rsplit(".", 1)[0] for s, _id, _m in got} == {"ionm.General.OR_1.case-1"}  # the hub's subjects
    assert stats["added"] == 1, stats  # one source; whether it was re-applied depends on nats-server's own retry


def test_re_applying_a_rooms_source_repeats_nothing(tmp_path):
    """The hub re-applies a source (removes it and adds it back) after silences; the stream then resumes after
    the last message it holds from that room: forced here twice mid-case, every message once."""
    from ionm.hub import leaf
    from ionm.hub.natsserver import free_port

    leaf_port = free_port()
    hub = hub_server(tmp_path / "hub", leaf_port).start()
    keeper = leaf.SourceKeeper(hub.url)
    room = leaf.RoomServer(tmp_path / "room", "General", "OR 3", "nats-leaf://127.0.0.1:%d" % leaf_port).start()
    pub = Publisher(room.url, "General", "OR 3", "case-3", prefix="ionmroom", ensure=False)
    name = leaf.room_stream("General", "OR 3")
    try:
        for burst in range(3):
            for i in range(20):
                pub.publish("event", {"i": burst * 20 + i})
            assert pub.flush(20), pub.last_error
            assert wait_for_count(hub.url, 20 * (burst + 1), 30) == 20 * (burst + 1), keeper.sources.stats
            if burst < 2:
                before = keeper.sources.stats["reapplied"]
                keeper.sources.applied[name] = 0.0  # as if applied long ago,
                keeper.sources.stale.add(name)  # and the hub's connection had come back
                end = time.monotonic() + 20
                while keeper.sources.stats["reapplied"] == before and time.monotonic() < end:
                    time.sleep(0.1)
        time.sleep(1.0)
        got = stream_messages(hub.url)
        stats = dict(keeper.sources.stats)
    finally:
        pub.close()
        keeper.close()
        room.stop()
        hub.stop()
    assert stats["reapplied"] >= 2, stats
    assert [m["body"]["i"] for _s, _id, m in got] == list(range(60))
    assert [mid for _s, mid, _m in got] == [hm.msg_id("case-3", pub.session, i) for i in range(1, 61)]


def test_a_cut_between_room_and_hub_loses_nothing_and_repeats_nothing(tmp_path):
    """The network between the room and the hub fails for 7 s (longer than the 5 s after which the hub re-applies
    a silent room's source) while the room publishes; once it is back, the hub's stream has every message once,
    in order."""
    from ionm.hub import leaf
    from ionm.hub.natsserver import free_port

    leaf_port = free_port()
    hub = hub_server(tmp_path / "hub", leaf_port).start()
    from bench.hub import Relay  # the network between the room and the hub, cut and restored (as the benchmark)

    link = Relay(leaf_port)
    keeper = leaf.SourceKeeper(hub.url)
    room = leaf.RoomServer(tmp_path / "room", "General", "OR 4", "nats-leaf://127.0.0.1:%d" % link.port).start()
    pub = Publisher(room.url, "General", "OR 4", "case-4", prefix="ionmroom", ensure=False)
    try:
        for i in range(30):
            pub.publish("event", {"i": i})
        assert pub.flush(20), pub.last_error
        assert wait_for_count(hub.url, 30, 30) == 30, keeper.sources.stats
        link.cut()
        end = time.monotonic() + 7.0
        i = 30
        while time.monotonic() < end:
            pub.publish("trend", {"i": i})
            i += 1
            time.sleep(0.1)
        assert pub.flush(20), pub.last_error  # the room's own stream took them all
        link.restore()
        restored = time.monotonic()
        for _ in range(10):
            pub.publish("alerts", {"i": i})
            i += 1
        assert pub.flush(20), pub.last_error
        assert wait_for_count(hub.url, i, 45) == i, (keeper.sources.stats, keeper.sources.last_error)
        back_s = time.monotonic() - restored
        time.sleep(1.0)
        got = stream_messages(hub.url)
    finally:
        pub.close()
        keeper.close()
        room.stop()
        link.close()
        hub.stop()
    assert [m["body"]["i"] for _s, _id, m in got] == list(range(i)), back_s
    assert [mid for _s, mid, _m in got] == [hm.msg_id("case-4", pub.session, n) for n in range(1, i + 1)]
    print("link cut 7 s: %d messages, all at the hub %.1f s after the link came back, sources %s"
          % (i, back_s, keeper.sources.stats))


# -- who may read and publish what (ionm.hub.access) ---------------------------------------------------------------

ACCESS = {"users": [
    {"name": "dr_a", "password": "pw-a", "role": "physician", "rooms": ["General/OR 1"]},
    {"name": "or1", "password": "pw-1", "role": "room", "room": "General/OR 1"},
    {"name": "or2", "password": "pw-2", "role": "room", "room": "General/OR 2"},
]}


def access_hub(tmp_path):
    """A hub whose nats-server enforces ACCESS; (server, leaf port, the hub's service login)."""
    from ionm.hub import access
    from ionm.hub.natsserver import free_port

    acc = access.Access.parse(ACCESS)
    service = {"user": access.SERVICE_USER, "password": access.service_password()}
    leaf_port = free_port()
    server = hub_server(tmp_path / "hub", leaf_port, accounts=acc.server_conf(service["password"])).start()
    return server, leaf_port, service, acc


def test_the_access_file_is_checked():
    from ionm.hub import access

    with pytest.raises(access.AccessError, match="role"):
        access.Access.parse({"users": [{"name": "x", "password": "p", "role": "admin"}]})
    with pytest.raises(access.AccessError, match="SITE/ROOM"):
        access.Access.parse({"users": [{"name": "x", "password": "p", "role": "physician", "rooms": ["OR 1"]}]})
    with pytest.raises(access.AccessError, match="distinct"):
        access.Access.parse({"users": [ACCESS["users"][0], ACCESS["users"][0]]})
    acc = access.Access.parse(ACCESS)
    assert acc.room_allowed("General", "OR 1") and not acc.room_allowed("General", "OR 3")
    perms = acc.permissions(acc.users[0])
    assert perms["subscribe"]["allow"] == ["ionm.General.OR_1.>", "_INBOX_dr_a.>"]


def test_a_physician_reads_the_assigned_rooms_only(tmp_path):
    """dr_a is assigned OR 1: a live subscription and a JetStream consumer on OR 1 get its case; on OR 2 the
    server refuses both (a permissions violation, reported to the client)."""
    from ionm.hub import access

    server, _leaf_port, service, _acc = access_hub(tmp_path)
    try:
        asyncio.run(_ensure_ionm_stream(server.url, service))
        pubs = [Publisher(server.url, "General", "OR %d" % n, "case-%d" % n, user="or%d" % n, password="pw-%d" % n)
                for n in (1, 2)]
        for p in pubs:
            for i in range(5):
                p.publish("event", {"i": i})
            assert p.flush(20), p.last_error
            p.close()

        async def physician() -> dict:
            import json

            import nats
            from nats.js.api import ConsumerConfig, DeliverPolicy

            errors: list[str] = []

            async def on_error(exc: Exception) -> None:
                errors.append(str(exc))

            nc = await nats.connect(server.url, user="dr_a", password="pw-a", inbox_prefix=access.inbox("dr_a"),
                                    error_cb=on_error, allow_reconnect=False)
            js = nc.jetstream()
            live: list[str] = []

            async def on_live(msg) -> None:
                live.append(msg.subject)

            await nc.subscribe("ionm.General.OR_1.>", cb=on_live)
            await nc.subscribe("ionm.General.OR_2.>", cb=on_live)  # refused by the server
            await nc.flush()
            stored: dict[str, list[str]] = {}
            for room in ("OR_1", "OR_2"):
                inbox = nc.new_inbox()
                got: list[str] = []

                async def on_stored(msg, got=got) -> None:
                    got.append(msg.subject)

                await nc.subscribe(inbox, cb=on_stored)
                try:
                    await js.add_consumer(hm.STREAM, ConsumerConfig(
                        name="dr_a-" + room, filter_subject="ionm.General.%s.>" % room, deliver_subject=inbox,
                        deliver_policy=DeliverPolicy.ALL, inactive_threshold=30.0))
                except Exception as exc:  # refused: no responder within the timeout, or a violation
                    errors.append("consumer %s: %r" % (room, exc))
                end = time.monotonic() + 10
                while len(got) < 5 and time.monotonic() < end and room == "OR_1":
                    await asyncio.sleep(0.1)
                stored[room] = got
            # the filter in the request's body must be the one in its subject (the one the permissions check)
            sneaky = {"stream_name": hm.STREAM, "config": {"name": "sneaky", "filter_subject": "ionm.General.OR_2.>",
                                                           "deliver_subject": nc.new_inbox(), "ack_policy": "none"}}
            answer = await nc.request("$JS.API.CONSUMER.CREATE.%s.sneaky.ionm.General.OR_1.>" % hm.STREAM,
                                      json.dumps(sneaky).encode(), timeout=10)
            await asyncio.sleep(0.5)
            await nc.close()
            return {"errors": errors, "live": live, "stored": stored, "sneaky": json.loads(answer.data)}

        seen = asyncio.run(physician())
    finally:
        server.stop()
    errors = [e.lower().removeprefix("nats: ") for e in seen["errors"]]  # nats-py's words for the server's
    assert 'permissions violation for subscription to "ionm.general.or_2.>"' in errors, errors
    assert any(e.startswith("permissions violation for publish to \"$js.api.consumer.create.ionm.dr_a-or_2.")
               for e in errors), errors
    assert any(e.startswith("consumer OR_2") for e in seen["errors"]), seen["errors"]  # no consumer on OR 2
    assert not any(e.startswith("consumer OR_1") for e in seen["errors"]), seen["errors"]
    assert seen["stored"]["OR_1"] == ["ionm.General.OR_1.case-1.event"] * 5
    assert seen["stored"]["OR_2"] == []
    assert seen["sneaky"]["error"]["err_code"] == 10131, seen["sneaky"]  # "did not match filtered subject"
    assert not any("ionm.General.OR_2" in s for s in seen["live"])


async def _ensure_ionm_stream(url: str, auth: dict) -> None:
    import nats

    from ionm.hub.publisher import ensure_stream

    nc = await nats.connect(url, **auth)
    try:
        await ensure_stream(nc.jetstream())
    finally:
        await nc.close()


def test_a_room_cannot_publish_as_another_room(tmp_path):
    """or1 over the leaf: its case reaches the hub; what it publishes under OR 2's subjects, directly or over the
    leaf, and an announcement as OR 2, bring nothing of OR 2 into the hub's stream."""
    from ionm.hub import leaf

    server, leaf_port, service, acc = access_hub(tmp_path)
    keeper = leaf.SourceKeeper(server.url, leaf.Sources(allowed=acc.room_allowed), **service)
    room = leaf.RoomServer(tmp_path / "room", "General", "OR 1",
                           "nats-leaf://or1:pw-1@127.0.0.1:%d" % leaf_port).start()
    pub = Publisher(room.url, "General", "OR 1", "case-1", prefix="ionmroom", ensure=False)
    errors: list[str] = []
    try:
        for i in range(20):
            pub.publish("event", {"i": i})
        assert pub.flush(20), pub.last_error
        assert wait_for_count(server.url, 20, 30, **service) == 20, keeper.sources.stats

        async def forge() -> None:
            import json

            import nats

            async def on_error(exc: Exception) -> None:
                errors.append(str(exc))

            local = await nats.connect(room.url)  # the room's own server: over the leaf to the hub
            await local.publish("ionm.General.OR_2.case-x.event", hm.encode("event", 1, "case-x", {}))
            await local.publish(leaf.JOIN, json.dumps({"site": "General", "room": "OR 2"}).encode())
            await local.flush()
            await local.close()
            direct = await nats.connect(server.url, user="or1", password="pw-1", error_cb=on_error,
                                        allow_reconnect=False)
            await direct.publish("ionm.General.OR_2.case-x.event", hm.encode("event", 1, "case-x", {}))
            await direct.flush()
            await asyncio.sleep(0.5)
            await direct.close()

        asyncio.run(forge())
        for i in range(20, 30):
            pub.publish("event", {"i": i})
        assert pub.flush(20), pub.last_error
        assert wait_for_count(server.url, 30, 30, **service) == 30
        time.sleep(3.0)  # long enough for a forged source or message to arrive, had it been let through
        got = stream_messages(server.url, **service)
    finally:
        pub.close()
        keeper.close()
        room.stop()
        server.stop()
    assert {s for s, _id, _m in got} == {"ionm.General.OR_1.case-1.event"}
    assert [m["body"]["i"] for _s, _id, m in got] == list(range(30))
    refused = [e.lower().removeprefix("nats: ") for e in errors]
    assert 'permissions violation for publish to "ionm.general.or_2.case-x.event"' in refused, errors


def test_ionm_console_publishes_through_its_rooms_leaf_node_to_a_hub_with_an_access_file(tmp_path):
    """As it is run: `ionm hub --leaf --access FILE` and `ionm console --sim --direct --publish
    nats-leaf://or9:PASSWORD@HUB:LEAFPORT --site --room --room-store DIR`; the case reaches the hub's page."""
    import json
    import signal
    import subprocess

    from conftest import ionm_cmd, room_case_on_hub_page, store_with_technologist

    from ionm.hub.natsserver import free_port

    access_file = tmp_path / "access.json"
    access_file.write_text(json.dumps({"users": [
        {"name": "or9", "password": "pw-9", "role": "room", "room": "General/OR 9"},
        {"name": "dr_a", "password": "pw-a", "role": "physician", "rooms": ["General/OR 9"]}]}))
    web_port, nats_port, leaf_port = free_port(), free_port(), free_port()
    hub = subprocess.Popen(ionm_cmd("hub", "--listen", "127.0.0.1:%d" % web_port, "--nats", "127.0.0.1:%d" % nats_port,
                                    "--leaf", "127.0.0.1:%d" % leaf_port, "--store", str(tmp_path / "hub"),
                                    "--access", str(access_file)), stdout=subprocess.PIPE, text=True)
    db = store_with_technologist(tmp_path / "cases.db")
    log = tmp_path / "console.log"
    try:
        for _ in range(3):
            hub.stdout.readline()
        view = room_case_on_hub_page(web_port, db, log, "--publish", "nats-leaf://or9:pw-9@127.0.0.1:%d" % leaf_port,
                                     "--site", "General", "--room", "OR 9", "--room-store", str(tmp_path / "room"),
                                     login=("dr_a", "pw-a"))
    finally:
        hub.send_signal(signal.SIGTERM)
        assert hub.wait(timeout=20) == 0
    text = log.read_text(errors="replace")
    assert "a leaf node of nats-leaf://or9:***@127.0.0.1:%d" % leaf_port in text, text
    assert "pw-9" not in text
    assert [(c["site"], c["room"]) for c in view["cases"]] == [("General", "OR_9")], view
    assert any(e.get("kind") == "baseline" for e in view["cases"][0]["events"]), view
    assert view["bad_messages"] == 0


def test_the_page_is_pushed_each_change_as_it_happens_not_at_the_next_poll():
    from aiohttp import ClientSession
    from aiohttp.test_utils import TestServer

    from ionm.hub.server import HubState, make_app

    async def go() -> tuple[dict, dict]:
        state = HubState()
        server = TestServer(make_app(state))
        await server.start_server()
        try:
            async with ClientSession() as http, http.get(server.make_url("/events")) as resp:
                assert resp.headers["Content-Type"].startswith("text/event-stream")

                async def view() -> dict:
                    while True:
                        line = (await resp.content.readline()).decode()
                        if line.startswith("data: "):
                            return json.loads(line[6:])

                first = await view()  # the state as it is, at once
                event = {"k": "event", "id": 1, "t_s": 12.0, "wall": time.time(), "kind": "alert", "user": "system",
                         "text": "ALERT tibial L cortical"}
                state.add("ionm.site.OR9.case-9.event", hm.encode("event", 1, "case-9", event))
                # pushed on the change: without the push, the next view would come with the 15 s keepalive
                return first, await asyncio.wait_for(view(), 10)
        finally:
            await server.close()

    first, second = asyncio.run(go())
    assert first["cases"] == []
    (tile,) = second["cases"]
    assert tile["room"] == "OR9" and tile["events"][-1]["text"] == "ALERT tibial L cortical"


class Engine:
    """The engine's subscription interface (CaseEngine.subscribe): out() hands frames as the console emits them."""

    def __init__(self, uid: str, procedure: str) -> None:
        self.case = {"uid": uid, "procedure": procedure}

    def subscribe(self, fn):
        self.out = fn


class Sink:
    """What the bridge hands to the publisher, kept in order."""

    def __init__(self):
        self.sent = []

    def publish(self, kind, body):
        self.sent.append((kind, body))
        return len(self.sent)


def test_screw_tests_reach_the_hub_without_the_rules_legend_and_a_tile_counts_the_red_ones():
    from ionm.hub.server import HubState

    results = [{"level": "L4", "side": "left", "lowest": {"channel": 9, "threshold_ma": 1.5}, "colour": "red",
                "label": "likely breach", "hi_ma": 20.0},
               {"level": "L5", "side": "left", "lowest": None, "colour": "green", "label": "no breach", "hi_ma": 20.0}]
    frame = {"available": True, "rules": [{"name": "lumbosacral"}], "running": None, "results": results, "count": 2}
    engine, sink = Engine("case-7", "L3-S1 fusion"), Sink()
    bridge.attach(engine, sink)
    engine.out([("screws", json.dumps(frame), None)], [])
    engine.out([("screws", json.dumps(frame), None)], [])  # unchanged: not sent again
    screws = [body for kind, body in sink.sent if kind == "screws"]
    assert screws == [{"available": True, "running": None, "results": results, "count": 2}]  # no legend

    state = HubState()
    state.add("ionm.General.OR_2.case-7.screws", hm.encode("screws", 2, "case-7", screws[0]))
    (tile,) = state.view()["cases"]
    assert tile["screws"] == {"count": 2, "red": 1, "running": False,
                              "newest": {"level": "L5", "side": "left", "lowest": None, "colour": "green",
                                         "label": "no breach", "hi_ma": 20.0}}


def test_an_alert_is_pushed_at_once_even_right_after_a_view_of_routine_data():
    from ionm.hub import server as hs

    async def woken(kind: str, body: dict) -> bool:
        state = hs.HubState()
        state.add("ionm.site.OR1.case-1.trend", hm.encode("trend", 1, "case-1", {"k": "trend"}))  # just pushed
        waiting = asyncio.create_task(state.urgent_change(state.urgent, 30.0))  # the viewer's pause after it
        await asyncio.sleep(0)
        state.add("ionm.site.OR1.case-1.%s" % kind, hm.encode(kind, 2, "case-1", body))
        for _ in range(5):  # the loop runs the woken task, if any (no clock involved)
            await asyncio.sleep(0)
        done = waiting.done()
        waiting.cancel()
        return done

    assert not asyncio.run(woken("trend", {"k": "trend", "s": "x", "t": 1.0}))  # routine data waits out the pause
    assert asyncio.run(woken("event", {"k": "event", "id": 1, "kind": "alert"}))  # an alert ends it
    assert asyncio.run(woken("alerts", {"total": 1, "unacked": 1, "groups": []}))


def test_train_of_four_and_probe_records_reach_the_hub_and_a_low_count_shows_on_the_tile():
    """The TOF state (the count < 2 warning that makes MEP and EMG unreliable) and the manual probe's records
    ("response present at X mA") go to the hub as the screws do: their frames without the room's panel detail."""
    from ionm.hub.server import HubState

    tof_results = [{"uid": "t1", "t_s": 120.0, "user": "tech", "auto": False, "site": "R median",
                    "channel_name": "APB", "current_ma": 25.0, "count": 1, "ratio": None, "t1_fraction": 0.2,
                    "error": None}]
    tof = {"available": True, "interval_s": 15.0, "outputs": {"1": "R median"}, "channels": [[4, "APB"]],
           "next_allowed_t_s": 135.0, "running": None, "every": None,
           "warning": "TOF 1/4 (R median -> APB): MEP and EMG unreliable", "results": tof_results, "count": 1}
    last = {"3": {"p2p_uv": 420.0, "latency_ms": 6.1}}
    # a record as the engine makes it (ionm.console.engine._probe_end): present per muscle, response a bool
    record = {"uid": "p1", "t_s": 130.0, "user": "tech", "label": "R vagus", "ma": 1.0, "pulses": 12,
              "present": {"VOCR1-VOCR2 R vocalis": {"p2p_uv": 420.0, "lat_ms": 3.1, "pulses": 12}},
              "response": True, "error": None}
    probe = {"available": True, "ma_max": 40.0, "rate_hz_max": 5.0, "criterion_uv": 100.0,
             "running": {"ma": 1.0, "rate_hz": 4.0, "label": "R vagus", "pulses": 12, "user": "tech", "last": last},
             "records": [record], "count": 1}
    engine, sink = Engine("case-8", "thyroidectomy"), Sink()
    bridge.attach(engine, sink)
    engine.out([("tof", json.dumps(tof), None), ("probe", json.dumps(probe), None)], [])
    engine.out([("tof", json.dumps(tof), None)], [])  # unchanged: not sent again
    sent = {kind: body for kind, body in sink.sent if kind in ("tof", "probe")}
    assert [k for k, _ in sink.sent].count("tof") == 1
    assert sent["tof"] == {"available": True, "running": None, "every": None, "warning": tof["warning"],
                           "results": tof_results, "count": 1}  # not the panel's outputs, channels or clock
    assert sent["probe"] == {"available": True, "records": [record], "count": 1,
                             "running": {"ma": 1.0, "rate_hz": 4.0, "label": "R vagus", "pulses": 12, "user": "tech"}}
    changed = dict(probe, running=dict(probe["running"], pulses=13, last={"3": {"p2p_uv": 380.0}}))
    engine.out([("probe", json.dumps(changed), None)], [])
    assert [k for k, _ in sink.sent].count("probe") == 2  # the session goes on: its pulse count changed

    state = HubState()
    state.add("ionm.General.OR_3.case-8.tof", hm.encode("tof", 3, "case-8", sent["tof"]))
    state.add("ionm.General.OR_3.case-8.probe", hm.encode("probe", 4, "case-8", sent["probe"]))
    (tile,) = state.view()["cases"]
    assert tile["tof"] == {"count": 1, "warning": tof["warning"], "newest": {"count": 1, "ratio": None,
                                                                               "site": "R median", "t_s": 120.0}}
    assert tile["probe"] == {"count": 1, "running": True,
                             "newest": {"label": "R vagus", "ma": 1.0, "t_s": 130.0, "response": True, "error": None,
                                        "muscles": ["VOCR1-VOCR2"]}}
    # no response, and a session the board stopped: neither reads as a response (nor the failed one as none)
    none = dict(record, uid="p2", t_s=140.0, present={}, response=False)
    failed = dict(record, uid="p3", t_s=150.0, present={}, response=False, pulses=3,
                  error="the board stopped the probe after 3 pulse(s): watchdog (...): probe again")
    for seq, rec in ((5, none), (6, failed)):
        body = dict(sent["probe"], running=None, records=[record, rec], count=2)
        state.add("ionm.General.OR_3.case-8.probe", hm.encode("probe", seq, "case-8", body))
        (tile,) = state.view()["cases"]
        assert tile["probe"]["newest"] == {"label": "R vagus", "ma": 1.0, "t_s": rec["t_s"], "response": False,
                                           "error": rec["error"], "muscles": []}


def test_the_free_run_emg_goes_to_the_hub_on_each_count_and_every_tenth_of_a_second_of_a_train():
    """During an A-train the console's free-run frame changes with every 20-ms block (its A-train time grows); the
    hub is sent it each time a channel has gained 0.1 s, a count or a warning at once, and never the discharges
    under way, the clock or the sound's format."""
    def frame(t_s, a_train_s, counts, warned=False):
        return {"t_s": t_s, "fs": 8000.0, "warn_s": 10.0, "audio": {"rate_hz": 8000},
                "channels": [{"name": "L orbicularis oris", "facial": True, "a_train_s": a_train_s, "warned": warned,
                              "counts": counts},
                             {"name": "L mentalis", "facial": True, "a_train_s": 0.0, "warned": False, "counts": {}}],
                "ongoing": [{"ch": 0, "t_s": 40.0, "end_s": t_s, "peak_uv": 80.0}]}

    engine, sink = Engine("case-9", "CPA tumour"), Sink()
    bridge.attach(engine, sink)
    for k in range(101):  # a 2-s A-train, one frame per 20-ms block, then counted at its end
        engine.out([("emg", json.dumps(frame(40.0 + 0.02 * k, round(9.0 + 0.02 * k, 3), {"spike": 3})), None)], [])
    engine.out([("emg", json.dumps(frame(42.02, 11.0, {"spike": 3, "a_train": 1}, warned=True)), None)], [])
    engine.out([("emg", json.dumps(frame(42.04, 11.0, {"spike": 3, "a_train": 1}, warned=True)), None)], [])
    sent = [b for k, b in sink.sent if k == "emg"]
    assert 20 <= len(sent) <= 22, len(sent)  # 2 s of train in steps of 0.1 s, and the count at its end
    assert all(set(b) == {"warn_s", "channels"} for b in sent)
    times = [b["channels"][0]["a_train_s"] for b in sent]
    assert all(0.1 - 1e-6 <= b - a <= 0.1 + 1e-6 for a, b in zip(times[:-2], times[1:-1], strict=True)), times
    assert sent[-1]["channels"][0] == {"name": "L orbicularis oris", "facial": True, "a_train_s": 11.0,
                                       "warned": True, "counts": {"spike": 3, "a_train": 1}}  # exact, and once


def test_the_hub_keeps_the_last_10_s_of_raw_eeg_with_a_gap_blank_and_a_restart_starting_afresh() -> None:
    from ionm.hub.server import EEG_RAW_KEPT_S, joined_raw, keep_raw

    def chunk(t0: float, n: int, value: int) -> dict:
        return {"t0": t0, "dt": 0.008, "q": 0.5, "v": [[value] * n, [-value] * n]}

    chunks: list = []
    for k in range(8):  # 16 s of 2-s epochs, the 4th missing (the room's message lost? never: a gap is drawn as one)
        if k != 3:
            keep_raw(chunks, chunk(2.0 * k, 250, k))
    raw = joined_raw(chunks)
    assert raw is not None and len(raw["v"]) == 2
    assert len(raw["v"][0]) == round(EEG_RAW_KEPT_S / 0.008) and abs(raw["t0"] - 6.0) < 1e-9
    assert raw["v"][0][:250] == [None] * 250 and raw["v"][0][250:500] == [4] * 250 and raw["v"][1][-1] == -7
    keep_raw(chunks, chunk(0.0, 250, 9))  # a resumed room's EEG going back in time: the old trace is not joined to it
    assert joined_raw(chunks) == {"t0": 0.0, "dt": 0.008, "q": 0.5, "v": [[9] * 250, [-9] * 250]}
    assert joined_raw([]) is None
