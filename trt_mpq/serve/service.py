"""The service's state without HTTP: its configuration, the jobs' measurements as the page
shows them (read-only views of each job's evaluation store and outputs), and `Service`, which
owns the job store, one worker per timing device and the retention sweeps.

What a client reads of a job passes `redact`: its phase and message show paths relative to
the job (`<job>/out`), never the server's folders or internal addresses, and its spec is
`clean`ed (it always serializes)."""

from __future__ import annotations

import json
import logging
import math
import re
import sqlite3
from dataclasses import dataclass, field
from pathlib import Path

from trt_mpq.backends import backend_spec
from trt_mpq.pipeline.job import STORE_FILE
from trt_mpq.pipeline.request import ExecutorConfig
from trt_mpq.serve.boundaries import answer_boundaries
from trt_mpq.serve.housekeeping import Housekeeper
from trt_mpq.serve.jobs import FINISHED, QUEUED, RUNNING, Job, JobStore
from trt_mpq.serve.redact import Redactor, clean
from trt_mpq.serve.spec import SpecError
from trt_mpq.serve.worker import Worker, job_dir

log = logging.getLogger(__name__)

JOB_ID = re.compile(r"[0-9]{4,}-[0-9a-f]{8}")  # fullmatch
#: what a job hands back: the files a CLI search writes (the artifact is model.onnx or
#: model.engine) and the search's own log
DOWNLOADS = ("model.onnx", "model.engine", "plan.json", "result.json", "pareto.csv",
             "pareto.json", "pareto.png", "report.md", "log.txt")


@dataclass
class ServeConfig:
    root: Path  # jobs.sqlite, uploads/, jobs/<id>/
    env: dict[str, str]  # the searches' environment (TRT_MPQ_CACHE, ...)
    tasks_dir: Path | None = None
    token: str | None = None
    max_upload_bytes: int = 512 * 2**20
    gpus: int = 1  # timing devices cuda:0..N-1 (besides the CPU)
    devices: list[str] = field(default_factory=list)
    poll_s: float = 0.5  # how often live views look for new measurements
    port: int = 8765  # names the session cookie (cookies are per host, not per port)
    allowed_hosts: frozenset[str] = frozenset()  # Host names besides loopback (no token)
    executor: ExecutorConfig = field(default_factory=ExecutorConfig)  # every job's
    max_job_bytes: int = 64 * 1024  # a POST /api/jobs body
    max_concurrent_uploads: int = 2
    max_queued: int = 20  # unfinished jobs per client address
    max_disk_bytes: int | None = 100 * 2**30  # uploads + jobs
    retention_days: float = 30.0  # 0: keep everything
    sweep_s: float = 3600.0  # how often retention runs
    request_timeout: float = 30.0  # a request's head, and each pause in its body

    def __post_init__(self) -> None:
        self.root = Path(self.root)
        if self.tasks_dir is not None:
            self.tasks_dir = Path(self.tasks_dir).resolve()
        if not self.devices:
            self.devices = ["cpu", *(f"cuda:{i}" for i in range(self.gpus))]


def evaluations(out: Path) -> list[dict]:
    """The job's measured plans so far, oldest first (read-only; the search writes them)."""
    path = out / STORE_FILE
    if not path.is_file():
        return []
    try:
        db = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=5)
        try:
            rows = db.execute("SELECT payload FROM evaluations ORDER BY seq").fetchall()
        finally:
            db.close()
    except sqlite3.Error:  # being created: nothing to show yet
        return []
    out = []
    for (payload,) in rows:
        try:
            ev = json.loads(payload)
        except (TypeError, ValueError):
            continue
        if isinstance(ev, dict):
            out.append(ev)
    return out


def point(ev: dict, seq: int, redact=str) -> dict:
    """One measured plan as the page plots it (`redact`: for the text of its reason)."""
    return {"seq": seq, "digest": ev.get("plan_digest"), "label": ev.get("label", ""),
            "status": ev.get("status"),
            "ratio": ev.get("latency_ratio"), "ratio_ci": ev.get("latency_ratio_ci"),
            "drop": ev.get("drop"), "rel_drop": ev.get("rel_drop"),
            "drop_upper": ev.get("drop_upper"), "samples": ev.get("samples"),
            "counts": ev.get("precision_counts"), "reason": redact(str(ev.get("reason") or ""))}


def frontier(points: list[dict]) -> list[int]:
    """seqs of the measured plans no other plan beats on both latency ratio and drop."""
    ok = sorted((p for p in points if p["status"] == "ok" and p["ratio"] is not None
                 and p["drop"] is not None and math.isfinite(p["ratio"])),
                key=lambda p: (p["ratio"], p["drop"]))
    front, best = [], math.inf
    for p in ok:
        if p["drop"] < best - 1e-12:
            front.append(p["seq"])
            best = p["drop"]
    return front


def _result(out: Path) -> dict | None:
    try:
        return json.loads((out / "result.json").read_text())
    except (OSError, ValueError):
        return None


def _last_line(path: Path) -> str:
    try:
        with open(path, "rb") as f:
            f.seek(0, 2)
            f.seek(max(0, f.tell() - 4096))
            lines = [ln.strip() for ln in f.read().decode(errors="replace").splitlines()
                     if ln.strip()]
    except OSError:
        return ""
    return lines[-1][-300:] if lines else ""


class Service:
    def __init__(self, config: ServeConfig) -> None:
        self.config = config
        self.root = config.root
        self.uploads = self.root / "uploads"
        self.uploads.mkdir(parents=True, exist_ok=True)
        self.jobs = JobStore(self.root / "jobs.sqlite")
        self.workers: list[Worker] = []
        self.housekeeper: Housekeeper | None = None
        self.redact = Redactor.for_server(self.root, config.env.get("TRT_MPQ_CACHE"),
                                          config.tasks_dir, config.executor.ray_address)

    # -- lifecycle ------------------------------------------------------------------------------
    def start(self) -> None:
        resumed = self.jobs.recover()
        if resumed:
            log.warning("resuming %d job(s) the last server left running: %s", len(resumed),
                        ", ".join(resumed))
        self.workers = [Worker(d, self.jobs, self.root, self.config.env, self.config.tasks_dir)
                        for d in self.config.devices]
        for w in self.workers:
            w.start()
        if self.config.retention_days > 0:
            self.housekeeper = Housekeeper(self.root, self.jobs, self.config.retention_days,
                                           self.config.sweep_s)
            self.housekeeper.start()

    def stop(self) -> None:
        if self.housekeeper is not None:
            self.housekeeper.stop()
        for w in self.workers:
            w.stop()
        for w in self.workers:
            w.join(timeout=120)

    # -- views of a job -------------------------------------------------------------------------
    def device_for(self, backend: str) -> str:
        if not backend_spec(backend).gpu:
            return "cpu"
        gpus = [d for d in self.config.devices if d.startswith("cuda:")]
        if not gpus:
            raise SpecError(f"this server has no GPU to time {backend} plans on (--gpus 0)")
        load = {d: 0 for d in gpus}
        for j in self.jobs.all():
            if j.state in (QUEUED, RUNNING) and j.device in load:
                load[j.device] += 1
        return min(gpus, key=lambda d: (load[d], d))

    def redactor(self, job_id: str) -> Redactor:
        return self.redact.for_job(job_dir(self.root, job_id))

    def summaries(self) -> list[dict]:
        """Every job as the API lists it; a job that cannot be shown is listed as such, and
        never stops the others from being listed."""
        out = []
        for job in self.jobs.all():
            try:
                out.append(self.summary(job))
            except Exception:  # noqa: BLE001 - one bad job must not break the list
                log.exception("showing job %s", job.id)
                out.append({"id": job.id, "state": job.state, "device": job.device,
                            "spec": {}, "message": "this job cannot be shown (see the "
                            "server's log)", "evaluations": 0, "files": [], "best": None})
        return out

    def summary(self, job: Job, evs: list[dict] | None = None) -> dict:
        """The job as the API shows it (`evs`: its stored evaluations, when already read)."""
        out = job_dir(self.root, job.id) / "out"
        redact = self.redactor(job.id)
        evs = evaluations(out) if evs is None else evs
        points = [point(e, i) for i, e in enumerate(evs, start=1)]
        ok = [p for p in points if p["status"] == "ok" and p["ratio"] is not None]
        result = _result(out) if job.state in FINISHED else None
        best = None
        if result and result.get("best"):
            b = result["best"]
            best = {"ratio": b["latency_ratio"], "ratio_ci": b.get("latency_ratio_ci"),
                    "holdout_rel_drop": b.get("holdout_rel_drop"),
                    "holdout_rel_drop_upper": b.get("holdout_rel_drop_upper"),
                    "counts": b.get("precision_counts"), "final": True}
        elif ok:
            fastest = min(ok, key=lambda p: p["ratio"])
            best = {"ratio": fastest["ratio"], "rel_drop": fastest["rel_drop"],
                    "counts": fastest["counts"], "final": False}
        files = [n for n in DOWNLOADS if (out / n).is_file()] if job.state in FINISHED else []
        if (job_dir(self.root, job.id) / "log.txt").is_file():
            files = [*[f for f in files if f != "log.txt"], "log.txt"]
        shown = job.to_json_dict()
        return clean({**shown, "message": redact(shown["message"] or ""),
                      "evaluations": len(points), "measured_ok": len(ok),
                      "phase": redact(_last_line(job_dir(self.root, job.id) / "log.txt"))
                      if job.state == RUNNING else "",
                      "best": best, "files": files})

    def plans(self, job: Job) -> dict:
        out = job_dir(self.root, job.id) / "out"
        redact = self.redactor(job.id)
        points = [point(e, i, redact) for i, e in enumerate(evaluations(out), start=1)]
        result = _result(out) if job.state in FINISHED else None
        answer = None
        if result and result.get("best"):
            try:
                groups = json.loads((out / "plan.json").read_text())["groups"]
            except (OSError, ValueError, KeyError):
                groups = {}
            order = list(result.get("low_precisions") or groups)
            answer = {"ratio": result["best"]["latency_ratio"],
                      "ratio_ci": result["best"].get("latency_ratio_ci"),
                      "holdout_rel_drop": result["best"].get("holdout_rel_drop"),
                      "holdout_rel_drop_upper": result["best"].get("holdout_rel_drop_upper"),
                      "plan_digest": result["best"].get("plan_digest"),
                      "groups": [[g, groups.get(g, "?")] for g in order],
                      "boundaries": answer_boundaries(result["best"])}
        return clean({"job": job.id, "state": job.state, "max_drop": job.spec.get("max_drop"),
                      "budget": (result or {}).get("budget"), "plans": points,
                      "frontier": frontier(points), "answer": answer})


__all__ = ["DOWNLOADS", "JOB_ID", "ServeConfig", "Service", "evaluations", "frontier",
           "point"]
