"""Viewing the hub's page needs a physician's login (issue 21 item 3: "the page shows every live case the physician
is assigned"): with an access file nothing of a case leaves the hub without a session, a physician sees only the
assigned rooms (the rooms nats-server lets that physician read), sessions end at logout and after their idle time,
the page is served over HTTPS with a Secure cookie, and a hub without logins listens on loopback only. Real
nats-server (the wheel's), the hub's page served for real, no mocks."""

from __future__ import annotations

import asyncio
import json
import signal
import ssl
import subprocess
import time
import urllib.error
import urllib.request

from conftest import ionm_cmd, run_ionm
from test_hub_physician import Page

from ionm.hub import access, leaf
from ionm.hub.natsserver import NatsServer, free_port
from ionm.hub.publisher import Publisher

USERS = {"users": [
    {"name": "dr_a", "password": "pw-a", "role": "physician", "rooms": ["General/OR 1", "Children's/*"]},
    {"name": "dr_b", "password": "pw-b", "role": "physician", "rooms": ["General/OR 2"]},
    {"name": "or1", "password": "pw-1", "role": "room", "room": "General/OR 1"},
    {"name": "or2", "password": "pw-2", "role": "room", "room": "General/OR 2"},
    {"name": "picu", "password": "pw-3", "role": "room", "room": "Children's/PICU 3"},
]}
ROOMS = [("General", "OR 1", "or1", "pw-1", "case-1"), ("General", "OR 2", "or2", "pw-2", "case-2"),
         ("Children's", "PICU 3", "picu", "pw-3", "case-3")]
DATA_PATHS = ["/state.json", "/events", "/case/case-1.json", "/case/case-2.json", "/case/nope.json"]


def hub(tmp_path) -> tuple[NatsServer, dict]:
    acc = access.Access.parse(USERS)
    service = {"user": access.SERVICE_USER, "password": "service-pw"}
    server = NatsServer(tmp_path / "hub", port=None, name="ionm-hub", conf=leaf.hub_conf(
        "127.0.0.1", free_port(), acc.server_conf(service["password"]))).start()
    return server, service


def publish_rooms(url: str) -> None:
    """A case in each room, with an alert, published with the room's own login."""
    for site, room, user, pw, case in ROOMS:
        pub = Publisher(url, site, room, case, user=user, password=pw)
        pub.publish("header", {"uid": case, "procedure": "fusion in %s" % room})
        pub.publish("alerts", {"alerts": [{"uid": case + "-A1", "label": "%s: TcMEP loss" % room, "ack": None}]})
        pub.publish("event", {"t_s": 1.0, "kind": "alert", "user": "system", "text": "alert in %s" % room})
        assert pub.flush(20), pub.last_error
        pub.close()


def status_of(page: Page, path: str, method: str = "GET", body: dict | None = None) -> tuple[int, bytes]:
    req = urllib.request.Request(page.base + path, method=method, data=None if body is None else json.dumps(
        body).encode(), headers={"Content-Type": "application/json"})
    try:
        with page.http.open(req, timeout=10) as r:
            return r.status, r.read(200) if path == "/events" else r.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


def first_push(page: Page) -> dict:
    with page.http.open(page.base + "/events", timeout=10) as r:
        return json.loads(next(line for line in r if line.startswith(b"data: "))[6:])


def test_without_a_login_no_endpoint_gives_any_case_data(tmp_path):
    server, service = hub(tmp_path)
    page = Page(server.url, service, users=USERS)
    try:
        publish_rooms(server.url)
        page.wait(lambda: len(page.state.cases) == 3)
        refused = {path: status_of(page, path) for path in DATA_PATHS}
        refused["/send"] = status_of(page, "/send", "POST", {"id": "note-0001-abcdef", "case": "case-1",
                                                              "cmd": "note", "text": "seen"})
        page.http.addheaders = [("Cookie", "ionm_hub=forged-token")]  # a made-up session is no session
        forged = {path: status_of(page, path)[0] for path in DATA_PATHS}
        page.http.addheaders = []
        index = status_of(page, "/")
        session = page.get("/session.json")
    finally:
        page.close()
        server.stop()
    for path, (status, body) in refused.items():
        assert status == 401, (path, status, body)
        assert json.loads(body) == {"error": "log in first"}, (path, body)  # nothing of any case
    assert forged == {path: 401 for path in DATA_PATHS}
    assert index[0] == 200 and b'id="gate"' in index[1]  # the page itself: its login form, no data
    assert not any(c.encode() in index[1] for *_r, c in ROOMS)
    assert session == {"physician": None, "login": True}


def test_a_physician_sees_only_the_assigned_rooms_as_nats_server_lets_them_read(tmp_path):
    """dr_a (General/OR 1 and every room of Children's) and dr_b (General/OR 2) on one hub: each one's tiles, push
    and case views hold exactly the rooms that physician's own NATS login may subscribe to; an unassigned case by
    its URL is 404 with nothing of it, as a case that does not exist."""
    server, service = hub(tmp_path)
    pages = {}
    try:
        for name in ("dr_a", "dr_b"):
            pages[name] = Page(server.url, service, users=USERS)
        publish_rooms(server.url)
        seen = {}
        for name, page in pages.items():
            page.wait(lambda p=page: len(p.state.cases) == 3)
            page.login(name, "pw-" + name[-1])
            state = page.get("/state.json")
            seen[name] = {"tiles": sorted(c["case"] for c in state["cases"]), "messages": state["messages"],
                          "pushed": sorted(c["case"] for c in first_push(page)["cases"]),
                          "cases": {case: status_of(page, "/case/%s.json" % case) for *_r, case in ROOMS}}
        nats_reads = {name: asyncio.run(rooms_nats_lets_read(server.url, name, "pw-" + name[-1]))
                      for name in ("dr_a", "dr_b")}
    finally:
        for page in pages.values():
            page.close()
        server.stop()
    assert seen["dr_a"]["tiles"] == seen["dr_a"]["pushed"] == ["case-1", "case-3"]
    assert seen["dr_b"]["tiles"] == seen["dr_b"]["pushed"] == ["case-2"]
    assert seen["dr_a"]["messages"] == 6 and seen["dr_b"]["messages"] == 3  # counted over their rooms only
    for name, mine in (("dr_a", {"case-1", "case-3"}), ("dr_b", {"case-2"})):
        for case, (status, body) in seen[name]["cases"].items():
            if case in mine:
                assert status == 200 and json.loads(body)["case"] == case
                assert json.loads(body)["physician"] == name
            else:  # by direct URL: nothing, and not even whether it exists
                assert (status, json.loads(body)) == (404, {"error": "no such case"}), (name, case)
                assert b"fusion" not in body and b"TcMEP" not in body
    # the same rooms nats-server delivers to the physician's own login (a live subscription per room)
    assert nats_reads == {"dr_a": ["case-1", "case-3"], "dr_b": ["case-2"]}


async def rooms_nats_lets_read(url: str, name: str, password: str) -> list[str]:
    """The cases whose rooms' messages nats-server delivers to `name`: a live subscription on every room, then a
    message published in each (a subscription the physician may not make gets a permissions violation and
    nothing)."""
    import nats

    got: set[str] = set()
    errors: list[str] = []

    async def on_error(exc: Exception) -> None:
        errors.append(str(exc))

    nc = await nats.connect(url, user=name, password=password, inbox_prefix=access.inbox(name), error_cb=on_error,
                            allow_reconnect=False)
    async def on_msg(msg) -> None:
        got.add(msg.subject.split(".")[3])

    for site, room, *_rest in ROOMS:
        await nc.subscribe(access.room_subject(site, room), cb=on_msg)
    await nc.flush()
    for site, room, user, pw, case in ROOMS:
        pub = Publisher(url, site, room, case, user=user, password=pw)
        pub.publish("link", {"ok": True})
        assert pub.flush(20), pub.last_error
        pub.close()
    await asyncio.sleep(0.5)
    await nc.close()
    assert len(errors) == len(ROOMS) - len(got), errors  # one violation per room refused
    return sorted(got)


def test_a_session_ends_at_logout_and_after_its_idle_time_and_so_does_its_push(tmp_path):
    server, service = hub(tmp_path)
    page = Page(server.url, service, users=USERS, idle_s=3.0)
    try:
        publish_rooms(server.url)
        page.login()
        assert status_of(page, "/state.json")[0] == 200
        for _ in range(4):  # the physician doing something (1 s apart: 4 s in all) keeps the session
            time.sleep(1.0)
            assert status_of(page, "/case/case-1.json")[0] == 200
        page.http.addheaders = [("X-Ionm-Background", "1")]  # the page's own refreshes do not
        time.sleep(1.5)
        assert status_of(page, "/state.json")[0] == 200
        time.sleep(2.0)
        idle = {path: status_of(page, path)[0] for path in DATA_PATHS}
        page.http.addheaders = []
        closed_after_idle = not page.sender.sessions  # ended on the hub, its NATS login closed

        page.login()
        with page.http.open(page.base + "/events", timeout=10) as push:
            assert next(line for line in push if line.startswith(b"data: "))
            assert page.post("/logout", {}) == (200, {"physician": None})
            t0 = time.monotonic()
            rest = push.read()  # the push ends with the session
            ended_s = time.monotonic() - t0
        after_logout = {path: status_of(page, path)[0] for path in DATA_PATHS}
        session = page.get("/session.json")
    finally:
        page.close()
        server.stop()
    assert idle == {path: 401 for path in DATA_PATHS}, idle
    assert closed_after_idle
    assert ended_s < 3.0 and b"data:" not in rest
    assert after_logout == {path: 401 for path in DATA_PATHS}, after_logout
    assert session == {"physician": None, "login": True}


def test_ionm_hub_serves_the_page_over_https_with_a_secure_cookie(tmp_path):
    """As it is run: `ionm hub --access FILE --cert PEM --key PEM`: the page over HTTPS (a plain HTTP request is
    not served), the login's cookie Secure, HttpOnly and SameSite=Strict, the physician's rooms only."""
    from ionm.hub import tls

    certs = tls.make_ca(tmp_path / "certs")
    access_file = tmp_path / "access.json"
    access_file.write_text(json.dumps(USERS))
    web_port, nats_port, leaf_port = free_port(), free_port(), free_port()
    proc = subprocess.Popen(ionm_cmd("hub", "--listen", "127.0.0.1:%d" % web_port, "--nats", "127.0.0.1:%d" % nats_port,
                                     "--leaf", "127.0.0.1:%d" % leaf_port, "--store", str(tmp_path / "hub"),
                                     "--access", str(access_file), "--cert", certs.cert, "--key", certs.key),
                            stdout=subprocess.PIPE, text=True)
    try:
        lines = [proc.stdout.readline() for _ in range(3)]
        assert "oversight page at https://127.0.0.1:%d/" % web_port in lines[2], lines
        publish_rooms("nats://127.0.0.1:%d" % nats_port)
        ctx = ssl.create_default_context(cafile=certs.ca)
        https = urllib.request.build_opener(urllib.request.HTTPSHandler(context=ctx))
        base = "https://127.0.0.1:%d" % web_port
        with https.open(urllib.request.Request(base + "/login", method="POST", data=json.dumps(
                {"name": "dr_b", "password": "pw-b"}).encode(), headers={"Content-Type": "application/json"}),
                timeout=10) as r:
            cookie = r.headers["Set-Cookie"]
        token = cookie.split(";")[0]
        end, cases = time.monotonic() + 20, []
        while not cases and time.monotonic() < end:
            with https.open(urllib.request.Request(base + "/state.json", headers={"Cookie": token}), timeout=10) as r:
                cases = [c["case"] for c in json.loads(r.read())["cases"]]
            time.sleep(0.2)
        try:
            urllib.request.urlopen(base.replace("https", "http") + "/session.json", timeout=5)
            plain = "served"
        except Exception as exc:  # the TLS listener does not speak plain HTTP
            plain = repr(exc)
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=20) == 0
    attrs = {a.strip().split("=")[0].lower() for a in cookie.split(";")[1:]}
    assert {"secure", "httponly", "samesite"} <= attrs, cookie
    assert "SameSite=Strict" in cookie and token.startswith("ionm_hub=")
    assert cases == ["case-2"]
    assert plain != "served"


def test_without_access_the_hub_refuses_a_non_loopback_address(tmp_path):
    for flags in (["--listen", "0.0.0.0:%d" % free_port()], ["--nats", "0.0.0.0:%d" % free_port()],
                  ["--leaf", "192.0.2.1:%d" % free_port()]):
        done = run_ionm("hub", *flags, "--store", str(tmp_path / "hub"), timeout=20)
        assert done.returncode == 2, (flags, done.stdout, done.stderr)
        assert "without --access" in done.stderr and "loopback only" in done.stderr and flags[0] in done.stderr
        assert not (tmp_path / "hub").exists()  # refused before anything started
    done = run_ionm("hub", "--cert", "x.pem", timeout=20)
    assert done.returncode == 2 and "--cert and --key go together" in done.stderr
    done = run_ionm("hub", "--session-idle", "0", timeout=20)
    assert done.returncode == 2 and "--session-idle" in done.stderr


def test_a_room_publishing_another_rooms_case_id_gets_none_of_that_case(tmp_path):
    """A case is where its messages are published: OR 2 (its own subjects, its own login) sending a message with
    OR 1's case id, first or later, neither joins OR 1's case nor lets OR 2's physician see any of it."""
    server, service = hub(tmp_path)
    page = Page(server.url, service, users=USERS)
    try:
        forged = Publisher(server.url, "General", "OR 2", "case-1", user="or2", password="pw-2")
        forged.publish("header", {"uid": "case-1", "procedure": "forged by OR 2"})  # before OR 1's case starts
        assert forged.flush(20), forged.last_error
        publish_rooms(server.url)
        forged.publish("event", {"t_s": 2.0, "kind": "note", "user": "x", "text": "forged note"})  # and during it
        assert forged.flush(20), forged.last_error
        forged.close()
        page.wait(lambda: len(page.state.cases) == 4)
        page.login("dr_b", "pw-b")
        b_tiles = sorted((c["room"], c["case"], c["procedure"]) for c in page.get("/state.json")["cases"])
        b_case = page.get("/case/case-1.json")
        page.login("dr_a", "pw-a")
        a_case = page.get("/case/case-1.json")
    finally:
        page.close()
        server.stop()
    assert b_tiles == [("OR_2", "case-1", "forged by OR 2"), ("OR_2", "case-2", "fusion in OR 2")]
    assert b_case["room"] == "OR_2" and b_case["procedure"] == "forged by OR 2"
    assert [e["text"] for e in b_case["timeline"]] == ["forged note"]
    assert a_case["room"] == "OR_1" and a_case["procedure"] == "fusion in OR 1"
    assert [e["text"] for e in a_case["timeline"]] == ["alert in OR 1"]


def test_may_read_follows_the_physicians_nats_subscribe_permissions():
    acc = access.Access.parse(USERS)
    assert acc.may_read("dr_a", "General", "OR_1") and not acc.may_read("dr_a", "General", "OR_10")
    assert acc.may_read("dr_a", "Children_s", "PICU_3") and acc.may_read("dr_a", "Children_s", "any")
    assert not acc.may_read("dr_a", "General", "OR_2") and not acc.may_read("dr_a", "Children", "PICU_3")
    assert acc.may_read("dr_b", "General", "OR_2") and not acc.may_read("dr_b", "General", "OR_1")
    assert not acc.may_read("or1", "General", "OR_1")  # a room reads no case, as nats-server has it
    assert not acc.may_read("nobody", "General", "OR_1") and not acc.may_read(None, "General", "OR_1")
    assert access.subject_matches("ionm.a.>", "ionm.a.b.c") and not access.subject_matches("ionm.a.>", "ionm.a")
    assert access.subject_matches("ionm.*.b", "ionm.x.b") and not access.subject_matches("ionm.*.b", "ionm.x.b.c")
