"""Materialization: one plan -> the graph a backend needs (its dialect).

`materialize(model, groups, plan, ranges, dialect)` is a pure function: it reads a prepared FP32
ModelProto and the calibration ranges and returns a new ModelProto with explicit Q/DQ nodes and
casts. It never imports a trt-mpq backend and never recalibrates.

Dialects
- `ort-cpu`: what ONNX Runtime's CPU kernels run fast (DESIGN.md §3): U8S8 Q/DQ (uint8 asymmetric
  activations, int8 per-channel weights, int32 bias) for static INT8; dynamic INT8 (MatMulInteger
  family) for MatMul; int4 weight-only as MatMulNBits; FP16 as casts around the group.
- `tensorrt`: what TensorRT's strongly typed networks expect: symmetric int8 Q/DQ (zero point 0)
  on the inputs of quantized ops, float bias, FP8 (E4M3) Q/DQ, int4 block-wise weight DQ, and FP16
  everywhere that the plan does not keep in FP32; graph inputs and outputs keep their types.
"""

from __future__ import annotations

import enum

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


#: precisions each dialect can materialize, and the baseline (unquantized) precision.
SUPPORTED: dict[Dialect, frozenset[Precision]] = {
    Dialect.ORT_CPU: frozenset({Precision.FP32, Precision.FP16, Precision.INT8,
                                Precision.INT8_DYNAMIC, Precision.INT4_WEIGHT}),
    Dialect.TENSORRT: frozenset({Precision.FP32, Precision.FP16, Precision.INT8, Precision.FP8,
                                 Precision.INT4_WEIGHT}),
    Dialect.TENSORRT_WEAK: frozenset({Precision.FP32, Precision.FP16, Precision.INT8}),
}
BASELINE: dict[Dialect, Precision] = {Dialect.ORT_CPU: Precision.FP32,
                                      Dialect.TENSORRT: Precision.FP16,
                                      Dialect.TENSORRT_WEAK: Precision.FP16}
#: precisions that apply to MatMul groups only (ONNX Runtime's dynamic and int4 quantizers)
MATMUL_ONLY = frozenset({Precision.INT8_DYNAMIC, Precision.INT4_WEIGHT})

_WHY_NOT = {
    (Dialect.ORT_CPU, Precision.FP8): "ONNX Runtime's CPU provider has no FP8 kernels",
    (Dialect.TENSORRT, Precision.INT8_DYNAMIC): "TensorRT has no dynamic int8 quantization; "
    "use int8 (static)",
    (Dialect.TENSORRT_WEAK, Precision.INT8_DYNAMIC): "TensorRT has no dynamic int8 quantization",
    (Dialect.TENSORRT_WEAK, Precision.FP8): "FP8 needs explicit Q/DQ: use strong typing",
    (Dialect.TENSORRT_WEAK, Precision.INT4_WEIGHT): "int4 weights need explicit DQ: use strong "
    "typing",
}


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
    for name, p in plan.items:
        if p not in SUPPORTED[dialect]:
            why = _WHY_NOT.get((dialect, p), "not implemented for this dialect")
            ok = ", ".join(sorted(x.value for x in SUPPORTED[dialect]))
            raise PlanError(f"group {name!r}: {p.value} is not available on {dialect.value} "
                            f"({why}); use one of: {ok}")
        if p in MATMUL_ONLY and by_name[name].op_type != "MatMul":
            raise PlanError(f"group {name!r} is a {by_name[name].op_type}: {p.value} applies to "
                            "MatMul groups only; use int8 for it")


def default_low_precision(group: Group, dialect: Dialect) -> Precision:
    """The precision a search lowers `group` to when the user does not choose one.

    ort-cpu: dynamic int8 for MatMul (measured faster and more accurate than static Q/DQ on
    transformer MatMuls, DESIGN.md §3), static int8 for Conv/Gemm. tensorrt: int8.
    """
    if dialect is Dialect.ORT_CPU and group.op_type == "MatMul":
        return Precision.INT8_DYNAMIC
    return Precision.INT8


def materialize(model: onnx.ModelProto, groups: list[Group], plan: Plan, ranges: Ranges,
                dialect: Dialect) -> onnx.ModelProto:
    """Return the graph that realizes `plan` on `dialect`. `model` is not modified."""
    check_plan(plan, groups, dialect)
    from trt_mpq.qdq.passes import topo_sort

    if dialect is Dialect.ORT_CPU:
        from trt_mpq.qdq.ort_cpu import materialize_ort_cpu

        return topo_sort(materialize_ort_cpu(model, groups, plan, ranges))
    if dialect is Dialect.TENSORRT_WEAK:
        from trt_mpq.qdq.tensorrt import annotate_weak

        return annotate_weak(model, groups, plan, ranges)
    from trt_mpq.qdq.tensorrt import materialize_tensorrt

    return topo_sort(materialize_tensorrt(model, groups, plan, ranges))
