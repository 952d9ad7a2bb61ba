"""The `ort-cpu` dialect: Q/DQ forms that ONNX Runtime's CPU provider runs as integer kernels
(DESIGN.md §3).

U8S8 Q/DQ (uint8 asymmetric activations, int8 per-channel weights, int32 bias) for static INT8,
with the glue ops between quantized groups kept in int8; dynamic INT8 (MatMulInteger family) for
MatMul; int4 weight-only as MatMulNBits; FP16 as casts around the group. The baseline is FP32.
"""

from __future__ import annotations

import onnx

from trt_mpq.model.groups import Group
from trt_mpq.plan import Precision
from trt_mpq.qdq import DialectSpec, PassContext, passes


def _int8(model: onnx.ModelProto, ops: list[str], ctx: PassContext) -> onnx.ModelProto:
    if not ops:
        return model
    nodes = set(ops) | passes.glue_nodes(ctx.source, ops, ctx.ranges)
    return passes.static_qdq(model, sorted(nodes), ctx.ranges, symmetric_activations=False,
                             quantize_bias=True, quantize_outputs=True)


def _int8_dynamic(model: onnx.ModelProto, ops: list[str], ctx: PassContext) -> onnx.ModelProto:
    return passes.dynamic_int8(model, ops)


def _int4_weight(model: onnx.ModelProto, ops: list[str], ctx: PassContext) -> onnx.ModelProto:
    return passes.int4_weight_only(model, ops, qdq=False)


def _fp16(model: onnx.ModelProto, ops: list[str], ctx: PassContext) -> onnx.ModelProto:
    if not ops:
        return model
    fp16 = set(ops)
    return passes.to_fp16(model, [n.name for n in model.graph.node if n.name not in fp16])


def _default_low(group: Group) -> Precision:
    """Dynamic int8 for MatMul (measured faster and more accurate than static Q/DQ on
    transformer MatMuls, DESIGN.md §3), static int8 for Conv/Gemm."""
    return Precision.INT8_DYNAMIC if group.op_type == "MatMul" else Precision.INT8


SPEC = DialectSpec(
    baseline=Precision.FP32,
    passes={Precision.INT8: _int8, Precision.INT8_DYNAMIC: _int8_dynamic,
            Precision.INT4_WEIGHT: _int4_weight, Precision.FP16: _fp16},
    default_low=_default_low,
    finish=passes.topo_sort,
)
