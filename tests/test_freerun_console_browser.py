"""Issue 19 item 5 in a real browser (Playwright driving Debian's chromium, as tests/test_console_browser.py): the
free-run EMG panel draws a trace per channel, its µV/div and time-base controls change what is drawn, A-trains are
marked and listed on the timeline, the A-train warning of a facial channel shows and its threshold is set from
the panel; sound reaches the Web Audio graph
once turned on, a muted channel is no longer sent, volume sets its gain, and with every channel muted the graph
falls silent.

The case plays hardware/scenarios/freerun/cpa_facial_traction.json in real time from 58 s: A-trains on orbicularis
oris at 60 s (1.5 s) and on orbicularis oculi at 61 s (0.6 s); the warning is set at 1 s, so orbicularis oris
(0.3 + 0.8 + 1.5 s by 61.5 s) passes it."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
from test_console_browser import CHROMIUM, SHOTS, USERS, browser, canvas_pixels, poll  # noqa: F401  (browser: the fixture)

from ionm.board.freerun import FreeRunCase
from ionm.case.store import CaseStore
from ionm.console.auth import Accounts
from ionm.console.engine import CaseEngine
from ionm.console.server import ConsoleServer

pytestmark = [pytest.mark.slow,
              pytest.mark.skipif(not Path(CHROMIUM).exists(), reason="chromium not installed (make test installs it)")]

ORIS_RGB = (0x58, 0xA6, 0xFF)  # the first channel's colour (console.js COLORS[0])


def trace_pixels(page: Any) -> np.ndarray:
    """Pixels of the first channel's trace colour on the free-run canvas: a boolean [y, x] mask."""
    px = canvas_pixels(page, "#emgcanvas").astype(int)
    return np.all(np.abs(px - np.array(ORIS_RGB)) <= 12, axis=2)


def test_free_run_panel_traces_controls_events_and_sound(tmp_path: Path, browser: Any) -> None:  # noqa: F811
    store = CaseStore(tmp_path / "cases.db")
    Accounts(store).add("tech", *USERS["tech"])
    engine = CaseEngine(store, store.open_case(patient_id="EMG-2"), a_train_warn_s=1.0)
    server = ConsoleServer(engine, store)
    url = server.start_in_thread()
    engine.start()
    engine.run_emg_source(FreeRunCase("cpa_facial_traction", 1, speed=1.0, start_s=58.0))
    context = browser.new_context(viewport={"width": 1600, "height": 1000})
    try:
        page = context.new_page()
        errors: list[str] = []
        page.on("pageerror", lambda e: errors.append(str(e)))
        page.goto(url)
        page.fill("#user", "tech")
        page.fill("#password", USERS["tech"][1])
        page.click("#signin")
        page.wait_for_selector("#emgpanel:not(.hidden)", timeout=15000)
        assert page.locator("#emgchans .row").count() == 3
        poll(page, "window.ionm.emg.lo.length === 3 && window.ionm.emg.lo[0].length > 250", 10)  # 2.5 s of trace

        def redrawn(select: str, value: str) -> np.ndarray:
            # counted after the change: a draw between reading the counter and the change (new data arrive
            # all the time) would pass with the old setting's picture (on a loaded machine it did)
            page.select_option(select, value)
            before = page.evaluate("window.ionm.emgDraws || 0")
            poll(page, "window.ionm.emgDraws > %d" % before, 5)
            return trace_pixels(page)

        # time base: the same seconds span twice the width at 0.5 s/div as at 1 s/div (newest at the right edge)
        left_10s = np.flatnonzero(redrawn("#emgtime", "1").any(axis=0)).min()
        left_5s = np.flatnonzero(redrawn("#emgtime", "0.5").any(axis=0)).min()
        width = page.eval_on_selector("#emgcanvas", "c => c.width")
        assert left_5s < left_10s - 0.15 * width, (left_5s, left_10s, width)

        # sensitivity: at 5 µV/div the background (3 µV rms) fills the row; at 1000 µV/div it is a thin line
        tall = int(redrawn("#emgscale", "5").any(axis=1).sum())
        thin = int(redrawn("#emgscale", "1000").any(axis=1).sum())
        assert thin < tall / 3, (thin, tall)
        page.select_option("#emgscale", "50")

        # sound: nothing is sent before it is turned on; then every channel reaches the graph
        assert page.evaluate("window.ionm.audio.received") == 0
        page.click("#emgsound")
        poll(page, "window.ionm.audio.scheduled > 10", 10)
        assert page.evaluate("[...window.ionm.audio.channels]") == [0, 1, 2]
        assert page.evaluate("window.ionm.audio.lastChannels") == [0, 1, 2]
        poll(page, "window.ionm.audio.level() > 0", 5)
        # mute orbicularis oculi: it is no longer sent; its gain is 0
        page.locator("#emgchans .row").nth(1).locator("input.mute").check()
        poll(page, "JSON.stringify(window.ionm.audio.lastChannels) === '[0,2]'", 5)
        assert page.evaluate("window.ionm.audio.gains[1].gain.value") == 0
        # volume: orbicularis oris at 20 %
        page.locator("#emgchans .row").nth(0).locator("input.vol").fill("20")
        assert page.evaluate("window.ionm.audio.gains[0].gain.value") == pytest.approx(0.2)
        # every channel muted: the server sends nothing more and the graph falls silent
        page.locator("#emgchans .row").nth(0).locator("input.mute").check()
        page.locator("#emgchans .row").nth(2).locator("input.mute").check()
        poll(page, "window.ionm.audio.channels.size === 0", 5)
        received = page.evaluate("window.ionm.audio.received")
        poll(page, "window.ionm.audio.level() === 0", 5)
        page.wait_for_timeout(300)
        assert page.evaluate("window.ionm.audio.received") <= received + 2  # at most those already on the way

        # the A-trains: on the timeline, marked on the trace, and the warning on orbicularis oris
        poll(page, "[...document.querySelectorAll('#timeline li')].some(li => li.textContent.includes("
                   "'L orbicularis oris: A-train'))", 15)
        assert page.evaluate("window.ionm.emg.events.some(e => e.kind === 'a_train' && e.ch === 0)")
        poll(page, "document.querySelector('#emgchans .row .atrain').classList.contains('over')", 10)
        assert "WARNING" in page.inner_text("#emgchans .row >> nth=0")
        poll(page, "!document.getElementById('banner').classList.contains('hidden')", 10)
        assert "cumulative A-train time" in page.inner_text("#banner")
        # the technologist lowers the threshold to 0.5 s from the panel: orbicularis oculi (0.6 s) is past it
        oculi = "[...document.querySelectorAll('#emgchans .row .atrain')][1]"
        poll(page, oculi + ".textContent.includes('A-train 0.6')", 10)
        page.fill("#emgwarn", "0.5")
        page.click("#emgwarnform button")
        poll(page, oculi + ".classList.contains('over')", 5)
        assert "/ 0.5 s" in page.inner_text("#emgchans .row >> nth=1")
        SHOTS.mkdir(parents=True, exist_ok=True)
        page.screenshot(path=str(SHOTS / "freerun_emg.png"))
        assert not errors, errors
    finally:
        context.close()  # the viewer leaves first: the server then stops at once
        server.stop_thread()
        engine.stop()
        store.close()
