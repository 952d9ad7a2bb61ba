"""The backend contract.

A backend *builds* (materialized graph -> artifact file, plus a census of the precisions its
kernels really run per group) and *runs* (artifact -> a `Runner`, a context manager that computes
outputs and times single executions). Everything above this layer (evaluation, search) talks to
backends only through this contract.
"""

from __future__ import annotations

import abc
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import onnx

from trt_mpq.errors import PlanError
from trt_mpq.model.groups import Group
from trt_mpq.plan import Plan
from trt_mpq.qdq import Dialect
from trt_mpq.results import Census


@dataclass(frozen=True)
class Artifact:
    path: Path  # the deployable file (model.onnx, model.engine)
    backend: str
    build_s: float
    census: Census | None = None
    files: tuple[Path, ...] = ()  # other files written beside it (optimized graph, sidecar)
    options: Mapping[str, str] = field(default_factory=dict)  # runtime options built with


class Runner(abc.ABC):
    """Runs one artifact. Use as a context manager; `run` and `time_once` only inside it."""

    input_names: tuple[str, ...] = ()
    output_names: tuple[str, ...] = ()

    def __enter__(self) -> Runner:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:  # noqa: B027 - optional hook
        pass

    @abc.abstractmethod
    def run(self, feed: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Outputs by name for one batch; `MeasurementError` if the runtime fails."""

    @abc.abstractmethod
    def time_once(self, feed: Mapping[str, np.ndarray]) -> float:
        """Seconds for one execution of `feed`, measured as tightly as the backend allows;
        `MeasurementError` if the runtime fails."""


class Backend(abc.ABC):
    name: str
    dialect: Dialect
    #: refuse plans whose census leaves some groups unverified (else measure them and say so)
    require_census: bool = True

    @abc.abstractmethod
    def build(self, model: onnx.ModelProto, out_dir: Path, groups: list[Group],
              sample_feed: Mapping[str, np.ndarray], max_batch: int | None = None,
              options: Mapping[str, str] | None = None,
              shapes: Sequence[Mapping[str, tuple[int, ...]]] | None = None) -> Artifact:
        """Build `model` (already materialized for `dialect`) into `out_dir`; fill the census.
        `sample_feed` is a representative input (its shapes are the ones timed, the
        most-weighted of several); `max_batch` the largest batch the artifact must accept
        (accuracy runs in batches); `options` the plan's runtime options (`runtime_options`),
        recorded in the artifact and applied by `open`; `shapes` (given only when deployment
        shapes are declared, `trt_mpq.shapes`) every other input shape it must run at.
        Raises `BuildError` if the runtime refuses the graph, `MeasurementError` if it builds
        but cannot run."""

    def runtime_options(self, model: onnx.ModelProto) -> dict[str, tuple[str, ...]]:
        """Runtime options worth measuring for this materialized graph: option -> values, the
        default ("") first. Chosen by measurement (the search's options phase); none by default."""
        return {}

    def check_options(self, options: Mapping[str, str]) -> None:
        """Raise `PlanError` for runtime options this backend does not know."""
        if options:
            raise PlanError(f"{self.name} takes no runtime options, got {sorted(options)}")

    def check_plan(self, plan: Plan, groups: list[Group]) -> None:
        """Raise `PlanError` if the target cannot run the plan (beyond the dialect's own rules,
        which `materialize` checks)."""
        from trt_mpq.qdq import check_plan

        check_plan(plan, groups, self.dialect)
        self.check_options(dict(plan.options))

    def check_can_run(self) -> None:  # noqa: B027 - optional hook
        """Raise `ConfigError` if this machine cannot run (measure) artifacts of this backend."""

    def timing_device(self) -> str:
        """What this process times plans on, as a type: latency ratios measured on devices of
        different types are not comparable (a Ray search keeps them apart). Here the CPU model
        and the cores this process may use."""
        from trt_mpq.report import machine_info

        info = machine_info()
        return f"{info['cpu']} ({info['cores']} cores)"

    @abc.abstractmethod
    def open(self, artifact: Artifact) -> Runner:
        """A runner for `artifact` (enter it before use)."""

    @abc.abstractmethod
    def describe(self) -> dict:
        """Settings and versions that determine the measurements (recorded beside results)."""




@dataclass(frozen=True)
class BackendSpec:
    """A backend as the CLI and `get_backend` see it (registered in `trt_mpq.backends`)."""

    name: str
    description: str  # one line, shown by --help
    config: type  # frozen dataclass; fields with `trt_mpq.options.flag` become CLI flags
    create: Callable[[Any, Path | None], Backend]  # (config, cache directory) -> backend
    gpu: bool = False  # times plans on a GPU: one timing per GPU at a time (else one per machine)


__all__ = ["Artifact", "Backend", "BackendSpec", "Census", "Runner"]
