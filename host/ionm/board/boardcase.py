"""The board as the console's source: sweeps from the live stream, stimulation through the firmware, and
link health. Works with the reference board or the virtual board alike (both are a serial port).

Stimulation commands are validated here against the board definition (the console's own check, for a clear
message) and then sent as firmware programs, which the board validates again: enabled SSEP outputs become
pulse programs interleaved within one period (e.g. four outputs at 4.7 Hz a quarter period apart), and the
TcMEP program is a trigger-train program started on demand or repeating. After a board reset the session
resumes acquisition and stimulation stays off until the technologist turns it on again.
"""

from __future__ import annotations

import copy
from collections.abc import Iterator
from typing import Any

from ionm.board.acquire import BoardSession, LiveCase, SweepSpec
from ionm.board.stimulation import SSEP_OUTPUTS, ProgramHolder, StimulationError, validate
from ionm.sweep import Sweep

RATE_HZ = 8000  # SSEP wants >= 5-10 kHz; 16 channels at 8 kHz use 80 % of the USB link budget
SAMPLES_PER_FRAME = 64
WINDOW_MS = {"ssep-upper": (5.0, 50.0), "ssep-lower": (5.0, 90.0), "mep": (15.0, 85.0)}


def default_montage() -> list[dict[str, str]]:
    """The standard 16-channel montage (the same one the virtual patient is wired to)."""
    from ionm_hw.physiology.montage import DEFAULT_MONTAGE

    return DEFAULT_MONTAGE


class BoardCase(ProgramHolder):
    def __init__(self, port: str, montage: list[dict[str, str]] | None = None,
                 program: dict[str, Any] | None = None) -> None:
        super().__init__(program)
        self.montage = montage or default_montage()
        self.names = {i: "%s (%s)" % (c["derivation"], c["label"]) for i, c in enumerate(self.montage)}
        self.case = LiveCase({}, self.names)
        self._leadoff = 0
        self._events: list[dict[str, Any]] = []
        self.session = BoardSession(port, on_data=self._data, on_event=self._event)
        conf = self.session.configure({"rate_hz": RATE_HZ, "samples_per_frame": SAMPLES_PER_FRAME})
        self.case.set_configuration(conf)
        self.session.start()
        self._tcmep_index = -1
        self._load(self._program)

    # -- the console's Stimulation interface (limits and state from ProgramHolder) ---------------------------
    def apply(self, command: dict[str, Any]) -> dict[str, Any]:
        from ionm.board import link as ln

        with self._lock:
            new = validate(command, self._program, self._limits)
            try:
                if command.get("action") == "tcmep_train":
                    self.session.start_stimulation(self._tcmep_index)
                else:
                    self._load(new)
            except ln.BoardError as exc:  # the board's own limits refused it: say so, change nothing
                raise StimulationError("the board refused: %s" % exc.detail) from None
            self._program = new
            return copy.deepcopy(new)

    def _load(self, program: dict[str, Any]) -> None:
        """Send the program to the board and start what should run."""
        programs: list[dict[str, Any]] = []
        specs: dict[int, SweepSpec] = {}
        enabled = [(int(o), v) for o, v in sorted(program["ssep"].items()) if v["enabled"]]
        for k, (o, v) in enumerate(enabled):
            rate_mhz = int(round(v["rate_hz"] * 1000))
            phase_us = int(k * 1e9 / rate_mhz / len(enabled))  # interleaved within one period
            programs.append({"kind": "pulse", "output": o, "current_ua": int(round(v["current_ma"] * 1000)),
                             "width_us": int(v["width_us"]), "rate_mhz": rate_mhz, "phase_us": phase_us})
            modality = "ssep-upper" if o < 2 else "ssep-lower"
            specs[len(programs) - 1] = self._spec(modality, SSEP_OUTPUTS[o])
        tc = program["tcmep"]
        programs.append({"kind": "tcmep", "count": int(tc["train_pulses"]), "ipi_us": int(round(tc["ipi_ms"] * 1000)),
                         "interval_ms": int(round(tc["repeat_s"] * 1000))})
        self._tcmep_index = len(programs) - 1
        specs[self._tcmep_index] = self._spec("mep", "TcMEP", train=int(tc["train_pulses"]))
        self.session.stop_stimulation()
        self.session.load_programs(programs)
        self.case.set_specs(specs)
        for i in range(len(enabled)):
            self.session.start_stimulation(i)
        if tc["repeat_s"]:
            self.session.start_stimulation(self._tcmep_index)

    def _spec(self, modality: str, source: str, train: int = 1) -> SweepSpec:
        pre, post = WINDOW_MS[modality]
        channels = tuple(i for i, c in enumerate(self.montage) if c["modality"] == modality)
        return SweepSpec(modality, source, channels, pre, post, train=train)

    # -- the stream ---------------------------------------------------------------------------------------
    def _data(self, block: Any) -> None:
        self._leadoff = block.leadoff
        self.case.on_data(block)

    def _event(self, body: dict[str, Any]) -> None:
        self.case.on_event(body)
        kind = body.get("kind")
        session = getattr(self, "session", None)  # (events arrive while the session is being opened)
        reset = kind == "boot" and session is not None and session.link.handshaken  # a boot mid-case
        if kind in ("watchdog", "fault", "overrun", "recovered", "host-lost") or reset:
            self._events.append(body)
        if kind == "recovered":
            with self._lock:  # the board reset: stimulation is off until the technologist resumes it
                for v in self._program["ssep"].values():
                    v["enabled"] = False
                self._program["tcmep"]["repeat_s"] = 0.0

    def link_health(self) -> dict[str, Any]:
        s = self.session.link.stats
        board = self.session.welcome["info"]["board"]
        return {
            "source": "board %s (%s)" % (board["serial"], board["support"]),
            "state": "recovering" if self.session.recovering.is_set() else "streaming",
            "samples_lost": s.samples_lost,
            "frames_rejected": s.frames_rejected,
            "board_resets": s.board_resets,
            "sweeps": self.case.sweeps_cut,
            "leadoff": [self.names[i] for i in range(len(self.names)) if self._leadoff >> i & 1],
            "events": [e.get("detail") or e.get("kind") for e in self._events[-5:]],
        }

    # -- the console's source protocol ------------------------------------------------------------------
    def __iter__(self) -> Iterator[Sweep]:
        yield from self.case.sweeps()

    def close(self) -> None:
        self.case.close()
        try:
            self.session.stop_stimulation()
        except Exception:  # closing after the board is gone must not raise
            pass
        self.session.close()
