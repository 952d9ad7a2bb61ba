"""TensorRT 10 weakly typed networks: precision from per-layer constraints, not from the graph.

The `tensorrt-weak` dialect hands over the FP32 graph with the plan and int8 activation ranges as
metadata. Here every layer made from a group's ONNX node gets the group's precision (layer
precision and output type, obeyed because OBEY_PRECISION_CONSTRAINTS is set) and every other
layer runs FP16 (the builder flags allow FP16/INT8). Deprecated in TensorRT 10 and gone in 11,
kept for users still on 10.

Implicit INT8 needs a dynamic range on *every* float tensor an int8 layer reads. TensorRT 10
has no fully connected layer: a MatMul's weights reach it as a tensor from a constant layer
(possibly through a shuffle), so that tensor needs a range too. Activations get the calibrated
abs-max, weight tensors the abs-max of their constant; an int8 layer with an input that has
neither fails the build with a clear message instead of silently running another precision.
Chosen over PREFER_PRECISION_CONSTRAINTS because it asks TensorRT for exactly the plan; not
measured here (no TensorRT 10 on our machines): the census still checks what ran.
"""

from __future__ import annotations

import json

import numpy as np
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


def _producers(network) -> dict[str, object]:
    """Tensor name -> the layer that produces it."""
    out = {}
    for i in range(network.num_layers):
        layer = network.get_layer(i)
        for k in range(layer.num_outputs):
            tensor = layer.get_output(k)
            if tensor is not None:
                out[tensor.name] = layer
    return out


def _constant_amax(trt, layer, producers: dict, depth: int = 4) -> float | None:
    """abs-max of the constant a tensor comes from, through up to `depth` shuffles."""
    for _ in range(depth):
        if layer is None:
            return None
        if layer.type == trt.LayerType.CONSTANT:
            values = np.asarray(layer.weights, dtype=np.float32)
            return float(np.abs(values).max()) if values.size else None
        if layer.type != trt.LayerType.SHUFFLE or layer.num_inputs < 1:
            return None
        source = layer.get_input(0)
        layer = producers.get(source.name) if source is not None else None
    return None


def apply_weak_typing(trt, network, cfg, model: onnx.ModelProto, groups: list[Group]) -> dict:
    """Set builder flags, per-layer precisions and dynamic ranges; returns {layer: precision}."""
    plan = _meta(model, META_PLAN)
    amax = _meta(model, META_RANGES)
    ops = {op: g.name for g in groups for op in g.op_names}
    dtype = {"fp32": trt.float32, "fp16": trt.float16, "int8": trt.int8}
    cfg.set_flag(trt.BuilderFlag.FP16)
    if any(p == "int8" for p in plan.values()):
        cfg.set_flag(trt.BuilderFlag.INT8)
    cfg.set_flag(trt.BuilderFlag.OBEY_PRECISION_CONSTRAINTS)
    producers = _producers(network)
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
                if tensor is None or tensor.dtype not in (trt.float32, trt.float16):
                    continue
                a = (float(amax[tensor.name]) if tensor.name in amax
                     else _constant_amax(trt, producers.get(tensor.name), producers))
                if a is None:
                    raise BuildError(f"int8 layer {layer.name!r} reads {tensor.name!r}, which has "
                                     "no calibrated range and is not a constant; weak typing "
                                     "cannot run it in int8 (use --typing strong)")
                tensor.dynamic_range = (-a, a)
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
