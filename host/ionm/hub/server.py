"""`ionm hub`: the oversight page, read from the JetStream stream that the rooms publish to.

HubState folds the stream's messages into what the page shows per case: the header, the alert list (with
acknowledgements), the newest timeline events, technical alarms, stimulation and link health, and when the
room was last heard. A background task reads the whole stream from its start (an ordered consumer: the page is
complete after a hub restart) and keeps following it. The page polls /state.json every second and draws a
tile per case, cases with unacknowledged alerts first; it is read-only (nothing goes back to the rooms yet).
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
STATIC = Path(__file__).with_name("static")


class HubState:
    def __init__(self) -> None:
        self.cases: dict[str, dict[str, Any]] = {}
        self.messages = 0
        self.bad = 0

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
                                                "alerts": [], "events": [], "technical": None, "stimulation": None,
                                                "link": None, "last_seq": 0, "heard": None})
        c["last_seq"] = max(c["last_seq"], int(msg["seq"]))
        c["heard"] = float(msg["sent"])
        kind, body = msg["kind"], msg["body"]
        if kind == "header":
            c["header"] = body
        elif kind == "alerts":
            c["alerts"] = list(body.get("alerts", []))
        elif kind == "event":
            c["events"].append(body)
            del c["events"][:-EVENTS_KEPT]
        elif kind in ("technical", "stimulation", "link"):
            c[kind] = body

    def view(self) -> dict[str, Any]:
        now = time.time()
        tiles = []
        for c in self.cases.values():
            unacked = [a for a in c["alerts"] if not a.get("ack")]
            tiles.append({
                "case": c["case"], "site": c["site"], "room": c["room"],
                "procedure": c["header"].get("procedure", ""), "unacknowledged": len(unacked),
                "newest_alert": (unacked or c["alerts"] or [None])[-1],
                "events": c["events"][-5:], "stimulation": c["stimulation"], "technical": c["technical"],
                "heard_s_ago": None if c["heard"] is None else round(now - c["heard"], 1)})
        tiles.sort(key=lambda t: (-t["unacknowledged"], t["site"], t["room"], t["case"]))
        return {"cases": tiles, "messages": self.messages, "bad_messages": self.bad}


async def follow(url: str, state: HubState, stop: asyncio.Event) -> None:
    """Read the stream from its first message and keep following it into state (reconnecting as needed)."""
    import nats

    from ionm.hub.publisher import ensure_stream

    nc = await nats.connect(url, allow_reconnect=True, max_reconnect_attempts=-1, reconnect_time_wait=0.5)
    js = nc.jetstream()
    await ensure_stream(js)

    async def on_msg(msg: Any) -> None:
        state.add(msg.subject, msg.data)

    sub = await js.subscribe(hm.SUBJECTS, stream=hm.STREAM, ordered_consumer=True, cb=on_msg)
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

    app.router.add_get("/", index)
    app.router.add_get("/state.json", view)
    return app
