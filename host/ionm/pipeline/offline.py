"""`ionm evaluate FILE.npz`: evaluate a sweep file offline, causally, as the live pipeline would.

Default output: the alerts (one per transition into the alert state). --trials: per-sweep features instead
(MEP: onset latency, peak-to-peak, area per channel; SSEP: the tracker's amplitude and latency with their
uncertainty). --json prints one JSON object; without it, a readable summary. The file format is described
in docs/EVALUATION.md ("Sweep files") and ionm.pipeline.sweepfile.
"""

from __future__ import annotations

import math
from typing import Any


def _num(v: Any, digits: int = 4) -> float | None:
    f = float(v)
    return None if not math.isfinite(f) else round(f, digits)


def evaluate(sf: Any, *, trials: bool = False, mains: str = "both") -> dict[str, Any]:
    """Run the evaluator over a SweepFile; the JSON-ready result of `ionm evaluate` (--trials if trials)."""
    from ionm.pipeline.evaluator import Evaluator, EvaluatorConfig

    mains_hz = {"50": (50.0,), "60": (60.0,), "both": (50.0, 60.0), "off": ()}[mains]
    ev = Evaluator(sf.fs, sf.pre_samples, sf.n_samples, sf.modality, sf.channel_names, sf.baseline_end_s,
                   EvaluatorConfig(mains_hz=mains_hz), stimulated=sf.stimulated)
    rows: list[dict[str, Any]] = []
    for i in range(sf.n_sweeps):
        r = ev.process(sf.sweeps[i], float(sf.stim_time_s[i]))
        if not trials:
            continue
        for c, name in enumerate(sf.channel_names):
            row: dict[str, Any] = {"t_s": round(float(sf.stim_time_s[i]), 6), "channel": name,
                                   "rejected": r.reasons[c]}
            if r.mep is not None:
                row.update(onset_ms=_num(r.mep.onset_ms[c], 3), p2p_uv=_num(r.mep.p2p_uv[c], 2),
                           area_uv_ms=_num(r.mep.area_uv_ms[c], 3))
            else:
                ks = r.tracker
                tracked = ks is not None and bool(ev.tracked[c])
                amp_uv, lat_ms = ev.baseline_reference(c) if tracked else (float("nan"), float("nan"))
                nan = float("nan")
                a, s = (ks.amplitude[c], ks.latency[c]) if tracked and ks else (nan, nan)
                a_sd, s_sd = (ks.amplitude_sd[c], ks.latency_sd[c]) if tracked and ks else (nan, nan)
                row.update(amplitude_ratio=_num(a), amplitude_ratio_sd=_num(a_sd),
                           latency_ratio=_num(s), latency_ratio_sd=_num(s_sd),
                           amplitude_uv=_num(a * amp_uv, 3), amplitude_sd_uv=_num(a_sd * amp_uv, 3),
                           latency_ms=_num(s * lat_ms, 3), latency_sd_ms=_num(s_sd * lat_ms, 3))
            rows.append(row)
    out: dict[str, Any] = {"file_modality": sf.modality, "n_sweeps": sf.n_sweeps, "channels": sf.channel_names,
                           "baseline_end_s": sf.baseline_end_s, "rejected": ev.rejected()}
    if trials:
        out["trials"] = rows
    else:
        out["alerts"] = [a.as_json() for a in ev.alerts]
        out["final_state"] = dict(zip(sf.channel_names, ev.mep_alerts.state if ev.modality.single_trial
                                      else ev.ssep_alerts.state, strict=True))
        out["baseline"] = {name: {"amplitude_uv": _num(ev.baseline_reference(c)[0], 3),
                                  "latency_ms": _num(ev.baseline_reference(c)[1], 3),
                                  "tracked": bool(ev.tracked[c]),
                                  "level_se": _num(ev.baseline_level_se(c), 4)}
                           for c, name in enumerate(sf.channel_names)}
    return out
