"""Search strategies, ask/tell style.

A strategy proposes plans (`ask`) and learns their evaluations (`tell`); it never builds or
measures anything itself, so it is tested with a fake evaluator and can be resumed by replaying
stored evaluations. `drive` runs a strategy against any `evaluate(plan, label) -> Evaluation`.

The plans here are *prefix plans* over a sensitivity order: quantize the k least sensitive groups
to their low precision and keep the rest at the baseline precision.
"""

from __future__ import annotations

import abc
import math
from collections.abc import Callable, Mapping, Sequence

from trt_mpq.plan import Plan, Precision
from trt_mpq.search.evaluation import Evaluation

Proposal = tuple[Plan, str]  # (plan, label)
Evaluate = Callable[[Plan, str], Evaluation]
Accept = Callable[[Evaluation], bool]  # status ok and within the accuracy budget


class Strategy(abc.ABC):
    name: str = ""

    def __init__(self) -> None:
        self.evaluations = 0

    @abc.abstractmethod
    def ask(self) -> list[Proposal]:
        """Plans to evaluate next; an empty list when the strategy is done."""

    @abc.abstractmethod
    def tell(self, plan: Plan, evaluation: Evaluation) -> None:
        """The evaluation of a plan that `ask` proposed."""


def checked_groups(groups: Sequence[str], low: Mapping[str, Precision]) -> tuple[str, ...]:
    """`groups` as a tuple, after checking they are distinct and that `low` names exactly them."""
    out = tuple(groups)
    if len(set(out)) != len(out):
        raise ValueError("groups must be distinct")
    if set(low) != set(out):
        raise ValueError("groups and low precisions must name the same groups")
    return out


class PrefixPlans:
    """Plans that lower the first k groups of `order` and keep the rest at `base`."""

    def __init__(self, order: Sequence[str], low: Mapping[str, Precision], base: Precision) -> None:
        if set(order) != set(low):
            raise ValueError("order and low precisions must name the same groups")
        self.order = tuple(order)
        self.low = dict(low)
        self.base = base

    @property
    def n(self) -> int:
        return len(self.order)

    def plan(self, k: int) -> Plan:
        lowered = set(self.order[:k])
        return Plan.of({g: (self.low[g] if g in lowered else self.base) for g in self.order})


class Bisection(Strategy):
    """Bisection on k: the largest prefix of the sensitivity order that stays in budget.

    Tries k = n (everything lowered) first; if that is out of budget, bisects between k = 0 (the
    baseline, in budget by definition) and the smallest k known to be out. Accuracy is not
    strictly monotone in k, so the result is *a* budget boundary, not necessarily the largest
    in-budget k; the frontier sweep that follows covers more of the curve. Failed builds and
    precision mismatches count as out of budget.
    """

    name = "bisection"

    def __init__(self, prefixes: PrefixPlans, accept: Accept) -> None:
        super().__init__()
        self.prefixes = prefixes
        self.accept = accept
        self.lo = 0  # largest k known in budget
        self.hi: int | None = None  # smallest k known out of budget
        self._pending: int | None = None
        self.done = prefixes.n == 0

    def ask(self) -> list[Proposal]:
        if self.done:
            return []
        if self.hi is None:
            k = self.prefixes.n
        elif self.hi - self.lo <= 1:
            self.done = True
            return []
        else:
            k = (self.lo + self.hi) // 2
        self._pending = k
        return [(self.prefixes.plan(k), f"bisection k={k}/{self.prefixes.n}")]

    def tell(self, plan: Plan, evaluation: Evaluation) -> None:
        k = self._pending
        if k is None or plan != self.prefixes.plan(k):
            raise ValueError("tell() got a plan this strategy did not ask for")
        self._pending = None
        self.evaluations += 1
        if self.accept(evaluation):
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

    def __init__(self, prefixes: PrefixPlans, points: int, skip: Sequence[int] = ()) -> None:
        super().__init__()
        self.prefixes = prefixes
        n = prefixes.n
        ks = sorted({min(n, max(0, round(i * n / points))) for i in range(1, points + 1)}) if points else []
        self._todo = [k for k in ks if k not in set(skip)]

    def ask(self) -> list[Proposal]:
        if not self._todo:
            return []
        k = self._todo[0]
        return [(self.prefixes.plan(k), f"sweep k={k}/{self.prefixes.n}")]

    def tell(self, plan: Plan, evaluation: Evaluation) -> None:
        k = self._todo.pop(0)
        if plan != self.prefixes.plan(k):
            raise ValueError("tell() got a plan this strategy did not ask for")
        self.evaluations += 1


class Around(Strategy):
    """After a bisection: the prefixes next to the boundary it found (k-width..k+width); `drive`
    skips the ones already evaluated."""

    name = "refine"

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
        if not self._todo:
            return []
        k = self._todo[0]
        return [(self.prefixes.plan(k), f"refine k={k}/{self.prefixes.n}")]

    def tell(self, plan: Plan, evaluation: Evaluation) -> None:
        k = self._todo.pop(0)  # type: ignore[union-attr]
        if plan != self.prefixes.plan(k):
            raise ValueError("tell() got a plan this strategy did not ask for")
        self.evaluations += 1


def drive(strategies: Sequence[Strategy], evaluate: Evaluate,
          on_evaluation: Callable[[Evaluation], None] | None = None) -> list[Evaluation]:
    """Run strategies one after another; each plan is evaluated once even if proposed twice."""
    seen: dict[str, Evaluation] = {}
    out: list[Evaluation] = []
    for strategy in strategies:
        while True:
            proposals = strategy.ask()
            if not proposals:
                break
            for plan, label in proposals:
                ev = seen.get(plan.digest)
                if ev is None:
                    ev = evaluate(plan, label)
                    seen[plan.digest] = ev
                    out.append(ev)
                    if on_evaluation:
                        on_evaluation(ev)
                strategy.tell(plan, ev)
    return out


def expected_evaluations(n: int, sweep: int) -> int:
    """Upper bound on evaluations of bisection + sweep + refine over n groups (for progress)."""
    return 1 + max(1, math.ceil(math.log2(max(n, 1)))) + sweep + 4
