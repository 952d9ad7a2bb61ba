import numpy as np
import pytest

from trt_mpq.backends.base import Runner
from trt_mpq.errors import ConfigError, MeasurementError
from trt_mpq.measure import LatencyStats, MeasureConfig, compute_outputs, measure_interleaved
from trt_mpq.task import Split


class FakeRunner(Runner):
    def __init__(self, times, log, name, outputs=None):
        self._times = iter(times)
        self._log = log
        self.name = name
        self._outputs = outputs
        self.output_names = ("y",)

    def run(self, feed):
        x = feed["x"]
        return {"y": self._outputs(x) if self._outputs else x * 2}

    def time_once(self, feed):
        self._log.append(self.name)
        return next(self._times)


def test_latency_stats():
    s = LatencyStats.of([0.001, 0.002, 0.003, 0.004, 0.1])
    assert s.median_ms == pytest.approx(3.0)
    assert s.min_ms == pytest.approx(1.0) and s.n == 5
    assert s.p90_ms > s.median_ms > s.p10_ms
    assert LatencyStats.from_json_dict(s.to_json_dict()) == s


def test_interleaved_alternates_order_and_skips_warmup():
    log = []
    a = FakeRunner([0.001] * 2 + [0.002] * 6, log, "a")
    b = FakeRunner([0.005] * 2 + [0.010] * 6, log, "b")
    sa, sb = measure_interleaved([a, b], {"x": np.ones(2)},
                                 MeasureConfig(warmup=2, repeats=6, min_repeats=3, settle=0,
                                               per_turn=1))
    assert sa.median_ms == pytest.approx(2.0) and sb.median_ms == pytest.approx(10.0)
    assert sa.n == sb.n == 6
    timed = log[4:]
    assert timed[:4] == ["a", "b", "b", "a"]  # the first runner alternates each round


def test_measure_config_validation():
    with pytest.raises(ConfigError):
        MeasureConfig(repeats=2)
    with pytest.raises(ConfigError):
        MeasureConfig(repeats=10, min_repeats=11)


def test_compute_outputs_concatenates_and_rejects_nan():
    split = Split({"x": np.arange(10, dtype=np.float32)})
    r = FakeRunner([], [], "r")
    out = compute_outputs(r, split, 3, progress=False)
    np.testing.assert_array_equal(out["y"], np.arange(10) * 2)
    nan = FakeRunner([], [], "n", outputs=lambda x: np.where(x > 5, np.nan, x))
    with pytest.raises(MeasurementError, match="non-finite"):
        compute_outputs(nan, split, 4, progress=False)


def test_ratio_interval_pairs_rounds_and_covers_the_true_ratio():
    """A candidate 0.8x the baseline, both drifting together by up to 2x across rounds (a busy
    machine): pairing the rounds keeps the interval tight around 0.8 and it covers 0.8."""
    from trt_mpq.measure.latency import ratio_interval

    rng = np.random.default_rng(0)
    covered, widths = 0, []
    for _ in range(200):
        drift = 1 + rng.random(60)  # shared by both runners, round by round
        base = 0.010 * drift * (1 + 0.02 * rng.normal(size=60))
        cand = 0.008 * drift * (1 + 0.02 * rng.normal(size=60))
        lo, hi = ratio_interval(cand, base, rounds=300)
        covered += lo <= 0.8 <= hi
        widths.append(hi - lo)
    assert covered >= 0.9 * 200
    assert np.median(widths) < 0.1  # paired: the 2x drift does not widen it
    with pytest.raises(ValueError):
        ratio_interval([0.1, 0.2], [0.1])


def test_measure_pair_returns_both_stats_and_the_interval():
    from trt_mpq.measure.latency import measure_pair

    log = []
    a = FakeRunner([0.002] * 10, log, "a")
    b = FakeRunner([0.004] * 10, log, "b")
    sa, sb, (lo, hi) = measure_pair(a, b, {"x": np.ones(2)},
                                    MeasureConfig(warmup=0, repeats=10, min_repeats=3, settle=0,
                                                  per_turn=1))
    assert sa.n == sb.n == 10 and lo == pytest.approx(0.5) and hi == pytest.approx(0.5)
