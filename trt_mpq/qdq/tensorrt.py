"""The `tensorrt` dialect: explicit precision for strongly typed TensorRT networks.

Int8 groups get symmetric int8 Q/DQ (zero point 0) on their activation input and per-channel
int8 weights, with the bias left in float (TensorRT rejects int32 bias DQ); FP8 groups get E4M3
Q/DQ; int4 weight-only groups get a block-wise int4 DequantizeLinear on the weight; everything the
plan does not keep in FP32 is converted to FP16. Graph inputs and outputs keep their types.
"""

from __future__ import annotations

import json

import onnx

from trt_mpq.calib import Ranges
from trt_mpq.model.groups import Group
from trt_mpq.plan import Plan, Precision
from trt_mpq.qdq import passes

OPSET = 21  # int4 DequantizeLinear with block_size needs 21; FP8 and FP16 scales need 19


def materialize_tensorrt(model: onnx.ModelProto, groups: list[Group], plan: Plan,
                         ranges: Ranges) -> onnx.ModelProto:
    ops = {p: [op for g in groups if plan[g.name] is p for op in g.op_names] for p in Precision}
    out = passes.ensure_opset(passes.copy_model(model), OPSET)
    out = passes.static_qdq(out, ops[Precision.INT8], ranges, symmetric_activations=True,
                            quantize_bias=False, quantize_outputs=False)
    out = passes.fp8_qdq(out, ops[Precision.FP8], ranges)
    out = passes.int4_weight_only(out, ops[Precision.INT4_WEIGHT], qdq=True)
    keep_fp32 = set(ops[Precision.FP32])
    if len(keep_fp32) < sum(len(g.ops) for g in groups):  # a uniform FP32 plan stays all FP32
        out = passes.to_fp16(out, [n.name for n in out.graph.node if n.name in keep_fp32])
    return out


#: metadata keys of the tensorrt-weak dialect
META_PLAN = "trt_mpq.plan"
META_RANGES = "trt_mpq.ranges"


def annotate_weak(model: onnx.ModelProto, groups: list[Group], plan: Plan,
                  ranges: Ranges) -> onnx.ModelProto:
    """The FP32 graph with the plan and, for int8 groups, the symmetric range (amax) of each op's
    activation input, as model metadata (read by the TensorRT 10 weakly typed build)."""
    out = passes.copy_model(model)
    amax = {}
    for g in groups:
        if plan[g.name] is Precision.INT8:
            for op in g.ops:
                if op.input in ranges:
                    amax[op.input] = ranges.amax(op.input)
    for key in (META_PLAN, META_RANGES):
        for i in reversed(range(len(out.metadata_props))):
            if out.metadata_props[i].key == key:
                del out.metadata_props[i]
    out.metadata_props.add(key=META_PLAN, value=json.dumps(plan.to_json_dict()["groups"]))
    out.metadata_props.add(key=META_RANGES, value=json.dumps(amax))
    return out
