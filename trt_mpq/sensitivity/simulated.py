"""Sensitivities measured by simulating plans on ONNX Runtime (CPU): the real materialized graph
of each plan, run on a calibration subset. Cost = number of simulated plans ("passes").

- `accuracy`: the task metric's drop with one group lowered at a time (AIMET's ranking).
- `sqnr`: noise-to-signal power of the final output with one group lowered,
  ||y - y_q||^2 / ||y||^2 (the inverse of the SQNR; its dB value is in `extra`).
- `hessian+deps`: the Hessian score augmented with measured inter-layer dependencies:

      d(i, j) = l({i, j}) - l({i}) - l({j})     for neighbouring groups i, j
      s_i     = h_i + 1/2 * sum_{j in N(i)} d(i, j)

  where l(S) is the mean KL divergence of the output from the baseline's with exactly the groups
  S lowered, h_i the `hessian` score (an estimate of the loss increase, in nats, the same unit as
  l), and N(i) the groups within `neighbours` positions of i in graph order (the ones whose
  errors meet first). Each pair's interaction is split evenly between its two groups: errors
  that compound (d > 0) make both more sensitive, errors that cancel (d < 0) less. Cost: the
  Hessian's passes + n + (number of pairs) simulations. With `conditional`, the order is instead
  built greedily: each next group is the one whose lowering adds the least divergence given the
  groups already chosen, l(S + {i}) - l(S) (n(n+1)/2 simulations); its score is that
  increment.
"""

from __future__ import annotations

import time

import numpy as np

from trt_mpq.sensitivity import (
    SensitivityContext,
    SensitivityMetric,
    SensitivityResult,
    output_divergence,
)


def _bar(iterable, desc: str, progress: bool | None, total: int | None = None):
    from tqdm.auto import tqdm

    return tqdm(iterable, desc=desc, total=total, unit="plan", leave=False,
                disable=None if progress is None else not progress)


def _output(ctx: SensitivityContext, outputs: dict) -> np.ndarray:
    name = ctx.task.metric.output or next(iter(outputs))
    return outputs[name]


class AccuracyDrop(SensitivityMetric):
    name = "accuracy"
    description = ("per group: the task metric's drop on a calibration subset with that group "
                   "alone lowered (one-at-a-time, as AIMET's automatic mixed precision ranks)")

    def score(self, ctx: SensitivityContext, progress: bool | None = None) -> SensitivityResult:
        t0 = time.perf_counter()
        metric = ctx.task.metric
        base_out = ctx.simulate(ctx.base_plan(), ctx.subset)
        target = metric.target(ctx.subset.labels, base_out)  # a fidelity metric: the baseline
        base = metric(base_out, target)
        scores = {}
        for g in _bar(ctx.groups, "sensitivity (accuracy)", progress):
            value = metric(ctx.simulate(ctx.single(g.name), ctx.subset), target)
            scores[g.name] = (base - value) if metric.higher_is_better else (value - base)
        return SensitivityResult(self.name, scores, passes=len(ctx.groups) + 1,
                                 seconds=time.perf_counter() - t0, samples=len(ctx.subset),
                                 extra={"baseline_metric": base})


class Sqnr(SensitivityMetric):
    name = "sqnr"
    description = ("per group: noise-to-signal power of the final output with that group alone "
                   "lowered, ||y - y_q||^2 / ||y||^2 (1 / SQNR; higher = more sensitive)")

    def score(self, ctx: SensitivityContext, progress: bool | None = None) -> SensitivityResult:
        t0 = time.perf_counter()
        ref = _output(ctx, ctx.simulate(ctx.base_plan(), ctx.subset)).astype(np.float64)
        power = float(np.sum(ref ** 2)) or 1e-30
        scores, db = {}, {}
        for g in _bar(ctx.groups, "sensitivity (sqnr)", progress):
            out = _output(ctx, ctx.simulate(ctx.single(g.name), ctx.subset)).astype(np.float64)
            noise = float(np.sum((out - ref) ** 2))
            scores[g.name] = noise / power
            db[g.name] = float(10 * np.log10(power / noise)) if noise > 0 else float("inf")
        return SensitivityResult(self.name, scores, passes=len(ctx.groups) + 1,
                                 seconds=time.perf_counter() - t0, samples=len(ctx.subset),
                                 extra={"sqnr_db": db})


class Divergence:
    """l(S): output KL divergence with exactly the groups S lowered, memoized."""

    def __init__(self, ctx: SensitivityContext) -> None:
        self.ctx = ctx
        self.ref = _output(ctx, ctx.simulate(ctx.base_plan(), ctx.subset))
        self.passes = 1
        self._memo: dict[frozenset, float] = {frozenset(): 0.0}

    def __call__(self, groups) -> float:
        key = frozenset(groups)
        if key not in self._memo:
            ctx = self.ctx
            plan = ctx.base_plan().with_({g: ctx.low[g] for g in key})
            out = _output(ctx, ctx.simulate(plan, ctx.subset))
            self._memo[key] = output_divergence(self.ref, out, ctx.task.metric.kind)
            self.passes += 1
        return self._memo[key]


def pairwise_interactions(ctx: SensitivityContext, neighbours: int,
                          progress: bool | None = None) -> tuple[dict, Divergence]:
    """d(i, j) for every group i and the next `neighbours` groups j in graph order."""
    names = [g.name for g in ctx.groups]
    div = Divergence(ctx)
    pairs = [(names[a], names[b]) for a in range(len(names))
             for b in range(a + 1, min(len(names), a + 1 + neighbours))]
    for g in _bar(names, "dependencies (singles)", progress):
        div([g])
    d = {}
    for i, j in _bar(pairs, "dependencies (pairs)", progress):
        d[(i, j)] = div([i, j]) - div([i]) - div([j])
    return d, div


def conditional_order(ctx: SensitivityContext, div: Divergence,
                      progress: bool | None = None) -> tuple[list[str], dict[str, float]]:
    """Greedy order: each next group adds the least divergence given those before it."""
    remaining = [g.name for g in ctx.groups]
    chosen: list[str] = []
    increments: dict[str, float] = {}
    n = len(remaining)
    with _bar(None, "dependencies (conditional)", progress, total=n * (n + 1) // 2) as bar:
        while remaining:
            base = div(chosen)
            cost = {}
            for g in remaining:
                cost[g] = div([*chosen, g]) - base
                bar.update(1)
            best = min(remaining, key=lambda g: (cost[g], remaining.index(g)))
            increments[best] = cost[best]
            chosen.append(best)
            remaining.remove(best)
    return chosen, increments


class HessianDeps(SensitivityMetric):
    name = "hessian+deps"
    description = ("hessian, plus half of each measured pairwise interaction "
                   "d(i,j) = l(ij) - l(i) - l(j) with its graph neighbours (KL divergence of the "
                   "output); or, with conditional, a greedy order on l(S + i) - l(S)")

    def score(self, ctx: SensitivityContext, progress: bool | None = None) -> SensitivityResult:
        from trt_mpq.sensitivity import get_metric

        t0 = time.perf_counter()
        hessian = ctx.prior.get("hessian") or get_metric("hessian").score(ctx, progress)
        d, div = pairwise_interactions(ctx, ctx.config.neighbours, progress)
        scores = dict(hessian.scores)
        for (i, j), value in d.items():
            scores[i] += 0.5 * value
            scores[j] += 0.5 * value
        extra = {"hessian": dict(hessian.scores),
                 "interactions": {f"{i} | {j}": v for (i, j), v in d.items()},
                 "single_divergence": {g.name: div([g.name]) for g in ctx.groups},
                 "hessian_passes": hessian.passes, "simulations": div.passes}
        if ctx.config.conditional:
            order, increments = conditional_order(ctx, div, progress)
            # scores that sort into the conditional order (rank-preserving, increments kept)
            extra["conditional_increments"] = increments
            extra["conditional_order"] = order
            scores = {g: float(k) for k, g in enumerate(order)}
            extra["simulations"] = div.passes
        # the cost includes the Hessian's even when it was computed before and reused
        reused = "hessian" in ctx.prior
        return SensitivityResult(self.name, scores, passes=hessian.passes + div.passes,
                                 seconds=time.perf_counter() - t0 + (hessian.seconds if reused
                                                                     else 0.0),
                                 samples=len(ctx.subset), extra=extra)
