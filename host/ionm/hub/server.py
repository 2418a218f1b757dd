"""`ionm hub`: the oversight page, read from the JetStream stream that the rooms publish to.

HubState folds the stream's messages into what the page shows per case: the header, the alerts (the console's alert
frame: every alert counted per channel, the newest listed), the newest timeline events, technical alarms,
stimulation and link health, and when the room was last heard. A background task reads the whole stream from its
start (an ordered consumer: the page is complete after a hub restart) and keeps following it. The page is pushed
the state as it changes (/events, Server-Sent Events: at most one view per PUSH_MIN_S, so a busy hub sends each
viewer a few views a second, except that an alert, a timeline event or a technical alarm ends that pause at once:
it reaches the page as soon as the hub has it, not at the next poll or view); /state.json is the same view on
request (and the page's fallback, polled every second, when the push is unavailable). It draws a tile per case,
cases with unacknowledged alerts first; it is read-only (nothing goes back to the rooms yet).
"""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path
from typing import Any

from aiohttp import web

from ionm.hub import messages as hm

EVENTS_KEPT = 20
PUSH_MIN_S = 0.1  # a viewer gets at most one view per 100 ms: a storm of messages costs the hub 10 views/s each
URGENT_KINDS = ("alerts", "event", "technical")  # pushed at once, not after the viewer's PUSH_MIN_S pause
KEEPALIVE_S = 15.0  # a comment line when nothing changed, so proxies keep the push open
FOLLOW_HEARTBEAT_S = 1.0  # the stream reader's heartbeat: a dead node is noticed (and the reader moved) within ~2 s
STATIC = Path(__file__).with_name("static")


class HubState:
    def __init__(self) -> None:
        self.cases: dict[str, dict[str, Any]] = {}
        self.messages = 0
        self.bad = 0
        self.version = 0  # counts the changes: a viewer pushed version v has seen everything up to it
        self.urgent = 0  # counts the changes a physician must see at once: alerts, acknowledgements, alarms
        self._waiters: set[asyncio.Future[None]] = set()
        self._urgent_waiters: set[asyncio.Future[None]] = set()

    async def changed(self, seen: int, timeout: float) -> None:
        """Return once the state is newer than version `seen` (at once if it is), or after timeout s. Called on
        the event loop that add() runs on (ionm hub runs the stream reader and the web server on one loop)."""
        if self.version == seen:
            await self._wait(self._waiters, timeout)

    async def urgent_change(self, seen: int, timeout: float) -> None:
        """Like changed(), for the urgent count: a viewer's pause between views ends early for an alert."""
        if self.urgent == seen:
            await self._wait(self._urgent_waiters, timeout)

    @staticmethod
    async def _wait(waiters: set[asyncio.Future[None]], timeout: float) -> None:
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        waiters.add(fut)
        try:
            await asyncio.wait_for(fut, timeout)
        except TimeoutError:
            pass
        finally:
            waiters.discard(fut)

    def _notify(self, urgent: bool) -> None:
        self.version += 1
        wake = list(self._waiters)
        if urgent:
            self.urgent += 1
            wake += self._urgent_waiters
        for fut in wake:
            if not fut.done():
                fut.set_result(None)

    def add(self, subject: str, data: bytes) -> None:
        try:
            msg = hm.decode(data)
        except ValueError:
            self.bad += 1
            return
        self.messages += 1
        parts = subject.split(".")
        site, room = (parts[1], parts[2]) if len(parts) == 5 else ("?", "?")
        c = self.cases.setdefault(msg["case"], {"case": msg["case"], "site": site, "room": room, "header": {},
                                                "alerts": {}, "events": [], "technical": None, "stimulation": None,
                                                "link": None, "screws": None, "last_seq": 0, "heard": None})
        c["last_seq"] = max(c["last_seq"], int(msg["seq"]))
        c["heard"] = float(msg["sent"])
        kind, body = msg["kind"], msg["body"]
        if kind == "header":
            c["header"] = body
        elif kind == "alerts":
            c["alerts"] = dict(body)
        elif kind == "event":
            c["events"].append(body)
            del c["events"][:-EVENTS_KEPT]
        elif kind in ("technical", "stimulation", "link", "screws"):
            c[kind] = body
        self._notify(kind in URGENT_KINDS)

    def view(self) -> dict[str, Any]:
        now = time.time()
        tiles = []
        for c in self.cases.values():
            unacked, newest = alert_summary(c["alerts"])
            tiles.append({
                "case": c["case"], "site": c["site"], "room": c["room"],
                "procedure": c["header"].get("procedure", ""), "unacknowledged": unacked,
                "newest_alert": newest,
                "events": c["events"][-5:], "stimulation": c["stimulation"], "technical": c["technical"],
                "screws": screw_summary(c["screws"]),
                "heard_s_ago": None if c["heard"] is None else round(now - c["heard"], 1)})
        tiles.sort(key=lambda t: (-t["unacknowledged"], t["site"], t["room"], t["case"]))
        return {"cases": tiles, "messages": self.messages, "bad_messages": self.bad}


def screw_summary(frame: dict[str, Any] | None) -> dict[str, Any] | None:
    """What a tile says of a room's pedicle-screw tests: how many, how many read red (likely breach or suspect,
    among those the room still lists), the newest result and whether a test is under way; None if none."""
    if not frame or not (frame.get("count") or frame.get("running")):
        return None
    results = list(frame.get("results") or [])
    newest = results[-1] if results else None
    return {"count": int(frame.get("count") or 0), "red": sum(1 for r in results if r.get("colour") == "red"),
            "running": frame.get("running") is not None,
            "newest": None if newest is None else {k: newest.get(k) for k in ("level", "side", "lowest", "colour",
                                                                               "label", "hi_ma")}}


def alert_summary(frame: dict[str, Any]) -> tuple[int, dict[str, Any] | None]:
    """(unacknowledged alerts, the newest unacknowledged one, else the newest) of a console's alert frame. The
    frame counts every alert per channel group and lists only a few (ionm.console.alerts); a frame of an older
    console ({"alerts": [every alert]}) is counted from its list."""
    groups = frame.get("groups")
    if groups is None:
        alerts = list(frame.get("alerts", []))
        pending = [a for a in alerts if not a.get("ack")]
        return len(pending), (pending or alerts or [None])[-1]
    if not groups:
        return 0, None
    pending_groups = [g for g in groups if g.get("unacked")]
    g = max(pending_groups or groups, key=lambda g: g["last_t_s"])
    return int(frame.get("unacked", 0)), dict(g["latest"], channel_name=g.get("channel_name"))


async def follow(url: str | list[str], state: HubState, stop: asyncio.Event, **auth: Any) -> None:
    """Read the stream from its first message and keep following it into state (reconnecting as needed); auth:
    the hub's service login (user=, password=) when its server has an access file (ionm.hub.access)."""
    import nats

    from ionm.hub.publisher import ensure_stream

    nc = await nats.connect(url, allow_reconnect=True, max_reconnect_attempts=-1, reconnect_time_wait=0.5, **auth)
    js = nc.jetstream()
    await ensure_stream(js)

    async def on_msg(msg: Any) -> None:
        state.add(msg.subject, msg.data)

    # a heartbeat every second: the client notices within 2 s that its consumer is gone (its node died, in a hub
    # cluster) and makes it again from the next message; with nats-py's 5 s it retried every 10 s (measured 19 s)
    sub = await js.subscribe(hm.SUBJECTS, stream=hm.STREAM, ordered_consumer=True, cb=on_msg,
                             idle_heartbeat=FOLLOW_HEARTBEAT_S)
    try:
        await stop.wait()
    finally:
        await sub.unsubscribe()
        await nc.close()


def make_app(state: HubState) -> web.Application:
    app = web.Application()

    async def index(_request: web.Request) -> web.StreamResponse:
        return web.FileResponse(STATIC / "hub.html")

    async def view(_request: web.Request) -> web.Response:
        return web.json_response(state.view(), dumps=lambda o: json.dumps(o, allow_nan=False, default=str))

    async def events(request: web.Request) -> web.StreamResponse:
        """The view pushed as it changes (text/event-stream: one `data:` line of JSON per view)."""
        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream", "Cache-Control": "no-store"})
        await resp.prepare(request)
        seen = -1
        try:
            while True:
                await state.changed(seen, KEEPALIVE_S)
                if state.version == seen:
                    await resp.write(b": keepalive\n\n")
                    continue
                seen, urgent = state.version, state.urgent
                text = json.dumps(state.view(), allow_nan=False, default=str)
                await resp.write(b"data: " + text.encode() + b"\n\n")
                await state.urgent_change(urgent, PUSH_MIN_S)  # the pause, cut short by an alert
        except (ConnectionResetError, asyncio.CancelledError):
            pass
        return resp

    app.router.add_get("/", index)
    app.router.add_get("/state.json", view)
    app.router.add_get("/events", events)
    return app
