"""Issue 20 item 3 in a real browser (Playwright driving Debian's chromium, as tests/test_console_browser.py): the
technologist tests a screw from the screw panel and sees its row in the band's colour; a physician sees the same
table without the controls."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from test_console_browser import CHROMIUM, SHOTS, Case, browser, login, poll  # noqa: F401  (browser: the fixture)
from test_screw_console import scenario

pytestmark = [pytest.mark.slow,
              pytest.mark.skipif(not Path(CHROMIUM).exists(), reason="chromium not installed (make test installs it)")]


def test_a_screw_tested_from_the_panel_shows_in_its_band(tmp_path: Path, browser: Any) -> None:  # noqa: F811
    case = Case(tmp_path, scenario("breach"), speed=1.0)
    case.engine.probe = case.source
    try:
        tech = login(browser, case.url, "tech")
        poll(tech, "!document.getElementById('screwpanel').classList.contains('hidden')", 15)
        assert tech.is_visible("#screwform")
        tech.select_option("#screwlevel", "L4")
        tech.select_option("#screwside", "L")
        tech.click("#screwgo")
        poll(tech, "document.querySelectorAll('#screwtable tr.band').length >= 1", 30)
        row = tech.inner_text("#screwtable tr.band")
        assert "L4 left" in row and "likely breach" in row and "TAL1-TAL2" in row, row
        assert tech.get_attribute("#screwtable tr.band", "class") == "band red"
        colour = tech.eval_on_selector("#screwtable tr.band td", "td => getComputedStyle(td).backgroundColor")
        assert colour == "rgb(92, 18, 19)", colour  # the red band's cell
        poll(tech, "[...document.querySelectorAll('#timeline li')].some(li => li.textContent.includes("
                   "'screw L4 left'))", 10)
        SHOTS.mkdir(parents=True, exist_ok=True)
        tech.screenshot(path=str(SHOTS / "screw_panel.png"))
        doc = login(browser, case.url, "doc")
        poll(doc, "document.querySelectorAll('#screwtable tr.band').length >= 1", 15)
        assert not doc.is_visible("#screwform")  # a physician cannot test screws
        assert "L4 left" in doc.inner_text("#screwtable tr.band")
        assert not tech.errors and not doc.errors, tech.errors + doc.errors
    finally:
        case.close()
