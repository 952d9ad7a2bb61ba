"""A latency model that sees precision boundaries, learned from the plans a search measures.

In units of the baseline's latency (the latency ratio every evaluation measures):

    ratio(plan) = 1 - sum over lowered groups g of gain[g, f]          (f: g's precision)
                    + sum over graph edges e at a boundary of (c_edge + c_size * size[e])

An edge (`trt_mpq.model.group_edges`) is at a boundary when its two ends run with different
activation types (`trt_mpq.plan.precision.edge_type`: int8 beside float; the graph's own inputs
and outputs are float): the runtime converts there (Q/DQ, layout reorders on ONNX Runtime,
reformat layers on TensorRT) and fusions break. `size[e]` is the edge tensor's size relative to
the mean edge's, so a boundary on a large activation costs more than on a small one.

Fitting is a MAP estimate: least squares on the measured ratios (noise `noise_sd`) plus Gaussian
priors, the per-group gains centred on the profiler's per-kernel gains (`prior_sd`: half the
prior gain plus a floor), the boundary costs centred on 0 and bounded below by 0 (scipy's
bounded linear least squares). With no measurement it is the profiler's additive model. The
*additive* model keeps the same gains and fitting but no boundary term: it is what every
per-layer method (HAWQ-V3's latency table, HAQ, AutoQuantize) assumes, and is reported beside
this one (leave-one-out errors on the measured plans, `loo_errors`).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

from trt_mpq.graph import GRAPH_INPUT, GRAPH_OUTPUT, Edge
from trt_mpq.plan import Plan, Precision
from trt_mpq.plan.precision import edge_type

Option = tuple[str, Precision]  # (group, the precision it is lowered to)
#: (plan, measured latency ratio) or (plan, ratio, its standard error)
Measured = tuple[Plan, float] | tuple[Plan, float, float | None]


def standard_error(ci: tuple[float, float] | None) -> float | None:
    """A measured ratio's standard error from its 95% interval."""
    return (ci[1] - ci[0]) / 3.92 if ci else None


@dataclass(frozen=True)
class Fit:
    """Fitted parameters: gain per option (ratio units), boundary costs."""

    gain: Mapping[Option, float]
    c_edge: float
    c_size: float
    measurements: int

    def to_json_dict(self) -> dict:
        return {"gain": {f"{g}:{p.value}": v for (g, p), v in self.gain.items()},
                "c_edge": self.c_edge, "c_size": self.c_size, "measurements": self.measurements}


class LatencyModel:
    """Predicts a plan's latency ratio; `fit` refits it on measured (plan, ratio) pairs."""

    def __init__(self, groups: Sequence[str], edges: Iterable[Edge], base: Precision,
                 prior_gain: Mapping[Option, float], *, boundaries: bool = True,
                 noise_sd: float = 0.01, prior_sd_rel: float = 0.5,
                 prior_sd_floor: float | None = None, boundary_sd: float = 0.05) -> None:
        self.groups = tuple(groups)
        names = set(self.groups)
        self.edges = tuple(e for e in edges if e.src != e.dst)
        for e in self.edges:
            if (e.src not in names and e.src != GRAPH_INPUT) or \
                    (e.dst not in names and e.dst != GRAPH_OUTPUT):
                raise ValueError(f"edge {e.src} -> {e.dst} names an unknown group")
        self.base = base
        self.options: tuple[Option, ...] = tuple(sorted(
            prior_gain, key=lambda o: (self.groups.index(o[0]), o[1].value)))
        if any(g not in names for g, _ in self.options):
            raise ValueError("prior gains name an unknown group")
        self.prior = {o: float(prior_gain[o]) for o in self.options}
        if any(not math.isfinite(v) for v in self.prior.values()):
            raise ValueError("prior gains must be finite")
        self.boundaries = boundaries
        mean = (sum(max(e.elements, 1) for e in self.edges) / len(self.edges)) if self.edges \
            else 1.0
        self.size = {(e.src, e.dst): max(e.elements, 1) / mean for e in self.edges}
        floor = prior_sd_floor if prior_sd_floor is not None else \
            0.1 / max(len(self.groups), 1)
        self.prior_sd = {o: prior_sd_rel * abs(v) + floor for o, v in self.prior.items()}
        self.noise_sd = noise_sd
        self.boundary_sd = boundary_sd
        self.fit_ = Fit(dict(self.prior), 0.0, 0.0, 0)

    # -- features ---------------------------------------------------------------------------------
    def edge_kind(self, plan: Plan, end: str) -> str:
        if end in (GRAPH_INPUT, GRAPH_OUTPUT):
            return edge_type(self.base, self.base)
        return edge_type(plan[end], self.base)

    def boundary_edges(self, plan: Plan) -> list[Edge]:
        """The edges where `plan` switches activation type."""
        return [e for e in self.edges if self.edge_kind(plan, e.src) != self.edge_kind(plan, e.dst)]

    def features(self, plan: Plan) -> tuple[list[Option], int, float]:
        """(lowered options, boundary count, boundary size) of a plan."""
        lowered = []
        for g in self.groups:
            p = plan[g]
            if p is not self.base:
                if (g, p) not in self.prior:
                    raise ValueError(f"the model has no gain for {g} at {p.value}")
                lowered.append((g, p))
        cut = self.boundary_edges(plan)
        return lowered, len(cut), sum(self.size[(e.src, e.dst)] for e in cut)

    # -- prediction -------------------------------------------------------------------------------
    def predict(self, plan: Plan, fit: Fit | None = None) -> float:
        f = fit or self.fit_
        lowered, count, size = self.features(plan)
        out = 1.0 - sum(f.gain[o] for o in lowered)
        if self.boundaries:
            out += f.c_edge * count + f.c_size * size
        return out

    def edge_cost(self, e: Edge, fit: Fit | None = None) -> float:
        f = fit or self.fit_
        return (f.c_edge + f.c_size * self.size[(e.src, e.dst)]) if self.boundaries else 0.0

    # -- fitting ----------------------------------------------------------------------------------
    def solve(self, data: Sequence[Measured]) -> Fit:
        """The MAP fit on `data` (plan, measured ratio[, its standard error]: each measurement
        weighs by its own precision, never more than `noise_sd` allows), without changing the
        model."""
        import numpy as np
        from scipy.optimize import lsq_linear

        n = len(self.options)
        k = n + (2 if self.boundaries else 0)
        index = {o: i for i, o in enumerate(self.options)}
        rows, rhs = [], []
        for item in data:
            plan, ratio = item[0], item[1]
            if ratio is None or not math.isfinite(ratio):
                continue
            sd = max(item[2], self.noise_sd) if len(item) > 2 and item[2] else self.noise_sd
            lowered, count, size = self.features(plan)
            row = np.zeros(k)
            for o in lowered:
                row[index[o]] = -1.0
            if self.boundaries:
                row[n], row[n + 1] = count, size
            rows.append(row / sd)
            rhs.append((ratio - 1.0) / sd)
        measured = len(rows)
        for o, i in index.items():  # priors
            row = np.zeros(k)
            row[i] = 1.0 / self.prior_sd[o]
            rows.append(row)
            rhs.append(self.prior[o] / self.prior_sd[o])
        if self.boundaries:
            for j in (n, n + 1):
                row = np.zeros(k)
                row[j] = 1.0 / self.boundary_sd
                rows.append(row)
                rhs.append(0.0)
        lower = np.full(k, -np.inf)
        if self.boundaries:
            lower[n:] = 0.0
        res = lsq_linear(np.array(rows), np.array(rhs), bounds=(lower, np.full(k, np.inf)),
                         method="bvls")
        x = res.x
        return Fit({o: float(x[i]) for o, i in index.items()},
                   float(x[n]) if self.boundaries else 0.0,
                   float(x[n + 1]) if self.boundaries else 0.0, measured)

    def fit(self, data: Sequence[Measured]) -> Fit:
        self.fit_ = self.solve(data)
        return self.fit_

    def loo_errors(self, data: Sequence[Measured]) -> list[float]:
        """Leave-one-out prediction errors (predicted - measured, ratio units) on `data`: each
        plan predicted by the model fitted on all the others."""
        data = [d for d in data if d[1] is not None and math.isfinite(d[1])]
        return [self.predict(d[0], self.solve(data[:i] + data[i + 1:])) - d[1]
                for i, d in enumerate(data)]


def median_abs(values: Sequence[float]) -> float | None:
    import statistics

    return statistics.median(abs(v) for v in values) if values else None


def model_report(groups: Sequence[str], edges: Iterable[Edge], base: Precision,
                 prior_gain: Mapping[Option, float], measured: Iterable[Measured]) -> dict:
    """Both models on the plans a search measured (the baseline and plans with runtime options
    left out): the boundary model fitted on all of them, and each plan's leave-one-out error
    for both, in units of the baseline's latency."""
    known = set(prior_gain)
    data = [m for m in measured if not (p := m[0]).options and m[1] is not None
            and math.isfinite(m[1]) and any(p[g] is not base for g in p.groups)
            and all(p[g] is base or (g, p[g]) in known for g in p.groups)]
    model = LatencyModel(groups, edges, base, prior_gain)
    additive = LatencyModel(groups, edges, base, prior_gain, boundaries=False)
    fit = model.fit(data)
    loo = model.loo_errors(data)
    loo_add = additive.loo_errors(data)
    return {
        "what": "latency ratio = 1 - sum of lowered groups' gains + per boundary edge (c_edge "
                "+ c_size * relative tensor size); errors are leave-one-out, in units of the "
                "baseline's latency",
        "plans": len(data), "edges": len(model.edges),
        "fit": {"c_edge": fit.c_edge, "c_size": fit.c_size},
        "median_abs_error": median_abs(loo), "additive_median_abs_error": median_abs(loo_add),
        "points": [{"plan": d[0].digest, "measured": d[1], "predicted": d[1] + e,
                    "additive": d[1] + a} for d, e, a in zip(data, loo, loo_add)],
    }


__all__ = ["Fit", "LatencyModel", "Measured", "Option", "median_abs", "model_report",
           "standard_error"]
