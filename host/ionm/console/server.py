"""The web console: aiohttp pages and one WebSocket per viewer, every one behind a login.

Fan-out (Hub): the engine thread hands each batch of frames to the event loop (call_soon_threadsafe: never
blocks). Every client has a slot per frame key holding only the newest frame, plus a list of incremental items
(trend points, stack traces, timeline events); its own sender task sends whatever is there when the socket is
ready. A slow viewer therefore only skips intermediate frames of its own and never delays acquisition or another
viewer; one that falls so far behind that its incremental list overflows gets a fresh snapshot instead (it is
never disconnected for being slow: its socket's buffers are kept small, so a heartbeat is not queued behind
seconds of data).

Bandwidth (issue 18: 180-445 kB/s per viewer, single messages up to 166 kB). Each viewer has a byte budget of
DISPLAY_BYTES_PER_S (a token bucket, DISPLAY_BURST deep) that every byte sent to it spends; display frames
(DISPLAY_FRAMES: a stream's waveforms and numbers, its baseline) wait in their slots while the budget is spent
and go out, coalesced to the newest, when it allows. Everything else (alerts and their acknowledgements,
technical alarms, link health, stimulation, the case, timeline events, trend points, stack traces, replies) is
sent at once whatever the budget. An update message holds at most MAX_MESSAGE_BYTES; a single frame larger than
that is sent alone and whole, never cut or delayed (the alert frame, grouped per channel, stays within it at the
default montage however many alerts: ionm.console.alerts).

Latency: each stream frame carries the arrival time of the oldest sweep it includes (arr0); the sender records
send time - arr0 for every stream frame it sends (GET /api/stats), and passes arr0 on so the page can measure
arrival-to-render.

Sound (free-running EMG, ionm.console.freerun): a viewer that turns its sound on ({"cmd": "audio", "channels": [...]},
a setting of this viewer only, handled here, not by the engine) is sent every block of those channels as a binary
message, before any waiting text; sound is never held by the display budget (its rate is fixed: 16 kB/s per
channel at 8 kHz). A viewer whose socket cannot take it loses the oldest blocks beyond AUDIO_QUEUE_BLOCKS (late
sound is worse than none), counted in /api/stats.

Security: no page, asset or socket without a valid session (middleware); an account locked after repeated
failed logins, an address only slowed down (auth.AddressBackoff);
cookies HttpOnly, SameSite=Strict, Secure under TLS; WebSocket and POST origins must match the host;
commands are checked against the role by the engine, and every change lands in the audit trail.
"""

from __future__ import annotations

import asyncio
import fcntl
import html
import json
import re
import socket
import ssl
import struct
import termios
import threading
import time
from collections import deque
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import numpy as np
from aiohttp import WSMsgType, web

from ionm.case.store import CaseStore, StoreError
from ionm.console.auth import Accounts, AddressBackoff, Identity, RateLimiter, Sessions
from ionm.console.commands import CommandInvalid, Schema, loads
from ionm.console.engine import PERMISSIONS, CaseEngine, CommandError

STATIC = Path(__file__).resolve().parent / "static"
COOKIE = "ionm_session"
MAX_BACKLOG = 4000  # incremental items queued for one client before it is resynchronised instead
DISPLAY_FRAMES = ("stream:", "base:")  # frames that may wait for the viewer's byte budget (coalesced, never lost)
DISPLAY_BYTES_PER_S = 40_000  # each viewer's byte budget: the update stream stays under 50 kB/s
DISPLAY_BURST = 40_000
MAX_MESSAGE_BYTES = 32_000  # an update message's bound (a single larger frame goes alone: see the docstring)
WS_SNDBUF = 16 * 1024  # a viewer socket's kernel send buffer: what can queue ahead of a heartbeat on a slow link
DISPLAY_BACKLOG = 16 * 1024  # bytes still on their way to a viewer above which its display frames wait
BACKLOG_POLL_S = 0.05
WS_HEARTBEAT_S = 30.0  # ping every 30 s; no pong within 15 s closes the socket (a dead viewer, not a slow one)
DURABLE = {"ack", "note", "stim", "baseline", "close", "peak", "screw_test", "screw_stop", "tof", "tof_every", "probe",
           "probe_stop", "emg_warning", "mark"}
IDENTITY = web.RequestKey("identity", Identity)
AUDIO_QUEUE_BLOCKS = 25  # sound blocks (20 ms each) waiting for one viewer: 0.5 s; older ones are dropped


class Client:
    def __init__(self, ident: Identity):
        self.ident = ident
        self.frames: dict[str, str] = {}
        self.arr0: dict[str, float] = {}
        self.appends: list[str] = []
        self.resync = True  # the first message is a snapshot
        self.wake = asyncio.Event()
        self.wake.set()
        self.tokens = float(DISPLAY_BURST)  # bytes this viewer may be sent now (DISPLAY_BYTES_PER_S refills it)
        self.refilled = time.monotonic()
        self.timer: asyncio.TimerHandle | None = None  # a wake-up once the budget allows the held display frames
        self.audio_channels: list[int] = []  # free-run EMG channels this viewer hears (empty: sound off)
        self.audio: deque[tuple[bytes, float]] = deque()  # (message, wall clock its last sample was acquired)
        self.audio_dropped = 0

    def refill(self, now: float) -> None:
        self.tokens = min(float(DISPLAY_BURST), self.tokens + (now - self.refilled) * DISPLAY_BYTES_PER_S)
        self.refilled = now


class Hub:
    def __init__(self, loop: asyncio.AbstractEventLoop):
        self.loop = loop
        self.clients: set[Client] = set()
        self.latency_ms: deque[float] = deque(maxlen=5000)
        self.audio_sent = 0
        self.audio_dropped = 0
        self.audio_lag_ms: deque[float] = deque(maxlen=5000)  # last sample acquired -> handed to the socket

    def _hand_over(self, fn: Any, *args: Any) -> None:
        """From another thread onto the event loop. After the loop has closed (the console shutting down while a
        source thread still delivers) there is no viewer to hand anything to: it is dropped, not raised."""
        try:
            self.loop.call_soon_threadsafe(fn, *args)
        except RuntimeError:
            if not self.loop.is_closed():
                raise

    def publish(self, frames: list[tuple[str, str, float | None]], appends: list[str]) -> None:
        """Engine thread: hand over without waiting."""
        self._hand_over(self._distribute, frames, appends)

    def _distribute(self, frames: list[tuple[str, str, float | None]], appends: list[str]) -> None:
        for c in self.clients:
            for key, js, arr0 in frames:
                c.frames[key] = js
                if arr0 is not None:
                    c.arr0[key] = min(arr0, c.arr0.get(key, arr0))  # a coalesced frame answers for its oldest sweep
            if not c.resync:
                c.appends.extend(appends)
                if len(c.appends) > MAX_BACKLOG:
                    c.appends.clear()
                    c.resync = True
            c.wake.set()

    def publish_audio(self, meta: dict[str, Any], pcm: np.ndarray) -> None:
        """The free-run source's thread: hand a block of sound over without waiting."""
        self._hand_over(self._distribute_audio, meta, pcm)

    def _distribute_audio(self, meta: dict[str, Any], pcm: np.ndarray) -> None:
        from ionm.console.freerun import AUDIO_RATE_HZ, audio_message

        acquired = float(meta["wall0"]) + (pcm.shape[1] - 1) / AUDIO_RATE_HZ
        for c in self.clients:
            if not c.audio_channels:
                continue
            if len(c.audio) >= AUDIO_QUEUE_BLOCKS:
                c.audio.popleft()
                c.audio_dropped += 1
                self.audio_dropped += 1
            c.audio.append((audio_message(meta, pcm, c.audio_channels), acquired))
            c.wake.set()

    def update_messages(self, c: Client, now: float | None = None, backlog: int = 0
                        ) -> tuple[list[str], dict[str, float]]:
        """What to send this viewer now, as messages of at most MAX_MESSAGE_BYTES (a larger single frame alone):
        every frame that is not a display frame and every incremental item, always; the display frames, oldest
        first, only as far as its byte budget allows and while less than DISPLAY_BACKLOG bytes sent earlier are
        still on their way (backlog: a slow link); the others stay in their slots, coalescing, and a wake-up is
        set for when they may go. Returns the messages and the arrival times of the frames they carry."""
        now = time.monotonic() if now is None else now
        c.refill(now)
        first = [k for k in c.frames if not k.startswith(DISPLAY_FRAMES)]  # alerts, technical, link, stim, ...
        # display frames, those waiting longest first, as many as the budget and the link allow (at least one)
        allow = min(c.tokens, DISPLAY_BACKLOG - backlog)
        display = []
        for k in sorted((k for k in c.frames if k.startswith(DISPLAY_FRAMES)), key=lambda k: c.arr0.get(k, 0.0)):
            if allow <= 0:
                break
            display.append(k)
            allow -= len(c.frames[k])
        items: list[tuple[str | None, str]] = [(k, c.frames.pop(k)) for k in first]
        items += [(None, a) for a in c.appends] + [(k, c.frames.pop(k)) for k in display]
        c.appends = []
        lat_all: dict[str, float] = {}
        msgs: list[str] = []
        part: list[tuple[str | None, str]] = []

        def flush() -> None:
            frames = ",".join("%s:%s" % (json.dumps(k), v) for k, v in part if k is not None)
            lat = {k: c.arr0.pop(k) for k, _ in part if k is not None and k in c.arr0}
            lat_all.update(lat)
            msgs.append('{"type":"update","frames":{%s},"appends":[%s],"arr0":%s}' % (
                frames, ",".join(v for k, v in part if k is None), json.dumps(lat)))
            part.clear()

        size = 0
        for key, v in items:
            n = len(v) + 2 * len(key or "") + 32  # the frame, its key, its arr0 entry
            if part and size + n > MAX_MESSAGE_BYTES - 64:  # 64: the envelope
                flush()
                size = 0
            part.append((key, v))
            size += n
        if part:
            flush()
        for m in msgs:
            c.tokens -= len(m)
        if any(k.startswith(DISPLAY_FRAMES) for k in c.frames) and c.timer is None:
            def wake() -> None:
                c.timer = None
                c.wake.set()
            delay = max(0.0, -c.tokens) / DISPLAY_BYTES_PER_S + 0.005
            c.timer = self.loop.call_later(max(delay, BACKLOG_POLL_S if backlog > DISPLAY_BACKLOG else 0.0), wake)
        return msgs, lat_all


def _stats(values: Any) -> dict[str, float | int | None]:
    v = np.asarray(list(values), dtype=float)
    if not len(v):
        return {"n": 0, "median": None, "p95": None, "p99": None, "max": None}
    return {"n": int(len(v)), "median": round(float(np.median(v)), 2), "p95": round(float(np.percentile(v, 95)), 2),
            "p99": round(float(np.percentile(v, 99)), 2), "max": round(float(v.max()), 2)}


def _login_page(message: str = "", status: int = 200) -> web.Response:
    text = (STATIC / "login.html").read_text(encoding="utf-8").replace("{{message}}", html.escape(message))
    return web.Response(text=text, content_type="text/html", status=status, headers=_SECURITY_HEADERS)


_SECURITY_HEADERS = {
    "Content-Security-Policy": "default-src 'self'; connect-src 'self' ws: wss:; img-src 'self' data:; "
                               "style-src 'self' 'unsafe-inline'; frame-ancestors 'none'",
    "X-Frame-Options": "DENY",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "same-origin",  # no-referrer would make the browser send Origin: null
    "Cache-Control": "no-store",
}


class ConsoleServer:
    def __init__(self, engine: CaseEngine, store: CaseStore, *, tls: ssl.SSLContext | None = None,
                 login_limit: int = 5, login_window_s: float = 300.0, auth_store: CaseStore | None = None,
                 address_backoff: AddressBackoff | None = None):
        """auth_store: where accounts, sessions and login audit live when not in the case store (a replay runs
        on a scratch case store but logs in against the real accounts)."""
        self.engine = engine
        self.store = auth_store or store
        self.case_store = store
        self.tls = tls
        self.accounts = Accounts(self.store)
        self.sessions = Sessions(self.store)
        self.user_limiter = RateLimiter(login_limit, login_window_s)
        self.addr_backoff = address_backoff or AddressBackoff(window_s=login_window_s)
        self.schema = Schema(engine.stimulation.limits() if engine.stimulation is not None else None)
        self.hub: Hub | None = None
        self.url = ""
        self._runner: web.AppRunner | None = None
        self._thread: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stopped = threading.Event()
        self._listener: socket.socket | None = None
        self._accept_task: asyncio.Task[None] | None = None
        self._sniffers: set[asyncio.Task[None]] = set()

    # ---------------------------------------------------------------- app
    def app(self) -> web.Application:
        app = web.Application(middlewares=[self._auth_middleware], client_max_size=64 * 1024)
        app.router.add_get("/login", self._login_get)
        app.router.add_post("/login", self._login_post)
        app.router.add_post("/logout", self._logout)
        app.router.add_get("/", self._index)
        app.router.add_get("/ws", self._ws)
        app.router.add_get("/api/stats", self._api_stats)
        app.router.add_get("/static/{name}", self._static)
        return app

    @web.middleware
    async def _auth_middleware(self, request: web.Request,
                               handler: Callable[[web.Request], Awaitable[web.StreamResponse]]) -> web.StreamResponse:
        if request.method == "POST" and not self._same_origin(request):
            return web.Response(status=403, text="cross-origin request refused")
        if request.path == "/login":
            return await handler(request)
        ident = self.sessions.check(request.cookies.get(COOKIE))
        if ident is None:
            if request.method == "GET" and request.path == "/":
                raise web.HTTPSeeOther("/login")
            return web.Response(status=401, text="login required")
        request[IDENTITY] = ident
        resp = await handler(request)
        return resp

    def _same_origin(self, request: web.Request) -> bool:
        origin = request.headers.get("Origin")
        if not origin or origin == "null":
            return origin is None
        return urlsplit(origin).netloc == request.host

    async def _login_get(self, request: web.Request) -> web.StreamResponse:
        return _login_page()

    async def _login_post(self, request: web.Request) -> web.StreamResponse:
        form = await request.post()
        name, password = str(form.get("user", "")).strip(), str(form.get("password", ""))
        addr = request.remote or "?"
        # the address is slowed down (a delay, never a refusal: colleagues share a NAT); the account is locked
        delay = self.addr_backoff.reserve(addr)
        if delay > 0:
            await asyncio.sleep(delay)
        wait = self.user_limiter.retry_after("u:" + name)
        if wait > 0:
            self.store.audit(None, name or "?", "login.limited", {"addr": addr})
            resp = _login_page("This account is locked after too many failed attempts: try again in %d s."
                               % int(wait + 1), 429)
            resp.headers["Retry-After"] = str(int(wait + 1))
            return resp
        loop = asyncio.get_running_loop()
        role = await loop.run_in_executor(None, self.accounts.authenticate, name, password)  # argon2: ~50 ms
        if role is None:
            self.user_limiter.fail("u:" + name)
            self.addr_backoff.fail(addr)
            self.store.audit(None, name or "?", "login.failed", {"addr": addr})
            return _login_page("Wrong user name or password.", 401)
        token = await loop.run_in_executor(None, self.sessions.create, name)
        self.store.audit(None, name, "login", {"addr": addr, "role": role})
        resp = web.HTTPSeeOther("/")
        resp.set_cookie(COOKIE, token, httponly=True, samesite="Strict", secure=self.tls is not None, path="/",
                        max_age=int(self.sessions.hours * 3600))
        raise resp

    async def _logout(self, request: web.Request) -> web.StreamResponse:
        ident = request[IDENTITY]
        self.sessions.revoke(ident.sid)
        self.store.audit(None, ident.user, "logout", {})
        resp = web.HTTPSeeOther("/login")
        resp.del_cookie(COOKIE, path="/")
        raise resp

    async def _index(self, request: web.Request) -> web.StreamResponse:
        return web.FileResponse(STATIC / "index.html", headers=_SECURITY_HEADERS)

    async def _static(self, request: web.Request) -> web.StreamResponse:
        name = request.match_info["name"]
        path = STATIC / name
        if "/" in name or name.startswith(".") or not path.is_file():
            raise web.HTTPNotFound()
        return web.FileResponse(path, headers=_SECURITY_HEADERS)

    async def _api_stats(self, request: web.Request) -> web.StreamResponse:
        assert self.hub is not None
        return web.json_response({
            "ws_latency_ms": _stats(self.hub.latency_ms),
            "engine_latency_ms": _stats(self.engine.stats["engine_latency_ms"]),
            "sweeps": self.engine.stats["sweeps"], "clients": len(self.hub.clients),
            "emg": {k: self.engine.stats[k] for k in ("emg_blocks", "emg_behind_max_s", "emg_columns_skipped")}
            | {"audio_sent": self.hub.audio_sent, "audio_dropped": self.hub.audio_dropped,
               "audio_lag_ms": _stats(self.hub.audio_lag_ms)},
            "t_s": round(self.engine.t_s, 3), "errors": list(self.engine.errors)[-5:],
        })

    # ---------------------------------------------------------------- the socket
    async def _ws(self, request: web.Request) -> web.StreamResponse:
        assert self.hub is not None
        if not self._same_origin(request):
            return web.Response(status=403, text="cross-origin socket refused")
        ident = request[IDENTITY]
        ws = web.WebSocketResponse(heartbeat=WS_HEARTBEAT_S, max_msg_size=64 * 1024)
        await ws.prepare(request)
        _small_send_buffer(request)
        client = Client(ident)
        self.hub.clients.add(client)
        self.case_store.audit(self.engine.case_id, ident.user, "view.open", {"role": ident.role,
                                                                             "addr": request.remote})
        sender = asyncio.create_task(self._sender(ws, client, request.transport))
        try:
            async for msg in ws:
                if msg.type != WSMsgType.TEXT:
                    continue
                if self.sessions.check(request.cookies.get(COOKIE)) is None:  # logged out or disabled meanwhile
                    break
                await self._on_message(ws, client, msg.data)
        except ConnectionResetError:  # the viewer went away while being answered: its view ends, nothing else
            pass
        finally:
            self.hub.clients.discard(client)
            sender.cancel()
            try:
                self.case_store.audit(self.engine.case_id, ident.user, "view.close", {})
            except StoreError:
                pass  # shutting down: the store closed first
        return ws

    async def _sender(self, ws: web.WebSocketResponse, c: Client, transport: asyncio.BaseTransport | None) -> None:
        assert self.hub is not None
        loop = asyncio.get_running_loop()
        try:
            while not ws.closed:
                await c.wake.wait()
                c.wake.clear()
                if c.resync:
                    c.resync = False
                    c.frames, c.arr0, c.appends = {}, {}, []  # the snapshot supersedes what was queued
                    snap = await loop.run_in_executor(None, self.engine.call, self.engine.snapshot)
                    msg = json.dumps({"type": "snapshot", "user": c.ident.user, "role": c.ident.role,
                                      "permissions": sorted(PERMISSIONS.get(c.ident.role, ())),
                                      "server_wall": time.time(), **snap}, separators=(",", ":"), allow_nan=False)
                    await ws.send_str(msg)
                    continue
                while c.audio:  # sound first: it is the only thing that is late when it waits
                    data, acquired = c.audio.popleft()
                    self.hub.audio_lag_ms.append((time.time() - acquired) * 1000.0)
                    await ws.send_bytes(data)
                    self.hub.audio_sent += 1
                if not c.frames and not c.appends:
                    continue
                msgs, lat = self.hub.update_messages(c, backlog=_backlog(transport))
                now = time.time()
                for arr0 in lat.values():
                    self.hub.latency_ms.append((now - arr0) * 1000.0)
                for msg in msgs:
                    await ws.send_str(msg)  # waits only while this viewer's own socket is full
        except (ConnectionResetError, asyncio.CancelledError):
            pass

    async def _on_message(self, ws: web.WebSocketResponse, c: Client, data: str) -> None:
        # Checked against the schema (ionm.console.commands) before the engine sees it: a refusal names the field,
        # the socket stays open, and nothing is executed, stored or audited.
        req = None
        try:
            raw = loads(data)
            req = self.schema.request_id(raw)
            msg = self.schema.check(raw)
        except CommandInvalid as exc:
            await ws.send_str(json.dumps({"type": "reply", "req": req, "ok": False, "error": str(exc),
                                          "field": exc.field}))
            return
        if msg["cmd"] == "ping":
            await ws.send_str(json.dumps({"type": "reply", "req": req, "ok": True, "result": {"wall": time.time()}}))
            return
        if msg["cmd"] == "audio":  # this viewer's sound: which free-run channels it hears (not case state)
            c.audio_channels = sorted(set(msg.get("channels", [])))
            if not c.audio_channels:
                c.audio.clear()
            await ws.send_str(json.dumps({"type": "reply", "req": req, "ok": True,
                                          "result": {"channels": c.audio_channels}}))
            return
        loop = asyncio.get_running_loop()
        try:
            result = await asyncio.wrap_future(self.engine.submit(c.ident.user, c.ident.role, msg))
            if msg["cmd"] in DURABLE:
                await loop.run_in_executor(None, self.case_store.flush)  # on disk before the user is told it is done
            reply = {"type": "reply", "req": req, "ok": True, "result": result}
        except CommandError as exc:
            reply = {"type": "reply", "req": req, "ok": False, "error": str(exc)}
        except Exception as exc:  # a defect behind the schema: say so to this viewer, keep its socket
            self.engine.errors.append(repr(exc))
            reply = {"type": "reply", "req": req, "ok": False, "error": "command failed: %s" % exc}
        await ws.send_str(json.dumps(reply, default=str))

    # ---------------------------------------------------------------- running
    async def start(self, host: str, port: int) -> str:
        loop = asyncio.get_running_loop()
        self._loop = loop
        self.hub = Hub(loop)
        self.engine.subscribe(self.hub.publish)
        self.engine.subscribe_audio(self.hub.publish_audio)
        self._runner = web.AppRunner(self.app(), access_log=None)
        await self._runner.setup()
        if self.tls is not None:
            bound = self._listen_tls(host, port)
        else:
            site = web.TCPSite(self._runner, host, port)
            await site.start()
            server: Any = site._server
            sockets = server.sockets if server is not None else []
            bound = sockets[0].getsockname()[1] if sockets else port
        shown = "localhost" if host in ("127.0.0.1", "::1") and self.tls else host
        self.url = "%s://%s:%d/" % ("https" if self.tls else "http", shown, bound)
        return self.url

    async def stop(self) -> None:
        if self._accept_task is not None:
            self._accept_task.cancel()
        if self._listener is not None:
            self._listener.close()
        if self._runner is not None:
            await self._runner.cleanup()

    # ---------------------------------------------------------------- TLS, and plain HTTP on the TLS port
    def _listen_tls(self, host: str, port: int) -> int:
        """Listen for https/wss ourselves: a connection that opens with a TLS handshake goes to the web app under
        TLS; one that speaks plain HTTP (someone typed http://) is answered with a redirect to https instead of
        the silence of a failed handshake."""
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        sock = socket.create_server((host, port), family=family)
        sock.setblocking(False)
        self._listener = sock
        self._accept_task = asyncio.get_running_loop().create_task(self._accept(sock))
        return int(sock.getsockname()[1])

    async def _accept(self, sock: socket.socket) -> None:
        loop = asyncio.get_running_loop()
        while True:
            try:
                conn, _ = await loop.sock_accept(sock)
            except OSError:
                return  # closed: the server is stopping
            conn.setblocking(False)
            task = loop.create_task(self._sniff(conn))
            self._sniffers.add(task)
            task.add_done_callback(self._sniffers.discard)

    async def _sniff(self, conn: socket.socket) -> None:
        loop = asyncio.get_running_loop()
        try:
            first = await asyncio.wait_for(_peek(loop, conn), 10.0)
            if first[:1] == b"\x16":  # a TLS handshake record
                assert self._runner is not None and self.tls is not None
                await loop.connect_accepted_socket(self._runner.server, conn, ssl=self.tls,  # type: ignore[arg-type]
                                                   ssl_handshake_timeout=10.0)
                return
            if first:
                await asyncio.wait_for(self._redirect_plain_http(loop, conn), 10.0)
        except (OSError, TimeoutError, ssl.SSLError, asyncio.CancelledError):
            pass
        conn.close()

    async def _redirect_plain_http(self, loop: asyncio.AbstractEventLoop, conn: socket.socket) -> None:
        head = b""
        while b"\r\n\r\n" not in head and len(head) < 16384:
            chunk = await loop.sock_recv(conn, 4096)
            if not chunk:
                break
            head += chunk
        lines = head.decode("latin-1").split("\r\n")
        parts = lines[0].split(" ")
        path = parts[1] if len(parts) >= 2 and parts[1].startswith("/") else "/"
        hosthdr = next((ln.split(":", 1)[1].strip() for ln in lines[1:] if ln.lower().startswith("host:")), "")
        if not re.fullmatch(r"[A-Za-z0-9.\-]+(:\d+)?|\[[0-9A-Fa-f:.]+\](:\d+)?", hosthdr):
            hosthdr = urlsplit(self.url).netloc
        path = re.sub(r"[^\x21-\x7e]", "", path)  # no header injection through the path
        location = "https://%s%s" % (hosthdr, path)
        body = ("This console speaks HTTPS only. Open %s\n" % location).encode()
        resp = ("HTTP/1.1 301 Moved Permanently\r\nLocation: %s\r\nContent-Type: text/plain; charset=utf-8\r\n"
                "Content-Length: %d\r\nConnection: close\r\n\r\n" % (location, len(body))).encode() + body
        await loop.sock_sendall(conn, resp)

    def start_in_thread(self, host: str = "127.0.0.1", port: int = 0) -> str:
        """Serve from a thread with its own event loop (tests, embedding); returns the URL."""
        ready = threading.Event()

        def main() -> None:
            async def serve() -> None:
                await self.start(host, port)
                ready.set()
                while not self._stopped.is_set():
                    await asyncio.sleep(0.05)
                await self.stop()

            asyncio.run(serve())

        self._thread = threading.Thread(target=main, name="console-server", daemon=True)
        self._thread.start()
        if not ready.wait(15):
            raise RuntimeError("console server did not start")
        return self.url

    def stop_thread(self) -> None:
        self._stopped.set()
        if self._thread is not None:
            self._thread.join(timeout=10)


def _backlog(transport: asyncio.BaseTransport | None) -> int:
    """Bytes sent to a viewer and not yet through: in the transport's buffer and (Linux) in the socket's send
    queue, unsent or unacknowledged. On a link slower than the budget this grows, and display frames wait."""
    if transport is None:
        return 0
    n = 0
    try:
        n += int(transport.get_write_buffer_size())  # type: ignore[attr-defined]
    except (AttributeError, NotImplementedError):
        pass
    sock = transport.get_extra_info("socket")
    if sock is not None and hasattr(termios, "TIOCOUTQ"):
        try:
            n += struct.unpack("i", fcntl.ioctl(sock.fileno(), termios.TIOCOUTQ, b"\0\0\0\0"))[0]
        except OSError:
            pass
    return n


def _small_send_buffer(request: web.Request) -> None:
    """Keep what can queue for a viewer small (kernel and transport), so that on a slow link frames wait in the
    hub's slots, where they coalesce, and a heartbeat is never stuck behind seconds of data."""
    transport = request.transport
    if transport is None:
        return
    sock = transport.get_extra_info("socket")
    if sock is not None:
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, WS_SNDBUF)
        except OSError:
            pass
    try:
        transport.set_write_buffer_limits(high=WS_SNDBUF)
    except (AttributeError, NotImplementedError, ValueError):
        pass


async def _peek(loop: asyncio.AbstractEventLoop, conn: socket.socket) -> bytes:
    """The first byte a client sent, left in the socket (b"": it closed without sending)."""
    ready: asyncio.Future[None] = loop.create_future()

    def readable() -> None:
        if not ready.done():
            ready.set_result(None)

    loop.add_reader(conn.fileno(), readable)
    try:
        await ready
    finally:
        loop.remove_reader(conn.fileno())
    return conn.recv(1, socket.MSG_PEEK)


def tls_context(cert: str, key: str) -> ssl.SSLContext:
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.load_cert_chain(cert, key)
    return ctx
