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


def test_ionm_replay_serves_until_a_signal(case_db: Path, tmp_path: Path) -> None:
    proc = subprocess.Popen(ionm_cmd("replay", "--db", str(case_db), "--fast", "--no-browser",
                                     "--listen", "127.0.0.1:0", "--keep", str(tmp_path / "scratch.db")),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        line = proc.stdout.readline()
        m = re.match(r"ionm replay: case \S+ at (http://127\.0\.0\.1:\d+)/?", line)
        assert m, line + proc.stderr.read() if proc.poll() is not None else line
        with urllib.request.urlopen(m.group(1) + "/login", timeout=10) as resp:
            assert resp.status == 200 and b"password" in resp.read().lower()
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
