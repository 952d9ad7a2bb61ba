"""The evaluation store: SQLite (WAL), one row per evaluated plan, committed as soon as it is
measured, so a killed search loses at most the evaluation in flight and `--resume` re-measures
nothing.

A store belongs to one search context (model, task data, backend settings, calibration and
measurement settings); opening it for another context is refused.
"""

from __future__ import annotations

import contextlib
import json
import sqlite3
import time
from pathlib import Path

from trt_mpq.errors import StoreError
from trt_mpq.search.evaluation import Evaluation

SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS evaluations (
    plan_digest TEXT PRIMARY KEY,
    seq INTEGER NOT NULL,
    status TEXT NOT NULL,
    label TEXT NOT NULL,
    payload TEXT NOT NULL,
    created REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS blobs (
    key TEXT PRIMARY KEY, payload TEXT NOT NULL, created REAL NOT NULL
);
"""


LOCK_TIMEOUT_S = 60.0  # how long a writer waits for another process's write to finish


class Store:
    """Safe for several processes at once (the service's workers, Ray's driver and readers):
    every write is one `BEGIN IMMEDIATE` transaction, so the sequence number it takes and the row
    it writes are atomic; a busy database is waited for (`LOCK_TIMEOUT_S`)."""

    def __init__(self, path: Path, context: dict, lock_timeout_s: float = LOCK_TIMEOUT_S) -> None:
        self.path = Path(path)
        self.context = context
        self.lock_timeout_s = lock_timeout_s
        self.path.parent.mkdir(parents=True, exist_ok=True)
        canon = json.dumps(context, sort_keys=True)
        self._opened = time.monotonic()
        try:
            # autocommit mode: transactions are ours (BEGIN IMMEDIATE), not the module's
            self._db = sqlite3.connect(str(self.path), timeout=lock_timeout_s,
                                       isolation_level=None)
            # switching a new database to WAL takes a lock SQLite's busy handler does not
            # wait for: several processes opening a new store at once retry it here
            self._retrying(lambda: self._db.execute("PRAGMA journal_mode=WAL"))
            self._db.execute("PRAGMA synchronous=NORMAL")
            row = self._context_row()
            if row is None:  # a new store: create it (another process may be doing the same)
                with self._write():
                    for statement in SCHEMA.split(";"):
                        if statement.strip():
                            self._db.execute(statement)
                    row = self._context_row()
                    if row is None:
                        self._db.execute("INSERT INTO meta VALUES ('context', ?)", (canon,))
        except (StoreError, sqlite3.DatabaseError) as e:
            if hasattr(self, "_db"):
                self._db.close()
            if isinstance(e, StoreError):
                raise
            if isinstance(e, sqlite3.OperationalError):
                raise self._locked_or(e) from None
            raise StoreError(f"{self.path} is not a readable evaluation store ({e}); move it "
                             "aside or choose another --out") from None
        if row is not None and row[0] != canon:
            self._db.close()
            stored = json.loads(row[0])
            diff = sorted(k for k in set(stored) | set(context) if stored.get(k) != context.get(k))
            raise StoreError(f"{self.path} holds evaluations of a different search (differs in: "
                             f"{', '.join(diff)}); choose another --out, or rerun with the "
                             "original settings")

    def _context_row(self):
        try:
            return self._db.execute("SELECT value FROM meta WHERE key='context'").fetchone()
        except sqlite3.OperationalError as e:
            if "no such table" in str(e):
                return None
            raise

    @staticmethod
    def _busy(e: sqlite3.OperationalError) -> bool:
        return "locked" in str(e) or "busy" in str(e)

    def _retrying(self, statement):
        """`statement()`, retried while the database is busy, up to the lock timeout."""
        deadline = time.monotonic() + self.lock_timeout_s
        pause = 0.01
        while True:
            try:
                return statement()
            except sqlite3.OperationalError as e:
                if not self._busy(e) or time.monotonic() + pause > deadline:
                    raise
            time.sleep(pause)
            pause = min(2 * pause, 0.25)

    def _locked_or(self, e: sqlite3.OperationalError, since: float | None = None
                   ) -> StoreError:
        if self._busy(e):
            waited = time.monotonic() - (self._opened if since is None else since)
            return StoreError(f"the evaluation store {self.path} stayed locked by another "
                              f"process for the {waited:.1f} s waited (another search or "
                              "service writing to it?); let it finish and retry -- its "
                              "measurements are intact")
        return StoreError(f"cannot use the evaluation store {self.path} ({e})")

    @contextlib.contextmanager
    def _write(self):
        """One write transaction, taken before reading what it depends on (BEGIN IMMEDIATE):
        concurrent writers queue instead of computing the same sequence number."""
        started = time.monotonic()
        try:
            self._db.execute("BEGIN IMMEDIATE")
        except sqlite3.OperationalError as e:
            raise self._locked_or(e, started) from None
        try:
            yield
        except BaseException:
            self._db.execute("ROLLBACK")
            raise
        else:
            try:
                self._db.execute("COMMIT")
            except sqlite3.OperationalError as e:
                self._db.execute("ROLLBACK")
                raise self._locked_or(e, started) from None

    def close(self) -> None:
        self._db.close()

    def __enter__(self) -> Store:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # -- evaluations --------------------------------------------------------------------------
    def get(self, plan_digest: str) -> Evaluation | None:
        row = self._db.execute("SELECT payload FROM evaluations WHERE plan_digest=?",
                               (plan_digest,)).fetchone()
        return Evaluation.from_json_dict(json.loads(row[0])) if row else None

    def put(self, ev: Evaluation) -> None:
        payload = json.dumps(ev.to_json_dict())
        with self._write():
            seq = self._db.execute(
                "SELECT COALESCE(MAX(seq), 0) + 1 FROM evaluations").fetchone()[0]
            self._db.execute(
                "INSERT OR REPLACE INTO evaluations VALUES (?, ?, ?, ?, ?, ?)",
                (ev.plan.digest, seq, ev.status.value, ev.label, payload, time.time()))

    def all(self) -> list[Evaluation]:
        rows = self._db.execute("SELECT payload FROM evaluations ORDER BY seq").fetchall()
        return [Evaluation.from_json_dict(json.loads(r[0])) for r in rows]

    def __len__(self) -> int:
        return self._db.execute("SELECT COUNT(*) FROM evaluations").fetchone()[0]

    # -- other values (baseline, sensitivities) ------------------------------------------------
    def get_blob(self, key: str):
        row = self._db.execute("SELECT payload FROM blobs WHERE key=?", (key,)).fetchone()
        return json.loads(row[0]) if row else None

    def put_blob(self, key: str, value) -> None:
        with self._write():
            self._db.execute("INSERT OR REPLACE INTO blobs VALUES (?, ?, ?)",
                             (key, json.dumps(value), time.time()))
