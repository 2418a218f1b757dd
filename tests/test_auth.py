"""Accounts, sessions and the console's doors: nothing without a session, roles enforced, logins limited."""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from yarl import URL

from ionm.board.stimulation import RecordedStimulation
from ionm.case.store import CaseStore
from ionm.console.auth import Accounts, AddressBackoff, AuthError, RateLimiter, Sessions
from ionm.console.engine import CaseEngine
from ionm.console.server import COOKIE, ConsoleServer

USERS = {"tech": ("technologist", "tech-password-1"), "doc": ("physician", "doc-password-1"),
         "viewer": ("read-only", "viewer-password-1")}


@pytest.fixture
def store(tmp_path: Path):
    s = CaseStore(tmp_path / "cases.db")
    acc = Accounts(s)
    for name, (role, pw) in USERS.items():
        acc.add(name, role, pw)
    yield s
    s.close()


def test_accounts(store: CaseStore) -> None:
    acc = Accounts(store)
    assert acc.authenticate("tech", "tech-password-1") == "technologist"
    assert acc.authenticate("tech", "wrong-password") is None
    assert acc.authenticate("nobody", "tech-password-1") is None
    row = store.query("SELECT pw_hash FROM users WHERE name = 'tech'")[0][0]
    assert row.startswith("$argon2id$") and "tech-password-1" not in row
    with pytest.raises(AuthError, match="short"):
        acc.add("x", "physician", "short")
    with pytest.raises(AuthError, match="role"):
        acc.add("x", "admin", "long-enough-1")
    acc.disable("doc")
    assert acc.authenticate("doc", "doc-password-1") is None
    actions = [r["action"] for r in store.query("SELECT action FROM audit WHERE case_id IS NULL")]
    assert actions.count("user.add") == 3 and "user.disable" in actions


def test_session_cookies(store: CaseStore) -> None:
    sessions = Sessions(store)
    token = sessions.create("tech")
    ident = sessions.check(token)
    assert ident is not None and (ident.user, ident.role) == ("tech", "technologist")
    payload, sig = token.rsplit(".", 1)
    forged = payload.replace(payload[5], "A" if payload[5] != "A" else "B") + "." + sig
    assert sessions.check(forged) is None
    assert sessions.check(payload + "." + sig[:-2] + "xx") is None
    Accounts(store).set_role("tech", "read-only")  # the role is read live, not frozen in the cookie
    assert sessions.check(token).role == "read-only"  # type: ignore[union-attr]
    sessions.revoke(ident.sid)
    assert sessions.check(token) is None
    short = Sessions(store, hours=-1.0)
    assert short.check(short.create("doc")) is None  # expired


def test_rate_limiter() -> None:
    rl = RateLimiter(limit=3, window_s=0.3)
    for _ in range(3):
        assert rl.retry_after("k") == 0
        rl.fail("k")
    assert rl.retry_after("k") > 0 and rl.retry_after("other") == 0
    time.sleep(0.35)
    assert rl.retry_after("k") == 0


def test_address_backoff_slows_an_address_down_and_forgets() -> None:
    now = [100.0]
    b = AddressBackoff(free=3, base_s=1.0, cap_s=10.0, window_s=300.0, clock=lambda: now[0])
    waits = []
    for _ in range(9):
        waits.append(b.reserve("10.0.0.1"))
        now[0] += waits[-1]  # it waited as told, then failed
        b.fail("10.0.0.1")
    assert waits == [0, 0, 0, 1, 2, 4, 8, 10, 10]  # free, then doubling, capped: never a refusal
    assert b.reserve("10.0.0.2") == 0  # another address is not slowed
    first, second = b.reserve("10.0.0.1"), b.reserve("10.0.0.1")  # two at once: one after the other
    assert (first, second) == (10, 20)
    now[0] += 301 + 30
    assert b.reserve("10.0.0.1") == 0  # failures older than the window are forgotten


@pytest.fixture
def server(store: CaseStore):
    cid = store.open_case()
    engine = CaseEngine(store, cid, stimulation=RecordedStimulation())
    engine.start()
    srv = ConsoleServer(engine, store, login_limit=3)
    url = srv.start_in_thread()
    yield srv, url, cid
    srv.stop_thread()
    engine.stop()


async def _login(s: aiohttp.ClientSession, url: str, user: str, pw: str) -> int:
    async with s.post(url + "login", data={"user": user, "password": pw}, allow_redirects=False,
                      headers={"Origin": url.rstrip("/")}) as r:
        return r.status


def _client(**kw: Any) -> aiohttp.ClientSession:
    return aiohttp.ClientSession(cookie_jar=aiohttp.CookieJar(unsafe=True), **kw)  # cookies for 127.0.0.1 too


def _run(coro: Any) -> Any:
    return asyncio.run(coro)


def test_nothing_without_a_session(server) -> None:
    srv, url, _ = server

    async def go() -> None:
        async with _client() as s:
            async with s.get(url, allow_redirects=False) as r:
                assert r.status == 303 and r.headers["Location"] == "/login"
            for path in ("static/console.js", "static/index.html", "api/stats", "ws"):
                async with s.get(url + path, allow_redirects=False) as r:
                    assert r.status == 401, path
            with pytest.raises(aiohttp.WSServerHandshakeError):
                await s.ws_connect(url + "ws")
            s.cookie_jar.update_cookies({COOKIE: "eyJzaWQiOiAiYSJ9.forged"})
            async with s.get(url + "api/stats") as r:
                assert r.status == 401
            async with s.get(url + "login") as r:
                assert r.status == 200 and "Sign in" in await r.text()

    _run(go())


def test_wrong_password_refused_and_logins_limited(server) -> None:
    srv, url, _ = server

    async def go() -> None:
        async with _client() as s:
            assert await _login(s, url, "tech", "wrong-password") == 401
            async with s.get(url + "api/stats") as r:
                assert r.status == 401
            assert await _login(s, url, "tech", "wrong-again-1") == 401
            assert await _login(s, url, "tech", "wrong-again-2") == 401
            assert await _login(s, url, "tech", "tech-password-1") == 429  # even the right one, for a while
            assert await _login(s, url, "doc", "doc-password-1") == 303  # another name is not locked
            async with s.post(url + "login", data={"user": "doc", "password": "doc-password-1"},
                              headers={"Origin": "http://evil.example"}, allow_redirects=False) as r:
                assert r.status == 403

    _run(go())
    srv.store.flush()
    actions = [r["action"] for r in srv.store.query("SELECT action FROM audit WHERE case_id IS NULL")]
    assert actions.count("login.failed") == 3 and "login.limited" in actions and "login" in actions


async def _ws_session(url: str, user: str) -> tuple[aiohttp.ClientSession, Any, dict[str, Any]]:
    s = _client()
    assert await _login(s, url, user, USERS[user][1]) == 303
    ws = await s.ws_connect(url + "ws", origin=url.rstrip("/"))
    first = json.loads((await ws.receive(timeout=10)).data)
    return s, ws, first


async def _cmd(ws: Any, msg: dict[str, Any], req: int) -> dict[str, Any]:
    await ws.send_str(json.dumps(dict(msg, req=req)))
    while True:
        m = json.loads((await ws.receive(timeout=10)).data)
        if m.get("type") == "reply" and m["req"] == req:
            return m


def test_roles_enforced_over_the_socket(server) -> None:
    srv, url, cid = server

    async def go() -> None:
        s, ws, first = await _ws_session(url, "viewer")
        assert first["type"] == "snapshot" and first["role"] == "read-only" and first["permissions"] == []
        for k, msg in enumerate(({"cmd": "ack", "alert": "x", "note": "n"}, {"cmd": "note", "text": "hello"},
                                 {"cmd": "stim", "command": {"action": "tcmep_train"}, "confirmed": True},
                                 {"cmd": "baseline"})):
            r = await _cmd(ws, msg, k)
            assert not r["ok"] and "may not" in r["error"], msg
        await s.close()
        s, ws, first = await _ws_session(url, "doc")
        assert set(first["permissions"]) == {"ack", "note"}
        assert (await _cmd(ws, {"cmd": "note", "text": "oversight: agree"}, 1))["ok"]
        r = await _cmd(ws, {"cmd": "stim", "command": {"action": "stop_all"}}, 2)
        assert not r["ok"]
        await s.close()
        s, ws, first = await _ws_session(url, "tech")
        assert (await _cmd(ws, {"cmd": "stim", "command": {"action": "stop_all"}}, 1))["ok"]
        await s.close()
        s = _client()  # a logged-in socket from another site is refused
        assert await _login(s, url, "tech", USERS["tech"][1]) == 303
        with pytest.raises(aiohttp.WSServerHandshakeError):
            await s.ws_connect(url + "ws", origin="http://evil.example")
        await s.close()

    _run(go())
    srv.store.flush()
    audit = [(a["user"], a["action"]) for a in srv.store.rows("audit", cid)]
    assert audit.count(("viewer", "denied")) == 4
    assert ("doc", "note") in audit and ("doc", "denied") in audit and ("tech", "stim") in audit
    notes = srv.store.rows("notes", cid)
    assert [(n["user"], n["text"]) for n in notes] == [("doc", "oversight: agree")]


def test_logout_ends_the_session(server) -> None:
    srv, url, _ = server

    async def go() -> None:
        async with _client() as s:
            assert await _login(s, url, "doc", USERS["doc"][1]) == 303
            async with s.get(url + "api/stats") as r:
                assert r.status == 200
            cookie = s.cookie_jar.filter_cookies(URL(url))[COOKIE].value
            async with s.post(url + "logout", allow_redirects=False, headers={"Origin": url.rstrip("/")}) as r:
                assert r.status == 303
        async with _client(cookies={COOKIE: cookie}) as s2:  # the old cookie is dead
            async with s2.get(url + "api/stats") as r:
                assert r.status == 401

    _run(go())


def test_typos_lock_the_account_not_the_colleagues_behind_the_same_address(store: CaseStore) -> None:
    cid = store.open_case()
    engine = CaseEngine(store, cid, stimulation=RecordedStimulation())
    engine.start()
    srv = ConsoleServer(engine, store, login_limit=3, address_backoff=AddressBackoff(free=2, base_s=0.05, cap_s=0.2))
    url = srv.start_in_thread()

    async def go() -> None:
        async with _client() as s:
            for k in range(3):  # one person's typos
                assert await _login(s, url, "tech", "wrong-password-%d" % k) == 401
            assert await _login(s, url, "tech", "tech-password-1") == 429  # that account is locked ...
            for k in range(12):  # and a spray of names from the same address
                assert await _login(s, url, "nobody-%d" % k, "guess-%d" % k) == 401
        async with _client() as s:  # ... but a colleague behind the same address gets in, only slowed down
            assert await _login(s, url, "doc", "doc-password-1") == 303
            async with s.get(url + "api/stats") as r:
                assert r.status == 200
        async with _client() as s:
            assert await _login(s, url, "tech", "tech-password-1") == 429  # still locked, for its window

    try:
        _run(go())
    finally:
        srv.stop_thread()
        engine.stop()
    store.flush()
    actions = [r["action"] for r in store.query("SELECT action FROM audit WHERE case_id IS NULL")]
    assert actions.count("login.failed") == 15 and actions.count("login.limited") == 2 and "login" in actions


@pytest.fixture
def tls_server(store: CaseStore, tmp_path: Path):
    import shutil
    import subprocess

    from ionm.console.server import tls_context

    if shutil.which("openssl") is None:
        pytest.skip("openssl is needed to make a test certificate")
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", str(key), "-out", str(cert),
                    "-days", "2", "-subj", "/CN=localhost"], check=True, capture_output=True, timeout=60)
    cid = store.open_case()
    engine = CaseEngine(store, cid, stimulation=RecordedStimulation())
    engine.start()
    srv = ConsoleServer(engine, store, tls=tls_context(str(cert), str(key)))
    url = srv.start_in_thread()
    yield srv, url
    srv.stop_thread()
    engine.stop()


def test_plain_http_to_the_tls_port_is_redirected_to_https(tls_server) -> None:
    import http.client
    import ssl
    import urllib.parse

    srv, url = tls_server
    assert url.startswith("https://localhost:")
    port = urllib.parse.urlsplit(url).port
    for path in ("/login", "/", "/static/console.js?x=1"):
        plain = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
        plain.request("GET", path, headers={"Host": "or3.example:%d" % port})
        resp = plain.getresponse()
        assert resp.status == 301
        assert resp.getheader("Location") == "https://or3.example:%d%s" % (port, path)
        assert b"HTTPS only" in resp.read()
        plain.close()
    ctx = ssl.create_default_context()
    ctx.check_hostname, ctx.verify_mode = False, ssl.CERT_NONE  # the test's self-signed certificate
    secure = http.client.HTTPSConnection("127.0.0.1", port, timeout=10, context=ctx)
    secure.request("GET", "/login")
    resp = secure.getresponse()
    assert resp.status == 200 and b"password" in resp.read().lower()  # TLS itself still served on the same port
    secure.close()

    async def login() -> None:
        async with _client(connector=aiohttp.TCPConnector(ssl=ctx)) as s:
            base = "https://127.0.0.1:%d/" % port
            async with s.post(base + "login", data={"user": "doc", "password": "doc-password-1"},
                              allow_redirects=False, headers={"Origin": base.rstrip("/")}) as r:
                assert r.status == 303 and "Secure" in r.headers["Set-Cookie"]
            ws = await s.ws_connect(base + "ws", origin=base.rstrip("/"))
            assert json.loads((await ws.receive(timeout=10)).data)["type"] == "snapshot"  # wss works
            await ws.close()

    _run(login())
