"""The `ort-cpu` dialect: Q/DQ forms that ONNX Runtime's CPU provider runs as integer kernels."""

from __future__ import annotations

import onnx

from trt_mpq.calib import Ranges
from trt_mpq.model.groups import Group
from trt_mpq.plan import Plan, Precision
from trt_mpq.qdq import passes


def materialize_ort_cpu(model: onnx.ModelProto, groups: list[Group], plan: Plan,
                        ranges: Ranges) -> onnx.ModelProto:
    ops = {p: [op for g in groups if plan[g.name] is p for op in g.op_names] for p in Precision}
    out = model
    if ops[Precision.INT8]:
        int8 = set(ops[Precision.INT8])
        nodes = int8 | passes.glue_nodes(model, int8)
        out = passes.static_qdq(out, sorted(nodes), ranges, symmetric_activations=False,
                                quantize_bias=True, quantize_outputs=True)
    out = passes.dynamic_int8(out, ops[Precision.INT8_DYNAMIC])
    out = passes.int4_weight_only(out, ops[Precision.INT4_WEIGHT], qdq=False)
    if ops[Precision.FP16]:
        fp16 = set(ops[Precision.FP16])
        out = passes.to_fp16(out, [n.name for n in out.graph.node if n.name not in fp16])
    if out is model:
        out = passes.copy_model(model)
    return out
