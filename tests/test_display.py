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
        for c, ch in enumerate(f["channels"]):
            if st.show[c]:
                assert ch == full["channels"][c]  # a shown channel exactly as the updates draw it
            else:
                assert ch["wave"] is None and ch["base"] is None
        stack = snap["frames"]["stack:" + key]["traces"]
        assert stack == [dict(tr, waves=[w if st.show[i] else None for i, w in enumerate(tr["waves"])])
                         for tr in list(st.stack)[-display.STACK_SHOWN:]]
        trend = [a for a in snap["appends"] if a.get("k") == "trend" and a["s"] == key]
        assert trend and trend[-1]["t"] == engine.trend[key][-1]["t"]
    events = [a for a in snap["appends"] if a.get("k") == "event"]
    assert events == engine.timeline[-display.TIMELINE_SHOWN:]
    assert any(e["kind"] == "alert" for e in events)


def test_a_hidden_channel_has_no_trend_in_the_snapshot(engine) -> None:
    snap = engine.snapshot()
    for key, st in engine.streams.items():
        for p in (a for a in snap["appends"] if a.get("k") == "trend" and a["s"] == key):
            for c, shown in enumerate(st.show):
                if not shown:
                    assert p["amp"][c] is None and p["lat"][c] is None
