"""The search service's HTTP side (Starlette, served by uvicorn): a JSON API over the job store,
live updates as server-sent events, the outputs for download, and the page.

Every refusal is a 4xx JSON `{"error": ...}` that says what to send instead; a bug is a 500
with one line and no traceback (the traceback goes to the server's log).
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import logging
import math
import re
import sqlite3
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path

from sse_starlette.sse import EventSourceResponse
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.middleware.base import BaseHTTPMiddleware
from starlette.requests import Request
from starlette.responses import FileResponse, HTMLResponse, JSONResponse, Response
from starlette.routing import Route

from trt_mpq.backends import backend_spec
from trt_mpq.pipeline.job import STORE_FILE
from trt_mpq.serve.jobs import FINISHED, QUEUED, RUNNING, Job, JobStore
from trt_mpq.serve.spec import SpecError, validate
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


def _error(status: int, message: str) -> JSONResponse:
    return JSONResponse({"error": message}, status_code=status)


# -- reading a job's measurements ------------------------------------------------------------
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


# -- the HTTP side ---------------------------------------------------------------------------
class TokenCheck(BaseHTTPMiddleware):
    """With a token, every request must carry it: `Authorization: Bearer <token>`, or
    `?token=<token>` (the page's own requests and its event stream)."""

    def __init__(self, app, token: str | None) -> None:
        super().__init__(app)
        self.token = token

    async def dispatch(self, request: Request, call_next):
        if self.token:
            header = request.headers.get("authorization", "")
            given = header[7:] if header.lower().startswith("bearer ") else \
                request.query_params.get("token", "")
            if not hmac.compare_digest(given.encode(), self.token.encode()):
                return _error(401, "this server needs its token: send 'Authorization: Bearer "
                                   "<token>' or open the page as /?token=<token>")
        return await call_next(request)


def create_app(config: ServeConfig, start_workers: bool = True) -> Starlette:
    service = Service(config)

    def job_or_404(request: Request) -> Job:
        job_id = request.path_params["job_id"]
        job = service.jobs.get(job_id) if JOB_ID.match(job_id) else None
        if job is None:
            raise HTTPException(404, f"no job {job_id!r}")
        return job

    def page(request: Request) -> Response:
        html = resources.files("trt_mpq.serve").joinpath("static/index.html").read_text()
        return HTMLResponse(html)

    def script(request: Request) -> Response:
        js = resources.files("trt_mpq.serve").joinpath("static/app.js").read_text()
        return Response(js, media_type="text/javascript")

    def models(request: Request) -> Response:
        from trt_mpq.backends import BACKENDS
        from trt_mpq.zoo import ZOO

        tasks = sorted(p.stem for p in config.tasks_dir.glob("*.py")) \
            if config.tasks_dir else []
        return JSONResponse({"models": sorted(ZOO), "backends": list(BACKENDS),
                             "tasks": tasks, "devices": config.devices,
                             "max_upload_bytes": config.max_upload_bytes})

    async def upload(request: Request) -> Response:
        # an upload over the limit is read to its end and dropped (never kept in memory), so
        # that the client, still sending, gets the 413 and its message, not a reset connection
        chunks, size = [], 0
        async for chunk in request.stream():
            size += len(chunk)
            if size <= config.max_upload_bytes:
                chunks.append(chunk)
            else:
                chunks.clear()
        if size > config.max_upload_bytes:
            return _error(413, f"the upload is {size:,} bytes; this server takes at most "
                               f"{config.max_upload_bytes:,} (--max-upload-mb)")
        data = b"".join(chunks)
        if not data:
            return _error(400, "send the .onnx file as the request body")
        message = await asyncio.to_thread(_check_onnx, data)
        if message:
            return _error(400, f"not a usable ONNX model: {message}")
        digest = hashlib.sha256(data).hexdigest()
        path = service.uploads / f"{digest}.onnx"
        if not path.is_file():
            tmp = path.with_suffix(".part")
            tmp.write_bytes(data)
            tmp.replace(path)
        return JSONResponse({"upload": digest, "bytes": size}, status_code=201)

    async def submit(request: Request) -> Response:
        try:
            body = json.loads(await request.body())
        except ValueError as e:
            return _error(400, f"the request body is not JSON ({e})")

        def queue() -> dict:
            spec, request = validate(body, service.uploads, config.tasks_dir)
            job = service.jobs.submit(spec, request.to_json_dict(),
                                      service.device_for(spec["backend"]))
            return service.summary(job)

        try:
            return JSONResponse(await asyncio.to_thread(queue), status_code=201)
        except SpecError as e:
            return _error(400, str(e))

    def list_jobs(request: Request) -> Response:
        return JSONResponse({"jobs": [service.summary(j) for j in service.jobs.all()]})

    def get_job(request: Request) -> Response:
        return JSONResponse(service.summary(job_or_404(request)))

    def get_plans(request: Request) -> Response:
        return JSONResponse(service.plans(job_or_404(request)))

    def cancel(request: Request) -> Response:
        job = job_or_404(request)
        if job.state in FINISHED:
            return _error(409, f"job {job.id} is already {job.state}")
        return JSONResponse(service.summary(service.jobs.request_cancel(job.id)))

    def resume(request: Request) -> Response:
        job = job_or_404(request)
        if not service.jobs.requeue(job.id):
            return _error(409, f"job {job.id} is {job.state}; only a cancelled or failed job "
                               "can be resumed")
        return JSONResponse(service.summary(service.jobs.get(job.id)))

    def download(request: Request) -> Response:
        job = job_or_404(request)
        name = request.path_params["name"]
        if name not in DOWNLOADS:
            return _error(404, f"no file {name!r}; a job has {', '.join(DOWNLOADS)}")
        base = job_dir(service.root, job.id)
        path = (base / name) if name == "log.txt" else (base / "out" / name)
        path = path.resolve()
        if base.resolve() not in path.parents or not path.is_file() or \
                (name != "log.txt" and job.state not in FINISHED):
            return _error(404, f"job {job.id} has no {name} (yet)")
        return FileResponse(path, filename=name)

    async def events(request: Request) -> Response:
        """Server-sent events: `plan` for each newly measured plan, `job` whenever the job's
        state or progress changes; the stream ends after the job finishes."""
        job = job_or_404(request)

        def look() -> tuple[Job, list[dict], dict]:
            now = service.jobs.get(job.id)
            evs = evaluations(job_dir(service.root, job.id) / "out")
            return now, evs, service.summary(now, evs)

        async def stream():
            sent, last = 0, None
            while True:
                now, evs, summary = await asyncio.to_thread(look)
                for i, ev in enumerate(evs[sent:], start=sent + 1):
                    yield {"event": "plan", "data": json.dumps(point(ev, i))}
                sent = max(sent, len(evs))
                key = json.dumps(summary, sort_keys=True)
                if key != last:
                    yield {"event": "job", "data": key}
                    last = key
                if now.state in FINISHED:
                    yield {"event": "end", "data": json.dumps({"state": now.state})}
                    return
                if await request.is_disconnected():
                    return
                await asyncio.sleep(config.poll_s)

        return EventSourceResponse(stream(), ping=15)

    async def http_error(request: Request, exc: HTTPException) -> Response:
        return _error(exc.status_code, str(exc.detail))

    async def server_error(request: Request, exc: Exception) -> Response:
        log.exception("%s %s", request.method, request.url.path)
        return _error(500, f"internal error ({type(exc).__name__}); the server's log has the "
                           "details")

    @asynccontextmanager
    async def lifespan(app):
        if start_workers:
            service.start()
        try:
            yield
        finally:
            await asyncio.to_thread(service.stop)

    routes = [
        Route("/", page), Route("/app.js", script),
        Route("/api/models", models),
        Route("/api/uploads", upload, methods=["POST"]),
        Route("/api/jobs", submit, methods=["POST"]),
        Route("/api/jobs", list_jobs, methods=["GET"]),
        Route("/api/jobs/{job_id}", get_job),
        Route("/api/jobs/{job_id}/plans", get_plans),
        Route("/api/jobs/{job_id}/events", events),
        Route("/api/jobs/{job_id}/files/{name}", download),
        Route("/api/jobs/{job_id}/cancel", cancel, methods=["POST"]),
        Route("/api/jobs/{job_id}/resume", resume, methods=["POST"]),
    ]
    app = Starlette(routes=routes, lifespan=lifespan,
                    middleware=[Middleware(TokenCheck, token=config.token)],
                    exception_handlers={HTTPException: http_error, Exception: server_error})
    app.state.service = service
    return app


def _check_onnx(data: bytes) -> str:
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


__all__ = ["DOWNLOADS", "ServeConfig", "Service", "create_app", "evaluations", "frontier"]
