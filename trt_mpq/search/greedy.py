"""Greedy forward selection on *measured* trade-offs: the expensive reference strategy.

HAWQ / AIMET-style: start from the all-baseline plan and lower one group at a time, always the one
whose *measured* latency saving per unit of *measured* accuracy drop is best. Every step measures
every remaining group, so it costs O(n^2) evaluations; it is the yardstick the cheaper strategies
(bisection on a sensitivity order, the ILP of `trt_mpq.search.ilp`) are compared against, not the
default search.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from trt_mpq import options
from trt_mpq.options import flag
from trt_mpq.plan import Plan, Precision
from trt_mpq.results import Evaluation
from trt_mpq.search.base import (
    Accept,
    Proposal,
    Strategy,
    StrategySpec,
    checked_groups,
)


def greedy_evaluations(n: int, flips: int, candidates: int | None = None,
                       evaluate_base: bool = True) -> int:
    """Evaluations a `Greedy` run over `n` groups makes when it commits `flips` flips.

    (1 if the base plan is evaluated) + sum over the batches b = 0 .. m-1 of min(c, n - b), where
    m = min(flips + 1, n) batches are proposed (the batch after the last commit finds nothing in
    budget, unless every group is lowered) and c = `candidates` (n when None). Worst case, with
    c = n and all groups lowered: 1 + n(n+1)/2.
    """
    if not 0 <= flips <= n:
        raise ValueError("flips must be in [0, n]")
    c = n if candidates is None else candidates
    batches = min(flips + 1, n)
    return int(evaluate_base) + sum(min(c, n - b) for b in range(batches))


def _usable(e: Evaluation | None) -> bool:
    return (e is not None and e.ok and e.latency_ratio is not None and e.drop is not None
            and math.isfinite(e.latency_ratio) and math.isfinite(e.drop))


class Greedy(Strategy):
    """Forward selection: lower one more group per step, the one with the best measured trade-off.

    Rule. The current plan starts as the all-`base` plan (evaluated first, unless `start` gives its
    evaluation). Each step proposes, as one batch, the current plan with one more group lowered to
    `low[g]`, for every group g still at `base` -- or, with `candidates=c`, only for the first c
    of them in `order` (least sensitive first; defaults to `groups`). Once the whole batch is told,
    among the candidates that are usable (status ok, finite latency_ratio and drop) and accepted by
    `accept`, with

        saving = current.latency_ratio - candidate.latency_ratio
        drop   = max(candidate.drop - current.drop, 0)      (an accuracy gain counts as no drop)

    it commits the one with the largest key

        (saving > 0,  saving / (drop + eps)  if saving > 0  else  saving * (drop + eps),
         -drop,  position in `order` reversed)

    i.e. the largest saving per unit of drop among the candidates that save time; if none does, the
    one that loses the least time weighted by its drop (lowering it may still enable later flips,
    e.g. by removing a precision switch); ties go to the smaller drop, then to the earlier group in
    `order`. The committed candidate's measured evaluation becomes the current plan's. If the base
    evaluation is unusable, the current latency_ratio and drop are taken as 1 and 0 (what they
    are by definition). The search stops when a batch has no usable in-budget candidate, or when
    every group is lowered.

    Cost. A run that commits s flips makes `greedy_evaluations(n, s, candidates, start is None)`
    evaluations: (1) + sum_{b < min(s+1, n)} min(c, n-b), at most 1 + n(n+1)/2 = O(n^2) (O(c n)
    with `candidates=c`). All proposals are distinct plans (batch b lowers exactly b+1 groups), so
    `drive` evaluates each once and `self.evaluations` counts every evaluation.

    `best` is the usable in-budget evaluation with the lowest latency_ratio seen (the base
    included); `history` lists the committed (group, evaluation) pairs in order.
    """

    name = "greedy"

    def __init__(self, groups: Sequence[str], low: Mapping[str, Precision], base: Precision,
                 accept: Accept, *, candidates: int | None = None,
                 order: Sequence[str] | None = None, start: Evaluation | None = None,
                 eps: float = 1e-6) -> None:
        super().__init__()
        self.groups = checked_groups(groups, low)
        self.order = tuple(order) if order is not None else self.groups
        if sorted(self.order) != sorted(self.groups):
            raise ValueError("order must be a permutation of groups")
        if candidates is not None and candidates < 1:
            raise ValueError("candidates must be >= 1 (or None for all)")
        if not (eps > 0 and math.isfinite(eps)):
            raise ValueError("eps must be a finite number > 0")
        self.low = dict(low)
        self.base = base
        self.accept = accept
        self.candidates = candidates
        self.eps = eps
        self.lowered: list[str] = []  # committed, in order
        self.history: list[tuple[str, Evaluation]] = []
        self.current: Plan = Plan.of({g: base for g in self.groups})
        self.current_eval: Evaluation | None = None
        self.best: Evaluation | None = None
        self.done = not self.groups
        self._rank = {g: i for i, g in enumerate(self.order)}
        # digest -> (group lowered or None for the base, plan, label); the batch being evaluated
        self._pending: dict[str, tuple[str | None, Plan, str]] = {}
        self._told: list[tuple[str, Evaluation]] = []
        if start is not None:
            if start.plan != self.current:
                raise ValueError("start must be the evaluation of the all-base plan")
            self._observe(start)
            self.current_eval = start
        elif not self.done:
            self._pending[self.current.digest] = (None, self.current, "greedy base")

    # -- ask/tell -------------------------------------------------------------------------------
    @property
    def step(self) -> int:
        """The step (1-based) whose batch is proposed next / is being evaluated."""
        return len(self.lowered) + 1

    def ask(self) -> list[Proposal]:
        if self.done:
            return []
        if not self._pending:
            self._propose_batch()
        return [(plan, label) for _, plan, label in self._pending.values()]

    def tell(self, plan: Plan, evaluation: Evaluation) -> None:
        entry = self._pending.pop(plan.digest, None)
        if entry is None or entry[1] != plan:
            raise ValueError("tell() got a plan this strategy did not ask for")
        self.evaluations += 1
        self._observe(evaluation)
        group = entry[0]
        if group is None:  # the base plan
            self.current_eval = evaluation
            return
        self._told.append((group, evaluation))
        if not self._pending:
            self._commit()

    # -- internals ------------------------------------------------------------------------------
    def _observe(self, e: Evaluation) -> None:
        if _usable(e) and self.accept(e):
            if self.best is None or e.latency_ratio < self.best.latency_ratio:
                self.best = e

    def _propose_batch(self) -> None:
        remaining = [g for g in self.order if g not in set(self.lowered)]
        if self.candidates is not None:
            remaining = remaining[:self.candidates]
        for g in remaining:
            plan = self.current.with_({g: self.low[g]})
            self._pending[plan.digest] = (g, plan, f"greedy step {self.step}: +{g}")

    def _reference(self) -> tuple[float, float]:
        e = self.current_eval
        if _usable(e):
            return e.latency_ratio, e.drop  # type: ignore[union-attr, return-value]
        return 1.0, 0.0

    def trade_off(self, candidate: Evaluation) -> tuple[float, float]:
        """(saving, drop) of a candidate against the current plan, as the rule defines them."""
        ratio, drop = self._reference()
        saving = ratio - candidate.latency_ratio  # type: ignore[operator]
        return saving, max(candidate.drop - drop, 0.0)  # type: ignore[operator]

    def _key(self, group: str, e: Evaluation) -> tuple:
        saving, drop = self.trade_off(e)
        score = saving / (drop + self.eps) if saving > 0 else saving * (drop + self.eps)
        return (saving > 0, score, -drop, -self._rank[group])

    def _commit(self) -> None:
        told, self._told = self._told, []
        ok = [(g, e) for g, e in told if _usable(e) and self.accept(e)]
        if not ok:
            self.done = True
            return
        g, e = max(ok, key=lambda ge: self._key(*ge))
        self.lowered.append(g)
        self.history.append((g, e))
        self.current = e.plan
        self.current_eval = e
        if len(self.lowered) == len(self.groups):
            self.done = True


@dataclass(frozen=True)
class GreedyConfig:
    candidates: int = field(default=8, metadata=flag(
        "--greedy-candidates", "greedy: flips tried per step, least sensitive first (0: all)",
        lo=0, hi=10_000))

    def __post_init__(self) -> None:
        options.check(self)


SPEC = StrategySpec(
    name="greedy", config=GreedyConfig,
    build=lambda config, inputs: [Greedy(inputs.groups, inputs.low, inputs.base, inputs.accept,
                                         candidates=config.candidates or None,
                                         order=inputs.order)],
    description="measured forward selection: lower the group with the best measured saving "
                "per drop, one at a time (O(n^2) evaluations)")
