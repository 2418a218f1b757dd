"""EEG in carotid surgery (ionm.pipeline.eeg) on the simulated EEG (ionm_hw.physiology.eeg), seeds from SEED_BASE
(the tests use 131-135; these were not used in development).

- clamp: cea_clamp_ischaemia (a left clamp that starves the left hemisphere): time from the clamp to the
  ischaemia alert on the correct side (goal <= 30 s), runs without it, alerts on the wrong side;
- bolus: cea_anaesthetic_bolus (both hemispheres slow, burst suppression): ischaemia alerts (goal 0), and
  whether it was reported as global;
- stable: 30 min of unchanging EEG per run: any event, per hour (goal <= 1 per 8 h: 0 here).
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
    out: dict[str, Any] = {
        "runs": runs, "seeds": [SEED_BASE, SEED_BASE + 200 + runs - 1],
        "clamp_to_alert_s": [round(d, 1) for d in delays],
        "clamp_to_alert_s_median": round(float(np.median(delays)), 1) if delays else None,
        "clamp_to_alert_s_worst": round(max(delays), 1) if delays else None,
        "clamp_missed": missed, "wrong_side": wrong,
        "bolus_ischaemia_alerts": bolus_false, "bolus_reported_global": "%d/%d" % (bolus_global, runs),
        "stable_events": stable_events, "stable_hours": round(hours, 2),
        "goal": {"clamp_alert_le_30s": bool(delays) and max(delays) <= 30.0 and missed == 0 and wrong == 0,
                 "no_ischaemia_on_bolus": bolus_false == 0},
    }
    out["summary"] = [
        "carotid clamp: ischaemia alerted on the clamped side %s s after the clamp (median; worst %s s; goal <= 30 s),"
        " %d missed, %d on the wrong side, %d runs" % (out["clamp_to_alert_s_median"], out["clamp_to_alert_s_worst"],
                                                      missed, wrong, runs),
        "anaesthetic bolus: %d ischaemia alerts (goal 0), reported as global slowing in %s runs"
        % (bolus_false, out["bolus_reported_global"]),
        "stable EEG: %d events in %.1f h after the baseline" % (stable_events, hours),
    ]
    return out
