"""Threshold hunting from the host (SPEC 5.11): the request, checked against the board's limits before it is
sent, and its events gathered into one result. The hunt itself runs on the board (firmware/hunt.py); the host
only asks and listens, so its latency costs nothing between pulses.

    result = session.hunt([11, 13], lo_ma=0.5, hi_ma=40, resolution_ma=0.5, rate_hz=5, p2p_uv=100)
    result.thresholds_ma  ->  {11: 12.4, 13: 5.9}   (None: no response up to hi_ma)
"""

from __future__ import annotations

import math
import threading
import time
from dataclasses import dataclass, field
from typing import Any

from ionm import board


class HuntError(ValueError):
    """Hunt parameters outside the probe's limits (the board would refuse them too)."""


@dataclass
class HuntPulse:
    index: int
    current_ma: float
    p2p_uv: dict[int, int]
    responses: dict[int, bool]


@dataclass
class HuntResult:
    reason: str  # done, pulses, stopped, watchdog, fault, limit, host-lost, acquisition-stopped, replaced
    thresholds_ma: dict[int, float | None]  # the lowest current that evoked a response; None: none up to hi
    below_ma: dict[int, float | None]  # the highest that did not
    pulses: list[HuntPulse] = field(default_factory=list)  # every pulse whose response was judged
    # the pulses the hunt armed (hunt-done's count, a window that lost samples included): at least those delivered,
    # one more than judged when the hunt ended with a pulse's window open; None: as many as `pulses`
    armed: int | None = None

    @property
    def complete(self) -> bool:
        return self.reason == "done"


def request_body(channels: list[int], *, lo_ma: float, hi_ma: float, resolution_ma: float, rate_hz: float,
                 p2p_uv: float, window_ms: tuple[int, int] = (5, 40), max_pulses: int | None = None,
                 defn: dict[str, Any] | None = None) -> dict[str, Any]:
    """The hunt request's body, in the board's integer units, refused here (HuntError) when a value is outside
    the probe's limits (board.json safety.probe) so that a user hears why before anything is sent."""
    d = defn or board.load()
    sp, st = d["safety"]["probe"], d["stimulator"]
    step = int(st["current_step_ua"])
    values = {"lo_ma": lo_ma, "hi_ma": hi_ma, "resolution_ma": resolution_ma, "rate_hz": rate_hz, "p2p_uv": p2p_uv}
    for name, v in values.items():
        if not isinstance(v, (int, float)) or isinstance(v, bool) or not math.isfinite(v):
            raise HuntError("%s must be a finite number (got %r)" % (name, v))

    def ua(name: str, v: float) -> int:
        u = int(round(v * 1000))
        if u % step:
            raise HuntError("%s %.3f mA is not a multiple of the DAC step %.1f mA" % (name, v, step / 1000))
        return u

    lo, hi, res = ua("lo_ma", lo_ma), ua("hi_ma", hi_ma), ua("resolution_ma", resolution_ma)
    i_max = int(sp["current_ma_max"] * 1000)
    if not step <= lo <= hi <= i_max:
        raise HuntError("the range must be within %.1f-%.1f mA, lo <= hi (got %.1f-%.1f)"
                        % (step / 1000, i_max / 1000, lo_ma, hi_ma))
    if res < step:
        raise HuntError("resolution_ma must be at least the DAC step %.1f mA" % (step / 1000))
    if not sp["rate_hz_min"] <= rate_hz <= sp["rate_hz_max"]:
        raise HuntError("rate_hz must be %g-%g Hz (got %g)" % (sp["rate_hz_min"], sp["rate_hz_max"], rate_hz))
    body: dict[str, Any] = {"output": int(st["probe"]["output"]), "lo_ua": lo, "hi_ua": hi, "resolution_ua": res,
                            "rate_mhz": int(round(rate_hz * 1000)), "channels": [int(c) for c in channels],
                            "p2p_uv": int(round(p2p_uv)), "window_ms": [int(window_ms[0]), int(window_ms[1])]}
    if max_pulses is not None:
        body["max_pulses"] = int(max_pulses)
    return body


class HuntListener:
    """Gathers one hunt's events (feed it every board event); wait() returns its result."""

    def __init__(self) -> None:
        self._cv = threading.Condition()
        self.pulses: list[HuntPulse] = []
        self.done: dict[str, Any] | None = None
        self.active = False

    def on_event(self, body: dict[str, Any]) -> None:
        kind = body.get("kind")
        if kind not in ("hunt-pulse", "hunt-done") or not self.active:
            return
        with self._cv:
            if kind == "hunt-pulse":
                chans = body["channels"]
                self.pulses.append(HuntPulse(int(body["index"]), body["current_ua"] / 1000.0,
                                             dict(zip(chans, body["p2p_uv"], strict=True)),
                                             dict(zip(chans, body["responses"], strict=True))))
            else:
                self.done = body
            self._cv.notify_all()

    def wait(self, timeout: float) -> HuntResult:
        deadline = time.monotonic() + timeout
        with self._cv:
            while self.done is None:
                left = deadline - time.monotonic()
                if left <= 0:
                    raise TimeoutError("no hunt-done within %.0f s (%d pulses so far)" % (timeout, len(self.pulses)))
                self._cv.wait(left)
            done = self.done
        self.active = False

        def ma(v: int | None) -> float | None:
            return None if v is None else v / 1000.0

        return HuntResult(str(done["reason"]), {r["channel"]: ma(r["threshold_ua"]) for r in done["results"]},
                          {r["channel"]: ma(r["below_ua"]) for r in done["results"]}, list(self.pulses),
                          int(done["pulses"]))


class Bisection:
    """The board's search (firmware/hunt.py Hunt: next_current, judge, results), line for line on the host, in µA: a
    source without a board (the simulated patient of `ionm console --sim --direct`) hunts exactly as the board
    would. Every pulse updates every channel's bracket; the next current bisects, on the DAC step, the bracket of
    the unresolved channel with the lowest `above`."""

    def __init__(self, n_channels: int, *, lo_ua: int, hi_ua: int, resolution_ua: int, step_ua: int,
                 max_pulses: int) -> None:
        self.lo, self.hi, self.res, self.step = int(lo_ua), int(hi_ua), int(resolution_ua), int(step_ua)
        self.max_pulses = int(max_pulses)
        self.n = int(n_channels)
        self.below = [self.lo - self.step] * self.n  # the hunt floor: nothing known yet
        self.above = [self.hi + self.step] * self.n  # the hunt ceiling
        self.pulses = 0
        self.reason: str | None = None

    def resolved(self, j: int) -> bool:
        return self.above[j] - self.below[j] <= self.res or self.above[j] <= self.lo or self.below[j] >= self.hi

    def next_current(self) -> int | None:
        best = -1
        for j in range(self.n):
            if not self.resolved(j) and (best < 0 or self.above[j] < self.above[best]):
                best = j
        if best < 0:
            self.reason = "done"
            return None
        if self.pulses >= self.max_pulses:
            self.reason = "pulses"
            return None
        b, a, step = self.below[best], self.above[best], self.step
        mid = (b + a) // 2 // step * step
        if mid <= b:
            mid = b + step
        if mid >= a:
            mid = a - step
        return min(max(mid, self.lo), self.hi)

    def judge(self, current_ua: int, responses: list[bool]) -> None:
        self.pulses += 1
        for j, r in enumerate(responses):
            if r:
                if current_ua < self.above[j]:
                    self.above[j] = current_ua
            elif current_ua > self.below[j]:
                self.below[j] = current_ua

    def results(self) -> list[tuple[int | None, int | None]]:
        """Per channel (threshold_ua, below_ua), as hunt-done reports them."""
        return [(a if a <= self.hi else None, b if b >= self.lo else None) for a, b in zip(self.above, self.below,
                                                                                          strict=True)]


def side_of(label: str, derivation: str) -> str | None:
    """'L' or 'R' for a muscle channel ('L tibialis anterior', 'TAL1-TAL2'); None when it says neither."""
    first = label.split()[0] if label.split() else ""
    if first in ("L", "R"):
        return first
    active = derivation.split("-")[0].rstrip("0123456789")
    return active[-1] if active and active[-1] in "LR" else None


def muscle_channels(montage: list[dict[str, str]], side: str) -> list[tuple[int, str]]:
    """The montage's muscle channels on `side` ('L'/'R') as (channel, name "DERIVATION (LABEL)"): the channels a
    screw on that side is tested on (its root's myotome is among them when the montage records it)."""
    return [(i, "%s (%s)" % (c["derivation"], c.get("label", ""))) for i, c in enumerate(montage)
            if c.get("kind") == "muscle" and side_of(str(c.get("label", "")), str(c["derivation"])) == side]


def host_hunt(respond: Any, channels: list[int], *, lo_ma: float, hi_ma: float, resolution_ma: float = 0.5,
              rate_hz: float = 5.0, p2p_uv: float = 100.0, max_pulses: int | None = None,
              stop: threading.Event | None = None, pace: float = 0.0, defn: dict[str, Any] | None = None
              ) -> HuntResult:
    """A hunt run on the host with the board's search (Bisection) against respond(k, current_ma) -> {channel:
    p2p µV} for pulse k: the source without a board. The request is checked as BoardSession.hunt checks it
    (HuntError before any pulse). pace: seconds between pulses (0: at once; a live simulation paces at the rate);
    stop: ends the hunt at once with reason "stopped"."""
    d = defn or board.load()
    body = request_body(channels, lo_ma=lo_ma, hi_ma=hi_ma, resolution_ma=resolution_ma, rate_hz=rate_hz,
                        p2p_uv=p2p_uv, max_pulses=max_pulses, defn=d)
    bis = Bisection(len(channels), lo_ua=body["lo_ua"], hi_ua=body["hi_ua"], resolution_ua=body["resolution_ua"],
                    step_ua=int(d["stimulator"]["current_step_ua"]),
                    max_pulses=int(body.get("max_pulses", d["safety"]["probe"]["hunt_pulses_max"])))
    pulses: list[HuntPulse] = []
    reason = "done"
    while True:
        if stop is not None and stop.is_set():
            reason = "stopped"
            break
        cur = bis.next_current()
        if cur is None:
            reason = str(bis.reason)
            break
        if pulses and pace > 0:
            if stop is not None and stop.wait(pace):
                reason = "stopped"
                break
            if stop is None:
                time.sleep(pace)
        got = respond(len(pulses), cur / 1000.0)
        p2p = {c: int(got.get(c, 0.0)) for c in channels}
        resp = {c: got.get(c, 0.0) >= body["p2p_uv"] for c in channels}
        bis.judge(cur, [resp[c] for c in channels])
        pulses.append(HuntPulse(len(pulses), cur / 1000.0, p2p, resp))
    res = bis.results()
    return HuntResult(reason, {c: None if t is None else t / 1000.0 for c, (t, _) in zip(channels, res, strict=True)},
                      {c: None if b is None else b / 1000.0 for c, (_, b) in zip(channels, res, strict=True)}, pulses)
