"""Scripted simulated cases: a whole case run unattended through the engine, for tests, demos and reports.

injury_scenario() moves a scenario's scripted injury early (so a short case reaches it); run_case() plays a
simulated case as fast as the host can through a CaseEngine on a store, doing the given actions (set a
baseline, acknowledge, note, stimulate, close) when the case reaches their times.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

from ionm.board.simcase import SimulatedCase
from ionm.board.stimulation import RecordedStimulation, default_program
from ionm.case.store import CaseStore
from ionm.console.engine import CaseEngine


def injury_scenario(onset_s: float, name: str = "acute_cord_injury", ramp_s: float = 1.0) -> dict[str, Any]:
    """A scenario with its change events moved to onset_s (and ramps shortened to ramp_s)."""
    from ionm_hw.patient import load_scenario

    sc = load_scenario(name)
    for ev in sc["events"]:
        if ev.get("type") == "change":
            ev["onset_s"], ev["ramp_s"] = float(onset_s), float(ramp_s)
    return sc


def run_case(store: CaseStore, scenario: dict[str, Any], *, duration_s: float, seed: int = 1,
             mep_every: float = 1.0, ssep: bool = True, patient_id: str = "TEST-1", procedure: str = "simulated",
             actions: list[tuple[float, Callable[[CaseEngine], Any]]] | None = None,
             timeout_s: float = 300.0, speed: float = 0.0) -> tuple[CaseEngine, int]:
    """Run a simulated case to its end (unpaced, or at `speed` times real time, as a live case runs); returns the
    stopped engine and the case id."""
    program = default_program(scenario)
    program["tcmep"]["repeat_s"] = mep_every
    if not ssep:
        for out in program["ssep"].values():
            out["enabled"] = False
    stim = RecordedStimulation(program)
    cid = store.open_case(patient_id=patient_id, procedure=procedure,
                          meta={"source": "sim", "scenario": scenario.get("name"), "seed": seed})
    engine = CaseEngine(store, cid, stimulation=stim, queue_size=32 if speed <= 0 else 2048)
    for t, fn in actions or []:
        engine.at(t, functools.partial(fn, engine))
    source = SimulatedCase(scenario, seed, speed=speed, stimulation=stim, duration_s=duration_s)
    engine.link_health = source.link_health
    engine.probe = source  # screw tests against the simulated patient's probe model
    engine.start()
    engine.run_source(source)
    if not engine.wait_idle(timeout_s):
        engine.stop()
        raise TimeoutError("simulated case did not finish in %.0f s" % timeout_s)
    engine.stop()
    return engine, cid


def command(user: str, role: str, msg: dict[str, Any]) -> Callable[[CaseEngine], Any]:
    """An action for run_case: a user command, executed on the engine thread (as the web console would)."""
    return lambda engine: engine._command(user, role, msg)


def ack_all(user: str, role: str, note: str) -> Callable[[CaseEngine], Any]:
    """An action: acknowledge every alert raised so far."""
    def act(engine: CaseEngine) -> None:
        for a in engine.alerts.unacked():
            engine._command(user, role, {"cmd": "ack", "alert": a["uid"], "note": note})
    return act
