"""TensorRT 10 weakly typed networks: precision from per-layer constraints, not from the graph.

The `tensorrt-weak` dialect hands over the FP32 graph with the plan and int8 activation ranges as
metadata. Here every layer made from a group's ONNX node gets the group's precision (layer
precision and output type, obeyed because OBEY_PRECISION_CONSTRAINTS is set), int8 layers get
their input's dynamic range from our calibration, and every other layer runs FP16 (the builder
flags allow FP16/INT8). Deprecated in TensorRT 10 and gone in 11, kept for users still on 10.
"""

from __future__ import annotations

import json

import onnx

from trt_mpq.errors import BuildError
from trt_mpq.model.groups import Group
from trt_mpq.qdq.tensorrt import META_PLAN, META_RANGES


def _meta(model: onnx.ModelProto, key: str):
    for p in model.metadata_props:
        if p.key == key:
            return json.loads(p.value)
    raise BuildError(f"the graph has no {key!r} metadata: materialize it with the tensorrt-weak "
                     "dialect")


def layer_owner(layer_name: str, ops: dict[str, str]) -> str | None:
    """The group of the ONNX node a parsed layer came from (the ONNX parser names a layer after
    its node, adding a suffix when one node makes several layers)."""
    if layer_name in ops:
        return ops[layer_name]
    for op, group in ops.items():
        if layer_name.startswith(op + "_") or layer_name.startswith(op + " "):
            return group
    return None


def apply_weak_typing(trt, network, config, model: onnx.ModelProto, groups: list[Group]) -> dict:
    """Set builder flags, per-layer precisions and dynamic ranges; returns {layer: precision}."""
    plan = _meta(model, META_PLAN)
    amax = _meta(model, META_RANGES)
    ops = {op: g.name for g in groups for op in g.op_names}
    dtype = {"fp32": trt.float32, "fp16": trt.float16, "int8": trt.int8}
    config.set_flag(trt.BuilderFlag.FP16)
    if any(p == "int8" for p in plan.values()):
        config.set_flag(trt.BuilderFlag.INT8)
    config.set_flag(trt.BuilderFlag.OBEY_PRECISION_CONSTRAINTS)
    chosen: dict[str, str] = {}
    for i in range(network.num_layers):
        layer = network.get_layer(i)
        group = layer_owner(layer.name, ops)
        word = plan.get(group, "fp16") if group else "fp16"
        if word not in dtype:
            raise BuildError(f"weak typing cannot express {word} for layer {layer.name!r}")
        if group is None and _is_shape_or_int(trt, layer):
            continue
        layer.precision = dtype[word]
        for k in range(layer.num_outputs):
            # int8 layers hand FP16 on, so only their inputs need a dynamic range
            layer.set_output_type(k, dtype["fp16"] if word == "int8" else dtype[word])
        if word == "int8":
            for k in range(layer.num_inputs):
                tensor = layer.get_input(k)
                if tensor is not None and tensor.name in amax:
                    a = float(amax[tensor.name])
                    tensor.set_dynamic_range(-a, a)
        chosen[layer.name] = word
    missing = {g.name for g in groups if plan.get(g.name) == "int8"} - {
        layer_owner(n, ops) for n, w in chosen.items() if w == "int8"}
    if missing:
        raise BuildError(f"no network layer was found for int8 group(s) {sorted(missing)[:3]}")
    return chosen


def _is_shape_or_int(trt, layer) -> bool:
    """Layers that compute shapes or integers keep their own types."""
    for k in range(layer.num_outputs):
        t = layer.get_output(k)
        if t is not None and t.dtype not in (trt.float32, trt.float16):
            return True
    return False
