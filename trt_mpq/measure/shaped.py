"""Timing at every deployment shape (`trt_mpq.shapes`): each shape timed in its own block of
interleaved rounds (`latency.time_rounds`: warm-up, then the runners in turn, the baseline
last), one block after another in the same runners, so a runtime that plans per shape (ONNX
Runtime's arena, a TensorRT profile) times each shape after its own warm-up. A plan's ratio
to the baseline at a shape is the ratio of their medians; the objective is the weighted mean
of those ratios (`weighted_ratio`), its interval a bootstrap over each shape's paired rounds
(`weighted_interval`). With one shape everything is what `latency` measures."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from trt_mpq.backends.base import Runner
from trt_mpq.measure.latency import MeasureConfig, ratio_interval, time_rounds
from trt_mpq.results import LatencyStats, ShapeTiming
from trt_mpq.shapes import ShapeSet


@dataclass(frozen=True)
class PairTiming:
    """One plan timed against the baseline at every shape: the latencies at the most-weighted
    shape, the objective (`ratio`) and its 95% interval, and per shape (several only).
    Unpacks as (latency, baseline latency, ratio interval), the triple timing gave before
    shapes."""

    latency: LatencyStats
    baseline_latency: LatencyStats
    ratio_ci: tuple[float, float]
    ratio: float
    shapes: tuple[ShapeTiming, ...] = field(default=())

    def __iter__(self):
        return iter((self.latency, self.baseline_latency, self.ratio_ci))

    @property
    def spread(self) -> float:
        """The widest (p90 - p10) / median of either runner at any shape."""
        pairs = [(s.latency, s.baseline_latency) for s in self.shapes] or \
            [(self.latency, self.baseline_latency)]
        return max(max(a.spread, b.spread) for a, b in pairs)

    @property
    def runs(self) -> int:
        stats = [x for s in self.shapes for x in (s.latency, s.baseline_latency)] or \
            [self.latency, self.baseline_latency]
        return min(s.n for s in stats)

    def attempt(self) -> tuple[float, float, int]:
        """As a timing check's attempt (`TimingCheck`): (ratio, spread, runs)."""
        return self.ratio, self.spread, self.runs

    def to_json_dict(self) -> dict:
        return {"latency": self.latency.to_json_dict(),
                "baseline_latency": self.baseline_latency.to_json_dict(),
                "ratio_ci": list(self.ratio_ci), "ratio": self.ratio,
                **({"shapes": [s.to_json_dict() for s in self.shapes]} if self.shapes else {})}

    @classmethod
    def from_json_dict(cls, d) -> PairTiming:
        lat = LatencyStats.from_json_dict(d["latency"])
        base = LatencyStats.from_json_dict(d["baseline_latency"])
        return cls(lat, base, tuple(d["ratio_ci"]),
                   float(d.get("ratio", lat.median_ms / base.median_ms)),
                   tuple(ShapeTiming.from_json_dict(s) for s in d.get("shapes") or ()))


def weighted_ratio(ratios: Sequence[float], weights: Sequence[float]) -> float:
    """The objective: sum_s w_s r_s / sum_s w_s."""
    return float(sum(w * r for w, r in zip(weights, ratios)) / sum(weights))


def weighted_interval(pairs: Sequence[tuple[Sequence[float], Sequence[float]]],
                      weights: Sequence[float], confidence: float = 0.95, rounds: int = 1000,
                      seed: int = 0) -> tuple[float, float]:
    """Interval of the objective from each shape's paired rounds ((candidate times, baseline
    times) per shape): every bootstrap draw resamples each shape's rounds (pairs kept
    together) and combines the shapes' ratios of medians with `weights`. One shape: exactly
    `latency.ratio_interval`."""
    if len(pairs) == 1:
        return ratio_interval(*pairs[0], confidence=confidence, rounds=rounds, seed=seed)
    rng = np.random.default_rng(seed)
    total = np.zeros(rounds)
    for (times, base), w in zip(pairs, weights):
        a = np.asarray(times, dtype=np.float64)
        b = np.asarray(base, dtype=np.float64)
        if a.shape != b.shape or a.size < 2:
            raise ValueError("paired timing rounds must be two equal sequences of 2 or more runs")
        idx = rng.integers(0, a.size, (rounds, a.size))
        total += w * np.median(a[idx], axis=1) / np.median(b[idx], axis=1)
    total /= sum(weights)
    tail = (1 - confidence) / 2
    return float(np.quantile(total, tail)), float(np.quantile(total, 1 - tail))


def time_shapes(runners: Sequence[Runner], shapes: ShapeSet,
                config: MeasureConfig) -> list[list[list[float]]]:
    """`time_rounds` at each shape: times[shape][runner] (seconds of each timed run)."""
    return [time_rounds(runners, shape.feed, config) for shape in shapes]


def pair_timing(times: Sequence[Sequence[Sequence[float]]], shapes: ShapeSet, k: int,
                base: int = -1) -> PairTiming:
    """Runner `k` against runner `base` from `time_shapes`' times."""
    if len(shapes) == 1:
        a, b = times[0][k], times[0][base]
        lat, base_lat = LatencyStats.of(a), LatencyStats.of(b)
        return PairTiming(lat, base_lat, ratio_interval(a, b),
                          lat.median_ms / base_lat.median_ms)
    per = tuple(ShapeTiming(s.label, s.weight, LatencyStats.of(t[k]), LatencyStats.of(t[base]),
                            ratio_interval(t[k], t[base]))
                for s, t in zip(shapes, times))
    primary = next(p for p, s in zip(per, shapes) if s is shapes.primary)
    return PairTiming(primary.latency, primary.baseline_latency,
                      weighted_interval([(t[k], t[base]) for t in times], shapes.weights),
                      weighted_ratio([p.ratio for p in per], shapes.weights), per)


def time_pair(runner: Runner, baseline: Runner, shapes: ShapeSet,
              config: MeasureConfig) -> PairTiming:
    """`runner` timed interleaved with `baseline` at every shape."""
    return pair_timing(time_shapes([runner, baseline], shapes, config), shapes, 0)


def relative(times: Sequence[Sequence[Sequence[float]]], shapes: ShapeSet, k: int,
             other: int) -> float:
    """Runner `k`'s objective relative to runner `other` (e.g. a plan against the gate's
    rival): the weighted mean of their per-shape ratios of medians."""
    return weighted_ratio([float(np.median(t[k]) / np.median(t[other])) for t in times],
                          shapes.weights)


__all__ = ["PairTiming", "pair_timing", "relative", "time_pair", "time_shapes",
           "weighted_interval", "weighted_ratio"]
