"""`trt-mpq serve`: the search as a service. A JSON API and a live latency-accuracy page
(`app`), jobs kept in SQLite (`jobs`), validated into the CLI's own search arguments (`spec`),
and one worker per timing device that runs them one at a time (`worker`)."""

from trt_mpq.serve.app import ServeConfig, Service, create_app

__all__ = ["ServeConfig", "Service", "create_app"]
