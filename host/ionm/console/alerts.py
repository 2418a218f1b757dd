"""The alerts a viewer is sent: grouped per channel, bounded however long the case and however many alerts.

Before (issue 18), the alert frame carried every alert of the case, in every snapshot and again whole with every
new alert and every acknowledgement: an 8-hour case with an alert storm (say 2000 alerts) made it ~700 kB, and
acknowledging a channel took one command, and one whole-list frame to every viewer, per alert. What a Cadwell or
Natus user reads is one line per channel: how many times it alerted, its newest values, since when, how many are
unacknowledged, and one acknowledgement for the channel. So the frame ("alerts") is

    {"total": alerts in the case, "unacked": of them unacknowledged,
     "groups": one per channel (stream + channel: modality, stimulated site, recording channel), newest first:
         {"key": "STREAM#CHANNEL", "stream", "channel", "channel_name", "count", "unacked", "first_t_s",
          "last_t_s", "latest": the channel's newest alert (its values, its acknowledgement),
          "ack_uid": the newest unacknowledged alert of the channel (None if none)},
     "alerts": individual alerts in the order raised: the newest RECENT_ALERTS and the newest UNACKED_SHOWN of
         the unacknowledged ones}

Acknowledging a channel is one command, {"cmd": "ack", "alert": ack_uid, "group": true, "note": ...}: it
acknowledges that alert and every unacknowledged alert of its channel raised before it, each in the store and the
audit trail as before, and only those: an alert raised after the viewer opened its dialog stays unacknowledged.
Any unacknowledged alert, listed or not, can still be acknowledged by its uid alone. The engine keeps every
unacknowledged alert and the newest RECENT_ALERTS (AlertBoard); the case store keeps every alert and every
acknowledgement, and the report lists them all.

RECENT_ALERTS = 10: twice the banner's five rows, the last minutes of a storm in detail (the timeline, up to 300
events, has every alert as a line, and the store and the report have them all). UNACKED_SHOWN = 10 more of the
unacknowledged ones, also twice the banner's rows: beyond them an unacknowledged alert is in its channel's count
and acknowledged with its channel. Together they keep the frame within one update message
(server.MAX_MESSAGE_BYTES) with every channel of the default montage in alert, so that a new alert reaches every
viewer at once in one message, and the snapshot after an 8-hour case with a storm under its 200 kB goal
(bench/snapshot_size prints both). An acknowledgement is shown as who and when: its note (up to 4000
characters) is in the timeline's acknowledgement line, the store and the report, not repeated per alert.
"""

from __future__ import annotations

from collections import OrderedDict, deque
from itertools import islice
from typing import Any

RECENT_ALERTS = 10
UNACKED_SHOWN = 10
GROUP_FIELDS = ("stream", "channel", "channel_name", "wall")  # a group's, not repeated in its newest alert


def group_key(stream: str, channel: int) -> str:
    return "%s#%d" % (stream, int(channel))


def shown_ack(ack: dict[str, Any] | None) -> dict[str, Any] | None:
    """An acknowledgement as the frame carries it: who and when (the note is in the timeline)."""
    if ack is None:
        return None
    return {"user": ack["user"], "t_s": round(float(ack["t_s"]), 2)}


def shown_alert(a: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in a.items() if not k.startswith("_")} | {
        "t_s": round(float(a["t_s"]), 2), "wall": round(float(a["wall"]), 2), "ack": shown_ack(a.get("ack"))}


class _Group:
    __slots__ = ("key", "stream", "channel", "channel_name", "count", "first_t_s", "latest", "pending")

    def __init__(self, a: dict[str, Any]):
        self.key = group_key(a["stream"], a["channel"])
        self.stream, self.channel, self.channel_name = a["stream"], int(a["channel"]), a["channel_name"]
        self.count = 0
        self.first_t_s = float(a["t_s"])
        self.latest = a
        self.pending: OrderedDict[str, dict[str, Any]] = OrderedDict()  # unacknowledged, in the order raised

    def frame(self) -> dict[str, Any]:
        return {"key": self.key, "stream": self.stream, "channel": self.channel, "channel_name": self.channel_name,
                "count": self.count, "unacked": len(self.pending), "first_t_s": round(self.first_t_s, 2),
                "last_t_s": round(float(self.latest["t_s"]), 2),
                "latest": {k: v for k, v in shown_alert(self.latest).items() if k not in GROUP_FIELDS},
                "ack_uid": next(reversed(self.pending)) if self.pending else None}


class AlertBoard:
    """The case's alerts as the engine keeps them (engine thread only): per channel group its counts and its
    unacknowledged alerts, and the newest RECENT_ALERTS; frame() is what a viewer is sent."""

    def __init__(self) -> None:
        self.total = 0
        self.groups: dict[str, _Group] = {}
        self.pending: OrderedDict[str, dict[str, Any]] = OrderedDict()  # every unacknowledged alert, by uid
        self.recent: deque[dict[str, Any]] = deque(maxlen=RECENT_ALERTS)
        self._seq = 0

    def add(self, alert: dict[str, Any]) -> None:
        """A new alert: {uid, stream, t_s, channel, channel_name, criterion, amplitude_ratio, latency_ratio,
        scope, label, wall, ack}."""
        self._seq += 1
        a = dict(alert, _seq=self._seq)
        key = group_key(a["stream"], a["channel"])
        g = self.groups.get(key)
        if g is None:
            g = self.groups[key] = _Group(a)
        g.count += 1
        g.first_t_s = min(g.first_t_s, float(a["t_s"]))
        g.latest = a
        self.total += 1
        self.recent.append(a)
        if not a.get("ack"):
            g.pending[a["uid"]] = a
            self.pending[a["uid"]] = a

    def __len__(self) -> int:
        return self.total

    def unacked(self) -> list[dict[str, Any]]:
        """Every unacknowledged alert, in the order raised."""
        return list(self.pending.values())

    def known(self, uid: str) -> dict[str, Any] | None:
        """An alert the engine still holds: unacknowledged, or among the newest."""
        return self.pending.get(uid) or next((a for a in self.recent if a["uid"] == uid), None)

    def to_acknowledge(self, uid: str, group: bool) -> list[dict[str, Any]]:
        """The unacknowledged alerts acknowledging uid covers: itself, and with group every unacknowledged alert
        of its channel raised before it (in the order raised). Empty if uid is not unacknowledged."""
        a = self.pending.get(uid)
        if a is None:
            return []
        if not group:
            return [a]
        g = self.groups[group_key(a["stream"], a["channel"])]
        return [x for x in g.pending.values() if x["_seq"] <= a["_seq"]]

    def acknowledge(self, alerts: list[dict[str, Any]], ack: dict[str, Any]) -> None:
        for a in alerts:
            a["ack"] = dict(ack)
            self.pending.pop(a["uid"], None)
            self.groups[group_key(a["stream"], a["channel"])].pending.pop(a["uid"], None)

    def frame(self) -> dict[str, Any]:
        newest_pending = list(islice(reversed(self.pending.values()), UNACKED_SHOWN))
        shown = {a["_seq"]: a for a in [*self.recent, *newest_pending]}
        groups = sorted(self.groups.values(), key=lambda g: -g.latest["_seq"])
        return {"total": self.total, "unacked": len(self.pending), "groups": [g.frame() for g in groups],
                "alerts": [shown_alert(shown[s]) for s in sorted(shown)]}
