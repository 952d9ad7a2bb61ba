"""Latency: warm-up, then many timed runs of each runner, interleaved round by round.

Timing on shared machines drifts by tens of percent between runs (DESIGN.md §3); the ratio of two
runners timed in the same rounds is stable. So every candidate is timed interleaved with the
baseline and the result that matters is the ratio of medians. Which runner goes first alternates
every round, so neither always runs on a cache warmed by the other. Each runner's turn starts
with `MeasureConfig.settle` untimed runs and then times `per_turn` runs, so that a timed run
follows a run of the same model, as in deployment: a run timed right after another model's
measures slower than the model runs on its own, by a similar absolute amount for both models,
which pulls their ratio toward 1. resnet-digits' int8 plan on a 2-core EPYC, three repeats:
x0.72-0.74 of FP32 timed one run per turn, x0.47-0.51 with the defaults (2 settling runs, 3
timed), x0.50-0.51 each model timed on its own; minilm-sentiment: x0.58-0.59, x0.56-0.57 and
x0.54-0.56. The defaults cost about 1.6x the runs of one timed run per turn.
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace

import numpy as np

from trt_mpq import options
from trt_mpq.backends.base import Runner
from trt_mpq.errors import ConfigError
from trt_mpq.options import flag
from trt_mpq.results import LatencyStats
from trt_mpq.shapes import ShapeSpec, parse_shapes, parse_weights


@dataclass(frozen=True)
class MeasureConfig:
    warmup: int = field(default=10, metadata=flag(
        "--warmup", "untimed runs before timing", lo=0, hi=10_000))
    repeats: int = field(default=60, metadata=flag(
        "--repeats", "timed runs per plan and baseline", lo=3, hi=100_000))
    max_seconds: float = 60.0  # stop early (with at least min_repeats) past this wall time
    min_repeats: int | None = None  # None: min(15, repeats)
    settle: int = field(default=2, metadata=flag(
        "--settle", "untimed runs at the start of each timed turn, so that a plan timed "
        "interleaved with the baseline runs with its own weights in the caches, as deployed "
        "(0: time cold turns)", lo=0, hi=1_000))
    per_turn: int = 3  # timed runs per turn, after the settling ones
    shapes: ShapeSpec | None = field(default=None, metadata=flag(
        "--shapes", "the input shapes the model is deployed at, each timed interleaved with "
        "the baseline at the same shape: batch=1,8,32 (every input at these batch sizes) or "
        "input_ids=1x64,8x128 (one input's full dims; inputs of the same shape follow it; "
        "several inputs: a=...;b=...); plans are ranked by the weighted mean of their "
        "per-shape latency ratios (docs/shapes.md); auto: the task's own shapes (by default "
        "its latency batch at its data's shape)", parse=parse_shapes, dump=str,
        metavar="SHAPES"))
    shape_weights: tuple[float, ...] | None = field(default=None, metadata=flag(
        "--shape-weights", "the weight of each of --shapes in the objective, in their order, "
        "e.g. 1,1,2 (normalized to sum to 1; auto: equal weights)", parse=parse_weights,
        metavar="W[,W...]"))

    def __post_init__(self) -> None:
        options.check(self)
        if self.min_repeats is None:
            object.__setattr__(self, "min_repeats", min(15, self.repeats))
        if self.per_turn < 1:
            raise ConfigError("per_turn must be >= 1 (timed runs per turn)")
        if not 3 <= self.min_repeats <= self.repeats:
            raise ConfigError("min_repeats must be in [3, repeats]")
        if self.max_seconds <= 0:
            raise ConfigError("max_seconds must be > 0")
        if self.shapes is not None and self.shape_weights is not None \
                and len(self.shape_weights) != len(self.shapes):
            raise ConfigError(f"--shape-weights gives {len(self.shape_weights)} weight(s) for "
                              f"{len(self.shapes)} shape(s) ({self.shapes}); give one per "
                              "shape, in their order")

    def to_json_dict(self) -> dict:
        return {"warmup": self.warmup, "repeats": self.repeats, "max_seconds": self.max_seconds,
                "min_repeats": self.min_repeats, "settle": self.settle,
                "per_turn": self.per_turn,
                # only when declared: a search without them has the context it always had
                **({"shapes": str(self.shapes)} if self.shapes is not None else {}),
                **({"shape_weights": list(self.shape_weights)}
                   if self.shape_weights is not None else {})}


def measure_interleaved(runners: Sequence[Runner], feed: Mapping[str, np.ndarray],
                        config: MeasureConfig) -> list[LatencyStats]:
    """Time every runner on `feed`, interleaved; one `LatencyStats` per runner, in order.
    A runner that fails raises `MeasurementError` itself (the `Runner` contract)."""
    return [LatencyStats.of(t) for t in time_rounds(runners, feed, config)]


def ratio_interval(times: Sequence[float], baseline_times: Sequence[float],
                   confidence: float = 0.95, rounds: int = 1000,
                   seed: int = 0) -> tuple[float, float]:
    """Interval of the ratio of medians (candidate / baseline) from runs timed in the same
    rounds: a bootstrap over paired rounds (round i's two runs stay together, so what drifted
    during the measurement moves both), percentile interval at `confidence`."""
    a = np.asarray(times, dtype=np.float64)
    b = np.asarray(baseline_times, dtype=np.float64)
    if a.shape != b.shape or a.size < 2:
        raise ValueError("paired timing rounds must be two equal sequences of 2 or more runs")
    idx = np.random.default_rng(seed).integers(0, a.size, (rounds, a.size))
    ratios = np.median(a[idx], axis=1) / np.median(b[idx], axis=1)
    tail = (1 - confidence) / 2
    return float(np.quantile(ratios, tail)), float(np.quantile(ratios, 1 - tail))


def measure_pair(runner: Runner, baseline: Runner, feed: Mapping[str, np.ndarray],
                 config: MeasureConfig) -> tuple[LatencyStats, LatencyStats, tuple[float, float]]:
    """`runner` timed interleaved with `baseline`: both stats and the 95% interval of their
    latency ratio over the paired rounds."""
    a, b = time_rounds([runner, baseline], feed, config)
    return LatencyStats.of(a), LatencyStats.of(b), ratio_interval(a, b)


@dataclass(frozen=True)
class TimingPrecision:
    """How precise an adaptive measurement got: the worst relative half-width of the ratio
    intervals, the rounds timed, and whether it reached the target before the cap."""

    target: float
    halfwidth: float
    rounds: int
    seconds: float
    reached: bool

    def to_json_dict(self) -> dict:
        return {"target_halfwidth": self.target, "halfwidth": self.halfwidth,
                "rounds": self.rounds, "seconds": self.seconds, "reached": self.reached}


def relative_halfwidth(times: Sequence[float], baseline_times: Sequence[float]) -> float:
    """Half the width of the ratio's 95% interval, relative to the ratio of medians."""
    lo, hi = ratio_interval(times, baseline_times)
    ratio = float(np.median(times) / np.median(baseline_times))
    return (hi - lo) / 2 / ratio


def time_until_precise(runners: Sequence[Runner], feed: Mapping[str, np.ndarray],
                       config: MeasureConfig, target: float,
                       cap_s: float) -> tuple[list[list[float]], TimingPrecision]:
    """`time_rounds`, continued block by block (each `config.repeats` more timed runs per
    runner, no further warm-up) until the 95% interval of every runner's ratio to the last
    runner (the baseline) has a half-width of at most `target` of the ratio, or `cap_s`
    seconds have passed."""
    if len(runners) < 2:
        raise ValueError("an adaptive measurement needs candidates and a baseline (last)")
    start = time.perf_counter()
    times = time_rounds(runners, feed, config)
    more = replace(config, warmup=0)

    def worst() -> float:
        return max(relative_halfwidth(t, times[-1]) for t in times[:-1])

    width = worst()
    while width > target and time.perf_counter() - start < cap_s:
        for acc, new in zip(times, time_rounds(runners, feed, more)):
            acc.extend(new)
        width = worst()
    return times, TimingPrecision(target=target, halfwidth=width, rounds=len(times[0]),
                            seconds=time.perf_counter() - start, reached=width <= target)


def time_rounds(runners: Sequence[Runner], feed: Mapping[str, np.ndarray],
                config: MeasureConfig) -> list[list[float]]:
    """The raw interleaved timing: per runner, the seconds of each timed run (warm-up and
    settling runs excluded), `config.repeats` of them (fewer past `max_seconds`), in rounds of
    one turn per runner. A turn is `config.settle` untimed runs, then `config.per_turn` timed
    ones: interleaved one run each, every run would start right after another model's, and a
    small model measures up to 2x slower than it runs on its own (module doc); the timed runs
    of one round pair up across runners, as the ratio interval's bootstrap needs."""
    if not runners:
        return []
    feed = {k: np.ascontiguousarray(v) for k, v in feed.items()}
    for _ in range(config.warmup):
        for r in runners:
            r.time_once(feed)
    times: list[list[float]] = [[] for _ in runners]
    start = time.perf_counter()
    rounds = -(-config.repeats // config.per_turn)
    for i in range(rounds):
        order = range(len(runners)) if i % 2 == 0 else reversed(range(len(runners)))
        for k in order:
            for _ in range(config.settle):
                runners[k].time_once(feed)
            for _ in range(min(config.per_turn, config.repeats - len(times[k]))):
                times[k].append(runners[k].time_once(feed))
        if len(times[0]) >= config.min_repeats and \
                time.perf_counter() - start > config.max_seconds:
            break
    return times


@dataclass(frozen=True)
class TimingCheck:
    """The baseline timed against a second copy of itself, whose latency ratio should be 1.
    Each attempt is (ratio, spread, repeats): spread is the larger (p90 - p10) / median of the
    two. Timing is trusted when the last attempt's ratio is within `tolerance` of 1 and its
    spread at most `max_spread`; a failed attempt is retried with twice the repeats."""

    attempts: tuple[tuple[float, float, int], ...]
    tolerance: float
    max_spread: float

    @staticmethod
    def attempt(a: LatencyStats, b: LatencyStats) -> tuple[float, float, int]:
        return a.median_ms / b.median_ms, max(a.spread, b.spread), min(a.n, b.n)

    def passes(self, attempt: tuple[float, float, int]) -> bool:
        ratio, spread, _ = attempt
        return abs(ratio - 1.0) <= self.tolerance and spread <= self.max_spread

    @property
    def trusted(self) -> bool:
        return bool(self.attempts) and self.passes(self.attempts[-1])

    def describe(self) -> str:
        ratio, spread, n = self.attempts[-1]
        verdict = "trusted" if self.trusted else "NOT trusted"
        more = (f" after {len(self.attempts) - 1} re-measurement(s) with more runs"
                if len(self.attempts) > 1 else "")
        return (f"timing {verdict}: the baseline against itself measured x{ratio:.3f} (spread "
                f"{spread:.2f}, {n} runs each){more}; tolerance ±{self.tolerance:.0%}, spread "
                f"at most {self.max_spread:.2f}")

    def to_json_dict(self) -> dict:
        return {"trusted": self.trusted, "tolerance": self.tolerance,
                "max_spread": self.max_spread,
                "attempts": [{"ratio": r, "spread": s, "repeats": n} for r, s, n in self.attempts]}


__all__ = ["LatencyStats", "MeasureConfig", "TimingCheck", "TimingPrecision", "measure_interleaved",
           "measure_pair", "ratio_interval", "relative_halfwidth", "time_rounds",
           "time_until_precise"]
