"""EEG in carotid surgery (ionm.pipeline.eeg) on the simulated EEG (ionm_hw.physiology.eeg), seeds from SEED_BASE
(the tests use 131-135; these were not used in development).

- clamp: cea_clamp_ischaemia (a left clamp that starves the left hemisphere): time from the clamp to the
  ischaemia alert on the correct side (goal <= 30 s), runs without it, alerts on the wrong side;
- bolus: cea_anaesthetic_bolus (both hemispheres slow, burst suppression): ischaemia alerts (goal 0), and
  whether it was reported as global;
- stable: 30 min of unchanging EEG per run: any event, per hour (goal <= 1 per 8 h: 0 here);
- artefacts: the stable runs again and the clamp runs, with the operating room's artefacts (a cautery bout of
  2-10 s on one side every 2 min, an electrode pop every 3 min: ionm_hw.physiology.eeg), judged with the
  artefact rejection and, as the reference measured in the same run, without it (its limits set out of reach):
  events on the stable EEG (goal 0), the clamp's time to alert, and the share of channel-epochs rejected.
The baseline is set as a technologist would before the clamp: at 240 s, from 60 s on. Each record is pushed a
second at a time, as a stream.
"""

from __future__ import annotations

from typing import Any

import numpy as np

SEED_BASE = 9500
BASELINE_AT_S = 240.0
BASELINE_FROM_S = 60.0


def _monitor(rec: Any) -> Any:
    from ionm.pipeline import eeg

    mon = eeg.EegMonitor(rec.fs_hz, rec.channel_names)
    n = int(rec.fs_hz)
    for i in range(0, rec.samples_uv.shape[1], n):
        mon.push(rec.samples_uv[:, i:i + n])
        if mon.baseline is None and mon.epochs and mon.epochs[-1].t_s >= BASELINE_AT_S:
            mon.set_baseline(BASELINE_FROM_S)
    return mon


def _artefacts(duration_s: float, names: list[str], seed: int, after_s: float) -> list[dict[str, Any]]:
    """Cautery bouts (2-10 s, one side, 300 µV rms) every ~120 s and pops (300-800 µV) every ~180 s, after after_s."""
    g = np.random.default_rng(seed)
    out: list[dict[str, Any]] = []
    t = after_s + g.uniform(0, 120)
    while t < duration_s - 15:
        out.append({"kind": "cautery", "onset_s": round(t, 2), "duration_s": round(g.uniform(2, 10), 2),
                    "side": str(g.choice(["L", "R"])), "uv": 300.0})
        t += g.uniform(60, 180)
    t = after_s + g.uniform(0, 180)
    while t < duration_s - 5:
        out.append({"kind": "pop", "t_s": round(t, 2), "channel": str(g.choice(names)),
                    "uv": round(g.uniform(300, 800), 1)})
        t += g.uniform(90, 270)
    return out


def _rejection(on: bool) -> Any:
    """A context manager: the monitor as it is (on), or with its artefact limits out of reach (the reference)."""
    import contextlib

    from ionm.pipeline import eeg

    @contextlib.contextmanager
    def limits() -> Any:
        saved = eeg.ARTEFACT_UV, eeg.HF_UV, eeg.POWER_JUMP
        if not on:
            eeg.ARTEFACT_UV = eeg.HF_UV = eeg.POWER_JUMP = float("inf")
        try:
            yield
        finally:
            eeg.ARTEFACT_UV, eeg.HF_UV, eeg.POWER_JUMP = saved
    return limits()


def _artefact_pass(quick: bool, runs: int) -> dict[str, Any]:
    """Each recording rendered once and judged twice, with the rejection and without it."""
    from ionm_hw.physiology import eeg as sim

    clamp = sim.load_scenario("cea_clamp_ischaemia")
    names = list(clamp["channels"])
    stable_s = 600.0 if quick else 1800.0
    tally = {label: {"events": 0, "rejected": 0, "cells": 0, "missed": 0, "delays": []}
             for label in ("rejection", "without")}
    for i in range(runs):
        seed = SEED_BASE + 300 + i
        stable = sim.render(stable_s, 250.0, names, _artefacts(stable_s, names, seed, BASELINE_AT_S), seed)
        script = clamp["events"] + _artefacts(float(clamp["duration_s"]), names, seed + 50, BASELINE_AT_S)
        clamped = sim.render(float(clamp["duration_s"]), 250.0, names, script, seed + 50)
        for label, tl in tally.items():
            with _rejection(label == "rejection"):
                mon = _monitor(stable)
                tl["events"] += sum(1 for e in mon.events if e.kind != "recovered")
                tl["rejected"] += int(mon.rejected.sum())
                tl["cells"] += len(mon.epochs) * len(names)
                mon = _monitor(clamped)
            hits = [e for e in mon.events if e.kind == "ischaemia" and e.t_s > clamp["clamp_s"] and e.side == "L"]
            tl["events"] += sum(1 for e in mon.events if e.kind != "recovered" and e.t_s <= clamp["clamp_s"])
            if hits:
                tl["delays"].append(hits[0].t_s - clamp["clamp_s"])
            else:
                tl["missed"] += 1
    res: dict[str, Any] = {}
    for label, tl in tally.items():
        d = tl["delays"]
        res[label] = {"stable_and_preclamp_events": tl["events"],
                      "rejected_pct": round(100.0 * tl["rejected"] / max(tl["cells"], 1), 2),
                      "clamp_to_alert_s_median": round(float(np.median(d)), 1) if d else None,
                      "clamp_to_alert_s_worst": round(max(d), 1) if d else None, "clamp_missed": tl["missed"]}
    res["hours"] = round(runs * (stable_s - BASELINE_AT_S + clamp["clamp_s"] - BASELINE_AT_S) / 3600.0, 2)
    return res


def run(quick: bool = False) -> dict[str, Any]:
    from ionm_hw.physiology import eeg as sim

    runs = 3 if quick else 10
    clamp = sim.load_scenario("cea_clamp_ischaemia")
    delays: list[float] = []
    missed = wrong = 0
    for i in range(runs):
        mon = _monitor(sim.render_scenario("cea_clamp_ischaemia", SEED_BASE + i))
        hits = [e for e in mon.events if e.kind == "ischaemia" and e.t_s > clamp["clamp_s"]]
        wrong += sum(1 for e in mon.events if e.kind == "ischaemia" and e.side != "L")
        if hits and hits[0].side == "L":
            delays.append(hits[0].t_s - clamp["clamp_s"])
        else:
            missed += 1
    bolus_false = 0
    bolus_global = 0
    for i in range(runs):
        mon = _monitor(sim.render_scenario("cea_anaesthetic_bolus", SEED_BASE + 100 + i))
        bolus_false += sum(1 for e in mon.events if e.kind == "ischaemia")
        bolus_global += int(any(e.kind == "global" for e in mon.events))
    stable_events = 0
    stable_s = 600.0 if quick else 1800.0
    names = clamp["channels"]
    for i in range(runs):
        mon = _monitor(sim.render(stable_s, 250.0, names, [], SEED_BASE + 200 + i))
        stable_events += len(mon.events)
    hours = runs * (stable_s - BASELINE_AT_S) / 3600.0
    art = _artefact_pass(quick, runs)
    out: dict[str, Any] = {
        "runs": runs, "seeds": [SEED_BASE, SEED_BASE + 200 + runs - 1],
        "clamp_to_alert_s": [round(d, 1) for d in delays],
        "clamp_to_alert_s_median": round(float(np.median(delays)), 1) if delays else None,
        "clamp_to_alert_s_worst": round(max(delays), 1) if delays else None,
        "clamp_missed": missed, "wrong_side": wrong,
        "bolus_ischaemia_alerts": bolus_false, "bolus_reported_global": "%d/%d" % (bolus_global, runs),
        "stable_events": stable_events, "stable_hours": round(hours, 2), "artefacts": art,
        "goal": {"clamp_alert_le_30s": bool(delays) and max(delays) <= 30.0 and missed == 0 and wrong == 0,
                 "no_ischaemia_on_bolus": bolus_false == 0,
                 "no_event_from_artefacts": art["rejection"]["stable_and_preclamp_events"] == 0,
                 "clamp_alert_le_30s_with_artefacts": art["rejection"]["clamp_missed"] == 0
                 and (art["rejection"]["clamp_to_alert_s_worst"] or 1e9) <= 30.0},
    }
    out["summary"] = [
        "carotid clamp: ischaemia alerted on the clamped side %s s after the clamp (median; worst %s s; goal <= 30 s),"
        " %d missed, %d on the wrong side, %d runs" % (out["clamp_to_alert_s_median"], out["clamp_to_alert_s_worst"],
                                                      missed, wrong, runs),
        "anaesthetic bolus: %d ischaemia alerts (goal 0), reported as global slowing in %s runs"
        % (bolus_false, out["bolus_reported_global"]),
        "stable EEG: %d events in %.1f h after the baseline" % (stable_events, hours),
    ]
    for label in ("rejection", "without"):
        a = art[label]
        out["summary"].append(
            "with OR artefacts, %s artefact rejection: %d events on stable and pre-clamp EEG (goal 0) in %.1f h; clamp"
            " alerted %s s after it (median; worst %s s), %d missed; %.2f %% of channel-epochs rejected"
            % ("with" if label == "rejection" else "WITHOUT (reference)", a["stable_and_preclamp_events"],
               art["hours"], a["clamp_to_alert_s_median"], a["clamp_to_alert_s_worst"], a["clamp_missed"],
               a["rejected_pct"]))
    return out
