"""`prune`: after the strategies before it, raise back to the baseline precision the lowered
groups that cost more latency than they gain, precision boundaries included.

Every plan the strategies before it measured (a bisection's prefixes, its refinement, its sweep) is
a measurement for the boundary-aware latency model (`LatencyModel`). Refitted on all of them, the
model is asked (`solve_program`, exact) for the fastest plan that lowers only groups the anchor
lowered, each to the same precision: of the in-budget plans when pruning began, the one the model
predicts fastest (one timing can be far off; the model pools them all). Raising a group
back to the baseline precision takes its quantizers out, so such a plan is expected to stay about as
accurate; what it changes is latency: a group that runs slower lowered than in float (resnet-digits'
layer4 convs on ONNX Runtime's CPU kernels), or an island of lowered groups whose two boundaries
cost more than it gains. A prefix of any order keeps such groups lowered once the budget allows
them. The plan is proposed only where the model predicts it faster than the in-budget plan by
`improve`, and measured latency-first (it skips its accuracy pass if it times slower than the best),
since the accuracy side may still move. An in-budget plan faster than the best becomes the best the
next step must beat; the next step refits the model on it too and is again a subset of the anchor (a
few prefix plans cannot tell apart groups that are always lowered together, so a first step may
raise one too many). A step proposes the model's `per_step` (2) best plans that clear `improve`,
not only its optimum: the model's optimum can sit within its error of another subset
(resnet-digits: raising layer4.1's conv2 and the fc predicted x0.663, raising all four slow
layer4/fc groups about as fast; timed, x0.78 and x0.65), and a search that measured only one of
them answered differently from one that measured the other; the finalists' joint re-timing
decides between them. At most `steps` steps. """

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence

from trt_mpq.graph import Edge
from trt_mpq.plan import Plan, Precision
from trt_mpq.results import Evaluation
from trt_mpq.search.base import Accept, Proposal, Strategy
from trt_mpq.search.boundary_program import solve_program
from trt_mpq.search.latency_model import LatencyModel, Measured, Option, standard_error


class Prune(Strategy):
    """See the module docstring. `prior_gain` maps every option (group, precision) the plans may
    use to its profiled latency gain in ratio units; `sensitivity` the same options to their
    estimated accuracy cost (only a tie-break here: among plans predicted equally fast, the
    less sensitive)."""

    name = "prune"
    latency_first = True

    def __init__(self, groups: Sequence[str], edges: Iterable[Edge], base: Precision,
                 prior_gain: Mapping[Option, float], accept: Accept, *,
                 sensitivity: Mapping[Option, float] | None = None, steps: int = 2,
                 improve: float = 0.005, time_limit: float | None = 10.0,
                 per_step: int = 2) -> None:
        super().__init__()
        if steps < 0:
            raise ValueError("steps must be >= 0")
        self.groups = tuple(groups)
        self.base = base
        self.accept = accept
        self.model = LatencyModel(self.groups, edges, base, prior_gain)
        self.sensitivity = {o: max(float((sensitivity or {}).get(o, 0.0)), 0.0)
                            for o in prior_gain}
        self.steps_left = steps
        self.improve = improve
        self.time_limit = time_limit
        self.per_step = per_step
        self.base_plan = Plan.uniform(self.groups, base)
        self.data: dict[str, Measured] = {}
        self.measured: dict[str, Plan] = {}
        self.best: Evaluation | None = None
        self.in_budget: dict[str, Plan] = {}  # every in-budget plan measured faster than FP32
        #: the in-budget plan the model predicted fastest when pruning began: every step lowers
        #: a subset of its groups (a later step may lower again a group an earlier one raised,
        #: where the refit says that step raised too many)
        self.anchor: Plan | None = None
        self._asked: dict[str, Proposal] = {}  # this step's plans not yet told
        #: per plan proposed: its digest, the best plan it had to beat, predicted and measured
        #: ratio
        self.steps: list[dict] = []

    def _modelled(self, plan: Plan) -> bool:
        """A plan the model can predict: no runtime options, every lowered group at one of its
        options."""
        return not plan.options and all(
            plan[g] is self.base or (g, plan[g]) in self.model.prior for g in self.groups)

    def observe(self, evaluation: Evaluation) -> None:
        plan, ratio = evaluation.plan, evaluation.latency_ratio
        if not self._modelled(plan):
            return
        self.measured[plan.digest] = plan
        if ratio is None or not math.isfinite(ratio):
            return
        self.data[plan.digest] = (plan, ratio, standard_error(evaluation.ratio_ci))
        if evaluation.ok and plan != self.base_plan and ratio < 1.0 and self.accept(evaluation):
            self.in_budget[plan.digest] = plan
            if self.best is None or ratio < self.best.latency_ratio:
                self.best = evaluation

    def ask(self) -> list[Proposal]:
        if self._asked:
            return list(self._asked.values())
        if self.steps_left <= 0 or self.best is None:
            return []
        self.model.fit(list(self.data.values()))
        if self.anchor is None:
            # the in-budget plan the model, fitted on every plan measured, predicts fastest: one
            # timing of a plan can be off by 15% (resnet-digits: a prefix timed at x0.64 that
            # ran at x0.77 beside the others), the model pools them all
            self.anchor = min(self.in_budget.values(),
                              key=lambda p: (self.model.predict(p), p != self.best.plan))
        start, anchor = self.best.plan, self.anchor
        lowered = {(g, anchor[g]) for g in self.groups if anchor[g] is not self.base}
        limit = self.model.predict(start) - self.improve
        exclude = list(self.measured.values())
        for _ in range(self.per_step):
            plan = solve_program(self.model, self.sensitivity,
                                 sum(self.sensitivity[o] for o in lowered), allowed=lowered,
                                 exclude=exclude, time_limit=self.time_limit)
            predicted = self.model.predict(plan) if plan is not None else math.inf
            if plan is None or plan == self.base_plan or predicted > limit:
                break
            exclude.append(plan)
            raised = sum(1 for g in self.groups if plan[g] is not anchor[g])  # all to the base
            self._asked[plan.digest] = (plan, f"prune: {raised} raised")
            self.steps.append({"plan": plan.digest, "beat": start.digest,
                               "predicted": predicted, "measured": None})
        if not self._asked:
            self.steps_left = 0  # nothing to raise: the model and the measurements agree
            return []
        self.steps_left -= 1
        return list(self._asked.values())

    def tell(self, plan: Plan, evaluation: Evaluation) -> None:
        if plan.digest not in self._asked:
            raise ValueError("tell() got a plan this strategy did not ask for")
        del self._asked[plan.digest]
        self.evaluations += 1
        next(st for st in self.steps if st["plan"] == plan.digest)["measured"] = \
            evaluation.latency_ratio


__all__ = ["Prune"]
