"""kill -9 of `ionm console --sim` (the virtual board) mid-case, then a restart on the same store: the case clock
goes on from the stored case time although the new board counts from zero again, no (stream, time) is stored
twice, trends and averages go on, and the whole case still replays and exports (issue 16, item 8)."""

from __future__ import annotations

import signal
import sqlite3
import subprocess
import time
from pathlib import Path

import pytest
from conftest import ROOT, ionm_cmd, replay_headless, run_ionm, store_with_technologist

from ionm.case.store import CaseStore


def _console(db: Path, log: Path) -> subprocess.Popen[bytes]:
    return subprocess.Popen(ionm_cmd("console", "--sim", "--scenario", "stable", "--mep-every", "4",
                                     "--auto-baseline", "8", "--db", str(db), "--no-browser",
                                     "--listen", "127.0.0.1:0"),
                            stdout=open(log, "wb"), stderr=subprocess.STDOUT, cwd=ROOT)


def _wait_for(what, timeout: float, why: str) -> None:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if what():
            return
        time.sleep(0.2)
    raise AssertionError(why)


def _count(db: Path, sql: str, *args: object) -> float:
    con = sqlite3.connect(db, timeout=10)
    try:
        return con.execute(sql, args).fetchone()[0] or 0
    finally:
        con.close()


@pytest.mark.slow
def test_a_console_killed_mid_case_resumes_its_clock_without_duplicates(tmp_path: Path) -> None:
    db = store_with_technologist(tmp_path / "cases.db")

    def averages_after(t: float) -> float:
        return _count(db, "SELECT COUNT(*) FROM averages WHERE t_s > ?", t) if db.exists() else 0

    # First run: until the baselines are set and averages are being written, then SIGKILL.
    proc = _console(db, tmp_path / "run1.log")
    try:
        _wait_for(lambda: averages_after(12.0) > 0, 180.0,
                  "no averages after 12 s of case:\n" + (tmp_path / "run1.log").read_text(errors="replace"))
        proc.send_signal(signal.SIGKILL)
        proc.wait(10)
        killed_wall = time.time()
    finally:
        if proc.poll() is None:
            proc.kill()
    t_kill = _count(db, "SELECT MAX(t_s) FROM sweeps")
    n_kill = _count(db, "SELECT COUNT(*) FROM sweeps")
    trends_kill = _count(db, "SELECT COUNT(*) FROM measurements")
    assert t_kill > 12.0

    # Second run on the same store: a new board process whose sample indices and case time start at zero.
    proc = _console(db, tmp_path / "run2.log")
    try:
        _wait_for(lambda: _count(db, "SELECT COUNT(*) FROM sweeps WHERE t_s > ?", t_kill + 6.0) > 20, 180.0,
                  "the resumed case stored no sweeps 6 s past the kill:\n"
                  + (tmp_path / "run2.log").read_text(errors="replace"))
        _wait_for(lambda: averages_after(t_kill + 6.0) > 0, 60.0, "no averages after the restart")
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(30) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
    assert "resumed case" in (tmp_path / "run2.log").read_text(errors="replace")

    con = sqlite3.connect(db)
    try:
        assert con.execute("SELECT COUNT(*) FROM cases").fetchone()[0] == 1
        dup = con.execute("SELECT stream, t_s, COUNT(*) FROM sweeps GROUP BY case_id, stream, t_s "
                          "HAVING COUNT(*) > 1").fetchall()
        assert dup == []
        # Every sweep stored by the second run is later than the last one stored before the kill: the case clock
        # went on from the stored case time (before the fix the new board's sweeps were stored from t = 0 again).
        first_new = con.execute("SELECT MIN(t_s) FROM sweeps WHERE wall > ?", (killed_wall,)).fetchone()[0]
        assert first_new is not None and first_new > t_kill, (first_new, t_kill)
        assert con.execute("SELECT COUNT(*) FROM sweeps").fetchone()[0] > n_kill
        assert con.execute("SELECT COUNT(*) FROM measurements").fetchone()[0] > trends_kill
        assert con.execute("SELECT COUNT(*) FROM measurements WHERE t_s > ?", (t_kill,)).fetchone()[0] > 0
    finally:
        con.close()
    s = CaseStore(db)
    try:
        cid = s.cases()[0]["id"]
        assert s.verify_audit()
        assert any(a["action"] == "case.resume" for a in s.rows("audit", cid))
    finally:
        s.close()

    # The whole case replays (fast, headless) and exports.
    store, scratch = CaseStore(db), CaseStore(tmp_path / "scratch.db")
    try:
        recorded = store.count_sweeps(cid)
        _, source = replay_headless(store, cid, scratch)
        assert source.sent == recorded and scratch.count_sweeps(scratch.case()["id"]) == recorded
    finally:
        scratch.close()
        store.close()
    res = run_ionm("export", "--db", str(db), "--csv", str(tmp_path / "case.csv"), timeout=120)
    assert res.returncode == 0, res.stderr
    res = run_ionm("export", "--db", str(db), "--edf", str(tmp_path / "case.edf"), timeout=120)
    assert res.returncode == 0, res.stderr
    assert list(tmp_path.glob("case*.edf"))
