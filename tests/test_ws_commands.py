"""Hostile input over the console's WebSocket: every command kind fuzzed (hypothesis) against a real server and
engine. Each malformed message gets an error reply naming the field, the socket stays open, nothing is stored
or audited; afterwards the server still answers and a new viewer still loads its snapshot."""

from __future__ import annotations

import asyncio
import json
import math
from typing import Any

import aiohttp
import pytest
from hypothesis import HealthCheck, example, given, settings, strategies as hs

from ionm.board.stimulation import RecordedStimulation
from ionm.case.store import CaseStore
from ionm.console.auth import Accounts
from ionm.console.engine import CaseEngine
from ionm.console.server import ConsoleServer

PASSWORD = "tech-password-1"

# A valid message of every kind, and the type of each of its fields (path -> kind). The test's own table: it does
# not read the server's schema.
VALID: dict[str, dict[str, Any]] = {
    "ping": {"cmd": "ping", "req": 1},
    "note": {"cmd": "note", "req": 1, "text": "screw L3 placed"},
    "ack": {"cmd": "ack", "req": 1, "alert": "X-A1", "note": "surgeon told", "group": True},
    "baseline": {"cmd": "baseline", "req": 1, "stream": "mep/TcMEP"},
    "ssep": {"cmd": "stim", "req": 1, "confirmed": False,
             "command": {"action": "ssep", "output": 1, "enabled": True, "current_ma": 20.0, "width_us": 200,
                         "rate_hz": 4.7}},
    "tcmep": {"cmd": "stim", "req": 1, "command": {"action": "tcmep", "train_pulses": 5, "ipi_ms": 3.0,
                                                   "repeat_s": 0.0}},
    "tcmep_train": {"cmd": "stim", "req": 1, "confirmed": True, "command": {"action": "tcmep_train"}},
    "stop_all": {"cmd": "stim", "req": 1, "command": {"action": "stop_all"}},
    "peak": {"cmd": "peak", "req": 1, "stream": "ssep-upper/L median", "channel": 0, "name": "N20",
             "latency_ms": 19.5},
    "close": {"cmd": "close", "req": 1, "note": "end"},
    "screw_test": {"cmd": "screw_test", "req": 1, "level": "L4", "side": "L", "dynamic": False, "hi_ma": 20.0,
                   "p2p_uv": 100.0},
    "screw_stop": {"cmd": "screw_stop", "req": 1},
    "resume": {"cmd": "stim", "req": 1, "command": {"action": "resume"}},
    "emg_warning": {"cmd": "emg_warning", "req": 1, "s": 12.5},
    "audio": {"cmd": "audio", "req": 1, "channels": [0, 2]},
}
NUMBERS = {"req", "output", "current_ma", "width_us", "rate_hz", "train_pulses", "ipi_ms", "repeat_s", "channel",
           "latency_ms", "hi_ma", "p2p_uv", "s"}
BOOLS = {"enabled", "confirmed", "group", "dynamic"}
NULLABLE = {"req", "stream@baseline", "latency_ms"}
REQUIRED = {"note": ["text"], "ack": ["alert", "note"], "ssep": ["command", "command.action", "command.output"],
            "tcmep": ["command", "command.action"], "tcmep_train": ["command", "command.action"],
            "stop_all": ["command", "command.action"], "peak": ["stream", "channel", "name"],
            "screw_test": ["level", "side"], "resume": ["command", "command.action"], "emg_warning": ["s"],
            "audio": ["channels"]}
INTEGER_LISTS = {"channels"}


def fields(kind: str) -> list[str]:
    msg = VALID[kind]
    out = [k for k in msg if k != "cmd"]
    out += ["command." + k for k in msg.get("command", {}) if k != "action"]
    return out


def leaf(path: str) -> str:
    return path.rsplit(".", 1)[-1]


def wrong_types(kind: str, path: str) -> hs.SearchStrategy[Any]:
    name = leaf(path)
    nullable = name in NULLABLE or "%s@%s" % (name, kind) in NULLABLE
    others: list[hs.SearchStrategy[Any]] = [hs.lists(hs.integers(), max_size=3),
                                            hs.dictionaries(hs.text(max_size=3), hs.integers(), max_size=2)]
    if not nullable:
        others.append(hs.none())
    if name in NUMBERS:
        others += [hs.text(max_size=8), hs.booleans()]
    elif name in BOOLS:
        others += [hs.text(max_size=8), hs.integers(), hs.floats(allow_nan=False)]
    else:  # strings
        others += [hs.integers(), hs.floats(allow_nan=False), hs.booleans()]
    if name in INTEGER_LISTS:  # a list of integers is its type: anything else is wrong
        others = others[1:]  # (a wrong element is named with its index, channels[0]: not this table's business)
    if name == "command":
        others = [hs.text(max_size=8), hs.integers(), hs.lists(hs.integers(), max_size=2), hs.none()]
    return hs.one_of(*others)


def put(msg: dict[str, Any], path: str, value: Any) -> dict[str, Any]:
    out = json.loads(json.dumps(msg))
    parts = path.split(".")
    target = out
    for p in parts[:-1]:
        target = target[p]
    target[parts[-1]] = value
    return out


def drop(msg: dict[str, Any], path: str) -> dict[str, Any]:
    out = json.loads(json.dumps(msg))
    parts = path.split(".")
    target = out
    for p in parts[:-1]:
        target = target[p]
    del target[parts[-1]]
    return out


@hs.composite
def malformed(draw: Any) -> tuple[str, str]:
    """(message text, the field the refusal must name; '' for the message as a whole)."""
    kind = draw(hs.sampled_from(sorted(VALID)))
    msg = VALID[kind]
    how = draw(hs.sampled_from(["type", "nonfinite", "range", "unknown", "missing", "not-object", "not-json"]))
    numeric = [f for f in fields(kind) if leaf(f) in NUMBERS]
    if how == "nonfinite" and numeric:
        path = draw(hs.sampled_from(numeric))
        return json.dumps(put(msg, path, draw(hs.sampled_from([math.nan, math.inf, -math.inf])))), path
    if how == "range" and numeric:
        path = draw(hs.sampled_from(numeric))
        big = draw(hs.sampled_from([1e300, -1e300])) if leaf(path) == "req" else draw(
            hs.sampled_from([1e6, 1e9, -1e6, -1.0]))
        return json.dumps(put(msg, path, big)), path
    if how == "missing" and REQUIRED.get(kind):
        path = draw(hs.sampled_from(REQUIRED[kind]))
        return json.dumps(drop(msg, path)), path
    if how == "unknown":
        inside = "command" in msg and draw(hs.booleans())
        name = draw(hs.text(min_size=1, max_size=12).filter(lambda s: "." not in s and s not in msg
                                                            and s not in msg.get("command", {})
                                                            and s not in ("cmd", "req", "action")))
        path = ("command." if inside else "") + name
        return json.dumps(put(msg, path, draw(hs.integers()))), path
    if how == "not-object":
        return json.dumps(draw(hs.one_of(hs.none(), hs.integers(), hs.text(max_size=10), hs.booleans(),
                                         hs.lists(hs.just(msg), max_size=2)))), ""
    if how == "not-json":
        good = json.dumps(msg)
        cut = draw(hs.integers(1, len(good) - 1))
        return draw(hs.sampled_from([good[:cut], good + "}", "{" + good, "[" * 5000, "", "{'cmd': 'note'}"])), ""
    path = draw(hs.sampled_from(fields(kind)))
    return json.dumps(put(msg, path, draw(wrong_types(kind, path)))), path


class Viewer:
    """A logged-in technologist's socket, driven from the test thread's own event loop."""

    def __init__(self, url: str):
        self.url, self.loop = url, asyncio.new_event_loop()
        self.session: aiohttp.ClientSession | None = None
        self.ws: aiohttp.ClientWebSocketResponse | None = None

    def run(self, coro: Any) -> Any:
        return self.loop.run_until_complete(coro)

    async def _open(self) -> dict[str, Any]:
        self.session = aiohttp.ClientSession(cookie_jar=aiohttp.CookieJar(unsafe=True))
        async with self.session.post(self.url + "login", data={"user": "tech", "password": PASSWORD},
                                     allow_redirects=False, headers={"Origin": self.url.rstrip("/")}) as r:
            assert r.status == 303
        self.ws = await self.session.ws_connect(self.url + "ws", origin=self.url.rstrip("/"))
        return await self._next("snapshot")

    async def _next(self, kind: str) -> dict[str, Any]:
        assert self.ws is not None
        while True:
            m = await self.ws.receive(timeout=30)
            assert m.type == aiohttp.WSMsgType.TEXT, m  # the socket stayed open
            body = json.loads(m.data, parse_constant=lambda c: pytest.fail("%s sent to a viewer" % c))
            if body["type"] == kind:
                return body

    async def _ask(self, text: str) -> dict[str, Any]:
        assert self.ws is not None
        await self.ws.send_str(text)
        return await self._next("reply")

    def open(self) -> dict[str, Any]:
        return self.run(self._open())

    def ask(self, text: str) -> dict[str, Any]:
        return self.run(self._ask(text))

    def close(self) -> None:
        async def shut() -> None:
            if self.ws is not None:
                await self.ws.close()
            if self.session is not None:
                await self.session.close()
        self.run(shut())
        self.loop.close()


@pytest.fixture(scope="module")
def console(tmp_path_factory: pytest.TempPathFactory):
    store = CaseStore(tmp_path_factory.mktemp("ws") / "cases.db")
    Accounts(store).add("tech", "technologist", PASSWORD)
    cid = store.open_case()
    engine = CaseEngine(store, cid, stimulation=RecordedStimulation())
    engine.start()
    srv = ConsoleServer(engine, store)
    url = srv.start_in_thread()
    viewer = Viewer(url)
    viewer.open()
    yield store, cid, engine, url, viewer
    viewer.close()
    srv.stop_thread()
    engine.stop()
    store.close()


def recorded(store: CaseStore, cid: int) -> dict[str, int]:
    store.flush()
    counts = {t: len(store.rows(t, cid)) for t in ("notes", "acks", "programs", "peak_marks", "alerts", "baselines")}
    audit = store.rows("audit", cid)
    counts["audit"] = len([a for a in audit if not a["action"].startswith("view.")])
    return counts


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture,
                                                                   HealthCheck.too_slow])
@given(case=malformed())
@example(case=(json.dumps({"cmd": "stim", "req": 7, "command": {"action": "tcmep", "repeat_s": math.nan}}),
               "command.repeat_s"))
@example(case=(json.dumps({"cmd": "stim", "req": 7, "command": {"action": "ssep", "output": 0,
                                                                 "current_ma": "lots"}}), "command.current_ma"))
@example(case=("[1, 2]", ""))
@example(case=("null", ""))
@example(case=("42", ""))
@example(case=("{not json", ""))
def test_every_malformed_command_is_refused_naming_its_field(console, case: tuple[str, str]) -> None:
    store, cid, engine, _, viewer = console
    text, field = case
    before = recorded(store, cid)
    program = engine.stimulation.state()
    reply = viewer.ask(text)
    assert reply["ok"] is False, (text, reply)
    assert reply["field"] == field, (text, reply)
    assert field in reply["error"]
    assert engine.stimulation.state() == program
    assert recorded(store, cid) == before


def test_after_the_fuzz_the_server_answers_commands_and_a_new_viewer_loads(console) -> None:
    store, cid, engine, url, viewer = console
    pong = viewer.ask('{"cmd": "ping", "req": 4}')
    assert pong["ok"] and pong["req"] == 4
    note = viewer.ask('{"cmd": "note", "req": 5, "text": "still here"}')
    assert note["ok"], note
    assert [n["text"] for n in store.rows("notes", cid)][-1:] == ["still here"]
    stop = viewer.ask('{"cmd": "stim", "req": 6, "command": {"action": "stop_all"}}')
    assert stop["ok"] and not any(o["enabled"] for o in engine.stimulation.state()["ssep"].values())
    fresh = Viewer(url)
    try:
        snap = fresh.open()  # a new viewer gets its snapshot (strict JSON, no NaN)
        assert snap["frames"]["case"]["id"] == cid
        assert any(e.get("text") == "still here" for e in snap["appends"])
    finally:
        fresh.close()
