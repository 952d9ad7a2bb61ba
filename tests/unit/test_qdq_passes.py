"""The graph passes one by one: topological sort, the passes that edit the graph themselves
(dynamic int8, FP8) and the boundary to the libraries the other passes drive."""

import models
import numpy as np
import onnx
import pytest
from conftest import run_ort
from onnx import TensorProto, helper, numpy_helper

from trt_mpq.calib import CalibMethod, Ranges
from trt_mpq.errors import MaterializeError
from trt_mpq.qdq import passes


def _vi(name):
    return helper.make_tensor_value_info(name, TensorProto.FLOAT, [2, 4])


def _model(nodes, inputs=("x",), outputs=("y",)):
    graph = helper.make_graph(nodes, "g", [_vi(i) for i in inputs], [_vi(o) for o in outputs])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17),
                                                    helper.make_opsetid("com.microsoft", 1)])
    model.ir_version = 8
    model.producer_name = "trt-mpq-test"
    model.metadata_props.add(key="k", value="v")
    return model


def _relu(name, x, y):
    return helper.make_node("Relu", [x], [y], name=name)


def _diamond():
    """x -> a -> b -> d -> y and x -> c -> d: a valid order that is not by depth (c after b)."""
    return [_relu("a", "x", "ta"), _relu("b", "ta", "tb"), _relu("c", "x", "tc"),
            helper.make_node("Add", ["tb", "tc"], ["td"], name="d"), _relu("e", "td", "y")]


def _is_topological(model):
    ready = {i.name for i in model.graph.input} | passes.initializer_names(model) | {""}
    for node in model.graph.node:
        if not ready.issuperset(node.input):
            return False
        ready.update(node.output)
    return True


def _names(model):
    return [n.name for n in model.graph.node]


def _unused_initializers(model):
    used = {i for n in model.graph.node for i in n.input} | {o.name for o in model.graph.output}
    return sorted(passes.initializer_names(model) - used)


def _same_envelope(a, b):
    """Everything but the nodes, initializers and value_info is kept."""
    assert a.ir_version == b.ir_version and a.producer_name == b.producer_name
    assert [o.SerializeToString() for o in a.opset_import] == \
        [o.SerializeToString() for o in b.opset_import]
    assert [(p.key, p.value) for p in a.metadata_props] == \
        [(p.key, p.value) for p in b.metadata_props]
    for field in ("input", "output"):
        assert [v.SerializeToString() for v in getattr(a.graph, field)] == \
            [v.SerializeToString() for v in getattr(b.graph, field)]


# -- topo_sort

def test_topo_sort_keeps_a_valid_order_as_it_is():
    model = _model(_diamond())
    assert passes.topo_sort(model) is model
    assert _names(model) == ["a", "b", "c", "d", "e"]


def test_topo_sort_orders_a_shuffled_graph_deterministically():
    nodes = _diamond()
    shuffled = _model([nodes[i] for i in (4, 3, 2, 1, 0)])
    before = shuffled.SerializeToString()
    out = passes.topo_sort(shuffled)
    assert shuffled.SerializeToString() == before  # the input is left alone
    assert _is_topological(out)
    assert sorted(_names(out)) == ["a", "b", "c", "d", "e"]
    # every node is the same node, only the order changed
    by_name = {n.name: n.SerializeToString() for n in shuffled.graph.node}
    assert all(n.SerializeToString() == by_name[n.name] for n in out.graph.node)
    assert passes.topo_sort(shuffled).SerializeToString() == out.SerializeToString()
    _same_envelope(out, shuffled)
    x = np.random.default_rng(0).normal(size=(2, 4)).astype(np.float32)
    np.testing.assert_array_equal(run_ort(out, {"x": x})[0],
                                  run_ort(_model(nodes), {"x": x})[0])


def test_topo_sort_a_long_reversed_chain():
    n = 3000  # deeper than Python's default recursion limit
    chain = [_relu(f"n{i}", f"t{i}", f"t{i + 1}" if i < n - 1 else "y") for i in range(n)]
    out = passes.topo_sort(_model(chain[::-1], inputs=("t0",)))
    assert _names(out) == [f"n{i}" for i in range(n)]


def test_topo_sort_refuses_a_cycle_and_a_missing_input():
    cycle = _model([_relu("a", "tb", "ta"), _relu("b", "ta", "tb"),
                    helper.make_node("Add", ["x", "tb"], ["y"], name="out")])
    with pytest.raises(ValueError, match="cycle"):
        passes.topo_sort(cycle)
    missing = _model([_relu("late", "t", "y"), _relu("a", "nowhere", "t")])
    with pytest.raises(ValueError, match="nowhere"):
        passes.topo_sort(missing)


# -- dynamic int8 and FP8: the passes written with onnx-graphsurgeon

def _matmul_ops(groups):
    return [op for g in groups if g.op_type == "MatMul" for op in g.op_names]


def _with_metadata(model):
    out = passes.copy_model(model)
    out.metadata_props.add(key="trt_mpq.test", value="{}")
    return out


def test_dynamic_int8_keeps_names_and_drops_the_float_weights(prepared_transformer):
    _, prepared, groups = prepared_transformer
    model = _with_metadata(prepared)
    before = model.SerializeToString()
    ops = _matmul_ops(groups)
    out = passes.dynamic_int8(model, ops)
    assert model.SerializeToString() == before
    onnx.checker.check_model(out, full_check=True)
    assert _is_topological(out)
    assert _unused_initializers(out) == []
    types = {n.name: n.op_type for n in out.graph.node}
    assert set(_names(model)) <= set(types)  # every node keeps its name
    assert all(types[op] == "MatMulInteger" for op in ops)
    assert {n.name: n.op_type for n in model.graph.node if n.name not in ops}.items() \
        <= types.items()
    weights = {n.input[1] for n in model.graph.node if n.name in ops}
    assert not weights & passes.initializer_names(out)
    _same_envelope(out, model)
    x = models.transformer_inputs(8, seed=3)
    ref, got = run_ort(model, {"input": x})[0], run_ort(out, {"input": x})[0]
    assert np.linalg.norm(got - ref) / np.linalg.norm(ref) < 0.08


def test_dynamic_int8_numerics():
    """Per output column: scale = max|w| / 127, weights rounded half to even and clipped."""
    w = np.array([[0.5, -2.0, 0.0], [-1.0, 1.0, 0.0], [0.25, 0.3, 0.0]], np.float32)
    model = helper.make_model(helper.make_graph(
        [helper.make_node("MatMul", ["x", "w"], ["y"], name="mm")], "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 3])],
        [numpy_helper.from_array(w, "w")]), opset_imports=[helper.make_opsetid("", 17)])
    out = passes.dynamic_int8(model, ["mm"])
    inits = {i.name: numpy_helper.to_array(i) for i in out.graph.initializer}
    scale = np.maximum(np.abs(w).max(axis=0), 1e-12) / 127.0
    np.testing.assert_array_equal(inits["w_scale"], scale.astype(np.float32))
    np.testing.assert_array_equal(inits["w_quantized"], np.rint(w / scale).astype(np.int8))
    assert inits["w_zero_point"].dtype == np.int8 and not inits["w_zero_point"].any()
    assert set(inits) == {"w_quantized", "w_scale", "w_zero_point"}


def test_dynamic_int8_refuses_a_gemm(prepared_cnn):
    _, model, _ = prepared_cnn
    with pytest.raises(MaterializeError, match="MatMul.*not Gemm 'fc'"):
        passes.dynamic_int8(model, ["fc"])


@pytest.mark.parametrize("which", ["cnn", "transformer"])
def test_fp8_keeps_names_and_drops_the_float_weights(which, prepared_cnn, cnn_ranges,
                                                     prepared_transformer, transformer_ranges):
    _, prepared, groups = prepared_cnn if which == "cnn" else prepared_transformer
    ranges = cnn_ranges if which == "cnn" else transformer_ranges
    model = _with_metadata(passes.ensure_opset(passes.copy_model(prepared), 19))
    before = model.SerializeToString()
    ops = [op for g in groups for op in g.op_names]
    out = passes.fp8_qdq(model, ops, ranges)
    assert model.SerializeToString() == before
    onnx.checker.check_model(out, full_check=True)
    assert _is_topological(out)
    assert _unused_initializers(out) == []
    assert _names(model) == [n for n in _names(out) if n in set(_names(model))]
    producer = {o: n for n in out.graph.node for o in n.output}
    inits = {i.name: i for i in out.graph.initializer}
    for op in ops:
        node = next(n for n in out.graph.node if n.name == op)
        assert producer[node.input[0]].op_type == "DequantizeLinear"
        wdq = producer[node.input[1]]
        assert inits[wdq.input[0]].data_type == TensorProto.FLOAT8E4M3FN
    weights = {n.input[1] for n in model.graph.node if n.name in set(ops)}
    assert not weights & set(inits)
    _same_envelope(out, model)


def test_fp8_needs_opset_19(prepared_cnn, cnn_ranges):
    _, model, _ = prepared_cnn  # opset 17
    with pytest.raises(MaterializeError, match="opset >= 19"):
        passes.fp8_qdq(model, ["conv0"], cnn_ranges)


def test_int4_keeps_the_node_names(prepared_transformer):
    _, model, _ = prepared_transformer
    for qdq, op_type in ((False, "MatMulNBits"), (True, "MatMul")):
        out = passes.int4_weight_only(passes.ensure_opset(model, 21), ["q_proj", "ffn_out"],
                                      qdq=qdq)
        types = {n.name: n.op_type for n in out.graph.node}
        assert types["q_proj"] == types["ffn_out"] == op_type
        assert set(_names(model)) <= set(types)


# -- the boundary to third-party code

def test_a_quantizer_that_refuses_the_graph_fails_as_materialize_error(prepared_cnn):
    _, model, _ = prepared_cnn
    no_ranges = Ranges(CalibMethod.MINMAX, {})  # nothing calibrated: ORT's quantizer refuses
    with pytest.raises(MaterializeError, match="ONNX Runtime's QDQ quantizer failed") as e:
        passes.static_qdq(model, ["conv0"], no_ranges, symmetric_activations=False,
                          quantize_bias=True, quantize_outputs=True)
    assert isinstance(e.value.__cause__, ValueError)


def test_int4_block_size_the_kernel_refuses_fails_as_materialize_error(prepared_transformer):
    _, model, _ = prepared_transformer
    with pytest.raises(MaterializeError, match="MatMulNBits quantizer failed"):
        passes.int4_weight_only(model, ["q_proj"], qdq=False, block_size=5)


def test_version_converter_failure_is_materialize_error(prepared_cnn):
    _, model, _ = prepared_cnn
    with pytest.raises(MaterializeError, match="version converter failed"):
        passes.ensure_opset(model, 999)


# -- what a materialized graph holds ------------------------------------------------------------

def _lowerable(dialect, group):
    from trt_mpq.qdq import BASELINE, SUPPORTED

    return [p for p in sorted(SUPPORTED[dialect], key=lambda p: p.value)
            if p is not BASELINE[dialect] and p.applies_to(group.op_type)]


@pytest.mark.parametrize("which", ["cnn", "transformer"])
@pytest.mark.parametrize("dialect", ["ort-cpu", "tensorrt", "tensorrt-weak"])
def test_a_materialized_graph_holds_no_weight_it_does_not_read(which, dialect, prepared_cnn,
                                                               cnn_ranges, prepared_transformer,
                                                               transformer_ranges):
    """Every precision of every dialect, uniform and mixed with the baseline: the weights a plan
    replaced leave the graph (so ONNX Runtime prints no "Removing initializer" warnings and the
    artifact is not bigger than it needs to be)."""
    from trt_mpq.plan import Plan
    from trt_mpq.qdq import BASELINE, Dialect, materialize

    d = Dialect.parse(dialect)
    _, model, groups = prepared_cnn if which == "cnn" else prepared_transformer
    ranges = cnn_ranges if which == "cnn" else transformer_ranges
    precisions = sorted({p for g in groups for p in _lowerable(d, g)}, key=lambda p: p.value)
    assert precisions
    for p in precisions:
        low = {g.name: p if p in _lowerable(d, g) else BASELINE[d] for g in groups}
        mixed = dict(low)
        mixed[groups[0].name] = BASELINE[d]
        for plan in (Plan.of(low), Plan.of(mixed)):
            out = materialize(model, groups, plan, ranges, d)
            assert _unused_initializers(out) == [], (p.value, plan.describe())
            size, fp32 = out.ByteSize(), model.ByteSize()
            assert size <= fp32 * 1.05, (p.value, size, fp32)
