"""The backend contract.

A backend *builds* (materialized graph -> artifact file, plus a census of the precisions its
kernels really run per group) and *runs* (artifact -> a `Runner`, a context manager that computes
outputs and times single executions). Everything above this layer (evaluation, search) talks to
backends only through this contract.
"""

from __future__ import annotations

import abc
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import onnx

from trt_mpq.model.groups import Group
from trt_mpq.plan import Plan
from trt_mpq.qdq import Dialect


@dataclass(frozen=True)
class Census:
    """What each group really ran as, read from the backend (profiler, engine inspector, builder
    report). `executed` maps group -> precision value ("fp32", "int8", "int8-dynamic", ...), or
    "unknown" when no kernel could be attributed. `kernels` counts kernels by type."""

    executed: Mapping[str, str]
    kernels: Mapping[str, int] = field(default_factory=dict)
    source: str = ""  # how it was read, e.g. "onnxruntime profiler"

    def mismatches(self, plan: Plan) -> list[tuple[str, str, str]]:
        """(group, planned, executed) for every group whose executed precision differs."""
        out = []
        for group, planned in plan.items:
            got = self.executed.get(group, "unknown")
            if got != planned.value:
                out.append((group, planned.value, got))
        return out

    def to_json_dict(self) -> dict:
        return {"executed": dict(self.executed), "kernels": dict(self.kernels),
                "source": self.source}

    @classmethod
    def from_json_dict(cls, d: Mapping) -> Census:
        return cls(executed=dict(d.get("executed", {})), kernels=dict(d.get("kernels", {})),
                   source=str(d.get("source", "")))


@dataclass(frozen=True)
class Artifact:
    path: Path  # the deployable file (model.onnx, model.engine)
    backend: str
    build_s: float
    census: Census | None = None
    files: tuple[Path, ...] = ()  # other files written beside it (optimized graph, sidecar)


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
        """Outputs by name for one batch."""

    @abc.abstractmethod
    def time_once(self, feed: Mapping[str, np.ndarray]) -> float:
        """Seconds for one execution of `feed`, measured as tightly as the backend allows."""


class Backend(abc.ABC):
    name: str
    dialect: Dialect

    @abc.abstractmethod
    def build(self, model: onnx.ModelProto, out_dir: Path, groups: list[Group],
              sample_feed: Mapping[str, np.ndarray], max_batch: int | None = None) -> Artifact:
        """Build `model` (already materialized for `dialect`) into `out_dir`; fill the census.
        `sample_feed` is a representative input (its shapes are the ones timed); `max_batch` the
        largest batch the artifact must accept (accuracy runs in batches)."""

    def check_plan(self, plan: Plan, groups: list[Group]) -> None:
        """Raise `PlanError` if the target cannot run the plan (beyond the dialect's own rules,
        which `materialize` checks)."""
        from trt_mpq.qdq import check_plan

        check_plan(plan, groups, self.dialect)

    def check_can_run(self) -> None:  # noqa: B027 - optional hook
        """Raise `ConfigError` if this machine cannot run (measure) artifacts of this backend."""

    @abc.abstractmethod
    def open(self, artifact: Artifact) -> Runner:
        """A runner for `artifact` (enter it before use)."""

    @abc.abstractmethod
    def describe(self) -> dict:
        """Settings and versions that determine the measurements (recorded beside results)."""
