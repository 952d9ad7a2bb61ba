import models
import numpy as np
import pytest
from conftest import run_ort

from trt_mpq.calib import CalibConfig, CalibMethod, Ranges, cache_key, calibrate
from trt_mpq.errors import CalibrationError, ConfigError


def _batches(n=32, bs=8):
    x = models.cnn_inputs(n)
    return x, [{"input": x[i:i + bs]} for i in range(0, n, bs)]


def test_minmax_ranges_match_the_data(prepared_cnn):
    x, batches = _batches()
    r = calibrate(prepared_cnn[0], batches, CalibConfig(), progress=False)
    lo, hi = r["input"]
    assert lo == pytest.approx(float(x.min()), rel=1e-6)
    assert hi == pytest.approx(float(x.max()), rel=1e-6)
    # every quantizable op's activation input has a range
    for g in prepared_cnn[2]:
        assert g.ops[0].input in r


@pytest.mark.parametrize("method", [CalibMethod.PERCENTILE, CalibMethod.ENTROPY])
def test_histogram_methods_give_ranges_within_minmax(prepared_cnn, method):
    x, batches = _batches()
    mm = calibrate(prepared_cnn[0], batches, CalibConfig(), progress=False)
    r = calibrate(prepared_cnn[0], batches, CalibConfig(method=method), progress=False)
    assert r.method is method
    for name, (lo, hi) in r.values.items():
        mlo, mhi = mm[name]
        assert mlo - 1e-5 <= lo <= hi <= mhi + 1e-5


def test_calibration_is_cached_and_reused(prepared_cnn, tmp_path, monkeypatch):
    _, batches = _batches()
    tag = cache_key("model", "data", CalibConfig())
    first = calibrate(prepared_cnn[0], batches, CalibConfig(), cache_dir=tmp_path, cache_tag=tag,
                      progress=False)
    import onnxruntime.quantization.calibrate as ort_calib

    def boom(*a, **k):
        raise AssertionError("recalibrated although a cache exists")

    monkeypatch.setattr(ort_calib, "create_calibrator", boom)
    again = calibrate(prepared_cnn[0], batches, CalibConfig(), cache_dir=tmp_path, cache_tag=tag)
    assert again.values == first.values and again.digest == first.digest


def test_ranges_json_round_trip(tmp_path):
    r = Ranges(CalibMethod.MINMAX, {"a": (-1.0, 2.0), "b": (0.0, 0.5)}, num_samples=3)
    r.save(tmp_path / "r.json")
    assert Ranges.load(tmp_path / "r.json") == r
    td = r.to_tensors_data()
    assert float(td.data["a"].range_value[1]) == 2.0
    (tmp_path / "bad.json").write_text('{"method": "minmax"}')
    with pytest.raises(CalibrationError, match="malformed"):
        Ranges.load(tmp_path / "bad.json")


def test_bad_calibration_input(prepared_cnn):
    with pytest.raises(CalibrationError, match="empty"):
        calibrate(prepared_cnn[0], [], CalibConfig())
    nan = {"input": np.full((4, 3, 16, 16), np.nan, np.float32)}
    with pytest.raises(CalibrationError, match="tensor '\\w+', which quantized layers read, "
                                               "holds NaN or Inf; the model's outputs also hold "
                                               "NaN"):
        calibrate(prepared_cnn[0], [nan], CalibConfig(), progress=False)


@pytest.mark.parametrize("kw", [{"num_samples": 0}, {"batch_size": 0}, {"percentile": 30.0},
                                {"num_bins": 4}])
def test_calib_config_is_validated(kw):
    with pytest.raises(ConfigError):
        CalibConfig(**kw)


# -- tensors that hold -inf: masked attention scores ----------------------------------------------

@pytest.mark.parametrize("constant_mask", [False, True])
@pytest.mark.parametrize("method", list(CalibMethod))
def test_masked_scores_holding_minus_inf_are_left_float(tmp_path, method, constant_mask):
    """The mask's -inf scores get no range (with every method) and no Q/DQ; the layers around
    them quantize and the quantized model's outputs stay finite and close to FP32's."""
    import onnx

    from trt_mpq.model import find_groups
    from trt_mpq.plan import Plan
    from trt_mpq.plan import Precision as P
    from trt_mpq.qdq import Dialect, calibration_tensors, materialize

    path = models.masked_attention(tmp_path / "attn.onnx", constant_mask)
    model = onnx.load(str(path))
    groups = find_groups(model)
    feed = models.masked_attention_inputs(32, constant_mask)
    batches = [{k: v[i:i + 8] for k, v in feed.items()} for i in range(0, 32, 8)]
    ranges = calibrate(path, batches, CalibConfig(method=method), progress=False,
                       tensors=calibration_tensors(model, groups),
                       required={op.input for g in groups for op in g.ops})
    assert "masked_scores" not in ranges
    assert {"x", "probs"} <= set(ranges.values) and ranges.method is method
    assert all(np.isfinite(v).all() for v in ranges.values.values())
    out = materialize(model, groups, Plan.uniform([g.name for g in groups], P.INT8), ranges,
                      Dialect.ORT_CPU)
    quantized = {n.input[0] for n in out.graph.node if n.op_type == "QuantizeLinear"}
    assert "masked_scores" not in quantized and {"x", "probs"} <= quantized
    ref, got = run_ort(model, feed)[0], run_ort(out, feed)[0]
    assert np.isfinite(got).all()
    assert np.linalg.norm(got - ref) / np.linalg.norm(ref) < 0.1


def test_a_layer_input_holding_inf_is_named_with_the_models_outputs_checked(tmp_path):
    """The masked scores feed a quantizable layer here: that cannot be quantized, and the error
    says which tensor and that the model's own outputs are finite."""
    import onnx
    from onnx import helper

    path = models.masked_attention(tmp_path / "attn.onnx")
    model = onnx.load(str(path))
    model.graph.node.append(helper.make_node("MatMul", ["masked_scores", "wv"], ["z"],
                                             name="mm_scores"))
    onnx.save(model, str(path))
    from trt_mpq.model import find_groups
    from trt_mpq.qdq import calibration_tensors

    groups = find_groups(model)
    feed = models.masked_attention_inputs(8)
    with pytest.raises(CalibrationError, match="tensor 'masked_scores', which quantized layers "
                                               "read, holds NaN or Inf; the model's outputs "
                                               "are finite"):
        calibrate(path, [feed], CalibConfig(), progress=False,
                  tensors=calibration_tensors(model, groups),
                  required={op.input for g in groups for op in g.ops})
