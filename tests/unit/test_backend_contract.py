"""One contract, run against every registered backend. A backend builds an artifact file and
fills a census that matches the plan; where this machine can run its artifacts, it runs outputs
close to the reference and times runs. TensorRT-RTX builds engines here without a GPU (its run
and timing checks skip); TensorRT itself needs NVIDIA's container (skipped where absent)."""

import importlib.util
import time

import models
import numpy as np
import onnx
import pytest
from conftest import run_ort

from trt_mpq.backends import BACKENDS, Census, get_backend
from trt_mpq.errors import BuildError, ConfigError
from trt_mpq.plan import Plan
from trt_mpq.plan import Precision as P
from trt_mpq.qdq import BASELINE, default_low_precision, materialize

#: how each backend is created here (no GPU: TensorRT-RTX builds for a chosen target)
SETTINGS = {"ort-cpu": {"threads": 1}, "tensorrt": {},
            "tensorrt-rtx": {"compute_capabilities": ("sm86",)}}
MODULES = {"tensorrt": "tensorrt", "tensorrt-rtx": "tensorrt_rtx"}


def test_every_registered_backend_is_covered():
    assert set(SETTINGS) == set(BACKENDS)


@pytest.fixture(params=list(BACKENDS))
def backend(request):
    module = MODULES.get(request.param)
    if module and importlib.util.find_spec(module) is None:
        pytest.skip(f"{module} is not installed")
    return get_backend(request.param, **SETTINGS[request.param])


@pytest.fixture()
def ort():
    return get_backend("ort-cpu", threads=1)


def _can_run(backend) -> bool:
    try:
        backend.check_can_run()
    except ConfigError:
        return False
    return True


def _plans(groups, backend):
    names = [g.name for g in groups]
    low = {g.name: default_low_precision(g, backend.dialect) for g in groups}
    base = BASELINE[backend.dialect]
    return {
        "baseline": Plan.uniform(names, base),
        "low": Plan.of(low),
        "mixed": Plan.of({n: (low[n] if i % 2 == 0 else base) for i, n in enumerate(names)}),
    }


@pytest.mark.parametrize("which", ["cnn", "transformer"])
def test_build_census_run_time(backend, which, prepared_cnn, prepared_transformer, cnn_ranges,
                               transformer_ranges, tmp_path):
    _, model, groups = prepared_cnn if which == "cnn" else prepared_transformer
    ranges = cnn_ranges if which == "cnn" else transformer_ranges
    x = models.cnn_inputs(8) if which == "cnn" else models.transformer_inputs(8)
    feed = {"input": x}
    runs = _can_run(backend)
    for name, plan in _plans(groups, backend).items():
        graph = materialize(model, groups, plan, ranges, backend.dialect)
        artifact = backend.build(graph, tmp_path / name, groups, feed, max_batch=8)
        assert artifact.path.is_file() and artifact.build_s >= 0
        assert artifact.backend == backend.name
        assert isinstance(artifact.census, Census)
        assert artifact.census.mismatches(plan) == [], (name, artifact.census.executed)
        if not runs:
            continue
        ref = run_ort(graph, feed)[0]
        tol = 1e-4 if backend.name == "ort-cpu" else 5e-2  # GPU kernels, FP16 accumulation
        with backend.open(artifact) as runner:
            out = runner.run(feed)
            assert list(out) == list(runner.output_names)
            np.testing.assert_allclose(out[runner.output_names[0]], ref, rtol=tol, atol=tol)
            t0 = time.perf_counter()
            took = runner.time_once(feed)
            wall = time.perf_counter() - t0
            # seconds, of this one run: positive and no more than the call's own wall time
            assert 0 < took <= wall + 1e-4, (took, wall)
    if not runs:
        pytest.skip(f"built and censused; {backend.name} cannot run its artifacts here")


def test_census_names_integer_kernels(ort, prepared_cnn, cnn_ranges, tmp_path):
    _, model, groups = prepared_cnn
    plan = Plan.uniform([g.name for g in groups], P.INT8)
    a = ort.build(materialize(model, groups, plan, cnn_ranges, ort.dialect), tmp_path,
                  groups, {"input": models.cnn_inputs(2)})
    assert set(a.census.executed.values()) == {"int8"}
    assert a.census.kernels.get("QLinearConv", 0) == 4  # conv0, conv_a, conv_b, conv2
    assert "Conv" not in a.census.kernels


def test_census_flags_what_did_not_run_as_planned(ort, prepared_cnn, cnn_ranges, tmp_path):
    """ONNX Runtime's CPU provider has no FP16 Conv/Gemm kernels on x86: it inserts casts and
    runs them in FP32. The census must say so, not accept the plan."""
    _, model, groups = prepared_cnn
    plan = Plan.uniform([g.name for g in groups], P.FP16)
    a = ort.build(materialize(model, groups, plan, cnn_ranges, ort.dialect), tmp_path,
                  groups, {"input": models.cnn_inputs(2)})
    bad = a.census.mismatches(plan)
    if not bad:
        pytest.skip("this CPU ran FP16 kernels")
    assert {(p, x) for _, p, x in bad} == {("fp16", "fp32")}


def test_unloadable_graph_is_a_build_error(backend, prepared_cnn, tmp_path):
    _, model, groups = prepared_cnn
    broken = onnx.ModelProto()
    broken.CopyFrom(model)
    broken.graph.node[0].op_type = "NoSuchOp"
    with pytest.raises(BuildError):
        backend.build(broken, tmp_path, groups, {"input": models.cnn_inputs(1)})


def test_describe_records_settings(backend):
    """What determines the measurements is recorded: the backend and its runtime's version."""
    import json

    d = backend.describe()
    assert d["backend"] == backend.name
    assert any(k in d for k in ("onnxruntime", "version")), d
    json.dumps(d)  # recorded in config.json and the store's context
    if "intra_op_threads" in d:
        assert d["intra_op_threads"] == 1


def test_census_follows_layout_transforms_that_rename_weights(tmp_path):
    """Regression: EfficientNet's convs with channel counts off the NCHWc block had weight and
    bias renamed by ONNX Runtime's layout transform, and the census said "unknown" (so every
    plan was a precision mismatch). Such kernels are found by the tensor they produce."""
    from trt_mpq.backends.ort import read_census
    from trt_mpq.calib import CalibConfig, calibrate
    from trt_mpq.model import find_groups

    path = models.inverted_residual(tmp_path / "ir.onnx")
    model = onnx.load(str(path))
    groups = find_groups(model)
    x = np.random.default_rng(0).normal(0, 1, (2, 16, 8, 8)).astype(np.float32)
    backend = get_backend("ort-cpu", threads=1)
    ranges = calibrate(path, [{"x": x}], CalibConfig(), progress=False)
    for plan in (Plan.uniform([g.name for g in groups], P.FP32),
                 Plan.of({"expand": P.FP32, "project": P.INT8}),
                 Plan.of({"expand": P.INT8, "project": P.FP32})):
        graph = materialize(model, groups, plan, ranges, backend.dialect)
        a = backend.build(graph, tmp_path / plan.digest, groups, {"x": x})
        assert a.census.mismatches(plan) == [], a.census.executed
    # without the materialized graph's tensor names, the renamed kernel cannot be attributed
    optimized = onnx.load(str(tmp_path / Plan.uniform(["expand", "project"], P.FP32).digest
                              / "model.optimized.onnx"))
    renamed = [n for n in optimized.graph.node if n.name.endswith("_nchwc")
               and not {"w0", "b0"} & set(n.input)]
    if not renamed:
        pytest.skip("this CPU's NCHWc block size did not rename the weights")
    assert read_census(optimized, [], groups).executed["expand"] == "unknown"


def test_census_is_not_fooled_by_a_bias_other_layers_share(tmp_path):
    """Regression: a randomly initialised BERT export has all-zero biases, deduplicated into one
    initializer that every layer reads; the census gave that bias's group (a Gemm kept FP32)
    the int8 kernels of every other layer that read it: "planned fp32, ran mixed"."""
    from onnx import TensorProto, helper, numpy_helper

    from trt_mpq.calib import CalibConfig, calibrate
    from trt_mpq.model import find_groups

    rng = np.random.default_rng(0)
    inits = [numpy_helper.from_array(rng.normal(0, 0.3, (8, 8)).astype(np.float32), n)
             for n in ("w1", "w2")]
    inits.append(numpy_helper.from_array(np.zeros(8, np.float32), "zero_bias"))
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "w1"], ["h"], name="mm"),
         helper.make_node("Add", ["h", "zero_bias"], ["hb"], name="add"),
         helper.make_node("Relu", ["hb"], ["r"], name="relu"),
         helper.make_node("Gemm", ["r", "w2", "zero_bias"], ["y"], name="fc", transB=1)],
        "shared_bias", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 8])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n", 8])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    path = tmp_path / "shared.onnx"
    onnx.save(model, str(path))
    groups = find_groups(model)
    assert [g.name for g in groups] == ["mm", "fc"] and groups[1].ops[0].bias == "zero_bias"
    x = rng.normal(0, 1, (4, 8)).astype(np.float32)
    backend = get_backend("ort-cpu", threads=1)
    ranges = calibrate(path, [{"x": x}], CalibConfig(), progress=False)
    for plan in (Plan.of({"mm": P.INT8_DYNAMIC, "fc": P.FP32}),
                 Plan.of({"mm": P.FP32, "fc": P.INT8}),
                 Plan.of({"mm": P.INT8_DYNAMIC, "fc": P.INT8})):
        graph = materialize(model, groups, plan, ranges, backend.dialect)
        a = backend.build(graph, tmp_path / plan.digest, groups, {"x": x})
        assert a.census.mismatches(plan) == [], (plan.describe(), a.census.executed)
