"""Issue 20 item 5 in a real browser (Playwright driving Debian's chromium, as tests/test_console_browser.py): the
technologist delivers a train-of-four from the TOF panel on a patient under a relaxant and sees the amber warning
row (distinct from the red alert banner), the trend and the timeline line; a physician sees the warning and the
trend without the controls."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import pytest
from test_console_browser import CHROMIUM, SHOTS, Case, browser, login, poll  # noqa: F401  (browser: the fixture)

pytestmark = [pytest.mark.slow,
              pytest.mark.skipif(not Path(CHROMIUM).exists(), reason="chromium not installed (make test installs it)")]


def test_a_tof_from_the_panel_under_blockade_shows_the_warning_row(tmp_path: Path, browser: Any) -> None:  # noqa: F811
    from ionm_hw.patient import load_scenario

    scen = copy.deepcopy(load_scenario("relaxant_bolus_tcmep"))
    scen["events"] = [{"type": "relaxant", "onset_s": 0.0, "onset_to_peak_s": 1.0}]  # blocked from the start
    case = Case(tmp_path, scen, speed=1.0)
    case.engine.probe = case.source
    try:
        tech = login(browser, case.url, "tech")
        poll(tech, "!document.getElementById('tofpanel').classList.contains('hidden')", 15)
        assert tech.is_visible("#tofform") and not tech.is_visible("#tofwarn")
        poll(tech, "document.querySelectorAll('#tofchannel option').length === 6", 10)
        tech.select_option("#tofoutput", "0")
        tech.select_option("#tofchannel", "9")
        tech.click("#tofgo")
        poll(tech, "!document.getElementById('tofwarn').classList.contains('hidden')", 30)
        warn = tech.inner_text("#tofwarn")
        assert warn.startswith("⚠ WARNING TOF 0/4") and "MEP and EMG unreliable" in warn, warn
        colour = tech.eval_on_selector("#tofwarn", "e => getComputedStyle(e).backgroundColor")
        assert colour == "rgb(138, 90, 0)", colour  # amber: not the alert banner's red
        assert "0/4" in tech.inner_text("#tofstatus")
        poll(tech, "[...document.querySelectorAll('#timeline li')].some(li => li.textContent.includes("
                   "'TOF L median -> APBL1-APBL2 L APB'))", 10)
        SHOTS.mkdir(parents=True, exist_ok=True)
        tech.screenshot(path=str(SHOTS / "tof_panel.png"))
        doc = login(browser, case.url, "doc")
        poll(doc, "!document.getElementById('tofwarn').classList.contains('hidden')", 15)
        assert not doc.is_visible("#tofform")  # a physician cannot stimulate
        assert "TOF 0/4" in doc.inner_text("#tofwarn")
        assert not tech.errors and not doc.errors, tech.errors + doc.errors
    finally:
        case.close()
