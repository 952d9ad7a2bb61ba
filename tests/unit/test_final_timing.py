"""Adaptive latency intervals (issue 13 item 6): the joint re-measurement goes on until every
ratio's interval is narrow enough, or the cap."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest

from trt_mpq.measure.latency import (
    MeasureConfig,
    ratio_interval,
    relative_halfwidth,
    time_until_precise,
)


class NoisyRunner:
    """`time_once` reports a seeded noisy time around `ms` (no real work: the test is about the
    stopping rule, not the clock)."""

    def __init__(self, ms: float, noise: float, seed: int) -> None:
        self.ms, self.noise = ms, noise
        self.rng = np.random.default_rng(seed)
        self.calls = 0

    def time_once(self, feed) -> float:
        self.calls += 1
        return self.ms * (1 + self.noise * abs(self.rng.standard_normal())) / 1e3


CONFIG = MeasureConfig(warmup=2, repeats=20, min_repeats=10, max_seconds=60)


def test_measures_until_the_interval_is_narrow():
    runners = [NoisyRunner(0.6, 0.3, 1), NoisyRunner(0.9, 0.3, 2)]
    times, precision = time_until_precise(runners, {}, CONFIG, target=0.01, cap_s=60)
    assert precision.reached and precision.halfwidth <= 0.01
    assert precision.rounds > 20 and precision.rounds % 20 == 0  # it went on, block by block
    assert len(times[0]) == len(times[1]) == precision.rounds
    assert relative_halfwidth(times[0], times[1]) == pytest.approx(precision.halfwidth)
    lo, hi = ratio_interval(times[0], times[1])
    assert lo <= 0.6 / 0.9 * 1.01 and hi >= 0.6 / 0.9 * 0.99


def test_a_precise_first_block_stops_at_once_and_the_cap_holds():
    quiet = [NoisyRunner(0.6, 0.0, 1), NoisyRunner(0.9, 0.0, 2)]
    _, precision = time_until_precise(quiet, {}, CONFIG, target=0.01, cap_s=60)
    assert precision.rounds == 20 and precision.reached
    loud = [NoisyRunner(0.6, 5.0, 1), NoisyRunner(0.9, 5.0, 2)]
    _, precision = time_until_precise(loud, {}, CONFIG, target=1e-6, cap_s=0.0)
    assert precision.rounds == 20 and not precision.reached  # capped: one block only


def test_needs_a_baseline():
    with pytest.raises(ValueError):
        time_until_precise([NoisyRunner(1, 0, 0)], {}, CONFIG, 0.01, 1)


class CacheRunner:
    """A model whose run is `cold_ms` when another model ran last (its weights left the caches)
    and `warm_ms` when it ran last itself."""

    last = None

    def __init__(self, warm_ms: float, cold_ms: float) -> None:
        self.warm_ms, self.cold_ms = warm_ms, cold_ms

    def time_once(self, feed) -> float:
        ms = self.warm_ms if CacheRunner.last is self else self.cold_ms
        CacheRunner.last = self
        return ms / 1e3


def test_a_joint_timing_settles_each_turn_so_it_measures_warm_runs():
    """Five models interleaved one run each measure every run cold (mobilenetv2-digits' int8
    plan: x0.69 of FP32 with two runners, x0.82 with five); settled turns measure what each
    model runs at on its own."""
    plan, *others, base = [CacheRunner(0.2, 0.5), CacheRunner(0.3, 0.5), CacheRunner(0.3, 0.5),
                           CacheRunner(0.3, 0.5), CacheRunner(0.3, 0.55)]
    runners = [plan, *others, base]
    cold, _ = time_until_precise(runners, {}, replace(CONFIG, settle=0, per_turn=1),
                                  target=0.01, cap_s=0)
    # only the turns where the round order reverses find their own weights still cached
    assert np.mean(cold[0]) / np.mean(cold[-1]) > 0.8
    warm, _ = time_until_precise(runners, {}, CONFIG, target=0.01, cap_s=0)  # the default
    assert all(t == pytest.approx(0.2e-3) for t in warm[0])
    assert np.mean(warm[0]) / np.mean(warm[-1]) == pytest.approx(0.2 / 0.3)


def test_a_plan_timed_against_the_baseline_is_timed_warm_as_deployed():
    """The search's pair timing settles each turn (default `settle` 2): its ratio is what the
    two models run at on their own (0.2 / 0.4), not the cold turns' (which pull it toward 1)."""
    from trt_mpq.errors import ConfigError
    from trt_mpq.measure.latency import measure_pair

    CacheRunner.last = None
    plan, base = CacheRunner(0.2, 0.4), CacheRunner(0.4, 0.6)
    config = MeasureConfig(warmup=1, repeats=20, min_repeats=3)
    sa, sb, (lo, hi) = measure_pair(plan, base, {}, config)
    assert sa.median_ms / sb.median_ms == pytest.approx(0.5) and lo == pytest.approx(0.5)
    CacheRunner.last = None
    cold, base_cold, _ = measure_pair(plan, base, {}, replace(config, settle=0, per_turn=1))
    assert cold.median_ms / base_cold.median_ms > 0.55  # half the turns cold: biased up
    with pytest.raises(ConfigError, match="settle"):
        MeasureConfig(settle=-1)
