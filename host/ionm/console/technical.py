"""Technical alarms: the equipment is not monitoring, as distinct from a change in the patient.

A neurophysiological alert says the patient changed; a technical alarm says that the numbers on the screen
are no longer fed. Both must reach everyone watching, but they mean different things to the surgeon, so they
are shown apart (a blue band above the red alert band) and recorded apart (kind "technical"). A technical
alarm is active while its condition holds and clears itself when it ends; raising and clearing both enter
the timeline, the audit trail and the case record (so the report and the export show them).

Conditions, checked several times a second on the engine thread:
- stall: a stream whose stimulation is on delivered no sweep for longer than `stall_s` (default 2 s), or
  three of its intervals if those are longer: the intervals it has been arriving at, or the program's
  (a TcMEP train every 4 s is late after 12 s, not 2 s, from its first train on);
- stimulation stopped by the board (host silence, reset, output fault) while the program says it runs;
- lost samples above `loss_fraction` of those received over the last `loss_window_s`;
- the link not streaming (the board is being reconfigured, or the source failed);
- conditions the engine judges from the data themselves (`quality`: e.g. the EEG judgement held by artefact
  for EEG_HELD_S), raised while the engine reports them.
Board events (watchdog, host-lost, overrun, reset, the host's re-arm) are passed on one by one, numbered by
the source so that none is shown twice.
"""

from __future__ import annotations

import itertools
import statistics
from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

STALL_S = 2.0  # default: no sweep on a running stream for this long (s) is an alarm
STALL_INTERVALS = 3.0  # ...or this many of the stream's usual intervals, if longer
LOSS_FRACTION = 0.001  # lost samples above 0.1 % of those received ...
LOSS_WINDOW_S = 5.0  # ... over this window (s)
EEG_HELD_S = 10.0  # the EEG judgement held by artefact this long (case s) is an alarm: ischaemia could go unseen


@dataclass
class Alarm:
    key: str  # what it is about: "stall:ssep-upper/L median", "board-stim", "loss", "link"
    text: str
    since_t: float  # case time when raised (s)
    since_wall: float

    def frame(self) -> dict[str, Any]:
        return {"key": self.key, "text": self.text, "since_t": round(self.since_t, 2),
                "since_wall": round(self.since_wall, 3)}


class TechnicalAlarms:
    def __init__(self, stall_s: float = STALL_S, loss_fraction: float = LOSS_FRACTION,
                 loss_window_s: float = LOSS_WINDOW_S) -> None:
        self.stall_s = float(stall_s)
        self.loss_fraction = float(loss_fraction)
        self.loss_window_s = float(loss_window_s)
        self.active: dict[str, Alarm] = {}
        self._arrivals: dict[str, deque[float]] = {}  # stream -> wall times of its newest sweeps
        self._counts: deque[tuple[float, int, int]] = deque()  # (wall, samples lost, samples received)
        self._board_seq = 0

    def sweep(self, stream: str, wall: float) -> None:
        self._arrivals.setdefault(stream, deque(maxlen=9)).append(wall)

    def new_board_events(self, events: Iterable[dict[str, Any]]) -> list[dict[str, Any]]:
        """The events not passed on before (each carries the source's sequence number)."""
        out = [e for e in events if int(e.get("seq", 0)) > self._board_seq]
        if out:
            self._board_seq = max(int(e["seq"]) for e in out)
        return out

    def check(self, wall: float, t_s: float, running: set[str] | dict[str, float], link: dict[str, Any],
              quality: dict[str, str] | None = None) -> tuple[list[Alarm], list[Alarm]]:
        """Update the active alarms; returns (raised, cleared). `running`: the streams whose stimulation is on
        (empty once the source has ended), or a mapping of them to the interval their program stimulates at
        (s; 0 if not known). `quality`: key -> text of the data-quality conditions that hold now."""
        now: dict[str, str] = dict(quality or {})
        programmed = running if isinstance(running, dict) else dict.fromkeys(running, 0.0)
        for stream in sorted(programmed):
            arr = self._arrivals.get(stream)
            if not arr:
                continue  # not started yet: nothing to be late against
            silent = wall - arr[-1]
            usual = statistics.median(b - a for a, b in itertools.pairwise(arr)) if len(arr) > 2 else 0.0
            if silent > max(self.stall_s, STALL_INTERVALS * max(usual, programmed[stream])):
                # free-run EMG and EEG: continuous blocks, not sweeps
                what = "no data from" if stream.startswith(("emg/", "eeg/")) else "no sweep from"
                now["stall:" + stream] = "%s %s for %.0f s" % (what, stream, silent)
        stopped = link.get("stimulation_stopped")
        if stopped:
            now["board-stim"] = "stimulation stopped by the board: %s" % stopped
        state = link.get("state")
        if state not in (None, "streaming", "stopped"):
            now["link"] = "link %s%s" % (state, ": %s" % link["error"] if link.get("error") else "")
        if "samples_received" in link:
            self._counts.append((wall, int(link.get("samples_lost", 0)), int(link["samples_received"])))
            while len(self._counts) > 1 and wall - self._counts[1][0] >= self.loss_window_s:
                self._counts.popleft()
            (_, lost0, recv0), (_, lost1, recv1) = self._counts[0], self._counts[-1]
            lost, received = lost1 - lost0, recv1 - recv0
            if lost > 0 and lost > self.loss_fraction * max(received, 1):
                now["loss"] = "lost samples: %d of %d (%.2f %%) in the last %.0f s" % (
                    lost, lost + received, 100.0 * lost / (lost + received), wall - self._counts[0][0])
        raised = []
        for key, text in now.items():
            if key in self.active:
                self.active[key].text = text  # the running figure (seconds silent, samples lost)
            else:
                self.active[key] = Alarm(key, text, t_s, wall)
                raised.append(self.active[key])
        cleared = [self.active.pop(key) for key in list(self.active) if key not in now]
        return raised, cleared

    def frame(self) -> dict[str, Any]:
        return {"alarms": [a.frame() for a in self.active.values()]}
