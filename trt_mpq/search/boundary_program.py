"""The `boundary` strategy's latency side: the integer program it solves exactly at each step
(HiGHS through `scipy.optimize.milp`), and its latency models with what they predicted.

    minimize   predicted ratio = 1 - sum_o gain[o] x[o] + sum_e cost[e] z[e]
    subject to sum_o sens[o] x[o] <= t                  (the accuracy side, t bisected)
               sum_{f} x[g, f] <= 1                      (one precision per group)
               z[e] >= y[a, k] - y[b, k], y[b, k] - y[a, k]   for every edge e = (a, b) and
                                                          activation type k
               x binary, 0 <= z <= 1

where an option o = (group g, precision f) lowers g to f, y[g, k] is 1 when g's activations are
of type k (its precision's `edge_type`; the baseline's for an unlowered group and for the
graph's inputs and outputs), so z[e] = 1 exactly where the plan switches type across edge e and
pays that edge's boundary cost (`LatencyModel`, refitted on every measured plan). Prefix plans,
contiguous int8 regions with few switches, and plans that leave a group float because it is
slower lowered are all feasible points; the program picks among them by predicted latency.
`prune` solves the same program over the groups an in-budget plan lowered.

`BoundaryModels` holds the boundary model the strategy decides with and the additive model
(no boundary term) reported beside it, both refitted on every measured plan, and what each
predicted of every plan before it was measured.
"""

from __future__ import annotations

import math
from collections.abc import Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass

from trt_mpq.graph import GRAPH_INPUT, GRAPH_OUTPUT, Edge
from trt_mpq.plan import Plan, Precision
from trt_mpq.plan.precision import edge_type
from trt_mpq.results import Evaluation
from trt_mpq.search.latency_model import (
    LatencyModel,
    Measured,
    Option,
    median_abs,
    standard_error,
)


def solve_program(model: LatencyModel, sensitivity: Mapping[Option, float], t: float, *,
                  exclude: Iterable[Plan] = (), allowed: Collection[Option] | None = None,
                  time_limit: float | None = 10.0, tie_break: float = 1e-6) -> Plan | None:
    """The plan with the least predicted latency whose summed sensitivity is <= t, other than
    the plans in `exclude`, lowering only `allowed` options where given; None if the program
    has no proven optimum (infeasible, time limit). Ties are broken toward less sensitivity,
    then fewer lowered groups (`tie_break` per option, in ratio units: far below any measurable
    gain)."""
    import numpy as np
    from scipy.optimize import Bounds, LinearConstraint, milp

    options = model.options
    n, m = len(options), len(model.edges)
    if n == 0:
        return Plan.of({g: model.base for g in model.groups})
    fit = model.fit_
    base_kind = edge_type(model.base, model.base)
    kinds = sorted({base_kind} | {edge_type(p, model.base) for _, p in options})
    by_group: dict[str, list[int]] = {}
    for i, (g, _) in enumerate(options):
        by_group.setdefault(g, []).append(i)
    sens = np.array([max(float(sensitivity[o]), 0.0) for o in options])
    s_scale = float(sens.max()) or 1.0
    c = np.zeros(n + m)
    for i, o in enumerate(options):
        c[i] = -fit.gain[o] + tie_break * (1.0 + sens[i] / s_scale)
    for j, e in enumerate(model.edges):
        c[n + j] = max(model.edge_cost(e), 0.0)
    rows: list[np.ndarray] = []
    lo: list[float] = []
    hi: list[float] = []

    def add(row: np.ndarray, lower: float, upper: float) -> None:
        rows.append(row)
        lo.append(lower)
        hi.append(upper)

    row = np.zeros(n + m)
    row[:n] = sens / s_scale
    add(row, -np.inf, t / s_scale + 1e-9)
    for idx in by_group.values():
        row = np.zeros(n + m)
        row[idx] = 1.0
        add(row, -np.inf, 1.0)

    def indicator(end: str, k: str) -> tuple[float, dict[int, float]]:
        """y[end, k] as constant + sum coef * x."""
        if end in (GRAPH_INPUT, GRAPH_OUTPUT):
            return (1.0 if k == base_kind else 0.0), {}
        const = 1.0 if k == base_kind else 0.0
        coef: dict[int, float] = {}
        for i in by_group.get(end, []):
            v = (1.0 if edge_type(options[i][1], model.base) == k else 0.0) - const
            if v:
                coef[i] = v
        return const, coef

    if model.boundaries:
        for j, e in enumerate(model.edges):
            if c[n + j] <= 0:
                continue
            for k in kinds:
                ca, xa = indicator(e.src, k)
                cb, xb = indicator(e.dst, k)
                for sign in (1.0, -1.0):  # z >= sign * (y_a - y_b)
                    row = np.zeros(n + m)
                    row[n + j] = 1.0
                    for i, v in xa.items():
                        row[i] -= sign * v
                    for i, v in xb.items():
                        row[i] += sign * v
                    add(row, sign * (ca - cb), np.inf)
    index = {o: i for i, o in enumerate(options)}
    for plan in exclude:  # no-good cuts
        chosen = {index[(g, plan[g])] for g in model.groups if plan[g] is not model.base
                  and (g, plan[g]) in index}
        row = np.zeros(n + m)
        row[:n] = -1.0
        row[list(chosen)] = 1.0
        add(row, -np.inf, len(chosen) - 1.0)
    integrality = np.concatenate([np.ones(n), np.zeros(m)])
    ub = np.ones(n + m)
    if allowed is not None:
        allowed = set(allowed)
        ub[:n] = [1.0 if o in allowed else 0.0 for o in options]
    opts: dict = {"mip_rel_gap": 0.0}
    if time_limit is not None:
        opts["time_limit"] = float(time_limit)
    try:
        res = milp(c, integrality=integrality, bounds=Bounds(0, ub),
                   constraints=LinearConstraint(np.array(rows), np.array(lo), np.array(hi)),
                   options=opts)
    except (ValueError, TypeError, ArithmeticError, RuntimeError):
        return None
    if res.status != 0 or res.x is None:
        return None
    x = [int(round(v)) for v in res.x[:n]]
    if sum(sens[i] for i in range(n) if x[i]) > t * (1 + 1e-6) + 1e-9 * s_scale:
        return None
    chosen = {options[i][0]: options[i][1] for i in range(n) if x[i]}
    return Plan.of({g: chosen.get(g, model.base) for g in model.groups})


@dataclass(frozen=True)
class Prediction:
    """What the models said of a plan before it was measured, and what it measured."""

    label: str
    plan: Plan
    predicted: float  # boundary model, as fitted before this measurement
    additive: float  # additive model (no boundary term), as fitted before
    measured: float | None


class BoundaryModels:
    """The boundary model (`model`, what the strategy decides with) and the additive model
    (`additive`, the same gains without the boundary term, reported beside it), both refitted
    on every measured plan (`data`), and what they predicted of each plan before it was
    measured (`predictions`)."""

    def __init__(self, groups: Sequence[str], edges: Iterable[Edge], base: Precision,
                 prior_gain: Mapping[Option, float]) -> None:
        edges = tuple(edges)
        self.model = LatencyModel(groups, edges, base, prior_gain)
        self.additive = LatencyModel(groups, edges, base, prior_gain, boundaries=False)
        self.data: list[Measured] = []
        self.predictions: list[Prediction] = []

    def predicting(self, label: str, plan: Plan) -> None:
        """Record what both models predict of `plan`, about to be measured."""
        self.predictions.append(Prediction(label, plan, self.model.predict(plan),
                                           self.additive.predict(plan), None))

    def measured(self, plan: Plan, evaluation: Evaluation) -> None:
        """Record the last predicted plan's measurement, and refit both models on it where it
        has a latency ratio."""
        last = self.predictions[-1]
        self.predictions[-1] = Prediction(last.label, last.plan, last.predicted, last.additive,
                                          evaluation.latency_ratio)
        if evaluation.latency_ratio is not None and math.isfinite(evaluation.latency_ratio):
            self.data.append((plan, evaluation.latency_ratio,
                              standard_error(evaluation.ratio_ci)))
            self.model.fit(self.data)
            self.additive.fit(self.data)

    def report(self) -> dict:
        """The boundary model's fit, and both models' predictions against the measurements."""
        rows = [p for p in self.predictions if p.measured is not None]
        return {
            "fit": self.model.fit_.to_json_dict(),
            "predictions": [{"label": p.label, "plan": p.plan.digest, "predicted": p.predicted,
                             "additive": p.additive, "measured": p.measured} for p in rows],
            "median_abs_error": median_abs([p.predicted - p.measured for p in rows]),
            "additive_median_abs_error": median_abs([p.additive - p.measured for p in rows]),
        }
