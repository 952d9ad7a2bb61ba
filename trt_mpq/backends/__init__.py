"""Backends: build an artifact from a materialized graph, run it, and census its kernels.

`get_backend(name)` resolves a backend at run time; `import trt_mpq.backends` imports no runtime.
"""

from __future__ import annotations

from trt_mpq.backends.base import Artifact, Backend, Census, Runner
from trt_mpq.errors import ConfigError

BACKENDS = ("ort-cpu", "tensorrt", "tensorrt-rtx")


def get_backend(name: str, **settings) -> Backend:
    """A backend by name. Settings go to its config: OrtConfig for ort-cpu, TrtConfig for
    tensorrt / tensorrt-rtx (settings that belong to the other kind are refused)."""
    try:
        if name == "ort-cpu":
            from trt_mpq.backends.ort import OrtBackend, OrtConfig

            return OrtBackend(OrtConfig(**settings))
        if name in ("tensorrt", "tensorrt-rtx"):
            from trt_mpq.backends.tensorrt import TensorRTBackend, TrtConfig

            return TensorRTBackend(name, TrtConfig(**settings))
    except TypeError as e:
        raise ConfigError(f"backend {name}: {e}") from None
    raise ConfigError(f"unknown backend {name!r}; available: {', '.join(BACKENDS)}")


__all__ = ["Artifact", "Backend", "Census", "Runner", "get_backend", "BACKENDS"]
