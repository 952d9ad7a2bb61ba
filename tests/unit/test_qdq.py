"""Materialized graphs, checked structurally (Q/DQ per group, types, checker), numerically
(close to FP32) and for purity. The kernel census is checked in test_backend_contract.py."""

import models
import numpy as np
import onnx
import pytest
from conftest import run_ort
from onnx import TensorProto, numpy_helper

from trt_mpq.errors import PlanError
from trt_mpq.plan import Plan
from trt_mpq.plan import Precision as P
from trt_mpq.qdq import Dialect, check_plan, default_low_precision, materialize


def _inits(m):
    return {i.name: i for i in m.graph.initializer}


def _producer(m):
    return {o: n for n in m.graph.node for o in n.output}


def _node(m, name):
    return next(n for n in m.graph.node if n.name == name)


def _rel_err(a, b):
    return float(np.linalg.norm(a - b) / np.linalg.norm(b))


def _plan(groups, **by_name):
    return Plan.of({g.name: by_name.get(g.name, P.FP32) for g in groups})


def test_ort_cpu_int8_structure_u8s8_int32_bias(prepared_cnn, cnn_ranges):
    _, model, groups = prepared_cnn
    plan = _plan(groups, conv_a=P.INT8, fc=P.INT8)
    q = materialize(model, groups, plan, cnn_ranges, Dialect.ORT_CPU)
    onnx.checker.check_model(q, full_check=True)
    inits, prod = _inits(q), _producer(q)
    for op in ("conv_a", "conv_b", "fc"):  # conv_b is in conv_a's group
        node = _node(q, op)
        wdq = prod[node.input[1]]
        assert wdq.op_type == "DequantizeLinear"
        assert inits[wdq.input[0]].data_type == TensorProto.INT8
        assert numpy_helper.to_array(inits[wdq.input[1]]).size > 1  # per-channel scales
        xdq = prod[node.input[0]]
        assert xdq.op_type == "DequantizeLinear"
        assert inits[xdq.input[2]].data_type == TensorProto.UINT8  # asymmetric activations
        bdq = prod[node.input[2]]
        assert inits[bdq.input[0]].data_type == TensorProto.INT32
    for op in ("conv0", "conv2"):  # FP32 groups keep their float weights
        node = _node(q, op)
        assert node.input[1] in inits and inits[node.input[1]].data_type == TensorProto.FLOAT


def test_ort_cpu_dynamic_and_int4_structure(prepared_transformer, transformer_ranges):
    _, model, groups = prepared_transformer
    first = groups[0].name
    plan = _plan(groups, **{first: P.INT8_DYNAMIC, "ffn_in": P.INT4_WEIGHT, "head": P.INT8})
    q = materialize(model, groups, plan, transformer_ranges, Dialect.ORT_CPU)
    onnx.checker.check_model(q)
    types = {n.name: n.op_type for n in q.graph.node}
    for op in groups[0].op_names:
        assert types[op] == "MatMulInteger"
    assert sum(1 for n in q.graph.node if n.op_type == "DynamicQuantizeLinear") == 1  # shared
    assert sum(1 for n in q.graph.node if n.op_type == "MatMulNBits") == 1
    assert types["out_proj"] == "MatMul" and types["ffn_out"] == "MatMul"


def test_tensorrt_dialect_symmetric_float_bias_fp16_elsewhere(prepared_cnn, cnn_ranges):
    _, model, groups = prepared_cnn
    plan = _plan(groups, conv0=P.INT8, conv_a=P.INT8, conv2=P.FP16, fc=P.FP32)
    q = materialize(model, groups, plan, cnn_ranges, Dialect.TENSORRT)
    onnx.checker.check_model(q, full_check=True)
    inits, prod = _inits(q), _producer(q)
    qdq = [n for n in q.graph.node if n.op_type in ("QuantizeLinear", "DequantizeLinear")]
    assert qdq
    for n in qdq:
        zp = inits[n.input[2]]
        assert zp.data_type == TensorProto.INT8
        assert not np.any(numpy_helper.to_array(zp))  # zero point 0
        assert inits[n.input[1]].data_type == TensorProto.FLOAT16  # scales follow FP16
    assert not any(i.data_type == TensorProto.INT32 for i in q.graph.initializer)
    for op in ("conv0", "conv_a", "conv_b"):
        node = _node(q, op)
        assert prod[node.input[0]].op_type == "DequantizeLinear"
        assert prod[node.input[1]].op_type == "DequantizeLinear"
        assert inits[node.input[2]].data_type == TensorProto.FLOAT16  # float bias
    assert inits[_node(q, "conv2").input[1]].data_type == TensorProto.FLOAT16
    assert inits[_node(q, "fc").input[1]].data_type == TensorProto.FLOAT
    assert q.graph.input[0].type.tensor_type.elem_type == TensorProto.FLOAT
    assert q.graph.output[0].type.tensor_type.elem_type == TensorProto.FLOAT


def test_tensorrt_fp8_and_int4(prepared_transformer, transformer_ranges):
    _, model, groups = prepared_transformer
    plan = _plan(groups, out_proj=P.FP8, ffn_out=P.INT4_WEIGHT)
    q = materialize(model, groups, plan, transformer_ranges, Dialect.TENSORRT)
    onnx.checker.check_model(q)
    inits, prod = _inits(q), _producer(q)
    w = prod[_node(q, "out_proj").input[1]]
    assert inits[w.input[0]].data_type == TensorProto.FLOAT8E4M3FN
    x = prod[_node(q, "out_proj").input[0]]
    assert x.op_type == "DequantizeLinear"
    w4 = prod[_node(q, "ffn_out").input[1]]
    assert w4.op_type == "DequantizeLinear" and inits[w4.input[0]].data_type == TensorProto.INT4


@pytest.mark.parametrize("dialect, low, tol", [
    (Dialect.ORT_CPU, P.INT8, 0.08), (Dialect.TENSORRT, P.INT8, 0.08),
    (Dialect.TENSORRT, P.FP8, 0.15), (Dialect.TENSORRT, P.FP16, 0.01),
    (Dialect.ORT_CPU, P.FP16, 0.01),
])
def test_cnn_numerics_close_to_fp32(prepared_cnn, cnn_ranges, dialect, low, tol):
    _, model, groups = prepared_cnn
    x = models.cnn_inputs(32, seed=7)
    ref = run_ort(model, {"input": x})[0]
    for plan in (Plan.uniform([g.name for g in groups], low),
                 _plan(groups, conv0=low, conv2=low)):
        out = run_ort(materialize(model, groups, plan, cnn_ranges, dialect), {"input": x})[0]
        assert out.dtype == np.float32
        assert _rel_err(out, ref) < tol, plan.describe()


@pytest.mark.parametrize("dialect, low, tol", [
    (Dialect.ORT_CPU, P.INT8_DYNAMIC, 0.08), (Dialect.ORT_CPU, P.INT8, 0.1),
    (Dialect.ORT_CPU, P.INT4_WEIGHT, 0.3), (Dialect.TENSORRT, P.INT8, 0.1),
    (Dialect.TENSORRT, P.INT4_WEIGHT, 0.3),
])
def test_transformer_numerics_close_to_fp32(prepared_transformer, transformer_ranges, dialect,
                                            low, tol):
    _, model, groups = prepared_transformer
    x = models.transformer_inputs(32, seed=7)
    ref = run_ort(model, {"input": x})[0]
    plan = _plan(groups, **{g.name: low for g in groups if g.op_type == "MatMul"})
    out = run_ort(materialize(model, groups, plan, transformer_ranges, dialect), {"input": x})[0]
    assert _rel_err(out, ref) < tol


def test_uniform_fp32_is_the_model_itself(prepared_cnn, cnn_ranges):
    _, model, groups = prepared_cnn
    for dialect in Dialect:
        q = materialize(model, groups, Plan.uniform([g.name for g in groups], P.FP32), cnn_ranges,
                        dialect)
        assert not any(n.op_type in ("QuantizeLinear", "DequantizeLinear", "Cast")
                       for n in q.graph.node)


def test_materialize_is_pure_and_never_recalibrates(prepared_cnn, cnn_ranges, monkeypatch):
    _, model, groups = prepared_cnn
    before = model.SerializeToString()
    import onnxruntime.quantization.calibrate as ort_calib

    import trt_mpq.calib as calib

    def boom(*a, **k):
        raise AssertionError("materialize must not calibrate")

    monkeypatch.setattr(calib, "calibrate", boom)
    monkeypatch.setattr(ort_calib, "create_calibrator", boom)
    plan = Plan.uniform([g.name for g in groups], P.INT8)
    a = materialize(model, groups, plan, cnn_ranges, Dialect.ORT_CPU)
    b = materialize(model, groups, plan, cnn_ranges, Dialect.ORT_CPU)
    assert model.SerializeToString() == before
    assert a.SerializeToString() == b.SerializeToString()  # deterministic


def test_plans_a_dialect_cannot_express_are_refused(prepared_cnn, prepared_transformer):
    _, _, cnn = prepared_cnn
    _, _, tr = prepared_transformer
    with pytest.raises(PlanError, match="fp8 is not available on ort-cpu"):
        check_plan(Plan.uniform([g.name for g in cnn], P.FP8), cnn, Dialect.ORT_CPU)
    with pytest.raises(PlanError, match="no dynamic int8"):
        check_plan(_plan(tr, **{tr[0].name: P.INT8_DYNAMIC}), tr, Dialect.TENSORRT)
    with pytest.raises(PlanError, match="MatMul groups only"):
        check_plan(_plan(cnn, conv0=P.INT4_WEIGHT), cnn, Dialect.ORT_CPU)
    with pytest.raises(PlanError, match="does not match the model's groups"):
        check_plan(Plan.of({"conv0": P.INT8}), cnn, Dialect.ORT_CPU)


def test_default_low_precision(prepared_cnn, prepared_transformer):
    _, _, cnn = prepared_cnn
    _, _, tr = prepared_transformer
    assert {default_low_precision(g, Dialect.ORT_CPU) for g in cnn} == {P.INT8}
    by = {g.name: default_low_precision(g, Dialect.ORT_CPU) for g in tr}
    assert by["head"] is P.INT8 and by["ffn_out"] is P.INT8_DYNAMIC
    assert {default_low_precision(g, Dialect.TENSORRT) for g in tr} == {P.INT8}
