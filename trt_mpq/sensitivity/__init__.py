"""Per-group sensitivity: how much quantizing one group hurts, used to order the search.

A metric implements `SensitivityMetric.score(context) -> SensitivityResult`. The context carries
everything a metric may need (prepared model, groups, ranges, the low precision each group would
get, task data, the dialect) and a `simulate(plan, split)` helper that runs a materialized plan
on ONNX Runtime (CPU) for numerical effects; metrics never touch the target backend. Lower score
= less sensitive = quantized earlier. Metrics that need a torch twin or gradients (Hessian,
Fisher) plug in here too.
"""

from __future__ import annotations

import abc
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import onnx

from trt_mpq import options
from trt_mpq.calib import Ranges
from trt_mpq.errors import ConfigError
from trt_mpq.model.groups import Group
from trt_mpq.options import flag
from trt_mpq.plan import Plan, Precision
from trt_mpq.qdq import Dialect
from trt_mpq.task import Split, Task


@dataclass(frozen=True)
class SensitivityConfig:
    samples: int = field(default=64, metadata=flag(  # calibration-split samples a metric uses
        "--sensitivity-samples", "calibration samples the sensitivity metrics use",
        lo=1, hi=100_000))
    batch_size: int = 16  # batch size of torch passes (Hessian, Fisher)
    hutchinson_rel_tol: float = 0.05  # stop when the trace's relative standard error is below
    hutchinson_min_iter: int = 8
    hutchinson_max_iter: int = 100
    neighbours: int = field(default=1, metadata=flag(  # pairs (i, j), j among the next k
        "--neighbours", "hessian+deps: pair each group with the next N groups", lo=1, hi=64))
    conditional: bool = field(default=False, metadata=flag(
        "--conditional", "hessian+deps: greedy conditional order instead of pairwise folding"))
    seed: int = 0

    def __post_init__(self) -> None:
        options.check(self)
        if self.batch_size < 1:
            raise ConfigError("the sensitivity batch size must be >= 1")
        if not 0 < self.hutchinson_rel_tol < 1:
            raise ConfigError("the Hutchinson tolerance must be in (0, 1)")
        if not 2 <= self.hutchinson_min_iter <= self.hutchinson_max_iter:
            raise ConfigError("Hutchinson iterations: need 2 <= min <= max")

    def to_json_dict(self) -> dict:
        return dict(self.__dict__)


@dataclass(frozen=True)
class SensitivityContext:
    model: onnx.ModelProto = field(repr=False)
    groups: tuple[Group, ...]
    ranges: Ranges = field(repr=False)
    dialect: Dialect
    low: Mapping[str, Precision]  # the precision each group is lowered to
    base: Precision  # the precision of groups that are not lowered
    task: Task = field(repr=False)
    subset: Split = field(repr=False)  # samples the metric may use (with labels)
    simulate: Callable[[Plan, Split], dict[str, np.ndarray]] = field(repr=False)
    config: SensitivityConfig = field(default_factory=SensitivityConfig)
    input_names: tuple[str, ...] = ()  # ONNX graph inputs, in order (the torch twin's arguments)
    output_names: tuple[str, ...] = ()  # ONNX graph outputs, in order (the torch twin's returns)
    torch_model: Callable[[], Any] | None = field(default=None, repr=False)  # eval-mode twin
    prior: Mapping[str, SensitivityResult] = field(default_factory=dict, repr=False)  # reuse

    def base_plan(self) -> Plan:
        return Plan.uniform([g.name for g in self.groups], self.base)

    def single(self, group: str) -> Plan:
        return self.base_plan().with_({group: self.low[group]})


@dataclass(frozen=True)
class SensitivityResult:
    metric: str
    scores: Mapping[str, float]
    passes: int  # forward (or forward+backward) passes over the subset
    seconds: float
    samples: int
    extra: Mapping[str, Any] = field(default_factory=dict, compare=False)  # per-metric details

    def to_json_dict(self) -> dict:
        return {"metric": self.metric, "scores": dict(self.scores), "passes": self.passes,
                "seconds": self.seconds, "samples": self.samples, "extra": dict(self.extra)}

    @classmethod
    def from_json_dict(cls, d: Mapping) -> SensitivityResult:
        return cls(metric=d["metric"], scores=dict(d["scores"]), passes=int(d["passes"]),
                   seconds=float(d["seconds"]), samples=int(d["samples"]),
                   extra=dict(d.get("extra", {})))


class SensitivityMetric(abc.ABC):
    name: str = ""
    description: str = ""

    @abc.abstractmethod
    def score(self, ctx: SensitivityContext, progress: bool | None = None) -> SensitivityResult:
        ...


def _softmax(x: np.ndarray) -> np.ndarray:
    z = x - x.max(axis=-1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=-1, keepdims=True)


def output_divergence(ref: np.ndarray, out: np.ndarray, kind: str) -> float:
    """Mean KL(softmax(ref) || softmax(out)) for logits; mean squared error otherwise."""
    ref = ref.astype(np.float64)
    out = out.astype(np.float64)
    if kind == "logits":
        p = _softmax(ref)
        q = _softmax(out)
        kl = np.sum(p * (np.log(np.clip(p, 1e-12, None)) - np.log(np.clip(q, 1e-12, None))),
                    axis=-1)
        return float(np.mean(kl))
    return float(np.mean((ref - out) ** 2))


class OutputNoise(SensitivityMetric):
    """Quantize one group alone; divergence of the final output from the baseline's."""

    name = "noise"
    description = ("per group: quantize that group alone and measure the divergence of the "
                   "model's output from the unquantized model on a subset (KL of softmax for "
                   "classifiers, MSE otherwise)")

    def score(self, ctx: SensitivityContext, progress: bool | None = None) -> SensitivityResult:
        from tqdm.auto import tqdm

        t0 = time.perf_counter()
        output = ctx.task.metric.output
        ref_all = ctx.simulate(ctx.base_plan(), ctx.subset)
        out_name = output or next(iter(ref_all))
        ref = ref_all[out_name]
        scores: dict[str, float] = {}
        for g in tqdm(ctx.groups, desc="sensitivity (noise)", unit="group", leave=False,
                      disable=None if progress is None else not progress):
            outs = ctx.simulate(ctx.single(g.name), ctx.subset)
            scores[g.name] = output_divergence(ref, outs[out_name], ctx.task.metric.kind)
        return SensitivityResult(metric=self.name, scores=scores, passes=len(ctx.groups) + 1,
                                 seconds=time.perf_counter() - t0, samples=len(ctx.subset))


#: name -> "module:Class"; imported on use (the torch-based ones import torch only then)
METRICS: dict[str, str] = {
    "noise": "trt_mpq.sensitivity:OutputNoise",
    "accuracy": "trt_mpq.sensitivity.simulated:AccuracyDrop",
    "sqnr": "trt_mpq.sensitivity.simulated:Sqnr",
    "hessian": "trt_mpq.sensitivity.hessian:HessianTrace",
    "hessian+deps": "trt_mpq.sensitivity.simulated:HessianDeps",
    "fisher": "trt_mpq.sensitivity.hessian:Fisher",
}
#: metrics that need the model's torch twin
NEEDS_TORCH = frozenset({"hessian", "hessian+deps", "fisher"})


def get_metric(name: str) -> SensitivityMetric:
    if name not in METRICS:
        raise ConfigError(f"unknown sensitivity metric {name!r}; available: "
                          f"{', '.join(sorted(METRICS))}")
    import importlib

    module, cls = METRICS[name].split(":")
    return getattr(importlib.import_module(module), cls)()
