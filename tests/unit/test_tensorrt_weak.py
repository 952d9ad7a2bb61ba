"""TensorRT 10 weak typing, checked against a fake network (TensorRT 10 is not installable here):
which layers get which precision, output type and dynamic range."""

import types

import pytest

from trt_mpq.backends.tensorrt.weak import apply_weak_typing, layer_owner
from trt_mpq.errors import BuildError
from trt_mpq.plan import Plan, Precision
from trt_mpq.qdq import Dialect, check_plan, materialize


class Tensor:
    def __init__(self, name, dtype="f32"):
        self.name, self.dtype, self.dynamic_range = name, dtype, None

    @property
    def range(self):
        return self.dynamic_range


class Layer:
    def __init__(self, name, inputs, outputs, type="op", weights=None):
        self.name, self._in, self._out = name, inputs, outputs
        self.type, self.weights = type, weights
        self.precision, self.out_types = None, {}
        self.num_inputs, self.num_outputs = len(inputs), len(outputs)

    def get_input(self, k):
        return self._in[k]

    def get_output(self, k):
        return self._out[k]

    def set_output_type(self, k, t):
        self.out_types[k] = t


class Network:
    def __init__(self, layers):
        self._layers = layers
        self.num_layers = len(layers)

    def get_layer(self, i):
        return self._layers[i]


class Config:
    def __init__(self):
        self.flags = set()

    def set_flag(self, f):
        self.flags.add(f)


FAKE_TRT = types.SimpleNamespace(
    float32="f32", float16="f16", int8="i8", int32="i32",
    BuilderFlag=types.SimpleNamespace(FP16="FP16", INT8="INT8",
                                      OBEY_PRECISION_CONSTRAINTS="OBEY"),
    LayerType=types.SimpleNamespace(CONSTANT="constant", SHUFFLE="shuffle"))


def test_layer_owner():
    ops = {"/conv1/Conv": "g1", "/fc/Gemm": "g2"}
    assert layer_owner("/conv1/Conv", ops) == "g1"
    assert layer_owner("/fc/Gemm_bias", ops) == "g2"
    assert layer_owner("/relu/Relu", ops) is None


def test_weak_typing_sets_precisions_and_ranges(prepared_cnn, cnn_ranges):
    _, model, groups = prepared_cnn
    plan = Plan.of({"conv0": Precision.INT8, "conv_a": Precision.FP32, "conv2": Precision.FP16,
                    "fc": Precision.INT8})
    annotated = materialize(model, groups, plan, cnn_ranges, Dialect.TENSORRT_WEAK)
    assert [n.name for n in annotated.graph.node] == [n.name for n in model.graph.node]
    x = Tensor("input")
    conv0 = Layer("conv0", [x], [Tensor("c0")])
    relu = Layer("relu0", [Tensor("c0")], [Tensor("r0")])
    conv_a = Layer("conv_a", [Tensor("r0")], [Tensor("ca")])
    shape = Layer("shape_of", [Tensor("r0")], [Tensor("s", dtype="i32")])
    f = Tensor("f")
    fc = Layer("fc", [f], [Tensor("logits")])
    conv_b = Layer("conv_b", [Tensor("r0")], [Tensor("cb")])
    conv2 = Layer("conv2", [], [Tensor("c2")])
    cfg = Config()
    chosen = apply_weak_typing(FAKE_TRT, Network([conv0, relu, conv_a, conv_b, shape, conv2, fc]),
                               cfg, annotated, groups)
    assert cfg.flags == {"FP16", "INT8", "OBEY"}
    assert conv0.precision == "i8" and conv0.out_types == {0: "f16"}
    a = cnn_ranges.amax("input")
    assert x.range == pytest.approx((-a, a))
    assert conv_a.precision == "f32" and conv_b.precision == "f32"  # one group
    assert conv2.precision == "f16" and relu.precision == "f16"
    assert shape.precision is None  # integer/shape layers keep their types
    assert fc.precision == "i8" and f.range is not None
    assert chosen["conv0"] == "int8" and "shape_of" not in chosen


def test_int8_matmul_weights_get_the_range_of_their_constant(prepared_transformer,
                                                            transformer_ranges):
    """TensorRT 10 has no fully connected layer: a MatMul reads its weights as a tensor from a
    constant layer (here through a transposing shuffle). Implicit INT8 needs that tensor's range
    too; without it OBEY_PRECISION_CONSTRAINTS fails the build or INT8 is not used."""
    import numpy as np

    _, model, groups = prepared_transformer
    names = [g.name for g in groups]
    plan = Plan.of({n: (Precision.INT8 if n == "ffn_in" else Precision.FP16) for n in names})
    annotated = materialize(model, groups, plan, transformer_ranges, Dialect.TENSORRT_WEAK)
    op = next(g for g in groups if g.name == "ffn_in").ops[0]
    w = np.random.default_rng(0).normal(0, 1, (32, 128)).astype(np.float32)
    const_out, shuffled = Tensor("w_const"), Tensor("w_t")
    const = Layer("w", [], [const_out], type="constant", weights=w)
    shuffle = Layer("w_shuffle", [const_out], [shuffled], type="shuffle")
    x = Tensor(op.input)
    matmul = Layer(op.name, [x, shuffled], [Tensor("y")])
    apply_weak_typing(FAKE_TRT, Network([const, shuffle, matmul]), Config(), annotated, groups)
    assert matmul.precision == "i8"
    a = float(np.abs(w).max())
    assert shuffled.range == pytest.approx((-a, a))
    assert x.range == pytest.approx((-transformer_ranges.amax(op.input),
                                     transformer_ranges.amax(op.input)))
    # an int8 layer reading a tensor with no calibrated range and no constant behind it
    stray = Layer(op.name, [Tensor("made_up")], [Tensor("z")])
    with pytest.raises(BuildError, match="no calibrated range and is not a constant"):
        apply_weak_typing(FAKE_TRT, Network([stray]), Config(), annotated, groups)


def test_weak_typing_refuses_graphs_without_annotations(prepared_cnn):
    _, model, groups = prepared_cnn
    with pytest.raises(BuildError, match="metadata"):
        apply_weak_typing(FAKE_TRT, Network([]), Config(), model, groups)


def test_weak_dialect_cannot_express_fp8(prepared_cnn):
    from trt_mpq.errors import PlanError

    _, _, groups = prepared_cnn
    with pytest.raises(PlanError, match="explicit Q/DQ"):
        check_plan(Plan.uniform([g.name for g in groups], Precision.FP8), groups,
                   Dialect.TENSORRT_WEAK)
