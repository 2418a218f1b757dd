"""What travels back from the hub (issue 21 item 3): a physician's acknowledgements and notes from the hub's page
reach the room's console, are applied there once, role-checked and audited under the physician's name; and the
case view an opened tile shows. Real nats-server (the wheel's), the hub's page served for real, no mocks."""

from __future__ import annotations

import asyncio
import json
import threading
import time
import urllib.error
import urllib.request
from contextlib import contextmanager
from http.cookiejar import CookieJar
from typing import Any

from ionm.case.store import CaseStore
from ionm.hub import access, messages as hm
from ionm.hub.natsserver import NatsServer, free_port

ACCESS = {"users": [
    {"name": "dr_a", "password": "pw-a", "role": "physician", "rooms": ["General/OR 1"]},
    {"name": "dr_b", "password": "pw-b", "role": "physician", "rooms": ["General/OR 2"]},
    {"name": "or1", "password": "pw-1", "role": "room", "room": "General/OR 1"},
    {"name": "or2", "password": "pw-2", "role": "room", "room": "General/OR 2"},
]}


def hub_nats(store, port: int | None = None, leaf_port: int | None = None) -> tuple[NatsServer, dict]:
    """The hub's nats-server with ACCESS and a leafnode listener; (server, the hub's service login). The same store
    and port again: a restart."""
    from ionm.hub import leaf

    acc = access.Access.parse(ACCESS)
    service = {"user": access.SERVICE_USER, "password": "service-pw"}
    server = NatsServer(store, port=port, name="ionm-hub", conf=leaf.hub_conf(
        "127.0.0.1", leaf_port or free_port(), acc.server_conf(service["password"]))).start()
    return server, service


class Page:
    """The hub's page (HubState, the stream reader, Sender, the web app) on its own event loop, as `ionm hub` runs
    it, and an HTTP client with a cookie jar (a physician's browser). users: the access file (ACCESS); idle_s: the
    sessions' idle time."""

    def __init__(self, url: str, service: dict, users: dict | None = None, idle_s: float | None = None) -> None:
        from aiohttp import web

        from ionm.hub.server import HubState, Sender, follow, make_app

        self.state = HubState()
        self.port = free_port()
        self.loop = asyncio.new_event_loop()
        ready = threading.Event()

        async def main() -> None:
            self.stop = asyncio.Event()
            sender = Sender([url], self.state, access.Access.parse(users or ACCESS),
                            **({} if idle_s is None else {"idle_s": idle_s}), **service)
            self.sender = sender
            runner = web.AppRunner(make_app(self.state, sender), shutdown_timeout=1.0)
            await runner.setup()
            await web.TCPSite(runner, "127.0.0.1", self.port).start()
            reader = asyncio.create_task(follow([url], self.state, self.stop, **service))
            ready.set()
            await self.stop.wait()
            await reader
            await runner.cleanup()

        self.thread = threading.Thread(target=self.loop.run_until_complete, args=(main(),), daemon=True)
        self.thread.start()
        assert ready.wait(10)
        self.base = "http://127.0.0.1:%d" % self.port
        self.http = urllib.request.build_opener(urllib.request.HTTPCookieProcessor(CookieJar()))

    def login(self, name: str = "dr_a", password: str = "pw-a") -> None:
        assert self.post("/login", {"name": name, "password": password}) == (200, {"physician": name})

    def get(self, path: str) -> Any:
        """The JSON at path, None if not found (yet)."""
        try:
            with self.http.open(self.base + path, timeout=10) as r:
                return json.loads(r.read())
        except urllib.error.HTTPError as exc:
            if exc.code == 404:
                return None
            raise

    def post(self, path: str, body: dict) -> tuple[int, dict]:
        req = urllib.request.Request(self.base + path, data=json.dumps(body).encode(),
                                     headers={"Content-Type": "application/json"}, method="POST")
        try:
            with self.http.open(req, timeout=10) as r:
                return r.status, json.loads(r.read())
        except urllib.error.HTTPError as exc:
            return exc.code, json.loads(exc.read())

    def wait(self, cond, timeout: float = 10.0) -> Any:
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            got = cond()
            if got:
                return got
            time.sleep(0.05)
        raise AssertionError("not within %.0f s" % timeout)

    def close(self) -> None:
        self.loop.call_soon_threadsafe(self.stop.set)
        self.thread.join(10)


@contextmanager
def room_case(tmp_path, url: str, room: str = "OR 1", user: str = "or1", password: str = "pw-1",
              leaf_url: str | None = None):
    """A simulated case (baselines at 4 s, an injury at 8 s: alerts, left unacknowledged) run to its end through a
    console engine that stays up, publishing to the hub straight (the room's login) and reading its physicians'
    messages; given leaf_url, through the room's own JetStream, a leaf node of the hub (as ionm console --publish
    nats-leaf:// runs it)."""
    from ionm.board.simcase import SimulatedCase
    from ionm.board.stimulation import RecordedStimulation, default_program
    from ionm.console.engine import CaseEngine
    from ionm.console.scripted import injury_scenario
    from ionm.hub import bridge, leaf
    from ionm.hub.inbox import PhysicianInbox
    from ionm.hub.publisher import Publisher

    store = CaseStore(tmp_path / ("cases-%s.db" % hm.token(room)))
    sc = injury_scenario(8.0)
    program = default_program(sc)
    program["tcmep"]["repeat_s"] = 1.0
    stim = RecordedStimulation(program)
    cid = store.open_case(patient_id="T-1", procedure="T10 laminectomy")
    engine = CaseEngine(store, cid, stimulation=stim, queue_size=32, auto_baseline_s=4.0)
    room_server = keeper = None
    if leaf_url is None:
        pub = Publisher(url, "General", room, engine.case["uid"], user=user, password=password)
        args, auth = (url, "General", room), {"user": user, "password": password}
    else:
        keeper = leaf.SourceKeeper(url, leaf.Sources(), user=access.SERVICE_USER, password="service-pw")
        room_server = leaf.RoomServer(tmp_path / "room", "General", room, leaf_url).start()
        pub = Publisher(room_server.url, "General", room, engine.case["uid"], prefix=leaf.ROOM_PREFIX, ensure=False)
        args, auth = (room_server.url, "General", room), {"domain": leaf.HUB_DOMAIN}
    bridge.attach(engine, pub)
    engine.start()
    engine.run_source(SimulatedCase(sc, 1, speed=0, stimulation=stim, duration_s=12.0))
    assert engine.wait_idle(60)
    inbox = PhysicianInbox(*args, engine, pub, **auth)
    room_ = {"engine": engine, "store": store, "publisher": pub, "inbox": inbox, "case": engine.case["uid"],
             "args": args, "auth": auth}
    try:
        yield room_
    finally:
        room_["inbox"].close()
        engine.stop()
        pub.close(2)
        if keeper is not None:
            keeper.close()
        if room_server is not None:
            room_server.stop()
        store.close()


def audit(store: CaseStore, action: str) -> list[tuple[str, dict]]:
    store.flush()
    return [(r[0], json.loads(r[1])) for r in store.query("SELECT user, detail FROM audit WHERE action = ? ORDER BY id",
                                                          (action,))]


def test_a_physicians_ack_and_note_from_the_hub_are_applied_in_the_room_once_across_a_hub_restart(tmp_path):
    server, service = hub_nats(tmp_path / "hub")
    page = None
    try:
        with room_case(tmp_path, server.url) as room:
            engine, store, case = room["engine"], room["store"], room["case"]
            page = Page(server.url, service)
            # the page's physician logs in (nats-server checks the password) to view, and acknowledges the alerts
            assert page.post("/login", {"name": "dr_a", "password": "wrong"})[0] == 401
            assert page.post("/login", {"name": "dr_a", "password": "pw-a"}) == (200, {"physician": "dr_a"})
            # the case has run to its end in the room; the hub's view catches up with every alert it raised
            unacked = engine.call(lambda: engine.alerts.frame()["unacked"])
            assert unacked >= 1
            view = page.wait(lambda: (v := page.get("/case/%s.json" % case)) and v["unacknowledged"] == unacked and v)
            alert = view["alerts"][0]
            ack = {"id": "ack-0001-abcdef", "case": case, "cmd": "ack", "alert": alert["ack_uid"],
                   "note": "surgeon told, MAP raised", "group": True}
            status, sent = page.post("/send", ack)
            assert status == 200 and not sent["duplicate"], sent
            assert sent["subject"] == "ionm.General.OR_1.%s.physician.dr_a" % hm.token(case)
            # in the room: acknowledged, by dr_a@hub, stored, audited, on the timeline
            page.wait(lambda: any(r["id"] == ack["id"] for r in room["inbox"].receipts))
            frame = engine.call(lambda: engine.alerts.frame())
            group = next(g for g in frame["groups"] if g["latest"]["uid"] == alert["uid"])
            assert group["unacked"] == 0 and frame["unacked"] == unacked - alert["unacked"]
            assert [a["user"] for a in store.rows("acks", engine.case_id)] == ["dr_a@hub"] * alert["unacked"]
            assert [(u, d["note"]) for u, d in audit(store, "ack")] == [("dr_a@hub", ack["note"])] * alert["unacked"]
            assert any(e["kind"] == "ack" and e["user"] == "dr_a@hub" for e in engine.timeline)
            # and the hub's page sees the room's receipt, and the acknowledgement in the room's alert list
            page.wait(lambda: [r["status"] for r in page.get("/case/%s.json" % case)["requests"]] == ["applied"])

            # the hub's server restarted on its store; the page sends the same request again (a retry), and a
            # copy under another message id is delivered to the room: neither is applied a second time
            server.stop()
            server, _ = hub_nats(tmp_path / "hub", port=server.port)
            status, again = page.post("/send", ack)
            if status != 200:  # the page's connection still reconnecting: the physician presses again
                time.sleep(1.0)
                status, again = page.post("/send", ack)
            assert status == 200 and again["duplicate"], again

            async def copy() -> None:
                import nats

                nc = await nats.connect(server.url, user="dr_a", password="pw-a", inbox_prefix=access.inbox("dr_a"))
                await nc.jetstream().publish(sent["subject"], hm.encode(hm.PHYSICIAN, 0, case, {
                    k: ack[k] for k in ("id", "cmd", "alert", "note", "group")}), headers={"Nats-Msg-Id": "copy-1"})
                await nc.close()

            asyncio.run(copy())
            status, noted = page.post("/send", {"id": "note-0002-abcdef", "case": case, "cmd": "note",
                                                "text": "SSEP change reviewed from the hub"})
            assert status == 200, noted
            page.wait(lambda: any(r["id"] == "note-0002-abcdef" for r in room["inbox"].receipts), 15)
            page.wait(lambda: room["inbox"].stats["duplicates"] == 1)  # the copy: answered, not applied
            # a console restarted on the case: a new inbox on the same durable consumer applies nothing again
            room["inbox"].close()
            from ionm.hub.inbox import PhysicianInbox

            room["inbox"] = PhysicianInbox(*room["args"], engine, room["publisher"], **room["auth"])
            page.wait(lambda: room["inbox"].stats["connected"])
            time.sleep(0.5)  # its first fetch: anything not acknowledged would come now
            receipts = audit(store, "hub_command")
            notes = [(n["user"], n["text"]) for n in store.rows("notes", engine.case_id) if n["kind"] == "note"]
            stats = {k: v for k, v in room["inbox"].stats.items()}
    finally:
        if page is not None:
            page.close()
        server.stop()
    assert [(d["id"], d["status"]) for _u, d in receipts] == [("ack-0001-abcdef", "applied"),
                                                             ("note-0002-abcdef", "applied")]
    assert [u for u, _d in receipts] == ["dr_a@hub", "dr_a@hub"]
    assert notes == [("dr_a@hub", "SSEP change reviewed from the hub")]
    assert stats["applied"] == 0 and stats["duplicates"] == 0  # the restarted inbox had nothing to apply



def test_a_physician_cannot_send_to_an_unassigned_room_nor_as_another_and_a_room_not_as_a_physician(tmp_path):
    """dr_a is assigned OR 1 only: the page refuses a request for OR 2's case (403), and nats-server refuses what
    the page would not send: dr_a publishing to OR 2, dr_a publishing under dr_b's name, OR 1 publishing a
    physician's message to itself, OR 2 making or reading OR 1's consumer of its physicians' messages."""
    from ionm.hub.publisher import Publisher

    server, service = hub_nats(tmp_path / "hub")
    page = None
    errors: list[str] = []
    try:
        page = Page(server.url, service)  # as ionm hub: it makes the stream
        for n in (1, 2):
            pub = Publisher(server.url, "General", "OR %d" % n, "case-%d" % n, user="or%d" % n, password="pw-%d" % n)
            pub.publish("header", {"uid": "case-%d" % n, "procedure": "fusion"})
            assert pub.flush(20), pub.last_error
            pub.close()
        page.wait(lambda: len(page.state.cases) == 2)
        note = {"id": "note-0001-abcdef", "cmd": "note", "text": "seen"}
        assert page.post("/send", note | {"case": "case-1"})[0] == 401  # not logged in
        assert page.post("/login", {"name": "dr_a", "password": "pw-a"})[0] == 200
        status, refused = page.post("/send", note | {"case": "case-2"})
        assert status == 403 and "not assigned" in refused["error"], refused
        assert page.post("/send", note | {"case": "case-1"})[0] == 200

        async def forge() -> dict:
            import nats

            async def on_error(exc: Exception) -> None:
                errors.append(str(exc).lower().removeprefix("nats: "))

            out = {}
            body = hm.encode(hm.PHYSICIAN, 0, "case-x", {"id": "forged-0001", "cmd": "note", "text": "forged"})
            dr_a = await nats.connect(server.url, user="dr_a", password="pw-a", inbox_prefix=access.inbox("dr_a"),
                                      error_cb=on_error, allow_reconnect=False)
            await dr_a.publish("ionm.General.OR_2.case-2.physician.dr_a", body)  # an unassigned room
            await dr_a.publish("ionm.General.OR_1.case-1.physician.dr_b", body)  # another physician's name
            await dr_a.flush()
            or1 = await nats.connect(server.url, user="or1", password="pw-1", error_cb=on_error,
                                     allow_reconnect=False)
            await or1.publish("ionm.General.OR_1.case-1.physician.dr_a", body)  # a room as a physician
            await or1.flush()
            or2 = await nats.connect(server.url, user="or2", password="pw-2", error_cb=on_error,
                                     allow_reconnect=False)
            try:  # OR 2 reading OR 1's physicians through OR 1's consumer
                await or2.jetstream(timeout=1.0).pull_subscribe(
                    hm.physician_filter("General", "OR 1"), stream=hm.STREAM,
                    durable=hm.physician_consumer("General", "OR 1"))
                out["or2"] = "made"
            except Exception as exc:
                out["or2"] = repr(exc)
            await asyncio.sleep(0.5)
            for nc in (dr_a, or1, or2):
                await nc.close()
            return out

        out = asyncio.run(forge())
        stored = physician_messages(server.url, service)
    finally:
        if page is not None:
            page.close()
        server.stop()
    assert stored == [("ionm.General.OR_1.case-1.physician.dr_a", "note-0001-abcdef")], stored  # the one allowed
    for subject in ("ionm.general.or_2.case-2.physician.dr_a", "ionm.general.or_1.case-1.physician.dr_b",
                    "ionm.general.or_1.case-1.physician.dr_a"):
        assert 'permissions violation for publish to "%s"' % subject in errors, errors
    assert out["or2"] != "made" and any("$js.api.consumer.info.ionm.physicians-general-or_1" in e
                                        for e in errors), (out, errors)


def physician_messages(url: str, auth: dict) -> list[tuple[str, str]]:
    """(subject, request id) of every physician's message in the hub's stream."""
    from test_hub import stream_messages

    return [(subject, msg["body"]["id"]) for subject, _id, msg in stream_messages(url, **auth)
            if subject.split(".")[4] == hm.PHYSICIAN]


def test_through_the_rooms_leaf_node_a_physicians_ack_reaches_the_room_and_its_receipt_the_page(tmp_path):
    """The room publishing through its own JetStream (a leaf node of the hub): its inbox reads the hub's stream
    across the leaf (the hub's JetStream domain), with the room's leaf login's permissions."""
    leaf_port = free_port()
    server, service = hub_nats(tmp_path / "hub", leaf_port=leaf_port)
    page = Page(server.url, service)
    try:
        with room_case(tmp_path, server.url, leaf_url="nats-leaf://or1:pw-1@127.0.0.1:%d" % leaf_port) as room:
            engine, store, case = room["engine"], room["store"], room["case"]
            page.login()
            view = page.wait(lambda: (v := page.get("/case/%s.json" % case)) and v["alerts"] and v, 20)
            alert = view["alerts"][0]
            status, sent = page.post("/send", {"id": "ack-leaf-0001", "case": case, "cmd": "ack",
                                               "alert": alert["ack_uid"], "note": "seen from the hub"})
            assert status == 200, sent
            page.wait(lambda: [r["status"] for r in page.get("/case/%s.json" % case)["requests"]] == ["applied"], 15)
            acks = [(a["alert_uid"], a["user"]) for a in store.rows("acks", engine.case_id)]
            timeline = [(e["kind"], e["user"]) for e in engine.timeline if e["kind"] == "ack"]
    finally:
        page.close()
        server.stop()
    assert (alert["ack_uid"], "dr_a@hub") in acks
    assert timeline == [("ack", "dr_a@hub")]


def test_an_opened_tile_shows_the_rooms_waveforms_over_their_baselines_trend_and_timeline(tmp_path):
    """The case view the hub's page draws when a tile is opened (/case/<case>.json, refetched on each push of
    /events), from what the room publishes: per stream the newest average and its baseline with the channels'
    names, the trend points, the timeline with the alerts, the stimulation state; raw sweeps never leave the room."""
    from ionm.console.display import untrace

    server, service = hub_nats(tmp_path / "hub")
    page = Page(server.url, service)
    try:
        with room_case(tmp_path, server.url) as room:
            engine, case = room["engine"], room["case"]
            assert room["publisher"].flush(20)
            expect = engine.call(lambda: {k: (len(st.names), st.baseline is not None, len(engine.trend[k]))
                                          for k, st in engine.streams.items()})
            page.login()
            view = page.wait(lambda: (v := page.get("/case/%s.json" % case)) and len(v["streams"]) == len(expect)
                             and all(w["latest"] and w["baseline"] for w in v["streams"]) and v)
            with page.http.open(page.base + "/events", timeout=10) as r:
                pushed = json.loads(next(line for line in r if line.startswith(b"data: "))[6:])
            with urllib.request.urlopen("http://127.0.0.1:%d/" % page.port, timeout=10) as r:
                html = r.read().decode()
            timeline = [(e["kind"], e["text"]) for e in engine.timeline]
    finally:
        page.close()
        server.stop()
    assert [c["case"] for c in pushed["cases"]] == [case]  # the tile the view opens from, pushed
    assert sorted(w["key"] for w in view["streams"]) == sorted(expect)
    for w in view["streams"]:
        n, _has_baseline, points = expect[w["key"]]
        assert len(w["names"]) == n and w["x0_ms"] < 0 and w["criteria"]["amp_alert"] > 0
        latest, base = untrace_all(w["latest"]["waves"], untrace), untrace_all(w["baseline"]["waves"], untrace)
        shown = [i for i, x in enumerate(latest) if x is not None]
        assert shown and [i for i, x in enumerate(base) if x is not None] == shown  # the overlay, channel by channel
        assert w["latest"]["dt_ms"] > 0 and w["baseline"]["t_s"] <= w["latest"]["t_s"]
        # every point the room made (a short case: below the 200 recent points the console's page also gets)
        assert len(view["trend"][w["key"]]) == points > 0
    assert [(e["kind"], e["text"]) for e in view["timeline"]] == timeline  # every event, in the room's order
    assert any(k == "alert" for k, _t in timeline) and view["alerts"] and view["unacknowledged"] > 0
    assert view["stimulation"] and "program" in view["stimulation"]
    assert view["physician"] == "dr_a"  # logged in to view: the login box hidden, the buttons enabled
    for element in ('id="case"', 'id="streams"', 'id="pending"', 'id="note"', 'id="gate"', "function waves(",
                    "function trend("):
        assert element in html


def untrace_all(waves: list, untrace) -> list:
    return [untrace(w) if w is not None else None for w in waves]
