"""`boundary`: search with a latency model that sees precision boundaries.

Each step solves an integer program exactly (`boundary_program.solve_program`, where it is
written out): the plan of least predicted latency ratio whose summed estimated sensitivity is at
most t, the ratio predicted by a `LatencyModel` that charges every edge where the plan switches
activation type its boundary cost (`boundary_program.BoundaryModels`, refitted on every measured
plan). Prefix plans, contiguous int8 regions with few switches, and plans that leave a group
float because it is slower lowered are all feasible points; the program picks among them by
predicted latency. The interval of t and how it moves are `boundary_bisection.BudgetInterval`;
this module holds the strategy's ask/tell state machine, its phases below, and its flags.

The search: the all-lowered plan first (if it is in budget, t has no limit), two latency probes
that teach the model what boundaries cost (alternate groups lowered: many boundaries; the first
half lowered: one), then t bisected on *measured* accuracy like the `ilp` strategy (tighten
where the plan was out of budget, loosen where it held): by secant steps where the accept
function says how far in and out of budget the plans at the interval's ends measured (a
`BudgetAccept`, as `trt-mpq search` gives), else geometrically; the latency model is refitted
after every measurement. A bisection plan the model predicts no faster than the fastest measured
in-budget plan (or the baseline) is not measured, and t moves up past it; the bisection's and
the refit's plans are latency-first (`drive`'s gated evaluation): one timed slower than the
fastest in-budget plan skips its accuracy pass, and t moves up past it too. The bisection stops
when hi/lo is within `rtol`; at an accuracy boundary its last evaluations are kept for the
fallbacks below. Once the bisection has nothing left to resolve, the program is solved
again at the largest t known in budget with the refitted model, every measured plan excluded;
its plan is measured while the model predicts it faster than the fastest measured in-budget plan
(by `improve`), and refitted on it, until the budget boundary and the best predicted plan agree;
then up to `polish` plans that lower one more group than the fastest in-budget plan (t sums
estimated sensitivities, and near the boundary measured drops disagree with them).
Where that boundary was an accuracy boundary (the all-lowered plan out of budget), up to
`fallbacks` safer plans (t halved, twice) are measured if the holdout then refuses every answer
(the caller calls `fall_back` and asks again): the holdout certifies the answer and may refuse
plans the search split let through by chance (minilm-sentiment at 1%: all three plans in budget
on 2,000 search samples had holdout drops of +0.24% to +0.54% and bounds over 1%); where it
agrees, as it mostly does on large fidelity splits, they are not measured. At most
`max_evaluations` plans in all, fallbacks included.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field

from trt_mpq import options
from trt_mpq.graph import Edge
from trt_mpq.options import flag
from trt_mpq.plan import Plan, Precision
from trt_mpq.results import Evaluation, Status
from trt_mpq.search.base import (
    Accept,
    Proposal,
    SearchInputs,
    Strategy,
    StrategySpec,
)
from trt_mpq.search.boundary_bisection import BudgetInterval
from trt_mpq.search.boundary_program import BoundaryModels, Prediction, solve_program
from trt_mpq.search.latency_model import Option


class BoundarySearch(Strategy):
    """See the module docstring. `sensitivity` maps every option (group, precision) to its
    estimated accuracy cost (>= 0 is used); `prior_gain` every option to its profiled latency
    gain in ratio units; `low` is each group's default lowered precision (the all-lowered plan
    and the probes use it)."""

    name = "boundary"

    def __init__(self, groups: Sequence[str], edges: Iterable[Edge], base: Precision,
                 low: Mapping[str, Precision], accept: Accept, *,
                 sensitivity: Mapping[Option, float], prior_gain: Mapping[Option, float],
                 max_evaluations: int = 12, probes: bool = True, rtol: float = 0.02,
                 improve: float = 0.005, fallbacks: int = 2, polish: int = 2,
                 time_limit: float | None = 10.0) -> None:
        super().__init__()
        self.groups = tuple(groups)
        edges = tuple(edges)
        if set(sensitivity) != set(prior_gain):
            raise ValueError("sensitivity and prior gains must name the same options")
        for g in self.groups:
            if (g, low[g]) not in prior_gain:
                raise ValueError(f"group {g}'s default low precision is not one of its options")
        if max_evaluations < 1:
            raise ValueError("max_evaluations must be >= 1")
        self.base = base
        self.low = dict(low)
        self.accept = accept
        self.sensitivity = {o: max(float(v), 0.0) for o, v in sensitivity.items()}
        if any(not math.isfinite(v) for v in self.sensitivity.values()):
            raise ValueError("sensitivities must be finite")
        self.models = BoundaryModels(self.groups, edges, base, prior_gain)
        self.model, self.additive = self.models.model, self.models.additive
        self.data, self.predictions = self.models.data, self.models.predictions
        self.max_evaluations = max_evaluations
        # the accuracy side's bisection stops when hi/lo is within this: the sensitivities that
        # make t are estimates, and narrowing t further mostly re-measures plans that differ in
        # groups the estimate cannot rank (efficientnet-lite0: three plans at t within 0.8%,
        # all with the same drop, took the evaluations the fallbacks needed)
        self.rtol = rtol
        self.improve = improve  # a refit plan must be predicted this much faster to be measured
        self._fallbacks_left = fallbacks
        self._polish_left = polish
        self.polish_steps = 0
        self._fallback_t: float | None = None
        self.time_limit = time_limit
        self.base_plan = Plan.uniform(self.groups, base)
        self.low_plan = Plan.of(self.low)
        # the accuracy side: t of the all-lowered plan (each group at its default low
        # precision), and the largest t any plan has (each group at its most sensitive option)
        self.t_low = sum(self.sensitivity[(g, self.low[g])] for g in self.groups)
        self.t_max = sum(max(v for (g2, _), v in self.sensitivity.items() if g2 == g)
                         for g in self.groups) if self.sensitivity else 0.0
        positive = [v for v in self.sensitivity.values() if v > 0]
        self._floor = min(positive) / 2 if positive else None
        self.interval = BudgetInterval(self.t_max, accept)  # [lo, hi] on t
        self.seen: dict[str, Evaluation] = {}
        self.best: Evaluation | None = None
        self.solver_failures = 0
        self.skipped = 0  # bisection steps whose plan was predicted no faster than the best
        self.gated = 0  # bisection steps whose plan was timed slower than the best (no accuracy)
        self._queue: list[tuple[Plan, str, float | None, bool]] = [
            (self.low_plan, "boundary all-lowered", None, False)]
        if probes and len(self.groups) >= 4:
            alt = {g: (self.low[g] if i % 2 == 0 else base) for i, g in enumerate(self.groups)}
            half = {g: (self.low[g] if i < len(self.groups) // 2 else base)
                    for i, g in enumerate(self.groups)}
            self._queue += [(Plan.of(alt), "boundary probe: alternate groups", None, True),
                            (Plan.of(half), "boundary probe: first half", None, True)]
        self._pending: tuple[Plan, str, float | None, bool] | None = None
        self._converging = False
        self._falling_back = False
        self.done = not self.groups

    # -- ask/tell ---------------------------------------------------------------------------------
    def ask(self) -> list[Proposal]:
        if self.done or self.evaluations >= self.max_evaluations:
            self.done = True
            return []
        if self._pending is None:
            self._pending = self._next()
            if self._pending is None:
                self.done = True
                return []
        plan, label, _, latency_only = self._pending
        self.latency_first = latency_only  # `drive` reads it per ask
        self.models.predicting(label, plan)
        return [(plan, label)]

    def tell(self, plan: Plan, evaluation: Evaluation) -> None:
        if self._pending is None or plan != self._pending[0]:
            raise ValueError("tell() got a plan this strategy did not ask for")
        _, _, t, _ = self._pending
        self._pending = None
        self.evaluations += 1
        self.seen[plan.digest] = evaluation
        self.models.measured(plan, evaluation)
        ok = self._in_budget(evaluation)
        if ok and (self.best is None or evaluation.latency_ratio < self.best.latency_ratio):
            self.best = evaluation
        at = ([self.t_low] if plan == self.low_plan else []) + ([t] if t is not None else [])
        self.interval.measured(at, evaluation)
        if plan == self.low_plan:  # in budget: with one format per group, t has no limit
            self.interval.settle(self.t_low, ok)
        if t is not None:
            # timed slower than the fastest in-budget plan, its accuracy was not measured (a
            # latency-first step): whatever it is, this t cannot improve the answer, and smaller t
            # only keeps more groups float, so look at larger t, as for a plan predicted slower
            gated = evaluation.status is Status.SLOWER
            self.gated += gated
            self.interval.settle_step(t, ok or gated)

    # -- internals --------------------------------------------------------------------------------
    def _in_budget(self, e: Evaluation) -> bool:
        return (e.ok and e.latency_ratio is not None and math.isfinite(e.latency_ratio)
                and bool(self.accept(e)))

    def _solve(self, t: float, exclude: Sequence[Plan] = ()) -> Plan | None:
        plan = solve_program(self.model, self.sensitivity, t, exclude=exclude,
                             time_limit=self.time_limit)
        if plan is None:
            self.solver_failures += 1
        return plan

    def _next(self) -> tuple[Plan, str, float | None, bool] | None:
        if self._falling_back:
            return self._fallback()
        while self._queue:
            item = self._queue.pop(0)
            if item[0].digest not in self.seen:
                return item
        iv = self.interval
        for _ in range(10_000):  # each pass narrows [lo, hi] or excludes a plan; ends long before
            if self._reserved():
                return None  # the rest is the fallbacks', should the holdout need them
            low_end = iv.lo if iv.lo > 0 else self._floor
            if not self._converging and low_end is not None and iv.hi > low_end * (1 + self.rtol):
                t = iv.step(low_end)
                plan = self._solve(t)
                if plan is None:
                    iv.settle_step(t, False)
                    continue
                if plan == self.base_plan:
                    iv.settle_step(t, True)
                    continue
                if (known := self.seen.get(plan.digest)) is not None:
                    iv.settle_step(t, self._in_budget(known))
                    continue
                best = self.best.latency_ratio if self.best is not None else 1.0
                if self.model.predict(plan) >= best - self.improve:
                    # predicted no faster than what is known: measuring it cannot improve the
                    # answer, so look at larger t (more lowered) without spending a measurement;
                    # whatever this t holds is measured before it counts (the refit phase)
                    self.skipped += 1
                    iv.settle_step(t, True)
                    continue
                return plan, f"boundary t={t:.4g}", t, True
            # the accuracy side is settled: the best plan the refitted model predicts at the
            # largest t known in budget, among those not measured yet, if it is predicted
            # faster than the fastest measured in-budget plan. With no plan measured in budget,
            # lo rests only on plans predicted or timed slower (their accuracy unknown), and
            # nothing is known to refit toward (resnet-digits at 0.01%: two refit plans, both
            # out of budget on the whole split)
            self._converging = True
            if self.best is None:
                return None
            plan = self._solve(iv.lo, exclude=[e.plan for e in self.seen.values()])
            if plan is None or plan == self.base_plan \
                    or self.model.predict(plan) >= self.best.latency_ratio - self.improve:
                return self._polish()  # agreement: nothing unmeasured is predicted faster
            return plan, f"boundary refit t={iv.lo:.4g}", None, True
        return None

    def _polish(self) -> tuple[Plan, str, float | None, bool] | None:
        """The program and the budget boundary agree, but t is a sum of *estimated*
        sensitivities, and near the boundary measured drops differ from them by more than a
        group's estimate (resnet-digits at 0.1%: lowering one more layer4 conv measured a
        smaller drop than the plan without it). While `polish` tries and evaluations (less the
        fallbacks' reserve) are left: the fastest in-budget plan with one more group lowered,
        the one with the most predicted gain per unit of estimated sensitivity among those the
        model predicts faster by `improve`, measured (latency-first); an in-budget one becomes
        the plan the next try starts from."""
        if self.best is None or self._polish_left <= 0:
            return None
        left = self.max_evaluations - self.evaluations
        if left <= (self._fallbacks_left if self._at_accuracy_boundary() else 0):
            return None
        plan, target = self.best.plan, self.best.latency_ratio - self.improve
        scored = []
        for (g, p), sens in self.sensitivity.items():
            if plan[g] is not self.base:
                continue
            move = plan.with_({g: p})
            predicted = self.model.predict(move)
            if move.digest in self.seen or predicted >= target:
                continue
            gain = self.best.latency_ratio - predicted
            scored.append((gain / max(sens, self._floor or 1e-12), -predicted, move))
        if not scored:
            return None
        self._polish_left -= 1
        self.polish_steps += 1
        return max(scored, key=lambda x: x[:2])[2], "boundary polish", None, True

    def fall_back(self) -> bool:
        """The holdout refused every answer: where the search ended at an accuracy boundary
        (`_at_accuracy_boundary`), re-open for up to
        `fallbacks` safer plans (`_fallback`). Measured only when needed: where the holdout
        agrees with the search split, they would cost evaluations for nothing."""
        if self._falling_back or not self._at_accuracy_boundary() or self._fallbacks_left <= 0:
            return False
        self._falling_back = True
        self.done = False
        return True

    def _reserved(self) -> bool:
        """At an accuracy boundary (the all-lowered plan out of budget) with an in-budget t
        known, the last evaluations belong to the fallback plans the holdout may need: the
        search ends before it spends them."""
        return (self._at_accuracy_boundary() and self._fallbacks_left > 0
                and self.max_evaluations - self.evaluations <= self._fallbacks_left)

    def _at_accuracy_boundary(self) -> bool:
        """The all-lowered plan out of budget, an in-budget t known and a plan measured in
        budget (without one, the holdout has nothing to refuse and lo may rest on plans only
        predicted or timed slower)."""
        return 0 < self.interval.lo < self.t_low and self.best is not None

    def _fallback(self) -> tuple[Plan, str, float | None, bool] | None:
        """After `fall_back`: the answers the search found were judged in budget on the search
        split alone, and the holdout refused them all: up to `fallbacks` safer plans, the best
        predicted at t halved and halved again, while they are predicted faster than the
        baseline."""
        lo = self.interval.lo
        if lo >= self.t_low:
            return None
        while self._fallbacks_left > 0:
            self._fallback_t = (self._fallback_t if self._fallback_t is not None else lo) / 2
            if self._floor is None or self._fallback_t < self._floor:
                return None
            plan = self._solve(self._fallback_t, exclude=[e.plan for e in self.seen.values()])
            if plan is None or plan == self.base_plan \
                    or self.model.predict(plan) >= 1.0 - self.improve:
                return None
            self._fallbacks_left -= 1
            return plan, f"boundary fallback t={self._fallback_t:.4g}", None, False
        return None

    @property
    def secant_steps(self) -> int:
        """Bisection steps that took the secant (`BudgetInterval.step`)."""
        return self.interval.secant_steps

    def report(self) -> dict:
        """The models' predictions (made before each measurement) against the measurements."""
        return {
            **self.models.report(),
            "solver_failures": self.solver_failures, "skipped": self.skipped, "gated": self.gated,
            "secant_steps": self.secant_steps, "polish_steps": self.polish_steps,
        }


@dataclass(frozen=True)
class BoundaryConfig:
    max_evaluations: int = field(default=12, metadata=flag(
        "--max-evaluations", "boundary: plans measured at most (probes included)",
        lo=1, hi=1_000))
    fallbacks: int = field(default=2, metadata=flag(
        "--fallbacks", "boundary: safer plans measured after an accuracy boundary when the "
                       "holdout refuses every answer", lo=0, hi=100))
    polish: int = field(default=2, metadata=flag(
        "--polish", "boundary: plans measured at most, once the program and the budget agree, "
                    "that lower one more group than the fastest in-budget plan", lo=0, hi=100))
    probes: bool = field(default=True, metadata=flag(
        "--probes", "boundary: measure two latency probes (alternate groups, first half "
                    "lowered) that show the model what boundaries cost"))

    def __post_init__(self) -> None:
        options.check(self)


def _boundary(config: BoundaryConfig, inputs: SearchInputs) -> list[Strategy]:
    assert inputs.edges is not None and inputs.options is not None, \
        "the boundary strategy needs the group graph and per-option gains"
    return [BoundarySearch(inputs.groups, inputs.edges, inputs.base, inputs.low, inputs.accept,
                           sensitivity=inputs.option_sensitivity,
                           prior_gain=inputs.prior_gain,
                           max_evaluations=config.max_evaluations, probes=config.probes,
                           fallbacks=config.fallbacks, polish=config.polish)]


SPEC = StrategySpec(
    name="boundary", config=BoundaryConfig, build=_boundary, needs_gains=True, needs_graph=True,
    can_fall_back=lambda config: config.fallbacks > 0,
    description="integer program on a latency model with precision-boundary costs, refitted "
                "on every measured plan; its accuracy budget bisected on measured accuracy")

# the program and the models also live here for callers that import them from this module
__all__ = ["SPEC", "BoundaryConfig", "BoundaryModels", "BoundarySearch", "BudgetInterval",
           "Prediction", "solve_program"]
