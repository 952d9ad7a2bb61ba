"""The search job: sensitivity -> order -> strategies -> frontier -> confirmation on the holdout.

The answer is the in-budget plan with the lowest *measured* latency (latency is not monotone in
the number of quantized groups on CPU), if it is faster than the baseline, re-measured against
the baseline and confirmed on the holdout split that the search never saw. If the fastest fails
on the holdout, the next fastest in-budget plans are tried (up to `confirm_candidates`, and as
many again after a strategy's fallback); the holdout's error level is split over every plan it
may judge, declared before it is read (`judging.HoldoutTests`), so the answer's certificate
holds at the stated confidence after all of them.
"""

from __future__ import annotations

import dataclasses
import logging
import shutil
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from trt_mpq.backends.base import Backend
from trt_mpq.calib import Ranges
from trt_mpq.errors import PlanError, TrtMpqError
from trt_mpq.measure.latency import MeasureConfig, TimingCheck
from trt_mpq.measure.shaped import PairTiming
from trt_mpq.model.groups import group_edges
from trt_mpq.pipeline import analysis
from trt_mpq.pipeline.answer import Confirmation, confirm, holdout_baseline, pick_answer
from trt_mpq.pipeline.config import SearchConfig
from trt_mpq.pipeline.evaluator import Evaluator, shared_cache
from trt_mpq.pipeline.gate import FastestInBudget
from trt_mpq.pipeline.judging import (
    HoldoutTests,
    declared_tries,
    holdout_resolution,
    judge,
    rules,
)
from trt_mpq.pipeline.timing import check_timing, final_measure, time_finalists
from trt_mpq.pipeline.workspace import Workspace
from trt_mpq.plan import Plan, Precision
from trt_mpq.qdq import BASELINE, SUPPORTED, default_low_precision, materialize
from trt_mpq.search import (
    BudgetAccept,
    Evaluation,
    OptionSweep,
    SearchInputs,
    Status,
    drive,
    frontier,
)
from trt_mpq.search.latency_model import model_report, standard_error
from trt_mpq.sensitivity import SensitivityResult, ordering
from trt_mpq.store import Store

log = logging.getLogger(__name__)


@dataclass
class SearchOutcome:
    baseline_plan: Plan
    baseline_metric: float
    baseline_holdout_metric: float
    evaluations: list[Evaluation]
    frontier: list[Evaluation]
    sensitivity: SensitivityResult
    order: list[str]
    low: dict[str, Precision]
    best: Confirmation | None  # None: no quantized plan met the budget on search and holdout
    tried: list[Confirmation]
    fresh: int
    cached: int
    wall_s: float
    phases: dict[str, float]
    holdout_tests: dict | None = None  # `HoldoutTests`: declared tries, their levels, judged
    gains: analysis.Gains | None = None
    shared: dict = field(default_factory=dict)  # what came from the cache of earlier runs
    timing: TimingCheck | None = None  # the baseline timed against itself
    resolution: dict | None = None  # can the holdout certify the budget? (accuracy metrics)
    decision: str = "point"  # how the search judged plans in budget on the search split
    final_timing: dict | None = None  # how precise the finalists' joint re-measurement got
    adaptive: dict | None = None  # the sequential rules of the search and holdout splits
    latency_model: dict | None = None  # the boundary-aware latency model on the measured plans
    workers: dict | None = None  # Ray workers (name -> the device type each timed on)

    @property
    def budget_met(self) -> bool:
        return self.best is not None


def low_precisions(ws: Workspace, backend: Backend,
                   precision: Precision | None) -> dict[str, Precision]:
    """The precision each group is lowered to. Groups whose op type the chosen precision does
    not apply to (int8-dynamic and int4w apply to MatMul only) are lowered to int8 instead."""
    dialect = backend.dialect
    low = {}
    for g in ws.groups:
        if precision is None:
            low[g.name] = default_low_precision(g, dialect)
        elif not precision.applies_to(g.op_type):
            low[g.name] = Precision.INT8
        else:
            low[g.name] = precision
    backend.check_plan(Plan.of(low), ws.groups)
    if precision is not None and precision is BASELINE[dialect]:
        raise PlanError(f"{precision.value} is the baseline precision of {dialect.value}; "
                        "choose a lower one")
    return low


def format_options(ws: Workspace, backend: Backend, ranges: Ranges, low: Mapping[str, Precision],
                   config: SearchConfig, store: Store, shared, sensitivity: bool = True) -> dict:
    """(group, precision) -> (sensitivity, profiled gain in ratio units) for every lower
    precision a group's op supports on the backend besides its default `low` one (`--precision
    auto` with a strategy that chooses per group): one sensitivity run (unless `sensitivity` is
    False: 0) and one profile per precision, each over the groups it applies to."""
    dialect = backend.dialect
    out: dict = {}
    for p in sorted(SUPPORTED[dialect], key=lambda p: p.value):
        if p.is_float or p is BASELINE[dialect]:
            continue
        low_p = {g.name: (p if p.applies_to(g.op_type) else low[g.name]) for g in ws.groups}
        changed = [g for g in low_p if low_p[g] is not low[g]]
        if not changed:
            continue
        try:
            backend.check_plan(Plan.of(low_p), ws.groups)
        except PlanError as e:
            log.info("%s is not a per-group option here: %s", p.value, e)
            continue
        scores = analysis.sensitivity(ws, ranges, dialect, low_p, config.sensitivity,
                                      config.sensitivity_config, store, config.torch_model,
                                      shared=shared).scores if sensitivity else {}
        gains = analysis.latency_gains(ws, backend, ranges, low_p, store)
        log.info("%s is an option for %d group(s)", p.value, len(changed))
        out.update({(g, p): (scores.get(g, 0.0), gains.gain_ratio[g]) for g in changed})
    return out


def _log_evaluation(ev: Evaluation, accept: BudgetAccept, baseline_metric: float) -> None:
    """One line per evaluation, with the verdict the search acts on (`accept`: by the drop's
    upper bound where the search decides by bounds, and then the bound is shown)."""
    if ev.ok:
        verdict = "in budget" if accept(ev) else "out of budget"
        upper = (f" (<= {100 * ev.drop_upper / baseline_metric:+.2f}%)"
                 if accept.bound and ev.drop_upper is not None and baseline_metric else "")
        log.info("%-22s metric %.4f  drop %+.2f%%%s  latency x%.3f  (%s)%s", ev.label,
                 ev.metric, 100 * (ev.rel_drop or 0.0), upper, ev.latency_ratio, verdict,
                 "  [cached]" if ev.cached else "")
    elif ev.status is Status.SLOWER:
        log.info("%-22s latency x%.3f  (slower than the best in budget or the baseline: "
                 "accuracy not measured)%s", ev.label, ev.latency_ratio,
                 "  [cached]" if ev.cached else "")
    else:
        log.info("%-22s %s: %s%s", ev.label, ev.status.value, ev.reason,
                 "  [cached]" if ev.cached else "")


def run_search(ws: Workspace, backend: Backend, ranges: Ranges, measure: MeasureConfig,
               config: SearchConfig, out_dir: Path, store: Store,
               executor=None) -> SearchOutcome:
    """The search into `out_dir`; with `executor` (`pipeline.executor.RayExecutor`) the
    strategies' batches are evaluated on its workers, the rest (baseline, final timing,
    holdout) here."""
    from tqdm.auto import tqdm

    t_start = time.perf_counter()
    phases: dict[str, float] = {}
    dialect = backend.dialect
    low = low_precisions(ws, backend, config.precision)
    workdir = out_dir / ".work"
    shared = shared_cache(ws, backend)
    with Evaluator(ws, backend, ranges, measure, store, workdir, shared=shared) as evaluator:
        baseline_metric = evaluator.baseline.metric
        # a relative budget is a share of the baseline's metric on the split that judges: the
        # search split's while searching, the holdout's when certifying the answer
        holdout_base, base_holdout_outputs = holdout_baseline(ws, evaluator)
        resolution = holdout_resolution(ws, config, holdout_base)
        _, holdout_rule = rules(config, holdout_base)
        # declared before the holdout judges any plan: how many it may judge, at what levels
        holdout_tests = HoldoutTests(holdout_rule, declared_tries(config))
        search_rule, decision, accept = judge(ws, config, baseline_metric)
        evaluator.rule = search_rule if config.adaptive else None
        log.info("plans are judged in budget on the search split by %s",
                 "their upper confidence bound" if decision == "bound" else
                 "the point estimate of their drop (the holdout certifies the answer)"
                 if config.confidence is not None else "the point estimate of their drop")
        t = time.perf_counter()
        sens = analysis.sensitivity(ws, ranges, dialect, low, config.sensitivity,
                                    config.sensitivity_config, store, config.torch_model,
                                    shared=shared)
        phases["sensitivity_s"] = time.perf_counter() - t
        gains = None
        if config.needs_gains or (config.strategy_spec.wants_gains
                                  and analysis.can_profile(backend)):
            t = time.perf_counter()
            try:
                gains = analysis.latency_gains(ws, backend, ranges, low, store)
            except TrtMpqError as e:
                if config.needs_gains:
                    raise
                # the strategy only uses them where it can (bisection's prune step): a model
                # whose all-lowered plan does not build is still searched, as before
                log.warning("the per-group latency profile failed (%s); the %s strategy goes on "
                            "without measured gains", e, config.strategy)
            phases["latency_profile_s"] = time.perf_counter() - t
        order = ordering.order(ws.group_names(), sens.scores,
                               gains.gain if gains and config.order == "latency-aware" else None)
        edges = tuple(group_edges(ws.model, ws.groups)) if gains else None
        numbers = {(g, p): (sens.scores[g], gains.gain_ratio[g]) for g, p in low.items()} \
            if gains else None
        if numbers is not None and config.strategy_spec.needs_graph and config.precision is None:
            t = time.perf_counter()
            numbers.update(format_options(ws, backend, ranges, low, config, store, shared))
            phases["formats_s"] = time.perf_counter() - t
        prior = {o: v[1] for o, v in numbers.items()} if numbers else None
        inputs = SearchInputs(groups=tuple(ws.group_names()), order=tuple(order), low=low,
                              base=BASELINE[dialect], accept=accept, sensitivity=sens.scores,
                              gain=gains.gain if gains else None, edges=edges, options=numbers)
        strategies = config.strategy_spec.build(config.strategy_config, inputs)

        t = time.perf_counter()
        bar = tqdm(desc="search", unit="plan", leave=False,
                   disable=None if ws.progress is None else not ws.progress)

        fastest = FastestInBudget(accept, config.gate_margin, config.gate_recheck,
                                  evaluator.baseline_plan, keep=config.confirm_candidates)
        gate = fastest.gate

        def on_eval(ev: Evaluation) -> None:
            _log_evaluation(ev, accept, baseline_metric)
            bar.update(1)
            fastest.see(ev)

        def latency_first(plan: Plan, label: str) -> Evaluation:
            return evaluator.evaluate(plan, label, gate=gate())

        gated = None if config.full_frontier else latency_first
        batch = None
        if executor is not None:
            from trt_mpq.pipeline.executor import data_digests

            executor.start(dataclasses.asdict(evaluator.rule) if evaluator.rule else None,
                           evaluator.ranges.to_json_dict(), data_digests(ws),
                           backend.timing_device())

            def batch(proposals: list, latency_first: bool) -> list[Evaluation]:
                gated_now = latency_first and not config.full_frontier
                return evaluator.evaluate_many(proposals, gate() if gated_now else None,
                                               executor)
        try:
            baseline_ev = evaluator.evaluate(evaluator.baseline_plan, "baseline")
            on_eval(baseline_ev)
            timing = check_timing(evaluator, baseline_ev, config)
            evaluations = [baseline_ev] + [
                e for e in drive(strategies, evaluator.evaluate, on_eval, gated, batch)
                if e.plan != baseline_ev.plan]
            phases["search_s"] = time.perf_counter() - t
            if config.runtime_options and config.option_candidates:
                t = time.perf_counter()
                space = _option_space(ws, backend, evaluator.ranges)
                sweep = OptionSweep(evaluations, space, accept, config.option_candidates,
                                    exclude=evaluator.baseline_plan)
                evaluations += drive([sweep], evaluator.evaluate, on_eval, gated, batch)
                phases["runtime_options_s"] = time.perf_counter() - t

            t = time.perf_counter()
            final = final_measure(evaluator.measure, config.final_repeats_factor)
            timings: dict[str, PairTiming] = {}  # unpacks as (latency, baseline, interval)
            final_timing: dict = {}

            def remeasure(finalists: list[Evaluation]) -> dict[str, float]:
                found, precision = time_finalists(ws, backend, evaluator, finalists, final,
                                                   config, store, out_dir)
                timings.update(found)
                final_timing.update(precision)
                return {d: t.ratio for d, t in timings.items()}  # the objective

            def confirm_one(ev: Evaluation) -> Confirmation:
                return confirm(ws, backend, evaluator, ev, final, config, out_dir, holdout_base,
                               base_holdout_outputs, timings.get(ev.plan.digest),
                               holdout_tests.next_rule())

            best, tried = pick_answer(evaluations, accept, evaluator.baseline_plan,
                                      config.confirm_candidates, confirm_one, remeasure)
            reopened = [st for st in strategies if st.fall_back()] if best is None else []
            if reopened:  # the holdout refused every answer: the strategies' safer plans
                log.info("the holdout refused every answer: measuring the strategy's safer "
                         "plans")
                known = {e.plan.digest for e in evaluations}
                evaluations += [e for e in drive(reopened, evaluator.evaluate, on_eval, gated,
                                                 batch) if e.plan.digest not in known]
                best, again = pick_answer(evaluations, accept, evaluator.baseline_plan,
                                          config.confirm_candidates, confirm_one, remeasure,
                                          exclude=[c.evaluation for c in tried])
                tried += again
            phases["confirm_s"] = time.perf_counter() - t
        finally:
            bar.close()
            if executor is not None:
                executor.close()
        fresh, cached = evaluator.fresh, evaluator.cached
    model = None
    if gains:  # how well a boundary-aware latency model explains what was measured
        model = model_report(inputs.groups, edges, inputs.base, prior,
                             [(e.plan, e.latency_ratio, standard_error(e.ratio_ci))
                              for e in evaluations])
        model["options"] = {p.value: sum(1 for _, q in prior if q is p)
                            for p in sorted({q for _, q in prior}, key=lambda p: p.value)}
        searches = [st for st in strategies if hasattr(st, "report")]
        if searches:
            model["search"] = searches[0].report()
    shutil.rmtree(workdir, ignore_errors=True)
    return SearchOutcome(
        baseline_plan=evaluator.baseline_plan, baseline_metric=baseline_metric,
        baseline_holdout_metric=holdout_base, evaluations=evaluations,
        frontier=frontier(evaluations), sensitivity=sens, order=order, low=low, best=best,
        tried=tried, holdout_tests=holdout_tests.to_json_dict(), fresh=fresh, cached=cached,
        wall_s=time.perf_counter() - t_start,
        phases=phases, gains=gains,
        shared={"dir": str(shared.dir), "reused": shared.hits, "computed": shared.misses},
        timing=timing, resolution=resolution, decision=decision, latency_model=model,
        final_timing=({**final_timing, "finalists": _finalists(timings, evaluations)}
                      if final_timing else None),
        workers=dict(executor.kinds) if executor is not None else None,
        adaptive={"search": search_rule.to_json_dict() | {"looks": list(search_rule.looks(
                      len(ws.task.search)))} if evaluator.rule else None,
                  "holdout": holdout_rule.to_json_dict() | {"looks": list(holdout_rule.looks(
                      len(ws.task.holdout)))} if holdout_rule else None})


def _finalists(timings: dict, evaluations: list[Evaluation]) -> list[dict]:
    """The finalists as their joint re-timing ranked them (fastest first): the measurement
    that decided the order in which the holdout judged them."""
    labels = {e.plan.digest: e.label for e in evaluations}
    rows = [{"plan_digest": d, "label": labels.get(d, ""), "latency_ratio": t.ratio,
             "latency_ratio_ci": list(t.ratio_ci),
             **({"shapes": [s.to_json_dict() for s in t.shapes]} if t.shapes else {})}
            for d, t in timings.items()]
    return sorted(rows, key=lambda r: r["latency_ratio"])


def _option_space(ws: Workspace, backend: Backend, ranges: Ranges):
    """plan -> the runtime options the backend proposes for its materialized graph."""
    def space(plan: Plan):
        graph = materialize(ws.model, ws.groups, plan, ranges, backend.dialect)
        return backend.runtime_options(graph)
    return space


__all__ = ["SearchOutcome", "format_options",
           "low_precisions", "run_search"]
