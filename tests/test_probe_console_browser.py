"""Issue 20 item 4 in a real browser (Playwright driving Debian's chromium, as tests/test_console_browser.py): the
technologist probes from the Manual probe panel, sees each muscle's response with amplitude and latency while it
runs, stops, and sees the session's record; a physician sees the records without the controls."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from test_console_browser import CHROMIUM, SHOTS, Case, browser, login, poll  # noqa: F401  (browser: the fixture)
from test_screw_console import scenario

pytestmark = [pytest.mark.slow,
              pytest.mark.skipif(not Path(CHROMIUM).exists(), reason="chromium not installed (make test installs it)")]


def test_a_probe_session_from_the_panel_shows_responses_and_its_record(tmp_path: Path, browser: Any) -> None:  # noqa: F811
    case = Case(tmp_path, scenario("breach"), speed=1.0)
    case.engine.probe = case.source
    try:
        tech = login(browser, case.url, "tech")
        poll(tech, "!document.getElementById('probepanel').classList.contains('hidden')", 15)
        tech.fill("#probema", "10")
        tech.fill("#proberate", "5")
        tech.fill("#probelabel", "L5 root")
        tech.click("#probego")
        poll(tech, "document.querySelectorAll('#probelive tr.present').length >= 1", 30)
        live = tech.inner_text("#probelive")
        assert "TAL1-TAL2" in live and "µV" in live, live
        SHOTS.mkdir(parents=True, exist_ok=True)
        tech.screenshot(path=str(SHOTS / "probe_panel.png"))
        # the record counts a muscle as responding on at least half the pulses, and 2: stop after a few, as a
        # technologist would (a stop right after the first response can leave one pulse, too few to count)
        poll(tech, "+((document.getElementById('probestatus').textContent.match(/(\\d+) pulses/) || [0, 0])[1])"
                   " >= 4", 30)
        tech.click("#probestop")
        poll(tech, "document.querySelectorAll('#proberecords tr.present').length >= 1", 30)
        assert "L5 root" in tech.inner_text("#proberecords") and "TAL1-TAL2" in tech.inner_text("#proberecords")
        poll(tech, "[...document.querySelectorAll('#timeline li')].some(li => li.textContent.includes("
                   "'probe (L5 root) at 10 mA: response present'))", 10)
        doc = login(browser, case.url, "doc")
        poll(doc, "document.querySelectorAll('#proberecords tr.present').length >= 1", 15)
        assert not doc.is_visible("#probeform")
        assert not tech.errors and not doc.errors, tech.errors + doc.errors
    finally:
        case.close()
