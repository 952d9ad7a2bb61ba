"""The per-plan account of precision boundaries that a search's outputs carry.

For the answer and each frontier plan: every precision boundary (`trt_mpq.qdq.boundaries`:
the tensor where a lowered region meets a float one, or two low precisions meet, and the Q/DQ
pair or Cast materialize put there), its cost as the boundary-aware latency model estimates it
(`trt_mpq.search.latency_model`, fitted on the search's measured plans; in units of the
baseline's latency), and, where the backend tells, what the conversions measured:

- ONNX Runtime: one short profiled run of the plan (`PROFILE_RUNS` runs after a warm-up, with
  its runtime options): the QuantizeLinear / DequantizeLinear / Cast kernels and the layout
  conversions (Transpose, ReorderInput/Output) at each boundary, in ms per run
  (`trt_mpq.backends.ort_boundaries`). The answer always; frontier plans while the profiles so
  far took less than `PROFILE_BUDGET_S`.
- TensorRT / TensorRT-RTX: the answer's layer report (`layers.json` beside the engine): the
  Reformat layers and conversion kernels at each boundary. The report has no times (those
  need the engine profiler on a GPU).
"""

from __future__ import annotations

import logging
import time
from pathlib import Path

from trt_mpq.backends.base import Backend
from trt_mpq.calib import Ranges
from trt_mpq.errors import TrtMpqError
from trt_mpq.model.groups import group_edges
from trt_mpq.pipeline.analysis import can_profile
from trt_mpq.pipeline.search import SearchOutcome
from trt_mpq.pipeline.workspace import Workspace
from trt_mpq.plan import Plan
from trt_mpq.qdq import BASELINE, materialize
from trt_mpq.qdq.boundaries import find_boundaries
from trt_mpq.search import Evaluation
from trt_mpq.search.latency_model import Fit, LatencyModel

log = logging.getLogger(__name__)

PROFILE_RUNS = 5
PROFILE_BUDGET_S = 30.0


def estimate_basis(outcome: SearchOutcome, backend: Backend) -> dict:
    """What the estimated costs come from: the fitted boundary costs, or why there are none."""
    model = outcome.latency_model
    if model is None:
        why = (f"{backend.name} gives no per-layer profile, so no latency model was fitted"
               if not can_profile(backend) else
               "no latency model was fitted (the search measured no per-group latency gains)")
        return {"fitted": False, "reason": why}
    if not model.get("plans"):
        return {"fitted": False, "reason": "the latency model had no measured lowered plan to "
                                           "fit boundary costs on"}
    return {"fitted": True, "plans": model["plans"], "c_edge": model["fit"]["c_edge"],
            "c_size": model["fit"]["c_size"],
            "units": "fraction of the baseline's latency (c_edge + c_size x the tensor's size "
                     "relative to the mean edge's)"}


def plans_to_account(outcome: SearchOutcome) -> list[Evaluation]:
    """The answer first, then the frontier plans, each once."""
    out: dict[str, Evaluation] = {}
    if outcome.best is not None:
        out[outcome.best.evaluation.plan.digest] = outcome.best.evaluation
    for ev in outcome.frontier:
        out.setdefault(ev.plan.digest, ev)
    return list(out.values())


def account(ws: Workspace, backend: Backend, ranges: Ranges, outcome: SearchOutcome,
            out_dir: Path) -> dict[str, dict]:
    """plan digest -> its boundary account, for the answer and the frontier plans."""
    base = BASELINE[backend.dialect]
    edges = group_edges(ws.model, ws.groups)
    basis = estimate_basis(outcome, backend)
    model = None
    if basis["fitted"]:
        model = LatencyModel(ws.group_names(), edges, base, {})
        model.fit_ = Fit({}, basis["c_edge"], basis["c_size"], basis["plans"])
    answer = outcome.best.evaluation.plan.digest if outcome.best is not None else None
    model_nodes = {n.name for n in ws.model.graph.node}
    spent = 0.0
    accounts = {}
    for ev in plans_to_account(outcome):
        plan = ev.plan
        try:
            graph = materialize(ws.model, ws.groups, plan, ranges, backend.dialect)
        except TrtMpqError as e:
            accounts[plan.digest] = {"label": ev.label, "error": str(e), "boundaries": []}
            continue
        found = find_boundaries(ws.model, ws.groups, plan, graph, base, edges)
        rows = [b.to_json_dict() | {"estimated_cost": model.edge_cost(b.edge) if model else None}
                for b in found]
        if not found:
            measured = {"source": None, "reason": "no boundary"}
        elif getattr(backend, "profiled_run", None) is not None:
            if plan.digest != answer and spent > PROFILE_BUDGET_S:
                measured = {"source": None, "reason": f"not profiled: the profiles before it "
                                                      f"took {spent:.0f} s"}
            else:
                t = time.perf_counter()
                measured = _profile(ws, backend, plan, graph, found, rows, model_nodes)
                spent += time.perf_counter() - t
        elif plan.digest == answer and (out_dir / "layers.json").is_file():
            measured = _layer_report(out_dir / "layers.json", ws, found, rows)
        else:
            measured = {"source": None, "reason": f"{backend.name} reports no per-kernel "
                        "conversions" + ("" if plan.digest == answer else
                                         " for a plan other than the answer")}
        costs = [r["estimated_cost"] for r in rows if r["estimated_cost"] is not None]
        accounts[plan.digest] = {
            "label": ev.label, "count": len(rows), "estimate": basis,
            "estimated_total": sum(costs) if model else None, "measured": measured,
            "boundaries": rows}
    if answer in accounts:
        a = accounts[answer]
        log.info("precision boundaries of the answer: %d%s%s", a.get("count", 0),
                 f", estimated {100 * a['estimated_total']:.1f}% of the baseline's latency"
                 if a.get("estimated_total") is not None else "",
                 f", conversion kernels {a['measured']['boundaries_ms']:.3f} ms per run"
                 if (a.get("measured") or {}).get("boundaries_ms") is not None else "")
    return accounts


def _profile(ws: Workspace, backend: Backend, plan: Plan, graph, found, rows: list[dict],
             model_nodes: set[str]) -> dict:
    """Profile the plan's graph once and add each boundary's kernels to its row."""
    from trt_mpq.backends.ort_boundaries import boundary_kernels, total_ms

    try:
        optimized, events = backend.profiled_run(  # type: ignore[attr-defined]
            graph, ws.task.latency_feed(), PROFILE_RUNS, dict(plan.options))
    except TrtMpqError as e:
        return {"source": None, "reason": f"profiling failed: {e}"}
    times = boundary_kernels(optimized, events, found, graph, model_nodes, PROFILE_RUNS)
    for row, t in zip(rows, times):
        row["measured_ms"], row["kernels"] = t["ms"], t["kernels"]
    timed = [t["ms"] for t in times if t["ms"] is not None]
    return {"source": "onnxruntime profiler", "runs": PROFILE_RUNS,
            "total_ms": total_ms(events, PROFILE_RUNS),
            "boundaries_ms": sum(timed) if timed else None}


def _layer_report(path: Path, ws: Workspace, found, rows: list[dict]) -> dict:
    """The Reformat layers and conversion kernels of the answer's engine at each boundary."""
    import json

    from trt_mpq.backends.tensorrt.reformats import boundary_layers

    try:
        layers = json.loads(path.read_text())
    except (OSError, ValueError) as e:
        return {"source": None, "reason": f"the layer report could not be read: {e}"}
    by_name = {g.name: g for g in ws.groups}
    entered = [by_name[b.dst].op_names if b.dst in by_name else () for b in found]
    for row, hit in zip(rows, boundary_layers(layers, found, entered)):
        row["layers"] = hit
    return {"source": "TensorRT layer report (no times: the engine profiler needs a GPU)",
            "layers": sum(len(r["layers"]) for r in rows)}


def add_to_outputs(result: dict, evaluations: list[dict], ws: Workspace, backend: Backend,
                   ranges: Ranges, outcome: SearchOutcome, out_dir: Path) -> None:
    """result.json's answer and pareto.json's evaluations get their accounts (`account`); the
    time it took is a phase of the search (`boundaries_s`) and part of its wall time."""
    t = time.perf_counter()
    insert(result, evaluations, account(ws, backend, ranges, outcome, out_dir))
    spent = time.perf_counter() - t
    result.setdefault("phases", {})["boundaries_s"] = spent
    result["wall_s"] = result.get("wall_s", 0.0) + spent


def insert(result: dict, evaluations: list[dict], accounts: dict[str, dict]) -> None:
    """Put each account where its plan is: result.json's answer, pareto.json's evaluations."""
    best = result.get("best")
    if best and best.get("plan_digest") in accounts:
        best["boundaries"] = accounts[best["plan_digest"]]
    for e in evaluations:
        if e.get("plan_digest") in accounts:
            e["boundaries"] = accounts[e["plan_digest"]]


__all__ = ["PROFILE_BUDGET_S", "PROFILE_RUNS", "account", "add_to_outputs", "estimate_basis",
           "insert", "plans_to_account"]
