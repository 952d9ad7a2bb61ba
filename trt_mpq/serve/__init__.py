"""`trt-mpq serve`: the search as a service. A JSON API and a live latency-accuracy page
(`app`), the checks every request passes before it reaches a route (`guard`), bodies read with
caps and deadlines (`bodies`), the service's state and the views of its jobs (`service`), what
clients read made safe (`redact`), jobs kept in SQLite (`jobs`), each validated into the
`SearchRequest` it runs (`spec`), one worker per timing device that runs them one at a time
(`worker`) in a child process (`child`), and the root's lock, disk limit and retention
(`housekeeping`).

The names below are imported on first use, so that `python -m trt_mpq.serve.child` (what the
server starts for every job) does not load the web stack."""

from __future__ import annotations

__all__ = ["ServeConfig", "Service", "create_app"]


def __getattr__(name: str):
    if name == "create_app":
        from trt_mpq.serve.app import create_app

        return create_app
    if name in ("ServeConfig", "Service"):
        from trt_mpq.serve import service

        return getattr(service, name)
    raise AttributeError(f"module 'trt_mpq.serve' has no attribute {name!r}")
