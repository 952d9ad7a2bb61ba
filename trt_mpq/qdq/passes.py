"""Graph passes shared by the dialects. Each takes a ModelProto and returns a new one.

The int8 passes drive ONNX Runtime's own quantizers (the library made for this) with our
precomputed ranges and an explicit list of nodes, so a plan quantizes exactly its groups.
"""

from __future__ import annotations

import contextlib
import io
import logging
from collections.abc import Iterable

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from trt_mpq.calib import Ranges

log = logging.getLogger(__name__)

#: ops that may stay in the int8 domain between two quantized groups (ort-cpu); they are
#: quantized only when every activation input comes from a quantized node.
GLUE_OPS = frozenset({"Add", "Relu", "Clip", "MaxPool", "AveragePool", "GlobalAveragePool",
                      "Concat"})


def copy_model(model: onnx.ModelProto) -> onnx.ModelProto:
    out = onnx.ModelProto()
    out.CopyFrom(model)
    return out


@contextlib.contextmanager
def _quiet():
    """ONNX Runtime's quantization tools print progress to stdout and log INFO/WARNING lines to
    the root logger (e.g. one line per node); keep our output clean while they run."""
    previous = logging.root.manager.disable
    logging.disable(logging.WARNING)
    try:
        with contextlib.redirect_stdout(io.StringIO()):
            yield
    finally:
        logging.disable(previous)


def initializer_names(model: onnx.ModelProto) -> set[str]:
    return {i.name for i in model.graph.initializer}


def glue_nodes(model: onnx.ModelProto, quantized: Iterable[str]) -> set[str]:
    """Nodes in `GLUE_OPS` whose activation inputs all come from quantized nodes (transitively)."""
    inits = initializer_names(model)
    producer = {o: n.name for n in model.graph.node for o in n.output}
    q = set(quantized)
    glue: set[str] = set()
    for node in model.graph.node:  # graph order is topological
        if node.op_type not in GLUE_OPS or node.name in q:
            continue
        acts = [i for i in node.input if i and i not in inits]
        if node.op_type == "Clip":
            acts = acts[:1]
        if acts and all(producer.get(i) in q for i in acts):
            q.add(node.name)
            glue.add(node.name)
    return glue


def _all_op_types() -> list[str]:
    from onnxruntime.quantization.registry import QDQRegistry, QLinearOpsRegistry

    return sorted(set(QDQRegistry) | set(QLinearOpsRegistry))


def static_qdq(model: onnx.ModelProto, nodes: Iterable[str], ranges: Ranges, *,
               symmetric_activations: bool, quantize_bias: bool,
               quantize_outputs: bool) -> onnx.ModelProto:
    """Insert int8 Q/DQ for `nodes` with ONNX Runtime's QDQ quantizer.

    Weights: int8, symmetric, per output channel. Activations: uint8 asymmetric, or int8
    symmetric (zero point 0) when `symmetric_activations`.
    """
    nodes = list(nodes)
    if not nodes:
        return model
    from onnxruntime.quantization import QuantType
    from onnxruntime.quantization.qdq_quantizer import QDQQuantizer
    from onnxruntime.quantization.quantize import update_opset_version

    extra = {
        "ActivationSymmetric": symmetric_activations,
        "WeightSymmetric": True,
        "QuantizeBias": quantize_bias,
        "MatMulConstBOnly": True,
    }
    if not quantize_outputs:
        extra["OpTypesToExcludeOutputQuantization"] = ["Conv", "Gemm", "MatMul"]
    act = QuantType.QInt8 if symmetric_activations else QuantType.QUInt8
    work = update_opset_version(copy_model(model), QuantType.QInt8, act)
    with _quiet():
        quantizer = QDQQuantizer(work, True, False, QuantType.QInt8, act, ranges.to_tensors_data(),
                                 nodes, [], _all_op_types(), extra)
        quantizer.quantize_model()
    return quantizer.model.model


def dynamic_int8(model: onnx.ModelProto, nodes: Iterable[str]) -> onnx.ModelProto:
    """Dynamic int8 for the MatMul `nodes`: weights int8 symmetric per output column, activations
    quantized to uint8 at run time (DynamicQuantizeLinear -> MatMulInteger -> scale), the pattern
    ONNX Runtime fuses into DynamicQuantizeMatMul / MatMulIntegerToFloat.

    Written here rather than with ONNX Runtime's dynamic quantizer because that one rewrites
    every Gemm of the graph into Transpose+MatMul+Add, including Gemms the plan keeps or
    quantizes statically.
    """
    targets = set(nodes)
    if not targets:
        return model
    out = copy_model(model)
    inits = {i.name: i for i in out.graph.initializer}
    new_nodes: list[onnx.NodeProto] = []
    new_inits: list[onnx.TensorProto] = []
    quantized_inputs: dict[str, tuple[str, str, str]] = {}
    for node in out.graph.node:
        if node.name not in targets:
            new_nodes.append(node)
            continue
        if node.op_type != "MatMul" or node.input[1] not in inits:
            raise ValueError(f"dynamic int8 applies to MatMul with a constant weight, not "
                             f"{node.op_type} {node.name!r}")
        x, w_name = node.input[0], node.input[1]
        if x not in quantized_inputs:
            q = (f"{x}_dyn_quantized", f"{x}_dyn_scale", f"{x}_dyn_zero_point")
            new_nodes.append(helper.make_node("DynamicQuantizeLinear", [x], list(q),
                                              name=f"{x}_DynamicQuantizeLinear"))
            quantized_inputs[x] = q
        xq, xs, xz = quantized_inputs[x]
        w = numpy_helper.to_array(inits[w_name]).astype(np.float32)
        scale = np.maximum(np.abs(w).max(axis=0), 1e-12) / 127.0  # per output column
        wq = np.clip(np.rint(w / scale), -127, 127).astype(np.int8)
        wq_name, ws_name, wz_name = f"{w_name}_quantized", f"{w_name}_scale", f"{w_name}_zero_point"
        new_inits += [numpy_helper.from_array(wq, wq_name),
                      numpy_helper.from_array(scale.astype(np.float32), ws_name),
                      numpy_helper.from_array(np.zeros(scale.shape, np.int8), wz_name)]
        y = node.output[0]
        base = node.name
        new_nodes += [
            helper.make_node("MatMulInteger", [xq, wq_name, xz, wz_name], [f"{y}_int32"],
                             name=base),
            helper.make_node("Cast", [f"{y}_int32"], [f"{y}_int32_float"], to=TensorProto.FLOAT,
                             name=f"{base}_Cast"),
            helper.make_node("Mul", [xs, ws_name], [f"{y}_scale"], name=f"{base}_ScaleMul"),
            helper.make_node("Mul", [f"{y}_int32_float", f"{y}_scale"], [y],
                             name=f"{base}_OutputMul"),
        ]
    del out.graph.node[:]
    out.graph.node.extend(new_nodes)
    out.graph.initializer.extend(new_inits)
    return out


def int4_weight_only(model: onnx.ModelProto, nodes: Iterable[str], *, qdq: bool,
                     block_size: int = 32) -> onnx.ModelProto:
    """Block-wise symmetric int4 weights for the MatMul `nodes` (activations stay float).

    `qdq=False` emits ONNX Runtime's MatMulNBits kernel; `qdq=True` emits standard
    DequantizeLinear(int4, block-wise) -> MatMul, the form TensorRT reads.
    """
    nodes = list(nodes)
    if not nodes:
        return model
    from onnxruntime.quantization import QuantFormat
    from onnxruntime.quantization.matmul_nbits_quantizer import (
        DefaultWeightOnlyQuantConfig,
        MatMulNBitsQuantizer,
    )

    fmt = QuantFormat.QDQ if qdq else QuantFormat.QOperator
    cfg = DefaultWeightOnlyQuantConfig(block_size=block_size, is_symmetric=True, quant_format=fmt,
                                       op_types_to_quantize=("MatMul",))
    # the quantizer's nodes_to_include adds to its op-type selection; exclude the rest instead
    wanted = set(nodes)
    exclude = [n.name for n in model.graph.node if n.op_type == "MatMul" and n.name not in wanted]
    with _quiet():
        q = MatMulNBitsQuantizer(copy_model(model), nodes_to_exclude=exclude, algo_config=cfg)
        q.process()
    out = q.model.model
    # the quantizer renames the node it rewrites ("<name>_Q4", "<name>_matmul_Q4"); plans and
    # censuses refer to nodes by name, so give each its original name back
    present = {n.name for n in out.graph.node}
    for node in out.graph.node:
        if node.op_type in ("MatMul", "MatMulNBits") and node.name not in wanted:
            for name in wanted - present:
                if node.name.startswith(name + "_"):
                    node.name = name
                    present.add(name)
                    break
    return out


def to_fp16(model: onnx.ModelProto, keep_fp32: Iterable[str]) -> onnx.ModelProto:
    """Convert the graph to FP16 except the nodes in `keep_fp32`; graph inputs and outputs keep
    their types (casts are inserted at the boundaries)."""
    from onnxruntime.transformers.float16 import DEFAULT_OP_BLOCK_LIST, convert_float_to_float16

    with _quiet():
        out = convert_float_to_float16(copy_model(model), keep_io_types=True,
                                       op_block_list=list(DEFAULT_OP_BLOCK_LIST),
                                       node_block_list=list(keep_fp32))
    return topo_sort(out)


def topo_sort(model: onnx.ModelProto) -> onnx.ModelProto:
    """Reorder nodes topologically (stable: keeps the original order where it is valid)."""
    graph = model.graph
    available = {i.name for i in graph.input} | {i.name for i in graph.initializer} | {""}
    pending = list(graph.node)
    ordered: list[onnx.NodeProto] = []
    while pending:
        progressed = False
        rest = []
        for node in pending:
            if all(i in available for i in node.input):
                ordered.append(node)
                available.update(node.output)
                progressed = True
            else:
                rest.append(node)
        if not progressed:
            raise ValueError(f"graph has a cycle or a missing input near node {rest[0].name!r}")
        pending = rest
    if [n.name for n in ordered] != [n.name for n in graph.node]:
        new = [onnx.NodeProto() for _ in ordered]
        for dst, src in zip(new, ordered):
            dst.CopyFrom(src)
        del graph.node[:]
        graph.node.extend(new)
    return model


# -- FP8 (E4M3) Q/DQ, written here: ONNX Runtime's quantizer supports FP8 only with its
# -- Distribution calibrator, and TensorRT wants plain per-tensor activation / per-channel weight.
FP8_MAX = 448.0


def fp8_qdq(model: onnx.ModelProto, op_nodes: Iterable[str], ranges: Ranges) -> onnx.ModelProto:
    """FP8 E4M3 Q/DQ on the activation input and the weight of each node in `op_nodes`."""
    targets = set(op_nodes)
    if not targets:
        return model
    out = copy_model(model)
    if max((o.version for o in out.opset_import if o.domain in ("", "ai.onnx")), default=0) < 19:
        raise ValueError("FP8 Q/DQ needs opset >= 19")
    inits = {i.name: i for i in out.graph.initializer}
    new_nodes: list[onnx.NodeProto] = []
    new_inits: list[onnx.TensorProto] = []
    done_acts: dict[str, str] = {}
    for node in out.graph.node:
        if node.name in targets:
            x = node.input[0]
            if x not in done_acts:
                amax = max(ranges.amax(x), 1e-8) if x in ranges else 1.0
                s = f"{x}_fp8_scale"
                z = f"{x}_fp8_zero_point"
                new_inits.append(numpy_helper.from_array(np.array(amax / FP8_MAX, np.float32), s))
                new_inits.append(helper.make_tensor(z, TensorProto.FLOAT8E4M3FN, [], [0.0]))
                q_out, dq_out = f"{x}_fp8_q", f"{x}_fp8_dq"
                new_nodes.append(helper.make_node("QuantizeLinear", [x, s, z], [q_out],
                                                  name=f"{x}_fp8_QuantizeLinear"))
                new_nodes.append(helper.make_node("DequantizeLinear", [q_out, s, z], [dq_out],
                                                  name=f"{x}_fp8_DequantizeLinear"))
                done_acts[x] = dq_out
            node.input[0] = done_acts[x]
            w_name = node.input[1]
            w = numpy_helper.to_array(inits[w_name]).astype(np.float32)
            axis = 0 if node.op_type == "Conv" else (0 if _gemm_trans_b(node) else w.ndim - 1)
            red = tuple(i for i in range(w.ndim) if i != axis)
            scale = np.maximum(np.abs(w).max(axis=red), 1e-12) / FP8_MAX
            shape = [1] * w.ndim
            shape[axis] = -1
            wq = w / scale.reshape(shape)
            wq_name, ws_name, wz_name = f"{w_name}_fp8", f"{w_name}_fp8_scale", f"{w_name}_fp8_zp"
            new_inits.append(_fp8_tensor(wq_name, wq))
            new_inits.append(numpy_helper.from_array(scale.astype(np.float32), ws_name))
            new_inits.append(helper.make_tensor(wz_name, TensorProto.FLOAT8E4M3FN,
                                                [scale.size], [0.0] * scale.size))
            dq_w = f"{w_name}_fp8_dq"
            new_nodes.append(helper.make_node("DequantizeLinear", [wq_name, ws_name, wz_name],
                                              [dq_w], name=f"{w_name}_fp8_DequantizeLinear",
                                              axis=axis))
            node.input[1] = dq_w
        new_nodes.append(node)
    del out.graph.node[:]
    out.graph.node.extend(new_nodes)
    out.graph.initializer.extend(new_inits)
    return out


def _fp8_tensor(name: str, values: np.ndarray) -> onnx.TensorProto:
    import ml_dtypes  # an onnx dependency

    raw = values.astype(ml_dtypes.float8_e4m3fn).view(np.uint8).tobytes()
    return helper.make_tensor(name, TensorProto.FLOAT8E4M3FN, list(values.shape), raw, raw=True)


def _gemm_trans_b(node: onnx.NodeProto) -> bool:
    return node.op_type == "Gemm" and any(a.name == "transB" and a.i for a in node.attribute)


def ensure_opset(model: onnx.ModelProto, version: int) -> onnx.ModelProto:
    """Convert the default-domain opset up to `version` if it is lower."""
    current = max((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), default=0)
    if current >= version:
        return model
    from onnx import version_converter

    return version_converter.convert_version(model, version)
