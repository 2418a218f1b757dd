"""Oversight messages: subjects and CBOR bodies (schema: protocol/oversight.cddl).

Subject: `ionm.<site>.<room>.<case>.<kind>`; each token is the name with every character outside
[A-Za-z0-9_-] replaced by "_" (NATS reserves ".", "*", ">" and whitespace). Body: a CBOR map
{"v": VERSION, "kind", "seq", "session", "sent", "case", "body"}; `seq` counts the publisher's messages of the
case from 1, in the order they were made, within its `session` (one console run: a resumed case starts a new
session), and the JetStream message id is `<case>:<session>:<seq>`, so a message sent twice (its
acknowledgement lost in an outage) is stored once, and a resumed case's messages are never taken for repeats.

Two kinds travel the other way, or answer it (docs/OVERSIGHT.md, "What travels back"): a physician's
acknowledgement or note from the hub's page is a "physician" message on `ionm.<site>.<room>.<case>.physician.<name>`
(the sixth token is the physician's login: nats-server lets a physician publish under no other name), with seq 0,
session 0, its body {"id", "cmd": "ack" | "note", ...} and the message id `physician:<id>`; the room answers each
with a "receipt" on its own `ionm.<site>.<room>.<case>.receipt`.
"""

from __future__ import annotations

import hashlib
import re
import time
from typing import Any

import cbor2

VERSION = 1
STREAM = "IONM"
SUBJECTS = "ionm.>"
KINDS = ("header", "alerts", "event", "trend", "average", "technical", "stimulation", "link", "screws", "tof", "probe",
         "eeg", "eegepoch", "baep", "emg", "receipt", "physician")
PHYSICIAN = "physician"  # the one kind a room does not publish: a physician's ack or note, sent to the room
DUPLICATE_WINDOW_S = 600.0  # JetStream de-duplication window: longer than any outage a room back-fills


def token(name: str) -> str:
    t = re.sub(r"[^A-Za-z0-9_-]", "_", str(name))
    if not t:
        raise ValueError("an empty name cannot be a subject token")
    return t


def subject(site: str, room: str, case: str, kind: str, prefix: str = "ionm") -> str:
    """The hub's subject of a message; with prefix="ionmroom" the subject of the room's own stream (a leaf node:
    ionm.hub.leaf), which the hub's stream sources as ionm.<site>.<room>.<case>.<kind>."""
    if kind not in KINDS or kind == PHYSICIAN:
        raise ValueError("unknown oversight message kind %r (%s)" % (kind, ", ".join(KINDS)))
    return "%s.%s.%s.%s.%s" % (prefix, token(site), token(room), token(case), kind)


def physician_subject(site: str, room: str, case: str, physician: str) -> str:
    """Where a physician's acknowledgement or note for a room's case is published: the physician's login is the
    last token, and the access file lets each physician publish only under their own (ionm.hub.access)."""
    return "ionm.%s.%s.%s.%s.%s" % (token(site), token(room), token(case), PHYSICIAN, token(physician))


def physician_filter(site: str, room: str) -> str:
    """Every physician's messages to a room, whatever the case (the room's durable consumer: ionm.hub.inbox)."""
    return "ionm.%s.%s.*.%s.*" % (token(site), token(room), PHYSICIAN)


def physician_consumer(site: str, room: str) -> str:
    """The name of a room's durable consumer of its physicians' messages in the hub's stream (one per room, so that
    the access file can name it): readable, with a hash that keeps rooms whose names join alike apart."""
    st, rt = token(site), token(room)
    return "physicians-%s-%s-%s" % (st, rt, hashlib.sha1(("%s.%s" % (st, rt)).encode()).hexdigest()[:8])


def parse_subject(subject: str) -> dict[str, str] | None:
    """{"site", "room", "case", "kind"} (and "physician" for a physician's message) of a hub subject, or None."""
    parts = subject.split(".")
    if len(parts) == 5 and parts[4] != PHYSICIAN:
        return {"site": parts[1], "room": parts[2], "case": parts[3], "kind": parts[4]}
    if len(parts) == 6 and parts[4] == PHYSICIAN:
        return {"site": parts[1], "room": parts[2], "case": parts[3], "kind": PHYSICIAN, "physician": parts[5]}
    return None


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
