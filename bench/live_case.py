"""Live-case benchmark: the real console engine on the virtual board, every scenario, idle and under load.

run(quick=False) -> dict. Each scenario of hardware/scenarios runs as `ionm console --sim --mep-every 4` runs it,
without the web server: the virtual board (the firmware on MicroPython, the hardware model paced in real time)
→ ionm.board.boardcase.BoardCase → ionm.console.engine.CaseEngine recording into a case store (a subscriber
takes the engine's frames, so their JSON encoding costs what it costs with a console open). The technologist's
part is played as docs/CONSOLE.md tells it: B (baseline, all streams) once the case has run BASELINE_AT_S
(a minute), through the engine's command path (role checked, audited). Then:

- scoring, per channel of every stream (SSEP sites and TcMEP), against the scenario's scripted truth (below):
  missed events, time to alert, false alerts per 8 h of post-baseline monitoring, duplicate alerts;
- agreement with `ionm evaluate`: every stream's recorded sweeps are read back from the case store, written as
  a sweep file and evaluated by ionm.pipeline.offline.evaluate (what `ionm evaluate FILE.npz` runs), (a) for each
  evaluator the engine swapped in (B, and any rebuild the engine made by itself): from the first sweep of its
  baseline, with baseline_end_s = the baseline's last sweep, up to the last sweep it evaluated before the next
  one was swapped in: exactly the sweeps that live evaluator saw, so both being causal the alerts must be
  identical to the sweep; (b) the whole recording with
  baseline_end_s = when B was pressed (what a reader would give `ionm evaluate` for this case). Every alert in
  one list and not the other (stream, channel, criterion, sweep time) is a difference.

Both passes run the same scenarios with the same seeds: "idle" (nothing added) and "loaded" (HOGS processes
`python -c 'while True: pass'` started here for the pass, as ../shared/checks/under-load does, and killed
after). The 1-min load average at the start of each pass is reported: run from under-load, the idle pass is
loaded too.

Time. The scenarios last 15-30 min of case time each, twice; in real time that is hours. Each scenario's events
are moved to start at EVENTS_AT_S (like `ionm console --events-at`): once every baseline is complete, at most
BASELINE_SWEEPS_MAX SSEP sweeps after the case began, as the docs tell the technologist to wait for. In the
default ("compact") plan, the stretches between its event keypoints (onset, end of ramp, recovery onset, end of
recovery, lead-off end, ...) where a truth changes are shortened to SEGMENT_MAX_S, and those where every truth
holds its level to PLATEAU_MAX_S: short ramps keep their real speed (an injury over 20 s stays 20 s), slow ones
become faster (limb_positioning's 10-min decline takes 30 s) and long plateaus shorter (90 s), except a plateau
held just past a criterion (_near_criterion: limb_positioning's 7 min at 45 %, 5 % past the SSEP criterion),
which keeps its real length: cut to 90 s (~400 sweeps) no test can tell 45 % from 50 %, and the offline
evaluator alerts 1-4 min into the real one. Each case ends TAIL_S after its last keypoint, and at least
MIN_OBSERVED_S after B. Each scenario's plan (the mapping of keypoints) is in the details. IONM_BENCH_LIVE_CASE=natural
keeps every event's timing (only moved; about an hour per pass). quick: one scenario (acute_cord_injury),
both passes, ~15 min. IONM_BENCH_LIVE_CASE_SCENARIOS=a,b runs those scenarios only, and
IONM_BENCH_LIVE_CASE_PASSES=idle (or loaded) that pass only; IONM_BENCH_LIVE_CASE_KEEP=DIR keeps the case
stores in DIR, a new directory (one per pass and scenario) for `ionm replay` or a look at the sweeps.
Every scenario, compact:
about 68 min of case time per pass (the fusion scenarios' probe events are no keypoints: the bench never
stimulates the probe, so they run as long as stable), so about 2 h 20 min in all.

Truth. The virtual patient (ionm_hw.patient.VirtualPatient, same scenario and seed as the board) says which
responses each stimulated site evokes and how strongly each channel records each of them; a channel's truth is
its dominant response's scripted (amplitude, latency) factors (Script.factors), sampled at the stream's sweep
times after the baseline. An event is a stretch where that truth meets the modality's alert criterion (SSEP:
amplitude <= 50 % or latency >= 110 %, bench.detection._events; MEP: amplitude <= 20 %). Scoring reuses
bench.detection._score (an alert up to GRACE_S after an event still counts as its detection):

- an event's window: from where the truth began its change into the event (alert_windows: an alert while the
  truth is already falling is early, not false) to GRACE_S after the event;
- missed: an event of a response with no alert in its window on any channel that records it (its pool);
- time to alert (per event, first alert on any of its channels; negative when early): SSEP in seconds, from the
  first sweep meeting the criterion to the wall-clock moment the engine raised the alert (the decisive sweep's
  case time plus the engine's lag behind the fastest sweep, see lag); MEP in trains (the decisive train
  counted, first train meeting the criterion = 1, 0 when early);
- false: an alert on a channel outside its own events' windows (a channel whose truth never changes: every
  alert); per 8 h of post-baseline monitoring, summed over the pass's cases, with the worst case's own rate;
- duplicate: a channel's second and later alerts inside one event's window.

The offline evaluation (a) is scored the same way (without lag): ratio of the SSEP time-to-alert medians,
live / offline on the same sweeps.
"""

from __future__ import annotations

import copy
import json
import math
import os
import resource
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from bench.detection import GRACE_S, _events, _score
from ionm.console.engine import BASELINE_SWEEPS_MAX

QUICK_SCENARIOS = ["acute_cord_injury"]
SEED_BASE = 7_350_000  # patient seed of the i-th scenario (sorted by name): seeds no test or development run used
BASELINE_AT_S = 60.0  # B "after a minute or two" (docs/CONSOLE.md): 282 SSEP sweeps per site, the last 6 trains
# The first event starts once every baseline is complete, as docs/CONSOLE.md tells the technologist to wait for
# "completed by itself" before the steps that matter: a baseline collects at most BASELINE_SWEEPS_MAX SSEP sweeps
# from the start of the case, 1200 at 4.7 Hz less the pulses held for TcMEP trains (~5 %) = ~270 s; then 20 s.
SSEP_RATE_HZ, HOLDOFF_LOSS = 4.7, 0.05
EVENTS_AT_S = math.ceil(BASELINE_SWEEPS_MAX["ssep"] / (SSEP_RATE_HZ * (1 - HOLDOFF_LOSS)) + 20.0)
SEGMENT_MAX_S = 30.0  # compact plan: no stretch between event keypoints longer than this, where the truth moves,
PLATEAU_MAX_S = 90.0  # ... and where it holds a level (a plateau 10 % past a criterion on a noisy channel needs
# more than 30 s of evidence; the scenarios' plateaus last minutes)
TAIL_S = 45.0  # the case goes on this long after its last event keypoint ...
MIN_OBSERVED_S = EVENTS_AT_S + TAIL_S - BASELINE_AT_S  # ... and at least this long after B (stable: as long)
MEP_EVERY_S = 4.0  # `--mep-every 4`
HOGS = 2  # CPU-bound processes competing in the loaded pass
STALL_S = 30.0  # the case is abandoned when its case time does not advance for this long (wall)
# The technologist presses Resume (the stim command's resume action, docs/CONSOLE.md) when the board has not
# been stimulating for this long (wall) and the host did not re-arm it (more than 3 stops a minute): the
# console's warning asks for exactly that. Each press is counted (resumed_by_hand) beside the board's stops.
RESUME_AFTER_S = 10.0
GOALS = {"missed": 0, "false_per_8h": 1.0, "duplicates": 0, "ssep_median_s": 20.0, "mep_trains": 2,
         "differences": 0}


# ==================================================================== scenario plan: events moved and compressed
def _keypoints(events: list[dict[str, Any]]) -> list[float]:
    """Every time at which an event's truth starts or stops changing (natural scenario time). A probe event (a
    screw under the handheld probe) changes nothing here: the bench never stimulates the probe output."""
    keys: list[float] = []
    for e in events:
        if e.get("type") == "probe":
            continue
        on = float(e["onset_s"])
        keys.append(on)
        kind = e.get("type")
        if kind == "change":
            keys.append(on + float(e.get("ramp_s", 0.0)))
            rec = e.get("recovery")
            if isinstance(rec, dict):
                keys += [float(rec["onset_s"]), float(rec["onset_s"]) + float(rec.get("ramp_s", 0.0))]
        elif kind == "cautery":
            keys.append(on + float(e["duration_s"]))
        elif "end_s" in e and math.isfinite(float(e["end_s"])):
            keys.append(float(e["end_s"]))
    return sorted(set(keys))


NEAR_AMPLITUDE = 0.8  # a held amplitude in (0.8 x criterion, criterion] is "just past" it ...
NEAR_LATENCY = 1.05  # ... and a held latency in [criterion, 1.05 x criterion)


def _near_criterion(events: list[dict[str, Any]], a: float, b: float) -> bool:
    """Does a change event hold, over (a, b), a level just past its alert criterion (SSEP: amplitude 50 %, latency
    110 %; MEP targets: amplitude 20 %), and past none by more? Such a plateau keeps its real length in the
    compact plan: telling 45 % from 50 % takes the sweeps the scenario gives it (limb_positioning's 7 min), and
    a plateau cut to PLATEAU_MAX_S would make the event undetectable by any method, not just late."""
    from ionm.pipeline import modalities

    for e in events:
        if e.get("type") != "change":
            continue
        on = float(e["onset_s"])
        rec = e.get("recovery") if isinstance(e.get("recovery"), dict) else None
        held = [(on + float(e.get("ramp_s", 0.0)), float(rec["onset_s"]) if rec else math.inf, e)]
        if rec:
            held.append((float(rec["onset_s"]) + float(rec.get("ramp_s", 0.0)), math.inf, rec))
        mep = all(str(t).startswith("mep_") for t in e.get("targets", []))
        m = modalities.get("mep" if mep else "ssep-lower")  # the criteria the alerts use (MEP: no latency one)
        amp_crit, lat_crit = m.amplitude_ratio_alert, math.inf if m.single_trial else m.latency_ratio_alert
        for lo, hi, lvl in held:
            if not (lo <= a and b <= hi):
                continue
            amp, lat = float(lvl.get("amplitude", 1.0)), float(lvl.get("latency", 1.0))
            far = amp <= NEAR_AMPLITUDE * amp_crit or lat >= NEAR_LATENCY * lat_crit  # either is evidence enough
            if not far and (amp <= amp_crit or lat >= lat_crit):
                return True
    return False


def _moving(events: list[dict[str, Any]], a: float, b: float) -> bool:
    """Does any event's truth change (a ramp, a recovery) or any cautery burst last somewhere inside (a, b)?"""
    spans: list[tuple[float, float]] = []
    for e in events:
        on = float(e["onset_s"])
        if e.get("type") == "change":
            spans.append((on, on + float(e.get("ramp_s", 0.0))))
            rec = e.get("recovery")
            if isinstance(rec, dict):
                spans.append((float(rec["onset_s"]), float(rec["onset_s"]) + float(rec.get("ramp_s", 0.0))))
        elif e.get("type") == "cautery":
            spans.append((on, on + float(e["duration_s"])))
    return any(lo < b and hi > a for lo, hi in spans)


def time_map(events: list[dict[str, Any]], at_s: float, segment_max_s: float = math.inf,
             plateau_max_s: float | None = None) -> Callable[[float], float]:
    """Natural scenario time -> case time: the first keypoint goes to at_s, each stretch between keypoints keeps
    its length up to segment_max_s, or up to plateau_max_s (default: segment_max_s) where no truth changes;
    times before the first or after the last keypoint are shifted."""
    keys = _keypoints(events)
    if not keys:
        return lambda t: float(t)
    plateau = segment_max_s if plateau_max_s is None else plateau_max_s
    mapped = [float(at_s)]
    for a, b in zip(keys, keys[1:], strict=False):
        cap = segment_max_s if _moving(events, a, b) else math.inf if _near_criterion(events, a, b) else plateau
        mapped.append(mapped[-1] + min(b - a, cap))

    def f(t: float) -> float:
        t = float(t)
        if t <= keys[0]:
            return t - keys[0] + mapped[0]
        if t >= keys[-1]:
            return t - keys[-1] + mapped[-1]
        return float(np.interp(t, keys, mapped))

    return f


def compress_events(scenario: dict[str, Any], at_s: float, segment_max_s: float = math.inf,
                    plateau_max_s: float | None = None) -> tuple[dict[str, Any], dict[str, Any]]:
    """The scenario with its events moved to start at at_s and stretches longer than segment_max_s (plateaus:
    plateau_max_s) shortened (segment_max_s = inf: exactly `ionm console --events-at at_s`,
    cli.console.shift_events); and the plan."""
    out = copy.deepcopy(scenario)
    events = out.get("events", [])
    f = time_map(events, at_s, segment_max_s, plateau_max_s)
    keys = _keypoints(events)
    for e in events:
        on = float(e["onset_s"])
        kind = e.get("type")
        if kind == "change":
            e["ramp_s"] = f(on + float(e.get("ramp_s", 0.0))) - f(on)
            rec = e.get("recovery")
            if isinstance(rec, dict):
                r0 = float(rec["onset_s"])
                rec["ramp_s"] = f(r0 + float(rec.get("ramp_s", 0.0))) - f(r0)
                rec["onset_s"] = f(r0)
        elif kind == "cautery":
            e["duration_s"] = f(on + float(e["duration_s"])) - f(on)
        if "end_s" in e:
            e["end_s"] = f(float(e["end_s"]))
        e["onset_s"] = f(on)
    plan = {"keypoints": [[round(k, 2), round(f(k), 2)] for k in keys],
            "last_keypoint_s": round(f(keys[-1]), 2) if keys else None,
            "compressed": any(f(b) - f(a) < b - a - 1e-9 for a, b in zip(keys, keys[1:], strict=False))}
    return out, plan


def case_plan(scenario: dict[str, Any], compact: bool) -> tuple[dict[str, Any], dict[str, Any]]:
    """(scenario as the board runs it, plan with the case's end time)."""
    at = EVENTS_AT_S
    scn, plan = compress_events(scenario, at, *((SEGMENT_MAX_S, PLATEAU_MAX_S) if compact else (math.inf, None)))
    last = plan["last_keypoint_s"]
    end = max(BASELINE_AT_S + MIN_OBSERVED_S, (last + TAIL_S) if last is not None else 0.0)
    scn["duration_s"] = end
    scn["baseline_end_s"] = BASELINE_AT_S
    plan.update(events_at_s=at, baseline_at_s=BASELINE_AT_S, end_s=round(end, 2))
    return scn, plan


# ==================================================================== truth per channel
def channel_responses(patient: Any, source: str, derivations: list[str]) -> list[str | None]:
    """For the channels of a stream (stimulated site `source`): the response each records most strongly in this
    patient (amplitude x coupling), None where the stimulus evokes nothing on it."""
    from ionm.board.stimulation import SSEP_OUTPUTS
    from ionm_hw.patient import TRIGGER_OUTPUT

    outputs = {v: k for k, v in SSEP_OUTPUTS.items()}
    output = outputs.get(source, TRIGGER_OUTPUT)
    out: list[str | None] = []
    for d in derivations:
        best, weight = None, 0.0
        for r in patient.responses_of(output):
            w = patient.responses[r].amplitude_uv * abs(patient.responses[r].coupling.get(d, 0.0))
            if w > weight:
                best, weight = r, w
        out.append(best)
    return out


def criterion_events(t: np.ndarray, amp: np.ndarray, lat: np.ndarray, modality: str) -> list[tuple[float, float]]:
    """(start, end) of the stretches where the truth meets the modality's alert criterion: SSEP as the detection
    bench scores it (amplitude <= 50 % or latency >= 110 %); MEP amplitude <= 20 % (latency is not a criterion),
    found by the same function on the amplitude rescaled onto the 50 % level."""
    from ionm.pipeline import modalities

    m = modalities.get(modality)
    if not m.single_trial:
        assert (m.amplitude_ratio_alert, m.latency_ratio_alert) == (0.5, 1.10)
        return _events(t, amp, lat)
    return _events(t, np.asarray(amp) * (0.5 / m.amplitude_ratio_alert), np.ones_like(t))


def alert_windows(t: np.ndarray, amp: np.ndarray, lat: np.ndarray, events: list[tuple[float, float]]
                  ) -> list[tuple[float, float]]:
    """Each event with its start moved back over the change leading into it (the sweeps over which the truth
    was already falling in amplitude or rising in latency): an alert there is an early detection of the event,
    not a false alert (the truth is changing; an MEP trial of a response at 30 % often reads below 20 %)."""
    out = []
    for s, e in events:
        j = i = int(np.searchsorted(t, s))
        while i > 0 and (amp[i - 1] > amp[i] + 1e-12 or lat[i - 1] < lat[i] - 1e-12):
            i -= 1
        out.append((float(t[min(i + 1, j)]), e))  # t[i] itself is the last sweep before the change
    return out


def _in_window(a: float, events: list[tuple[float, float]]) -> int | None:
    for k, (s, e) in enumerate(events):
        if s <= a <= e + GRACE_S:
            return k
    return None


def score_stream(modality: str, t: np.ndarray, truth: dict[str, tuple[str | None, np.ndarray, np.ndarray]],
                 alerts: dict[str, list[float]], lag: dict[tuple[str, float], float] | None = None
                 ) -> dict[str, Any]:
    """Score one stream. t: its post-baseline sweep times; truth: channel -> (response, amplitude, latency) at t;
    alerts: channel -> alert times (case time); lag: (channel, t) -> seconds the alert came after its sweep could
    have (live only). Returns per-event units (a response and the channels recording it) and per-channel
    false and duplicate alerts."""
    mep = modality == "mep"
    lag = lag or {}
    per_channel: dict[str, Any] = {}
    by_response: dict[str, list[str]] = {}
    response_events: dict[str, tuple[list[tuple[float, float]], list[tuple[float, float]]]] = {}
    for ch, (resp, amp, lat) in truth.items():
        ev = criterion_events(t, amp, lat, modality) if resp is not None else []
        win = alert_windows(t, amp, lat, ev)
        if resp is not None:
            by_response.setdefault(resp, []).append(ch)
            response_events[resp] = (ev, win)
        times = sorted(alerts.get(ch, []))
        _, _, n_false = _score(times, win)
        false = [a for a in times if _in_window(a, win) is None]
        assert len(false) == n_false
        hits: dict[int, list[float]] = {}
        for a in times:
            k = _in_window(a, win)
            if k is not None:
                hits.setdefault(k, []).append(a)
        dups = [(ev[k][0], h[1:]) for k, h in hits.items() if len(h) > 1]
        per_channel[ch] = {"response": resp, "events": [[round(s, 3), round(e, 3)] for s, e in ev],
                           "alerts": [round(a, 3) for a in times], "false": [round(a, 3) for a in false],
                           "duplicates": [{"event_start": round(s, 3), "alerts": [round(a, 3) for a in h]}
                                          for s, h in dups]}
    units = []
    for resp, chans in sorted(by_response.items()):
        ev, win = response_events[resp]
        if not ev:
            continue
        union = sorted({a for ch in chans for a in alerts.get(ch, [])})
        tta, missed, _ = _score(union, win)
        for (s, e), (w0, _) in zip(ev, win, strict=True):
            hit = [a for a in union if w0 <= a <= e + GRACE_S]
            unit: dict[str, Any] = {"response": resp, "channels": chans, "start": round(s, 3), "end": round(e, 3),
                                    "change_from": round(w0, 3), "missed": not hit}
            if hit:
                a = hit[0]
                ch = next(c for c in chans if a in alerts.get(c, []))
                extra = lag.get((ch, a), 0.0)
                unit.update(first_alert=round(a, 3), channel=ch, case_s=round(a - s, 3), lag_s=round(extra, 3),
                            tta_s=round(a - s + extra, 3))
                if mep:  # 0: before the criterion was met (early)
                    unit["trains"] = int(np.sum((t >= s) & (t <= a)))
            units.append(unit)
        assert missed == sum(u["missed"] for u in units if u["response"] == resp)
        assert len(tta) == sum(not u["missed"] for u in units if u["response"] == resp)
    return {"units": units, "channels": per_channel}


# ==================================================================== processes
def _die_with_parent() -> None:
    try:
        import ctypes

        ctypes.CDLL(None, use_errno=True).prctl(1, int(signal.SIGTERM))  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass


class Hogs:
    """n CPU-bound processes (`python -c 'while True: pass'`); stopped (SIGSTOP) while the bench analyses."""

    def __init__(self, n: int) -> None:
        self.procs = [subprocess.Popen([sys.executable, "-c", "while True: pass"], preexec_fn=_die_with_parent,
                                       stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL)
                      for _ in range(n)]

    def pause(self, paused: bool) -> None:
        for p in self.procs:
            if p.poll() is None:
                os.kill(p.pid, signal.SIGSTOP if paused else signal.SIGCONT)

    def close(self) -> None:
        for p in self.procs:
            if p.poll() is None:
                p.kill()
        for p in self.procs:
            p.wait()


def _cpu_s(pid: int) -> float:
    try:
        with open("/proc/%d/stat" % pid) as fh:
            f = fh.read().rsplit(")", 1)[1].split()
        return (int(f[11]) + int(f[12])) / os.sysconf("SC_CLK_TCK")
    except (OSError, IndexError, ValueError):
        return float("nan")


def _self_cpu_s() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


# ==================================================================== one live case
def live_case(name: str, scenario: dict[str, Any], seed: int, plan: dict[str, Any], workdir: Path,
              log: Callable[[str], None]) -> dict[str, Any]:
    """Run one case on the virtual board in real time; returns what happened, with the store still open
    (res["store"], res["case_id"]) for the analysis (the caller closes it)."""
    from ionm.board.boardcase import BoardCase
    from ionm.board.stimulation import default_program
    from ionm.board.virtual import VirtualBoard
    from ionm.case.store import CaseStore
    from ionm.console.engine import CaseEngine

    scn_path = workdir / ("%s.json" % name)
    scn_path.write_text(json.dumps(scenario))
    store = CaseStore(workdir / ("%s.db" % name))
    meta = {"source": "sim", "scenario": name, "seed": seed, "events_at": plan["events_at_s"],
            "mep_every": MEP_EVERY_S, "bench": "live_case"}
    cid = store.open_case(patient_id="bench", procedure="live_case %s" % name, meta=meta)
    res: dict[str, Any] = {"store": store, "case_id": cid, "scenario": name, "seed": seed, "plan": plan,
                           "errors": []}
    board = source = engine = None
    err_path = workdir / ("%s.board.stderr" % name)
    err = open(err_path, "w")
    frames = [0]
    wall0 = time.monotonic()
    try:
        board = VirtualBoard(scenario=str(scn_path), seed=seed, stderr=err)
        res["board_priority"] = board.priority  # "normal": the load lands on the board's clock too
        program = default_program(scenario)
        program["tcmep"]["repeat_s"] = MEP_EVERY_S
        source = BoardCase(board.device, program=program)
        engine = CaseEngine(store, cid, stimulation=source, link_health=source.link_health)

        def sink(fj: list[Any], aj: list[Any]) -> None:  # a console's hub takes the encoded frames; count them
            frames[0] += len(fj) + len(aj)

        engine.subscribe(sink)
        pids = {"firmware": board.firmware.pid, "model": board.model.pid}
        cpu0 = {k: _cpu_s(p) for k, p in pids.items()} | {"host": _self_cpu_s()}
        engine.start()
        engine.run_source(source)
        res["started_wall_s"] = round(time.monotonic() - wall0, 2)
        pressed = None
        ready_at = None
        last_t, last_move = -1.0, time.monotonic()
        stopped_since: float | None = None
        res["resumed_by_hand"] = 0
        while True:
            time.sleep(0.1)
            board.poll()
            if source.stimulation_stopped is None:
                stopped_since = None
            elif stopped_since is None:
                stopped_since = time.monotonic()
            elif time.monotonic() - stopped_since > RESUME_AFTER_S:
                engine.submit("tech", "technologist", {"cmd": "stim", "command": {"action": "resume"}}).result(30)
                res["resumed_by_hand"] += 1
                stopped_since = None
            t = engine.t_s
            if t != last_t:
                last_t, last_move = t, time.monotonic()
            elif time.monotonic() - last_move > STALL_S:
                raise RuntimeError("case time stuck at %.1f s for %.0f s" % (t, STALL_S))
            if pressed is None and t >= BASELINE_AT_S:
                reply = engine.submit("tech", "technologist", {"cmd": "baseline"}).result(30)
                pressed = t
                res["baseline_pressed_s"] = round(t, 3)
                res["baseline_streams"] = reply.get("streams")
            if pressed is not None and ready_at is None and engine.call(
                    lambda: all(st.baseline is not None for st in engine.streams.values())):
                ready_at = t
                res["baseline_ready_s"] = round(t, 3)
                res["baseline_ready_wall_after_press_s"] = round(t - pressed, 2)
            if t >= plan["end_s"]:
                break
        res["cpu_s"] = {k: round(_cpu_s(p) - cpu0[k], 1) for k, p in pids.items()} | {
            "host": round(_self_cpu_s() - cpu0["host"], 1)}
        res["case_time_s"] = round(engine.t_s, 2)
        res["wall_s"] = round(time.monotonic() - wall0, 1)
        health = source.link_health()
        res["link"] = {k: health.get(k) for k in ("samples_lost", "samples_received", "frames_rejected",
                                                  "board_resets", "sweeps", "stimulation_stopped")}
        res["board_events"] = [{"kind": e["kind"], "detail": e["detail"]} for e in health.get("board_events", [])]
        res["engine"] = {"errors": list(engine.errors), "clock_offset_s": engine.clock_offset_s,
                         "frames": frames[0], "sweeps": engine.stats["sweeps"],
                         "latency_ms": _percentiles(list(engine.stats["engine_latency_ms"]))}
        res["board_restarts"] = board.resets
        res["host_rejected_sweeps"] = dict(source.case.rejected)
    except Exception as exc:  # a case that failed is reported with what it recorded, and the next one runs
        res["errors"].append(repr(exc))
        log("   %s: %r" % (name, exc))
        try:  # what the board and the engine said up to the failure: why it failed
            health = source.link_health() if source else {}
            res["at_failure"] = {
                "link": {k: health.get(k) for k in ("samples_lost", "samples_received", "board_resets", "sweeps",
                                                    "stimulation_stopped")},
                "board_events": [{"kind": e["kind"], "detail": e["detail"]} for e in health.get("board_events", [])],
                "engine_errors": list(engine.errors) if engine else []}
            for e in res["at_failure"]["board_events"][-5:] + res["at_failure"]["engine_errors"][-3:]:
                log("     %s" % (e,))
        except Exception as exc2:
            res["errors"].append("collecting the failure's state: %r" % exc2)
    finally:
        for step in (engine.stop if engine else None, source.close if source else None,
                     board.close if board else None):
            if step is None:
                continue
            try:
                step()
            except Exception as exc:
                res.setdefault("close_errors", []).append("%s: %r" % (getattr(step, "__qualname__", step), exc))
        err.close()
    text = err_path.read_text(errors="replace").strip().splitlines()
    if text:
        res["board_stderr_tail"] = text[-10:]
    return res


def _percentiles(v: list[float]) -> dict[str, float | None]:
    if not v:
        return {"p50": None, "p95": None, "max": None}
    a = np.asarray(v)
    return {"p50": round(float(np.percentile(a, 50)), 1), "p95": round(float(np.percentile(a, 95)), 1),
            "max": round(float(a.max()), 1)}


# ==================================================================== analysis of one recorded case
def _stream_arrays(store: Any, cid: int, key: str, t_from: float = -math.inf) -> tuple[np.ndarray, np.ndarray]:
    ts, xs = [], []
    for sw, _ in store.iter_sweeps(cid, key, t_from=t_from):
        ts.append(sw.t_s)
        xs.append(np.asarray(sw.data_uv, dtype=np.float32))
    return np.asarray(ts, dtype=np.float64), np.stack(xs) if xs else np.zeros((0, 1, 8), np.float32)


def _missing(t: np.ndarray, trains: np.ndarray, holdoff_s: float = 0.25) -> int:
    """Sweeps missing from a stream's regular sequence, not counting one per TcMEP train inside the gap (the
    board holds SSEP pulses off around a train, protocol/SPEC.md 5.8)."""
    if len(t) < 3:
        return 0
    gaps = np.diff(t)
    period = float(np.median(gaps))
    n = 0
    for a, g in zip(t[:-1], gaps, strict=True):
        k = int(round(g / period)) - 1
        if k > 0:
            k -= int(np.sum((trains > a - holdoff_s) & (trains < a + g + holdoff_s)))
            n += max(k, 0)
    return n


def _evaluate_offline(meta: dict[str, Any], t: np.ndarray, x: np.ndarray, baseline_end_s: float, path: Path
                      ) -> list[dict[str, Any]]:
    """`ionm evaluate FILE.npz --json` on these sweeps: written as a sweep file, read back, evaluated."""
    from ionm.pipeline import sweepfile
    from ionm.pipeline.offline import evaluate

    sweepfile.save(path, {"fs": np.float64(meta["fs"]), "pre_samples": np.int64(meta["pre_samples"]), "sweeps": x,
                          "stim_time_s": t, "modality": np.array(meta["modality"]),
                          "baseline_end_s": np.float64(baseline_end_s),
                          "channel_names": np.array(meta["channel_names"]),
                          "stimulated": np.array(meta["source"])})
    try:
        alerts: list[dict[str, Any]] = evaluate(sweepfile.load(path))["alerts"]
    finally:
        path.unlink(missing_ok=True)
    return alerts


def _key(a: dict[str, Any]) -> tuple[str, str, str, float]:
    return (a["stream"], a["channel"], a["criterion"], round(float(a["t_s"]), 5))


def _diff(live: list[dict[str, Any]], offline: list[dict[str, Any]]) -> list[dict[str, Any]]:
    lk, ok = {_key(a) for a in live}, {_key(a) for a in offline}
    return ([{"only": "live", "stream": k[0], "channel": k[1], "criterion": k[2], "t_s": k[3]} for k in sorted(lk - ok)]
            + [{"only": "offline", "stream": k[0], "channel": k[1], "criterion": k[2], "t_s": k[3]}
               for k in sorted(ok - lk)])


def _with_wander(patient: Any, unit: dict[str, Any], truth: dict[str, tuple[str | None, np.ndarray, np.ndarray]],
                 t: np.ndarray, baselines: list[dict[str, Any]], t_all: np.ndarray) -> list[float] | None:
    """An event's amplitude as the patient delivered it against the baseline in force: the scripted factor
    times the response's slow wander (ionm_hw PatientResponse.wander, log-SD 3-6 % on SSEPs), over the wander's
    mean across that baseline's sweeps; [median, min, max] over the event. The truth scores by the scripted factor
    alone, so a change scripted just past a criterion (limb_positioning: 45 % against 50 %) may have been
    delivered short of it; this says by how much. Reported for SSEP misses (an MEP's scatter is per trial)."""
    resp = unit["response"]
    if resp not in patient.responses or not unit["channels"]:
        return None
    r = patient.responses[resp]
    before = [b for b in baselines if b["last_t"] < unit["start"]] or baselines[:1]
    b = before[-1]
    tb = t_all[(t_all >= b["first_t"]) & (t_all <= b["last_t"])]
    sel = (t >= unit["start"]) & (t <= unit["end"])
    if not len(tb) or not sel.any():
        return None
    amp = truth[unit["channels"][0]][1][sel] * r.wander(t[sel])[0] / float(np.mean(r.wander(tb)[0]))
    return [round(float(np.median(amp)), 3), round(float(amp.min()), 3), round(float(amp.max()), 3)]


def analyse(res: dict[str, Any], store: Any, scenario: dict[str, Any], workdir: Path) -> dict[str, Any]:
    """Score the recorded case against the truth, and compare it with `ionm evaluate` on its sweeps."""
    from ionm_hw.patient import VirtualPatient

    cid = res["case_id"]
    patient = VirtualPatient(scenario, res["seed"], 8000.0)
    streams = {s["key"]: s for s in store.streams(cid)}
    baselines: dict[str, list[dict[str, Any]]] = {}
    for b in store.baselines(cid):  # in the order they were swapped in (the engine may rebuild one by itself)
        baselines.setdefault(b["stream"], []).append(b)
    live = [{"stream": a["stream"], "channel": a["channel_name"], "criterion": a["criterion"], "t_s": a["t_s"],
             "wall": a["wall"], "scope": a["scope"], "amplitude_ratio": a["amplitude_ratio"],
             "latency_ratio": a["latency_ratio"]} for a in store.rows("alerts", cid)]
    walls = store.query("SELECT t_s, wall FROM sweeps WHERE case_id = ?", (cid,))
    # Case time -> wall clock: the fastest sweep (window, link, engine, store queue) sets the offset; an alert's
    # lag is how much later than that its decisive sweep's alert was raised.
    offset = min((w - t) for t, w in walls) if walls else 0.0
    lag = {(a["stream"], a["channel"], a["t_s"]): max(0.0, a["wall"] - (a["t_s"] + offset)) for a in live}
    out: dict[str, Any] = {"streams": {}, "alerts": [{k: (round(v, 3) if isinstance(v, float) else v)
                                                      for k, v in a.items() if k != "wall"} for a in live]}
    offline_same: list[dict[str, Any]] = []
    offline_whole: list[dict[str, Any]] = []
    observed = 0.0
    mep_t = np.asarray([t for t, _ in store.query("SELECT t_s, 0 FROM sweeps WHERE case_id = ? AND stream IN "
                                                   "(SELECT key FROM streams WHERE case_id = ? AND modality = 'mep')",
                                                   (cid, cid))], dtype=np.float64)
    for key, meta in streams.items():
        rows = baselines.get(key, [])
        t_all, x_all = _stream_arrays(store, cid, key)
        wall_of = np.asarray([w for _, w in store.query("SELECT t_s, wall FROM sweeps WHERE case_id = ? AND "
                                                        "stream = ? ORDER BY t_s, id", (cid, key))])
        info: dict[str, Any] = {"sweeps": len(t_all), "sweeps_missing": _missing(t_all, mep_t) if
                                meta["modality"] != "mep" else _missing(t_all, np.zeros(0)), "baselines": []}
        if not rows:
            info["error"] = "no baseline"
            out["streams"][key] = info
            continue
        # (a) The live evaluators one after the other: the k-th was built from its baseline's sweeps, swapped in
        # (catching up with what arrived meanwhile) and fed every sweep recorded until the next one was swapped
        # in (the engine thread records a sweep after evaluating it, a baseline when it swaps it in).
        for k, b in enumerate(rows):
            upto = wall_of < rows[k + 1]["wall"] if k + 1 < len(rows) else np.ones(len(t_all), dtype=bool)
            sel = (t_all >= b["first_t"]) & upto
            for a in _evaluate_offline(meta, t_all[sel], x_all[sel], b["last_t"], workdir / "same.npz"):
                offline_same.append({"stream": key, **a})
            info["baselines"].append({
                "t_s": round(b["t_s"], 3), "user": b["user"], "first_t": round(b["first_t"], 3),
                "last_t": round(b["last_t"], 3), "swapped_in_after_s": round(b["wall"] - float(wall_of[
                    np.searchsorted(t_all, b["last_t"], side="right") - 1]), 2),
                "sweeps": int(np.sum((t_all >= b["first_t"]) & (t_all <= b["last_t"]))),
                "evaluated_until_s": round(float(t_all[sel][-1]), 3) if sel.any() else None,
                "tracked": [r["tracked"] for r in b["refs"]], "level_se": [r.get("level_se") for r in b["refs"]]})
        b = rows[0]  # B, as the technologist pressed it
        # (b) `ionm evaluate` on the whole recording with baseline_end_s = when B was pressed.
        if len(rows) > 1 or (len(t_all) and t_all[0] < b["first_t"]):
            whole = _evaluate_offline(meta, t_all, x_all, b["t_s"], workdir / "whole.npz")
        else:  # the same sweeps and the same baseline as (a)
            whole = [{k: v for k, v in a.items() if k != "stream"} for a in offline_same if a["stream"] == key]
        offline_whole += [{"stream": key, **a} for a in whole]
        # truth on the sweeps after the first baseline
        post = t_all > b["last_t"]
        t = t_all[post]
        if len(t):
            observed = max(observed, float(t[-1] - b["last_t"]))
        derivs = [patient.channels[int(c)].derivation for c in meta["channels"]]
        resp = channel_responses(patient, meta["source"], derivs)
        truth: dict[str, tuple[str | None, np.ndarray, np.ndarray]] = {}
        for nm, r in zip(meta["channel_names"], resp, strict=True):
            if r is None:
                truth[nm] = (None, np.ones_like(t), np.ones_like(t))
            else:
                amp, lat = patient.script.factors(r, t)
                truth[nm] = (r, amp, lat)
        by_ch = {nm: [a["t_s"] for a in live if a["stream"] == key and a["channel"] == nm]
                 for nm in meta["channel_names"]}
        off_ch = {nm: [a["t_s"] for a in offline_same if a["stream"] == key and a["channel"] == nm]
                  for nm in meta["channel_names"]}
        info["live"] = score_stream(meta["modality"], t, truth, by_ch,
                                    {(c, at): v for (k, c, at), v in lag.items() if k == key})
        for u in info["live"]["units"]:
            u["amplitude_with_wander"] = _with_wander(patient, u, truth, t, rows, t_all)
        info["offline"] = score_stream(meta["modality"], t, truth, off_ch)
        info["modality"] = meta["modality"]
        out["streams"][key] = info
    out["observed_s"] = round(observed, 2)
    out["differences_same_sweeps"] = _diff(live, offline_same)
    out["differences_whole_recording"] = _diff(live, offline_whole)
    out["offline_same_alerts"] = len(offline_same)
    out["lag_ms"] = _percentiles([v * 1000.0 for v in lag.values()])
    out["technical_alarms"] = [{"t_s": round(n["t_s"], 2), "text": n["text"]} for n in store.rows("notes", cid)
                               if n["kind"] == "technical" and n["text"].startswith("TECHNICAL ALARM")]
    out["duplicates_refused"] = store.duplicates_refused
    return out


# ==================================================================== a pass, and the figures
def _collect(cases: list[dict[str, Any]]) -> dict[str, Any]:
    """The pass's figures from its analysed cases."""
    fig: dict[str, Any] = {"cases": len(cases), "missed": [], "false": [], "duplicates": [], "ssep_tta_s": [],
                           "ssep_offline_tta_s": [], "mep_trains": [], "mep_offline_trains": [], "events": 0,
                           "differences": 0, "differences_whole": 0, "observed_h": 0.0, "case_false_per_8h": [],
                           "lag_ms_p95": [], "samples_lost": 0, "sweeps_missing": 0, "board_stops": 0,
                           "resumed_by_hand": 0, "technical_alarms": 0, "technical": {}, "baseline_rebuilds": 0,
                           "errors": []}
    for c in cases:
        a = c.get("analysis")
        name = c["scenario"]
        fig["errors"] += ["%s: %s" % (name, e) for e in c.get("errors", [])]
        if a is None:
            continue
        hours = a["observed_s"] / 3600.0
        fig["observed_h"] += hours
        n_false = 0
        for key, s in a["streams"].items():
            fig["sweeps_missing"] += s.get("sweeps_missing", 0)
            fig["baseline_rebuilds"] += max(len(s.get("baselines", [])) - 1, 0)
            if "live" not in s:
                fig["errors"].append("%s %s: %s" % (name, key, s.get("error")))
                continue
            mep = s["modality"] == "mep"
            for u in s["live"]["units"]:
                fig["events"] += 1
                if u["missed"]:
                    w = u.get("amplitude_with_wander")
                    fig["missed"].append("%s %s %s (%s) from %.1f s%s" % (
                        name, key, u["response"], ", ".join(_short(x) for x in u["channels"]), u["start"],
                        "" if not w or mep else "; amplitude with the patient's slow wander, against its baseline: "
                        "median %.2f (%.2f-%.2f)" % tuple(w)))
                elif mep:
                    fig["mep_trains"].append(u["trains"])
                else:
                    fig["ssep_tta_s"].append(u["tta_s"])
            for u in s["offline"]["units"]:
                if not u["missed"]:
                    (fig["mep_offline_trains"] if mep else fig["ssep_offline_tta_s"]).append(
                        u["trains"] if mep else u["tta_s"])
            for ch, r in s["live"]["channels"].items():
                for t in r["false"]:
                    n_false += 1
                    crit = next((x["criterion"] for x in a["alerts"] if x["stream"] == key and x["channel"] == ch
                                 and abs(x["t_s"] - t) < 1e-3), "?")
                    fig["false"].append("%s %s %s at %.1f s (%s; truth %s)" % (
                        name, key, _short(ch), t, crit, "no response here" if r["response"] is None
                        else "never meets a criterion" if not r["events"] else "outside its event"))
                for d in r["duplicates"]:
                    fig["duplicates"].append("%s %s %s: event from %.1f s alerted again at %s s" % (
                        name, key, _short(ch), d["event_start"], ", ".join("%.1f" % x for x in d["alerts"])))
        fig["case_false_per_8h"].append(round(n_false / hours * 8.0, 1) if hours > 0 else None)
        fig["differences"] += len(a["differences_same_sweeps"])
        fig["differences_whole"] += len(a["differences_whole_recording"])
        if a["lag_ms"]["p95"] is not None:
            fig["lag_ms_p95"].append(a["lag_ms"]["p95"])
        fig["samples_lost"] += int((c.get("link") or {}).get("samples_lost") or 0)
        fig["board_stops"] += sum(e["kind"] in ("watchdog", "host-lost", "recovered")
                                  for e in c.get("board_events", []))
        fig["resumed_by_hand"] += int(c.get("resumed_by_hand") or 0)
        fig["technical_alarms"] += len(a["technical_alarms"])
        for x in a["technical_alarms"]:
            fig["technical"].setdefault(x["text"], []).append("%s %.0f s" % (name, x["t_s"]))
    fig["false_alerts"] = len(fig["false"])
    fig["false_per_8h"] = round(fig["false_alerts"] / fig["observed_h"] * 8.0, 1) if fig["observed_h"] else None
    fig["ssep_median_s"] = _med(fig["ssep_tta_s"])
    fig["ssep_worst_s"] = round(max(fig["ssep_tta_s"]), 1) if fig["ssep_tta_s"] else None
    fig["ssep_offline_median_s"] = _med(fig["ssep_offline_tta_s"])
    fig["ssep_ratio_live_offline"] = (round(fig["ssep_median_s"] / fig["ssep_offline_median_s"], 2)
                                      if fig["ssep_median_s"] is not None and fig["ssep_offline_median_s"] else None)
    fig["mep_worst_trains"] = max(fig["mep_trains"]) if fig["mep_trains"] else None
    fig["mep_offline_worst_trains"] = max(fig["mep_offline_trains"]) if fig["mep_offline_trains"] else None
    worst = [v for v in fig["case_false_per_8h"] if v is not None]
    fig["goal"] = {"no_missed": not fig["missed"] and not fig["errors"],
                   "false_per_8h_per_case_le_1": bool(worst) and max(worst) <= GOALS["false_per_8h"],
                   "no_duplicates": not fig["duplicates"],
                   "ssep_median_le_20s": fig["ssep_median_s"] is not None
                   and fig["ssep_median_s"] <= GOALS["ssep_median_s"],
                   "mep_within_2_trains": fig["mep_worst_trains"] is not None
                   and fig["mep_worst_trains"] <= GOALS["mep_trains"],
                   "live_equals_offline": fig["differences"] == 0}
    fig["observed_h"] = round(fig["observed_h"], 3)
    return fig


def _med(v: list[float]) -> float | None:
    return round(float(np.median(v)), 1) if v else None


def _short(name: str) -> str:
    return name.split(" (")[0]


def _fmt(v: Any, unit: str = "") -> str:
    return "-" if v is None else ("%s%s" % (v, unit))


def _summary(out: dict[str, Any]) -> list[str]:
    labels = [k for k in ("idle", "loaded") if k in out["passes"]]
    if not labels:
        return ["no pass ran"]
    ps = [out["passes"][k] for k in labels]
    figs = [x["figures"] for x in ps]

    def pair(f: Callable[[dict[str, Any]], str]) -> str:  # one value per pass run, "idle | loaded"
        return " | ".join(f(x) for x in figs)

    lines = [
        "%d scenario(s), %s plan (B at %.0f s, events from %.0f s%s); %s"
        % (len(out["scenarios"]), out["plan"], BASELINE_AT_S, EVENTS_AT_S,
           ", stretches <= %.0f s, plateaus <= %.0f s" % (SEGMENT_MAX_S, PLATEAU_MAX_S)
           if out["plan"] == "compact" else "",
           " | ".join("loaded (%d CPU hogs)" % HOGS if k == "loaded" else k for k in labels)),
        "wall time %s min; load avg at start %s; virtual board priority %s; observed after baseline %s h" % (
            " | ".join("%.1f" % (x["wall_s"] / 60) for x in ps), " | ".join("%.1f" % x["loadavg_start"] for x in ps),
            " | ".join(",".join(sorted({c.get("board_priority", "?") for c in x["cases"]})) for x in ps),
            pair(lambda f: "%.3f" % f["observed_h"])),
        "missed events: %s of %s (goal 0)" % (pair(lambda f: str(len(f["missed"]))), figs[0]["events"]),
        "false alerts: %s per 8 h (%s alerts; worst case %s per 8 h) (goal <= 1 per 8 h per case, MEP included)"
        % (pair(lambda f: _fmt(f["false_per_8h"])), pair(lambda f: str(f["false_alerts"])),
           pair(lambda f: _fmt(max([v for v in f["case_false_per_8h"] if v is not None], default=None)))),
        "duplicate alerts (a channel again in one event): %s (goal 0)" % pair(lambda f: str(len(f["duplicates"]))),
        "SSEP time to alert: median %s s, worst %s s (goal median <= 20 s); offline on the same sweeps median %s s;"
        " live/offline %s" % (pair(lambda f: _fmt(f["ssep_median_s"])), pair(lambda f: _fmt(f["ssep_worst_s"])),
                              pair(lambda f: _fmt(f["ssep_offline_median_s"])),
                              pair(lambda f: _fmt(f["ssep_ratio_live_offline"]))),
        "MEP time to alert: worst %s trains (goal <= 2); offline on the same sweeps worst %s" % (
            pair(lambda f: _fmt(f["mep_worst_trains"])), pair(lambda f: _fmt(f["mep_offline_worst_trains"]))),
        "live vs `ionm evaluate` on the same sweeps: %s alerts differ (goal 0); whole recording, baseline at B: %s"
        % (pair(lambda f: str(f["differences"])), pair(lambda f: str(f["differences_whole"]))),
        "baselines rebuilt by the engine after B (collecting for untracked channels): %s stream baselines"
        % pair(lambda f: str(f["baseline_rebuilds"])),
        "alert lag behind the fastest sweep, worst case p95: %s ms; link: samples lost %s, sweeps missing %s, "
        "board stops %s (resumed by hand %s), technical alarms %s" % (
            pair(lambda f: _fmt(max(f["lag_ms_p95"], default=None))), pair(lambda f: str(f["samples_lost"])),
            pair(lambda f: str(f["sweeps_missing"])), pair(lambda f: str(f["board_stops"])),
            pair(lambda f: str(f.get("resumed_by_hand", 0))), pair(lambda f: str(f["technical_alarms"]))),
    ]
    for label, f in zip(labels, figs, strict=True):
        for kind in ("errors", "missed", "false", "duplicates"):
            lines += ["%s %s: %s" % (label, kind.rstrip("s") if kind != "false" else kind, x) for x in f[kind]]
    for label, f in zip(labels, figs, strict=True):
        lines += ["%s %s: %s" % (label, text, ", ".join(where)) for text, where in f["technical"].items()]
    for label, pas in zip(labels, ps, strict=True):
        for c in pas["cases"]:
            for d in (c.get("analysis") or {}).get("differences_same_sweeps", []):
                lines.append("%s difference: %s %s %s %s at %.3f s only %s" % (
                    label, c["scenario"], d["stream"], _short(d["channel"]), d["criterion"], d["t_s"], d["only"]))
    return lines


def _run_pass(label: str, names: list[str], compact: bool, workroot: Path, log: Callable[[str], None]
              ) -> dict[str, Any]:
    from ionm_hw.patient import load_scenario, scenario_names

    all_names = scenario_names()
    hogs = Hogs(HOGS) if label == "loaded" else None
    t0 = time.monotonic()
    res: dict[str, Any] = {"loadavg_start": round(os.getloadavg()[0], 2), "hogs": HOGS if hogs else 0, "cases": []}
    try:
        for name in names:
            seed = SEED_BASE + all_names.index(name)
            scenario, plan = case_plan(load_scenario(name), compact)
            workdir = workroot / ("%s-%s" % (label, name))
            workdir.mkdir(parents=True)
            log("   %s: %s (%.0f s of case time)" % (label, name, plan["end_s"]))
            if hogs:
                hogs.pause(False)
            c = live_case(name, scenario, seed, plan, workdir, log)
            if hogs:
                hogs.pause(True)  # the analysis is not what is measured
            store = c.pop("store")
            try:
                c["analysis"] = analyse(c, store, scenario, workdir)
            except Exception as exc:
                c["errors"].append("analysis: %r" % exc)
                log("   %s: analysis failed: %r" % (name, exc))
            finally:
                store.close()
                if not os.environ.get("IONM_BENCH_LIVE_CASE_KEEP"):
                    shutil.rmtree(workdir, ignore_errors=True)
            res["cases"].append(c)
            if "analysis" in c:  # each case's figures as it ends: a long run stopped early still says something
                f = _collect([c])
                log("     missed %d, false %d, duplicates %d, SSEP time to alert %s s, MEP %s trains, differences "
                    "%d, board stops %d (resumed by hand %d), errors %d" % (
                        len(f["missed"]), f["false_alerts"], len(f["duplicates"]), _fmt(f["ssep_median_s"]),
                        _fmt(f["mep_worst_trains"]), f["differences"], f["board_stops"], f["resumed_by_hand"],
                        len(f["errors"])))
    finally:
        if hogs:
            hogs.close()
    res["wall_s"] = round(time.monotonic() - t0, 1)
    res["figures"] = _collect(res["cases"])
    return res


def run(quick: bool = False, *, scenarios: list[str] | None = None, plan: str | None = None) -> dict[str, Any]:
    """Both passes (idle, then loaded) over the scenarios (quick: QUICK_SCENARIOS). plan: "compact" (default)
    or "natural" (env IONM_BENCH_LIVE_CASE)."""
    from ionm_hw.patient import scenario_names

    plan = plan or os.environ.get("IONM_BENCH_LIVE_CASE", "compact")
    if plan not in ("compact", "natural"):
        raise ValueError("plan must be compact or natural, not %r" % plan)
    chosen = [s for s in os.environ.get("IONM_BENCH_LIVE_CASE_SCENARIOS", "").split(",") if s]
    names = scenarios or chosen or (QUICK_SCENARIOS if quick else scenario_names())
    passes = [p for p in os.environ.get("IONM_BENCH_LIVE_CASE_PASSES", "idle,loaded").split(",") if p]
    if not passes or set(passes) - {"idle", "loaded"}:
        raise ValueError("IONM_BENCH_LIVE_CASE_PASSES is idle, loaded or idle,loaded, not %r" % ",".join(passes))

    def log(s: str) -> None:
        print(s, flush=True)

    # SIGTERM as Ctrl-C, so that every board and hog is stopped by the finally blocks.
    old = None
    if threading.current_thread() is threading.main_thread():
        def term(signum: int, frame: Any) -> None:
            raise KeyboardInterrupt

        old = signal.signal(signal.SIGTERM, term)
    keep = os.environ.get("IONM_BENCH_LIVE_CASE_KEEP")  # a directory: the case stores stay there, to look into
    workroot = Path(keep) if keep else Path(tempfile.mkdtemp(prefix="ionm-bench-live-"))
    workroot.mkdir(parents=True, exist_ok=True)
    out: dict[str, Any] = {"scenarios": names, "plan": plan, "goals": GOALS, "passes": {},
                           "settings": {"baseline_at_s": BASELINE_AT_S, "events_at_s": EVENTS_AT_S,
                                        "segment_max_s": SEGMENT_MAX_S if plan == "compact" else None,
                                        "plateau_max_s": PLATEAU_MAX_S if plan == "compact" else None,
                                        "tail_s": TAIL_S, "min_observed_s": MIN_OBSERVED_S,
                                        "mep_every_s": MEP_EVERY_S, "grace_s": GRACE_S, "hogs": HOGS,
                                        "seed_base": SEED_BASE}}
    try:
        for label in passes:
            out["passes"][label] = _run_pass(label, names, plan == "compact", workroot, log)
    finally:
        if not keep:
            shutil.rmtree(workroot, ignore_errors=True)
        if old is not None:
            signal.signal(signal.SIGTERM, old)
    out["goal"] = {k: v["figures"]["goal"] for k, v in out["passes"].items()}
    out["summary"] = _summary(out)
    return out


if __name__ == "__main__":
    print(json.dumps(run(quick="--quick" in sys.argv), indent=1, default=str))
