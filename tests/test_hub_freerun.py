"""Free-running EMG at the hub (issue 21 item 3 with issue 19's modality): what the physician needs of a room's
free-run EMG reaches the tile and the case view through NATS: per channel the cumulative A-train time (past 10 s on a
facial channel it predicts a palsy), the warning, and the discharges counted per kind. Real nats-server (the
wheel's), the hub's page served for real, the console engine on the facial-nerve traction scenario."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
from test_hub_browser import ARGS, CHROMIUM, logged_in_tab
from test_hub_eeg_baep import hub_and_room
from test_hub_physician import Page

from ionm.board.freerun import FreeRunCase

ORIS = "L orbicularis oris"  # cpa_facial_traction: its cumulative A-train time passes 10 s in the train at 135 s


@contextmanager
def room_with_freerun(tmp_path: Path, until_s: float) -> Iterator[tuple[Page, dict[str, Any], str, dict[str, int]]]:
    """The hub and a room's console engine publishing to it, which has played cpa_facial_traction to until_s:
    (the page, the room's newest "emg" frame as its console got it, the case's uid, the messages published per
    kind)."""
    from ionm.hub import bridge

    with hub_and_room(tmp_path, "vestibular schwannoma") as (page, engine, pub):
        kinds: dict[str, int] = {}
        publish = pub.publish

        def counted(kind: str, body: Any) -> Any:
            kinds[kind] = kinds.get(kind, 0) + 1
            return publish(kind, body)

        pub.publish = counted  # type: ignore[method-assign]
        bridge.attach(engine, pub)
        sent: dict[str, Any] = {}
        engine.subscribe(lambda frames, _a: sent.update((k, json.loads(js)) for k, js, _t in frames if k == "emg"))
        engine.start()
        src = FreeRunCase("cpa_facial_traction", 1, speed=0.0)

        def upto():
            for block in src:
                if block.t_s >= until_s - 1e-9:
                    return
                yield block

        engine.run_emg_source(upto()).join(60)
        end = time.monotonic() + 60
        while engine.emg is None or engine.emg.t_s < until_s - 1e-6:
            assert time.monotonic() < end, "the free-run EMG did not reach %.0f s" % until_s
            time.sleep(0.02)
        engine.call(lambda: None)
        assert pub.flush(20), pub.last_error
        yield page, sent["emg"], engine.case["uid"], kinds


def test_a_rooms_a_train_time_and_warning_reach_the_physicians_tile_and_case_view(tmp_path: Path) -> None:
    with room_with_freerun(tmp_path, 150.0) as (page, room, case, kinds):
        page.login()
        tile = page.wait(lambda: (s := page.get("/state.json")) and s["cases"] and (t := s["cases"][0])["emg"]
                         and t["emg"]["warned"] and t, 20)
        view = page.get("/case/%s.json" % case)
    chans = {c["name"]: c for c in room["channels"]}
    assert chans[ORIS]["warned"] and chans[ORIS]["a_train_s"] >= 10.0
    # the tile: the channel with the most A-train time, its time as the room has it, warned; the counts of all
    emg = tile["emg"]
    assert emg["a_train_channel"] == ORIS and emg["warned"] == [ORIS] and emg["warn_s"] == room["warn_s"]
    assert emg["a_train_s"] == chans[ORIS]["a_train_s"]  # exact: an A-train is sent when it is counted (its end)
    assert emg["counts"]["a_train"] == sum(c["counts"].get("a_train", 0) for c in room["channels"]) >= 9
    # the case view: the room's channels as its console has them (without its clock, the discharges under way and
    # the sound's format, which stay in the room)
    assert view["emg"] == {"warn_s": room["warn_s"], "channels": room["channels"]}
    # not a message per 20-ms block: 150 s of EMG is 7500 blocks
    assert 1 <= kinds["emg"] <= 400, kinds


@pytest.mark.slow
@pytest.mark.skipif(not Path(CHROMIUM).exists(), reason="chromium not installed (make test installs it)")
def test_the_hub_page_shows_the_a_train_time_past_the_warning(tmp_path: Path) -> None:
    from playwright.sync_api import expect, sync_playwright

    with room_with_freerun(tmp_path, 150.0) as (page, room, case, _kinds):
        page.wait(lambda: (c := page.state.find(case)) and c["emg"] and any(x["warned"] for x in c["emg"]["channels"]))
        oris = next(c for c in room["channels"] if c["name"] == ORIS)
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path=CHROMIUM, args=ARGS)
            try:
                tab = logged_in_tab(browser, page.base)
                expect(tab.locator(".tile")).to_contain_text(
                    "EMG: A-train %.1f s on %s (past 10 s)" % (oris["a_train_s"], ORIS))
                tab.click('.tile[data-case="%s"]' % case)
                expect(tab.locator("#emg-box table.emg tr")).to_have_count(1 + len(room["channels"]))
                warned_rows = tab.locator("#emg-box tr.pending").all_inner_texts()
            finally:
                browser.close()
    assert len(warned_rows) == 1 and warned_rows[0].startswith(ORIS + " (facial)"), warned_rows
