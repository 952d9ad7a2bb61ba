"""Strategies over *prefix plans* of a sensitivity order: lower the k least sensitive groups to
their low precision and keep the rest at the baseline precision.

- `bisection` (the papers): bisection on k against the budget, then the prefixes around the
  boundary it found (`Around`) and a sweep of more prefixes (`PrefixSweep`) for the frontier;
  then `prune` (`trt_mpq.search.prune`): the fastest in-budget plan with the lowered groups
  that a latency model fitted on all those measurements says cost more than they gain (slower
  lowered, or not worth their precision boundaries) raised back to the baseline.
- `frontier`: the sweep alone.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from trt_mpq import options
from trt_mpq.errors import ConfigError
from trt_mpq.options import flag
from trt_mpq.plan import Plan
from trt_mpq.results import Evaluation
from trt_mpq.search.base import (
    Accept,
    PrefixPlans,
    Proposal,
    SearchInputs,
    Strategy,
    StrategySpec,
    speculate_field,
)


class Bisection(Strategy):
    """Bisection on k: the largest prefix of the sensitivity order that stays in budget.

    Tries k = n (everything lowered) first; if that is out of budget, bisects between k = 0 (the
    baseline, in budget by definition) and the smallest k known to be out. Accuracy is not
    strictly monotone in k, so the result is *a* budget boundary, not necessarily the largest
    in-budget k; the frontier sweep that follows covers more of the curve. Failed builds and
    precision mismatches count as out of budget.

    With `speculate` = D > 0 each round also proposes the midpoints of the next D levels, both
    ways the current midpoint may go (2^(D+1) - 1 plans, one batch for parallel workers), and
    decides D + 1 levels: the same path, so the same boundary, as one midpoint at a time, for
    the cost of the plans off the path (they are measured points of the frontier all the same).
    """

    name = "bisection"

    def __init__(self, prefixes: PrefixPlans, accept: Accept, speculate: int = 0) -> None:
        super().__init__()
        if speculate < 0:
            raise ValueError("speculate must be >= 0")
        self.prefixes = prefixes
        self.accept = accept
        self.speculate = speculate
        self.lo = 0  # largest k known in budget
        self.hi: int | None = None  # smallest k known out of budget
        self._pending: dict[str, int] = {}  # plan digest -> k, asked and not yet told
        self._results: dict[int, bool] = {}  # k -> in budget, for every k told
        self.done = prefixes.n == 0

    def _midpoints(self, lo: int, hi: int, depth: int) -> list[int]:
        if depth == 0 or hi - lo <= 1:
            return []
        m = (lo + hi) // 2
        return [m, *self._midpoints(lo, m, depth - 1), *self._midpoints(m, hi, depth - 1)]

    def ask(self) -> list[Proposal]:
        if self.done:
            return []
        if self.hi is None:  # everything lowered first; speculating that it is out of budget
            ks = [self.prefixes.n, *self._midpoints(0, self.prefixes.n, self.speculate)]
        else:
            ks = self._midpoints(self.lo, self.hi, self.speculate + 1)
        plans = {k: self.prefixes.plan(k) for k in ks if k not in self._results}
        self._pending = {plan.digest: k for k, plan in plans.items()}
        return [(plan, f"bisection k={k}/{self.prefixes.n}") for k, plan in plans.items()]

    def tell(self, plan: Plan, evaluation: Evaluation) -> None:
        k = self._pending.pop(plan.digest, None)
        if k is None:
            raise ValueError("tell() got a plan this strategy did not ask for")
        self.evaluations += 1
        self._results[k] = bool(self.accept(evaluation))
        self._walk()

    def _walk(self) -> None:
        """Follow the bisection's path as far as the results told so far decide it."""
        while not self.done:
            k = self.prefixes.n if self.hi is None else (self.lo + self.hi) // 2
            if k not in self._results:
                return
            if self._results[k]:
                self.lo = max(self.lo, k)
                if self.hi is None:  # everything lowered is in budget
                    self.done = True
            else:
                self.hi = k if self.hi is None else min(self.hi, k)
            if self.hi is not None and self.hi - self.lo <= 1:
                self.done = True

    @property
    def best_k(self) -> int:
        return self.lo


class PrefixSweep(Strategy):
    """Evaluate `points` prefixes spread evenly over [0, n] (skipping ones in `skip`): the
    measured latency-accuracy curve along the order. Latency is not monotone in k on CPU
    (precision switches cost layout conversions), so a smaller in-budget k can be faster."""

    name = "frontier"
    latency_first = True

    def __init__(self, prefixes: PrefixPlans, points: int, skip: Sequence[int] = ()) -> None:
        super().__init__()
        self.prefixes = prefixes
        n = prefixes.n
        ks = (sorted({min(n, max(0, round(i * n / points))) for i in range(1, points + 1)})
              if points else [])
        self._todo = [k for k in ks if k not in set(skip)]

    def ask(self) -> list[Proposal]:  # the whole sweep at once: one batch
        return [(self.prefixes.plan(k), f"sweep k={k}/{self.prefixes.n}") for k in self._todo]

    def tell(self, plan: Plan, evaluation: Evaluation) -> None:
        _told(self._todo, self.prefixes, plan)
        self.evaluations += 1


def _told(todo: list[int], prefixes: PrefixPlans, plan: Plan) -> None:
    """Strike the prefix `plan` is from the strategy's to-do list."""
    for i, k in enumerate(todo):
        if plan == prefixes.plan(k):
            del todo[i]
            return
    raise ValueError("tell() got a plan this strategy did not ask for")


class Around(Strategy):
    """After a bisection: the prefixes next to the boundary it found (k-width..k+width); `drive`
    skips the ones already evaluated."""

    name = "refine"
    latency_first = True

    def __init__(self, prefixes: PrefixPlans, center: Callable[[], int], width: int = 2) -> None:
        super().__init__()
        self.prefixes = prefixes
        self._center = center
        self._width = width
        self._todo: list[int] | None = None

    def ask(self) -> list[Proposal]:
        if self._todo is None:  # the centre is known only once the bisection is done
            c = self._center()
            self._todo = [k for k in range(c - self._width, c + self._width + 1)
                          if 0 < k <= self.prefixes.n]
        return [(self.prefixes.plan(k), f"refine k={k}/{self.prefixes.n}")
                for k in self._todo]  # every point around the boundary: one batch

    def tell(self, plan: Plan, evaluation: Evaluation) -> None:
        assert self._todo is not None
        _told(self._todo, self.prefixes, plan)
        self.evaluations += 1


# -- specs -------------------------------------------------------------------------------------
@dataclass(frozen=True)
class BisectionConfig:
    sweep_points: int = field(default=6, metadata=flag(
        "--sweep", "bisection, frontier: prefixes of the order measured for the frontier",
        lo=0, hi=1_000))
    refine: int = field(default=2, metadata=flag(
        "--refine", "bisection: also measure k +- this around the boundary", lo=0, hi=100))
    speculate: int = speculate_field()
    prune: int = field(default=2, metadata=flag(
        "--prune", "bisection: pruning steps at most (each measures the latency model's 2 "
                   "best plans) that raise back to the baseline the lowered groups a "
                   "boundary-aware latency model, fitted on every measured plan, says cost "
                   "more latency than they gain (0: none)", lo=0, hi=100))

    def __post_init__(self) -> None:
        options.check(self)


@dataclass(frozen=True)
class FrontierConfig:
    sweep_points: int = field(default=6, metadata=flag(
        "--sweep", "bisection, frontier: prefixes of the order measured for the frontier",
        lo=0, hi=1_000))

    def __post_init__(self) -> None:
        options.check(self)
        if self.sweep_points < 1:
            raise ConfigError("the frontier strategy needs --sweep >= 1")


def _bisection(config: BisectionConfig, inputs: SearchInputs) -> list[Strategy]:
    prefixes = inputs.prefixes
    bis = Bisection(prefixes, inputs.accept, config.speculate)
    out: list[Strategy] = [bis]
    if config.refine:
        out.append(Around(prefixes, center=lambda: bis.best_k, width=config.refine))
    if config.sweep_points:
        out.append(PrefixSweep(prefixes, config.sweep_points))
    if config.prune and inputs.edges is not None and inputs.options is not None:
        from trt_mpq.search.prune import Prune

        out.append(Prune(inputs.groups, inputs.edges, inputs.base, inputs.prior_gain,
                         inputs.accept, sensitivity=inputs.option_sensitivity,
                         steps=config.prune))
    return out


BISECTION = StrategySpec(
    name="bisection", config=BisectionConfig, build=_bisection, wants_gains=True,
    description="bisection on the number of lowered groups along the order, then the prefixes "
                "around the boundary, a sweep, and the best plan pruned of groups not worth "
                "lowering (default)")
FRONTIER = StrategySpec(
    name="frontier", config=FrontierConfig,
    build=lambda config, inputs: [PrefixSweep(inputs.prefixes, config.sweep_points)],
    description="a sweep of evenly spaced prefixes of the order only")
