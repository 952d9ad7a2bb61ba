"""The service's jobs, kept in SQLite (`<root>/jobs.sqlite`) so that a restarted server finds
them again: what each job asked for (its validated `trt-mpq search` arguments), the timing
device it queues for, and where it stands.

A job's `request` is the `SearchRequest` it runs, as JSON (jobs queued by servers before the
request type have `argv`, the `trt-mpq search` arguments they were validated into, instead).

States: queued -> running -> done | failed | cancelled; a cancelled or failed job can be queued
again (resume), and a job found `running` when the server starts was interrupted (the server
died), so it is queued again and resumed from its stored evaluations. Every write is one
`BEGIN IMMEDIATE` transaction, as in `trt_mpq.store`, so several server threads (the request
handlers and one worker per device) share the file safely.

Nothing a client sent is stored unvalidated: a job's `spec` is the validated request as the
server normalized it, written with `allow_nan=False`; a row that cannot be read back anyway (a
store written by hand, or by an older server) reads as an `unreadable` spec, never as an error
that would break the list of every other job.
"""

from __future__ import annotations

import json
import sqlite3
import threading
import time
import uuid
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

QUEUED, RUNNING, DONE, FAILED, CANCELLED = "queued", "running", "done", "failed", "cancelled"
STATES = (QUEUED, RUNNING, DONE, FAILED, CANCELLED)
FINISHED = (DONE, FAILED, CANCELLED)

SCHEMA = """
CREATE TABLE IF NOT EXISTS jobs (
    id TEXT PRIMARY KEY,
    seq INTEGER NOT NULL,
    state TEXT NOT NULL,
    device TEXT NOT NULL,
    spec TEXT NOT NULL,
    argv TEXT NOT NULL,
    created REAL NOT NULL,
    started REAL,
    finished REAL,
    attempts INTEGER NOT NULL DEFAULT 0,
    exit_code INTEGER,
    message TEXT NOT NULL DEFAULT '',
    cancel INTEGER NOT NULL DEFAULT 0,
    request TEXT,
    client TEXT
)
"""
#: the columns in the order `Job` takes them (a table made before `request` or `client`
#: existed has them added at the end, so SELECT * is not used)
COLUMNS = ("id, seq, state, device, spec, argv, created, started, finished, attempts, "
           "exit_code, message, cancel, request, client")


class QueueFull(Exception):
    """A client already has as many unfinished jobs as the server takes from one (HTTP 429)."""


def _loads(text, default):
    try:
        return json.loads(text) if text else default
    except (TypeError, ValueError):
        return default


@dataclass(frozen=True)
class Job:
    id: str
    seq: int
    state: str
    device: str
    spec: dict  # the request as the user sent it (validated)
    argv: list[str]  # a job from an older server: its `trt-mpq search` arguments
    created: float
    started: float | None
    finished: float | None
    attempts: int  # times a worker started it (a second start resumes)
    exit_code: int | None
    message: str
    cancel: bool  # cancellation requested
    request: dict | None = None  # the SearchRequest it runs (JSON), None for an `argv` job
    client: str = ""  # the address that submitted it (the per-client queue limit)

    def to_json_dict(self) -> dict:
        return {"id": self.id, "state": self.state, "device": self.device, "spec": self.spec,
                "created": self.created, "started": self.started, "finished": self.finished,
                "attempts": self.attempts, "exit_code": self.exit_code,
                "message": self.message}


class JobStore:
    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._local = threading.local()
        with self._write() as db:
            db.execute(SCHEMA)
            have = {r[1] for r in db.execute("PRAGMA table_info(jobs)")}
            for column in ("request", "client"):  # a table an older server made
                if column not in have:
                    db.execute(f"ALTER TABLE jobs ADD COLUMN {column} TEXT")

    def _db(self) -> sqlite3.Connection:
        db = getattr(self._local, "db", None)
        if db is None:
            db = sqlite3.connect(str(self.path), timeout=60, isolation_level=None,
                                 check_same_thread=False)
            db.execute("PRAGMA journal_mode=WAL")
            db.execute("PRAGMA synchronous=NORMAL")
            self._local.db = db
        return db

    @contextmanager
    def _write(self):
        db = self._db()
        db.execute("BEGIN IMMEDIATE")
        try:
            yield db
        except BaseException:
            db.execute("ROLLBACK")
            raise
        db.execute("COMMIT")

    @staticmethod
    def _job(row) -> Job:
        (id_, seq, state, device, spec, argv, created, started, finished, attempts, exit_code,
         message, cancel, request, client) = row
        spec = _loads(spec, None)
        return Job(id_, seq, state, device, spec if isinstance(spec, dict) else
                   {"unreadable": True}, _loads(argv, []), created, started, finished,
                   attempts, exit_code, message or "", bool(cancel), _loads(request, None),
                   client or "")

    def submit(self, spec: dict, request: dict, device: str, client: str = "",
               max_unfinished: int | None = None) -> Job:
        """Queue a job; with `max_unfinished`, QueueFull when `client` already has that many
        queued or running (checked in the same transaction as the insert)."""
        texts = (json.dumps(spec, allow_nan=False), json.dumps(request, allow_nan=False))
        with self._write() as db:
            if max_unfinished is not None:
                n = db.execute("SELECT COUNT(*) FROM jobs WHERE client=? AND state IN (?, ?)",
                               (client, QUEUED, RUNNING)).fetchone()[0]
                if n >= max_unfinished:
                    raise QueueFull(n)
            seq = db.execute("SELECT COALESCE(MAX(seq), 0) + 1 FROM jobs").fetchone()[0]
            job_id = f"{seq:04d}-{uuid.uuid4().hex[:8]}"
            db.execute("INSERT INTO jobs (id, seq, state, device, spec, argv, created, request, "
                       "client) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                       (job_id, seq, QUEUED, device, texts[0], "[]", time.time(), texts[1],
                        client))
        job = self.get(job_id)
        assert job is not None
        return job

    def get(self, job_id: str) -> Job | None:
        row = self._db().execute(f"SELECT {COLUMNS} FROM jobs WHERE id=?",
                                 (job_id,)).fetchone()
        return self._job(row) if row else None

    def all(self) -> list[Job]:
        return [self._job(r) for r in self._db().execute(f"SELECT {COLUMNS} FROM jobs "
                                                         "ORDER BY seq")]

    def claim(self, device: str) -> Job | None:
        """The oldest queued job of `device`, now running (atomically: one worker gets it)."""
        with self._write() as db:
            row = db.execute("SELECT id FROM jobs WHERE state=? AND device=? ORDER BY seq "
                             "LIMIT 1", (QUEUED, device)).fetchone()
            if row is None:
                return None
            db.execute("UPDATE jobs SET state=?, started=?, attempts=attempts+1, cancel=0, "
                       "message='' WHERE id=?", (RUNNING, time.time(), row[0]))
        return self.get(row[0])

    def finish(self, job_id: str, state: str, exit_code: int | None, message: str) -> None:
        with self._write() as db:
            db.execute("UPDATE jobs SET state=?, finished=?, exit_code=?, message=? WHERE id=?",
                       (state, time.time(), exit_code, message, job_id))

    def request_cancel(self, job_id: str) -> Job | None:
        """Queued: cancelled at once. Running: flagged (the worker interrupts the search, which
        saves its state, then marks it cancelled). Returns the job as it now stands."""
        with self._write() as db:
            db.execute("UPDATE jobs SET state=?, finished=?, message='cancelled before it "
                       "started' WHERE id=? AND state=?", (CANCELLED, time.time(), job_id,
                                                          QUEUED))
            db.execute("UPDATE jobs SET cancel=1 WHERE id=? AND state=?", (job_id, RUNNING))
        return self.get(job_id)

    def requeue(self, job_id: str) -> bool:
        """Queue a cancelled or failed job again (it resumes from its stored evaluations)."""
        with self._write() as db:
            n = db.execute("UPDATE jobs SET state=?, finished=NULL, exit_code=NULL, message='' "
                           "WHERE id=? AND state IN (?, ?)",
                           (QUEUED, job_id, CANCELLED, FAILED)).rowcount
        return n == 1

    def delete(self, job_id: str) -> bool:
        """Forget a job that is not running (a queued one is taken off its queue in the same
        transaction a worker's claim would use, so it is either claimed or deleted)."""
        with self._write() as db:
            n = db.execute("DELETE FROM jobs WHERE id=? AND state != ?",
                           (job_id, RUNNING)).rowcount
        return n == 1

    def recover(self) -> list[str]:
        """At server start: jobs left `running` by a server that died are queued again."""
        with self._write() as db:
            ids = [r[0] for r in db.execute("SELECT id FROM jobs WHERE state=?", (RUNNING,))]
            db.execute("UPDATE jobs SET state=?, message='interrupted (the server stopped); "
                       "resumed from its stored evaluations' WHERE state=?", (QUEUED, RUNNING))
        return ids


__all__ = ["CANCELLED", "DONE", "FAILED", "FINISHED", "QUEUED", "RUNNING", "STATES", "Job",
           "JobStore", "QueueFull"]
