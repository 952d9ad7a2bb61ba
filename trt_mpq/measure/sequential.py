"""Adaptive (sequential) evaluation: a plan's drop measured on growing parts of a split, stopped
as soon as the paired confidence bounds decide, so that large splits stay cheap.

The looks are a fixed schedule fixed before any data is seen: the whole split, halved until a
look would hold fewer than `min_look` samples (at most `max_looks` looks), e.g. 250, 500, ...,
16,000, 32,000 samples of a 32,000-sample split (8 looks). Look k uses the first n_k samples of one
seeded permutation of the split (a split sorted by class would otherwise make early looks
unrepresentative). At each look the paired bound of `trt_mpq.measure.stats` is computed at that
look's level and the evaluation stops when

- the upper bound is within the allowed drop: "in", certified;
- the lower bound is above it: "out", clearly over budget;

- futile (a fidelity metric only): no later look could let the plan through, so it is "out".
  The baseline agrees with itself on every sample, so the disagreements counted so far can only
  grow: when even a plan with no further disagreement would end over budget (its upper bound
  at the last look, or, when the search judges by the point estimate (`point`), its drop on the
  whole split), looking further cannot change the decision. Futility stops only ever say "out",
  so they cannot make a certificate wrong.

and otherwise goes on to the next look. After the last look an undecided plan is "undecided":
its point estimate is what the search sees, and it is not certified.

Validity under this stopping rule: the error level alpha = 1 - confidence is spent across the
looks (Bonferroni): `final_share` of it at the last look, the rest shared equally by the earlier
ones. The probability that any look's upper bound lies below the true drop is at most the sum,
alpha, so "in" at whatever look it is reached is a certificate at `confidence`. ("out" decisions
cannot make a certificate wrong; they can only cost a candidate, with probability at most alpha.)
With a single look (a split under 2 x `min_look` samples) the whole alpha goes to it.

Early looks stop only on exact bounds: a metric whose bound is a bootstrap (not a 0/1
per-sample metric, `Metric.binary` False) gets one look, the whole split at the whole level,
since an early look's level (99.86% with 8 looks) would rest the bound on a few extreme
resamples.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace

import numpy as np

from trt_mpq.measure.accuracy import drop_bound
from trt_mpq.measure.stats import DropBound, best_case_upper, cp_upper
from trt_mpq.task import Metric, Split

IN, OUT, UNDECIDED = "in", "out", "undecided"


@dataclass(frozen=True)
class SequentialRule:
    confidence: float  # overall one-sided level of the certificate
    allowed: float  # the budget as an absolute drop
    min_look: int = 250  # the smallest look
    max_looks: int = 8
    final_share: float = 0.8  # share of alpha spent at the last look
    seed: int = 0  # of the permutation the looks follow
    point: bool = False  # the search judges plans by their point estimate (futility stops)

    def __post_init__(self) -> None:
        if not 0.5 <= self.confidence < 1:
            raise ValueError("the confidence must be in [0.5, 1)")
        if self.min_look < 1 or self.max_looks < 1 or not 0 < self.final_share <= 1:
            raise ValueError("looks need min_look >= 1, max_looks >= 1, final_share in (0, 1]")

    def looks(self, n: int) -> tuple[int, ...]:
        """Sample counts of the looks on an n-sample split, smallest first."""
        sizes = [n]
        while len(sizes) < self.max_looks and sizes[-1] // 2 >= self.min_look:
            sizes.append(sizes[-1] // 2)
        return tuple(reversed(sizes))

    def levels(self, looks: int) -> tuple[float, ...]:
        """The one-sided confidence level of each look's bounds (their alphas sum to alpha)."""
        alpha = 1 - self.confidence
        if looks == 1:
            return (self.confidence,)
        early = alpha * (1 - self.final_share) / (looks - 1)
        return (1 - early,) * (looks - 1) + (1 - alpha * self.final_share,)

    def best_case_upper(self, n: int, reference: bool) -> float:
        """The smallest upper bound a plan that changes nothing can get on an n-sample split
        at the last look: a budget below it cannot be certified on that split."""
        return best_case_upper(n, self.levels(len(self.looks(n)))[-1], reference=reference)

    def futile(self, worse: int, n: int) -> bool:
        """For a fidelity metric with `worse` disagreements seen so far on an n-sample split:
        True when no later look can let the plan through (module doc)."""
        if self.point:
            return worse / n > self.allowed + 1e-12
        alpha_last = 1 - self.levels(len(self.looks(n)))[-1]
        return cp_upper(worse, n, alpha_last) > self.allowed + 1e-12

    def order(self, n: int) -> np.ndarray:
        if len(self.looks(n)) == 1:
            return np.arange(n)
        return np.random.default_rng(self.seed).permutation(n)

    def to_json_dict(self) -> dict:
        return {"confidence": self.confidence, "allowed_drop": self.allowed,
                "min_look": self.min_look, "max_looks": self.max_looks,
                "final_share": self.final_share, "point": self.point}


@dataclass(frozen=True)
class SequentialResult:
    bound: DropBound  # on the samples used; `confidence` is the rule's overall level
    decision: str  # IN (certified within budget) | OUT (clearly over) | UNDECIDED
    samples: int  # samples the evaluation used
    looks: int  # looks taken
    metric: float  # the plan's metric on the samples used
    baseline_metric: float  # the baseline's, on the same samples
    outputs: dict[str, np.ndarray]  # the plan's outputs on those samples (in look order)
    indices: np.ndarray  # which samples of the split, in that order


def sequential_drop(metric: Metric, split: Split, base_outputs: dict[str, np.ndarray],
                    run: Callable[[Split], dict[str, np.ndarray]],
                    rule: SequentialRule) -> SequentialResult:
    """Evaluate a plan on `split` look by look (module doc). `run(part) -> outputs` runs the
    plan on a part of the split; `base_outputs` are the baseline's outputs on the whole split."""
    n = len(split)
    sizes = rule.looks(n) if metric.binary else (n,)
    levels = rule.levels(len(sizes))
    perm = rule.order(n)
    parts: list[dict[str, np.ndarray]] = []
    done = 0
    for k, (m, level) in enumerate(zip(sizes, levels), start=1):
        new = perm[done:m]
        parts.append(run(split if (done == 0 and m == n) else split.take(new)))
        done = m
        idx = perm[:m]
        plan_out = {name: np.concatenate([p[name] for p in parts], axis=0) for name in parts[0]}
        base = {name: v[idx] for name, v in base_outputs.items()}
        labels = None if split.labels is None else split.labels[idx]
        bound = drop_bound(metric, base, plan_out, labels, level)
        stop = ""
        if bound.upper <= rule.allowed + 1e-12:
            decision = IN
        elif bound.lower is not None and bound.lower > rule.allowed + 1e-12:
            decision = OUT
        elif m < n and metric.reference and bound.worse is not None and \
                rule.futile(bound.worse, n):
            decision, stop = OUT, "; stopped for futility"
        elif m == n:
            decision = UNDECIDED
        else:
            continue
        target = metric.target(labels, base)
        how = (f"; sequential: look {k} of {len(sizes)} ({m} of {n} samples), Bonferroni "
               f"alpha spending ({rule.final_share:.0%} at the last look){stop}"
               if len(sizes) > 1 else "")
        return SequentialResult(
            bound=replace(bound, confidence=rule.confidence, method=bound.method + how),
            decision=decision, samples=m, looks=k, metric=metric(plan_out, target),
            baseline_metric=metric(base, target), outputs=plan_out, indices=idx)
    raise AssertionError("the last look always decides")  # pragma: no cover


__all__ = ["IN", "OUT", "UNDECIDED", "SequentialResult", "SequentialRule", "sequential_drop"]
