"""Tamper evidence over the whole record: every kind of tampering on every case table is caught by `ionm verify`,
which names the first bad record; an untouched case verifies. The tampering is done as an attacker with the
database file would: sqlite3, triggers dropped, rows edited, deleted, added, the chain recomputed."""

from __future__ import annotations

import hashlib
import shutil
import sqlite3
import subprocess
from pathlib import Path
from typing import Any

import pytest
from conftest import ionm_cmd

from ionm.case import ledger
from ionm.case.store import CaseStore
from ionm.console.scripted import ack_all, command, injury_scenario, run_case

TECH = ("tech", "technologist")

# how to edit one row of each table (an SQL expression for one of its columns)
EDITS = {
    "cases": ("patient_id", "'SOMEONE-ELSE'"),
    "streams": ("fs", "fs * 2"),
    "sweeps": ("data", "zeroblob(length(data))"),
    "averages": ("why", "why || '.'"),
    "baselines": ("first_t", "first_t + 30"),
    "measurements": ("body", "replace(body, '}', ',\"x\":1}')"),
    "alerts": ("amplitude_ratio", "amplitude_ratio + 0.5"),
    "acks": ("note", "'forged: surgeon agreed nothing was wrong'"),
    "notes": ("text", "text || ' (edited)'"),
    "programs": ("user", "'doc'"),
    "peak_marks": ("latency_ms", "latency_ms + 1"),
    "audit": ("user", "'nobody'"),
}


def _peak(engine: Any) -> None:
    """A manual peak mark on the first SSEP channel that has a component to pin."""
    for st in engine.streams.values():
        for ch, marker in enumerate(st.evaluator.markers):
            if marker.components:
                engine._command("tech", "technologist", {"cmd": "peak", "stream": st.key, "channel": ch,
                                                         "name": marker.components[0].name, "latency_ms": 20.0})
                return
    raise AssertionError("no SSEP channel with components")


@pytest.fixture(scope="module")
def recorded(tmp_path_factory: pytest.TempPathFactory) -> Path:
    db = tmp_path_factory.mktemp("ledger") / "cases.db"
    store = CaseStore(db)
    run_case(store, injury_scenario(14.0), duration_s=24.0, mep_every=1.0, actions=[
        (8.0, command(*TECH, {"cmd": "baseline"})),
        (9.0, command(*TECH, {"cmd": "note", "text": "screw L3 left placed"})),
        (10.0, _peak),
        (11.0, command(*TECH, {"cmd": "stim", "command": {"action": "tcmep", "ipi_ms": 3.0}})),
        (20.0, ack_all("doc", "physician", "surgeon informed, screw removed")),
        (23.0, command(*TECH, {"cmd": "stim", "command": {"action": "stop_all"}})),
        (23.5, command(*TECH, {"cmd": "note", "text": "closing"})),
    ])
    store.close()
    return db


def copy_of(db: Path, tmp_path: Path) -> Path:
    out = tmp_path / "copy.db"
    shutil.copy(db, out)
    shutil.copy(ledger.anchor_path(db), ledger.anchor_path(out))
    return out


def sql(db: Path, *statements: str) -> None:
    con = sqlite3.connect(db)
    try:
        for s in statements:
            con.execute(s)
        con.commit()
    finally:
        con.close()


def rowids(db: Path, table: str) -> list[int]:
    con = sqlite3.connect(db)
    try:
        where = "id = 1" if table == "cases" else "case_id = 1"
        return [r[0] for r in con.execute("SELECT rowid FROM %s WHERE %s ORDER BY rowid" % (table, where))]
    finally:
        con.close()


def check(db: Path) -> dict[str, Any]:
    return ledger.verify(db, 1)


def test_every_case_table_is_in_the_record_and_an_untouched_case_verifies(recorded: Path, tmp_path: Path) -> None:
    for table in ledger.CASE_TABLES:
        assert rowids(recorded, table), "the recorded case has no %s row: the test would prove nothing" % table
    res = check(recorded)
    assert res["ok"], res["problems"]
    assert res["anchor"] == {"rows": res["entries"], "head": res["head"]}  # anchored up to the newest at close
    done = subprocess.run(ionm_cmd("verify", "--db", str(recorded)), capture_output=True, text=True, timeout=60)
    assert done.returncode == 0 and "intact" in done.stdout and res["head"] in done.stdout


@pytest.mark.parametrize("table", ledger.CASE_TABLES)
def test_an_edited_row_is_named(recorded: Path, tmp_path: Path, table: str) -> None:
    db = copy_of(recorded, tmp_path)
    ids = rowids(db, table)
    victim = ids[len(ids) // 2]
    col, expr = EDITS[table]
    sql(db, "DROP TRIGGER %s_no_update" % table, "UPDATE %s SET %s = %s WHERE rowid = %d" % (table, col, expr, victim))
    res = check(db)
    assert not res["ok"]
    assert res["first"].startswith("%s row %d was altered" % (table, victim)), res["first"]
    done = subprocess.run(ionm_cmd("verify", "--db", str(db)), capture_output=True, text=True, timeout=60)
    assert done.returncode == 1 and "%s row %d was altered" % (table, victim) in done.stdout


@pytest.mark.parametrize("table", ledger.CASE_TABLES)
@pytest.mark.parametrize("which", ["middle", "newest"])
def test_a_deleted_row_is_named(recorded: Path, tmp_path: Path, table: str, which: str) -> None:
    db = copy_of(recorded, tmp_path)
    ids = rowids(db, table)
    victim = ids[-1] if which == "newest" else ids[len(ids) // 2]
    sql(db, "DROP TRIGGER %s_no_delete" % table, "DELETE FROM %s WHERE rowid = %d" % (table, victim))
    res = check(db)
    assert not res["ok"] and res["first"].startswith("%s row %d was deleted" % (table, victim)), res["first"]


@pytest.mark.parametrize("table", [t for t in ledger.CASE_TABLES if t != "cases"])  # a new case row: another case
def test_a_row_added_behind_the_console_is_named(recorded: Path, tmp_path: Path, table: str) -> None:
    db = copy_of(recorded, tmp_path)
    con = sqlite3.connect(db)
    try:
        cols = [r[1] for r in con.execute("PRAGMA table_info(%s)" % table) if r[1] != "id"]
        src = rowids(db, table)[0]
        if table == "streams":
            con.execute("INSERT INTO streams SELECT case_id, key || ' copy', modality, source, fs, pre_samples, "
                        "n_samples, channels, channel_names, created FROM streams WHERE rowid = %d" % src)
        elif table == "sweeps":
            con.execute("INSERT INTO sweeps (%s) SELECT %s FROM sweeps WHERE rowid = %d" % (
                ", ".join(cols), ", ".join("t_s + 1000" if c == "t_s" else c for c in cols), src))
        else:
            con.execute("INSERT INTO %s (%s) SELECT %s FROM %s WHERE rowid = %d" % (
                table, ", ".join(cols), ", ".join("uid || 'x'" if c == "uid" else c for c in cols), table, src))
        added = con.execute("SELECT MAX(rowid) FROM %s" % table).fetchone()[0]
        con.commit()
    finally:
        con.close()
    res = check(db)
    assert not res["ok"] and res["first"] == "%s row %d is not in the ledger (written behind the console)" % (
        table, added), res["first"]


def _rechain(db: Path, from_seq: int = 1) -> None:
    """What a careful forger does after editing: recompute every digest from the rows and re-link the chain."""
    con = sqlite3.connect(db)
    con.row_factory = sqlite3.Row
    try:
        con.execute("DROP TRIGGER ledger_no_update")
        cols = ledger.columns(con)
        prev = ""
        for e in list(con.execute("SELECT * FROM ledger WHERE case_id = 1 ORDER BY seq")):
            row = con.execute("SELECT * FROM %s WHERE rowid = ?" % e["tbl"], (e["row_id"],)).fetchone()
            dig = ledger.digest(e["tbl"], [row[n] for n, _ in cols[e["tbl"]]])
            h = ledger.link(prev, e["seq"], 1, e["tbl"], e["row_id"], dig)
            con.execute("UPDATE ledger SET digest = ?, prev = ?, hash = ? WHERE id = ?", (dig, prev, h, e["id"]))
            prev = h
        con.commit()
    finally:
        con.close()


@pytest.mark.parametrize("table", ["acks", "notes", "alerts", "sweeps", "audit"])
def test_an_edit_with_the_chain_recomputed_is_caught_by_the_anchor(recorded: Path, tmp_path: Path, table: str) -> None:
    db = copy_of(recorded, tmp_path)
    ids = rowids(db, table)
    col, expr = EDITS[table]
    sql(db, "DROP TRIGGER %s_no_update" % table, "UPDATE %s SET %s = %s WHERE rowid = %d" % (table, col, expr, ids[0]))
    _rechain(db)
    res = check(db)
    assert not res["ok"] and "the chain was rewritten" in res["first"], res["problems"]
    assert len(res["problems"]) == 1  # the chain itself is consistent again: only the anchor tells


def test_opening_a_rewritten_store_to_read_it_does_not_launder_the_anchor(recorded: Path, tmp_path: Path) -> None:
    db = copy_of(recorded, tmp_path)
    sql(db, "DROP TRIGGER acks_no_update", "UPDATE acks SET note = 'forged' WHERE rowid = %d" % rowids(db, "acks")[0])
    _rechain(db)
    CaseStore(db).close()  # as `ionm report` opens it: nothing written, nothing anchored
    done = subprocess.run(ionm_cmd("verify", "--db", str(db)), capture_output=True, text=True, timeout=60)
    assert done.returncode == 1 and "NOT intact" in done.stdout
    res = check(db)
    assert not res["ok"] and any("rewritten" in p or "no longer reaches" in p for p in res["problems"])


def test_the_newest_records_cut_off_with_their_ledger_entries_are_caught(recorded: Path, tmp_path: Path) -> None:
    db = copy_of(recorded, tmp_path)
    con = sqlite3.connect(db)
    try:
        for t in ("ledger", *ledger.CASE_TABLES):
            con.execute("DROP TRIGGER %s_no_delete" % t)
        tail = list(con.execute("SELECT id, tbl, row_id FROM ledger WHERE case_id = 1 ORDER BY seq DESC LIMIT 5"))
        for lid, tbl, rid in tail:
            con.execute("DELETE FROM %s WHERE rowid = ?" % tbl, (rid,))
            con.execute("DELETE FROM ledger WHERE id = ?", (lid,))
        con.commit()
    finally:
        con.close()
    res = check(db)
    n = len(rowids(recorded, "audit"))  # (only to show the record really got shorter)
    assert n > 0
    assert not res["ok"] and "the newest records were deleted" in res["first"], res["problems"]


def test_a_store_reopened_after_a_cut_keeps_the_evidence(recorded: Path, tmp_path: Path) -> None:
    """Opening the tampered store and writing more must not move the anchor over the cut."""
    db = copy_of(recorded, tmp_path)
    con = sqlite3.connect(db)
    try:
        con.execute("DROP TRIGGER ledger_no_delete")
        con.execute("DROP TRIGGER notes_no_delete")
        lid, rid = con.execute("SELECT id, row_id FROM ledger WHERE case_id = 1 AND tbl = 'notes' "
                               "ORDER BY seq DESC LIMIT 1").fetchone()
        newest = con.execute("SELECT MAX(seq) FROM ledger WHERE case_id = 1").fetchone()[0]
        if con.execute("SELECT seq FROM ledger WHERE id = ?", (lid,)).fetchone()[0] == newest:
            con.execute("DELETE FROM notes WHERE rowid = ?", (rid,))
            con.execute("DELETE FROM ledger WHERE id = ?", (lid,))
        else:  # cut everything from that note on
            for i, tbl, r in list(con.execute("SELECT id, tbl, row_id FROM ledger WHERE case_id = 1 AND id >= ?",
                                              (lid,))):
                con.execute("DROP TRIGGER IF EXISTS %s_no_delete" % tbl)
                con.execute("DELETE FROM %s WHERE rowid = ?" % tbl, (r,))
                con.execute("DELETE FROM ledger WHERE id = ?", (i,))
        con.commit()
    finally:
        con.close()
    store = CaseStore(db)
    for k in range(50):  # more than was cut
        store.add_note(1, 100.0 + k, "tech", "note %d" % k)
    store.close()
    res = check(db)
    assert not res["ok"] and any("anchor conflict" in p for p in res["problems"]), res["problems"]


def test_the_anchor_is_written_at_every_checkpoint_and_the_report_prints_it(recorded: Path, tmp_path: Path) -> None:
    import json

    db = tmp_path / "live.db"
    store = CaseStore(db)
    try:
        cid = store.open_case(patient_id="P")
        store.add_note(cid, 1.0, "tech", "first")
        store.flush()  # a checkpoint: committed, then anchored
        a = json.loads(ledger.anchor_path(db).read_text())["chains"][str(cid)]
        assert a == {"rows": ledger.verify(db, cid)["entries"], "head": ledger.verify(db, cid)["head"]}
        store.add_note(cid, 2.0, "tech", "second")
        store.flush()
        b = json.loads(ledger.anchor_path(db).read_text())["chains"][str(cid)]
        assert b["rows"] > a["rows"] and b["head"] == ledger.verify(db, cid)["head"]
    finally:
        store.close()
    if shutil.which("pdftotext") is None:
        pytest.skip("pdftotext (poppler-utils) not installed")
    out = tmp_path / "report.pdf"
    done = subprocess.run(ionm_cmd("report", "--db", str(recorded), "--out", str(out)), capture_output=True,
                          text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    text = subprocess.run(["pdftotext", str(out), "-"], capture_output=True, text=True, check=True).stdout
    res = check(recorded)
    assert res["head"][:32] in text.replace("\n", "") and "intact" in text


def test_a_sweep_row_digest_covers_its_samples_and_its_fields() -> None:
    """A sweep row enters by the SHA-256 of its compressed samples (one pass over ~10 kB) plus its fields."""
    blob = bytes(range(256)) * 40
    d1 = ledger.digest("sweeps", [1, "s", 0, 1.0, 5, 2.0, 16, "[]", "c", blob])
    d2 = ledger.digest("sweeps", [1, "s", 0, 1.0, 5, 2.0, 16, "[]", "c", blob[:-1] + b"\x01"])
    assert d1 != d2 and len(d1) == 64
    assert hashlib.sha256(blob).hexdigest() not in d1  # the row digest covers more than the samples


def test_ionm_verify_of_an_unknown_case_or_store_says_so(recorded: Path, tmp_path: Path) -> None:
    done = subprocess.run(ionm_cmd("verify", "--db", str(recorded), "no-such-case"), capture_output=True, text=True,
                          timeout=60)
    assert done.returncode == 2 and done.stderr.startswith("ionm verify: no case")
    done = subprocess.run(ionm_cmd("verify", "--db", str(tmp_path / "nothing.db")), capture_output=True, text=True,
                          timeout=60)
    assert done.returncode == 2 and "no case store" in done.stderr
    assert not (tmp_path / "nothing.db").exists()  # verifying creates nothing
