"""Issue 22 item 5 in a real browser (Playwright driving Debian's chromium, as tests/test_console_browser.py): the EEG
panel draws its density spectral array per hemisphere, the index trends with the baseline's lines, and the raw EEG;
the BAEP panel draws its stack of averages with waves I, III and V marked, the table of latencies and intervals, and
the wave V trend. The console draws only what the server sends (DSA columns, trend points, thinned raw EEG, averages
with their marks).

The sources run faster than real time so that a baseline (auto, at 60 s of case) and a few minutes of DSA exist
within seconds: the EEG (cea_clamp_ischaemia) at 30x, the BAEP (baep_stable) at 15x."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
from test_console_browser import CHROMIUM, SHOTS, USERS, browser, canvas_pixels, poll  # noqa: F401  (browser: the fixture)

from ionm.board.eegbaep import BaepCase, EegCase
from ionm.case.store import CaseStore
from ionm.console.auth import Accounts
from ionm.console.engine import CaseEngine
from ionm.console.server import ConsoleServer

pytestmark = [pytest.mark.slow,
              pytest.mark.skipif(not Path(CHROMIUM).exists(), reason="chromium not installed (make test installs it)")]

BACKGROUND = np.array([0x0E, 0x17, 0x22])
L_RGB, R_RGB, BASE_RGB = (0x58, 0xA6, 0xFF), (0xFF, 0xA6, 0x57), (0x3F, 0xB9, 0x50)


def share(px: np.ndarray, rgb: tuple[int, int, int], tol: int = 14) -> float:
    """The fraction of a canvas's pixels in a colour."""
    return float(np.mean(np.all(np.abs(px.astype(int) - np.array(rgb)) <= tol, axis=2)))


def traced_columns(px: np.ndarray, rows: list[tuple[int, int, int]], left: int = 60) -> list[float]:
    """Per horizontal band of the canvas (one per entry of `rows`, top to bottom, each the colour its trace must
    have): the fraction of columns right of `left` px that hold a pixel of that hue (blue over red by 80, or red
    over blue: antialiased line pixels blend with the background). A continuous trace covers every column,
    however slow the EEG it draws (a pixel share would judge a slowed, smoother trace as missing)."""
    h = px.shape[0] // len(rows)
    out = []
    for k, rgb in enumerate(rows):
        band = px[k * h:(k + 1) * h, left:].astype(int)
        lean = band[..., 2] - band[..., 0] if rgb[2] > rgb[0] else band[..., 0] - band[..., 2]
        out.append(float(np.mean(np.any(lean > 80, axis=0))))
    return out


def test_dsa_trends_raw_eeg_and_baep_stack_render(tmp_path: Path, browser: Any) -> None:  # noqa: F811
    store = CaseStore(tmp_path / "cases.db")
    Accounts(store).add("tech", *USERS["tech"])
    engine = CaseEngine(store, store.open_case(patient_id="EEG-2"), auto_baseline_s=60.0)
    server = ConsoleServer(engine, store)
    url = server.start_in_thread()
    engine.start()
    engine.run_eeg_source(EegCase("cea_clamp_ischaemia", 135, speed=30.0))
    engine.run_baep_source(BaepCase("baep_stable", 145, speed=15.0))
    context = browser.new_context(viewport={"width": 1600, "height": 1400})
    try:
        page = context.new_page()
        errors: list[str] = []
        page.on("pageerror", lambda e: errors.append(str(e)))
        page.goto(url)
        page.fill("#user", "tech")
        page.fill("#password", USERS["tech"][1])
        page.click("#signin")
        page.wait_for_selector("#eegpanel:not(.hidden)", timeout=15000)
        page.wait_for_selector("#baeppanel:not(.hidden)", timeout=15000)
        page.select_option("#eegspan", "600")
        # the EEG baseline is set and a few minutes of DSA and trends have arrived; the BAEP has its baseline and stack
        poll(page, "window.ionm.frames.eeg.baseline !== null && window.ionm.eeg.dsa.length > 60", 20)
        poll(page, "window.ionm.frames.baep && window.ionm.frames.baep.baseline !== null && "
                   "window.ionm.frames.baep.stack.length >= 1 && window.ionm.frames.baep.current !== null", 20)
        # the raw EEG buffer holds the 10 s the panel shows (on a starved machine the first blocks come late)
        poll(page, "(() => { const R = window.ionm.eeg.raw, n = Math.round(10 / R.dt); if (!R.v.length) "
                   "return false; const v = R.v[0].slice(-n); return v.length >= n && "
                   "v.filter(x => x === null).length < 0.1 * n; })()", 30)
        before = page.evaluate("[window.ionm.dsaDraws, window.ionm.eegTrendDraws, window.ionm.eegRawDraws, "
                               "window.ionm.baepDraws]")
        poll(page, "window.ionm.dsaDraws > %d && window.ionm.eegRawDraws > %d && window.ionm.baepDraws > %d"
             % (before[0], before[2], before[3]), 10)

        # DSA: the time x frequency colour map fills the stretch of case so far (not the dark background)
        dsa = canvas_pixels(page, "#dsacanvas")
        coloured = np.mean(np.any(np.abs(dsa.astype(int) - BACKGROUND) > 30, axis=2))
        assert coloured > 0.15, coloured
        # index trends: both hemispheres' lines and the baseline's (green dashed)
        trend = canvas_pixels(page, "#eegtrend")
        assert share(trend, L_RGB) > 0.0003 and share(trend, R_RGB) > 0.0003 and share(trend, BASE_RGB) > 0.0003
        # raw EEG: eight traces in the hemispheres' colours; a finer µV/div draws taller traces
        raw = canvas_pixels(page, "#eegraw")
        # (each channel's own row holds a continuous trace; under load the case is further on, and the clamped
        # left hemisphere's slowed EEG draws a smoother line with half the pixels of the right's)
        assert min(traced_columns(raw, [L_RGB] * 4 + [R_RGB] * 4)) > 0.9, traced_columns(raw, [L_RGB] * 4 + [R_RGB] * 4)
        page.select_option("#eegscale", "20")
        n = page.evaluate("window.ionm.eegRawDraws")  # counted after the change: a draw before it has the old scale
        poll(page, "window.ionm.eegRawDraws > %d" % n, 5)
        assert share(canvas_pixels(page, "#eegraw"), L_RGB) > 1.5 * share(raw, L_RGB)
        assert page.evaluate("window.ionm.frames.eeg.channels.length") == 8

        # BAEP: the stack, the newest average (blue), the baseline (green), waves marked, the table with the I-V IPL
        baep = canvas_pixels(page, "#baepcanvas")
        assert share(baep, L_RGB) > 0.001 and share(baep, BASE_RGB) > 0.001
        v = page.evaluate("window.ionm.frames.baep.current.waves.V.ms")
        assert 5.0 <= v <= 8.5
        table = page.inner_text("#baeptable")
        for row in ("I latency", "III latency", "V latency", "I–V IPL"):
            assert row in table, table
        assert page.evaluate("window.ionm.frames.baep.current.v[0].length") == 110  # thinned on the server
        # the clamp marked from the EEG panel: on the timeline, and the panel says the case is clamped
        page.click('#eegpanel button.mark[data-event="clamp"]')
        poll(page, "window.ionm.frames.eeg.clamp !== null", 10)
        page.wait_for_selector("#timeline >> text=clamp on", timeout=10000)
        assert "CLAMPED at" in page.inner_text("#eegmeta")
        SHOTS.mkdir(parents=True, exist_ok=True)
        page.screenshot(path=str(SHOTS / "eeg_baep.png"), full_page=True)
        assert not errors, errors
    finally:
        context.close()
        server.stop_thread()
        engine.stop()
        store.close()
