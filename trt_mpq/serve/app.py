"""The search service's HTTP side (Starlette, served by uvicorn): a JSON API over the job store,
live updates as server-sent events, the outputs for download, and the page.

Every request first passes `guard.Guard` (Host, cross-site, token, JSON and CSRF checks;
security headers on every response). Bodies are read by `bodies` with caps and deadlines.
Every refusal is a 4xx JSON `{"error": ...}` that says what to send instead (429 and 507 for
the server's limits); a bug is a 500 with one line and no traceback (the traceback goes to the
server's log).
"""

from __future__ import annotations

import asyncio
import logging
import secrets
from contextlib import asynccontextmanager
from importlib import resources

from sse_starlette.sse import EventSourceResponse
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.requests import ClientDisconnect, Request
from starlette.responses import FileResponse, HTMLResponse, JSONResponse, Response
from starlette.routing import Route

from trt_mpq.serve.bodies import (
    DRAIN,
    BodyError,
    declared_length,
    drain,
    read_json,
    receive_upload,
)
from trt_mpq.serve.child import run_check
from trt_mpq.serve.guard import SECURITY_HEADERS, Guard
from trt_mpq.serve.housekeeping import delete_job_files, disk_used, uploads_in_use
from trt_mpq.serve.jobs import FINISHED, RUNNING, Job, QueueFull
from trt_mpq.serve.redact import dumps
from trt_mpq.serve.service import (
    DOWNLOADS,
    JOB_ID,
    ServeConfig,
    Service,
    evaluations,
    frontier,
    point,
)
from trt_mpq.serve.spec import UPLOAD_ID, SpecError, validate
from trt_mpq.serve.worker import job_dir

log = logging.getLogger(__name__)

#: the outputs that are text: sent with the server's paths replaced (`redact`)
TEXT_TYPES = {".json": "application/json", ".md": "text/markdown; charset=utf-8",
              ".csv": "text/csv; charset=utf-8", ".txt": "text/plain; charset=utf-8"}
STATIC = {"/app.js": ("static/app.js", "text/javascript; charset=utf-8"),
          "/app.css": ("static/app.css", "text/css; charset=utf-8")}


class SafeJSON(JSONResponse):
    """JSON that always serializes (non-finite numbers as null: `redact.clean`)."""

    def render(self, content) -> bytes:
        return dumps(content).encode()


def _error(status: int, message: str, close: bool = False) -> JSONResponse:
    # the security headers here too: a 500 is answered outside the guard
    headers = {k.decode(): v.decode() for k, v in SECURITY_HEADERS}
    if close:
        headers["connection"] = "close"
    return SafeJSON({"error": message}, status_code=status, headers=headers)


def _static(name: str) -> str:
    return resources.files("trt_mpq.serve").joinpath(name).read_text()


def create_app(config: ServeConfig, start_workers: bool = True) -> Starlette:
    service = Service(config)
    csrf = secrets.token_urlsafe(32)
    uploading = [0]  # uploads in progress (one event loop: no lock needed)

    def job_or_404(request: Request) -> Job:
        job_id = request.path_params["job_id"]
        job = service.jobs.get(job_id) if JOB_ID.fullmatch(job_id) else None
        if job is None:
            raise HTTPException(404, f"no job {job_id[:80]!r}")
        return job

    def room() -> int | None:
        """Bytes the uploads and jobs may still grow by (None: no limit)."""
        if config.max_disk_bytes is None:
            return None
        return config.max_disk_bytes - disk_used(service.root)

    def page(request: Request) -> Response:
        html = _static("static/index.html").replace("{{csrf}}", csrf)
        return HTMLResponse(html, headers={"cache-control": "no-store"})

    def static(request: Request) -> Response:
        name, media = STATIC[request.url.path]
        return Response(_static(name), media_type=media)

    def session(request: Request) -> Response:
        return SafeJSON({"csrf": csrf, "auth": request.scope.get("trt_mpq_auth", "none")})

    def models(request: Request) -> Response:
        from trt_mpq.backends import BACKENDS
        from trt_mpq.zoo import ZOO

        tasks = sorted(p.stem for p in config.tasks_dir.glob("*.py")) \
            if config.tasks_dir else []
        return SafeJSON({"models": sorted(ZOO), "backends": list(BACKENDS),
                         "tasks": tasks, "devices": config.devices,
                         "max_upload_bytes": config.max_upload_bytes,
                         "max_job_bytes": config.max_job_bytes})

    async def upload(request: Request) -> Response:
        if uploading[0] >= config.max_concurrent_uploads:
            return _error(429, f"{uploading[0]} uploads are in progress, this server's limit "
                               "(--max-concurrent-uploads); try again when one finishes",
                          close=True)
        uploading[0] += 1
        try:
            return await _upload(request)
        finally:
            uploading[0] -= 1

    async def _upload(request: Request) -> Response:
        declared, cap = declared_length(request), config.max_upload_bytes
        if declared is not None and declared > cap:
            if declared <= cap + DRAIN:  # read and dropped: the client then reads the answer
                await drain(request, config.request_timeout)
            raise BodyError(413, f"the upload is {declared:,} bytes; this server takes at most "
                                 f"{cap:,} (--max-upload-mb)")
        left = await asyncio.to_thread(room)
        if left is not None and declared is not None and declared > left:
            raise BodyError(507, "the upload does not fit in the disk space this server may "
                                 "use (--max-disk-gb); delete old jobs or uploads")
        digest, size, tmp = await receive_upload(
            request, service.uploads, cap, cap + 1 if left is None else left,
            config.request_timeout)
        try:
            if not size:
                return _error(400, "send the .onnx file as the request body")
            message = await asyncio.to_thread(run_check, tmp)
            if message:
                return _error(400, f"not a usable ONNX model: {service.redact(message)}")
            path = service.uploads / f"{digest}.onnx"
            if path.is_file():
                path.touch()  # uploaded again: young again for retention
            else:
                tmp.replace(path)
        finally:
            tmp.unlink(missing_ok=True)
        return SafeJSON({"upload": digest, "bytes": size}, status_code=201)

    def delete_upload(request: Request) -> Response:
        up = request.path_params["upload_id"]
        path = service.uploads / f"{up}.onnx"
        if not UPLOAD_ID.fullmatch(up) or not path.is_file():
            return _error(404, f"no upload {up[:80]!r}")
        if up in uploads_in_use(service.jobs, unfinished_only=True):
            return _error(409, f"upload {up} is the model of a queued or running job; cancel "
                               "or delete that job first")
        path.unlink(missing_ok=True)
        return SafeJSON({"deleted": up})

    async def submit(request: Request) -> Response:
        body = await read_json(request, config.max_job_bytes, config.request_timeout)
        client = request.client.host if request.client else ""

        def queue() -> Response:
            left = room()
            if left is not None and left <= 0:
                return _error(507, "this server's disk allowance (--max-disk-gb) is used up; "
                                   "delete old jobs or uploads (DELETE /api/jobs/ID, "
                                   "/api/uploads/ID)")
            spec, req = validate(body, service.uploads, config.tasks_dir, config.executor)
            try:
                job = service.jobs.submit(spec, req.to_json_dict(),
                                          service.device_for(spec["backend"]), client,
                                          config.max_queued)
            except QueueFull as e:
                return _error(429, f"you have {e.args[0]} jobs queued or running, this "
                                   "server's limit per client (--max-queued); wait for one to "
                                   "finish or cancel one")
            return SafeJSON(service.summary(job), status_code=201)

        try:
            return await asyncio.to_thread(queue)
        except SpecError as e:
            return _error(400, service.redact(str(e)))

    def list_jobs(request: Request) -> Response:
        return SafeJSON({"jobs": service.summaries()})

    def get_job(request: Request) -> Response:
        return SafeJSON(service.summary(job_or_404(request)))

    def get_plans(request: Request) -> Response:
        return SafeJSON(service.plans(job_or_404(request)))

    def cancel(request: Request) -> Response:
        job = job_or_404(request)
        if job.state in FINISHED:
            return _error(409, f"job {job.id} is already {job.state}")
        return SafeJSON(service.summary(service.jobs.request_cancel(job.id)))

    def resume(request: Request) -> Response:
        job = job_or_404(request)
        if not service.jobs.requeue(job.id):
            return _error(409, f"job {job.id} is {job.state}; only a cancelled or failed job "
                               "can be resumed")
        return SafeJSON(service.summary(service.jobs.get(job.id)))

    async def delete_job(request: Request) -> Response:
        job = job_or_404(request)
        if job.state == RUNNING or not service.jobs.delete(job.id):
            return _error(409, f"job {job.id} is running; cancel it first (POST "
                               f"/api/jobs/{job.id}/cancel), then delete it")
        await asyncio.to_thread(delete_job_files, service.root, job.id)
        return SafeJSON({"deleted": job.id})

    async def download(request: Request) -> Response:
        job = job_or_404(request)
        name = request.path_params["name"]
        if name not in DOWNLOADS:
            return _error(404, f"no file {name[:80]!r}; a job has {', '.join(DOWNLOADS)}")
        base = job_dir(service.root, job.id)
        path = (base / name) if name == "log.txt" else (base / "out" / name)
        path = path.resolve()
        if base.resolve() not in path.parents or not path.is_file() or \
                (name != "log.txt" and job.state not in FINISHED):
            return _error(404, f"job {job.id} has no {name} (yet)")
        media = TEXT_TYPES.get(path.suffix)
        if media is None:
            return FileResponse(path, filename=name)
        text = await asyncio.to_thread(path.read_text, errors="replace")
        return Response(service.redactor(job.id)(text), media_type=media,
                        headers={"content-disposition": f'attachment; filename="{name}"'})

    async def events(request: Request) -> Response:
        """Server-sent events: `plan` for each newly measured plan, `job` whenever the job's
        state or progress changes; the stream ends after the job finishes (or is deleted)."""
        job = job_or_404(request)

        def look() -> tuple[Job | None, list[dict], dict | None]:
            now = service.jobs.get(job.id)
            if now is None:
                return None, [], None
            evs = evaluations(job_dir(service.root, job.id) / "out")
            return now, evs, service.summary(now, evs)

        async def stream():
            sent, last, redact = 0, None, service.redactor(job.id)
            while True:
                now, evs, summary = await asyncio.to_thread(look)
                if now is None:
                    yield {"event": "end", "data": dumps({"state": "deleted"})}
                    return
                for i, ev in enumerate(evs[sent:], start=sent + 1):
                    yield {"event": "plan", "data": dumps(point(ev, i, redact))}
                sent = max(sent, len(evs))
                key = dumps(summary)
                if key != last:
                    yield {"event": "job", "data": key}
                    last = key
                if now.state in FINISHED:
                    yield {"event": "end", "data": dumps({"state": now.state})}
                    return
                if await request.is_disconnected():
                    return
                await asyncio.sleep(config.poll_s)

        return EventSourceResponse(stream(), ping=15)

    async def body_error(request: Request, exc: BodyError) -> Response:
        return _error(exc.status, exc.message, close=exc.close)

    async def http_error(request: Request, exc: HTTPException) -> Response:
        return _error(exc.status_code, str(exc.detail))

    async def gone(request: Request, exc: ClientDisconnect) -> Response:
        return _error(400, "the client went away mid-request", close=True)

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
        Route("/", page), Route("/app.js", static), Route("/app.css", static),
        Route("/api/session", session),
        Route("/api/models", models),
        Route("/api/uploads", upload, methods=["POST"]),
        Route("/api/uploads/{upload_id}", delete_upload, methods=["DELETE"]),
        Route("/api/jobs", submit, methods=["POST"]),
        Route("/api/jobs", list_jobs, methods=["GET"]),
        Route("/api/jobs/{job_id}", get_job, methods=["GET"]),
        Route("/api/jobs/{job_id}", delete_job, methods=["DELETE"]),
        Route("/api/jobs/{job_id}/plans", get_plans),
        Route("/api/jobs/{job_id}/events", events),
        Route("/api/jobs/{job_id}/files/{name}", download),
        Route("/api/jobs/{job_id}/cancel", cancel, methods=["POST"]),
        Route("/api/jobs/{job_id}/resume", resume, methods=["POST"]),
    ]
    app = Starlette(routes=routes, lifespan=lifespan,
                    middleware=[Middleware(Guard, token=config.token, csrf=csrf,
                                           port=config.port,
                                           allowed_hosts=config.allowed_hosts)],
                    exception_handlers={BodyError: body_error, HTTPException: http_error,
                                        ClientDisconnect: gone, Exception: server_error})
    app.state.service = service
    app.state.csrf = csrf
    return app


__all__ = ["DOWNLOADS", "ServeConfig", "Service", "create_app", "evaluations", "frontier"]
