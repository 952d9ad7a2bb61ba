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
from contextlib import asynccontextmanager
from importlib import resources

from sse_starlette.sse import EventSourceResponse
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.middleware.base import BaseHTTPMiddleware
from starlette.requests import Request
from starlette.responses import FileResponse, HTMLResponse, JSONResponse, Response
from starlette.routing import Route

from trt_mpq.serve.jobs import FINISHED, Job
from trt_mpq.serve.service import (
    DOWNLOADS,
    JOB_ID,
    ServeConfig,
    Service,
    check_onnx,
    evaluations,
    frontier,
    point,
)
from trt_mpq.serve.spec import SpecError, validate
from trt_mpq.serve.worker import job_dir

log = logging.getLogger(__name__)


def _error(status: int, message: str) -> JSONResponse:
    return JSONResponse({"error": message}, status_code=status)


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
        message = await asyncio.to_thread(check_onnx, data)
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


__all__ = ["DOWNLOADS", "ServeConfig", "Service", "create_app", "evaluations", "frontier"]
