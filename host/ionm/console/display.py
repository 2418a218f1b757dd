"""What a viewer is sent: what the page draws, bounded however long the case runs.

The full history is in the case store (every measurement, every average, every event); the console only has to
draw the screen. Measured on a simulated case (bench/snapshot_size.py), a new viewer's snapshot grew with the
case (453 kB at 60 s, 737 kB at 600 s, issue 18) and the update stream ran at 180-445 kB/s per viewer: every
trend point since the start, every timeline event, eight stack traces of every channel, each trace as 400
numbers to 1/1000 µV, the baseline again in every stream frame, hidden channels included. The page draws

- trends over the last TREND_RECENT_S (600 s) of the case, for the channels on the stimulated side;
- the four previous averages of the stack (console.js: traces.slice(-5, -1)), for the same channels;
- the newest timeline events.

So:

- a displayed trace is sent as integers in steps of `q` µV, `q` a power of ten giving WAVE_DIGITS significant
  digits at the trace's peak (a step is at most 1 % of the peak, under a pixel on a row of the page);
  a stack trace, drawn faint behind the newest, has STACK_POINTS points and STACK_DIGITS digits;
- a hidden channel (one the page does not show) has no waveform, peaks or stack traces;
- the baseline waveforms travel in their own frame (base:KEY), sent when a baseline is set, not with every
  sweep;
- the stack travels as one append per new trace; a viewer keeps the newest STACK_SHOWN;
- the engine keeps each stream's trend at full resolution over the last TREND_RECENT_S and, before that, one
  point per TREND_HISTORY_BUCKET_S (widened as the case grows, so at most TREND_HISTORY_MAX points), each
  decimated point holding, per channel, the lowest amplitude and the highest latency ratio of its stretch (a
  dip never disappears from the display); compact_trend bounds it;
- the snapshot carries the trend of the last TREND_RECENT_S in at most TREND_RECENT_POINTS points per stream
  and the case before it in at most TREND_OLDER_POINTS, as columns (one "trends" append per stream), the newest
  STACK_SHOWN stack traces, and the newest timeline events up to TIMELINE_SHOWN events and TIMELINE_BYTES.

Incremental trend points are untouched: a viewer that stays connected draws every point.
"""

from __future__ import annotations

import json
import math
from typing import Any

import numpy as np

TREND_RECENT_S = 600.0
TREND_RECENT_POINTS = 200
TREND_OLDER_POINTS = 60
TREND_HISTORY_BUCKET_S = 60.0  # the engine's trend before the recent window: one point a minute ...
TREND_HISTORY_MAX = 600  # ... then wider stretches: at most this many points however long the case
STACK_SHOWN = 5
TIMELINE_SHOWN = 300
TIMELINE_BYTES = 24_000
WAVE_DIGITS = 3
STACK_DIGITS = 2
STACK_POINTS = 200
TINY_UV = 1e-9  # a displayed value below this is zero: far under any amplifier's resolution


def trace(w: np.ndarray, digits: int = WAVE_DIGITS) -> dict[str, Any]:
    """A displayed trace (µV) as {"q": step µV, "v": integers, None where the value is not finite}: the page draws
    v * q. The step is the power of ten that gives `digits` significant digits at the trace's peak."""
    w = np.asarray(w, dtype=np.float64)
    finite = np.isfinite(w)
    w = np.where(finite & (np.abs(w) < TINY_UV), 0.0, w)  # (a step for a subnormal peak would underflow to 0)
    peak = float(np.abs(w[finite]).max()) if finite.any() else 0.0
    e = math.floor(math.log10(peak)) - (digits - 1) if peak > 0 else 0
    q = 10.0 ** e if e < 0 else float(10 ** e)
    q = float("%.0e" % q)  # 0.001, not 0.0010000000000000002
    v = np.round(np.where(finite, w, 0.0) / q)
    return {"q": q, "v": [int(x) if ok else None for x, ok in zip(v.tolist(), finite.tolist(), strict=True)]}


def untrace(t: dict[str, Any] | None) -> list[float | None] | None:
    """The µV values a trace stands for (what the page draws)."""
    if t is None:
        return None
    return [None if x is None else x * t["q"] for x in t["v"]]


def _worst(values: list[Any], pick: Any) -> Any:
    finite = [v for v in values if v is not None and isinstance(v, (int, float)) and math.isfinite(v)]
    return pick(finite) if finite else None


def _merge(group: list[dict[str, Any]]) -> dict[str, Any]:
    """One trend point for a stretch: the newest point's time, per channel the lowest amplitude and the highest
    latency ratio of the stretch."""
    last = group[-1]
    if len(group) == 1:
        return last
    n_ch = max(len(p.get("amp") or []) for p in group)
    amp = [_worst([(p.get("amp") or [None] * n_ch)[c] for p in group], min) for c in range(n_ch)]
    n_ch = max(len(p.get("lat") or []) for p in group)
    lat = [_worst([(p.get("lat") or [None] * n_ch)[c] for p in group], max) for c in range(n_ch)]
    return dict(last, amp=amp, lat=lat)


def decimate_points(points: list[dict[str, Any]], n: int) -> list[dict[str, Any]]:
    """At most n trend points for a stretch: equal time buckets, each the point at its newest time with the
    per-channel lowest amplitude and highest latency of the bucket."""
    if len(points) <= n:
        return list(points)
    t0, t1 = float(points[0]["t"]), float(points[-1]["t"])
    width = (t1 - t0) / n or 1.0
    buckets: dict[int, list[dict[str, Any]]] = {}
    for p in points:
        buckets.setdefault(min(n - 1, int((float(p["t"]) - t0) / width)), []).append(p)
    return [_merge(group) for _, group in sorted(buckets.items())]


def _recent_start(points: list[dict[str, Any]]) -> int:
    t_end = float(points[-1]["t"])
    return next((i for i, p in enumerate(points) if float(p["t"]) >= t_end - TREND_RECENT_S), len(points))


def compact_trend(points: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """A stream's trend as the engine keeps it: every point of the last TREND_RECENT_S; before that, one point per
    stretch of TREND_HISTORY_BUCKET_S (doubled until at most TREND_HISTORY_MAX stretches), aligned to case time so
    that compacting again changes nothing already compacted. Worst values survive (see _merge)."""
    if not points:
        return []
    k = _recent_start(points)
    older = points[:k]
    width = TREND_HISTORY_BUCKET_S
    while older and (float(older[-1]["t"]) - float(older[0]["t"])) / width + 1 > TREND_HISTORY_MAX:
        width *= 2
    buckets: dict[int, list[dict[str, Any]]] = {}
    for p in older:
        buckets.setdefault(int(float(p["t"]) // width), []).append(p)
    return [_merge(group) for _, group in sorted(buckets.items())] + points[k:]


def append_trend(points: list[dict[str, Any]], point: dict[str, Any]) -> None:
    """Add a trend point to an engine's list, compacting the history once a bucket's worth has aged out of the
    recent window (amortised: the list never exceeds its bound by more than TREND_HISTORY_BUCKET_S points)."""
    points.append(point)
    if len(points) > trend_bound():
        points[:] = compact_trend(points)


def trend_bound(every_s: float = 1.0) -> int:
    """The most trend points an engine keeps per stream at one point per every_s (any case length)."""
    return int(TREND_RECENT_S / every_s) + TREND_HISTORY_MAX + int(TREND_HISTORY_BUCKET_S / every_s) + 2


def display_trend(points: list[dict[str, Any]], show: list[bool] | None = None) -> list[dict[str, Any]]:
    """A stream's trend points as a snapshot carries them (see the module's docstring)."""
    if not points:
        return []
    k = _recent_start(points)
    out = decimate_points(points[:k], TREND_OLDER_POINTS) + decimate_points(points[k:], TREND_RECENT_POINTS)
    if show is not None:
        out = [dict(p, amp=_shown(p.get("amp"), show), lat=_shown(p.get("lat"), show)) for p in out]
    return out


def trend_columns(key: str, points: list[dict[str, Any]]) -> dict[str, Any]:
    """Trend points of one stream as one append: {"k": "trends", "s", "t": [...], "amp": [column per channel,
    None for a channel with no value], "lat": [...]}; the page adds them as points (console.js applyAppend)."""
    def cols(name: str) -> list[list[float | None] | None]:
        n_ch = max((len(p.get(name) or []) for p in points), default=0)
        out: list[list[float | None] | None] = []
        for c in range(n_ch):
            col = [_r3((p.get(name) or [None] * n_ch)[c]) for p in points]
            out.append(col if any(v is not None for v in col) else None)
        return out

    return {"k": "trends", "s": key, "t": [p["t"] for p in points], "amp": cols("amp"), "lat": cols("lat")}


def _r3(v: Any) -> float | None:
    return round(float(v), 3) if v is not None and math.isfinite(float(v)) else None


def _shown(values: list[Any] | None, show: list[bool]) -> list[Any] | None:
    if values is None:
        return None
    return [v if c < len(show) and show[c] else None for c, v in enumerate(values)]


def recent_events(timeline: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The newest timeline events, at most TIMELINE_SHOWN of them and TIMELINE_BYTES of JSON."""
    out: list[dict[str, Any]] = []
    size = 0
    for ev in reversed(timeline[-TIMELINE_SHOWN:]):
        size += len(json.dumps(ev, separators=(",", ":"))) + 1
        if size > TIMELINE_BYTES and out:
            break
        out.append(ev)
    return out[::-1]


def bounded_snapshot(snap: dict[str, Any], trend: dict[str, list[dict[str, Any]]], timeline: list[dict[str, Any]],
                     show: dict[str, list[bool]]) -> dict[str, Any]:
    """The engine's snapshot with its trends and timeline bounded as the page draws them."""
    appends = [trend_columns(k, display_trend(trend[k], show.get(k))) for k in trend if trend[k]]
    return {"frames": snap["frames"], "appends": appends + recent_events(timeline)}
