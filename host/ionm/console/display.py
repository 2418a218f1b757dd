"""What a new viewer's snapshot carries: what the page draws, bounded however long the case runs.

The full history is in the case store (every measurement, every average, every event); a snapshot only has to
draw the screen. Measured on a simulated case (bench/snapshot_size.py), a snapshot grew with the case (453 kB at
60 s, 737 kB at 600 s, issue 18): every trend point since the start, every timeline event, eight stack traces of
every channel. The page draws

- trends over the last TREND_RECENT_S (600 s) of the case, for the channels on the stimulated side;
- the four previous averages of the stack (console.js: traces.slice(-5, -1)), for the same channels;
- the newest 300 timeline events.

So the snapshot keeps: the trend of the last TREND_RECENT_S in at most TREND_RECENT_POINTS points per stream and
the case before it in at most TREND_OLDER_POINTS, each point of a decimated stretch holding, per channel, the
lowest amplitude and the highest latency ratio of the stretch (a dip never disappears from the display); the
newest STACK_SHOWN stack traces; the newest TIMELINE_SHOWN events; and no waveform of a channel the page does not
show. Incremental updates are untouched: a viewer that stays connected draws every point.
"""

from __future__ import annotations

import math
from typing import Any

TREND_RECENT_S = 600.0
TREND_RECENT_POINTS = 200
TREND_OLDER_POINTS = 60
STACK_SHOWN = 5
TIMELINE_SHOWN = 300


def _worst(values: list[Any], pick: Any) -> Any:
    finite = [v for v in values if v is not None and isinstance(v, (int, float)) and math.isfinite(v)]
    return pick(finite) if finite else None


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
    out = []
    for _, group in sorted(buckets.items()):
        last = group[-1]
        n_ch = max(len(p.get("amp") or []) for p in group)
        amp = [_worst([(p.get("amp") or [None] * n_ch)[c] for p in group], min) for c in range(n_ch)]
        n_ch = max(len(p.get("lat") or []) for p in group)
        lat = [_worst([(p.get("lat") or [None] * n_ch)[c] for p in group], max) for c in range(n_ch)]
        out.append(dict(last, amp=amp, lat=lat))
    return out


def display_trend(points: list[dict[str, Any]], show: list[bool] | None = None) -> list[dict[str, Any]]:
    """A stream's trend points as a snapshot carries them (see the module's docstring)."""
    if not points:
        return []
    t_end = float(points[-1]["t"])
    k = next((i for i, p in enumerate(points) if float(p["t"]) >= t_end - TREND_RECENT_S), len(points))
    out = decimate_points(points[:k], TREND_OLDER_POINTS) + decimate_points(points[k:], TREND_RECENT_POINTS)
    if show is not None:
        out = [dict(p, amp=_shown(p.get("amp"), show), lat=_shown(p.get("lat"), show)) for p in out]
    return out


def _shown(values: list[Any] | None, show: list[bool]) -> list[Any] | None:
    if values is None:
        return None
    return [v if c < len(show) and show[c] else None for c, v in enumerate(values)]


def bounded_snapshot(snap: dict[str, Any], trend: dict[str, list[dict[str, Any]]], timeline: list[dict[str, Any]],
                     show: dict[str, list[bool]]) -> dict[str, Any]:
    """The engine's snapshot with its trends, stacks, timeline and hidden channels bounded as the page draws them."""
    frames = dict(snap["frames"])
    for key, f in list(frames.items()):
        if key.startswith("stream:") and f["key"] in show:
            sh = show[f["key"]]
            frames[key] = dict(f, channels=[c if sh[i] else dict(c, wave=None, base=None, peaks=[])
                                            for i, c in enumerate(f["channels"])])
        elif key.startswith("stack:") and f["key"] in show:
            sh = show[f["key"]]
            frames[key] = dict(f, traces=[dict(tr, waves=[w if i < len(sh) and sh[i] else None
                                                          for i, w in enumerate(tr["waves"])])
                                          for tr in f["traces"][-STACK_SHOWN:]])
    appends = [p for k in trend for p in display_trend(trend[k], show.get(k))] + list(timeline[-TIMELINE_SHOWN:])
    return {"frames": frames, "appends": appends}
