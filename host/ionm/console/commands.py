"""The schema of what a viewer may send over the console's WebSocket, checked before anything reaches the engine.

A message is one JSON object: {"cmd": KIND, "req": ID, ...the fields of KIND}. Every field has a type and a
range; a field not in the schema, a value of the wrong type (a bool is not a number, a string is not either),
NaN or ±inf, a number out of range, a string too long, a message that is not an object or not JSON: each is
refused with an error that names the field (`CommandInvalid.field`, a dotted path such as
"command.current_ma"). Nothing refused here is executed, stored or audited. The stimulation ranges are the
board's limits (ionm.board.stimulation.limits), so the schema never admits what the board would refuse by
range; the combined checks (charge, energy, total rate, mains divisors) stay with the stimulation's validate().
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from typing import Any

from ionm.board.stimulation import limits as board_limits

MAX_TEXT = 4000  # characters of a note or an acknowledgement
MAX_NAME = 200  # characters of a stream key, an alert uid, a peak name
MAX_REQ = 2 ** 53  # the request id is echoed back to a JavaScript page: a safe integer


class CommandInvalid(ValueError):
    """A message refused by the schema; `field` names what is wrong ('' for the message as a whole)."""

    def __init__(self, field: str, reason: str):
        super().__init__("%s: %s" % (field, reason) if field else reason)
        self.field = field
        self.reason = reason


Check = Callable[[str, Any], Any]


def _kind(v: Any) -> str:
    if v is None:
        return "null"
    if isinstance(v, bool):
        return "a boolean"
    if isinstance(v, (int, float)):
        return "a number"
    if isinstance(v, str):
        return "a string"
    if isinstance(v, list):
        return "an array"
    return "an object"


def number(lo: float, hi: float, *, integer: bool = False, lo_open: bool = False) -> Check:
    def check(path: str, v: Any) -> Any:
        if isinstance(v, bool) or not isinstance(v, (int, float)):
            raise CommandInvalid(path, "must be %s, not %s" % ("an integer" if integer else "a number", _kind(v)))
        if isinstance(v, float) and not math.isfinite(v):
            raise CommandInvalid(path, "must be a finite number, not %r" % v)
        if integer and v != int(v):
            raise CommandInvalid(path, "must be an integer, not %r" % v)
        if v < lo or v > hi or (lo_open and v == lo):
            raise CommandInvalid(path, "%r is outside %s%g..%g" % (v, "(excluded) " if lo_open else "", lo, hi))
        return int(v) if integer else float(v)
    return check


def text(max_len: int, *, nonempty: bool = True) -> Check:
    def check(path: str, v: Any) -> Any:
        if not isinstance(v, str):
            raise CommandInvalid(path, "must be a string, not %s" % _kind(v))
        if len(v) > max_len:
            raise CommandInvalid(path, "longer than %d characters" % max_len)
        if nonempty and not v.strip():
            raise CommandInvalid(path, "must not be empty")
        return v
    return check


def boolean(path: str, v: Any) -> Any:
    if not isinstance(v, bool):
        raise CommandInvalid(path, "must be true or false, not %s" % _kind(v))
    return v


def integers(lo: int, hi: int, max_len: int) -> Check:
    def check(path: str, v: Any) -> Any:
        if not isinstance(v, list):
            raise CommandInvalid(path, "must be an array, not %s" % _kind(v))
        if len(v) > max_len:
            raise CommandInvalid(path, "longer than %d items" % max_len)
        one = number(lo, hi, integer=True)
        return [one("%s[%d]" % (path, i), x) for i, x in enumerate(v)]
    return check


def nullable(check: Check) -> Check:
    return lambda path, v: None if v is None else check(path, v)


def obj(fields: dict[str, Check], required: tuple[str, ...] = ()) -> Check:
    def check(path: str, v: Any) -> Any:
        if not isinstance(v, dict):
            raise CommandInvalid(path, "must be an object, not %s" % _kind(v))
        return _fields(path, v, fields, required)
    return check


def _fields(path: str, v: dict[str, Any], fields: dict[str, Check], required: tuple[str, ...]) -> dict[str, Any]:
    prefix = path + "." if path else ""
    for k in v:
        if k not in fields:
            raise CommandInvalid(prefix + str(k), "unknown field (allowed: %s)" % ", ".join(sorted(fields)))
    for k in required:
        if k not in v:
            raise CommandInvalid(prefix + k, "missing")
    return {k: fields[k](prefix + k, x) for k, x in v.items()}


def _stim_schemas(lim: dict[str, Any]) -> dict[str, tuple[dict[str, Check], tuple[str, ...]]]:
    action = text(20)
    return {
        "ssep": ({"action": action, "output": number(0, lim["outputs"] - 1, integer=True), "enabled": boolean,
                  "current_ma": number(0, lim["current_ma_max"]),
                  "width_us": number(lim["width_us_min"], lim["width_us_max"], integer=True),
                  "rate_hz": number(0, lim["rate_hz_max_per_output"], lo_open=True)}, ("action", "output")),
        "tcmep": ({"action": action, "train_pulses": number(1, lim["train_pulses_max"], integer=True),
                   "ipi_ms": number(lim["train_ipi_ms_min"], lim["train_ipi_ms_max"]),
                   "repeat_s": number(0, 3600)}, ("action",)),
        "tcmep_train": ({"action": action}, ("action",)),
        "stop_all": ({"action": action}, ("action",)),
        "resume": ({"action": action}, ("action",)),  # start the program again as it stands (the board stopped it)
    }


def _probe_max_ma() -> float:
    from ionm import board

    return float(board.load()["safety"]["probe"]["current_ma_max"])


def _probe_max_rate() -> float:
    from ionm import board

    return float(board.load()["safety"]["probe"]["rate_hz_max"])


class Schema:
    """Every command kind and its fields."""

    def __init__(self, lim: dict[str, Any] | None = None):
        self.limits = lim or board_limits()
        self.stim = _stim_schemas(self.limits)
        req = nullable(number(-MAX_REQ, MAX_REQ, integer=True))
        lim = self.limits
        tof_fields = {"output": number(0, lim["outputs"] - 1, integer=True), "channel": number(0, 255, integer=True),
                      "current_ma": number(0, lim["current_ma_max"], lo_open=True)}
        self.kinds: dict[str, tuple[dict[str, Check], tuple[str, ...]]] = {
            "ping": ({}, ()),
            "note": ({"text": text(MAX_TEXT)}, ("text",)),
            # group: also every unacknowledged alert of the alert's channel raised before it (ionm.console.alerts)
            "ack": ({"alert": text(MAX_NAME), "note": text(MAX_TEXT), "group": boolean}, ("alert", "note")),
            "baseline": ({"stream": nullable(text(MAX_NAME))}, ()),
            "stim": ({"command": self._stim_command, "confirmed": boolean}, ("command",)),
            "peak": ({"stream": text(MAX_NAME), "channel": number(0, 255, integer=True), "name": text(20),
                      "latency_ms": nullable(number(0, 1000))}, ("stream", "channel", "name")),
            "close": ({"note": text(MAX_TEXT, nonempty=False)}, ()),
            # a pedicle-screw test (the probe's threshold hunt); the level and side are checked by the engine
            # (ionm.pipeline.screws), hi_ma within the probe's own limit (board.json safety.probe)
            "screw_test": ({"level": text(8), "side": text(8), "dynamic": boolean,
                            "hi_ma": number(0, _probe_max_ma(), lo_open=True), "p2p_uv": number(10, 10000)},
                           ("level", "side")),
            "screw_stop": ({}, ()),
            # a train-of-four (4 pulses at 2 Hz, at most one per 15 s: the engine and the board refuse sooner): a
            # stimulator output, the muscle channel its M-waves are measured on (checked against the montage by
            # the engine), the current (default: the output's SSEP current)
            "tof": (tof_fields, ("output", "channel")),
            # repeat it every s seconds (>= 15; 0 stops), on the given output and channel or the last TOF's
            "tof_every": (dict(tof_fields, s=number(0, 3600)), ("s",)),
            # the manual probe (nerve mapping) until probe_stop: its current within the probe's own limit and
            # rate (board.json safety.probe); the DAC step is checked by the engine
            "probe": ({"ma": number(0, _probe_max_ma(), lo_open=True), "rate_hz": number(0.5, _probe_max_rate()),
                       "label": text(80, nonempty=False)}, ("ma",)),
            "probe_stop": ({}, ()),
            # this viewer's sound: the free-run EMG channels it hears (empty: sound off); not case state, not audited
            "audio": ({"channels": integers(0, 255, 64)}, ("channels",)),
            # the cumulative A-train time at which a facial channel's free-run EMG warns, s
            "emg_warning": ({"s": number(0.1, 3600)}, ("s",)),
            # a surgical event on the timeline (ionm.case.timeline.SURGICAL_EVENTS: clamp, shunt, declamp)
            "mark": ({"event": text(20)}, ("event",)),
        }
        for fields, _ in self.kinds.values():
            fields["cmd"] = text(20)
            fields["req"] = req

    def _stim_command(self, path: str, v: Any) -> Any:
        if not isinstance(v, dict):
            raise CommandInvalid(path, "must be an object, not %s" % _kind(v))
        action = v.get("action")
        if "action" not in v:
            raise CommandInvalid(path + ".action", "missing")
        if not isinstance(action, str) or action not in self.stim:
            raise CommandInvalid(path + ".action", "must be one of %s" % ", ".join(sorted(self.stim)))
        fields, required = self.stim[action]
        return _fields(path, v, fields, required)

    def request_id(self, msg: Any) -> int | None:
        """The request id to echo in a reply, when the message carries a usable one."""
        if isinstance(msg, dict):
            r = msg.get("req")
            if isinstance(r, int) and not isinstance(r, bool) and -MAX_REQ <= r <= MAX_REQ:
                return r
        return None

    def parse(self, data: str) -> dict[str, Any]:
        """The checked command of one WebSocket text message, or CommandInvalid."""
        return self.check(loads(data))

    def check(self, msg: Any) -> dict[str, Any]:
        if not isinstance(msg, dict):
            raise CommandInvalid("", "a command must be a JSON object, not %s" % _kind(msg))
        if "cmd" not in msg:
            raise CommandInvalid("cmd", "missing")
        cmd = msg["cmd"]
        if not isinstance(cmd, str) or cmd not in self.kinds:
            raise CommandInvalid("cmd", "must be one of %s" % ", ".join(sorted(self.kinds)))
        fields, required = self.kinds[cmd]
        return _fields("", msg, fields, required)


def loads(data: str) -> Any:
    """One WebSocket text message as JSON, or CommandInvalid (never RecursionError: a page of '[' is not JSON
    a command can be made of)."""
    try:
        return json.loads(data)
    except RecursionError:
        raise CommandInvalid("", "invalid JSON: nested too deeply") from None
    except ValueError as exc:
        raise CommandInvalid("", "invalid JSON: %s" % exc) from None
