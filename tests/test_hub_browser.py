"""The hub's page in a real browser (Playwright driving Debian's chromium) with an access file: nothing before a
physician logs in, then only that physician's rooms; logout and an idle expiry clear the page and ask for the login
again. Real nats-server (the wheel's), the hub's page served for real (tests/test_hub_view.py has the HTTP side)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from test_hub_physician import Page
from test_hub_view import USERS, hub, publish_rooms

CHROMIUM = os.environ.get("IONM_CHROMIUM", "/usr/bin/chromium")
ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
        "--disable-background-networking", "--disable-component-update", "--disable-sync"]

def logged_in_tab(browser, base: str, name: str = "dr_a", password: str = "pw-a"):
    """A new tab on the hub's page, logged in through its gate as a physician would."""
    tab = browser.new_page()
    tab.goto(base + "/")
    tab.fill("#gate-name", name)
    tab.fill("#gate-pw", password)
    tab.click("#gate-login")
    return tab


pytestmark = [pytest.mark.slow,
              pytest.mark.skipif(not Path(CHROMIUM).exists(), reason="chromium not installed (make test installs it)")]


def test_the_hub_page_asks_for_a_login_shows_the_physicians_rooms_only_and_clears_on_logout_and_expiry(tmp_path):
    from playwright.sync_api import expect, sync_playwright

    server, service = hub(tmp_path)
    page = Page(server.url, service, users=USERS, idle_s=4.0)
    try:
        publish_rooms(server.url)
        page.wait(lambda: len(page.state.cases) == 3)
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path=CHROMIUM, args=ARGS)
            try:
                tab = browser.new_page()
                tab.goto(page.base + "/")
                expect(tab.locator("#gate")).to_be_visible()
                assert tab.locator(".tile").count() == 0
                tab.fill("#gate-name", "dr_a")
                tab.fill("#gate-pw", "wrong")
                tab.click("#gate-login")
                expect(tab.locator("#gate-err")).to_contain_text("refused")
                tab.fill("#gate-pw", "pw-a")
                tab.click("#gate-login")
                expect(tab.locator(".tile")).to_have_count(2)
                cases = sorted(tab.locator(".tile").evaluate_all("els => els.map(e => e.dataset.case)"))
                expect(tab.locator("#me-name")).to_have_text("dr_a")
                expect(tab.locator("#gate")).to_be_hidden()
                tab.click('.tile[data-case="case-3"]')
                expect(tab.locator("#case-title")).to_contain_text("PICU_3")
                tab.click("#logout")  # in the case view
                expect(tab.locator("#gate")).to_be_visible()
                expect(tab.locator("#gate-err")).to_have_text("logged out")
                assert tab.locator(".tile").count() == 0 and not tab.locator("#case").is_visible()
                after_logout = tab.request.get(page.base + "/state.json").status

                tab.fill("#gate-name", "dr_b")
                tab.fill("#gate-pw", "pw-b")
                tab.click("#gate-login")
                expect(tab.locator(".tile")).to_have_count(1)
                cases_b = tab.locator(".tile").evaluate_all("els => els.map(e => e.dataset.case)")
                # left alone: the session's idle time (4 s) ends it, the push closes, the page clears
                expect(tab.locator("#gate-err")).to_have_text("the session ended: log in again", timeout=15000)
                assert tab.locator(".tile").count() == 0
            finally:
                browser.close()
    finally:
        page.close()
        server.stop()
    assert cases == ["case-1", "case-3"]
    assert after_logout == 401
    assert cases_b == ["case-2"]


def test_a_tile_words_the_newest_probe_record_as_the_room_recorded_it(tmp_path):
    """Nerve mapping at the hub: "response present" with its muscles only when the room recorded one, "no response"
    when it recorded none, and a session the board stopped as failed, never as either (its site was not stimulated
    throughout)."""
    from playwright.sync_api import expect, sync_playwright

    from ionm.hub.publisher import Publisher

    server, service = hub(tmp_path)
    page = Page(server.url, service, users=USERS)
    base = {"uid": "p1", "t_s": 130.0, "user": "tech", "label": "R vagus", "ma": 1.0, "pulses": 12,
            "present": {"VOCR1-VOCR2 R vocalis": {"p2p_uv": 420.0, "lat_ms": 3.1, "pulses": 12}}, "response": True,
            "error": None}
    none = dict(base, uid="p2", present={}, response=False)
    failed = dict(none, uid="p3", pulses=3, error="the board stopped the probe after 3 pulse(s): watchdog")
    pub = Publisher(server.url, "General", "OR 1", "case-1", user="or1", password="pw-1")
    seen = []
    try:
        pub.publish("header", {"uid": "case-1", "procedure": "thyroidectomy"})
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path=CHROMIUM, args=ARGS)
            try:
                tab = logged_in_tab(browser, page.base)
                for k, rec in enumerate((base, none, failed)):
                    pub.publish("probe", {"available": True, "running": None, "records": [rec], "count": k + 1})
                    assert pub.flush(20), pub.last_error
                    expect(tab.locator(".tile .screws")).to_contain_text("probe: %d session(s)" % (k + 1))
                    seen.append(tab.locator(".tile .screws").inner_text())
            finally:
                browser.close()
    finally:
        pub.close(2)
        page.close()
        server.stop()
    assert seen[0].endswith("R vagus at 1 mA: response present (VOCR1-VOCR2)"), seen
    assert seen[1].endswith("R vagus at 1 mA: no response"), seen
    assert "failed: the board stopped the probe" in seen[2] and "response" not in seen[2], seen
