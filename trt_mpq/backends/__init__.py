"""Backends: build an artifact from a materialized graph, run it, and census its kernels.

`get_backend(name)` resolves a backend at run time; `import trt_mpq.backends` imports no runtime.
"""

from __future__ import annotations

from trt_mpq.backends.base import Artifact, Backend, Census, Runner
from trt_mpq.errors import ConfigError

BACKENDS = ("ort-cpu",)


def get_backend(name: str, **settings) -> Backend:
    if name == "ort-cpu":
        from trt_mpq.backends.ort import OrtBackend, OrtConfig

        return OrtBackend(OrtConfig(**settings))
    raise ConfigError(f"unknown backend {name!r}; available: {', '.join(BACKENDS)}")


__all__ = ["Artifact", "Backend", "Census", "Runner", "get_backend", "BACKENDS"]
