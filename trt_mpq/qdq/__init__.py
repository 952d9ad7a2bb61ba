"""Materialization: one plan -> the graph a backend needs (its dialect).

`materialize(model, groups, plan, ranges, dialect)` is a pure function: it reads a prepared FP32
ModelProto and the calibration ranges and returns a new ModelProto with explicit Q/DQ nodes and
casts. It never imports a trt-mpq backend and never recalibrates.

Each dialect is declared once, by a `DialectSpec` in its own module (`DIALECTS` names them):
its baseline precision, the precision a search lowers a group to by default, and its passes,
one per precision it can lower to, applied in order. A dialect supports its baseline and every
precision it has a pass for.

- `ort-cpu` (`qdq/ort_cpu.py`): what ONNX Runtime's CPU kernels run fast (DESIGN.md §3).
- `tensorrt` (`qdq/tensorrt.py`): explicit precision for TensorRT's strongly typed networks.
- `tensorrt-weak` (`qdq/tensorrt.py`): the FP32 graph annotated for TensorRT 10 weak typing.
"""

from __future__ import annotations

import enum
import importlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from functools import cache

import onnx

from trt_mpq.calib import Ranges
from trt_mpq.errors import PlanError
from trt_mpq.model.groups import Group
from trt_mpq.plan import Plan, Precision


class Dialect(enum.Enum):
    ORT_CPU = "ort-cpu"
    TENSORRT = "tensorrt"
    TENSORRT_WEAK = "tensorrt-weak"  # TensorRT 10 weakly typed: FP32 graph + plan annotations

    @classmethod
    def parse(cls, text: str) -> Dialect:
        for d in cls:
            if d.value == text.strip().lower():
                return d
        raise PlanError(f"unknown dialect {text!r}; use one of: {', '.join(d.value for d in cls)}")

    @property
    def spec(self) -> DialectSpec:
        return dialect_spec(self)


@dataclass(frozen=True)
class PassContext:
    """What a pass may read besides the graph it rewrites."""

    source: onnx.ModelProto  # the prepared FP32 model (unmodified)
    groups: tuple[Group, ...]
    plan: Plan
    ranges: Ranges

    def ops_at(self, precision: Precision) -> list[str]:
        return [op for g in self.groups if self.plan[g.name] is precision for op in g.op_names]

    @property
    def op_count(self) -> int:
        return sum(len(g.ops) for g in self.groups)


#: a pass: (graph so far, the op names the plan puts at its precision, context) -> new graph.
#: It is called for every plan, with an empty op list when no group is at its precision.
Pass = Callable[[onnx.ModelProto, list[str], PassContext], onnx.ModelProto]


@dataclass(frozen=True)
class DialectSpec:
    baseline: Precision
    passes: Mapping[Precision, Pass]  # applied in this order
    default_low: Callable[[Group], Precision]
    prepare: Callable[[onnx.ModelProto], onnx.ModelProto] | None = None  # before the passes
    finish: Callable[[onnx.ModelProto], onnx.ModelProto] = field(default=lambda m: m)
    #: the whole plan at once instead of passes (e.g. annotations); supported = its keys
    annotate: Callable[[onnx.ModelProto, PassContext], onnx.ModelProto] | None = None
    annotated: frozenset[Precision] = frozenset()

    @property
    def supported(self) -> frozenset[Precision]:
        return frozenset({self.baseline, *self.passes, *self.annotated})


#: dialect -> "module:attribute" of its DialectSpec, imported on use
DIALECTS: dict[Dialect, str] = {
    Dialect.ORT_CPU: "trt_mpq.qdq.ort_cpu:SPEC",
    Dialect.TENSORRT: "trt_mpq.qdq.tensorrt:SPEC",
    Dialect.TENSORRT_WEAK: "trt_mpq.qdq.tensorrt:WEAK_SPEC",
}


@cache
def dialect_spec(dialect: Dialect) -> DialectSpec:
    module, attr = DIALECTS[dialect].split(":")
    return getattr(importlib.import_module(module), attr)


class _Derived(Mapping):
    """A read-only dialect -> value view over the dialect specs."""

    def __init__(self, fn: Callable[[DialectSpec], object]) -> None:
        self._fn = fn

    def __getitem__(self, dialect):
        return self._fn(dialect_spec(dialect))

    def __iter__(self):
        return iter(Dialect)

    def __len__(self) -> int:
        return len(Dialect)


#: precisions each dialect can materialize, and its baseline (unquantized) precision
SUPPORTED: Mapping[Dialect, frozenset[Precision]] = _Derived(lambda s: s.supported)
BASELINE: Mapping[Dialect, Precision] = _Derived(lambda s: s.baseline)


def check_plan(plan: Plan, groups: list[Group], dialect: Dialect) -> None:
    """Raise `PlanError` if the plan does not cover exactly `groups` or asks for a precision the
    dialect cannot express for some group."""
    names = [g.name for g in groups]
    if set(plan.groups) != set(names):
        extra = sorted(set(plan.groups) - set(names))
        missing = sorted(set(names) - set(plan.groups))
        detail = f"unknown {extra[:3]}" if extra else f"missing {missing[:3]}"
        raise PlanError(f"the plan does not match the model's groups ({detail}); "
                        "`trt-mpq inspect MODEL` lists them")
    by_name = {g.name: g for g in groups}
    supported = SUPPORTED[dialect]
    for name, p in plan.items:
        if p not in supported:
            why = p.spec.unavailable.get(dialect.value, "not implemented for this dialect")
            ok = ", ".join(sorted(x.value for x in supported))
            raise PlanError(f"group {name!r}: {p.value} is not available on {dialect.value} "
                            f"({why}); use one of: {ok}")
        op_type = by_name[name].op_type
        if not p.applies_to(op_type):
            only = "/".join(sorted(p.spec.op_types or ()))
            raise PlanError(f"group {name!r} is a {op_type}: {p.value} applies to {only} groups "
                            "only; use int8 for it")


def default_low_precision(group: Group, dialect: Dialect) -> Precision:
    """The precision a search lowers `group` to when the user does not choose one."""
    return dialect_spec(dialect).default_low(group)


def calibration_tensors(model: onnx.ModelProto, groups: list[Group]) -> set[str]:
    """Every tensor some plan may need an activation range for, in any dialect: the inputs and
    outputs of the groups' ops, and of the glue nodes (Add, Relu, pooling, ...) that quantize
    along with them when every group is lowered (the most any plan lowers). Other tensors --
    an attention mask's -inf scores, large negative constants -- are never calibrated."""
    from trt_mpq.qdq.passes import glue_nodes

    ops = {op.name for g in groups for op in g.ops}
    glue = glue_nodes(model, ops)
    inits = {i.name for i in model.graph.initializer}
    return {t for n in model.graph.node if n.name in ops or n.name in glue
            for t in (*n.input, *n.output) if t and t not in inits}


def materialize(model: onnx.ModelProto, groups: list[Group], plan: Plan, ranges: Ranges,
                dialect: Dialect) -> onnx.ModelProto:
    """Return the graph that realizes `plan` on `dialect`. `model` is not modified."""
    check_plan(plan, groups, dialect)
    from trt_mpq.qdq.passes import copy_model

    spec = dialect_spec(dialect)
    ctx = PassContext(source=model, groups=tuple(groups), plan=plan, ranges=ranges)
    if spec.annotate is not None:
        return spec.annotate(copy_model(model), ctx)
    # each step returns a new model, or its input untouched when it has no work
    out = spec.prepare(model) if spec.prepare is not None else model
    for precision, pass_ in spec.passes.items():
        out = pass_(out, ctx.ops_at(precision), ctx)
    return spec.finish(copy_model(model) if out is model else out)


__all__ = ["Dialect", "DialectSpec", "PassContext", "Pass", "DIALECTS", "SUPPORTED", "BASELINE",
           "calibration_tensors", "check_plan", "default_low_precision", "materialize",
           "dialect_spec"]
