"""The server's root, kept in bounds: one server per root (`lock_root`), the disk its uploads
and jobs use (`disk_used`), and retention (`sweep`): finished jobs and unused uploads older
than `--retention-days` are deleted at start and then periodically (`Housekeeper`).

Two servers on one root would each run every queued job, so the second refuses to start: the
first holds `<root>/server.lock` (its PID inside) with `fcntl.flock` for as long as it lives,
and the kernel lets go of it when that process ends, however it ends (kill -9 included).
"""

from __future__ import annotations

import fcntl
import logging
import os
import shutil
import threading
import time
from pathlib import Path
from typing import IO

from trt_mpq.errors import ConfigError
from trt_mpq.serve.jobs import FINISHED, QUEUED, RUNNING, JobStore

log = logging.getLogger(__name__)

LOCK_FILE = "server.lock"
#: a partial upload older than this is a leftover of a server that died mid-upload
STALE_PART_S = 3600.0


def lock_root(root: Path) -> IO:
    """Hold `<root>/server.lock` for this process's life (keep the returned file open), or
    ConfigError (exit 2) naming the server that holds it."""
    root.mkdir(parents=True, exist_ok=True)
    f = open(root / LOCK_FILE, "a+")  # noqa: SIM115 - held open for the server's life
    try:
        fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        f.seek(0)
        holder = f.read().strip() or "?"
        f.close()
        raise ConfigError(f"another trt-mpq serve (PID {holder}) is using --root {root}: two "
                          "servers on one root would run every job twice; stop that one or "
                          "give this one another --root") from None
    f.seek(0)
    f.truncate()
    f.write(f"{os.getpid()}\n")
    f.flush()
    return f


def disk_used(root: Path) -> int:
    """Bytes in the root's uploads and job folders (what `--max-disk-gb` bounds)."""
    total = 0
    for top in (root / "uploads", root / "jobs"):
        for dirpath, _, files in os.walk(top):
            for name in files:
                try:
                    total += os.lstat(os.path.join(dirpath, name)).st_size
                except OSError:  # deleted meanwhile
                    pass
    return total


def delete_job_files(root: Path, job_id: str) -> None:
    shutil.rmtree(root / "jobs" / job_id, ignore_errors=True)


def uploads_in_use(jobs: JobStore, unfinished_only: bool = False) -> set[str]:
    return {j.spec.get("upload") for j in jobs.all()
            if not unfinished_only or j.state in (QUEUED, RUNNING)} - {None}


def sweep(root: Path, jobs: JobStore, days: float, now: float | None = None) -> dict:
    """Delete finished jobs that finished more than `days` ago, then uploads no remaining job
    names that were last uploaded more than `days` ago, and partial uploads left by a server
    that died. Returns what it deleted."""
    now = time.time() if now is None else now
    cutoff = now - days * 86400
    gone_jobs = []
    for job in jobs.all():
        if job.state in FINISHED and (job.finished or job.created) < cutoff and \
                jobs.delete(job.id):
            delete_job_files(root, job.id)
            gone_jobs.append(job.id)
    keep = uploads_in_use(jobs)
    gone_uploads = []
    for path in (root / "uploads").glob("*"):
        try:
            age = path.stat().st_mtime
        except OSError:
            continue
        stale_part = path.suffix == ".part" and age < now - STALE_PART_S
        if stale_part or (path.suffix == ".onnx" and path.stem not in keep and age < cutoff):
            path.unlink(missing_ok=True)
            if not stale_part:
                gone_uploads.append(path.stem)
    if gone_jobs or gone_uploads:
        log.warning("retention (%g days): deleted %d job(s) and %d upload(s)", days,
                    len(gone_jobs), len(gone_uploads))
    return {"jobs": gone_jobs, "uploads": gone_uploads}


class Housekeeper(threading.Thread):
    """Sweeps at start, then every `every_s` seconds, until stopped."""

    def __init__(self, root: Path, jobs: JobStore, days: float, every_s: float) -> None:
        super().__init__(name="trt-mpq retention", daemon=True)
        self.root, self.jobs, self.days, self.every_s = root, jobs, days, every_s
        self.stopping = threading.Event()

    def run(self) -> None:
        while not self.stopping.is_set():
            try:
                sweep(self.root, self.jobs, self.days)
            except Exception:  # noqa: BLE001 - a locked database: next time
                log.exception("retention sweep")
            self.stopping.wait(self.every_s)

    def stop(self) -> None:
        self.stopping.set()


__all__ = ["LOCK_FILE", "Housekeeper", "delete_job_files", "disk_used", "lock_root", "sweep",
           "uploads_in_use"]
