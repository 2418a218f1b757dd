"""The case store: append-only record, lossless sweeps, audit hash chain, and durability under kill -9."""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from conftest import store_with_technologist

from ionm.case.store import CaseStore, decode_array, encode_array
from ionm.sweep import Sweep

ROOT = Path(__file__).resolve().parents[1]


def _sweep(t: float, rng: np.random.Generator) -> Sweep:
    data = (rng.standard_normal((3, 200)) * 20).astype(np.float32)
    return Sweep(t, int(t * 8000), "ssep-upper", "L median", 8000.0, 40, (0, 1, 2), ("a", "b", "c"), data)


@pytest.fixture
def store(tmp_path: Path):
    s = CaseStore(tmp_path / "cases.db")
    yield s
    s.close()


def test_sweeps_round_trip_bit_exact(store: CaseStore) -> None:
    rng = np.random.default_rng(1)
    cid = store.open_case(patient_id="P-1")
    sent = [_sweep(0.2 * k, rng) for k in range(20)]
    store.add_stream(cid, "ssep-upper/L median", sent[0])
    for k, sw in enumerate(sent):
        store.add_sweep(cid, "ssep-upper/L median", k, sw, [None, "cautery" if k == 3 else None, None])
    store.flush()
    got = list(store.iter_sweeps(cid))
    assert len(got) == len(sent)
    for (sw, _reasons), ref in zip(got, sent, strict=True):
        assert sw.t_s == ref.t_s and sw.channel_names == ref.channel_names
        assert np.array_equal(sw.data_uv, ref.data_uv)  # lossless: the record is the raw data
    assert got[3][1] == [None, "cautery", None]
    x = rng.standard_normal((5, 7)).astype(np.float32)
    assert np.array_equal(decode_array(encode_array(x), x.shape), x)


@pytest.mark.parametrize("table", ["sweeps", "audit", "alerts", "acks", "notes", "cases", "baselines"])
def test_case_tables_refuse_update_and_delete(store: CaseStore, table: str) -> None:
    rng = np.random.default_rng(2)
    cid = store.open_case()
    sw = _sweep(1.0, rng)
    store.add_stream(cid, "s", sw)
    store.add_sweep(cid, "s", 0, sw, [None] * 3)
    store.add_alert(cid, {"uid": "x-A1", "stream": "s", "t_s": 1.0, "channel": 0, "channel_name": "a",
                          "criterion": "amplitude", "amplitude_ratio": 0.4, "latency_ratio": 1.0, "scope": "focal"})
    store.add_ack(cid, "x-A1", 2.0, "tech", "surgeon told")
    store.add_note(cid, 2.0, "tech", "note")
    store.add_baseline(cid, "s", 1.0, "tech", 0.0, 1.0, [], [], sw.data_uv)
    store.flush()
    con = sqlite3.connect(store.path)
    assert con.execute("SELECT COUNT(*) FROM %s" % table).fetchone()[0] >= 1
    with pytest.raises(sqlite3.DatabaseError, match="append-only"):
        con.execute("UPDATE %s SET case_id = 99" % table if table != "cases" else "UPDATE cases SET patient_id='x'")
    with pytest.raises(sqlite3.DatabaseError, match="append-only"):
        con.execute("DELETE FROM %s" % table)
    con.close()


def test_audit_chain_detects_tampering(store: CaseStore) -> None:
    cid = store.open_case()
    for k in range(5):
        store.audit(cid, "tech", "note", {"k": k})
    store.flush()
    assert store.verify_audit()
    # Someone with the file drops the trigger and edits a row: the chain shows it.
    con = sqlite3.connect(store.path)
    con.execute("DROP TRIGGER audit_no_update")
    con.execute("UPDATE audit SET detail = '{\"k\": 99}' WHERE id = 3")
    con.commit()
    con.close()
    assert not store.verify_audit()


def test_writes_are_committed_within_the_interval(store: CaseStore) -> None:
    """Batched, but another reader sees a sweep within ~commit_interval_s without anyone calling flush()."""
    rng = np.random.default_rng(3)
    cid = store.open_case()
    sw = _sweep(0.0, rng)
    store.add_stream(cid, "s", sw)
    store.add_sweep(cid, "s", 0, sw, [None] * 3)
    t0 = time.monotonic()
    other = sqlite3.connect(store.path)
    while other.execute("SELECT COUNT(*) FROM sweeps").fetchone()[0] == 0:
        assert time.monotonic() - t0 < 2 * store.commit_interval_s + 0.5
        time.sleep(0.02)
    other.close()


# ------------------------------------------------------------------------- kill -9 of the whole host process
def _console(db: Path, log: Path) -> subprocess.Popen[bytes]:
    cmd = [sys.executable, "-m", "ionm.cli", "console", "--sim", "--direct", "--scenario", "stable", "--db", str(db),
           "--no-browser", "--listen", "127.0.0.1:0"]
    return subprocess.Popen(cmd, stdout=open(log, "wb"), stderr=subprocess.STDOUT, cwd=ROOT)


def _wait_line(log: Path, text: str, timeout: float = 60.0) -> str:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        for line in log.read_text(errors="replace").splitlines():
            if text in line:
                return line
        time.sleep(0.05)
    raise AssertionError("no %r in the console output:\n%s" % (text, log.read_text(errors="replace")))


@pytest.mark.slow
def test_kill_9_loses_at_most_a_second_and_the_case_resumes(tmp_path: Path) -> None:
    db = store_with_technologist(tmp_path / "cases.db")
    proc = _console(db, tmp_path / "run1.log")
    try:
        _wait_line(tmp_path / "run1.log", "opened case")
        time.sleep(6.0)
        killed_at = time.time()
        proc.send_signal(signal.SIGKILL)
        proc.wait(10)
    finally:
        if proc.poll() is None:
            proc.kill()

    con = sqlite3.connect(db)
    (case_id,) = con.execute("SELECT id FROM cases").fetchone()
    rows = con.execute("SELECT s.stream, s.t_s, s.wall, st.n_samples, st.pre_samples, st.fs FROM sweeps s JOIN streams "
                       "st ON st.key = s.stream AND st.case_id = s.case_id ORDER BY s.t_s").fetchall()
    con.close()
    assert rows, "nothing survived"
    # The source sends a sweep when its window has ended (due = stimulus + window after it), paced to real
    # time from wall0; wall0 follows from any stored sweep (stored just after it was sent).
    due = np.array([t + (n - pre) / fs for _, t, _, n, pre, fs in rows])
    wall0 = float(np.min(np.array([w for _, _, w, _, _, _ in rows]) - due))
    sent_until = killed_at - wall0  # case time of the last sweep sent before the kill
    lost_s = sent_until - float(due.max())
    print("kill -9: %d sweeps survived, the last %.3f s of sweeps sent were lost" % (len(rows), lost_s))
    assert lost_s <= 1.0, "lost the last %.2f s of sweeps" % lost_s
    # ...and what survived has no holes: every stream's stimuli are one period apart (4.7 Hz, staggered).
    for stream in {r[0] for r in rows}:
        t = np.array([r[1] for r in rows if r[0] == stream])
        assert np.all(np.diff(t) < 1.5 / 4.7), stream
    n_before = len(rows)
    t_before = float(max(r[1] for r in rows))

    proc = _console(db, tmp_path / "run2.log")
    try:
        line = _wait_line(tmp_path / "run2.log", "resumed case")
        time.sleep(3.0)
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(20) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
    s = CaseStore(db)
    try:
        assert [c["id"] for c in s.cases()] == [case_id], line  # the same case, not a new one
        assert not s.case(case_id)["closed"]
        assert any(a["action"] == "case.resume" for a in s.rows("audit", case_id))
        after = [sw.t_s for sw, _ in s.iter_sweeps(case_id, t_from=t_before + 1e-6)]
        assert len(after) > 20 and min(after) > t_before  # resumed where it stopped, nothing overwritten
        assert s.count_sweeps(case_id) == n_before + len(after)
        assert s.verify_audit()
    finally:
        s.close()


def test_no_user_accounts_means_no_console(tmp_path: Path) -> None:
    log = tmp_path / "run.log"
    proc = _console(tmp_path / "cases.db", log)
    assert proc.wait(60) == 2
    assert "ionm users add" in log.read_text()
    s = CaseStore(tmp_path / "cases.db")
    assert s.cases() == []
    s.close()
    assert os.path.exists(tmp_path / "cases.db")


def test_a_stream_and_time_is_stored_once(store: CaseStore) -> None:
    """The schema refuses a second sweep at the same (case, stream, time): the refusal is counted and audited,
    and the store goes on recording (a duplicate must not stop the writer)."""
    rng = np.random.default_rng(2)
    cid = store.open_case()
    first, again, later = _sweep(1.0, rng), _sweep(1.0, rng), _sweep(1.2, rng)
    store.add_stream(cid, "ssep-upper/L median", first)
    store.add_sweep(cid, "ssep-upper/L median", 0, first, [None] * 3)
    store.add_sweep(cid, "ssep-upper/L median", 1, again, [None] * 3)
    store.add_sweep(cid, "ssep-upper/L median", 2, later, [None] * 3)
    store.flush()
    kept = [sw for sw, _ in store.iter_sweeps(cid)]
    assert [sw.t_s for sw in kept] == [1.0, 1.2]
    assert np.array_equal(kept[0].data_uv, first.data_uv)  # the first one stays, never overwritten
    assert store.duplicates_refused == 1
    refused = [a for a in store.rows("audit", cid) if a["action"] == "sweep.duplicate"]
    assert len(refused) == 1 and refused[0]["detail"]["stream"] == "ssep-upper/L median"
    assert store.verify_audit()
    with pytest.raises(sqlite3.IntegrityError):  # enforced by the schema, not only by the writer
        con = sqlite3.connect(store.path)
        try:
            con.execute("INSERT INTO sweeps (case_id, stream, seq, t_s, stim_index, wall, n_accepted, reasons, "
                        "codec, data) VALUES (?, 'ssep-upper/L median', 9, 1.2, 0, 0, 3, '[]', 'x', x'00')", (cid,))
        finally:
            con.close()


def test_a_store_holding_old_duplicates_still_opens_and_refuses_new_ones(tmp_path: Path) -> None:
    """A store written before (stream, time) was unique may hold duplicates: it opens, keeps them, and refuses
    further ones."""
    db = tmp_path / "old.db"
    s = CaseStore(db)
    cid = s.open_case()
    s.close()
    con = sqlite3.connect(db)
    con.execute("DROP INDEX sweeps_once")
    for seq in (0, 1):
        con.execute("INSERT INTO sweeps (case_id, stream, seq, t_s, stim_index, wall, n_accepted, reasons, codec, "
                    "data) VALUES (?, 'mep/TcMEP', ?, 5.0, 0, 0, 0, '[]', 'x', x'00')", (cid, seq))
    con.commit()
    con.close()
    s = CaseStore(db)
    try:
        rng = np.random.default_rng(3)
        sw = _sweep(5.0, rng)
        s.add_sweep(cid, "mep/TcMEP", 2, sw, [None] * 3)
        s.add_sweep(cid, "mep/TcMEP", 3, _sweep(5.2, rng), [None] * 3)
        s.flush()
        assert s.count_sweeps(cid) == 3 and s.duplicates_refused == 1
    finally:
        s.close()
