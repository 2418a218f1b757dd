"""The case store: one SQLite file (WAL) holding cases, users and everything recorded during a case.

Why it is built this way:
- Nothing recorded is ever overwritten. Every case table is append-only, enforced by triggers that RAISE on
  UPDATE or DELETE (a bug or a hand-run SQL statement cannot rewrite the record); a case is closed by an
  audit row, not by changing the case row. Only accounts, sessions and settings are mutable.
- Writes are batched but durable: callers enqueue rows and return at once (the acquisition path never waits
  on the disk); one writer thread owns the write connection and commits at least every `commit_interval_s`
  (0.5 s) with synchronous=FULL, so a kill -9 of the host loses at most the last half second of sweeps.
  flush() waits for a commit: acknowledgements and notes are durable before the user is told they are.
- The audit trail is a hash chain (each row's hash covers the previous hash), so a row removed or edited
  behind SQLite's back shows up in verify_audit(). Beyond it, every row of every case table is chained in the
  ledger and the chain heads are anchored in a sidecar file after every commit (ionm.case.ledger; verify()).
- Sweeps are float32 µV, byte-shuffled and zlib-compressed (lossless; ~0.8 of raw on noisy sweeps).
"""

from __future__ import annotations

import hashlib
import json
import queue
import sqlite3
import threading
import time
import zlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from ionm.case.ledger import SCHEMA as LEDGER_SCHEMA, Ledger, verify as verify_ledger
from ionm.sweep import Sweep

CODEC = "f32-shuffle-zlib1"

APPEND_ONLY = ("cases", "streams", "sweeps", "averages", "baselines", "measurements", "alerts", "acks", "notes",
               "programs", "peak_marks", "audit", "ledger")

SCHEMA = """
CREATE TABLE IF NOT EXISTS cases (
    id INTEGER PRIMARY KEY, uid TEXT UNIQUE NOT NULL, created REAL NOT NULL,
    patient_id TEXT NOT NULL DEFAULT '', procedure TEXT NOT NULL DEFAULT '', meta TEXT NOT NULL DEFAULT '{}');
CREATE TABLE IF NOT EXISTS streams (
    case_id INTEGER NOT NULL, key TEXT NOT NULL, modality TEXT NOT NULL, source TEXT NOT NULL,
    fs REAL NOT NULL, pre_samples INTEGER NOT NULL, n_samples INTEGER NOT NULL,
    channels TEXT NOT NULL, channel_names TEXT NOT NULL, created REAL NOT NULL, PRIMARY KEY (case_id, key));
CREATE TABLE IF NOT EXISTS sweeps (
    id INTEGER PRIMARY KEY, case_id INTEGER NOT NULL, stream TEXT NOT NULL, seq INTEGER NOT NULL,
    t_s REAL NOT NULL, stim_index INTEGER NOT NULL, wall REAL NOT NULL, n_accepted INTEGER NOT NULL,
    reasons TEXT NOT NULL, codec TEXT NOT NULL, data BLOB NOT NULL);
CREATE UNIQUE INDEX IF NOT EXISTS sweeps_once ON sweeps (case_id, stream, t_s);
CREATE TABLE IF NOT EXISTS averages (
    id INTEGER PRIMARY KEY, case_id INTEGER NOT NULL, stream TEXT NOT NULL, t_s REAL NOT NULL, wall REAL NOT NULL,
    why TEXT NOT NULL, n TEXT NOT NULL, codec TEXT NOT NULL, data BLOB NOT NULL);
CREATE INDEX IF NOT EXISTS averages_by_stream ON averages (case_id, stream, t_s);
CREATE TABLE IF NOT EXISTS baselines (
    id INTEGER PRIMARY KEY, case_id INTEGER NOT NULL, stream TEXT NOT NULL, t_s REAL NOT NULL, wall REAL NOT NULL,
    user TEXT NOT NULL, first_t REAL NOT NULL, last_t REAL NOT NULL, refs TEXT NOT NULL, peaks TEXT NOT NULL,
    codec TEXT NOT NULL, data BLOB NOT NULL);
CREATE TABLE IF NOT EXISTS measurements (
    id INTEGER PRIMARY KEY, case_id INTEGER NOT NULL, stream TEXT NOT NULL, t_s REAL NOT NULL, body TEXT NOT NULL);
CREATE INDEX IF NOT EXISTS measurements_by_stream ON measurements (case_id, stream, t_s);
CREATE TABLE IF NOT EXISTS alerts (
    id INTEGER PRIMARY KEY, case_id INTEGER NOT NULL, uid TEXT UNIQUE NOT NULL, stream TEXT NOT NULL,
    t_s REAL NOT NULL, wall REAL NOT NULL, channel INTEGER NOT NULL, channel_name TEXT NOT NULL,
    criterion TEXT NOT NULL, amplitude_ratio REAL, latency_ratio REAL, scope TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS acks (
    id INTEGER PRIMARY KEY, case_id INTEGER NOT NULL, alert_uid TEXT NOT NULL, t_s REAL NOT NULL,
    wall REAL NOT NULL, user TEXT NOT NULL, note TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS notes (
    id INTEGER PRIMARY KEY, case_id INTEGER NOT NULL, t_s REAL NOT NULL, wall REAL NOT NULL,
    user TEXT NOT NULL, kind TEXT NOT NULL, text TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS programs (
    id INTEGER PRIMARY KEY, case_id INTEGER NOT NULL, t_s REAL NOT NULL, wall REAL NOT NULL,
    user TEXT NOT NULL, kind TEXT NOT NULL, body TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS peak_marks (
    id INTEGER PRIMARY KEY, case_id INTEGER NOT NULL, stream TEXT NOT NULL, t_s REAL NOT NULL, wall REAL NOT NULL,
    user TEXT NOT NULL, channel INTEGER NOT NULL, name TEXT NOT NULL, latency_ms REAL);
CREATE TABLE IF NOT EXISTS audit (
    id INTEGER PRIMARY KEY, case_id INTEGER, wall REAL NOT NULL, user TEXT NOT NULL, action TEXT NOT NULL,
    detail TEXT NOT NULL, prev_hash TEXT NOT NULL, hash TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS users (
    name TEXT PRIMARY KEY, role TEXT NOT NULL, pw_hash TEXT NOT NULL, created REAL NOT NULL,
    disabled INTEGER NOT NULL DEFAULT 0);
CREATE TABLE IF NOT EXISTS sessions (
    id TEXT PRIMARY KEY, user TEXT NOT NULL, created REAL NOT NULL, expires REAL NOT NULL,
    revoked INTEGER NOT NULL DEFAULT 0);
CREATE TABLE IF NOT EXISTS settings (key TEXT PRIMARY KEY, value TEXT NOT NULL);
""" + LEDGER_SCHEMA

_SWEEPS_UNIQUE = "CREATE UNIQUE INDEX IF NOT EXISTS sweeps_once ON sweeps (case_id, stream, t_s);"
_SWEEPS_PLAIN = "CREATE INDEX IF NOT EXISTS sweeps_by_stream ON sweeps (case_id, stream, t_s);"


def _triggers() -> str:
    out = []
    for t in APPEND_ONLY:
        for op in ("UPDATE", "DELETE"):
            out.append("CREATE TRIGGER IF NOT EXISTS %s_no_%s BEFORE %s ON %s BEGIN "
                       "SELECT RAISE(ABORT, '%s is append-only'); END;" % (t, op.lower(), op, t, t))
    return "\n".join(out)


def encode_array(x: np.ndarray) -> bytes:
    """float32 array -> shuffled, compressed bytes (shape is stored beside it by the caller)."""
    a = np.ascontiguousarray(x, dtype="<f4")
    return zlib.compress(a.view(np.uint8).reshape(-1, 4).T.tobytes(), 1)


def decode_array(blob: bytes, shape: tuple[int, ...]) -> np.ndarray:
    b = np.frombuffer(zlib.decompress(blob), dtype=np.uint8).reshape(4, -1).T
    return np.ascontiguousarray(b).view("<f4").reshape(shape).astype(np.float32)


def _pack(x: np.ndarray) -> bytes:
    """An array with its shape: a small JSON header line, then the encoded data."""
    head = json.dumps(list(x.shape)).encode() + b"\n"
    return head + encode_array(x)


def unpack(blob: bytes) -> np.ndarray:
    head, _, body = bytes(blob).partition(b"\n")
    return decode_array(body, tuple(json.loads(head)))


def _hash(prev: str, wall: float, user: str, action: str, detail: str, case_id: int | None) -> str:
    h = hashlib.sha256()
    h.update(("%s|%r|%s|%s|%s|%s" % (prev, wall, case_id, user, action, detail)).encode())
    return h.hexdigest()


class StoreError(RuntimeError):
    pass


class CaseStore:
    """The store. Write methods enqueue and return; flush() waits until everything enqueued is committed."""

    def __init__(self, path: str | Path, commit_interval_s: float = 0.5):
        self.path = str(path)
        self.commit_interval_s = float(commit_interval_s)
        Path(self.path).parent.mkdir(parents=True, exist_ok=True)
        con = self._connect()
        try:
            con.executescript(SCHEMA + _triggers())
        except sqlite3.IntegrityError:
            # A store written before (stream, time) was unique, holding duplicates: keep them (the record is
            # append-only) and keep the plain index; new duplicates are still refused by the writer below.
            con.executescript(SCHEMA.replace(_SWEEPS_UNIQUE, _SWEEPS_PLAIN) + _triggers())
        con.close()
        self.duplicates_refused = 0  # sweeps refused because their (case, stream, time) was stored already
        self._local = threading.local()
        self._q: queue.Queue[tuple[str, Any]] = queue.Queue()
        self._error: BaseException | None = None
        self._closed = False
        self.commits = 0
        self._ready = threading.Event()
        self._writer = threading.Thread(target=self._write_loop, name="case-store-writer", daemon=True)
        self._writer.start()
        self._ready.wait(30)
        if self._error is not None:
            raise StoreError("case store %s cannot be opened for writing: %r" % (self.path, self._error))

    # ---------------------------------------------------------------- connections
    def _connect(self) -> sqlite3.Connection:
        con = sqlite3.connect(self.path, timeout=30, isolation_level=None, check_same_thread=False)
        con.execute("PRAGMA journal_mode=WAL")
        con.execute("PRAGMA synchronous=FULL")  # a commit survives power loss, not only a killed process
        con.execute("PRAGMA foreign_keys=ON")
        return con

    def _reader(self) -> sqlite3.Connection:
        con = getattr(self._local, "con", None)
        if con is None:
            con = self._connect()
            con.row_factory = sqlite3.Row
            self._local.con = con
        return con

    def query(self, sql: str, args: tuple[Any, ...] = ()) -> list[sqlite3.Row]:
        """Read committed rows (any thread)."""
        return list(self._reader().execute(sql, args))

    def execute_now(self, sql: str, args: tuple[Any, ...] = ()) -> int:
        """A synchronous write for the mutable tables (users, sessions, settings); returns rowcount."""
        return self._call(lambda con: con.execute(sql, args).rowcount)

    # ---------------------------------------------------------------- writer thread
    def _write_loop(self) -> None:
        con = self._connect()
        prev = con.execute("SELECT hash FROM audit ORDER BY id DESC LIMIT 1").fetchone()
        self._last_hash = prev[0] if prev else ""
        try:
            self._ledger = Ledger(con, self.path)
        except BaseException as exc:  # the store must not write what it cannot chain
            self._error = exc
            self._ready.set()
            con.close()
            return
        self._ready.set()
        in_tx = False
        last_commit = time.monotonic()
        waiters: list[threading.Event] = []
        stop = False
        while not stop:
            timeout = max(0.0, self.commit_interval_s - (time.monotonic() - last_commit)) if in_tx else 0.5
            try:
                kind, item = self._q.get(timeout=timeout)
            except queue.Empty:
                kind, item = "tick", None
            try:
                if kind == "stop":
                    stop = True
                elif kind == "flush":
                    waiters.append(item)
                elif kind == "call":
                    fn, box, done = item
                    if in_tx:
                        con.execute("COMMIT")
                        in_tx = False
                    try:
                        box.append(fn(con))
                    except BaseException as exc:  # report to the caller, keep writing
                        box.append(exc)
                    self._anchor()
                    done.set()
                elif kind != "tick":
                    if not in_tx:
                        con.execute("BEGIN IMMEDIATE")  # the write lock now: the ledger's head is read in it
                        in_tx = True
                    self._apply(con, kind, item)
            except BaseException as exc:
                self._error = exc
            due = time.monotonic() - last_commit >= self.commit_interval_s
            if in_tx and (due or waiters or stop or self._q.empty() and kind == "tick"):
                try:
                    con.execute("COMMIT")
                    self.commits += 1
                    self._anchor()  # the checkpoint: the chain heads leave the database once durable in it
                except sqlite3.Error as exc:
                    self._error = exc
                in_tx = False
                last_commit = time.monotonic()
            elif not in_tx:
                last_commit = time.monotonic()
            if waiters and not in_tx:
                for w in waiters:
                    w.set()
                waiters = []
        self._anchor()
        con.close()

    def _anchor(self) -> None:
        try:
            self._ledger.write_anchor()
        except OSError as exc:
            self._error = exc

    def _insert(self, con: sqlite3.Connection, kind: str, row: dict[str, Any]) -> None:
        """One row and its ledger entry, in the same transaction."""
        row = self._ledger.coerced(kind, row)
        cols = list(row)
        cur = con.execute("INSERT INTO %s (%s) VALUES (%s)" % (kind, ", ".join(cols), ", ".join("?" * len(cols))),
                          [row[c] for c in cols])
        self._ledger.append(con, kind, int(cur.lastrowid or 0), row, row.get("case_id"))

    def _apply(self, con: sqlite3.Connection, kind: str, row: dict[str, Any]) -> None:
        if kind == "audit":
            detail = json.dumps(row["detail"], sort_keys=True, default=str)
            h = _hash(self._last_hash, row["wall"], row["user"], row["action"], detail, row["case_id"])
            self._insert(con, "audit", {"case_id": row["case_id"], "wall": row["wall"], "user": row["user"],
                                        "action": row["action"], "detail": detail, "prev_hash": self._last_hash,
                                        "hash": h})
            self._last_hash = h
            return
        if kind != "sweeps":
            self._insert(con, kind, row)
            return
        if con.execute("SELECT 1 FROM sweeps WHERE case_id = ? AND stream = ? AND t_s = ?",
                       (row["case_id"], row["stream"], row["t_s"])).fetchone() is None:
            self._insert(con, kind, row)
            return
        # A second sweep at a time already stored (a source whose clock restarted): the first one stays, the
        # refusal is counted and audited, and recording goes on. Checked here as well as by the unique index
        # so that one duplicate never aborts the batch it arrived in.
        self.duplicates_refused += 1
        self._apply(con, "audit", {"case_id": row["case_id"], "wall": row["wall"], "user": "system",
                                   "action": "sweep.duplicate",
                                   "detail": {"stream": row["stream"], "t_s": row["t_s"], "seq": row["seq"]}})

    def _put(self, table: str, row: dict[str, Any]) -> None:
        if self._error is not None:
            raise StoreError("case store writer failed: %r" % (self._error,))
        if self._closed:
            raise StoreError("case store is closed")
        self._q.put((table, row))

    def _call(self, fn: Any, timeout: float = 30.0) -> Any:
        box: list[Any] = []
        done = threading.Event()
        self._q.put(("call", (fn, box, done)))
        if not done.wait(timeout):
            raise StoreError("case store writer did not answer in %.0f s" % timeout)
        if isinstance(box[0], BaseException):
            raise box[0]
        return box[0]

    def flush(self, timeout: float = 10.0) -> None:
        """Wait until everything enqueued so far is committed."""
        ev = threading.Event()
        self._q.put(("flush", ev))
        if not ev.wait(timeout):
            raise StoreError("case store commit took longer than %.0f s" % timeout)
        if self._error is not None:
            raise StoreError("case store writer failed: %r" % (self._error,))

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        self._q.put(("stop", None))
        self._writer.join(timeout=30)
        con = getattr(self._local, "con", None)
        if con is not None:
            con.close()
            self._local.con = None

    # ---------------------------------------------------------------- cases
    def open_case(self, *, patient_id: str = "", procedure: str = "", meta: dict[str, Any] | None = None,
                  user: str = "system") -> int:
        """A new case; returns its id (synchronous: the id is needed before anything else is written)."""
        wall = time.time()
        uid = time.strftime("%Y%m%d-%H%M%S", time.localtime(wall)) + "-%04x" % (int(wall * 1e6) & 0xFFFF)

        def insert(con: sqlite3.Connection) -> int:
            row = {"uid": uid, "created": wall, "patient_id": patient_id, "procedure": procedure,
                   "meta": json.dumps(meta or {})}
            con.execute("BEGIN IMMEDIATE")
            cur = con.execute("INSERT INTO cases (uid, created, patient_id, procedure, meta) VALUES (?,?,?,?,?)",
                              tuple(row.values()))
            case_id = int(cur.lastrowid or 0)
            self._ledger.append(con, "cases", case_id, row, case_id)
            con.execute("COMMIT")
            return case_id

        case_id = int(self._call(insert))
        self.audit(case_id, user, "case.open", {"uid": uid, "patient_id": patient_id, "procedure": procedure})
        self.flush()
        return case_id

    def close_case(self, case_id: int, user: str, note: str = "") -> None:
        self.audit(case_id, user, "case.close", {"note": note})
        self.flush()

    def cases(self) -> list[dict[str, Any]]:
        rows = self.query("SELECT c.*, EXISTS (SELECT 1 FROM audit a WHERE a.case_id = c.id AND "
                          "a.action = 'case.close') AS closed FROM cases c ORDER BY c.id")
        return [dict(r) | {"meta": json.loads(r["meta"]), "closed": bool(r["closed"])} for r in rows]

    def case(self, ref: str | int | None = None) -> dict[str, Any]:
        """A case by id or uid; None: the newest."""
        cases = self.cases()
        if not cases:
            raise StoreError("no cases in %s" % self.path)
        if ref is None:
            return cases[-1]
        for c in cases:
            if str(c["id"]) == str(ref) or c["uid"] == str(ref):
                return c
        raise StoreError("no case %r in %s" % (ref, self.path))

    def open_case_id(self) -> int | None:
        """The newest case that was not closed (to resume after a restart), or None."""
        open_ = [c for c in self.cases() if not c["closed"]]
        return int(open_[-1]["id"]) if open_ else None

    # ---------------------------------------------------------------- recording
    def add_stream(self, case_id: int, key: str, sweep: Sweep) -> None:
        self._put("streams", {"case_id": case_id, "key": key, "modality": sweep.modality, "source": sweep.source,
                              "fs": float(sweep.fs), "pre_samples": int(sweep.pre_samples),
                              "n_samples": int(sweep.data_uv.shape[1]), "channels": json.dumps(list(sweep.channels)),
                              "channel_names": json.dumps(list(sweep.channel_names)), "created": time.time()})

    def add_sweep(self, case_id: int, stream: str, seq: int, sweep: Sweep, reasons: list[str | None]) -> None:
        self._put("sweeps", {"case_id": case_id, "stream": stream, "seq": int(seq), "t_s": float(sweep.t_s),
                             "stim_index": int(sweep.stim_index), "wall": time.time(),
                             "n_accepted": sum(r is None for r in reasons), "reasons": json.dumps(reasons),
                             "codec": CODEC, "data": _pack(np.asarray(sweep.data_uv, dtype=np.float32))})

    def add_average(self, case_id: int, stream: str, t_s: float, why: str, n: list[float], mean: np.ndarray) -> None:
        self._put("averages", {"case_id": case_id, "stream": stream, "t_s": float(t_s), "wall": time.time(),
                               "why": why, "n": json.dumps([round(float(v), 1) for v in n]), "codec": CODEC,
                               "data": _pack(np.asarray(mean, dtype=np.float32))})

    def add_baseline(self, case_id: int, stream: str, t_s: float, user: str, first_t: float, last_t: float,
                     refs: list[dict[str, Any]], peaks: list[dict[str, Any]], mean: np.ndarray) -> None:
        self._put("baselines", {"case_id": case_id, "stream": stream, "t_s": float(t_s), "wall": time.time(),
                                "user": user, "first_t": float(first_t), "last_t": float(last_t),
                                "refs": json.dumps(refs), "peaks": json.dumps(peaks), "codec": CODEC,
                                "data": _pack(np.asarray(mean, dtype=np.float32))})

    def add_measurement(self, case_id: int, stream: str, t_s: float, body: dict[str, Any]) -> None:
        self._put("measurements", {"case_id": case_id, "stream": stream, "t_s": float(t_s),
                                   "body": json.dumps(body)})

    def add_alert(self, case_id: int, row: dict[str, Any]) -> None:
        self._put("alerts", {"case_id": case_id, "wall": time.time(), **row})

    def add_ack(self, case_id: int, alert_uid: str, t_s: float, user: str, note: str) -> None:
        self._put("acks", {"case_id": case_id, "alert_uid": alert_uid, "t_s": float(t_s), "wall": time.time(),
                           "user": user, "note": note})

    def add_note(self, case_id: int, t_s: float, user: str, text: str, kind: str = "note") -> None:
        self._put("notes", {"case_id": case_id, "t_s": float(t_s), "wall": time.time(), "user": user,
                            "kind": kind, "text": text})

    def add_program(self, case_id: int, t_s: float, user: str, kind: str, body: dict[str, Any]) -> None:
        self._put("programs", {"case_id": case_id, "t_s": float(t_s), "wall": time.time(), "user": user,
                               "kind": kind, "body": json.dumps(body, default=str)})

    def add_peak_mark(self, case_id: int, stream: str, t_s: float, user: str, channel: int, name: str,
                      latency_ms: float | None) -> None:
        self._put("peak_marks", {"case_id": case_id, "stream": stream, "t_s": float(t_s), "wall": time.time(),
                                 "user": user, "channel": int(channel), "name": name, "latency_ms": latency_ms})

    def audit(self, case_id: int | None, user: str, action: str, detail: dict[str, Any] | None = None) -> None:
        """Who did what, when: appended to the hash-chained audit trail."""
        self._put("audit", {"case_id": case_id, "wall": time.time(), "user": user, "action": action,
                            "detail": detail or {}})

    # ---------------------------------------------------------------- reading a case back
    def streams(self, case_id: int) -> list[dict[str, Any]]:
        rows = self.query("SELECT * FROM streams WHERE case_id = ? ORDER BY created", (case_id,))
        return [dict(r) | {"channels": json.loads(r["channels"]), "channel_names": json.loads(r["channel_names"])}
                for r in rows]

    def iter_sweeps(self, case_id: int, stream: str | None = None, t_from: float = -np.inf,
                    t_to: float = np.inf) -> Iterator[tuple[Sweep, list[str | None]]]:
        """Recorded sweeps in stimulus-time order (of one stream, or all), with their rejection reasons."""
        meta = {s["key"]: s for s in self.streams(case_id)}
        sql = "SELECT stream, t_s, stim_index, reasons, data FROM sweeps WHERE case_id = ? AND t_s >= ? AND t_s <= ?"
        args: tuple[Any, ...] = (case_id, float(t_from) if np.isfinite(t_from) else -1e300,
                                 float(t_to) if np.isfinite(t_to) else 1e300)
        if stream is not None:
            sql += " AND stream = ?"
            args += (stream,)
        con = self._connect()  # own connection: a long iteration must not hold the thread's reader
        try:
            for st, t_s, idx, reasons, data in con.execute(sql + " ORDER BY t_s, id", args):
                m = meta[st]
                yield Sweep(float(t_s), int(idx), m["modality"], m["source"], float(m["fs"]), int(m["pre_samples"]),
                            tuple(m["channels"]), tuple(m["channel_names"]), unpack(data)), json.loads(reasons)
        finally:
            con.close()

    def count_sweeps(self, case_id: int) -> int:
        return int(self.query("SELECT COUNT(*) FROM sweeps WHERE case_id = ?", (case_id,))[0][0])

    def rows(self, table: str, case_id: int) -> list[dict[str, Any]]:
        """Every row of an append-only table for a case, in insertion order (BLOBs left out)."""
        if table not in APPEND_ONLY:
            raise ValueError("not a case table: %r" % table)
        out = []
        for r in self.query("SELECT * FROM %s WHERE case_id = ? ORDER BY id" % table, (case_id,)):
            d = {k: r[k] for k in r.keys() if k != "data"}
            for k in ("detail", "refs", "peaks", "body", "reasons", "n", "meta"):
                if k in d and isinstance(d[k], str):
                    d[k] = json.loads(d[k])
            out.append(d)
        return out

    def averages(self, case_id: int, stream: str) -> list[tuple[float, str, np.ndarray]]:
        rows = self.query("SELECT t_s, why, data FROM averages WHERE case_id = ? AND stream = ? ORDER BY t_s, id",
                          (case_id, stream))
        return [(float(r["t_s"]), r["why"], unpack(r["data"])) for r in rows]

    def baselines(self, case_id: int) -> list[dict[str, Any]]:
        rows = self.query("SELECT * FROM baselines WHERE case_id = ? ORDER BY id", (case_id,))
        return [{k: r[k] for k in r.keys() if k != "data"} | {"refs": json.loads(r["refs"]),
                                                              "peaks": json.loads(r["peaks"]),
                                                              "mean": unpack(r["data"])} for r in rows]

    def verify(self, case_id: int) -> dict[str, Any]:
        """The case's record checked against its ledger and the anchor file (ionm.case.ledger.verify)."""
        self.flush()
        return verify_ledger(self.path, case_id)

    def verify_audit(self) -> bool:
        """True when the audit hash chain is intact from the first row to the last."""
        prev = ""
        for r in self.query("SELECT * FROM audit ORDER BY id"):
            if r["prev_hash"] != prev or _hash(prev, r["wall"], r["user"], r["action"], r["detail"],
                                               r["case_id"]) != r["hash"]:
                return False
            prev = r["hash"]
        return True

    # ---------------------------------------------------------------- settings
    def setting(self, key: str, default: str | None = None) -> str | None:
        rows = self.query("SELECT value FROM settings WHERE key = ?", (key,))
        return rows[0][0] if rows else default

    def set_setting_once(self, key: str, value: str) -> str:
        """Store value under key unless one is there; returns the stored value (first writer wins)."""
        self._call(lambda con: con.execute("INSERT OR IGNORE INTO settings (key, value) VALUES (?, ?)", (key, value)))
        v = self.setting(key)
        assert v is not None
        return v
