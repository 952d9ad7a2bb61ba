"""A workspace: the task, its prepared model, groups and calibration, resolved and checked once
before any long work starts (so bad input fails in seconds, with nothing written)."""

from __future__ import annotations

import functools
import hashlib
import logging
import os
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import onnx

from trt_mpq.calib import CalibConfig, Ranges, cache_key, calibrate
from trt_mpq.errors import ModelError, TaskError
from trt_mpq.model.groups import Group, find_groups
from trt_mpq.model.load import file_digest, load_model, prepare_model
from trt_mpq.qdq import calibration_tensors
from trt_mpq.shapes import ShapeSet, changed_static_axes, resolve
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
    #: the declared deployment shapes (`at_shapes`); None: the task's own single shape
    shapes: ShapeSet | None = None

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

    # -- deployment shapes ----------------------------------------------------------------------
    @property
    def shape_set(self) -> ShapeSet:
        """The shapes plans are timed at: the declared ones, else the task's own."""
        return self.shapes if self.shapes is not None else ShapeSet.single(
            self.task.latency_feed())

    def latency_feed(self) -> dict[str, np.ndarray]:
        """The feed of the most-weighted shape (the task's latency feed when none are
        declared): what a build's sample run and the per-group profile use."""
        return dict(self.shape_set.primary.feed)

    def shape_kwargs(self) -> dict:
        """What a build gets besides the sample feed when shapes are declared: every input
        shape the artifact must accept (each declared shape, and the task's data at batch 1
        for the accuracy batches), which a TensorRT optimization profile spans."""
        if self.shapes is None:
            return {}
        data = {k: (1, *np.shape(v)[1:]) for k, v in self.task.search.head(1).inputs.items()}
        return {"shapes": [dict(s.dims) for s in self.shapes] + [data]}

    def at_shapes(self, spec=None, weights=None) -> Workspace:
        """This workspace timing at `spec` (`--shapes`; None: the task's own `shapes`) with
        `weights`. ConfigError when a shape does not fit the model's inputs. A shape that
        changes an axis the model fixes but the task declares free (`Task.free_axes`) runs on
        a copy of the prepared model with those input dims made dynamic (its own digest, so
        calibration and stores keep apart)."""
        task = self.task
        spec = spec if spec is not None else task.shapes
        weights = weights if weights is not None else (task.shape_weights if spec is not None
                                                       and spec is task.shapes else None)
        if spec is None and weights is None:
            return self
        inputs = model_input_specs(self.model)
        shapes = resolve(spec, weights, inputs, task.search, task.latency_feed(),
                         task.free_axes)
        if not shapes.declared:
            return self
        axes = changed_static_axes(shapes, inputs)
        if not axes:
            return replace(self, shapes=shapes)
        path = relax_inputs(self.prepared_path, axes)
        return replace(self, prepared_path=path, model=onnx.load(str(path)), shapes=shapes)


def relax_inputs(prepared: Path, axes: dict[str, tuple[int, ...]]) -> Path:
    """A copy of the prepared model whose inputs' `axes` are dynamic (named `<input>_<axis>`),
    its intermediate shapes inferred again from them; kept beside it, built once."""
    key = ";".join(f"{k}:{','.join(map(str, v))}" for k, v in sorted(axes.items()))
    target = prepared.with_name(f"{prepared.stem}-free-"
                                f"{hashlib.sha256(key.encode()).hexdigest()[:8]}.onnx")
    if target.exists():
        return target
    model = onnx.load(str(prepared))
    for vi in model.graph.input:
        for axis in axes.get(vi.name, ()):
            dim = vi.type.tensor_type.shape.dim[axis]
            dim.ClearField("dim_value")
            dim.dim_param = f"{vi.name}_{axis}"
    del model.graph.value_info[:]  # inferred for the fixed size; infer them for any
    try:
        model = onnx.shape_inference.infer_shapes(model)
    except Exception as e:  # noqa: BLE001 - shapes only inform reports; the graph runs without
        log.debug("shape inference of the relaxed model failed (%s)", e)
    tmp = target.with_name(f".{target.name}.{os.getpid()}")
    onnx.save(model, str(tmp))
    os.replace(tmp, target)
    log.info("%s: inputs %s made dynamic on axes the task declares free -> %s", prepared.name,
             ", ".join(f"{k} {list(v)}" for k, v in axes.items()), target.name)
    return target
