"""`trt-mpq serve`: the search as a service. A JSON API and a live latency-accuracy page
(`app`), the service's state and the views of its jobs (`service`), jobs kept in SQLite
(`jobs`), each validated into the `SearchRequest` it runs (`spec`), and one worker per timing
device that runs them one at a time (`worker`)."""

from trt_mpq.serve.app import create_app
from trt_mpq.serve.service import ServeConfig, Service

__all__ = ["ServeConfig", "Service", "create_app"]
