"""EEG and BAEP at the hub (issue 21 item 3 with issue 22's modalities): what a room's console shows of them reaches
the physician's tile and case view through NATS: each hemisphere's state with relative alpha, the DSA columns and the
indices' trend of the last 10 min, and the BAEP's newest average with waves I, III and V marked against its
baseline. Real nats-server (the wheel's), the hub's page served for real, the console engine on the scenarios'
EEG and BAEP."""

from __future__ import annotations

import base64
import json
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
from test_hub_browser import ARGS, CHROMIUM, logged_in_tab
from test_hub_physician import Page, hub_nats

from ionm.board.eegbaep import BaepCase, EegCase
from ionm.case.store import CaseStore
from ionm.console.engine import CaseEngine

CLAMP_S = 300.0  # cea_clamp_ischaemia: the left clamp


def play(engine: CaseEngine, source: Any, until_s: float, baep: bool) -> None:
    def upto():
        for block in source:
            if block.t_s >= until_s - 1e-9:
                return
            yield block

    if baep:
        engine.run_baep_source(upto(), stream=source.stream)
    else:
        engine.run_eeg_source(upto())
    end = time.monotonic() + 60
    while (view := engine.baep if baep else engine.eeg) is None or view.t_s < until_s - 0.5:
        assert time.monotonic() < end, "did not reach %.0f s" % until_s
        time.sleep(0.05)


@contextmanager
def hub_and_room(tmp_path: Path, procedure: str, **engine_kw: Any) -> Iterator[tuple[Page, CaseEngine, Any]]:
    """The hub (access file, the page served) and a room's console engine (started, with a case of `procedure`) with
    the room's publisher to the hub straight: (the page, the engine, the publisher, for bridge.attach). All stopped
    on the way out."""
    from ionm.hub.publisher import Publisher

    server, service = hub_nats(tmp_path / "hub")
    page = Page(server.url, service)
    store = CaseStore(tmp_path / "cases.db")
    cid = store.open_case(patient_id="HUB-1", procedure=procedure)
    engine = CaseEngine(store, cid, **engine_kw)
    pub = Publisher(server.url, "General", "OR 1", engine.case["uid"], user="or1", password="pw-1")
    try:
        yield page, engine, pub
    finally:
        page.close()
        engine.stop()
        pub.close(2)
        server.stop()
        store.close()


@contextmanager
def room_with_eeg_and_baep(tmp_path: Path) -> Iterator[tuple[Page, dict[str, Any], str]]:
    """The hub and a room publishing to it, which has played the clamp ischaemia's EEG to 345 s (left clamp at
    300 s) and a BAEP whose wave V is lost at 300 s to 400 s: (the page, the room's newest "eeg" and "baep" frames
    as its console got them, the case's uid)."""
    from ionm.hub import bridge

    with hub_and_room(tmp_path, "left carotid endarterectomy", auto_baseline_s=240.0) as (page, engine, pub):
        bridge.attach(engine, pub)
        sent: dict[str, Any] = {"eegraw": []}  # the room's newest frames as its console's page got them, its raw EEG

        def keep(frames: list, appends: list) -> None:
            sent.update((k, json.loads(js)) for k, js, _t in frames if k in ("eeg", "baep"))
            sent["eegraw"].extend(a for js in appends if (a := json.loads(js)).get("k") == "eegraw")

        engine.subscribe(keep)
        engine.start()
        loss = tmp_path / "loss.json"  # wave V lost within 2 s at 300 s
        loss.write_text(json.dumps({"name": "short_loss", "duration_s": 420.0, "channels": ["Cz-Ai", "Cz-Ac"],
                                    "events": [{"kind": "loss", "onset_s": CLAMP_S, "ramp_s": 2.0}]}))
        eeg = EegCase("cea_clamp_ischaemia", 131, speed=0.0)
        play(engine, eeg, CLAMP_S - 1.0, baep=False)
        engine.call(lambda: engine._command("tech", "technologist", {"cmd": "mark", "event": "clamp"}))
        play(engine, eeg, 345.0, baep=False)
        play(engine, BaepCase(str(loss), 141, speed=0.0), 400.0, baep=True)
        engine.call(lambda: None)
        assert pub.flush(20), pub.last_error
        yield page, sent, engine.case["uid"]


def test_a_rooms_eeg_and_baep_reach_the_physicians_tile_and_case_view(tmp_path: Path) -> None:
    with room_with_eeg_and_baep(tmp_path) as (page, sent, case):
        page.login()
        tile = page.wait(lambda: (s := page.get("/state.json")) and s["cases"] and (t := s["cases"][0])["eeg"]
                         and t["baep"] and t["baep"]["state"] == "alert" and t["eeg"]["t"] >= 343.0 and t, 20)
        view = page.get("/case/%s.json" % case)
    room_eeg, room_baep = sent["eeg"], sent["baep"]
    # the tile: the clamped side in ischaemia with its relative alpha fallen below the other side's; wave V lost
    assert room_eeg["state"] == {"L": "ischaemia", "R": "normal"}
    assert tile["eeg"]["state"] == room_eeg["state"]
    assert tile["eeg"]["ra"]["L"] < tile["eeg"]["ra"]["R"], tile["eeg"]
    assert tile["baep"]["stream"] == "baep/L ear" and tile["baep"]["base_v_ms"] > 5.0
    assert tile["eeg"]["clamp"] == room_eeg["clamp"] and abs(room_eeg["clamp"]["clamp_s"] - (CLAMP_S - 1.0)) < 1.0
    # the case view: the EEG's state as the room has it (without its clock), and its epochs: one per 2 s, in order,
    # each with both hemispheres' DSA columns of the frame's frequency bins, the newest 10 min of them
    eeg = view["eeg"]
    assert {k: v for k, v in room_eeg.items() if k not in ("t_s", "view_s")} == eeg["frame"]  # (the room's span)
    epochs = eeg["epochs"]
    ts = [e["t"] for e in epochs]
    assert len(epochs) == 172 and all(abs(b - a - 2.0) < 1e-6 for a, b in zip(ts, ts[1:], strict=False))
    assert ts[-1] >= 343.0
    n = eeg["frame"]["dsa"]["n"]
    assert all(len(base64.b64decode(e["dL"])) == n == len(base64.b64decode(e["dR"])) for e in epochs)
    assert all(len(e["L"]) == len(eeg["frame"]["trend_fields"]) for e in epochs)
    # the raw EEG of the last 10 s, as the room's console drew it (travelling with the epochs): every derivation, the
    # samples the room's page got, ending with the newest epoch
    raw, room_raw = eeg["raw"], sent["eegraw"]
    assert len(raw["v"]) == len(eeg["frame"]["channels"]) == 8 and raw["dt"] == room_raw[0]["dt"] == 1 / 125
    n = len(raw["v"][0])
    assert 10.0 - 1e-6 <= n * raw["dt"] <= 10.0 + 1e-6
    assert abs(raw["t0"] + n * raw["dt"] - ts[-1]) < 0.3  # (the epoch ends inside the room's last 0.25-s block)
    room = [sum((list(a["v"][c]) for a in room_raw), []) for c in range(8)]
    at = int(round((raw["t0"] - room_raw[0]["t0"]) / raw["dt"]))
    assert all(raw["v"][c] == room[c][at:at + n] for c in range(8))
    # the BAEP: the room's frame without its stack, waves I, III and V marked on the newest average and the baseline
    assert view["baep"] == {k: v for k, v in room_baep.items() if k != "stack"}
    assert view["baep"]["state"] == "alert" and {"I", "III", "V"} <= set(view["baep"]["baseline"]["waves"])
    assert len(json.dumps(view)) < 200_000  # fetched at most ~3 times a second per viewer


@pytest.mark.slow
@pytest.mark.skipif(not Path(CHROMIUM).exists(), reason="chromium not installed (make test installs it)")
def test_the_hub_page_draws_the_rooms_eeg_and_baep(tmp_path: Path) -> None:
    """In a real browser: the tile says each hemisphere's state and the BAEP's; the opened tile draws the DSA of both
    hemispheres from every epoch, the relative alpha of both sides with their alert levels, and the BAEP's newest
    average over its baseline with waves I, III and V marked on each."""
    from playwright.sync_api import expect, sync_playwright

    with room_with_eeg_and_baep(tmp_path) as (page, sent, case):
        page.wait(lambda: (c := page.state.find(case)) and c["eeg"] and c["baep"] and c["baep"]["state"] == "alert", 20)
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path=CHROMIUM, args=ARGS)
            try:
                tab = logged_in_tab(browser, page.base)
                expect(tab.locator(".tile")).to_contain_text("EEG: L ischaemia")
                expect(tab.locator(".tile")).to_contain_text("R normal")
                expect(tab.locator(".tile")).to_contain_text("BAEP L ear: alert")
                expect(tab.locator(".tile")).to_contain_text("clamped at 29")  # (299 s: the room's mark)
                tab.click('.tile[data-case="%s"]' % case)
                expect(tab.locator("#hub-dsa")).to_have_attribute("data-columns", "172")
                expect(tab.locator("svg.baep")).to_have_attribute("data-rows", "2")
                expect(tab.locator("#hub-eegraw")).to_have_attribute("data-samples", "1250")  # 10 s at 125 Hz
                # the DSA drawn: in each hemisphere's row, pixels of the palette, not the background
                lit = tab.evaluate("""() => { const cv = document.getElementById("hub-dsa"), ctx = cv.getContext("2d");
                    const rowH = (cv.height - 16) / 2;
                    return [10 + rowH / 2, 16 + rowH * 1.5].map(y => {
                      const d = ctx.getImageData(40, Math.round(y), cv.width - 50, 1).data; let n = 0;
                      for (let i = 0; i < d.length; i += 4) if (d[i] !== 14 || d[i + 1] !== 23 || d[i + 2] !== 34) n++;
                      return n / (d.length / 4); }); }""")
                # the raw EEG drawn: in every derivation's row, its trace in its hemisphere's hue across the width
                traced = tab.evaluate("""() => { const cv = document.getElementById("hub-eegraw"),
                    ctx = cv.getContext("2d"), rowH = (cv.height - 12) / 8;
                    return [...Array(8).keys()].map(c => {  // (a 1-px line is blended with the background: L bluer
                      const d = ctx.getImageData(60, Math.round(c * rowH), cv.width - 64, Math.round(rowH)).data,
                        sign = c < 4 ? 1 : -1, cols = new Set(), w = cv.width - 64;  // than red, R redder than blue)
                      for (let i = 0; i < d.length; i += 4)
                        if (Math.abs(d[i] - 14) + Math.abs(d[i + 1] - 23) + Math.abs(d[i + 2] - 34) > 40
                            && sign * (d[i + 2] - d[i]) > 15) cols.add((i / 4) % w);
                      return cols.size / w; }); }""")
                marks = tab.locator("svg.baep text.wave").all_text_contents()
                trend_paths = tab.locator("svg.eegtrend path").count()
                alert_lines = tab.locator("svg.eegtrend line.ra-alert").count()
            finally:
                browser.close()
    assert min(lit) > 0.9, lit
    assert min(traced) > 0.9, traced
    assert sorted(marks) == sorted(["I", "III", "V"] * 2), marks
    assert trend_paths == 2 and alert_lines == 2
