"""Integer-program search: the plan comes from a 0/1 program over estimated per-group numbers, the
program's budget is bisected on *measured* accuracy.

Two objectives:

* ``"gain"`` (NVIDIA AutoQuantize's formulation; HAWQ-V3's integer program without a bit budget):
  maximize sum_g gain[g] x_g  s.t.  sum_g sensitivity[g] x_g <= T, x binary, where x_g = 1 lowers
  group g to low[g]. gain[g] >= 0 is the estimated latency saving of lowering g alone (e.g. the
  measured per-layer time difference), sensitivity[g] >= 0 its estimated accuracy cost.
* ``"bits"`` (AutoQuantize with an effective-bits budget): minimize sum_g sensitivity[g] x_g
  s.t. sum_g params[g] (bits(low[g]) x_g + bits(base) (1 - x_g)) <= B.

The solver is `scipy.optimize.milp` (HiGHS), called from `solve_binary` only; scipy is imported
there, on use.
"""

from __future__ import annotations

import copy
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
    SearchInputs,
    Strategy,
    StrategySpec,
    checked_groups,
    speculate_field,
)


def solve_binary(objective: Sequence[float], row: Sequence[float], *,
                 lower: float = -math.inf, upper: float = math.inf, maximize: bool = False,
                 time_limit: float | None = None) -> tuple[int, ...] | None:
    """Optimize objective . x subject to lower <= row . x <= upper, x in {0, 1}^n.

    Returns x as a tuple of 0/1, or None when the solver finds no proven optimum: the program is
    infeasible, the time limit ran out, or the solver failed. Both rows are scaled to a largest
    |coefficient| of 1 before solving (HiGHS's tolerances are absolute), so the answer is optimal
    to about 1e-6 of the largest objective coefficient and feasible to about 1e-6 of the largest
    row coefficient (a solution violating the constraint by more is refused).
    """
    n = len(objective)
    if len(row) != n:
        raise ValueError("objective and row must have the same length")
    if n == 0:
        return () if lower <= 0 <= upper else None
    import numpy as np
    from scipy.optimize import Bounds, LinearConstraint, milp

    c = np.asarray(objective, dtype=np.float64)
    a = np.asarray(row, dtype=np.float64)
    if not (np.all(np.isfinite(c)) and np.all(np.isfinite(a))) or math.isnan(lower) \
            or math.isnan(upper):
        raise ValueError("objective, row and bounds must be finite numbers (bounds may be inf)")
    c_scale = float(np.max(np.abs(c))) or 1.0
    a_scale = float(np.max(np.abs(a))) or 1.0
    c = (-c if maximize else c) / c_scale
    options: dict = {"mip_rel_gap": 0.0}
    if time_limit is not None:
        options["time_limit"] = float(time_limit)
    try:
        res = milp(c, integrality=np.ones(n), bounds=Bounds(0, 1),
                   constraints=LinearConstraint(a[None, :] / a_scale, lower / a_scale,
                                                upper / a_scale),
                   options=options)
    except (ValueError, TypeError, ArithmeticError, RuntimeError):
        return None
    if res.status != 0 or res.x is None:
        return None
    x = tuple(int(round(v)) for v in res.x)
    value = float(a @ np.asarray(x, dtype=np.float64))
    tol = 1e-6 * a_scale
    if value > upper + tol or value < lower - tol:
        return None
    return x


def plan_bits(plan: Plan, params: Mapping[str, int]) -> int:
    """Weight bits of a plan: sum over groups of params[g] * bits(plan[g])."""
    return sum(int(params[g]) * p.bits for g, p in plan.items)


class IlpSearch(Strategy):
    """Bisect the budget of a 0/1 program on measured accuracy.

    The program's "amount of lowering" t runs from 0 (the base plan, in budget by definition) to
    t_max (everything lowered): t = T, the sensitivity budget, with t_max = sum(sensitivity), for
    ``objective="gain"``; t = all-base bits - B, the bits saved, with t_max = all-base bits -
    all-low bits, for ``objective="bits"``. plan(t) is the program's solution for that t, except
    that plan(t_max) is by definition the all-low plan and plan(0) the all-base plan.

    Rule. Evaluate plan(t_max) first; if it is in budget, stop. Otherwise keep lo (largest t whose
    plan is known in budget, initially 0) and hi (smallest t known out, initially t_max) and try
    the *geometric* midpoint t = sqrt(L * hi), where L = lo, or, while lo = 0, L = half the
    smallest positive coefficient of the constraint row (below one step of the program no group
    with a positive cost can be lowered, so L stands in for 0). Geometric, not arithmetic: the
    useful t is usually a small fraction of t_max (a 1% budget against a model whose fully lowered
    drop is tens of percent), and sensitivities span decades; arithmetic halving would spend most
    evaluations on plans far out of budget, geometric halving reaches the right order of magnitude
    in about log2(log2(t_max / L)) steps and then refines by ratio. For bit budgets, where groups
    are comparable in size, it costs at most a few steps more than arithmetic halving would.

    A plan already evaluated (an identical plan for another t; cache by plan digest), or the base
    plan, moves lo or hi at no cost; a solver failure (no optimum, time limit) counts as out of
    budget (hi = t). Failed evaluations count as out of budget. The search stops after
    `steps` evaluations beyond the first (so at most steps + 1 in all), or when hi <= L (1 + rtol):
    no plan change is left to resolve between lo and hi.

    `best` is the usable in-budget evaluation with the lowest latency_ratio seen; `trace` lists
    every (parameter, plan, in_budget) the bisection settled, with parameter T (gain) or B (bits),
    including the free ones; `solver_failures` counts the solver calls that gave no optimum.
    The program's ties (e.g. groups with zero gain) are resolved by the solver, not by a rule.

    With `speculate` = D > 0 each ask also proposes the plans the rule would try next, either
    way each pending plan may go, D levels on (alternative solutions of the program, for
    parallel workers). A speculative plan joins the rule's path only when the rule reaches it,
    and counts then as the evaluation it would have been: the path, `trace`, `best` and the
    step cap are those of D = 0, and the plans off the path are extra measured points.
    """

    name = "ilp"

    def __init__(self, groups: Sequence[str], low: Mapping[str, Precision], base: Precision,
                 accept: Accept, *, sensitivity: Mapping[str, float],
                 gain: Mapping[str, float] | None = None, objective: str = "gain",
                 params: Mapping[str, int] | None = None, steps: int = 8,
                 time_limit: float | None = 10.0, rtol: float = 1e-6,
                 speculate: int = 0) -> None:
        super().__init__()
        if speculate < 0:
            raise ValueError("speculate must be >= 0")
        self.speculate = speculate
        self.groups = checked_groups(groups, low)
        if objective not in ("gain", "bits"):
            raise ValueError('objective must be "gain" or "bits"')
        if steps < 0:
            raise ValueError("steps must be >= 0")
        if not rtol > 0:
            raise ValueError("rtol must be > 0")
        self.low = dict(low)
        self.base = base
        self.accept = accept
        self.objective = objective
        self.steps = steps
        self.time_limit = time_limit
        self.rtol = rtol
        self.sensitivity = self._numbers("sensitivity", sensitivity)
        if objective == "gain":
            if gain is None:
                raise ValueError('objective="gain" needs gain')
            self.gain = self._numbers("gain", gain)
            self.params = None
            self._row = [self.sensitivity[g] for g in self.groups]
        else:
            if params is None:
                raise ValueError('objective="bits" needs params')
            self.gain = self._numbers("gain", gain) if gain is not None else None
            self.params = {g: int(v) for g, v in self._numbers("params", params).items()}
            saved = {g: self.params[g] * (base.bits - self.low[g].bits) for g in self.groups}
            if any(s < 0 for s in saved.values()):
                raise ValueError("bits mode: a low precision has more bits than the base")
            self._row = [float(saved[g]) for g in self.groups]
            self.total_params = sum(self.params.values())
            self.base_bits = self.total_params * base.bits
        self.t_max = float(sum(self._row))
        positive = [v for v in self._row if v > 0]
        self._floor = min(positive) / 2 if positive else None
        self.base_plan = Plan.of({g: base for g in self.groups})
        self.low_plan = Plan.of(dict(self.low))
        self.lo = 0.0
        self.hi = self.t_max
        self.best: Evaluation | None = None
        self.trace: list[tuple[float, Plan, bool]] = []
        self.solver_failures = 0
        self._cache: dict[str, Evaluation] = {}
        self._pending: tuple[float, Plan, str] | None = None
        self._asked: set[str] = set()  # speculative plans asked and not yet told
        self._speculated: dict[str, Evaluation] = {}  # told, not (yet) on the rule's path
        self._started = False
        self.done = not self.groups

    def _numbers(self, what: str, m: Mapping[str, float]) -> dict[str, float]:
        if set(m) != set(self.groups):
            raise ValueError(f"{what} must name exactly the groups")
        out = {g: float(m[g]) for g in self.groups}
        if any(not (math.isfinite(v) and v >= 0) for v in out.values()):
            raise ValueError(f"{what} must be finite and >= 0")
        return out

    # -- the program ----------------------------------------------------------------------------
    def parameter(self, t: float) -> float:
        """The program's budget for amount t: T itself (gain) or the bit budget B (bits)."""
        return t if self.objective == "gain" else self.base_bits - t

    def plan_for(self, t: float) -> Plan | None:
        """The program's plan for amount t (None if the solver gives no optimum)."""
        if self.objective == "gain":
            x = solve_binary([self.gain[g] for g in self.groups], self._row, upper=t,
                             maximize=True, time_limit=self.time_limit)
        else:
            x = solve_binary([self.sensitivity[g] for g in self.groups], self._row, lower=t,
                             maximize=False, time_limit=self.time_limit)
        if x is None:
            return None
        return Plan.of({g: (self.low[g] if xi else self.base) for g, xi in zip(self.groups, x)})

    def _label(self, t: float) -> str:
        if self.objective == "gain":
            return f"ilp T={t:.4g}"
        b = self.parameter(t)
        per = f" ({b / self.total_params:.3g} bits/param)" if self.total_params else ""
        return f"ilp-bits B={b:.6g}{per}"

    # -- ask/tell -------------------------------------------------------------------------------
    def ask(self) -> list[Proposal]:
        if self.done:
            return []
        if self._pending is None:
            self._pending = self._next()
            if self._pending is None:
                self.done = True
                return []
        _, plan, label = self._pending
        out = [(plan, label)]
        known = {plan.digest, *self._cache, *self._speculated}
        for p, lab in self._ahead(self.speculate):
            if p.digest not in known:
                known.add(p.digest)
                out.append((p, lab))
                self._asked.add(p.digest)
        return out

    def tell(self, plan: Plan, evaluation: Evaluation) -> None:
        if self._pending is not None and plan == self._pending[1]:
            t = self._pending[0]
            self._pending = None
            self._on_path(t, plan, evaluation)
        elif plan.digest in self._asked:  # speculative: joins the path when the rule gets there
            self._asked.discard(plan.digest)
            self._speculated[plan.digest] = evaluation
        else:
            raise ValueError("tell() got a plan this strategy did not ask for")

    def _on_path(self, t: float, plan: Plan, evaluation: Evaluation) -> None:
        """`plan`'s evaluation as the rule's next step (told now, or speculated earlier)."""
        self.evaluations += 1
        self._cache[plan.digest] = evaluation
        ok = self._in_budget(evaluation)
        if ok and (self.best is None or evaluation.latency_ratio < self.best.latency_ratio):
            self.best = evaluation
        self._settle(t, plan, ok)
        if ok and t >= self.t_max:  # everything lowered is in budget
            self.done = True

    def _ahead(self, depth: int) -> list[Proposal]:
        """The plans the rule would propose after the pending one, either way each goes,
        `depth` levels on (a simulation on copies; nothing here changes)."""
        out: list[Proposal] = []
        level = [self]
        for _ in range(depth):
            following = []
            for state in level:
                t, plan, _ = state._pending
                for ok in (True, False):
                    sim = copy.copy(state)
                    sim.trace, sim._cache = list(state.trace), dict(state._cache)
                    sim._speculated = dict(state._speculated)
                    sim.evaluations += 1
                    sim._settle(t, plan, ok)
                    if ok and t >= sim.t_max:
                        continue
                    sim._pending = sim._next()
                    if sim._pending is not None:
                        out.append(sim._pending[1:])
                        following.append(sim)
            level = following
        return out

    # -- internals ------------------------------------------------------------------------------
    def _in_budget(self, e: Evaluation) -> bool:
        return (e.ok and e.latency_ratio is not None and e.drop is not None
                and math.isfinite(e.latency_ratio) and bool(self.accept(e)))

    def _settle(self, t: float, plan: Plan, in_budget: bool) -> None:
        self.trace.append((self.parameter(t), plan, in_budget))
        if in_budget:
            self.lo = max(self.lo, t)
        else:
            self.hi = min(self.hi, t)

    def _next(self) -> tuple[float, Plan, str] | None:
        if not self._started:
            self._started = True
            return self.t_max, self.low_plan, self._label(self.t_max)
        for _ in range(10_000):  # each pass halves log(hi / L); ends long before
            if self.evaluations >= self.steps + 1 or self._floor is None:
                return None
            low_end = self.lo if self.lo > 0 else self._floor
            if self.hi <= low_end * (1 + self.rtol):
                return None
            t = math.sqrt(low_end * self.hi)
            plan = self.plan_for(t)
            if plan is None:
                self.solver_failures += 1
                self.hi = t
                continue
            if plan == self.base_plan:
                self._settle(t, plan, True)
                continue
            known = self._cache.get(plan.digest)
            if known is not None:
                self._settle(t, plan, self._in_budget(known))
                continue
            ahead = self._speculated.pop(plan.digest, None)
            if ahead is not None:  # measured speculatively: the step it would have been
                self._on_path(t, plan, ahead)
                continue
            return t, plan, self._label(t)
        return None


@dataclass(frozen=True)
class IlpConfig:
    steps: int = field(default=8, metadata=flag("--ilp-steps",
                                                "ilp: evaluations after the first",
                                                lo=1, hi=1_000))
    speculate: int = speculate_field()

    def __post_init__(self) -> None:
        options.check(self)


def _ilp(config: IlpConfig, inputs: SearchInputs) -> list[Strategy]:
    assert inputs.gain is not None, "the ilp strategy needs measured gains"
    return [IlpSearch(inputs.groups, inputs.low, inputs.base, inputs.accept, objective="gain",
                      sensitivity={g: max(v, 0.0) for g, v in inputs.sensitivity.items()},
                      gain={g: max(v, 0.0) for g, v in inputs.gain.items()},
                      steps=config.steps, speculate=config.speculate)]


SPEC = StrategySpec(
    name="ilp", config=IlpConfig, build=_ilp, needs_gains=True,
    description="integer program on sensitivity and measured per-group gains, its budget "
                "bisected on measured accuracy")
