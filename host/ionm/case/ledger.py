"""Tamper evidence over the whole clinical record: a hash-chained ledger, anchored outside the database.

Every row written to a case table (the case itself, streams, sweeps, averages, baselines, measurements, alerts,
acknowledgements, notes, stimulation programs and commands, peak marks, the audit trail) gets a ledger entry in
the same transaction: the row's digest (SHA-256 of its canonical content; a BLOB such as a sweep's samples enters
by its own SHA-256, so hashing stays cheap: one pass over ~10 kB per sweep) chained to the previous entry of the
same case (entry hash = SHA-256 of the previous hash, the sequence number, the table, the row id and the digest).
Rows that belong to no case (logins) form a chain of their own.

The chain alone cannot show that its newest entries were cut off, or that someone rewrote it from an edited row
onwards. So the head of every chain (entries, newest hash) is written to a sidecar file next to the database
(`DB.anchor.json`) after every commit (the store's checkpoint) and when the store closes, and the report prints
it: a reader holding the signed report or the sidecar can tell. The sidecar only moves forward: a store opened on
a database whose chain no longer reaches an anchored head keeps that head in the sidecar as a conflict, so
writing more rows cannot launder the cut.

verify() walks one case's chain and names the first bad record: an entry whose row was edited or deleted, a
broken link, a row that has no entry (added behind the console), or a chain that is shorter than, or differs at,
its anchored head.
"""

from __future__ import annotations

import hashlib
import json
import os
import sqlite3
import time
from pathlib import Path
from typing import Any

# the case tables and how each names its case
CASE_TABLES = ("cases", "streams", "sweeps", "averages", "baselines", "measurements", "alerts", "acks", "notes",
               "programs", "peak_marks", "audit")

SCHEMA = """
CREATE TABLE IF NOT EXISTS ledger (
    id INTEGER PRIMARY KEY, case_id INTEGER, seq INTEGER NOT NULL, tbl TEXT NOT NULL, row_id INTEGER NOT NULL,
    digest TEXT NOT NULL, prev TEXT NOT NULL, hash TEXT NOT NULL);
CREATE INDEX IF NOT EXISTS ledger_by_case ON ledger (case_id, seq);
"""


def anchor_path(db: str | Path) -> Path:
    return Path(str(db) + ".anchor.json")


def chain_key(case_id: int | None) -> str:
    return "store" if case_id is None else str(case_id)


def columns(con: sqlite3.Connection) -> dict[str, list[tuple[str, str]]]:
    """Per case table, its columns (name, declared type) in table order, the rowid alias `id` left out."""
    out = {}
    for t in CASE_TABLES:
        out[t] = [(r[1], str(r[2]).upper()) for r in con.execute("PRAGMA table_info(%s)" % t) if r[1] != "id"]
    return out


def coerce(value: Any, decl: str) -> Any:
    """A value as SQLite stores it in a column of this declared type (so that the digest computed when writing
    equals the one computed from the row read back)."""
    if value is None:
        return None
    if decl == "REAL" and isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    if decl == "INTEGER" and isinstance(value, (bool, int)):
        return int(value)
    if decl == "INTEGER" and isinstance(value, float) and value.is_integer():
        return int(value)
    if decl == "BLOB" and isinstance(value, (bytes, bytearray, memoryview)):
        return bytes(value)
    return value


def digest(table: str, values: list[Any]) -> str:
    """SHA-256 of a row's canonical content (BLOBs by their own SHA-256)."""
    canon = [table] + [("sha256:" + hashlib.sha256(v).hexdigest()) if isinstance(v, bytes) else v for v in values]
    return hashlib.sha256(json.dumps(canon, separators=(",", ":"), ensure_ascii=False).encode()).hexdigest()


def link(prev: str, seq: int, case_id: int | None, table: str, row_id: int, dig: str) -> str:
    return hashlib.sha256(("%s|%d|%s|%s|%d|%s" % (prev, seq, case_id, table, row_id, dig)).encode()).hexdigest()


class Ledger:
    """The writer side (the store's writer thread only): appends entries and keeps the chain heads."""

    def __init__(self, con: sqlite3.Connection, db: str):
        con.executescript(SCHEMA)
        self.cols = columns(con)
        self.path = anchor_path(db)
        # the heads of the chains this store wrote to: only those are anchored by it (opening a store to read it,
        # as the report does, never moves an anchor)
        self.heads: dict[str, tuple[int, str]] = {}
        self.anchors = self._read_anchor()
        self.dirty = self._check_anchors(con)

    def _read_anchor(self) -> dict[str, Any]:
        try:
            data = json.loads(self.path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            return {"chains": {}, "conflicts": []}
        except (OSError, ValueError):
            return {"chains": {}, "conflicts": [{"chain": "*", "wall": time.time(),
                                                 "problem": "the anchor file could not be read"}]}
        data.setdefault("chains", {})
        data.setdefault("conflicts", [])
        return dict(data)

    def _check_anchors(self, con: sqlite3.Connection) -> bool:
        """A chain that no longer reaches its anchored head keeps that head, as a conflict, before anything moves
        the anchor forward. True if one was found (the sidecar must say so)."""
        found_any = False
        for key, a in list(self.anchors["chains"].items()):
            case_id = None if key == "store" else int(key)
            row = con.execute("SELECT hash FROM ledger WHERE case_id IS ? AND seq = ?", (case_id, int(a["rows"])))
            found = row.fetchone()
            if found is None or found[0] != a["head"]:
                known = any(c.get("chain") == key and c.get("head") == a["head"] for c in self.anchors["conflicts"])
                if not known:
                    self.anchors["conflicts"].append({"chain": key, "rows": a["rows"], "head": a["head"],
                                                      "wall": time.time(),
                                                      "problem": "the record no longer reaches this anchored head"})
                    found_any = True
        return found_any

    def append(self, con: sqlite3.Connection, table: str, row_id: int, row: dict[str, Any],
               case_id: int | None) -> None:
        values = [row.get(name) for name, _ in self.cols[table]]
        key = chain_key(case_id)
        # the head as the database has it (another process may have written to the store; the writer holds the
        # write lock, so this is current)
        last = con.execute("SELECT seq, hash FROM ledger WHERE case_id IS ? ORDER BY seq DESC LIMIT 1",
                           (case_id,)).fetchone()
        seq, prev = (int(last[0]), str(last[1])) if last else (0, "")
        seq += 1
        dig = digest(table, values)
        h = link(prev, seq, case_id, table, row_id, dig)
        con.execute("INSERT INTO ledger (case_id, seq, tbl, row_id, digest, prev, hash) VALUES (?,?,?,?,?,?,?)",
                    (case_id, seq, table, row_id, dig, prev, h))
        self.heads[key] = (seq, h)
        self.dirty = True

    def coerced(self, table: str, row: dict[str, Any]) -> dict[str, Any]:
        decl = dict(self.cols[table])
        return {k: coerce(v, decl.get(k, "")) for k, v in row.items()}

    def write_anchor(self) -> None:
        """The chain heads to the sidecar (atomically; after the commit that made them durable)."""
        if not self.dirty:
            return
        on_disk = self._read_anchor()  # another process's newer heads are kept, never moved back
        chains = self.anchors["chains"]
        for key, a in on_disk["chains"].items():
            if key not in chains or int(chains[key]["rows"]) < int(a["rows"]):
                chains[key] = a
        for c in on_disk["conflicts"]:
            if c not in self.anchors["conflicts"]:
                self.anchors["conflicts"].append(c)
        conflicted = {c.get("chain") for c in self.anchors["conflicts"]}
        for key, (seq, h) in self.heads.items():
            old = chains.get(key)
            if old is None or (int(old["rows"]) < seq and key not in conflicted):
                chains[key] = {"rows": seq, "head": h}  # (a conflicted chain keeps the head it was cut from)
        self.anchors["updated"] = time.time()
        tmp = self.path.with_suffix(".json.%d.tmp" % os.getpid())  # two processes on one store: no mixed file
        with open(tmp, "w", encoding="utf-8") as fh:
            json.dump(self.anchors, fh, indent=1, sort_keys=True)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, self.path)
        self.dirty = False


def _case_of(table: str) -> str:
    return "id" if table == "cases" else "case_id"


def verify(db: str | Path, case_id: int) -> dict[str, Any]:
    """Check one case's record against its ledger and its anchor. Returns {ok, entries, head, anchor, problems,
    first}: `first` names the first bad record (None when intact); `notes` says what is not a failure (entries
    written after the newest anchor, by a console killed between its commit and its checkpoint)."""
    con = sqlite3.connect(Path(db).resolve().as_uri() + "?mode=ro", uri=True)
    con.row_factory = sqlite3.Row
    problems: list[str] = []
    notes: list[str] = []
    try:
        has = con.execute("SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'ledger'").fetchone()
        if not has:
            return {"ok": False, "entries": 0, "head": "", "anchor": None, "notes": [],
                    "problems": ["the store has no ledger (recorded before tamper evidence)"],
                    "first": "the store has no ledger (recorded before tamper evidence)"}
        cols = columns(con)
        entries = list(con.execute("SELECT * FROM ledger WHERE case_id = ? ORDER BY seq, id", (case_id,)))
        prev = ""
        seen: dict[str, set[int]] = {t: set() for t in CASE_TABLES}
        for k, e in enumerate(entries, start=1):
            where = "ledger entry #%d (%s row %d)" % (k, e["tbl"], e["row_id"])
            if e["seq"] != k:
                problems.append("%s: sequence number %d where %d was due (an entry was removed or inserted)"
                                % (where, e["seq"], k))
            if e["prev"] != prev or link(e["prev"], e["seq"], case_id, e["tbl"], e["row_id"], e["digest"]) != e["hash"]:
                problems.append("%s: the chain is broken here (the entry was edited, or one before it removed)"
                                % where)
            prev = e["hash"]
            if e["tbl"] not in cols:
                problems.append("%s: unknown table" % where)
                continue
            seen[e["tbl"]].add(int(e["row_id"]))
            row = con.execute("SELECT * FROM %s WHERE rowid = ?" % e["tbl"], (e["row_id"],)).fetchone()
            if row is None:
                problems.append("%s row %d was deleted (ledger entry #%d)" % (e["tbl"], e["row_id"], k))
                continue
            values = [row[name] for name, _ in cols[e["tbl"]]]
            if digest(e["tbl"], values) != e["digest"]:
                problems.append("%s row %d was altered: its content no longer matches ledger entry #%d"
                                % (e["tbl"], e["row_id"], k))
        for t in CASE_TABLES:
            extra = [r[0] for r in con.execute("SELECT rowid FROM %s WHERE %s = ? ORDER BY rowid" % (t, _case_of(t)),
                                               (case_id,)) if int(r[0]) not in seen[t]]
            for rid in extra:
                problems.append("%s row %d is not in the ledger (written behind the console)" % (t, rid))
        head = entries[-1]["hash"] if entries else ""
    finally:
        con.close()
    anchor: dict[str, Any] | None = None
    path = anchor_path(db)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        problems.append("no anchor file %s: cut or rewritten chains cannot be detected" % path.name)
        data = {}
    except (OSError, ValueError):
        problems.append("the anchor file %s cannot be read" % path.name)
        data = {}
    for c in data.get("conflicts", []):
        if c.get("chain") in (str(case_id), "*"):
            problems.append("anchor conflict recorded %s: %s (anchored %s entries, head %s)" % (
                time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(c.get("wall", 0))), c.get("problem"),
                c.get("rows"), str(c.get("head"))[:16]))
    a = data.get("chains", {}).get(str(case_id))
    if a is not None:
        rows, ahead = int(a["rows"]), str(a["head"])
        anchor = {"rows": rows, "head": ahead}
        n = len(entries)
        if n < rows:
            problems.append("the ledger ends at entry #%d but the anchor covers %d entries: the newest records "
                            "were deleted" % (n, rows))
        elif entries[rows - 1]["hash"] != ahead:
            problems.append("ledger entry #%d does not match the anchored head: the chain was rewritten" % rows)
        elif n > rows:
            notes.append("%d entries after the newest anchor (written after the last checkpoint)" % (n - rows))
    elif data:
        problems.append("the anchor file has no head for case %d" % case_id)
    return {"ok": not problems, "entries": len(entries), "head": head, "anchor": anchor, "problems": problems,
            "first": problems[0] if problems else None, "notes": notes}


def find_case(db: str | Path, ref: str | None) -> dict[str, Any] | None:
    """A case (id, uid) by id or uid, or the newest; read-only (verifying writes nothing, not even an anchor)."""
    con = sqlite3.connect(Path(db).resolve().as_uri() + "?mode=ro", uri=True)
    try:
        rows = list(con.execute("SELECT id, uid FROM cases ORDER BY id"))
    finally:
        con.close()
    for cid, uid in (rows if ref is not None else rows[-1:]):
        if ref is None or str(cid) == str(ref) or uid == str(ref):
            return {"id": int(cid), "uid": str(uid)}
    return None
