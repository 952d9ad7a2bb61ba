"""The service's state without HTTP: its configuration, the jobs' measurements as the page
shows them (read-only views of each job's evaluation store and outputs), and `Service`, which
owns the job store and one worker per timing device."""

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
from trt_mpq.serve.jobs import FINISHED, QUEUED, RUNNING, Job, JobStore
from trt_mpq.serve.spec import SpecError
from trt_mpq.serve.worker import Worker, job_dir

log = logging.getLogger(__name__)

JOB_ID = re.compile(r"^[0-9]{4,}-[0-9a-f]{8}$")
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
    return [json.loads(r[0]) for r in rows]


def point(ev: dict, seq: int) -> dict:
    """One measured plan as the page plots it."""
    return {"seq": seq, "digest": ev.get("plan_digest"), "label": ev.get("label", ""),
            "status": ev.get("status"),
            "ratio": ev.get("latency_ratio"), "ratio_ci": ev.get("latency_ratio_ci"),
            "drop": ev.get("drop"), "rel_drop": ev.get("rel_drop"),
            "drop_upper": ev.get("drop_upper"), "samples": ev.get("samples"),
            "counts": ev.get("precision_counts"), "reason": ev.get("reason", "")}


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

    def stop(self) -> None:
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

    def summary(self, job: Job, evs: list[dict] | None = None) -> dict:
        """The job as the API shows it (`evs`: its stored evaluations, when already read)."""
        out = job_dir(self.root, job.id) / "out"
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
        return {**job.to_json_dict(), "evaluations": len(points), "measured_ok": len(ok),
                "phase": _last_line(job_dir(self.root, job.id) / "log.txt")
                if job.state == RUNNING else "",
                "best": best, "files": files}

    def plans(self, job: Job) -> dict:
        out = job_dir(self.root, job.id) / "out"
        points = [point(e, i) for i, e in enumerate(evaluations(out), start=1)]
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
                      "groups": [[g, groups.get(g, "?")] for g in order]}
        return {"job": job.id, "state": job.state, "max_drop": job.spec.get("max_drop"),
                "budget": (result or {}).get("budget"), "plans": points,
                "frontier": frontier(points), "answer": answer}


def check_onnx(data: bytes) -> str:
    """'' if `data` is an ONNX model with a graph that passes onnx's checker, else why not."""
    import onnx

    try:
        model = onnx.load_model_from_string(data)
    except Exception as e:  # noqa: BLE001 - protobuf's DecodeError and friends
        return f"it does not parse as an ONNX protobuf ({type(e).__name__})"
    if not model.graph.node:
        return "its graph has no nodes"
    try:
        onnx.checker.check_model(model)
    except Exception as e:  # noqa: BLE001 - onnx.checker.ValidationError
        return f"onnx's checker refused it: {str(e).splitlines()[0][:300]}"
    return ""


__all__ = ["DOWNLOADS", "JOB_ID", "ServeConfig", "Service", "check_onnx", "evaluations",
           "frontier", "point"]
