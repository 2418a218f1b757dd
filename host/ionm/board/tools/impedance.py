"""The electrode impedance check a technologist runs before a case (the board's `impedance` request, SPEC 5.10).

The board measures; the host judges. A recording channel's lead impedance is its two electrodes in series:
good up to GOOD_LEAD_OHM (two needle or cup electrodes of at most 5 kOhm each, the usual target of Natus,
Cadwell and NIM impedance checks), high above it (noise and mains pick-up grow with it, and the imbalance
between the two), open when the board found no current path. A stimulator output is good up to the board's
limit (`limit_ohm`, safety.impedance_ohm_max): above it the board refuses to stimulate on it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from ionm.board import link as ln
from ionm.protocol import messages as m

GOOD_LEAD_OHM = 10_000
REPLY_TIMEOUT_S = 10.0  # the check takes about 0.5 s on the board (SPEC 5.10)


def request(link: ln.BoardLink, channels: list[int] | None = None, outputs: list[int] | None = None) -> dict[str, Any]:
    """The board's impedance reply (acquisition must be stopped). None: every channel / output."""
    body: dict[str, Any] = {}
    if channels is not None:
        body["channels"] = list(channels)
    if outputs is not None:
        body["outputs"] = list(outputs)
    reply: dict[str, Any] = link.request(m.IMPEDANCE, body, timeout=REPLY_TIMEOUT_S, retries=1)
    return reply


@dataclass
class Reading:
    index: int  # ADC channel or stimulator output
    name: str
    ohm: int | None  # None: open
    limit_ohm: int

    @property
    def status(self) -> str:
        if self.ohm is None:
            return "open"
        return "ok" if self.ohm <= self.limit_ohm else "high"


@dataclass
class ImpedanceReport:
    channels: list[Reading] = field(default_factory=list)
    outputs: list[Reading] = field(default_factory=list)
    limit_ohm: int = 0
    lead_off_current_na: int = 0
    frequency_hz: int = 0

    @property
    def ok(self) -> bool:
        return all(r.status == "ok" for r in self.channels + self.outputs)

    def as_dict(self) -> dict[str, Any]:
        def rows(rs: list[Reading], key: str) -> list[dict[str, Any]]:
            return [{key: r.index, "name": r.name, "ohm": r.ohm, "status": r.status, "limit_ohm": r.limit_ohm}
                    for r in rs]

        return {"channels": rows(self.channels, "channel"), "outputs": rows(self.outputs, "output"),
                "limit_ohm": self.limit_ohm, "lead_off_current_na": self.lead_off_current_na,
                "frequency_hz": self.frequency_hz, "ok": self.ok}


def assess(reply: dict[str, Any], channel_names: dict[int, str] | None = None,
           output_names: dict[int, str] | None = None, good_lead_ohm: int = GOOD_LEAD_OHM) -> ImpedanceReport:
    """The board's reply judged: each channel against good_lead_ohm, each output against the board's limit."""
    cn, on = channel_names or {}, output_names or {}
    limit = int(reply["limit_ohm"])
    return ImpedanceReport(
        channels=[Reading(int(c["channel"]), cn.get(int(c["channel"]), "channel %d" % c["channel"]), c["ohm"],
                          good_lead_ohm) for c in reply["channels"]],
        outputs=[Reading(int(o["output"]), on.get(int(o["output"]), "output %d" % o["output"]), o["ohm"], limit)
                 for o in reply["outputs"]],
        limit_ohm=limit, lead_off_current_na=int(reply["lead_off_current_na"]),
        frequency_hz=int(reply["frequency_hz"]))


def check(port: str, channels: list[int] | None = None, outputs: list[int] | None = None,
          channel_names: dict[int, str] | None = None,
          output_names: dict[int, str] | None = None) -> tuple[ImpedanceReport, dict[str, Any]]:
    """Open the board, stop it (the handshake does), run the check; (report, the board's info)."""
    link = ln.BoardLink(ln.open_port(port), heartbeat_s=0.025)
    try:
        welcome = ln.connect(link, timeout=10)
        reply = request(link, channels, outputs)
    finally:
        link.close()
    return assess(reply, channel_names, output_names), welcome["info"]


def format_ohm(ohm: int | None) -> str:
    return "open" if ohm is None else "%.1f kΩ" % (ohm / 1000.0)
