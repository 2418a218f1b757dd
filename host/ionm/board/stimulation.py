"""The stimulation interface the console commands go through, bounded by the board's limits.

The console never talks to a stimulator directly: it validates a command against hardware/board.json
(validate()), then hands it to a Stimulation. RecordedStimulation keeps the program and records every
command (the simulated case reads its program from it); the live board's implementation (ionm.board.acquire)
sends the same commands to the firmware, which checks the same limits again.

Commands (dicts, "action" says which):
  {"action": "ssep", "output": 0..3, "enabled": bool, "current_ma", "width_us", "rate_hz"}
  {"action": "tcmep", "train_pulses", "ipi_ms", "repeat_s"}         the TcMEP program (repeat_s 0: on demand)
  {"action": "tcmep_train"}                                         deliver one train now (confirmed in the UI)
  {"action": "baep", "enabled", "level_db", "rate_hz", "polarity", "ear", "masking_db"}   BAEP clicks on the
                                                                    earphones (a program with a "baep" part: a
                                                                    montage with BAEP channels)
  {"action": "stop_all"}                                            every output off, TcMEP repeat off
  {"action": "resume"}                                              the program as it stands, started again (after
                                                                    the board stopped it and the host did not re-arm)
"""

from __future__ import annotations

import copy
import threading
import time
from typing import Any, Protocol

from ionm import board

SSEP_OUTPUTS = {0: "L median", 1: "R median", 2: "L tibial", 3: "R tibial"}
MAINS_HZ = (50.0, 60.0)


class StimulationError(ValueError):
    """A command outside the board's limits or not valid now."""


class Stimulation(Protocol):
    def limits(self) -> dict[str, Any]: ...

    def state(self) -> dict[str, Any]: ...

    def apply(self, command: dict[str, Any]) -> dict[str, Any]: ...


def limits(defn: dict[str, Any] | None = None) -> dict[str, Any]:
    """The limits the console enforces, from the board definition."""
    d = defn or board.load()
    st, sa = d["stimulator"], d["safety"]
    return {
        "outputs": int(st["outputs"]),
        "current_ma_max": min(float(st["current_ma_max"]), float(sa["current_ma_max"])),
        "current_step_ma": float(st["current_step_ua"]) / 1000.0,
        "width_us_min": max(int(st["width_us_min"]), int(sa["width_us_min"])),
        "width_us_max": min(int(st["width_us_max"]), int(sa["width_us_max"])),
        "width_step_us": int(st["width_step_us"]),
        "charge_uc_per_phase_max": float(sa["charge_uc_per_phase_max"]),
        "energy_mj_per_pulse_max": float(sa["energy_mj_per_pulse_max"]),
        "energy_reference_ohm": float(sa["energy_reference_ohm"]),
        "rate_hz_max_per_output": float(sa["rate_hz_max_per_output"]),
        "rate_hz_max_total": float(sa["rate_hz_max_total"]),
        "train_pulses_max": int(sa["train_pulses_max"]),
        "train_ipi_ms_min": float(sa["train_ipi_us_min"]) / 1000.0,
        "train_ipi_ms_max": float(sa["train_ipi_us_max"]) / 1000.0,
        "tcmep_interval_s_min": float(sa["tcmep_train_interval_ms_min"]) / 1000.0,
        "click_level_db_max": min(int(st["auditory"]["level_db_nhl_max"]), int(sa["auditory"]["level_db_nhl_max"])),
        "masking_db_max": int(sa["auditory"]["masking_db_max"]),
        "click_rate_hz_min": float(sa["auditory"]["rate_hz_min"]),
        "click_rate_hz_max": float(sa["auditory"]["rate_hz_max"]),
    }


POLARITIES = ("rarefaction", "condensation", "alternating")
# BAEP clicks as a neurophysiologist starts them: 80 dB nHL, 21.1 Hz (not a mains divisor), alternating polarity
# (the cochlear microphonic cancels), the other ear masked 30 dB below the click
DEFAULT_BAEP = {"enabled": True, "level_db": 80, "rate_hz": 21.1, "polarity": "alternating", "ear": "L",
                "masking_db": 50}


def default_program(scenario: dict[str, Any] | None = None) -> dict[str, Any]:
    """Every SSEP output on at the scenario's plan (or typical values), TcMEP on demand."""
    plan = (scenario or {}).get("stimulation", {})
    ssep = plan.get("ssep", {})
    rate = float(ssep.get("rate_hz", 4.7))
    outs = {}
    for o, name in SSEP_OUTPUTS.items():
        site = ssep.get("outputs", {}).get(str(o), {})
        lower = o >= 2
        outs[str(o)] = {"site": name, "enabled": True,
                        "current_ma": float(site.get("current_ma", 35.0 if lower else 25.0)),
                        "width_us": int(site.get("width_us", 300 if lower else 200)), "rate_hz": rate}
    tc = plan.get("tcmep", {})
    return {"ssep": outs, "tcmep": {"train_pulses": int(tc.get("train_pulses", 5)),
                                    "ipi_ms": float(tc.get("ipi_ms", 3.0)), "repeat_s": 0.0}}


def _on_step(value: float, step: float) -> bool:
    return abs(value / step - round(value / step)) < 1e-6


def validate(cmd: dict[str, Any], program: dict[str, Any], lim: dict[str, Any]) -> dict[str, Any]:
    """The program after `cmd`, or StimulationError saying which limit it breaks."""
    new = copy.deepcopy(program)
    action = cmd.get("action")
    if action == "ssep":
        o = str(int(cmd.get("output", -1)))
        if o not in new["ssep"]:
            raise StimulationError("no SSEP output %s" % o)
        out = new["ssep"][o]
        for k, cast in (("enabled", bool), ("current_ma", float), ("width_us", int), ("rate_hz", float)):
            if k in cmd:
                out[k] = cast(cmd[k])
        i, w, r = out["current_ma"], out["width_us"], out["rate_hz"]
        if not 0 <= i <= lim["current_ma_max"]:
            raise StimulationError("current %.1f mA outside 0..%.1f mA" % (i, lim["current_ma_max"]))
        if not _on_step(i, lim["current_step_ma"]):
            raise StimulationError("current must be a multiple of %.1f mA" % lim["current_step_ma"])
        if not lim["width_us_min"] <= w <= lim["width_us_max"] or w % lim["width_step_us"]:
            raise StimulationError("pulse width %d µs outside %d..%d µs in steps of %d" % (
                w, lim["width_us_min"], lim["width_us_max"], lim["width_step_us"]))
        charge = i * w / 1000.0  # µC per phase
        if charge > lim["charge_uc_per_phase_max"]:
            raise StimulationError("charge %.1f µC per phase above %.0f µC" % (charge, lim["charge_uc_per_phase_max"]))
        energy = (i / 1000.0) ** 2 * lim["energy_reference_ohm"] * w * 1e-6 * 1000.0  # mJ
        if energy > lim["energy_mj_per_pulse_max"]:
            raise StimulationError("energy %.1f mJ per pulse above %.0f mJ" % (energy, lim["energy_mj_per_pulse_max"]))
        if not 0 < r <= lim["rate_hz_max_per_output"]:
            raise StimulationError("rate %.2f Hz outside 0..%.0f Hz" % (r, lim["rate_hz_max_per_output"]))
        for mains in MAINS_HZ:  # an exact divisor keeps mains at one phase in every sweep: it survives averaging
            if _on_step(mains / r, 1.0):
                raise StimulationError("rate %.2f Hz divides %g Hz mains: choose e.g. %.1f Hz" % (r, mains, r + 0.1))
        total = sum(v["rate_hz"] for v in new["ssep"].values() if v["enabled"])
        if total > lim["rate_hz_max_total"]:
            raise StimulationError("total rate %.1f Hz above %.0f Hz" % (total, lim["rate_hz_max_total"]))
    elif action == "tcmep":
        tc = new["tcmep"]
        for k, cast in (("train_pulses", int), ("ipi_ms", float), ("repeat_s", float)):
            if k in cmd:
                tc[k] = cast(cmd[k])
        if not 1 <= tc["train_pulses"] <= lim["train_pulses_max"]:
            raise StimulationError("train of %d pulses outside 1..%d" % (tc["train_pulses"], lim["train_pulses_max"]))
        if not lim["train_ipi_ms_min"] <= tc["ipi_ms"] <= lim["train_ipi_ms_max"]:
            raise StimulationError("inter-pulse interval %.1f ms outside %.1f..%.1f ms" % (
                tc["ipi_ms"], lim["train_ipi_ms_min"], lim["train_ipi_ms_max"]))
        if tc["repeat_s"] and tc["repeat_s"] < lim["tcmep_interval_s_min"]:
            raise StimulationError("TcMEP trains at least %.0f s apart" % lim["tcmep_interval_s_min"])
    elif action == "baep":
        if "baep" not in new:
            raise StimulationError("this montage records no BAEP (no Cz-A1/Cz-A2 channels): no clicks to program")
        b = new["baep"]
        casts: dict[str, Any] = {"enabled": bool, "level_db": int, "rate_hz": float, "polarity": str, "ear": str,
                                 "masking_db": int}
        for k, cast in casts.items():
            if k in cmd:
                b[k] = cast(cmd[k])
        if not 0 <= b["level_db"] <= lim["click_level_db_max"]:
            raise StimulationError("click level %d dB nHL outside 0..%d" % (b["level_db"], lim["click_level_db_max"]))
        if not 0 <= b["masking_db"] <= min(lim["masking_db_max"], b["level_db"]):
            raise StimulationError("masking %d dB outside 0..%d (and never above the click)" % (
                b["masking_db"], min(lim["masking_db_max"], b["level_db"])))
        if not lim["click_rate_hz_min"] <= b["rate_hz"] <= lim["click_rate_hz_max"]:
            raise StimulationError("click rate %.1f Hz outside %.0f..%.0f Hz" % (
                b["rate_hz"], lim["click_rate_hz_min"], lim["click_rate_hz_max"]))
        for mains in MAINS_HZ:
            if _on_step(mains / b["rate_hz"], 1.0):
                raise StimulationError("click rate %.2f Hz divides %g Hz mains: choose e.g. 21.1 Hz" % (b["rate_hz"],
                                                                                                     mains))
        if b["polarity"] not in POLARITIES or b["ear"] not in ("L", "R"):
            raise StimulationError("polarity one of %s, ear L or R" % ", ".join(POLARITIES))
    elif action == "stop_all":
        for v in new["ssep"].values():
            v["enabled"] = False
        new["tcmep"]["repeat_s"] = 0.0
        if "baep" in new:
            new["baep"]["enabled"] = False
    elif action not in ("tcmep_train", "resume"):
        raise StimulationError("unknown stimulation action %r" % action)
    return new


class ProgramHolder:
    """The program and the limits it is checked against, behind a lock (the web server sets, sources read)."""

    def __init__(self, program: dict[str, Any] | None = None, defn: dict[str, Any] | None = None):
        self._limits = limits(defn)
        self._program = copy.deepcopy(program or default_program())
        self._lock = threading.Lock()

    def limits(self) -> dict[str, Any]:
        return dict(self._limits)

    def state(self) -> dict[str, Any]:
        with self._lock:
            return copy.deepcopy(self._program)


class RecordedStimulation(ProgramHolder):
    """Keeps the program and records every command; the simulated case reads program() and takes the trains
    requested on demand. Thread-safe (the web server sets, the simulated source reads)."""

    def __init__(self, program: dict[str, Any] | None = None, defn: dict[str, Any] | None = None):
        super().__init__(program, defn)
        self._trains: list[float] = []  # wall times of trains requested on demand
        self._last_train = -1e9
        self.log: list[dict[str, Any]] = []

    def apply(self, command: dict[str, Any]) -> dict[str, Any]:
        with self._lock:
            new = validate(command, self._program, self._limits)
            if command.get("action") == "tcmep_train":
                now = time.monotonic()
                if now - self._last_train < self._limits["tcmep_interval_s_min"]:
                    raise StimulationError("TcMEP trains at least %.0f s apart" % self._limits["tcmep_interval_s_min"])
                self._last_train = now
                self._trains.append(now)
            self._program = new
            self.log.append({"wall": time.time(), "command": dict(command)})
            return copy.deepcopy(new)

    def take_trains(self) -> int:
        """Trains requested since the last call (the simulated case delivers them)."""
        with self._lock:
            n, self._trains = len(self._trains), []
            return n
