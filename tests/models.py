"""Tiny real ONNX models built in code (no torch), for fast unit tests.

They are real graphs with fixed random weights (seeded) that ONNX Runtime runs; what they compute
is meaningless, so tests on them check structure and numerics, not task accuracy.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper


def _init(name: str, arr: np.ndarray) -> onnx.TensorProto:
    return numpy_helper.from_array(arr.astype(np.float32), name)


def tiny_cnn(path: Path, seed: int = 0) -> Path:
    """input [N,3,16,16] -> conv -> relu -> (conv_a | conv_b share the input) -> add -> relu
    -> global pool -> flatten -> gemm -> logits [N,10]. 4 groups (conv_a and conv_b are one)."""
    rng = np.random.default_rng(seed)
    w = lambda *s: rng.normal(0, (2.0 / np.prod(s[1:])) ** 0.5, s)  # noqa: E731
    inits = [
        _init("w0", w(16, 3, 3, 3)), _init("b0", rng.normal(0, 0.1, 16)),
        _init("wa", w(16, 16, 3, 3)), _init("ba", rng.normal(0, 0.1, 16)),
        _init("wb", w(16, 16, 1, 1)), _init("bb", rng.normal(0, 0.1, 16)),
        _init("w2", w(32, 16, 3, 3)), _init("b2", rng.normal(0, 0.1, 32)),
        _init("wf", w(10, 32)), _init("bf", rng.normal(0, 0.1, 10)),
    ]
    nodes = [
        helper.make_node("Conv", ["input", "w0", "b0"], ["c0"], name="conv0", pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["c0"], ["r0"], name="relu0"),
        helper.make_node("Conv", ["r0", "wa", "ba"], ["ca"], name="conv_a", pads=[1, 1, 1, 1]),
        helper.make_node("Conv", ["r0", "wb", "bb"], ["cb"], name="conv_b"),
        helper.make_node("Add", ["ca", "cb"], ["s"], name="add"),
        helper.make_node("Relu", ["s"], ["r1"], name="relu1"),
        helper.make_node("Conv", ["r1", "w2", "b2"], ["c2"], name="conv2", pads=[1, 1, 1, 1],
                         strides=[2, 2]),
        helper.make_node("Relu", ["c2"], ["r2"], name="relu2"),
        helper.make_node("GlobalAveragePool", ["r2"], ["g"], name="gap"),
        helper.make_node("Flatten", ["g"], ["f"], name="flatten"),
        helper.make_node("Gemm", ["f", "wf", "bf"], ["logits"], name="fc", transB=1),
    ]
    graph = helper.make_graph(
        nodes, "tiny_cnn",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["batch", 3, 16, 16])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", 10])], inits)
    return _save(graph, path)


def tiny_transformer(path: Path, seed: int = 0, hidden: int = 32, seq: int = 8) -> Path:
    """input [N,seq,hidden] -> q/k/v MatMuls (share the input) -> attention -> out MatMul +
    residual -> LayerNorm -> ffn MatMul -> Gelu(Erf) -> MatMul -> mean -> Gemm head [N,2]."""
    rng = np.random.default_rng(seed)
    h = hidden
    m = lambda a, b: rng.normal(0, 1 / np.sqrt(a), (a, b))  # noqa: E731
    inits = [_init("wq", m(h, h)), _init("wk", m(h, h)), _init("wv", m(h, h)),
             _init("wo", m(h, h)), _init("w1", m(h, 4 * h)), _init("w2", m(4 * h, h)),
             _init("b1", rng.normal(0, 0.1, 4 * h)), _init("scale", np.array(1 / np.sqrt(h))),
             _init("ln_g", np.ones(h)), _init("ln_b", np.zeros(h)),
             _init("half", np.array(0.5)), _init("one", np.array(1.0)),
             _init("rsqrt2", np.array(1 / np.sqrt(2))),
             _init("wh", m(2, h)), _init("bh", np.zeros(2))]
    nodes = [
        helper.make_node("MatMul", ["input", "wq"], ["q"], name="q_proj"),
        helper.make_node("MatMul", ["input", "wk"], ["k"], name="k_proj"),
        helper.make_node("MatMul", ["input", "wv"], ["v"], name="v_proj"),
        helper.make_node("Transpose", ["k"], ["kt"], name="kT", perm=[0, 2, 1]),
        helper.make_node("MatMul", ["q", "kt"], ["qk"], name="scores"),
        helper.make_node("Mul", ["qk", "scale"], ["qks"], name="scale_mul"),
        helper.make_node("Softmax", ["qks"], ["p"], name="softmax", axis=-1),
        helper.make_node("MatMul", ["p", "v"], ["ctx"], name="context"),
        helper.make_node("MatMul", ["ctx", "wo"], ["o"], name="out_proj"),
        helper.make_node("Add", ["o", "input"], ["res"], name="residual"),
        helper.make_node("LayerNormalization", ["res", "ln_g", "ln_b"], ["ln"], name="ln",
                         axis=-1),
        helper.make_node("MatMul", ["ln", "w1"], ["f1"], name="ffn_in"),
        helper.make_node("Add", ["f1", "b1"], ["f1b"], name="ffn_bias"),
        helper.make_node("Mul", ["f1b", "rsqrt2"], ["gx"], name="gelu_div"),
        helper.make_node("Erf", ["gx"], ["ge"], name="gelu_erf"),
        helper.make_node("Add", ["ge", "one"], ["ge1"], name="gelu_add"),
        helper.make_node("Mul", ["f1b", "ge1"], ["gm"], name="gelu_mul"),
        helper.make_node("Mul", ["gm", "half"], ["g"], name="gelu_half"),
        helper.make_node("MatMul", ["g", "w2"], ["f2"], name="ffn_out"),
        helper.make_node("ReduceMean", ["f2"], ["pooled"], name="pool", axes=[1], keepdims=0),
        helper.make_node("Gemm", ["pooled", "wh", "bh"], ["logits"], name="head", transB=1),
    ]
    graph = helper.make_graph(
        nodes, "tiny_transformer",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["batch", seq, h])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", 2])], inits)
    return _save(graph, path)


def no_quantizable(path: Path) -> Path:
    """Relu -> Add: nothing to quantize."""
    graph = helper.make_graph(
        [helper.make_node("Relu", ["x"], ["r"], name="relu"),
         helper.make_node("Add", ["r", "x"], ["y"], name="add")], "noq",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 4])])
    return _save(graph, path)


def masked_attention(path: Path, constant_mask: bool = False, seed: int = 0) -> Path:
    """x [N,4,8], keep [N,1,8] (1 = attend) -> scores = x @ wq ("mm_q") -> + mask (0 or -inf)
    -> Softmax -> @ wv ("mm_v") -> y. The mask is Where(keep == 0, -inf, 0), as transformers'
    sdpa export writes it, or (constant_mask) a -inf initializer like a causal mask, which
    makes the Add a glue candidate. 2 groups; the masked scores hold -inf, nothing else."""
    rng = np.random.default_rng(seed)
    inits = [_init("wq", rng.normal(0, 0.4, (8, 8))), _init("wv", rng.normal(0, 0.4, (8, 8))),
             _init("zero", np.zeros(1)), _init("ninf", np.full(1, -np.inf))]
    if constant_mask:
        mask = np.zeros((1, 1, 8), np.float32)
        mask[..., 6:] = -np.inf
        inits.append(_init("mask", mask))
        nodes = []
    else:
        nodes = [helper.make_node("Equal", ["keep", "zero"], ["masked"], name="is_masked"),
                 helper.make_node("Where", ["masked", "ninf", "zero"], ["mask"], name="mask")]
    nodes += [
        helper.make_node("MatMul", ["x", "wq"], ["scores"], name="mm_q"),
        helper.make_node("Add", ["scores", "mask"], ["masked_scores"], name="add_mask"),
        helper.make_node("Softmax", ["masked_scores"], ["probs"], name="softmax", axis=-1),
        helper.make_node("MatMul", ["probs", "wv"], ["y"], name="mm_v"),
    ]
    inputs = [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 4, 8])]
    if not constant_mask:
        inputs.append(helper.make_tensor_value_info("keep", TensorProto.FLOAT, ["batch", 1, 8]))
    graph = helper.make_graph(nodes, "masked_attention", inputs,
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT,
                                                             ["batch", 4, 8])], inits)
    return _save(graph, path)


def masked_attention_inputs(n: int, constant_mask: bool = False, seed: int = 1) -> dict:
    rng = np.random.default_rng(seed)
    feed = {"x": rng.normal(0, 1, (n, 4, 8)).astype(np.float32)}
    if not constant_mask:
        lengths = rng.integers(2, 9, n)
        feed["keep"] = (np.arange(8)[None, None, :] < lengths[:, None, None]).astype(np.float32)
    return feed


def _save(graph: onnx.GraphProto, path: Path) -> Path:
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model, full_check=True)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(model, str(path))
    return path


def cnn_workspace(tmp: Path, total: int = 48, calibration: int = 16, search: int = 16):
    """A `Workspace` on the prepared tiny CNN: random inputs, labels i % 10, splits in that
    order (the holdout gets the rest), eval batch 8, the cache in `tmp / "cache"`."""
    from trt_mpq.model import find_groups, prepare_model
    from trt_mpq.pipeline.workspace import Workspace
    from trt_mpq.task import Split, Task, accuracy

    path = prepare_model(tiny_cnn(Path(tmp) / "cnn.onnx"), Path(tmp))
    model = onnx.load(str(path))
    x = cnn_inputs(total)
    labels = np.arange(total) % 10
    a, b = calibration, calibration + search
    task = Task(name="tiny", model_path=path, calibration=Split({"input": x[:a]}, labels[:a]),
                search=Split({"input": x[a:b]}, labels[a:b]),
                holdout=Split({"input": x[b:]}, labels[b:]), metric=accuracy(), eval_batch=8)
    return Workspace(task=task, source_path=path, prepared_path=path, model=model,
                     groups=find_groups(model), cache_dir=Path(tmp) / "cache", progress=False)


def cnn_inputs(n: int, seed: int = 1) -> np.ndarray:
    return np.random.default_rng(seed).normal(0, 1, (n, 3, 16, 16)).astype(np.float32)


def transformer_inputs(n: int, seed: int = 1, hidden: int = 32, seq: int = 8) -> np.ndarray:
    return np.random.default_rng(seed).normal(0, 1, (n, seq, hidden)).astype(np.float32)


def inverted_residual(path: Path, seed: int = 0) -> Path:
    """x [N,16,8,8] -> 3x3 conv to 24 channels -> ReLU6 -> 1x1 conv back to 16 -> + x.
    24 is not a multiple of ONNX Runtime's NCHWc block, so its layout transform re-creates the
    first conv's weight *and* bias under new names (as in EfficientNet's blocks)."""
    rng = np.random.default_rng(seed)
    inits = [_init("w0", rng.normal(0, 0.3, (24, 16, 3, 3))), _init("b0", rng.normal(0, 0.1, 24)),
             _init("w1", rng.normal(0, 0.3, (16, 24, 1, 1))), _init("b1", rng.normal(0, 0.1, 16)),
             _init("lo", np.array(0.0)), _init("hi", np.array(6.0))]
    nodes = [helper.make_node("Conv", ["x", "w0", "b0"], ["c0"], name="expand", pads=[1, 1, 1, 1]),
             helper.make_node("Clip", ["c0", "lo", "hi"], ["r0"], name="relu6"),
             helper.make_node("Conv", ["r0", "w1", "b1"], ["c1"], name="project"),
             helper.make_node("Add", ["c1", "x"], ["y"], name="residual")]
    graph = helper.make_graph(
        nodes, "inverted_residual",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 16, 8, 8])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 16, 8, 8])], inits)
    return _save(graph, path)
