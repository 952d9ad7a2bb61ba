"""The `tensorrt` dialect: explicit precision for strongly typed TensorRT networks, and the
`tensorrt-weak` dialect for TensorRT 10's weakly typed builds.

Strong: int8 groups get symmetric int8 Q/DQ (zero point 0) on their activation input and
per-channel int8 weights, with the bias left in float (TensorRT rejects int32 bias DQ); FP8
groups get E4M3 Q/DQ; int4 weight-only groups get a block-wise int4 DequantizeLinear on the
weight; everything the plan does not keep in FP32 is converted to FP16 (the baseline). Graph
inputs and outputs keep their types.

Weak: the FP32 graph with the plan and the int8 activation ranges as model metadata, read by
`trt_mpq.backends.tensorrt.weak` when it sets per-layer precisions.
"""

from __future__ import annotations

import json

import onnx

from trt_mpq.plan import Precision
from trt_mpq.qdq import DialectSpec, PassContext, passes

OPSET = 21  # int4 DequantizeLinear with block_size needs 21; FP8 and FP16 scales need 19


def _int8(model: onnx.ModelProto, ops: list[str], ctx: PassContext) -> onnx.ModelProto:
    return passes.static_qdq(model, ops, ctx.ranges, symmetric_activations=True,
                             quantize_bias=False, quantize_outputs=False)


def _fp8(model: onnx.ModelProto, ops: list[str], ctx: PassContext) -> onnx.ModelProto:
    return passes.fp8_qdq(model, ops, ctx.ranges)


def _int4_weight(model: onnx.ModelProto, ops: list[str], ctx: PassContext) -> onnx.ModelProto:
    return passes.int4_weight_only(model, ops, qdq=True)


def _fp16_except_fp32(model: onnx.ModelProto, ops: list[str], ctx: PassContext
                      ) -> onnx.ModelProto:
    """Everything to FP16 but the FP32 groups' ops; a uniform FP32 plan stays all FP32."""
    keep = set(ops)
    if len(keep) == ctx.op_count:
        return model
    return passes.to_fp16(model, [n.name for n in model.graph.node if n.name in keep])


SPEC = DialectSpec(
    baseline=Precision.FP16,
    passes={Precision.INT8: _int8, Precision.FP8: _fp8, Precision.INT4_WEIGHT: _int4_weight,
            Precision.FP32: _fp16_except_fp32},
    prepare=lambda model: passes.ensure_opset(passes.copy_model(model), OPSET),
    default_low=lambda group: Precision.INT8,
    finish=passes.topo_sort,
)


#: metadata keys of the tensorrt-weak dialect
META_PLAN = "trt_mpq.plan"
META_RANGES = "trt_mpq.ranges"


def annotate_weak(model: onnx.ModelProto, ctx: PassContext) -> onnx.ModelProto:
    """The FP32 graph (`model`, a copy) with the plan and, for int8 groups, the symmetric range
    (amax) of each op's activation input, as model metadata."""
    amax = {}
    for g in ctx.groups:
        if ctx.plan[g.name] is Precision.INT8:
            for op in g.ops:
                if op.input in ctx.ranges:
                    amax[op.input] = ctx.ranges.amax(op.input)
    for key in (META_PLAN, META_RANGES):
        for i in reversed(range(len(model.metadata_props))):
            if model.metadata_props[i].key == key:
                del model.metadata_props[i]
    model.metadata_props.add(key=META_PLAN, value=json.dumps(ctx.plan.to_json_dict()["groups"]))
    model.metadata_props.add(key=META_RANGES, value=json.dumps(amax))
    return model


WEAK_SPEC = DialectSpec(
    baseline=Precision.FP16, passes={}, default_low=lambda group: Precision.INT8,
    annotate=annotate_weak, annotated=frozenset({Precision.FP32, Precision.INT8}),
)
