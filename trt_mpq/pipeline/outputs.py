"""Turn a `SearchOutcome` into the files of the output folder."""

from __future__ import annotations

from pathlib import Path

from trt_mpq.backends.base import Backend
from trt_mpq.calib import CalibConfig, Ranges
from trt_mpq.measure.latency import MeasureConfig
from trt_mpq.pipeline import boundaries
from trt_mpq.pipeline.search import Confirmation, SearchConfig, SearchOutcome
from trt_mpq.pipeline.workspace import Workspace
from trt_mpq.qdq import BASELINE
from trt_mpq.report import (
    machine_info,
    pareto_rows,
    plot_pareto,
    render_csv,
    render_report,
    versions,
    write_json,
    write_text,
)
from trt_mpq.search import Budget, BudgetAccept, Evaluation


def _confirmation_dict(c: Confirmation) -> dict:
    ev = c.evaluation
    return {"label": ev.label, "plan_digest": ev.plan.digest, "holdout_metric": c.holdout_metric,
            "holdout_drop": c.holdout_drop, "holdout_rel_drop": c.holdout_rel_drop,
            "holdout_bound": c.bound.to_json_dict() if c.bound else None,
            "latency_ratio": c.latency_ratio,
            "latency_ratio_ci": list(c.ratio_ci) if c.ratio_ci else None,
            "holdout_samples_used": c.samples, "in_budget": c.in_budget,
            "test_level": c.bound.confidence if c.bound else None}


def _samples_summary(evaluations: list[Evaluation], n: int) -> dict:
    """How many search-split samples the accuracy passes used (adaptive evaluation)."""
    used = [e.samples for e in evaluations if e.ok and e.samples is not None]
    mean = sum(used) / len(used) if used else None
    return {"split": n, "evaluations": len(used), "mean": mean,
            "mean_share": mean / n if mean is not None and n else None}


def evaluation_dicts(outcome: SearchOutcome, budget: Budget) -> list[dict]:
    """Every evaluation as pareto.json/csv carry it; `in_budget` as the search judged it: by
    the drop's upper bound where it decided by bounds (a point-estimate verdict here marked
    plans in budget that the search had refused)."""
    accept = BudgetAccept.judging(budget, outcome.baseline_metric, outcome.decision)
    front = {e.plan.digest for e in outcome.frontier}
    out = []
    for e in outcome.evaluations:
        d = e.to_json_dict()
        d["on_frontier"] = e.plan.digest in front
        d["in_budget"] = accept(e)
        d["cached"] = e.cached
        out.append(d)
    return out


def search_result(ws: Workspace, backend: Backend, outcome: SearchOutcome, config: SearchConfig,
                  argv: list[str] | None = None, setup_s: float = 0.0,
                  metric_choice: dict | None = None) -> dict:
    task = ws.task
    budget = config.budget
    base_ev: Evaluation = outcome.evaluations[0]
    best = outcome.best
    base_lat = best.baseline_latency if best else base_ev.baseline_latency
    result = {
        "model": task.name,
        "backend": backend.name,
        "weights": task.weights,
        "task": {
            "metric": task.metric.name, "higher_is_better": task.metric.higher_is_better,
            # which metric judged the plans, who chose it and why (`judging.choose_metric`)
            "metric_choice": metric_choice or {"metric": task.metric.name, "chosen_by": "task",
                                               "reason": ""},
            "description": task.description, "notes": list(task.notes),
            "splits": {"calibration": len(task.calibration), "search": len(task.search),
                       "holdout": len(task.holdout)},
            "latency_batch": task.latency_batch,
        },
        "budget": {**budget.to_json_dict(),
                   "allowed_drop": budget.allowed_drop(outcome.baseline_metric),
                   "describe": budget.describe()},
        "baseline": {
            "precision": BASELINE[backend.dialect].value,
            "metric": outcome.baseline_metric,
            "holdout_metric": outcome.baseline_holdout_metric,
            "latency_ms": base_lat.median_ms if base_lat else None,
            "latency": base_lat.to_json_dict() if base_lat else None,
        },
        "best": None,
        "budget_met": outcome.budget_met,
        "evaluations": len(outcome.evaluations),
        "fresh_evaluations": outcome.fresh,
        "cached_evaluations": outcome.cached,
        # baseline outputs and sensitivity scores reused from earlier runs on this model
        "shared_cache": outcome.shared,
        # the baseline timed against itself: can latency differences be trusted?
        "timing_check": outcome.timing.to_json_dict() if outcome.timing else None,
        # can the holdout certify the budget at the confidence level? (accuracy-type metrics)
        "holdout_resolution": outcome.resolution,
        # how plans were judged in budget on the search split (the answer: certified on the
        # holdout when a confidence level is set), and the adaptive evaluation's looks
        "search_decision": outcome.decision,
        "adaptive": outcome.adaptive,
        "search_samples": _samples_summary(outcome.evaluations, len(task.search)),
        # the finalists' joint re-measurement: rounds until the ratio intervals were narrow
        "final_timing": outcome.final_timing,
        # --executor ray: the workers and the device type each timed plans on
        "workers": outcome.workers,
        "wall_s": setup_s + outcome.wall_s,  # the whole command, from start to outputs
        "phases": {"setup_s": setup_s, **outcome.phases},
        "strategy": config.strategy,
        "sensitivity": {**outcome.sensitivity.to_json_dict(), "order": outcome.order,
                        "ordering": config.order},
        "latency_gains": outcome.gains.to_json_dict() if outcome.gains else None,
        "latency_model": outcome.latency_model,
        "low_precisions": {g: p.value for g, p in outcome.low.items()},
        "tried_on_holdout": [_confirmation_dict(c) for c in outcome.tried],
        # the holdout's tests: how many plans it may judge (declared before it was read), the
        # level each is judged at (their error levels sum to 1 - confidence) and how many it
        # judged; the answer's certificate holds at `confidence` over all of them
        "holdout_tests": outcome.holdout_tests,
        "versions": versions(),
        "machine": machine_info(),
        "command": argv or [],
    }
    if best:
        ev = best.evaluation
        result["best"] = {
            "plan": "plan.json",
            "plan_digest": ev.plan.digest,
            "label": ev.label,
            "metric": ev.metric,
            "drop": ev.drop,
            "rel_drop": ev.rel_drop,
            "holdout_metric": best.holdout_metric,
            "holdout_drop": best.holdout_drop,
            "holdout_rel_drop": best.holdout_rel_drop,
            # paired, one-sided upper bound at `confidence`: the answer is in budget only when
            # it is within the budget (certified); on `holdout_samples_used` of `holdout_n`
            "holdout_drop_upper": best.bound.upper if best.bound else None,
            "holdout_rel_drop_upper": best.bound.rel_upper if best.bound else None,
            "holdout_n": len(task.holdout),
            "holdout_samples_used": best.samples,
            "certified": best.bound is not None,
            # the guarantee, over every plan the holdout judged (`holdout_tests`)
            "confidence": (outcome.holdout_tests or {}).get("confidence") if best.bound
            else None,
            # the level this plan's own test was run at (its share of the error level)
            "test_level": best.bound.confidence if best.bound else None,
            "holdout_bound": best.bound.to_json_dict() if best.bound else None,
            "latency_ms": best.latency.median_ms,
            "latency": best.latency.to_json_dict(),
            "baseline_latency": best.baseline_latency.to_json_dict(),
            "latency_ratio": best.latency_ratio,
            # 95% interval over the confirmation's paired rounds (bootstrap)
            "latency_ratio_ci": list(best.ratio_ci) if best.ratio_ci else None,
            "search_latency_ratio": ev.latency_ratio,
            "precision_counts": ev.plan.counts(),
            "runtime_options": dict(ev.plan.options),
            "artifact": best.artifact,
            "extra_checks": best.extra,
            "census_kernels": dict(ev.census.kernels) if ev.census else {},
            "census_source": ev.census.source if ev.census else "",
            "unverified_groups": ev.census.unverified(ev.plan) if ev.census else [],
        }
    if ws.shapes is not None:  # declared deployment shapes: the objective and each shape
        result["shapes"] = ws.shapes.to_json_dict()
        if best and best.shapes:
            result["best"]["shapes"] = [s.to_json_dict() for s in best.shapes]
        for entry, c in zip(result["tried_on_holdout"], outcome.tried):
            if c.shapes:
                entry["shapes"] = [s.to_json_dict() for s in c.shapes]
    return result


def write_search_outputs(out_dir: Path, ws: Workspace, backend: Backend, outcome: SearchOutcome,
                         config: SearchConfig, calib: CalibConfig, ranges: Ranges,
                         measure: MeasureConfig, argv: list[str] | None = None,
                         setup_s: float = 0.0, metric_choice: dict | None = None) -> dict:
    """Write every output file; `setup_s` is the time spent before the search (model export,
    preparation, calibration), counted in the reported wall time."""
    result = search_result(ws, backend, outcome, config, argv, setup_s, metric_choice)
    evals = evaluation_dicts(outcome, config.budget)
    # the answer's and the frontier plans' precision boundaries (estimated and measured)
    boundaries.add_to_outputs(result, evals, ws, backend, ranges, outcome, out_dir)
    write_json(out_dir / "pareto.json", {"model": result["model"], "backend": result["backend"],
                                         "baseline_metric": outcome.baseline_metric,
                                         "evaluations": evals})
    write_text(out_dir / "pareto.csv", render_csv(pareto_rows(evals)))
    plot_pareto(result, evals, out_dir / "pareto.png")
    if outcome.best:
        write_text(out_dir / "plan.json", outcome.best.evaluation.plan.to_json() + "\n")
    write_json(out_dir / "config.json", {
        "search": config.to_json_dict(),
        "calibration": {**calib.to_json_dict(), "ranges_digest": ranges.digest,
                        "tensors": len(ranges.values)},
        "measure": measure.to_json_dict(),
        "backend": backend.describe(),
        "model": {"source": str(ws.source_path), "prepared": str(ws.prepared_path),
                  "groups": len(ws.groups)},
        "cache_dir": str(ws.cache_dir),
        "versions": result["versions"],
        "machine": result["machine"],
        "command": argv or [],
    })
    write_text(out_dir / "report.md", render_report(result, evals))
    write_json(out_dir / "result.json", result)  # last: its presence marks a finished search
    return result
