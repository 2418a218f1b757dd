"""Detection benchmark: the evaluator against a conventional 300-sweep block average, on the virtual patient.

run(quick=False) -> dict. Scenario runs are drawn with seeds from SEED_BASE up, never used in development:
development used run(seed_base=500, 520, 540, 560, 580) (seeds 500-599) and the tests seeds below 100. Each
run records one stimulated side (left median for ssep-upper, left tibial for ssep-lower) with
ionm_hw.sweeps.record_sweeps, every channel the default montage records for that modality (as the console's
stream of that site holds them), and evaluates it twice:

- the evaluator (ionm.pipeline.evaluator, as `ionm evaluate` runs it);
- the conventional reference, implemented here: the same conditioning and artifact rejection, then
  non-overlapping 300-sweep block averages; peak-to-peak amplitude of the named pair (N20-P25 / P37-N45)
  and the first peak's latency, searched around the baseline latencies; alert when a block is below 50 %
  amplitude or above 110 % latency of the baseline average (the whole baseline period), counting
  transitions into alert.

Both are scored on the stimulated side's cortical channel (the channel the simulator reports as carrying
that response best; with the whole montage recorded it is always a recorded one, whereas before a patient
whose Cz'-Fpz coupling beat CPz-CP4's was scored on the last recorded channel, a nerve): an "event" is a
stretch of time during which the scripted truth meets an ACNS criterion (amplitude <= 50 % or latency
>= 110 %); time to alert is from the event's start to the first alert in it (or up to 30 s after it ends); an
event without one is missed; an alert outside every event is false. False alerts per 8 h are per
recording-hour of post-baseline time outside events. The evaluator's alerts on the other channels the
simulator scores (the peripheral nerve and cervical channels) are counted too. Each run also reports how well
the scored channel's baseline level was known (scored_level_se) and, per event, loss_z_bound: the z an ideal
test of a complete loss against the 50 % criterion could reach with every sweep of the event, and with the
evaluator's longest window of them (_loss_bound);
evaluator.missed_runs lists the runs with a missed event with those figures.

Scenario kinds (targets: the stimulated side's cortical response unless noted):
  stable      nothing changes
  acute       a drop to 15-45 % with +5..+20 % latency within 0-20 s
  loss        complete loss within 0-20 s
  gradual     every cortical response (both sides) declines over 5-10 min to 62-80 %, +2..+6 % latency:
              a global, anaesthetic-like change that stays above 60 % and must not alert
  recovery    an acute drop to 15-45 %, then recovery to 90-100 % 2-4 min later

MEP accuracy uses ionm.pipeline.synthetic.make_mep (the simulator does not report per-trial truth):
sim-like trials (amplitudes 100-1500 µV, onsets 18-40 ms, EMG 3-10 µV RMS), measured by the evaluator's
own MEP path (conditioning included).
"""

from __future__ import annotations

import time
from typing import Any

import numpy as np

SEED_BASE = 7_340_000
GRACE_S = 30.0  # an alert up to this long after an event ended still counts as its (late) detection
BLOCK = 300  # conventional block average length, sweeps


def _kinds(quick: bool) -> list[tuple[str, str]]:
    full = ["stable"] * 4 + ["acute"] * 6 + ["loss"] * 2 + ["gradual"] * 3 + ["recovery"] * 3
    kinds = ["stable", "acute", "loss", "gradual", "recovery"] if quick else full
    mods = ("ssep-lower", "ssep-upper")
    return [(k, mods[i % 2]) for i, k in enumerate(kinds)]


def _scenario(kind: str, modality: str, rng: np.random.Generator, baseline_end: float,
              duration: float) -> dict[str, Any]:
    side = "tibial_L_cortical" if modality == "ssep-lower" else "median_L_cortical"
    onset = float(rng.uniform(baseline_end + 60.0, duration - 240.0))
    events: list[dict[str, Any]] = []
    if kind in ("acute", "recovery"):
        ev: dict[str, Any] = {"type": "change", "targets": [side], "onset_s": onset,
                              "ramp_s": float(rng.uniform(0.0, 20.0)), "amplitude": float(rng.uniform(0.15, 0.45)),
                              "latency": float(rng.uniform(1.05, 1.20))}
        if kind == "recovery":
            onset = float(rng.uniform(baseline_end + 60.0, duration - 360.0))
            ev["onset_s"] = onset
            ev["recovery"] = {"onset_s": onset + ev["ramp_s"] + float(rng.uniform(120.0, 240.0)),
                              "ramp_s": float(rng.uniform(10.0, 60.0)),
                              "amplitude": float(rng.uniform(0.9, 1.0)), "latency": 1.0}
        events.append(ev)
    elif kind == "loss":
        events.append({"type": "change", "targets": [side], "onset_s": onset, "ramp_s": float(rng.uniform(0, 20)),
                       "amplitude": 0.0, "latency": 1.0})
    elif kind == "gradual":
        start = float(rng.uniform(baseline_end, baseline_end + 60.0))
        events.append({"type": "change", "targets": ["*_cortical"], "onset_s": start,
                       "ramp_s": float(rng.uniform(300.0, 600.0)), "amplitude": float(rng.uniform(0.62, 0.80)),
                       "latency": float(rng.uniform(1.02, 1.06))})
    return {"name": "bench_%s" % kind, "duration_s": duration, "baseline_end_s": baseline_end,
            "mains_hz": float(rng.choice([50.0, 60.0])), "events": events}


def _channels(modality: str) -> list[int]:
    """Every channel the default montage records for the modality, as the console's stream of that stimulated
    site holds them: both cortical channels (for the global/focal scope), the nerve and cervical channels, and
    for the leg the midline Cz'-Fpz backup derivation. The conventional reference judges one channel (the
    stimulated side's best cortical channel) as a reader would; the evaluator sees the whole stream."""
    from ionm_hw.physiology.montage import DEFAULT_MONTAGE

    return [i for i, m in enumerate(DEFAULT_MONTAGE) if m["modality"] == modality]


def _events(t: np.ndarray, amp: np.ndarray, lat: np.ndarray) -> list[tuple[float, float]]:
    """(start, end) of the stretches where the truth meets a criterion."""
    met = (amp <= 0.5) | (lat >= 1.10)
    out: list[tuple[float, float]] = []
    i = 0
    while i < len(t):
        if met[i]:
            j = i
            while j + 1 < len(t) and met[j + 1]:
                j += 1
            out.append((float(t[i]), float(t[j])))
            i = j + 1
        else:
            i += 1
    return out


def _score(alert_times: list[float], events: list[tuple[float, float]]) -> tuple[list[float], int, int]:
    """(times to alert, missed events, false alerts)."""
    used = set()
    tta: list[float] = []
    missed = 0
    for start, end in events:
        hit = [a for a in alert_times if start <= a <= end + GRACE_S]
        if hit:
            tta.append(hit[0] - start)
            used.update(hit)
        else:
            missed += 1
    false = sum(1 for a in alert_times if a not in used)
    return tta, missed, false


def _reference(d: dict[str, Any], ch: int) -> list[float]:
    """Conventional 300-sweep block averages on one channel; alert times (transitions into alert)."""
    from ionm.pipeline import modalities
    from ionm.pipeline.averaging import Average
    from ionm.pipeline.conditioning import ArtifactRejector, Conditioner, blank_slice
    from ionm.pipeline.peaks import PeakMarker, extremum

    m = modalities.get(d["modality"])
    fs, pre = float(d["fs"]), int(d["pre_samples"])
    sweeps = np.asarray(d["sweeps"])[:, ch: ch + 1, :]
    n = sweeps.shape[-1]
    cond = Conditioner(fs, n, pre, m.band_hz, m.blank_ms)
    keep = np.ones(n, dtype=bool)
    keep[blank_slice(fs, pre, n, m.blank_ms)] = False
    rej = ArtifactRejector(1, amplitude_uv=250.0)
    marker = PeakMarker(m, "cortical", fs, pre)
    comp = {c.name: c for c in marker.components}
    assert marker.pair is not None
    first, second = comp[marker.pair[0]], comp[marker.pair[1]]
    base_sum, base_n = np.zeros(n), 0
    block_sum, block_n = np.zeros(n), 0
    ref: tuple[float, float, float, float] | None = None
    alerts: list[float] = []
    in_alert = False
    for i, t in enumerate(d["stim_time_s"]):
        x = cond(sweeps[i].astype(np.float64), float(t))
        if rej.check(sweeps[i], x, keep)[0] is not None:
            continue
        if t <= d["baseline_end_s"]:
            base_sum += x[0]
            base_n += 1
            continue
        if ref is None:
            mean = base_sum / max(base_n, 1)
            peaks = marker.measure(Average(mean, mean, mean, np.array(base_n), np.array(0.0), np.array(0.0)))
            l0, l1 = peaks[first.name].latency_ms, peaks[second.name].latency_ms
            ref = (peaks["%s-%s" % marker.pair].amplitude_uv, l0, l1, 0.0)
        block_sum += x[0]
        block_n += 1
        if block_n < BLOCK:
            continue
        avg = block_sum / block_n
        block_sum[:], block_n = 0.0, 0
        a0, l0, l1, _ = ref
        lat1, v1 = extremum(avg, fs, pre, first.polarity, 0.8 * l0, 1.4 * l0)
        lat2, v2 = extremum(avg, fs, pre, second.polarity, lat1, lat1 + 1.6 * (l1 - l0) + 2.0)
        amp_ratio = abs(v2 - v1) / a0 if np.isfinite(v1 + v2) else 0.0
        lat_ratio = lat1 / l0 if np.isfinite(lat1) else 1.0
        met = amp_ratio < 0.5 or lat_ratio > 1.10
        if met and not in_alert:
            alerts.append(float(t))
        in_alert = met
    return alerts


def _evaluator(d: dict[str, Any]) -> tuple[dict[str, list[float]], Any]:
    """Alert times per channel name, and the evaluator (for what it knew of each channel's baseline)."""
    from ionm.pipeline.evaluator import Evaluator

    sweeps = np.asarray(d["sweeps"])
    ev = Evaluator(float(d["fs"]), int(d["pre_samples"]), sweeps.shape[-1], d["modality"],
                   list(d["channel_names"]), float(d["baseline_end_s"]))
    for i, t in enumerate(d["stim_time_s"]):
        ev.process(sweeps[i], float(t))
    out: dict[str, list[float]] = {name: [] for name in d["channel_names"]}
    for a in ev.alerts:
        out[a.channel_name].append(a.t_s)
    return out, ev


def _loss_bound(ev: Any, ch: int, n_sweeps: int) -> float | None:
    """The z at which an ideal test could put a complete loss below the 50 % criterion, using every one of
    n_sweeps sweeps of the event at the response's known latency: 0.5 / hypot(SE of the mean of n sweeps,
    0.5 x the baseline level's SE), from the evaluator's own noise model of the channel's pool. Below the
    evaluator's evidence level (z 3.5) no average of the event can confirm the loss against that baseline."""
    se_b = ev.baseline_level_se(ch)
    if not np.isfinite(se_b) or n_sweeps <= 0:
        return None
    var1 = float(ev.tracker.windows.baseline_var1[ch])
    return round(0.5 / float(np.hypot(np.sqrt(var1 / n_sweeps), 0.5 * se_b)), 2)


def _stats(values: list[float]) -> dict[str, float | None]:
    if not values:
        return {"median_s": None, "worst_s": None, "n": 0}
    return {"median_s": round(float(np.median(values)), 1), "worst_s": round(float(np.max(values)), 1),
            "n": len(values)}


def _mep_accuracy(quick: bool, seed_base: int) -> dict[str, Any]:
    from ionm.pipeline.evaluator import Evaluator
    from ionm.pipeline.synthetic import make_mep

    rng = np.random.default_rng(seed_base + 999)
    n_sets = 4 if quick else 16
    err_on, rel_p2p, rel_area, detected, total = [], [], [], 0, 0
    for k in range(n_sets):
        n = 25
        amp = np.exp(rng.uniform(np.log(100.0), np.log(1500.0), (n, 1)))
        onset = rng.uniform(18.0, 40.0, (n, 1))
        d = make_mep(n, seed=seed_base + 1000 + k, onset_ms=onset, amplitude_uv=amp,
                     noise_uv=float(rng.uniform(3.0, 10.0)), interval_s=4.0, baseline_end_s=1e9)
        sw = d["sweeps"]
        ev = Evaluator(float(d["fs"]), int(d["pre_samples"]), sw.shape[-1], "mep", ["m"], None)
        for i in range(n):
            f = ev.process(sw[i], float(d["stim_time_s"][i])).mep
            assert f is not None
            total += 1
            if np.isfinite(f.onset_ms[0]):
                detected += 1
                err_on.append(float(f.onset_ms[0] - d["truth"]["onset_ms"][i, 0]))
                rel_p2p.append(float(f.p2p_uv[0] / d["truth"]["p2p_uv"][i, 0] - 1))
                rel_area.append(float(f.area_uv_ms[0] / d["truth"]["area_uv_ms"][i, 0] - 1))
    e, p, a = np.abs(err_on), np.abs(rel_p2p), np.abs(rel_area)
    return {"source": "synthetic (make_mep), sim-like amplitudes/onsets/EMG", "trials": total,
            "detected": detected, "onset_abs_error_ms": {"median": round(float(np.median(e)), 3),
                                                          "p95": round(float(np.percentile(e, 95)), 3)},
            "p2p_abs_rel_error": {"median": round(float(np.median(p)), 4),
                                  "p95": round(float(np.percentile(p, 95)), 4)},
            "area_abs_rel_error": {"median": round(float(np.median(a)), 4),
                                   "p95": round(float(np.percentile(a, 95)), 4)}}


def _summary(out: dict[str, Any]) -> list[str]:
    """The report's figures as lines for the terminal (build/bench.json has everything)."""
    def tta(r: dict[str, Any]) -> str:
        return ("median %s s, worst %s s to alert, %d of %d missed, %d false (%s per 8 h)"
                % (r["median_s"], r["worst_s"], r["missed"], r["events"], r["false_alerts"], r["false_per_8h"]))
    lines = ["%d runs, %.2f h monitored outside events" % (out["runs"], out["monitored_hours"]),
             "evaluator: " + tta(out["evaluator"]),
             "reference (%d-sweep blocks): " % BLOCK + tta(out["reference"]),
             "ratio of medians %s (goal <= 0.33), of worst %s" % (out["ratio_median_tta"], out["ratio_worst_tta"])]
    for r in out["evaluator"]["missed_runs"]:
        b = r["loss_z_bound"][0] if r["loss_z_bound"] else {}
        lines.append("missed: seed %d (%s, %s) on %s, baseline level known to %s, ideal loss z %s over the event, "
                     "%s over the longest window" % (r["seed"], r["kind"], r["modality"], r["scored_channel"],
                                                     "±%.0f %%" % (100 * r["scored_level_se"])
                                                     if r["scored_level_se"] is not None else "?",
                                                     b.get("whole_event"), b.get("longest_window")))
    m = out["mep_accuracy"]
    lines.append("MEP: %d of %d trials detected; onset error median %.2f ms, p95 %.2f ms; peak-to-peak error median "
                 "%.1f %%, area %.1f %%" % (m["detected"], m["trials"], m["onset_abs_error_ms"]["median"],
                                          m["onset_abs_error_ms"]["p95"], 100 * m["p2p_abs_rel_error"]["median"],
                                          100 * m["area_abs_rel_error"]["median"]))
    return lines


def run(quick: bool = False, *, seed_base: int = SEED_BASE, kinds: list[tuple[str, str]] | None = None
        ) -> dict[str, Any]:
    """The benchmark (seed_base and kinds are for development runs on other seeds; the report uses the
    defaults)."""
    from ionm_hw.sweeps import record_sweeps

    t_start = time.perf_counter()
    duration, baseline_end = (600.0, 150.0) if quick else (900.0, 240.0)
    res: dict[str, dict[str, Any]] = {
        who: {"tta": [], "missed": 0, "false": 0, "events": 0} for who in ("evaluator", "reference")}
    other_false, hours = 0, 0.0
    runs = []
    for i, (kind, modality) in enumerate(kinds or _kinds(quick)):
        seed = seed_base + i
        rng = np.random.default_rng(seed)
        scn = _scenario(kind, modality, rng, baseline_end, duration)
        d = record_sweeps(scn, seed, modality=modality, duration_s=duration, pre_ms=5.0,
                          post_ms=50.0 if modality == "ssep-upper" else 90.0, channels=_channels(modality))
        names = list(d["truth"]["names"])
        cortical = next(j for j, nm in enumerate(names) if nm.endswith("_cortical"))
        ch = int(d["truth"]["channel"][cortical])
        t = np.asarray(d["stim_time_s"])
        post = t > baseline_end
        events = _events(t[post], d["truth"]["amplitude"][post, cortical], d["truth"]["latency"][post, cortical])
        outside = float(np.sum(np.diff(t[post]))) - sum(e - s for s, e in events)
        hours += max(outside, 0.0) / 3600.0
        ev_alerts, ev = _evaluator(d)
        per = {"evaluator": ev_alerts[d["channel_names"][ch]], "reference": _reference(d, ch)}
        missed_here = {}
        for who, alerts in per.items():
            tta, missed, false = _score(alerts, events)
            missed_here[who] = missed
            r = res[who]
            r["tta"] += tta
            r["missed"] += missed
            r["false"] += false
            r["events"] += len(events)
        # Other scored channels (peripheral nerve): their own truth.
        for j in range(len(names)):
            cj = int(d["truth"]["channel"][j])
            if j == cortical or cj < 0:
                continue
            ev_j = _events(t[post], d["truth"]["amplitude"][post, j], d["truth"]["latency"][post, j])
            other_false += _score(ev_alerts[d["channel_names"][cj]], ev_j)[2]
        # How well the scored channel's baseline level is known, and for each event the z an ideal test of a
        # complete loss could reach over the whole event (+ the grace): what any method could confirm here.
        level_se = ev.baseline_level_se(ch)
        # The same with the evaluator's longest window in place of the whole event.
        longest = int(ev.tracker.windows.lengths.max())
        n_event = [int(np.sum((t >= s0) & (t <= s1 + GRACE_S))) for s0, s1 in events]
        bounds = [{"whole_event": _loss_bound(ev, ch, n), "longest_window": _loss_bound(ev, ch, min(n, longest))}
                  for n in n_event]
        runs.append({"seed": seed, "kind": kind, "modality": modality, "events": len(events),
                     "scored_channel": d["channel_names"][ch], "missed": missed_here,
                     "scored_level_se": round(level_se, 3) if np.isfinite(level_se) else None,
                     "loss_z_bound": bounds,
                     "evaluator_alerts": [round(a, 1) for a in per["evaluator"]],
                     "reference_alerts": [round(a, 1) for a in per["reference"]],
                     "event_starts": [round(s, 1) for s, _ in events]})
    out: dict[str, Any] = {"runs": len(runs), "monitored_hours": round(hours, 3)}
    for who, r in res.items():
        out[who] = {**_stats(r["tta"]), "events": r["events"], "missed": r["missed"], "false_alerts": r["false"],
                    "false_per_8h": round(r["false"] / max(hours, 1e-9) * 8.0, 2)}
    out["evaluator"]["false_alerts_other_channels"] = other_false
    # Each run with a missed event, with what the evaluator knew of the scored channel's baseline.
    out["evaluator"]["missed_runs"] = [{k: r[k] for k in ("seed", "kind", "modality", "scored_channel",
                                                         "scored_level_se", "loss_z_bound", "event_starts")}
                                       for r in runs if r["missed"]["evaluator"]]
    em, rm = out["evaluator"]["median_s"], out["reference"]["median_s"]
    ew, rw = out["evaluator"]["worst_s"], out["reference"]["worst_s"]
    out["ratio_median_tta"] = round(em / rm, 3) if em is not None and rm else None
    out["ratio_worst_tta"] = round(ew / rw, 3) if ew is not None and rw else None
    out["goal"] = {"median_tta_ratio_le_1_3": out["ratio_median_tta"] is not None and out["ratio_median_tta"] <= 1 / 3,
                   "no_missed_change": out["evaluator"]["missed"] == 0,
                   "false_per_8h_le_1": out["evaluator"]["false_per_8h"] <= 1.0}
    out["mep_accuracy"] = _mep_accuracy(quick, seed_base)
    out["summary"] = _summary(out)
    out["details"] = runs
    out["elapsed_s"] = round(time.perf_counter() - t_start, 1)
    return out


if __name__ == "__main__":
    import json
    import sys

    print(json.dumps(run(quick="--quick" in sys.argv), indent=1))
