"""The evaluation store: SQLite (WAL), one row per evaluated plan, committed as soon as it is
measured, so a killed search loses at most the evaluation in flight and `--resume` re-measures
nothing.

A store belongs to one search context (model, task data, backend settings, calibration and
measurement settings); opening it for another context is refused.
"""

from __future__ import annotations

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
CREATE TABLE IF NOT EXISTS blobs (key TEXT PRIMARY KEY, payload TEXT NOT NULL, created REAL NOT NULL);
"""


class Store:
    def __init__(self, path: Path, context: dict) -> None:
        self.path = Path(path)
        self.context = context
        self.path.parent.mkdir(parents=True, exist_ok=True)
        try:
            self._db = sqlite3.connect(str(self.path), timeout=30)
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=NORMAL")
            self._db.executescript(SCHEMA)
        except sqlite3.DatabaseError as e:
            raise StoreError(f"cannot open the evaluation store {self.path} ({e}); delete it or "
                             "choose another --out") from None
        canon = json.dumps(context, sort_keys=True)
        row = self._db.execute("SELECT value FROM meta WHERE key='context'").fetchone()
        if row is None:
            with self._db:
                self._db.execute("INSERT INTO meta VALUES ('context', ?)", (canon,))
        elif row[0] != canon:
            stored = json.loads(row[0])
            diff = sorted(k for k in set(stored) | set(context) if stored.get(k) != context.get(k))
            raise StoreError(f"{self.path} holds evaluations of a different search (differs in: "
                             f"{', '.join(diff)}); choose another --out, or rerun with the "
                             "original settings")

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
        seq = self._db.execute("SELECT COALESCE(MAX(seq), 0) + 1 FROM evaluations").fetchone()[0]
        with self._db:
            self._db.execute(
                "INSERT OR REPLACE INTO evaluations VALUES (?, ?, ?, ?, ?, ?)",
                (ev.plan.digest, seq, ev.status.value, ev.label, json.dumps(ev.to_json_dict()),
                 time.time()))

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
        with self._db:
            self._db.execute("INSERT OR REPLACE INTO blobs VALUES (?, ?, ?)",
                             (key, json.dumps(value), time.time()))
