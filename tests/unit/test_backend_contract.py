"""One contract, run against every backend available here. A backend builds an artifact file,
fills a census that matches the plan, runs outputs close to the reference and times runs."""

import numpy as np
import onnx
import pytest

import models
from conftest import run_ort
from trt_mpq.backends import Census, get_backend
from trt_mpq.errors import BuildError
from trt_mpq.plan import Plan
from trt_mpq.plan import Precision as P
from trt_mpq.qdq import BASELINE, default_low_precision, materialize

BACKENDS = ["ort-cpu"]


@pytest.fixture(params=BACKENDS)
def backend(request):
    return get_backend(request.param, threads=1)


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
    for name, plan in _plans(groups, backend).items():
        graph = materialize(model, groups, plan, ranges, backend.dialect)
        artifact = backend.build(graph, tmp_path / name, groups, feed)
        assert artifact.path.is_file() and artifact.build_s >= 0
        assert isinstance(artifact.census, Census)
        assert artifact.census.mismatches(plan) == [], (name, artifact.census.executed)
        ref = run_ort(graph, feed)[0]
        with backend.open(artifact) as runner:
            out = runner.run(feed)
            assert list(out) == list(runner.output_names)
            np.testing.assert_allclose(out[runner.output_names[0]], ref, rtol=1e-4, atol=1e-4)
            assert runner.time_once(feed) > 0


def test_census_names_integer_kernels(backend, prepared_cnn, cnn_ranges, tmp_path):
    _, model, groups = prepared_cnn
    plan = Plan.uniform([g.name for g in groups], P.INT8)
    a = backend.build(materialize(model, groups, plan, cnn_ranges, backend.dialect), tmp_path,
                      groups, {"input": models.cnn_inputs(2)})
    assert set(a.census.executed.values()) == {"int8"}
    assert a.census.kernels.get("QLinearConv", 0) == 4  # conv0, conv_a, conv_b, conv2
    assert "Conv" not in a.census.kernels


def test_census_flags_what_did_not_run_as_planned(backend, prepared_cnn, cnn_ranges, tmp_path):
    """ONNX Runtime's CPU provider has no FP16 Conv/Gemm kernels on x86: it inserts casts and
    runs them in FP32. The census must say so, not accept the plan."""
    _, model, groups = prepared_cnn
    plan = Plan.uniform([g.name for g in groups], P.FP16)
    a = backend.build(materialize(model, groups, plan, cnn_ranges, backend.dialect), tmp_path,
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
    with pytest.raises(BuildError, match="could not create a session"):
        backend.build(broken, tmp_path, groups, {"input": models.cnn_inputs(1)})


def test_describe_records_settings(backend):
    d = backend.describe()
    assert d["backend"] == backend.name
    assert d["intra_op_threads"] == 1
