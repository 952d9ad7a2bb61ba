import numpy as np
import pytest

import models
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
    with pytest.raises(CalibrationError, match="non-finite"):
        calibrate(prepared_cnn[0], [nan], CalibConfig(), progress=False)


@pytest.mark.parametrize("kw", [{"num_samples": 0}, {"batch_size": 0}, {"percentile": 30.0},
                                {"num_bins": 4}])
def test_calib_config_is_validated(kw):
    with pytest.raises(ConfigError):
        CalibConfig(**kw)
