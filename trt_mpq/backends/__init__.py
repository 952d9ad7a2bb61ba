"""Backends: build an artifact from a materialized graph, run it, and census its kernels.

`BACKENDS` is the one place a backend is registered: name -> the `BackendSpec` its module
defines ("module:attribute"). `import trt_mpq.backends` imports no runtime; `get_backend(name)`
imports the backend's module, and that module imports its runtime only when a backend object
is created. Adding a backend: one module with the `Backend` subclass, its config class and its
`BackendSpec`, and one line here.
"""

from __future__ import annotations

import dataclasses
from functools import cache
from pathlib import Path

from trt_mpq.backends.base import Artifact, Backend, BackendSpec, Census, Runner
from trt_mpq.errors import ConfigError
from trt_mpq.registry import resolve

#: name -> "module:attribute" of its BackendSpec
BACKENDS: dict[str, str] = {
    "ort-cpu": "trt_mpq.backends.ort:SPEC",
    "tensorrt": "trt_mpq.backends.tensorrt:SPEC",
    "tensorrt-rtx": "trt_mpq.backends.tensorrt:RTX_SPEC",
}


@cache
def backend_spec(name: str) -> BackendSpec:
    return resolve(BACKENDS, name, "backend")


def get_backend(name: str, config=None, *, cache_dir: Path | None = None,
                **settings) -> Backend:
    """A backend by name, from its config object, or from `settings` (its config's fields)."""
    spec = backend_spec(name)
    if config is None:
        known = {f.name for f in dataclasses.fields(spec.config)}
        unknown = sorted(set(settings) - known)
        if unknown:
            raise ConfigError(f"backend {name} has no setting {unknown[0]!r}; its settings: "
                              f"{', '.join(sorted(known))}")
        config = spec.config(**settings)
    elif settings:
        raise ConfigError("give a backend either a config object or settings, not both")
    return spec.create(config, cache_dir)


__all__ = ["Artifact", "Backend", "BackendSpec", "Census", "Runner", "BACKENDS", "backend_spec",
           "get_backend"]
