"""`ionm replay`: a recorded case through a fresh engine (its sweeps, its baselines at their moments, its notes),
on a scratch store that leaves the record untouched,; and the command serving it until a signal."""

from __future__ import annotations

import re
import signal
import subprocess
import urllib.request
from pathlib import Path

import pytest
from conftest import ionm_cmd, replay_headless

from ionm.case.store import CaseStore
from ionm.console.auth import Accounts
from ionm.console.scripted import command, injury_scenario, run_case

TECH = ("tech", "technologist")


@pytest.fixture(scope="module")
def case_db(tmp_path_factory: pytest.TempPathFactory) -> Path:
    db = tmp_path_factory.mktemp("replay") / "cases.db"
    store = CaseStore(db)
    run_case(store, injury_scenario(14.0), duration_s=20.0, mep_every=1.0, actions=[
        (8.0, command(*TECH, {"cmd": "baseline"})),
        (9.0, command(*TECH, {"cmd": "note", "text": "screw L3 left placed"})),
    ])
    Accounts(store).add("tech", "technologist", "correct horse battery", by="test")
    store.close()
    return db


def test_replay_runs_the_recorded_sweeps_baselines_and_notes(case_db: Path, tmp_path: Path) -> None:
    store, scratch = CaseStore(case_db), CaseStore(tmp_path / "scratch.db")
    try:
        cid = store.case()["id"]
        recorded = store.count_sweeps(cid)
        engine, source = replay_headless(store, cid, scratch)
        rid = scratch.case()["id"]
        assert scratch.case()["meta"]["replay_of"] == store.case(cid)["uid"]
        assert source.sent == recorded and scratch.count_sweeps(rid) == recorded
        assert {b["stream"] for b in scratch.baselines(rid)} == {b["stream"] for b in store.baselines(cid)}
        shown = [(i["kind"], i["text"]) for i in engine.timeline]  # on the viewers' timeline, not in a record
        assert ("note", "[recorded] screw L3 left placed") in shown
        assert store.count_sweeps(cid) == recorded  # the record itself is untouched
    finally:
        scratch.close()
        store.close()


def alerts_of(store: CaseStore, case_id: int) -> list[tuple]:
    return [(a["stream"], a["channel"], a["t_s"], a["criterion"], a["amplitude_ratio"], a["latency_ratio"], a["scope"])
            for a in store.rows("alerts", case_id)]


@pytest.fixture(scope="module")
def rebaselined_db(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A case recorded as a live one runs (paced, baselines built beside acquisition and swapped in when ready):
    B pressed early (channels still collecting complete by themselves), B again just before an injury, so that
    alerts come while a baseline is being built."""
    db = tmp_path_factory.mktemp("rebaselined") / "cases.db"
    store = CaseStore(db)
    run_case(store, injury_scenario(20.0), duration_s=35.0, mep_every=1.0, speed=3.0, actions=[
        (5.0, command(*TECH, {"cmd": "baseline"})),
        (19.0, command(*TECH, {"cmd": "baseline"})),
    ])
    Accounts(store).add("tech", "technologist", "correct horse battery", by="test")
    store.close()
    return db


def test_replay_reproduces_exactly_the_recorded_alerts_and_baselines(rebaselined_db: Path, tmp_path: Path) -> None:
    store, scratch = CaseStore(rebaselined_db), CaseStore(tmp_path / "scratch.db")
    try:
        cid = store.case()["id"]
        recorded = alerts_of(store, cid)
        assert recorded, "the recorded case must hold alerts for this test to mean anything"
        assert len(store.baselines(cid)) > len(store.streams(cid))  # re-baselined, and some completed by themselves
        replay_headless(store, cid, scratch)
        rid = scratch.case()["id"]
        assert alerts_of(scratch, rid) == recorded
        span = sorted((b["stream"], b["first_t"], b["last_t"]) for b in store.baselines(cid))
        assert sorted((b["stream"], b["first_t"], b["last_t"]) for b in scratch.baselines(rid)) == span
        assert not [a for a in scratch.rows("audit", rid) if a["action"] == "baseline.extend"]  # none of its own
    finally:
        scratch.close()
        store.close()


def test_ionm_replay_ends_with_the_recording_reports_its_alerts_and_logs_no_traceback(rebaselined_db: Path) -> None:
    import asyncio

    import aiohttp

    store = CaseStore(rebaselined_db)
    n_alerts = len(store.rows("alerts", store.case()["id"]))
    store.close()
    proc = subprocess.Popen(ionm_cmd("replay", "--db", str(rebaselined_db), "--speed", "4", "--no-browser",
                                     "--listen", "127.0.0.1:0"), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)
    try:
        line = proc.stdout.readline()
        m = re.match(r"ionm replay: case \S+ at (http://127\.0\.0\.1:\d+)/?", line)
        assert m, line

        async def viewers_that_vanish() -> None:
            # viewers that log in, ask for things and drop the connection without reading the answers
            for _ in range(3):
                async with aiohttp.ClientSession(cookie_jar=aiohttp.CookieJar(unsafe=True)) as http:
                    async with http.post(m.group(1) + "/login", data={"user": "tech",
                                                                      "password": "correct horse battery"},
                                         allow_redirects=False) as resp:
                        assert resp.status == 303
                    ws = await http.ws_connect(m.group(1) + "/ws", headers={"Origin": m.group(1)})
                    for i in range(50):
                        await ws.send_str('{"cmd": "ping", "req": %d}' % i)
                    ws._response.connection.transport.abort()  # gone, as a closed laptop lid is

        asyncio.run(viewers_that_vanish())
        out, err = proc.communicate(timeout=90)  # no signal: it ends with the recording
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 0, err
    assert "Traceback" not in err and "Error" not in err, err
    assert "end of the recording" in out and "%d alerts (%d recorded)" % (n_alerts, n_alerts) in out, out


def test_ionm_replay_serves_until_a_signal_when_told_to_keep_serving(case_db: Path, tmp_path: Path) -> None:
    proc = subprocess.Popen(ionm_cmd("replay", "--db", str(case_db), "--fast", "--no-browser", "--keep-serving",
                                     "--listen", "127.0.0.1:0", "--keep", str(tmp_path / "scratch.db")),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        line = proc.stdout.readline()
        m = re.match(r"ionm replay: case \S+ at (http://127\.0\.0\.1:\d+)/?", line)
        assert m, line + proc.stderr.read() if proc.poll() is not None else line
        with urllib.request.urlopen(m.group(1) + "/login", timeout=10) as resp:
            assert resp.status == 200 and b"password" in resp.read().lower()
        assert "end of the recording" in proc.stdout.readline()  # the recording ended, and it goes on serving
        with urllib.request.urlopen(m.group(1) + "/login", timeout=10) as resp:
            assert resp.status == 200
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(30) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert (tmp_path / "scratch.db").exists()


def test_ionm_replay_of_an_unknown_case_says_so(case_db: Path) -> None:
    res = subprocess.run(ionm_cmd("replay", "--db", str(case_db), "no-such-case", "--no-browser"),
                         capture_output=True, text=True, timeout=60)
    assert res.returncode == 2 and res.stderr.startswith("ionm replay: ")
