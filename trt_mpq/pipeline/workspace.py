"""A workspace: the task, its prepared model, groups and calibration, resolved and checked once
before any long work starts (so bad input fails in seconds, with nothing written)."""

from __future__ import annotations

import functools
import logging
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import onnx

from trt_mpq.calib import CalibConfig, Ranges, cache_key, calibrate
from trt_mpq.errors import ModelError, TaskError
from trt_mpq.model.groups import Group, find_groups
from trt_mpq.model.load import file_digest, load_model, prepare_model
from trt_mpq.qdq import calibration_tensors
from trt_mpq.task import Task, check_inputs, task_from_factory

log = logging.getLogger(__name__)


def looks_like_path(spec: str) -> bool:
    return spec.endswith(".onnx") or "/" in spec or "\\" in spec or Path(spec).exists()


def resolve_task(model_spec: str, task_spec: str | None, cache_dir: Path,
                 progress: bool | None = None) -> Task:
    """A zoo name, or an ONNX file with `--task package.module:make_task`."""
    if task_spec:
        if not looks_like_path(model_spec):
            raise TaskError(f"with --task, MODEL must be an .onnx file, got {model_spec!r}")
        path = Path(model_spec)
        load_model(path)  # clear ModelError before importing user code
        return task_from_factory(task_spec, path)
    if looks_like_path(model_spec):
        load_model(model_spec)
        raise TaskError(f"{model_spec} needs a task (data and metric): pass "
                        "--task package.module:make_task, a function returning trt_mpq.task.Task")
    from trt_mpq.zoo import load_task

    return load_task(model_spec, cache_dir, progress)


def model_input_specs(model: onnx.ModelProto) -> dict[str, tuple[str, tuple]]:
    inits = {i.name for i in model.graph.initializer}
    specs = {}
    for vi in model.graph.input:
        if vi.name in inits:
            continue
        t = vi.type.tensor_type
        dtype = str(np.dtype(onnx.helper.tensor_dtype_to_np_dtype(t.elem_type)))
        shape = tuple(d.dim_value if d.HasField("dim_value") else (d.dim_param or None)
                      for d in t.shape.dim)
        specs[vi.name] = (dtype, shape)
    return specs


@dataclass
class Workspace:
    task: Task
    source_path: Path
    prepared_path: Path
    model: onnx.ModelProto = field(repr=False)
    groups: list[Group]
    cache_dir: Path
    progress: bool | None = None

    @classmethod
    def open(cls, model_spec: str, task_spec: str | None, cache_dir: Path,
             progress: bool | None = None, metric: str | None = None) -> Workspace:
        """`metric`: judge by a fidelity metric instead of the task's own (`Task.with_metric`)."""
        task = resolve_task(model_spec, task_spec, cache_dir, progress).with_metric(metric)
        if task.model_path is None or not Path(task.model_path).exists():
            raise ModelError(f"task {task.name!r} points to a missing model {task.model_path}")
        prepared = prepare_model(task.model_path, cache_dir)
        model = onnx.load(str(prepared))
        groups = find_groups(model)  # model problems before data problems
        check_inputs(task, model_input_specs(model))
        return cls(task=task, source_path=Path(task.model_path), prepared_path=prepared,
                   model=model, groups=groups, cache_dir=cache_dir, progress=progress)

    @functools.cached_property
    def model_digest(self) -> str:  # read by the calibration, store and shared-cache keys
        return file_digest(self.prepared_path)

    def calibrate(self, config: CalibConfig) -> Ranges:
        split = self.task.calibration.head(config.num_samples)
        batches = [feed for feed, _ in split.batches(config.batch_size)]
        tag = cache_key(self.model_digest, split.digest, config)
        return calibrate(self.prepared_path, batches, config, cache_dir=self.cache_dir,
                         cache_tag=tag, progress=self.progress,
                         tensors=calibration_tensors(self.model, self.groups),
                         required={op.input for g in self.groups for op in g.ops})

    def group_names(self) -> list[str]:
        return [g.name for g in self.groups]
