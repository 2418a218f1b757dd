"""A new viewer's snapshot is bounded however long the case runs, and still draws what the page draws: the
trend's dips survive decimation, the newest point stays exact, hidden channels carry no waveform."""

from __future__ import annotations

import json

import numpy as np
import pytest
from hypothesis import given, settings, strategies as hs

from ionm.case.store import CaseStore
from ionm.console import display
from ionm.console.scripted import command, injury_scenario, run_case


def points(n: int, channels: int = 4, dip_at: int | None = None, every_s: float = 1.0) -> list[dict]:
    rng = np.random.default_rng(n)
    out = []
    for k in range(n):
        amp = [float(1.0 + 0.05 * rng.standard_normal()) for _ in range(channels)]
        lat = [float(1.0 + 0.01 * rng.standard_normal()) for _ in range(channels)]
        if dip_at is not None and k == dip_at:
            amp[1], lat[2] = 0.2, 1.3
        amp[3] = None  # an untracked channel
        out.append({"k": "trend", "s": "x", "t": round(k * every_s, 2), "amp": amp, "lat": lat})
    return out


def test_eight_hours_of_trend_become_a_bounded_display_that_keeps_the_dips_and_the_newest_point() -> None:
    pts = points(8 * 3600, dip_at=5000)
    shown = display.display_trend(pts)
    assert len(shown) <= display.TREND_RECENT_POINTS + display.TREND_OLDER_POINTS
    assert [p["t"] for p in shown] == sorted({p["t"] for p in shown})  # ascending, as the page appends them
    assert shown[-1]["t"] == pts[-1]["t"]  # incremental points after the snapshot continue from the newest
    assert min(p["amp"][1] for p in shown) == 0.2 and max(p["lat"][2] for p in shown) == 1.3  # a dip survives
    assert all(p["amp"][3] is None for p in shown)
    recent = [p for p in shown if p["t"] >= pts[-1]["t"] - display.TREND_RECENT_S]
    assert len(recent) >= display.TREND_RECENT_POINTS - 1  # the drawn window keeps its resolution


@settings(max_examples=60, deadline=None)
@given(n=hs.integers(0, 3000), every=hs.sampled_from([0.5, 1.0, 3.0]), dip=hs.integers(0, 2999))
def test_display_trend_never_exceeds_its_bound_and_keeps_the_worst_values(n: int, every: float, dip: int) -> None:
    pts = points(n, dip_at=dip if dip < n else None, every_s=every)
    shown = display.display_trend(pts)
    assert len(shown) <= display.TREND_RECENT_POINTS + display.TREND_OLDER_POINTS
    if n:
        assert shown[-1]["t"] == pts[-1]["t"]
        for c in (0, 1, 2):
            assert min(p["amp"][c] for p in shown) == min(p["amp"][c] for p in pts)
            assert max(p["lat"][c] for p in shown) == max(p["lat"][c] for p in pts)
    if n <= display.TREND_RECENT_POINTS:
        assert shown == pts  # nothing to decimate


@pytest.fixture(scope="module")
def engine(tmp_path_factory: pytest.TempPathFactory):
    store = CaseStore(tmp_path_factory.mktemp("display") / "cases.db")
    eng, _ = run_case(store, injury_scenario(14.0), duration_s=24.0, mep_every=1.0, actions=[
        (8.0, command("tech", "technologist", {"cmd": "baseline"}))])
    yield eng
    store.close()


def test_the_snapshot_draws_what_the_page_draws_and_nothing_hidden(engine) -> None:
    snap = engine.snapshot()
    json.dumps(snap, allow_nan=False)  # strict JSON, as sent
    for key, st in engine.streams.items():
        f = snap["frames"]["stream:" + key]
        full = engine._stream_frame(st)
        base = snap["frames"]["base:" + key]
        for c, ch in enumerate(f["channels"]):
            assert "base" not in ch  # the baseline has a frame of its own, not a copy in every stream frame
            if st.show[c]:
                assert ch == full["channels"][c]  # a shown channel exactly as the updates draw it
                assert ch["wave"]["v"] and base["waves"][c]["v"]
            else:
                assert ch["wave"] is None and ch["peaks"] == [] and base["waves"][c] is None
        stack = snap["frames"]["stack:" + key]["traces"]
        assert 0 < len(stack) <= display.STACK_SHOWN and stack == list(st.stack)
        for tr in stack:
            assert all((w is None) == (not st.show[i]) for i, w in enumerate(tr["waves"]))
            assert all(len(w["v"]) <= display.STACK_POINTS for w in tr["waves"] if w is not None)
        trend = [a for a in snap["appends"] if a.get("k") == "trends" and a["s"] == key]
        assert len(trend) == 1 and trend[0]["t"][-1] == engine.trend[key][-1]["t"]
    events = [a for a in snap["appends"] if a.get("k") == "event"]
    assert events == engine.timeline[-display.TIMELINE_SHOWN:]
    assert any(e["kind"] == "alert" for e in events)


def test_a_hidden_channel_has_no_trend_in_the_snapshot(engine) -> None:
    snap = engine.snapshot()
    for key, st in engine.streams.items():
        (cols,) = [a for a in snap["appends"] if a.get("k") == "trends" and a["s"] == key]
        for c, shown in enumerate(st.show):
            if not shown:
                assert cols["amp"][c] is None and cols["lat"][c] is None
            elif st.evaluator.tracked[c]:
                assert len(cols["amp"][c]) == len(cols["t"])


def test_the_snapshot_trend_columns_are_the_display_points() -> None:
    pts = points(900, dip_at=100)
    cols = display.trend_columns("x", display.display_trend(pts))
    rows = [{"t": t, "amp": [None if col is None else col[i] for col in cols["amp"]],
             "lat": [None if col is None else col[i] for col in cols["lat"]]} for i, t in enumerate(cols["t"])]
    for r, p in zip(rows, display.display_trend(pts), strict=True):
        assert r["t"] == p["t"]
        for name in ("amp", "lat"):
            assert r[name] == [None if v is None else pytest.approx(v, abs=6e-4) for v in p[name]]
    assert cols["amp"][3] is None  # a channel with no value at all: one null, not a column of them


@settings(max_examples=80, deadline=None)
@given(w=hs.lists(hs.one_of(hs.floats(-5000, 5000), hs.just(float("nan"))), min_size=1, max_size=50),
       digits=hs.sampled_from([2, 3]))
def test_a_trace_is_sent_to_its_digits_and_keeps_its_gaps(w: list[float], digits: int) -> None:
    t = display.trace(np.array(w), digits)
    json.dumps(t, allow_nan=False)
    back = display.untrace(t)
    assert back is not None and len(back) == len(w)
    finite = [abs(v) for v in w if not np.isnan(v) and abs(v) >= display.TINY_UV]
    peak = max(finite, default=0.0)
    for v, b in zip(w, back, strict=True):
        if np.isnan(v):
            assert b is None
        else:
            assert b is not None and abs(b - v) <= 0.5 * t["q"] * (1 + 1e-9) + display.TINY_UV
    if peak > 0:
        assert peak / 10 ** digits < t["q"] <= peak / 10 ** (digits - 1)  # digits significant digits at the peak
        assert all(abs(x) < 10 ** digits + 1 for x in t["v"] if x is not None)


def test_a_trace_of_vanishing_values_is_sent_as_zeros_not_a_crash() -> None:
    """Hypothesis found it in a fresh clone: a peak of 1e-310 µV (subnormal) made the step underflow to 0 and the
    encoder divide by it (OverflowError). Values below TINY_UV are zero for display."""
    for w in ([5e-324], [1e-310, -2e-312], [0.0, 1e-13]):
        t = display.trace(np.array(w))
        assert t["v"] == [0] * len(w) and t["q"] > 0


def test_eight_hours_of_trend_stay_bounded_in_the_engine_list_and_keep_the_worst_values() -> None:
    pts = points(8 * 3600, dip_at=5000)
    kept: list[dict] = []
    longest = 0
    for p in pts:
        display.append_trend(kept, p)
        longest = max(longest, len(kept))
    assert longest <= display.trend_bound()
    assert len(kept) < 8 * 3600 / 10
    recent = [p for p in kept if p["t"] >= pts[-1]["t"] - display.TREND_RECENT_S]
    assert recent == pts[-len(recent):]  # the recent window at full resolution, untouched
    assert min(p["amp"][1] for p in kept) == 0.2 and max(p["lat"][2] for p in kept) == 1.3  # the dip survives
    again = display.compact_trend(kept)
    assert display.compact_trend(again) == again  # compacting what is compacted changes nothing


def test_a_very_long_case_still_keeps_at_most_the_bound() -> None:
    pts = points(40 * 3600, every_s=1.0)
    kept = display.compact_trend(pts)
    assert len(kept) <= display.trend_bound()
    assert [p["t"] for p in kept] == sorted(p["t"] for p in kept)


def test_the_engine_trend_is_compacted_while_the_store_keeps_every_point(tmp_path, monkeypatch) -> None:
    monkeypatch.setattr(display, "TREND_RECENT_S", 4.0)
    monkeypatch.setattr(display, "TREND_HISTORY_BUCKET_S", 2.0)
    monkeypatch.setattr(display, "TREND_HISTORY_MAX", 3)
    store = CaseStore(tmp_path / "cases.db")
    try:
        eng, cid = run_case(store, injury_scenario(100.0), duration_s=20.0, mep_every=1.0)
        for key, pts in eng.trend.items():
            stored = [m for m in store.rows("measurements", cid) if m["stream"] == key]
            assert len(stored) >= 15
            assert len(pts) <= display.trend_bound() < len(stored)
            assert pts[-1]["t"] == round(stored[-1]["t_s"], 2)
    finally:
        store.close()


def test_the_snapshot_timeline_is_the_newest_events_within_its_bytes() -> None:
    timeline = [{"k": "event", "id": i, "t_s": float(i), "wall": 0.0, "kind": "note", "user": "tech",
                 "text": "note %d " % i + "x" * 300} for i in range(1, 1001)]
    shown = display.recent_events(timeline)
    assert shown and shown[-1]["id"] == 1000  # the newest is there ...
    assert [e["id"] for e in shown] == list(range(1001 - len(shown), 1001))  # ... and those before it, in order
    assert len(json.dumps(shown, separators=(",", ":"))) <= display.TIMELINE_BYTES
    assert len(shown) < display.TIMELINE_SHOWN
    short = timeline[:5]
    assert display.recent_events(short) == short
