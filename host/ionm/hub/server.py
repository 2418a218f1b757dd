"""`ionm hub`: the oversight page, read from the JetStream stream that the rooms publish to.

HubState folds the stream's messages into what the page shows per case: the header, the alerts (the console's alert
frame: every alert counted per channel, the newest listed), the newest timeline events, technical alarms,
stimulation and link health, and when the room was last heard. A background task reads the whole stream from its
start (an ordered consumer: the page is complete after a hub restart) and keeps following it. The page is pushed
the state as it changes (/events, Server-Sent Events: at most one view per PUSH_MIN_S, so a busy hub sends each
viewer a few views a second, except that an alert, a timeline event or a technical alarm ends that pause at once:
it reaches the page as soon as the hub has it, not at the next poll or view); /state.json is the same view on
request (and the page's fallback, polled every second, when the push is unavailable). It draws a tile per case,
cases with unacknowledged alerts first.

Opening a tile shows the case view (/case/<case>.json, case_view): per stream the newest average with its baseline
overlaid, the trend points (amplitude and latency against baseline), the timeline, the stimulation state (shown,
never changed from here) and the physician's requests with the room's receipts. What the physician sends back (an
acknowledgement with its note, or a note: POST /send) goes through Sender, published under the physician's login
into the stream, from which the room's console applies it (ionm.hub.inbox); /login opens a physician's session:
with an access file the hub logs in to nats-server as that physician (the server checks the password, and its
permissions decide what may be sent); without one the page's name is taken as given (keep it on loopback).

With an access file the page shows nothing without a session: every path but the page itself, /session.json and
the login and logout answers 401, and a physician's tiles, push and case views hold only the rooms the access file
assigns to that physician (Access.may_read, matched against the subscribe permissions nats-server is given for the
physician). A session ends at logout or after --session-idle hours with nothing done by the physician.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from aiohttp import web

from ionm.console.display import append_trend, display_trend
from ionm.hub import messages as hm

EVENTS_KEPT = 20
TIMELINE_KEPT = 500  # timeline events a case view lists (the room's store has every one)
REQUESTS_KEPT = 200  # physicians' requests a case view lists with their receipts
EEG_RAW_KEPT_S = 10.0  # the raw EEG a case view draws (the console's page keeps 16 s; a new viewer gets 10)
EEG_EPOCHS_KEPT = 300  # the EEG's 2-s epochs a case view draws: the last 10 min of DSA and trend, as the console's view
PUSH_MIN_S = 0.1  # a viewer gets at most one view per 100 ms: a storm of messages costs the hub 10 views/s each
URGENT_KINDS = ("alerts", "event", "technical")  # pushed at once, not after the viewer's PUSH_MIN_S pause
KEEPALIVE_S = 15.0  # a comment line when nothing changed, so proxies keep the push open
FOLLOW_HEARTBEAT_S = 1.0  # the stream reader's heartbeat: a dead node is noticed (and the reader moved) within ~2 s
STATIC = Path(__file__).with_name("static")
SESSION_IDLE_H = 12.0  # a page session ends after this long without the physician doing anything (a shift)
SESSION_CHECK_S = 1.0  # an open push checks its session this often: a logout or an expiry ends it within ~1 s

# (site token, room token) -> whether the viewer may see that room's cases; None: every room (a hub without logins)
Readable = Callable[[str, str], bool] | None


class HubState:
    def __init__(self) -> None:
        self.cases: dict[tuple[str, str, str], dict[str, Any]] = {}  # by (site, room, case id)
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
        where = hm.parse_subject(subject) or {}
        site, room = where.get("site", "?"), where.get("room", "?")
        # a case is where its messages are published (the room's own subjects, which its login bounds): another
        # room sending the same case id makes a case of its own, never joins this one (nor is shown with it)
        c = self.cases.setdefault((site, room, msg["case"]), {
            "case": msg["case"], "site": site, "room": room, "header": {}, "alerts": {}, "events": [],
            "technical": None, "stimulation": None, "link": None, "screws": None, "tof": None, "probe": None,
            "eeg": None, "eegepochs": [], "eegraw": [], "baep": None, "emg": None, "last_seq": 0, "heard": None,
            "messages": 0,
            "version": 0, "timeline": [], "trend": {}, "waves": {}, "requests": {}})
        c["messages"] += 1
        kind, body = msg["kind"], msg["body"]
        if kind == hm.PHYSICIAN:  # sent to the room, not heard from it
            if isinstance(body, dict) and body.get("id") is not None:
                c["requests"].setdefault(str(body["id"]), {
                    "id": str(body["id"]), "physician": where.get("physician"), "cmd": body.get("cmd"),
                    "alert": body.get("alert"), "text": body.get("note") or body.get("text"), "sent": msg["sent"],
                    "status": "sent", "error": None})
                while len(c["requests"]) > REQUESTS_KEPT:
                    del c["requests"][next(iter(c["requests"]))]
            self._notify(True)
            c["version"] = self.version
            return
        c["last_seq"] = max(c["last_seq"], int(msg["seq"]))
        c["heard"] = float(msg["sent"])
        if kind == "receipt":
            r = c["requests"].get(str(body.get("id")))
            if r is not None and body.get("status") != "duplicate":
                r.update(status=body.get("status"), error=body.get("error"))
        elif kind == "trend":  # bounded as the console bounds its own: recent points, older ones merged
            point = {k: body.get(k) for k in ("t", "amp", "lat")}
            append_trend(c["trend"].setdefault(str(body.get("s")), []), point)
        elif kind == "average":
            key = str(body.get("key") if body.get("baseline") else body.get("s"))
            w = c["waves"].setdefault(key, {"key": key, "latest": None, "baseline": None, "names": None,
                                            "x0_ms": None, "criteria": None, "modality": None})
            w["baseline" if body.get("baseline") else "latest"] = {k: body.get(k) for k in ("t_s", "dt_ms", "waves")}
            for k in ("names", "x0_ms", "criteria", "modality"):
                if body.get(k) is not None:
                    w[k] = body[k]
        elif kind == "eegepoch":
            body = dict(body)
            raw = body.pop("raw", None)  # kept apart: the last EEG_RAW_KEPT_S of it, not 10 min in the epochs
            if isinstance(raw, dict) and raw.get("v"):
                keep_raw(c["eegraw"], raw)
            c["eegepochs"].append(body)
            del c["eegepochs"][:-EEG_EPOCHS_KEPT]
        if kind == "event":
            c["timeline"].append(body)
            del c["timeline"][:-TIMELINE_KEPT]
        if kind == "header":
            c["header"] = body
        elif kind == "alerts":
            c["alerts"] = dict(body)
        elif kind == "event":
            c["events"].append(body)
            del c["events"][:-EVENTS_KEPT]
        elif kind in ("technical", "stimulation", "link", "screws", "tof", "probe", "eeg", "baep", "emg"):
            c[kind] = body
        self._notify(kind in URGENT_KINDS)
        c["version"] = self.version  # the state's version when this case last changed: a viewer's own version

    def _visible(self, readable: Readable) -> list[dict[str, Any]]:
        return [c for c in self.cases.values() if readable is None or readable(c["site"], c["room"])]

    def visible_version(self, readable: Readable = None) -> int:
        """The version of what a viewer who may read `readable` sees: it changes only when one of those cases does
        (another room's message neither pushes such a viewer a view nor tells it that anything happened)."""
        if readable is None:
            return self.version
        return max((c["version"] for c in self._visible(readable)), default=0)

    def view(self, readable: Readable = None) -> dict[str, Any]:
        """The tiles; given readable (a physician's rooms, ionm.hub.access.Access.may_read), only those rooms'."""
        now = time.time()
        tiles = []
        shown = self._visible(readable)
        for c in shown:
            unacked, newest = alert_summary(c["alerts"])
            tiles.append({
                "case": c["case"], "site": c["site"], "room": c["room"],
                "procedure": c["header"].get("procedure", ""), "unacknowledged": unacked,
                "newest_alert": newest,
                "events": c["events"][-5:], "stimulation": c["stimulation"], "technical": c["technical"],
                "screws": screw_summary(c["screws"]), "tof": tof_summary(c["tof"]), "probe": probe_summary(c["probe"]),
                "eeg": eeg_summary(c["eeg"], c["eegepochs"]), "baep": baep_summary(c["baep"]),
                "emg": emg_summary(c["emg"]),
                "heard_s_ago": None if c["heard"] is None else round(now - c["heard"], 1)})
        tiles.sort(key=lambda t: (-t["unacknowledged"], t["site"], t["room"], t["case"]))
        if readable is None:
            return {"cases": tiles, "messages": self.messages, "bad_messages": self.bad, "version": self.version}
        return {"cases": tiles, "messages": sum(c["messages"] for c in shown), "bad_messages": self.bad,
                "version": self.visible_version(readable)}

    def find(self, case: str, readable: Readable = None) -> dict[str, Any] | None:
        """The case of id `case` among those `readable` shows (of two rooms' cases with one id, the first by site,
        room); None if none."""
        found = [c for c in self._visible(readable) if c["case"] == case]
        return min(found, key=lambda c: (c["site"], c["room"])) if found else None

    def case_view(self, case: str, readable: Readable = None) -> dict[str, Any] | None:
        """What an opened tile shows: the case's waveforms (per stream the newest average and its baseline), trend
        points, timeline, alerts, stimulation (read-only), and the physicians' requests with the room's receipts.
        None if there is no such case, or readable (a physician's rooms) does not include its room."""
        c = self.find(case, readable)
        if c is None:
            return None
        unacked, newest = alert_summary(c["alerts"])
        return {"case": c["case"], "site": c["site"], "room": c["room"], "header": c["header"],
                "procedure": c["header"].get("procedure", ""), "unacknowledged": unacked, "newest_alert": newest,
                "alerts": pending_alerts(c["alerts"]), "streams": sorted(c["waves"].values(), key=lambda w: w["key"]),
                "trend": {k: display_trend(v) for k, v in c["trend"].items()},  # as the console's page gets them
                "timeline": c["timeline"], "stimulation": c["stimulation"],
                "technical": c["technical"], "link": c["link"], "requests": list(c["requests"].values()),
                "eeg": None if c["eeg"] is None else {"frame": c["eeg"], "epochs": c["eegepochs"],
                                                      "raw": joined_raw(c["eegraw"])}, "baep": c["baep"],
                "emg": c["emg"],
                "heard_s_ago": None if c["heard"] is None else round(time.time() - c["heard"], 1),
                "version": self.version}


def pending_alerts(frame: dict[str, Any]) -> list[dict[str, Any]]:
    """The alerts a physician may acknowledge from the hub: per channel group with unacknowledged alerts its newest
    (acknowledged with group: every earlier one of the channel with it), else the listed unacknowledged ones."""
    groups = frame.get("groups")
    if groups is None:
        return [dict(a, ack_uid=a.get("uid"), unacked=1) for a in frame.get("alerts", []) if not a.get("ack")]
    return [dict(g["latest"], channel_name=g.get("channel_name"), unacked=g.get("unacked"), ack_uid=g.get("ack_uid"))
            for g in groups if g.get("unacked")]


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


def tof_summary(frame: dict[str, Any] | None) -> dict[str, Any] | None:
    """What a tile says of a room's train-of-four: how many, the warning while the count is below 2 (MEP and EMG
    unreliable), the newest result; None if none."""
    if not frame or not frame.get("count"):
        return None
    results = list(frame.get("results") or [])
    newest = results[-1] if results else None
    return {"count": int(frame.get("count") or 0), "warning": frame.get("warning"),
            "newest": None if newest is None else {k: newest.get(k) for k in ("count", "ratio", "site", "t_s")}}


def probe_summary(frame: dict[str, Any] | None) -> dict[str, Any] | None:
    """What a tile says of a room's manual probe (nerve mapping): how many sessions, one under way, the newest
    record: "response present at X mA" on which muscles, no response, or failed (the board stopped it: neither,
    since the site was not stimulated throughout); None if none."""
    if not frame or not (frame.get("count") or frame.get("running")):
        return None
    records = list(frame.get("records") or [])
    newest = records[-1] if records else None
    return {"count": int(frame.get("count") or 0), "running": frame.get("running") is not None,
            "newest": None if newest is None else {
                "label": newest.get("label"), "ma": newest.get("ma"), "t_s": newest.get("t_s"),
                "response": bool(newest.get("response")), "error": newest.get("error"),
                "muscles": [str(n).split(" ")[0] for n in (newest.get("present") or {})]}}


def keep_raw(chunks: list[dict[str, Any]], raw: dict[str, Any]) -> None:
    """Add an epoch's raw EEG ({"t0", "dt", "q", "v": [per channel: samples]}) and keep only the last EEG_RAW_KEPT_S
    (a chunk that goes back in time, a resumed room's, starts the list again)."""
    if chunks and float(raw["t0"]) < float(chunks[-1]["t0"]):
        chunks.clear()
    chunks.append(raw)
    end = float(raw["t0"]) + len(raw["v"][0]) * float(raw["dt"])
    while len(chunks) > 1 and float(chunks[1]["t0"]) <= end - EEG_RAW_KEPT_S:
        chunks.pop(0)


def joined_raw(chunks: list[dict[str, Any]]) -> dict[str, Any] | None:
    """The kept raw EEG as one trace per channel from the first chunk's t0 (null where a chunk is missing: a gap is
    drawn as one), trimmed to the last EEG_RAW_KEPT_S; None without any."""
    if not chunks:
        return None
    dt, q, n_ch = float(chunks[0]["dt"]), chunks[0]["q"], len(chunks[0]["v"])
    t0 = float(chunks[0]["t0"])
    v: list[list[Any]] = [[] for _ in range(n_ch)]
    for ch in chunks:
        if len(ch["v"]) != n_ch:
            continue
        at = int(round((float(ch["t0"]) - t0) / dt))
        for c in range(n_ch):
            v[c].extend([None] * max(at - len(v[c]), 0))
            v[c][at:] = list(ch["v"][c])
    n = len(v[0])
    cut = max(n - int(round(EEG_RAW_KEPT_S / dt)), 0)
    return {"t0": round(t0 + cut * dt, 4), "dt": dt, "q": q, "v": [row[cut:] for row in v]}


def eeg_summary(frame: dict[str, Any] | None, epochs: list[dict[str, Any]]) -> dict[str, Any] | None:
    """What a tile says of a room's EEG: each hemisphere's state (normal, ischaemia, anaesthetic, ...), the newest
    epoch's relative alpha per hemisphere, since when (case time) artefact has held the judgement, and the clamp
    state the room marked ({"clamp_s", "shunt_s"} or None); None if the room has no EEG."""
    if not frame:
        return None
    newest = epochs[-1] if epochs else {}
    art = frame.get("artefact") or {}
    return {"state": frame.get("state"), "t": newest.get("t"),
            "ra": {s: (newest.get(s) or [None])[0] for s in ("L", "R")}, "held_since": art.get("held_since"),
            "clamp": frame.get("clamp")}


def baep_summary(frame: dict[str, Any] | None) -> dict[str, Any] | None:
    """What a tile says of a room's BAEP: its ear, state, and wave V now against the baseline; None if none."""
    if not frame:
        return None
    v = ((frame.get("current") or {}).get("waves") or {}).get("V")
    b = ((frame.get("baseline") or {}).get("waves") or {}).get("V")
    return {"stream": frame.get("stream"), "state": frame.get("state"), "t_s": frame.get("t_s"),
            "v_ms": v and v.get("ms"), "v_uv": v and v.get("uv"), "base_v_ms": b and b.get("ms"),
            "base_v_uv": b and b.get("uv")}


def emg_summary(frame: dict[str, Any] | None) -> dict[str, Any] | None:
    """What a tile says of a room's free-run EMG: the channel with the most cumulative A-train time (the facial
    nerve's predictor of palsy past the warning, 10 s by default), the channels warned, and the discharges counted
    per kind over all channels; None if the room runs none."""
    if not frame or not frame.get("channels"):
        return None
    chans = frame["channels"]
    top = max(chans, key=lambda c: c.get("a_train_s") or 0.0)
    counts: dict[str, int] = {}
    for c in chans:
        for k, n in (c.get("counts") or {}).items():
            counts[k] = counts.get(k, 0) + int(n)
    return {"warn_s": frame.get("warn_s"), "a_train_s": top.get("a_train_s") or 0.0, "a_train_channel": top.get("name"),
            "warned": [c.get("name") for c in chans if c.get("warned")], "counts": counts}


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


class SendError(Exception):
    """A physician's request the hub will not send: status is the HTTP status the page gets."""

    def __init__(self, status: int, reason: str) -> None:
        super().__init__(reason)
        self.status = status


PHYSICIAN: web.RequestKey[str | None] = web.RequestKey("physician")  # whose session the request has (None: nobody)
SESSION_COOKIE = "ionm_hub"
SEND_TIMEOUT_S = 3.0
MAX_TEXT = 4000  # as the console's (ionm.console.commands.MAX_TEXT)


class Sender:
    """A physician's acknowledgements and notes from the page, published into the hub's stream for the room.

    login(name, password) opens a session: with an access file, a NATS connection as that physician (nats-server
    checks the password, and the physician's permissions bound what may be published: only under the physician's
    own login, only to assigned rooms; a physician whose entry has an nkey and no password cannot log in here: the
    hub holds no physician's seed, docs/OVERSIGHT.md); without one, the name as given on the hub's own connection.
    send() publishes on ionm.<site>.<room>.<case>.physician.<login> with the message id `physician:<id>`, the id the
    page made, so a request sent again (the page's retry) is stored once."""

    def __init__(self, urls: str | list[str], state: HubState, access: Any = None,
                 idle_s: float = SESSION_IDLE_H * 3600.0, **auth: Any) -> None:
        self.urls, self.state, self.access, self.auth = urls, state, access, auth
        self.idle_s = float(idle_s)
        self.sessions: dict[str, dict[str, Any]] = {}
        self._swept = time.monotonic()
        self._service: Any = None

    async def _connect(self, **auth: Any) -> Any:
        import nats

        return await nats.connect(self.urls, allow_reconnect=True, max_reconnect_attempts=-1, reconnect_time_wait=0.5,
                                  connect_timeout=2, **auth)

    async def login(self, name: str, password: str) -> str:
        import secrets

        from ionm.hub import access as ha

        name = str(name).strip()
        if not name or len(name) > 100:
            raise SendError(400, "a physician's name is needed")
        if self.access is None:  # no logins on this hub: the name as given (keep it on loopback)
            if self._service is None:
                self._service = await self._connect(**self.auth)
            nc, owned = self._service, False
        else:
            user = next((u for u in self.access.users if u.name == name and u.role == "physician"), None)
            if user is None:
                raise SendError(401, "no physician %r in the access file" % name)
            if not user.password:  # the hub holds no physician's seed: an nkey alone is for the physician's own tools
                raise SendError(401, "%s has no page password in the access file (an nkey only: the hub cannot "
                                     "sign in as the physician)" % name)
            import nats

            login = {"user": name, "password": str(password), "inbox_prefix": ha.inbox(name)} | {
                k: v for k, v in self.auth.items() if k == "tls"}
            try:  # once, without retrying (a wrong password is refused at once), then a connection that reconnects
                await (await nats.connect(self.urls, allow_reconnect=False, connect_timeout=2, **login)).close()
            except Exception:
                raise SendError(401, "the hub refused the login of %r" % name) from None
            nc = await self._connect(**login)
            owned = True
        token = secrets.token_urlsafe(24)
        self.sessions[token] = {"name": name, "nc": nc, "owned": owned, "seen": time.monotonic()}
        return token

    @property
    def login_required(self) -> bool:
        """With an access file the page shows nothing without a physician's session (docs/OVERSIGHT.md)."""
        return self.access is not None

    async def session(self, token: str | None, touch: bool = True) -> dict[str, Any] | None:
        """The session of a cookie, or None; a session idle longer than idle_s is ended here (its NATS connection
        closed). touch: this request is the physician's doing, so the idle time starts again."""
        now = time.monotonic()
        if now - self._swept > 60.0:  # sessions nobody comes back to (a closed browser) end too, with their logins
            self._swept = now
            for t, other in list(self.sessions.items()):
                if now - other["seen"] > self.idle_s:
                    await self.logout(t)
        s = self.sessions.get(token or "")
        if s is None:
            return None
        if now - s["seen"] > self.idle_s:
            await self.logout(token)
            return None
        if touch:
            s["seen"] = now
        return s

    def readable(self, name: str | None) -> Readable:
        """Which rooms physician `name` may see on the page: with an access file the rooms nats-server lets the
        physician read (Access.may_read, from the same permissions); without one, every room (None)."""
        if self.access is None:
            return None
        access = self.access
        return lambda site, room: bool(access.may_read(name, site, room))

    async def logout(self, token: str | None) -> None:
        s = self.sessions.pop(token or "", None)
        if s is not None and s["owned"]:
            await s["nc"].close()

    def physician(self, token: str | None) -> str | None:
        s = self.sessions.get(token or "")
        return None if s is None else str(s["name"])

    def assigned(self, name: str, site: str, room: str) -> bool:
        return self.access is None or bool(self.access.may_read(name, site, room))

    async def send(self, token: str | None, req: dict[str, Any]) -> dict[str, Any]:
        s = await self.session(token)
        if s is None:
            raise SendError(401, "log in first")
        body = request_body(req)
        c = self.state.find(str(req.get("case")), self.readable(s["name"])) or self.state.find(str(req.get("case")))
        if c is None:
            raise SendError(404, "no case %r on this hub" % req.get("case"))
        if not self.assigned(s["name"], c["site"], c["room"]):
            raise SendError(403, "%s is not assigned %s/%s" % (s["name"], c["site"], c["room"]))
        subject = hm.physician_subject(c["site"], c["room"], c["case"], s["name"])
        payload = hm.encode(hm.PHYSICIAN, 0, c["case"], body)
        try:
            ack = await s["nc"].jetstream().publish(subject, payload, timeout=SEND_TIMEOUT_S,
                                                    headers={"Nats-Msg-Id": "physician:" + body["id"]})
        except Exception as exc:  # a permissions violation gets no answer; so does a hub that is away
            raise SendError(502, "not sent (%s): try again" % (type(exc).__name__,)) from None
        return {"id": body["id"], "stream_seq": ack.seq, "duplicate": bool(ack.duplicate), "subject": subject}

    async def close(self) -> None:
        for token in list(self.sessions):
            await self.logout(token)
        if self._service is not None:
            await self._service.close()


def request_body(req: dict[str, Any]) -> dict[str, Any]:
    """The body of a physician's message from the page's request ({"id", "cmd": "ack", "alert", "note", "group"}
    or {"id", "cmd": "note", "text"}); SendError(400) for anything else. The room checks it again (ionm.hub.inbox)."""
    import re

    rid, cmd = str(req.get("id") or ""), req.get("cmd")
    if not re.fullmatch(r"[A-Za-z0-9_-]{8,64}", rid):
        raise SendError(400, "id: 8 to 64 of A-Z a-z 0-9 _ -")

    def text(key: str) -> str:
        v = req.get(key)
        if not isinstance(v, str) or not v.strip() or len(v) > MAX_TEXT:
            raise SendError(400, "%s: a text of 1 to %d characters" % (key, MAX_TEXT))
        return v

    if cmd == "ack":
        alert = req.get("alert")
        if not isinstance(alert, str) or not alert or len(alert) > 200:
            raise SendError(400, "alert: the alert's uid")
        return {"id": rid, "cmd": "ack", "alert": alert, "note": text("note"), "group": bool(req.get("group", True))}
    if cmd == "note":
        return {"id": rid, "cmd": "note", "text": text("text")}
    raise SendError(400, "cmd: ack or note")


# the page itself, its colours and its login: no case data
PUBLIC_PATHS = frozenset({"/", "/login", "/logout", "/session.json", "/palette.js"})
PALETTE = Path(__file__).parent.parent / "console" / "static" / "palette.js"  # the DSA's colours, as the console's
BACKGROUND = "X-Ionm-Background"  # the page's own refreshes carry it: they are not the physician's doing (idle time)
NO_STORE = {"Cache-Control": "no-store"}


def make_app(state: HubState, sender: Sender | None = None, secure: bool = False) -> web.Application:
    """The hub's page. With an access file (sender.login_required) every path but the page, its login and logout
    answers 401 without a physician's session, and a session sees only the rooms assigned to its physician (the
    tiles, the push, the case view: an unassigned case is 404, as one that does not exist). secure: the page is
    served over HTTPS, so the session cookie is sent over HTTPS only."""
    from ionm.console.auth import AddressBackoff, RateLimiter

    gated = sender is not None and sender.login_required
    user_limiter, addr_backoff = RateLimiter(), AddressBackoff()  # as the console's login (ionm.console.auth)

    @web.middleware
    async def gate(request: web.Request, handler: Any) -> web.StreamResponse:
        request[PHYSICIAN] = None
        if sender is not None:
            touch = request.path != "/events" and not request.headers.get(BACKGROUND)
            s = await sender.session(request.cookies.get(SESSION_COOKIE), touch=touch)
            request[PHYSICIAN] = None if s is None else str(s["name"])
            if gated and s is None and request.path not in PUBLIC_PATHS:
                return web.json_response({"error": "log in first"}, status=401, headers=NO_STORE)
        return await handler(request)

    app = web.Application(middlewares=[gate])

    def readable(request: web.Request) -> Readable:
        return sender.readable(request[PHYSICIAN]) if sender is not None and gated else None

    def dumps(o: Any) -> str:
        return json.dumps(o, allow_nan=False, default=str)

    async def index(_request: web.Request) -> web.StreamResponse:
        return web.FileResponse(STATIC / "hub.html", headers=NO_STORE)

    async def palette(_request: web.Request) -> web.StreamResponse:
        return web.FileResponse(PALETTE, headers=NO_STORE)

    async def session(request: web.Request) -> web.Response:
        return web.json_response({"physician": request[PHYSICIAN], "login": gated}, headers=NO_STORE)

    async def view(request: web.Request) -> web.Response:
        return web.json_response(state.view(readable(request)), dumps=dumps, headers=NO_STORE)

    async def events(request: web.Request) -> web.StreamResponse:
        """The view pushed as it changes (text/event-stream: one `data:` line of JSON per view); with logins, the
        physician's rooms only, and the push ends when the session does (logout, expiry)."""
        token, shown = request.cookies.get(SESSION_COOKIE), readable(request)
        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream"} | NO_STORE)
        await resp.prepare(request)
        seen = looked = -1  # the viewer's version last sent; the state's version last looked at
        wrote = time.monotonic()
        try:
            while True:
                await state.changed(looked, SESSION_CHECK_S if gated else KEEPALIVE_S)
                if gated and sender is not None and await sender.session(token, touch=False) is None:
                    break  # logged out or expired: the page finds the push gone and asks for the login
                if state.version != looked:
                    looked, urgent = state.version, state.urgent
                    if state.visible_version(shown) != seen:
                        v = state.view(shown)
                        seen = v["version"]
                        await resp.write(b"data: " + dumps(v).encode() + b"\n\n")
                        wrote = time.monotonic()
                        await state.urgent_change(urgent, PUSH_MIN_S)  # the pause, cut short by an alert
                        continue
                if time.monotonic() - wrote >= KEEPALIVE_S - 0.5:
                    await resp.write(b": keepalive\n\n")
                    wrote = time.monotonic()
        except (ConnectionResetError, asyncio.CancelledError):
            pass
        return resp

    async def case(request: web.Request) -> web.Response:
        v = state.case_view(request.match_info["case"], readable(request))
        if v is None:  # an unassigned room's case says no more than one that does not exist
            return web.json_response({"error": "no such case"}, status=404, headers=NO_STORE)
        if sender is not None:
            v["physician"] = request[PHYSICIAN]
        return web.json_response(v, dumps=dumps, headers=NO_STORE)

    async def _json(request: web.Request) -> dict[str, Any]:
        if request.content_type != "application/json":  # a form posted from elsewhere is not JSON
            raise SendError(415, "JSON only")
        try:
            body = await request.json()
        except ValueError:
            raise SendError(400, "not JSON") from None
        if not isinstance(body, dict):
            raise SendError(400, "a JSON object")
        return body

    async def login(request: web.Request) -> web.Response:
        if sender is None:
            return web.json_response({"error": "this hub sends nothing back"}, status=404)
        try:
            body = await _json(request)
            name, password = str(body.get("name", "")).strip(), str(body.get("password", ""))
            addr = request.remote or "?"
            if gated:  # the address slowed down, the name locked after 5 failures in 5 min, as the console's
                delay = addr_backoff.reserve(addr)
                if delay > 0:
                    await asyncio.sleep(delay)
                wait = user_limiter.retry_after("u:" + name)
                if wait > 0:
                    return web.json_response({"error": "locked after too many failed logins: try again in %d s"
                                                       % int(wait + 1)}, status=429,
                                             headers={"Retry-After": str(int(wait + 1))})
            try:
                token = await sender.login(name, password)
            except SendError as exc:
                if gated and exc.status == 401:
                    user_limiter.fail("u:" + name)
                    addr_backoff.fail(addr)
                raise
        except SendError as exc:
            return web.json_response({"error": str(exc)}, status=exc.status)
        await sender.logout(request.cookies.get(SESSION_COOKIE))  # a new login replaces the browser's old session
        resp = web.json_response({"physician": sender.physician(token)})
        resp.set_cookie(SESSION_COOKIE, token, httponly=True, samesite="Strict", secure=secure, path="/")
        return resp

    async def logout(request: web.Request) -> web.Response:
        if sender is not None:
            await sender.logout(request.cookies.get(SESSION_COOKIE))
        resp = web.json_response({"physician": None})
        resp.del_cookie(SESSION_COOKIE, path="/")
        return resp

    async def send(request: web.Request) -> web.Response:
        if sender is None:
            return web.json_response({"error": "this hub sends nothing back"}, status=404)
        try:
            return web.json_response(await sender.send(request.cookies.get(SESSION_COOKIE), await _json(request)))
        except SendError as exc:
            return web.json_response({"error": str(exc)}, status=exc.status)

    if sender is not None:
        async def close_sender(_app: web.Application) -> None:
            await sender.close()

        app.on_cleanup.append(close_sender)
    app.router.add_get("/", index)
    app.router.add_get("/palette.js", palette)
    app.router.add_get("/session.json", session)
    app.router.add_get("/case/{case}.json", case)
    app.router.add_post("/login", login)
    app.router.add_post("/logout", logout)
    app.router.add_post("/send", send)
    app.router.add_get("/state.json", view)
    app.router.add_get("/events", events)
    return app
