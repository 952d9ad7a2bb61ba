"""The torch twin: ONNX node name -> torch module, op -> module mapping, fake quantization
(checked against the real graph passes), twin loading."""

import subprocess
import sys
import textwrap

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from trt_mpq.errors import ConfigError, TaskError
from trt_mpq.model.groups import Group, GroupOp
from trt_mpq.plan import Precision as P
from trt_mpq.qdq import passes
from trt_mpq.sensitivity.torch_twin import (
    fake_quantize,
    load_twin,
    map_groups,
    module_for_node,
    weight_delta,
)

try:
    import torch
except ImportError:  # the module_for_node tests need no torch
    torch = None

needs_torch = pytest.mark.skipif(torch is None, reason="needs torch")

RESNET = {"conv1", "bn1", "relu", "maxpool", "layer1", "layer1.0", "layer1.0.conv1",
          "layer1.0.bn1", "layer1.0.conv2", "layer1.1", "layer1.1.conv1", "layer2", "layer2.0",
          "layer2.0.conv1", "layer2.0.downsample", "layer2.0.downsample.0",
          "layer2.0.downsample.1", "avgpool", "fc"}
BERT = {"encoder", "encoder.embeddings", "encoder.embeddings.word_embeddings", "encoder.encoder",
        "encoder.encoder.layer", "encoder.encoder.layer.0", "encoder.encoder.layer.0.attention",
        "encoder.encoder.layer.0.attention.self", "encoder.encoder.layer.0.attention.self.query",
        "encoder.encoder.layer.0.attention.self.key", "encoder.encoder.layer.0.attention.output",
        "encoder.encoder.layer.0.attention.output.dense", "encoder.encoder.layer.0.intermediate",
        "encoder.encoder.layer.0.intermediate.dense", "encoder.encoder.layer.11",
        "encoder.encoder.layer.11.output", "encoder.encoder.layer.11.output.dense", "head"}
EFFNET = {"_conv_stem", "_bn0", "_blocks", "_blocks.0", "_blocks.0._depthwise_conv",
          "_blocks.3", "_blocks.3._depthwise_conv", "_blocks.3._project_conv",
          "_blocks.13", "_blocks.13._expand_conv", "_conv_head", "_fc", "probe", "probe.0"}


@pytest.mark.parametrize("node, modules, expected", [
    ("/conv1/Conv", RESNET, "conv1"),
    ("/layer1/layer1.0/conv1/Conv", RESNET, "layer1.0.conv1"),
    ("/layer1/layer1.1/conv1/Conv", RESNET, "layer1.1.conv1"),
    ("/layer2/layer2.0/downsample/downsample.0/Conv", RESNET, "layer2.0.downsample.0"),
    ("/fc/Gemm", RESNET, "fc"),
    ("/encoder/encoder/layer.0/attention/self/query/MatMul", BERT,
     "encoder.encoder.layer.0.attention.self.query"),
    ("/encoder/encoder/layer.0/attention/output/dense/MatMul", BERT,
     "encoder.encoder.layer.0.attention.output.dense"),
    ("/encoder/encoder/layer.11/output/dense/MatMul_1", BERT,
     "encoder.encoder.layer.11.output.dense"),
    ("/head/Gemm", BERT, "head"),
    ("/_blocks.3/_depthwise_conv/Conv", EFFNET, "_blocks.3._depthwise_conv"),
    ("/_blocks.13/_expand_conv/Conv", EFFNET, "_blocks.13._expand_conv"),
    ("/probe/probe.0/Gemm", EFFNET, "probe.0"),
    ("/_fc/Gemm", EFFNET, "_fc"),
    ("/Conv", RESNET, None),  # no module scope
    ("/layer9/conv1/Conv", RESNET, None),
    ("/encoder/encoder/layer.7/output/dense/MatMul", BERT, None),
])
def test_module_for_node(node, modules, expected):
    assert module_for_node(node, modules) == expected


def test_module_for_node_prefers_the_direct_child_and_falls_back_to_a_unique_last_scope():
    mods = {"a", "a.b", "a.x", "a.x.b"}
    assert module_for_node("/a/b/Conv", mods) == "a.b"
    # a module calling a module it does not own: the walk fails, the last scope is unique
    assert module_for_node("/a/x/b/y/Conv", mods | {"q.y"}) == "q.y"
    assert module_for_node("/a/zz/Conv", mods) is None


# -------------------------------------------------------------------------------------------
# fake quantization


def _w(*shape, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(*shape, generator=g)


@needs_torch
@pytest.mark.parametrize("precision", [P.INT8, P.INT8_DYNAMIC])
def test_int8_is_symmetric_per_output_channel(precision):
    w = _w(8, 4, 3, 3)
    w[3] *= 50  # channels are independent: a large channel leaves the others' error alone
    q = fake_quantize(w, precision, "Conv")
    assert q.shape == w.shape and q.dtype == w.dtype
    scale = w.abs().amax(dim=(1, 2, 3)) / 127
    steps = q / scale[:, None, None, None]
    assert torch.allclose(steps, steps.round(), atol=1e-3)
    assert steps.abs().max() <= 127 + 1e-3
    err = (q - w).abs().amax(dim=(1, 2, 3))
    assert torch.all(err <= scale / 2 * (1 + 1e-5))
    # the largest weight of each channel is kept
    idx = w.abs().reshape(8, -1).argmax(1)
    assert torch.allclose(q.reshape(8, -1).gather(1, idx[:, None]),
                          w.reshape(8, -1).gather(1, idx[:, None]), rtol=1e-6)
    lin = _w(5, 7)
    ql = fake_quantize(lin, precision, "MatMul")
    assert torch.all((ql - lin).abs() <= lin.abs().amax(1, keepdim=True) / 254 * (1 + 1e-5))


@needs_torch
def test_int8_dynamic_matches_the_graph_pass():
    wt = _w(6, 20)  # torch Linear [out, in]; ONNX MatMul weight is its transpose
    model = _matmul_model(wt.numpy().T)
    out = passes.dynamic_int8(model, ["mm"])
    inits = {i.name: numpy_helper.to_array(i) for i in out.graph.initializer}
    deq = inits["w_quantized"].astype(np.float32) * inits["w_scale"]
    np.testing.assert_allclose(fake_quantize(wt, P.INT8_DYNAMIC, "MatMul").numpy().T, deq,
                               rtol=1e-6, atol=1e-7)


@needs_torch
def test_int4_matches_onnx_runtime_blockwise_quantizer():
    """K = 70: two full blocks of 32 and a padded one of 6; both the MatMulNBits kernel and the
    block-wise DequantizeLinear form give exactly the fake-quantized weight."""
    import onnxruntime as ort

    k, n = 70, 5
    wt = _w(n, k, seed=1)
    wt[2, 40] = -9.0  # a block whose extreme is negative
    model = _matmul_model(wt.numpy().T, rows=k)
    want = fake_quantize(wt, P.INT4_WEIGHT, "MatMul").numpy().T
    for qdq in (False, True):
        q = passes.int4_weight_only(model, ["mm"], qdq=qdq)
        got = ort.InferenceSession(q.SerializeToString(), providers=["CPUExecutionProvider"]).run(
            None, {"x": np.eye(k, dtype=np.float32)})[0]
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
    # 16 levels per block, the extreme element exact, blocks along K independent
    q = fake_quantize(wt, P.INT4_WEIGHT, "MatMul")
    for row in range(n):
        for start in range(0, k, 32):
            blk, qb = wt[row, start:start + 32], q[row, start:start + 32]
            assert len(torch.unique(qb)) <= 16
            i = blk.abs().argmax()
            assert qb[i] == pytest.approx(float(blk[i]), rel=1e-6)
            scale = blk.abs().max() / 8
            inside = blk.abs() <= 7 * scale
            assert torch.all((qb - blk).abs()[inside] <= scale / 2 * (1 + 1e-5))


@needs_torch
def test_int4_conv_blocks_the_flattened_input_dims():
    w = _w(4, 8, 3, 3)  # K = 72
    q = fake_quantize(w, P.INT4_WEIGHT, "Conv")
    ref = fake_quantize(w.reshape(4, 72), P.INT4_WEIGHT, "MatMul").reshape(w.shape)
    assert torch.equal(q, ref)


@needs_torch
def test_fp8_matches_the_graph_pass():
    import ml_dtypes

    from trt_mpq.calib import CalibMethod, Ranges

    wt = _w(6, 20, seed=2) * torch.logspace(-3, 1, 20)  # several binades
    model = _matmul_model(wt.numpy().T, opset=19)
    out = passes.fp8_qdq(model, ["mm"], Ranges(CalibMethod.MINMAX, {}))
    inits = {i.name: i for i in out.graph.initializer}
    raw = np.frombuffer(inits["w_fp8"].raw_data, np.uint8).view(ml_dtypes.float8_e4m3fn)
    deq = raw.astype(np.float32).reshape(20, 6) * numpy_helper.to_array(inits["w_fp8_scale"])
    q = fake_quantize(wt, P.FP8, "MatMul")
    np.testing.assert_allclose(q.numpy().T, deq, rtol=1e-6, atol=1e-9)
    assert not torch.equal(q, wt)
    # per output channel: each row's largest magnitude is 448 * scale, kept exactly
    assert torch.allclose(q.abs().amax(1), wt.abs().amax(1), rtol=1e-6)
    assert torch.all((q - wt).abs() <= wt.abs() * 2 ** -4 + wt.abs().amax(1, keepdim=True) / 448
                     * 2 ** -9)


@needs_torch
def test_fp16_and_fp32():
    w = _w(3, 5) * 1e-3
    assert torch.equal(fake_quantize(w, P.FP16, "Gemm"), w.half().float())
    assert fake_quantize(w, P.FP32, "Gemm") is w
    # as onnxruntime's float16 converter: nonzero stays nonzero, finite stays finite
    extreme = torch.tensor([[1e-9, -1e-9, 70000.0, -1e6, 0.0]])
    got = fake_quantize(extreme, P.FP16).tolist()[0]
    assert got[0] > 0 and got[1] < 0 and got[2] == 65504.0 and got[3] == -65504.0 and got[4] == 0


@needs_torch
def test_all_zero_channel_stays_zero():
    w = torch.zeros(2, 40)
    for p in P:
        assert torch.equal(fake_quantize(w, p, "MatMul"), w), p


def _matmul_model(w: np.ndarray, rows: int = 2, opset: int = 21) -> onnx.ModelProto:
    k, n = w.shape
    g = helper.make_graph(
        [helper.make_node("MatMul", ["x", "w"], ["y"], name="mm")], "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [rows, k])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [rows, n])],
        [numpy_helper.from_array(w.astype(np.float32), "w")])
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", opset)])


# -------------------------------------------------------------------------------------------
# ops -> modules


def _op(name, op_type, shape):
    return GroupOp(name=name, op_type=op_type, input="x", output="y", weight=name + ".w",
                   bias=None, weight_shape=tuple(shape), output_shape=(), params=0, macs=0)


def _net():
    class Conv1D(torch.nn.Module):
        """transformers' GPT-2 Conv1D: weight stored [in, out]."""

        def __init__(self, n_in, n_out):
            super().__init__()
            self.weight = torch.nn.Parameter(torch.randn(n_in, n_out))

        def forward(self, x):
            return x @ self.weight

    net = torch.nn.Module()
    net.conv = torch.nn.Conv2d(3, 8, 3)
    net.proj = torch.nn.Linear(8, 6)
    net.c1d = Conv1D(6, 5)
    net.fc = torch.nn.Linear(5, 2)
    return net


@needs_torch
def test_map_groups_and_weight_layouts():
    net = _net()
    groups = [Group("/conv/Conv", (_op("/conv/Conv", "Conv", (8, 3, 3, 3)),)),
              Group("/proj/MatMul", (_op("/proj/MatMul", "MatMul", (8, 6)),)),
              Group("/c1d/MatMul", (_op("/c1d/MatMul", "MatMul", (6, 5)),)),
              Group("/fc/Gemm", (_op("/fc/Gemm", "Gemm", (2, 5)),))]
    mods = map_groups(groups, net)
    assert mods == {"/conv/Conv": net.conv, "/proj/MatMul": net.proj, "/c1d/MatMul": net.c1d,
                    "/fc/Gemm": net.fc}
    # the delta has the module's layout and quantizes per ONNX output channel
    d = weight_delta(net.c1d, groups[2].ops[0], P.INT8)
    assert d.shape == (6, 5)
    expected = fake_quantize(net.c1d.weight.detach().t(), P.INT8, "MatMul").t() - net.c1d.weight
    assert torch.allclose(d, expected.detach())
    assert weight_delta(net.proj, groups[1].ops[0], P.INT8).shape == (6, 8)


@needs_torch
def test_map_groups_names_the_unmapped_ops():
    net = _net()
    groups = [Group("/conv/Conv", (_op("/conv/Conv", "Conv", (8, 3, 3, 3)),)),
              Group("/proj/MatMul", (_op("/proj/MatMul", "MatMul", (8, 7)),)),  # wrong shape
              Group("/nothing/Conv", (_op("/nothing/Conv", "Conv", (1, 1, 1, 1)),))]
    with pytest.raises(ConfigError, match=r"2 op\(s\).*/proj/MatMul.*\(8, 7\).*/nothing/Conv"
                       r".*--torch package.module:make_model"):
        map_groups(groups, net)


# -------------------------------------------------------------------------------------------
# loading


@needs_torch
def test_load_twin(tmp_path, monkeypatch):
    (tmp_path / "twin_mod_for_test.py").write_text(textwrap.dedent("""
        import torch
        def make_model():
            return torch.nn.Linear(2, 2).train()
        def make_zoo(cache_dir):
            m = torch.nn.Linear(2, 2).train()
            m.seen = cache_dir
            return m
        def not_a_module():
            return 3
        value = 5
    """))
    monkeypatch.syspath_prepend(str(tmp_path))
    m = load_twin("twin_mod_for_test:make_model", tmp_path)()
    assert isinstance(m, torch.nn.Linear) and not m.training
    z = load_twin("twin_mod_for_test:make_zoo", tmp_path)()
    assert z.seen == tmp_path and not z.training
    f = load_twin("twin_mod_for_test:make_model")
    assert f() is not f()  # a fresh module per call
    with pytest.raises(ConfigError, match="package.module:make_model"):
        load_twin("twin_mod_for_test.make_model")
    with pytest.raises(TaskError, match="cannot find module 'no_such_twin_module'"):
        load_twin("no_such_twin_module:make")
    with pytest.raises(TaskError, match="no function 'value'"):
        load_twin("twin_mod_for_test:value")
    with pytest.raises(TaskError, match="not a torch.nn.Module"):
        load_twin("twin_mod_for_test:not_a_module")()


def test_modules_import_without_torch():
    code = ("import sys; sys.modules['torch'] = None\n"
            "import trt_mpq.sensitivity.torch_twin as t, trt_mpq.sensitivity.hessian as h\n"
            "assert t.module_for_node('/fc/Gemm', {'fc'}) == 'fc'\n"
            "assert h.HessianTrace.name == 'hessian' and h.Fisher.name == 'fisher'\n")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
