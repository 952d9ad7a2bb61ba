"""Tasks: a model plus the data and metric that judge it.

A `Task` = an ONNX model path + disjoint calibration / search / holdout `Split`s + a `Metric`.
The zoo builds tasks for built-in models; users bring their own with
`--task package.module:make_task`, a function returning a `Task` (its `model_path` may be None:
the MODEL argument on the command line fills it).
"""

from __future__ import annotations

import hashlib
import importlib
import importlib.util
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np

from trt_mpq.errors import DataError, TaskError, user_code
from trt_mpq.shapes import ShapeSpec, parse_shapes, parse_weights
from trt_mpq.task.metrics import (
    FIDELITY_METRICS,
    Metric,
    Outputs,
    accuracy,
    agreement,
    kl_divergence,
)

SPLITS = ("calibration", "search", "holdout")


@dataclass(frozen=True)
class Split:
    """Samples along axis 0 of every input array, with optional labels.

    With `transform`, `inputs` hold a compact stored form (e.g. 8x8 digits and augmentation
    parameters) and `transform(stored batch) -> model inputs` makes each batch when it is used,
    so a large split need not sit in memory as model inputs; `head(n)` gives model inputs.
    `transform_id` names the transform in the split's digest (give it a version when its code
    changes)."""

    inputs: Mapping[str, np.ndarray] = field(repr=False)
    labels: np.ndarray | None = field(default=None, repr=False)
    transform: Callable[[dict[str, np.ndarray]], dict[str, np.ndarray]] | None = field(
        default=None, repr=False, compare=False)
    transform_id: str = ""

    def problem(self) -> str | None:
        """What is wrong with the split's sample counts (None if nothing): the `Task` that
        holds it reports it with the split's name."""
        lengths = {k: len(v) for k, v in self.inputs.items()}
        if len(set(lengths.values())) > 1:
            return (f"has inputs with different numbers of samples ({lengths}); every input "
                    "array holds one row per sample along axis 0")
        if self.labels is not None and lengths and len(self.labels) != next(iter(lengths.values())):
            return (f"has {len(self.labels)} labels for {next(iter(lengths.values()))} samples; "
                    "give one label per sample (labels[i] belongs to row i of every input)")
        return None

    def __len__(self) -> int:
        return len(next(iter(self.inputs.values()))) if self.inputs else 0

    def batches(self, batch_size: int) -> Iterator[tuple[dict[str, np.ndarray], slice]]:
        n = len(self)
        for start in range(0, n, batch_size):
            sl = slice(start, min(n, start + batch_size))
            yield self._model_inputs({k: v[sl] for k, v in self.inputs.items()}), sl

    def _model_inputs(self, stored: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        if self.transform is None:
            return stored
        with user_code(f"the split transform {self.transform_id or self.transform!r}"):
            return {k: np.ascontiguousarray(v) for k, v in self.transform(stored).items()}

    def head(self, n: int) -> Split:
        """The first n samples as model inputs (a split with a transform is applied here)."""
        labels = None if self.labels is None else self.labels[:n]
        return Split(self._model_inputs({k: v[:n] for k, v in self.inputs.items()}), labels)

    def part(self, start: int, stop: int | None = None) -> Split:
        """Samples [start, stop) in the stored form (the transform is kept)."""
        sl = slice(start, stop)
        return replace(self, inputs={k: v[sl] for k, v in self.inputs.items()},
                       labels=None if self.labels is None else self.labels[sl])

    def take(self, indices: np.ndarray) -> Split:
        """The samples at `indices`, in that order, in the stored form (the transform is kept)."""
        idx = np.asarray(indices)
        return replace(self, inputs={k: v[idx] for k, v in self.inputs.items()},
                       labels=None if self.labels is None else self.labels[idx])

    def unlabelled(self) -> Split:
        return replace(self, labels=None)

    @property
    def digest(self) -> str:
        h = hashlib.sha256()
        for k in sorted(self.inputs):
            v = np.ascontiguousarray(self.inputs[k])
            h.update(k.encode())
            h.update(str(v.dtype).encode())
            h.update(str(v.shape).encode())
            h.update(v.tobytes())
        if self.labels is not None:
            h.update(np.ascontiguousarray(self.labels).tobytes())
        if self.transform is not None:
            h.update(f"transform:{self.transform_id or getattr(self.transform, '__qualname__', '')}"
                     .encode())
        return h.hexdigest()[:16]


#: share of the fidelity split that becomes the search part; the rest is the holdout, which
#: certifies the answer and so gets the larger share
FIDELITY_SEARCH_SHARE = 0.4


@dataclass(frozen=True)
class ExtraCheck:
    """A secondary measurement reported for the baseline and the chosen plan (not searched on),
    e.g. top-1 agreement with FP32 on real photos. `fn(outputs, reference_outputs) -> float`."""

    name: str
    split: Split = field(repr=False)
    fn: Callable[[Outputs, Outputs], float] = field(repr=False, compare=False)


@dataclass(frozen=True)
class Task:
    name: str
    model_path: Path | None
    calibration: Split
    search: Split
    holdout: Split
    metric: Metric
    weights: str = "user"  # "pretrained" | "trained" | "random" | "user"
    description: str = ""
    latency_batch: int = 1  # batch size latency is measured at
    eval_batch: int = 64  # batch size accuracy is computed with
    extra_checks: tuple[ExtraCheck, ...] = ()
    notes: tuple[str, ...] = ()  # shown in reports (e.g. what the weights are)
    torch_model: str | None = None  # "package.module:make_model" of the torch twin, if any
    #: a large split for fidelity metrics (agreement, kl: they need no labels), disjoint from
    #: calibration; `with_metric` splits it into search and holdout parts
    fidelity: Split | None = None
    #: what this task is judged by when no --metric is given and its labelled holdout cannot
    #: certify the budget with room to spare (`pipeline.judging.choose_metric`): a fidelity
    #: metric (`FIDELITY_METRICS`, on `fidelity`), or the task's own metric's name, judged on
    #: `fallback_split` (a large labelled split, e.g. seeded views of held-out samples);
    #: None: always `metric`
    fallback_metric: str | None = None
    fallback_split: Split | None = None
    #: the shapes the model is deployed at (`trt_mpq.shapes`; text like "batch=1,8,32" or a
    #: ShapeSpec) and their weights; --shapes / --shape-weights override them. None: its
    #: latency batch at its data's shape, as a single shape
    shapes: ShapeSpec | str | None = None
    shape_weights: tuple[float, ...] | None = None
    #: input axes the ONNX file fixes but the graph computes for any size (an export that
    #: fixed the sequence length): {input name: (axis, ...)}; declared shapes may change them
    free_axes: Mapping[str, tuple[int, ...]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if isinstance(self.shapes, str):
            object.__setattr__(self, "shapes", parse_shapes(self.shapes))
        if self.shape_weights is not None:
            object.__setattr__(self, "shape_weights",
                               parse_weights(",".join(map(str, self.shape_weights))))
        named = [(f"the {s} split", getattr(self, s)) for s in SPLITS]
        named += [(f"the split of extra check {c.name!r}", c.split) for c in self.extra_checks]
        if self.fidelity is not None:
            named.append(("the fidelity split", self.fidelity))
        for what, split in named:
            if not isinstance(split, Split):
                raise DataError(f"task {self.name!r}: {what} is a {type(split).__name__}, not a "
                                "trt_mpq.task.Split")
            problem = split.problem()
            if problem:
                raise DataError(f"task {self.name!r}: {what} {problem}")
        if self.fallback_split is not None:
            problem = self.fallback_split.problem()
            if problem or self.fallback_split.labels is None:
                raise DataError(f"task {self.name!r}: the fallback split "
                                f"{problem or 'has no labels'}")
        own = self.metric.name
        if self.fallback_metric is not None and self.fallback_metric not in FIDELITY_METRICS \
                and not (self.fallback_metric == own and self.fallback_split is not None):
            raise TaskError(f"task {self.name!r}: fallback_metric must be one of "
                            f"{', '.join(FIDELITY_METRICS)}, or {own!r} with a labelled "
                            f"fallback_split, not {self.fallback_metric!r}")

    def split(self, name: str) -> Split:
        if name not in SPLITS:
            raise DataError(f"unknown split {name!r}; use one of {SPLITS}")
        return getattr(self, name)

    def latency_feed(self) -> dict[str, np.ndarray]:
        return {k: np.ascontiguousarray(v)
                for k, v in self.search.head(self.latency_batch).inputs.items()}

    def with_model(self, path: Path) -> Task:
        return replace(self, model_path=Path(path))

    def with_metric(self, name: str | None) -> Task:
        """The task judged by another metric: its own (None or its name), or a fidelity metric
        (`FIDELITY_METRICS`) on the same output. A fidelity metric searches and confirms on the
        task's fidelity split when it has one (its first `FIDELITY_SEARCH_SHARE` is the search
        part, the rest the holdout), else on the search and holdout splits without labels."""
        if name is None or name == self.metric.name:
            return self
        if name == "fallback":  # what the task declares for holdouts too small (`fallback_metric`)
            if self.fallback_metric is None:
                raise TaskError(f"task {self.name!r} declares no fallback metric")
            return self.judged_by_fallback()
        if name not in FIDELITY_METRICS:
            raise TaskError(f"unknown metric {name!r}: task {self.name!r} is judged by "
                            f"{self.metric.name!r}, or by a fidelity metric "
                            f"({', '.join(FIDELITY_METRICS)}) that compares with the baseline's "
                            "own outputs")
        if self.metric.kind != "logits":
            raise TaskError(f"the fidelity metrics compare class scores; task {self.name!r} has "
                            f"{self.metric.kind} outputs")
        metric = FIDELITY_METRICS[name](self.metric.output)
        if self.fidelity is None:
            return replace(self, metric=metric, search=self.search.unlabelled(),
                           holdout=self.holdout.unlabelled())
        n = len(self.fidelity)
        cut = max(1, round(n * FIDELITY_SEARCH_SHARE))
        if n < 2:
            raise DataError(f"task {self.name!r}: the fidelity split has {n} sample(s); it needs "
                            "at least 2 (a search part and a holdout part)")
        fid = self.fidelity.unlabelled()
        return replace(self, metric=metric, search=fid.part(0, cut), holdout=fid.part(cut))

    def judged_by_fallback(self) -> Task:
        """The task as its `fallback_metric` judges it: a fidelity metric on the fidelity
        split (`with_metric`), or its own metric on `fallback_split`, whose first
        `FIDELITY_SEARCH_SHARE` is the search part and the rest the holdout."""
        if self.fallback_metric is None:
            return self
        if self.fallback_metric in FIDELITY_METRICS and self.fallback_metric != self.metric.name:
            return self.with_metric(self.fallback_metric)
        split = self.fallback_split
        cut = max(1, round(len(split) * FIDELITY_SEARCH_SHARE))
        return replace(self, search=split.part(0, cut), holdout=split.part(cut))

    def fallback_source(self) -> str:
        """Where the fallback metric is judged, in words."""
        if self.fallback_metric in FIDELITY_METRICS and self.fallback_metric != self.metric.name:
            return ("with the unquantized model, on " +
                    (f"its {len(self.fidelity):,}-sample fidelity split" if self.fidelity
                     is not None else "its search and holdout splits, unlabelled"))
        return f"on its {len(self.fallback_split):,}-sample labelled fallback split"

    @property
    def data_digest(self) -> str:
        h = hashlib.sha256()
        for s in SPLITS:
            h.update(self.split(s).digest.encode())
        h.update(self.metric.name.encode())
        return h.hexdigest()[:16]


def check_splits(task: Task) -> None:
    """Raise `DataError` for empty or overlapping-by-identity splits."""
    for s in SPLITS:
        if len(task.split(s)) == 0:
            raise DataError(f"task {task.name!r}: the {s} split is empty; give it samples")


def check_inputs(task: Task, model_inputs: Mapping[str, tuple[str, tuple]]) -> None:
    """Check that every split feeds exactly the model's inputs with compatible dtypes and shapes.

    `model_inputs` maps input name -> (numpy dtype name, shape with str/None for free dims).
    """
    check_splits(task)
    want = set(model_inputs)
    for s in SPLITS:
        split = task.split(s).head(2)  # model inputs (a split with a transform makes them)
        have = set(split.inputs)
        if have != want:
            raise DataError(
                f"the {s} split feeds inputs {sorted(have)} but the model expects {sorted(want)}; "
                "name the arrays after the model's inputs (`trt-mpq inspect MODEL` shows them)")
        for name, arr in split.inputs.items():
            dtype, shape = model_inputs[name]
            if str(arr.dtype) != dtype:
                raise DataError(f"input {name!r} of the {s} split is {arr.dtype}, the model "
                                f"expects {dtype}; convert the data (e.g. .astype(np.{dtype}))")
            if len(arr.shape) != len(shape):
                raise DataError(f"input {name!r} of the {s} split has shape {tuple(arr.shape)} "
                                f"(rank {arr.ndim}), the model expects rank {len(shape)} "
                                f"{tuple(shape)}")
            for axis, (got, exp) in enumerate(zip(arr.shape[1:], shape[1:]), start=1):
                if isinstance(exp, int) and exp > 0 and got != exp:
                    raise DataError(f"input {name!r} of the {s} split has shape "
                                    f"{tuple(arr.shape)}, the model expects {tuple(shape)} "
                                    f"(axis {axis}: {got} != {exp}); resize or pad the data")


def load_task_factory(spec: str) -> Callable[[], Task]:
    """Resolve 'package.module:function'."""
    if ":" not in spec:
        raise TaskError(f"--task must look like package.module:make_task, got {spec!r}")
    mod_name, func_name = spec.split(":", 1)
    try:
        found = importlib.util.find_spec(mod_name) is not None
    except (ImportError, ValueError):  # a parent package is missing, or an empty name
        found = False
    if not found:
        raise TaskError(f"cannot find module {mod_name!r} for --task; make sure its folder is on "
                        "PYTHONPATH (e.g. PYTHONPATH=. when it is in the current folder)")
    with user_code(f"importing the task module {mod_name!r}"):
        mod = importlib.import_module(mod_name)
    func = getattr(mod, func_name, None)
    if not callable(func):
        raise TaskError(f"{mod_name!r} has no function {func_name!r} for --task")
    return func


def task_from_factory(spec: str, model_path: Path | None) -> Task:
    factory = load_task_factory(spec)
    with user_code(f"the task factory {spec}"):
        task = factory()
    if not isinstance(task, Task):
        raise TaskError(f"{spec} returned {type(task).__name__}, not a trt_mpq.task.Task")
    if model_path is not None:
        task = task.with_model(model_path)
    if task.model_path is None:
        raise TaskError(f"{spec} gives no model path; pass the ONNX file as MODEL")
    return task


def default_cache_dir() -> Path:
    import os

    env = os.environ.get("TRT_MPQ_CACHE")
    if env:
        return Path(env)
    return Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "trt-mpq"


__all__ = ["FIDELITY_METRICS", "FIDELITY_SEARCH_SHARE", "SPLITS", "ExtraCheck", "Metric",
           "Outputs", "Split", "Task", "accuracy", "agreement", "check_inputs", "check_splits",
           "default_cache_dir", "kl_divergence", "load_task_factory", "task_from_factory"]
