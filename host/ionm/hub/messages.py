"""Oversight messages: subjects and CBOR bodies (schema: protocol/oversight.cddl).

Subject: `ionm.<site>.<room>.<case>.<kind>`; each token is the name with every character outside
[A-Za-z0-9_-] replaced by "_" (NATS reserves ".", "*", ">" and whitespace). Body: a CBOR map
{"v": VERSION, "kind", "seq", "session", "sent", "case", "body"}; `seq` counts the publisher's messages of the
case from 1, in the order they were made, within its `session` (one console run: a resumed case starts a new
session), and the JetStream message id is `<case>:<session>:<seq>`, so a message sent twice (its
acknowledgement lost in an outage) is stored once, and a resumed case's messages are never taken for repeats.
"""

from __future__ import annotations

import re
import time
from typing import Any

import cbor2

VERSION = 1
STREAM = "IONM"
SUBJECTS = "ionm.>"
KINDS = ("header", "alerts", "event", "trend", "average", "technical", "stimulation", "link", "screws")
DUPLICATE_WINDOW_S = 600.0  # JetStream de-duplication window: longer than any outage a room back-fills


def token(name: str) -> str:
    t = re.sub(r"[^A-Za-z0-9_-]", "_", str(name))
    if not t:
        raise ValueError("an empty name cannot be a subject token")
    return t


def subject(site: str, room: str, case: str, kind: str, prefix: str = "ionm") -> str:
    """The hub's subject of a message; with prefix="ionmroom" the subject of the room's own stream (a leaf node:
    ionm.hub.leaf), which the hub's stream sources as ionm.<site>.<room>.<case>.<kind>."""
    if kind not in KINDS:
        raise ValueError("unknown oversight message kind %r (%s)" % (kind, ", ".join(KINDS)))
    return "%s.%s.%s.%s.%s" % (prefix, token(site), token(room), token(case), kind)


def msg_id(case: str, session: int, seq: int) -> str:
    return "%s:%d:%d" % (token(case), session, seq)


def new_session() -> int:
    """A console run's session number: its start in ms since the epoch (distinct across restarts)."""
    return int(time.time() * 1000)


def encode(kind: str, seq: int, case: str, body: Any, sent: float | None = None, session: int = 0) -> bytes:
    return bytes(cbor2.dumps({"v": VERSION, "kind": kind, "seq": int(seq), "session": int(session),
                              "case": str(case), "sent": time.time() if sent is None else float(sent),
                              "body": body}))


def decode(data: bytes) -> dict[str, Any]:
    """A message's map; ValueError for anything that is not one of this version."""
    try:
        msg = cbor2.loads(data)
    except Exception as exc:
        raise ValueError("not CBOR: %s" % exc) from None
    if not isinstance(msg, dict) or msg.get("v") != VERSION or msg.get("kind") not in KINDS:
        raise ValueError("not an ionm oversight message of version %d" % VERSION)
    return msg
