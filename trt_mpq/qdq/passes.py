"""Graph passes shared by the dialects. Each takes a ModelProto and returns a new one.

The int8, int4 and FP16 passes drive ONNX Runtime's own quantizers and converter (the libraries
made for this) with our precomputed ranges and an explicit list of nodes, so a plan quantizes
exactly its groups. The passes that ONNX Runtime has no fitting tool for (dynamic int8 without
its Gemm rewrite, FP8) edit the graph with onnx-graphsurgeon. Every call into those libraries
runs inside `third_party`, so a graph one of them refuses fails as a `MaterializeError`.
"""

from __future__ import annotations

import contextlib
import io
import logging
import sys
import threading
from collections.abc import Iterable

import ml_dtypes  # an onnx dependency
import numpy as np
import onnx
import onnx_graphsurgeon as gs

from trt_mpq.calib import Ranges
from trt_mpq.errors import MaterializeError, third_party

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
    the root logger (e.g. one line per node), onnx-graphsurgeon prints its warnings to stdout;
    keep our output clean while they run."""
    previous = logging.root.manager.disable
    logging.disable(logging.WARNING)
    try:
        with contextlib.redirect_stdout(io.StringIO()):
            yield
    finally:
        logging.disable(previous)


def initializer_names(model: onnx.ModelProto) -> set[str]:
    return {i.name for i in model.graph.initializer}


def _import(model: onnx.ModelProto) -> gs.Graph:
    """`model` as a gs graph. From a copy: gs's export writes into the TensorProtos it imported
    (it sets the name of Constant-node values), and a pass must not change its input."""
    with third_party("onnx-graphsurgeon's import"), _quiet():
        return gs.import_onnx(copy_model(model))


def _export(graph: gs.Graph, like: onnx.ModelProto) -> onnx.ModelProto:
    """`graph` as a model that keeps everything else of `like`: gs writes only the graph, opset
    and producer (not metadata_props, doc_string, ...), and restates the graph inputs and
    outputs from its own types, so those two are copied back as they were.

    gs writes only the initializers that some node or graph output still reads, so a pass that
    rewires a weight leaves no unused initializer behind. It keeps every node, so no
    `cleanup()`: that would also drop named nodes whose outputs no graph output depends on."""
    with third_party("onnx-graphsurgeon's export"), _quiet():
        out = gs.export_onnx(graph, do_type_check=False)
    for field, value in like.ListFields():
        if field.name != "graph":
            out.ClearField(field.name)
            if field.type == field.TYPE_MESSAGE:  # the message fields besides graph are lists
                getattr(out, field.name).extend(value)
            else:
                setattr(out, field.name, value)
    for io_field in ("input", "output"):
        out.graph.ClearField(io_field)
        getattr(out.graph, io_field).extend(getattr(like.graph, io_field))
    return out


def glue_nodes(model: onnx.ModelProto, quantized: Iterable[str],
               ranges: Ranges | None = None) -> set[str]:
    """Nodes in `GLUE_OPS` whose activation inputs all come from quantized nodes (transitively)
    and, with `ranges`, whose every activation input and output has a calibrated range (a
    tensor holding -inf, like masked attention scores, has none: its node stays float)."""
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
        if ranges is not None and not all(t in ranges for t in (*acts, *node.output[:1]) if t):
            continue
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
    tensors_range, op_types = ranges.to_tensors_data(), _all_op_types()
    with third_party("ONNX Runtime's opset update for its QDQ quantizer"):
        work = update_opset_version(copy_model(model), QuantType.QInt8, act)
    with third_party("ONNX Runtime's QDQ quantizer"), _quiet():
        quantizer = QDQQuantizer(work, True, False, QuantType.QInt8, act, tensors_range,
                                 nodes, [], op_types, extra)
        quantizer.quantize_model()
    return quantizer.model.model


def dynamic_int8(model: onnx.ModelProto, nodes: Iterable[str]) -> onnx.ModelProto:
    """Dynamic int8 for the MatMul `nodes`: weights int8 symmetric per output column, activations
    quantized to uint8 at run time (DynamicQuantizeLinear -> MatMulInteger -> scale), the pattern
    ONNX Runtime fuses into DynamicQuantizeMatMul / MatMulIntegerToFloat.

    Written here rather than with ONNX Runtime's dynamic quantizer because that one rewrites
    every Gemm of the graph into Transpose+MatMul+Add, including Gemms the plan keeps or
    quantizes statically. Each MatMul keeps its name (now a MatMulInteger); the float weights
    it no longer reads leave the graph.
    """
    targets = set(nodes)
    if not targets:
        return model
    graph = _import(model)
    quantized: dict[str, list[gs.Variable]] = {}  # activation -> [uint8, scale, zero point]
    weights: dict[str, tuple[gs.Constant, gs.Constant, gs.Constant]] = {}
    ordered: list[gs.Node] = []
    for node in graph.nodes:
        if node.name not in targets:
            ordered.append(node)
            continue
        if node.op != "MatMul" or not isinstance(node.inputs[1], gs.Constant):
            raise MaterializeError(f"dynamic int8 applies to a MatMul with a constant weight, "
                                   f"not {node.op} {node.name!r}; use int8 for it")
        x, w = node.inputs
        if x.name not in quantized:
            quantized[x.name] = [gs.Variable(f"{x.name}_dyn_{s}")
                                 for s in ("quantized", "scale", "zero_point")]
            ordered.append(gs.Node("DynamicQuantizeLinear", f"{x.name}_DynamicQuantizeLinear",
                                   inputs=[x], outputs=quantized[x.name]))
        xq, xs, xz = quantized[x.name]
        if w.name not in weights:
            wf = w.values.astype(np.float32)
            scale = np.maximum(np.abs(wf).max(axis=0), 1e-12) / 127.0  # per output column
            weights[w.name] = (
                gs.Constant(f"{w.name}_quantized",
                            np.clip(np.rint(wf / scale), -127, 127).astype(np.int8)),
                gs.Constant(f"{w.name}_scale", scale.astype(np.float32)),
                gs.Constant(f"{w.name}_zero_point", np.zeros(scale.shape, np.int8)))
        wq, ws, wz = weights[w.name]
        y = node.outputs[0]
        acc, acc_f, y_scale = (gs.Variable(f"{y.name}_{s}")
                               for s in ("int32", "int32_float", "scale"))
        node.op = "MatMulInteger"  # the same node, so the same name
        node.inputs.clear()
        node.inputs.extend([xq, wq, xz, wz])
        node.outputs.clear()
        node.outputs.append(acc)
        ordered += [
            node,
            gs.Node("Cast", f"{node.name}_Cast", {"to": onnx.TensorProto.FLOAT}, [acc], [acc_f]),
            gs.Node("Mul", f"{node.name}_ScaleMul", inputs=[xs, ws], outputs=[y_scale]),
            gs.Node("Mul", f"{node.name}_OutputMul", inputs=[acc_f, y_scale], outputs=[y]),
        ]
    graph.nodes = ordered
    return _export(graph, model)


#: the names ONNX Runtime's MatMulNBitsQuantizer gives the node it rewrites (4 bits):
#: "<name>_Q4" (MatMulNBits) or "<name>_matmul_Q4" (the MatMul after the block-wise DQ)
_INT4_SUFFIXES = ("_matmul_Q4", "_Q4")


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
    # the quantizer's nodes_to_include adds to its op-type selection; exclude the rest instead
    wanted = set(nodes)
    exclude = [n.name for n in model.graph.node if n.op_type == "MatMul" and n.name not in wanted]
    with third_party("ONNX Runtime's MatMulNBits quantizer"), _quiet():
        cfg = DefaultWeightOnlyQuantConfig(block_size=block_size, is_symmetric=True,
                                           quant_format=fmt, op_types_to_quantize=("MatMul",))
        q = MatMulNBitsQuantizer(copy_model(model), nodes_to_exclude=exclude, algo_config=cfg)
        q.process()
    out = q.model.model
    # the quantizer renames the node it rewrites; plans and censuses refer to nodes by name,
    # so give each its original name back
    missing = wanted - {n.name for n in out.graph.node}
    for node in out.graph.node:
        if node.op_type in ("MatMul", "MatMulNBits"):
            for suffix in _INT4_SUFFIXES:
                if node.name.endswith(suffix) and node.name[:-len(suffix)] in missing:
                    node.name = node.name[:-len(suffix)]
                    missing.discard(node.name)
                    break
    return out


def to_fp16(model: onnx.ModelProto, keep_fp32: Iterable[str]) -> onnx.ModelProto:
    """Convert the graph to FP16 except the nodes in `keep_fp32`; graph inputs and outputs keep
    their types (casts are inserted at the boundaries)."""
    from onnxruntime.transformers.float16 import (
        DEFAULT_OP_BLOCK_LIST,
        convert_float_to_float16,
    )

    with third_party("ONNX Runtime's float16 converter"), _quiet():
        out = convert_float_to_float16(copy_model(model), keep_io_types=True,
                                       op_block_list=list(DEFAULT_OP_BLOCK_LIST),
                                       node_block_list=list(keep_fp32))
    return topo_sort(out)  # the converter appends its casts at the end of the node list


def _first_unready(graph: onnx.GraphProto) -> tuple[onnx.NodeProto, list[str]] | None:
    """The first node that reads tensors that no graph input, initializer or earlier node gives,
    and those tensors; None when the order is topological."""
    ready = {i.name for i in graph.input} | {i.name for i in graph.initializer} | {""}
    for node in graph.node:
        missing = [i for i in node.input if i not in ready]
        if missing:
            return node, missing
        ready.update(node.output)
    return None


_RECURSION = threading.Lock()


def topo_sort(model: onnx.ModelProto) -> onnx.ModelProto:
    """Order the nodes topologically. A graph already in a valid order comes back as it is;
    otherwise onnx-graphsurgeon sorts it: by depth, which is deterministic but does not keep
    the original order of independent nodes.
    Raises ValueError on a cycle or on an input that nothing produces (a bug of a pass)."""
    if _first_unready(model.graph) is None:
        return model
    graph = _import(model)
    with _RECURSION:  # gs recurses once per node of an out-of-order chain (2 frames each)
        limit = sys.getrecursionlimit()
        sys.setrecursionlimit(limit + 2 * len(graph.nodes))
        try:
            with _quiet():
                graph.toposort()
        except gs.OnnxGraphSurgeonException as e:  # how gs reports a cycle
            raise ValueError(f"graph has a cycle: {e}") from None
        finally:
            sys.setrecursionlimit(limit)
    out = _export(graph, model)
    if bad := _first_unready(out.graph):  # gs sorts past a tensor that nothing produces
        raise ValueError(f"node {bad[0].name!r} ({bad[0].op_type}) reads {bad[1][:3]}, which no "
                         "node, graph input or initializer gives")
    return out


# -- FP8 (E4M3) Q/DQ, written here: ONNX Runtime's quantizer supports FP8 only with its
# -- Distribution calibrator, and TensorRT wants plain per-tensor activation / per-channel weight.
FP8_MAX = 448.0


def _opset(model: onnx.ModelProto) -> int:
    return max((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), default=0)


def _fp8(name: str, values: np.ndarray) -> gs.Constant:
    return gs.Constant(name, np.asarray(values).astype(ml_dtypes.float8_e4m3fn))


def fp8_qdq(model: onnx.ModelProto, op_nodes: Iterable[str], ranges: Ranges) -> onnx.ModelProto:
    """FP8 E4M3 Q/DQ on the activation input and the weight of each node in `op_nodes`. The
    float weights that no node reads any more leave the graph."""
    targets = set(op_nodes)
    if not targets:
        return model
    if _opset(model) < 19:
        raise MaterializeError(f"FP8 Q/DQ needs opset >= 19, the model has {_opset(model)}; "
                               "convert it first (ensure_opset)")
    graph = _import(model)
    done_acts: dict[str, gs.Variable] = {}
    done_weights: dict[str, gs.Variable] = {}
    ordered: list[gs.Node] = []
    for node in graph.nodes:
        if node.name in targets:
            x, w = node.inputs[:2]
            if not isinstance(w, gs.Constant):
                raise MaterializeError(f"FP8 applies to ops with a constant weight, not "
                                       f"{node.op} {node.name!r}")
            if x.name not in done_acts:
                amax = max(ranges.amax(x.name), 1e-8) if x.name in ranges else 1.0
                s = gs.Constant(f"{x.name}_fp8_scale", np.array(amax / FP8_MAX, np.float32))
                z = _fp8(f"{x.name}_fp8_zero_point", 0.0)
                q, dq = gs.Variable(f"{x.name}_fp8_q"), gs.Variable(f"{x.name}_fp8_dq")
                ordered += [gs.Node("QuantizeLinear", f"{x.name}_fp8_QuantizeLinear",
                                    inputs=[x, s, z], outputs=[q]),
                            gs.Node("DequantizeLinear", f"{x.name}_fp8_DequantizeLinear",
                                    inputs=[q, s, z], outputs=[dq])]
                done_acts[x.name] = dq
            node.inputs[0] = done_acts[x.name]
            if w.name not in done_weights:
                wf = w.values.astype(np.float32)
                trans_b = node.op == "Gemm" and node.attrs.get("transB", 0)
                axis = 0 if node.op == "Conv" or trans_b else wf.ndim - 1  # output channels
                red = tuple(i for i in range(wf.ndim) if i != axis)
                scale = np.maximum(np.abs(wf).max(axis=red), 1e-12) / FP8_MAX
                shape = [1] * wf.ndim
                shape[axis] = -1
                dq_w = gs.Variable(f"{w.name}_fp8_dq")
                ordered.append(gs.Node(
                    "DequantizeLinear", f"{w.name}_fp8_DequantizeLinear", {"axis": axis},
                    inputs=[_fp8(f"{w.name}_fp8", wf / scale.reshape(shape)),
                            gs.Constant(f"{w.name}_fp8_scale", scale.astype(np.float32)),
                            _fp8(f"{w.name}_fp8_zp", np.zeros(scale.size, np.float32))],
                    outputs=[dq_w]))
                done_weights[w.name] = dq_w
            node.inputs[1] = done_weights[w.name]
        ordered.append(node)
    graph.nodes = ordered
    return _export(graph, model)


def ensure_opset(model: onnx.ModelProto, version: int) -> onnx.ModelProto:
    """Convert the default-domain opset up to `version` if it is lower."""
    if _opset(model) >= version:
        return model
    from onnx import version_converter

    with third_party("onnx's version converter"):
        return version_converter.convert_version(model, version)
