"""The search job: sensitivity -> order -> strategies -> frontier -> confirmation on the holdout.

The answer is the in-budget plan with the lowest *measured* latency (latency is not monotone in
the number of quantized groups on CPU), if it is faster than the baseline, re-measured against
the baseline and confirmed on the holdout split that the search never saw. If the fastest fails
on the holdout, the next fastest in-budget plans are tried (up to `confirm_candidates`).
"""

from __future__ import annotations

import dataclasses
import logging
import shutil
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from trt_mpq import options
from trt_mpq.backends.base import Backend
from trt_mpq.calib import Ranges
from trt_mpq.errors import ConfigError, PlanError, TrtMpqError
from trt_mpq.measure.accuracy import compute_outputs
from trt_mpq.measure.latency import (
    LatencyStats,
    MeasureConfig,
    TimingCheck,
    measure_pair,
    ratio_interval,
    time_until_precise,
)
from trt_mpq.measure.sequential import IN, SequentialRule, sequential_drop
from trt_mpq.measure.stats import DropBound, samples_needed
from trt_mpq.model.groups import group_edges
from trt_mpq.pipeline import analysis
from trt_mpq.pipeline.artifacts import install_artifact
from trt_mpq.pipeline.evaluator import Evaluator, Gate, shared_cache
from trt_mpq.pipeline.workspace import Workspace
from trt_mpq.plan import Plan, Precision
from trt_mpq.qdq import BASELINE, SUPPORTED, default_low_precision, materialize
from trt_mpq.search import (
    Budget,
    BudgetAccept,
    Evaluation,
    OptionSweep,
    SearchInputs,
    Status,
    drive,
    drop_of,
    frontier,
    ranked_in_budget,
    strategy_spec,
)
from trt_mpq.search.latency_model import model_report, standard_error
from trt_mpq.sensitivity import SensitivityConfig, SensitivityResult, ordering
from trt_mpq.sensitivity.ordering import ORDERS
from trt_mpq.store import Store

log = logging.getLogger(__name__)


SEARCH_DECISIONS = ("auto", "point", "bound")


@dataclass(frozen=True)
class SearchConfig:
    budget: Budget
    strategy: str = "bisection"  # a name in trt_mpq.search.STRATEGIES
    strategy_config: Any = None  # the strategy's own config object; None: its defaults
    sensitivity: str = "noise"
    precision: Precision | None = None  # None: the dialect's default low precision per group
    sensitivity_samples: int = 64
    confirm_candidates: int = 3
    final_repeats_factor: int = 2  # the final re-measurement uses this many times more runs
    order: str = "sensitivity"  # sensitivity (the papers) | latency-aware (per unit of gain)
    sensitivity_config: SensitivityConfig | None = None  # None: defaults with the samples above
    torch_model: str | None = None  # --torch package.module:make_model
    runtime_options: bool = True  # also measure the best plans with the backend's options
    option_candidates: int = 2  # how many of the fastest in-budget plans get option variants
    full_frontier: bool = False  # measure accuracy of every plan, even those that cannot win
    gate_margin: float = 0.03  # a plan "cannot win" if slower than the best by more than this
    #: ... and, if timed slower than the best by less than this, again side by side with it
    gate_recheck: float = 0.15
    timing_tolerance: float = 0.05  # the baseline against itself must time within this of x1
    timing_max_spread: float = 0.5  # ... with (p90 - p10) / median at most this
    timing_retries: int = 2  # re-measurements (each with twice the runs) before giving up
    confidence: float | None = 0.95  # one-sided level of the holdout drop's upper bound
    #: how the search judges a plan in budget on the search split: "point" (the point
    #: estimate), "bound" (its upper bound certifies it), "auto" (bound where the search split
    #: can certify the budget, else point); the answer is always certified on the holdout
    search_decision: str = "auto"
    adaptive: bool = True  # sequential evaluation: stop as soon as the bounds decide
    #: the finalists' joint re-measurement goes on until every latency ratio's 95% interval
    #: has at most this half-width (relative), or the cap (seconds) is reached
    final_halfwidth: float = 0.01
    final_cap_s: float = 120.0

    def __post_init__(self) -> None:
        spec = strategy_spec(self.strategy)
        if self.strategy_config is None:
            object.__setattr__(self, "strategy_config", spec.config())
        elif not isinstance(self.strategy_config, spec.config):
            raise ConfigError(f"the {self.strategy} strategy takes a {spec.config.__name__}, "
                              f"not a {type(self.strategy_config).__name__}")
        if self.order not in ORDERS:
            raise ConfigError(f"unknown order {self.order!r}; use one of {ORDERS}")
        if self.sensitivity_samples < 1:
            raise ConfigError("sensitivity needs at least one sample")
        if self.confirm_candidates < 1:
            raise ConfigError("confirm_candidates must be >= 1")
        if self.final_repeats_factor < 1:
            raise ConfigError("final_repeats_factor must be >= 1")
        if self.option_candidates < 0:
            raise ConfigError("option candidates must be >= 0")
        if not 0 <= self.gate_recheck < 1:
            raise ConfigError("the gate's recheck band must be in [0, 1)")
        if not 0 <= self.gate_margin < 1:
            raise ConfigError("the gate margin must be in [0, 1)")
        if not 0 < self.timing_tolerance < 1 or self.timing_max_spread <= 0:
            raise ConfigError("the timing tolerance must be in (0, 1) and the spread > 0")
        if self.timing_retries < 0:
            raise ConfigError("timing retries must be >= 0")
        if self.confidence is not None and not 0.5 <= self.confidence < 1:
            raise ConfigError("the confidence must be in [0.5, 1), or None (off)")
        if self.search_decision not in SEARCH_DECISIONS:
            raise ConfigError(f"unknown search decision {self.search_decision!r}; use one of "
                              f"{SEARCH_DECISIONS}")
        if not 0 < self.final_halfwidth < 1 or self.final_cap_s < 0:
            raise ConfigError("the final half-width must be in (0, 1) and its cap >= 0 s")
        if self.search_decision == "bound" and self.confidence is None:
            raise ConfigError("--search-decision bound needs a --confidence level")

    @property
    def strategy_spec(self):
        return strategy_spec(self.strategy)

    @property
    def needs_gains(self) -> bool:
        return self.order == "latency-aware" or self.strategy_spec.needs_gains

    @property
    def sens_config(self) -> SensitivityConfig:
        return self.sensitivity_config or SensitivityConfig(samples=self.sensitivity_samples)

    def to_json_dict(self) -> dict:
        return {"budget": self.budget.to_json_dict(), "strategy": self.strategy,
                "strategy_config": options.to_json_dict(self.strategy_config),
                "sensitivity": self.sensitivity, "order": self.order,
                "sensitivity_config": self.sens_config.to_json_dict(),
                "torch_model": self.torch_model,
                "precision": self.precision.value if self.precision else "auto",
                "sensitivity_samples": self.sensitivity_samples,
                "confirm_candidates": self.confirm_candidates,
                "final_repeats_factor": self.final_repeats_factor,
                "runtime_options": self.runtime_options,
                "option_candidates": self.option_candidates,
                "full_frontier": self.full_frontier, "gate_margin": self.gate_margin,
                "gate_recheck": self.gate_recheck,
                "timing_tolerance": self.timing_tolerance,
                "timing_max_spread": self.timing_max_spread,
                "timing_retries": self.timing_retries, "confidence": self.confidence,
                "search_decision": self.search_decision, "adaptive": self.adaptive,
                "final_halfwidth": self.final_halfwidth, "final_cap_s": self.final_cap_s}


@dataclass
class Confirmation:
    evaluation: Evaluation
    holdout_metric: float
    holdout_drop: float
    holdout_rel_drop: float
    latency: LatencyStats
    baseline_latency: LatencyStats
    in_budget: bool
    extra: dict[str, float] = field(default_factory=dict)
    artifact: str = ""  # file name of the installed artifact (in budget only)
    bound: DropBound | None = None  # the holdout drop's upper confidence bound (paired)
    ratio_ci: tuple[float, float] | None = None  # the latency ratio's 95% interval
    samples: int | None = None  # holdout samples the decision used (adaptive evaluation)

    @property
    def latency_ratio(self) -> float:
        return self.latency.median_ms / self.baseline_latency.median_ms


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
                                      config.sens_config, store, config.torch_model,
                                      shared=shared).scores if sensitivity else {}
        gains = analysis.latency_gains(ws, backend, ranges, low_p, store)
        log.info("%s is an option for %d group(s)", p.value, len(changed))
        out.update({(g, p): (scores.get(g, 0.0), gains.gain_ratio[g]) for g in changed})
    return out


def accuracy_gate(best: Evaluation | None, margin: float, recheck: float = 0.0) -> Gate:
    """When a latency-first evaluation skips its accuracy pass (`Gate`): slower than the fastest
    in-budget plan `best` by more than the noise `margin` (and, if timed within `recheck` of it,
    again when timed side by side with it), or, before any plan is in budget, slower than the
    baseline. Either way, whatever its accuracy, the plan cannot be the answer (`pick_answer`
    takes only plans measured faster than the baseline) and the baseline dominates it on the
    frontier."""
    if best is None:
        return Gate(1.0)
    r = best.latency_ratio
    return Gate(min(1.0, r * (1 + margin)), best.plan, margin, min(1.0, r * (1 + recheck)))


class FastestInBudget:
    """The fastest in-budget quantized plan seen so far (`see` every evaluation) and the gate
    it sets for latency-first evaluations (`accuracy_gate`)."""

    def __init__(self, accept, margin: float, recheck: float,
                 baseline_plan: Plan | None = None) -> None:
        self.accept, self.margin, self.recheck = accept, margin, recheck
        self.baseline_plan = baseline_plan
        self.best: Evaluation | None = None

    def see(self, ev: Evaluation) -> None:
        if self.accept(ev) and ev.plan != self.baseline_plan and ev.latency_ratio < 1.0 \
                and (self.best is None or ev.latency_ratio < self.best.latency_ratio):
            self.best = ev

    def gate(self) -> Gate:
        return accuracy_gate(self.best, self.margin, self.recheck)


def final_measure(measure: MeasureConfig, factor: int) -> MeasureConfig:
    """The measurement the finalists are timed with: `factor` (`final_repeats_factor`) times
    the runs (and time) of a search evaluation's."""
    return replace(measure, repeats=measure.repeats * factor,
                   max_seconds=measure.max_seconds * factor)


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
        holdout_base, base_holdout_outputs = _holdout_baseline(ws, evaluator)
        resolution = holdout_resolution(ws, config, holdout_base)
        _, holdout_rule = rules(config, holdout_base)
        search_rule, decision, accept = judge(ws, config, baseline_metric)
        evaluator.rule = search_rule if config.adaptive else None
        log.info("plans are judged in budget on the search split by %s",
                 "their upper confidence bound" if decision == "bound" else
                 "the point estimate of their drop (the holdout certifies the answer)"
                 if config.confidence is not None else "the point estimate of their drop")
        t = time.perf_counter()
        sens = analysis.sensitivity(ws, ranges, dialect, low, config.sensitivity,
                                    config.sens_config, store, config.torch_model,
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
                                  evaluator.baseline_plan)
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
            timings: dict[str, tuple[LatencyStats, LatencyStats, tuple[float, float]]] = {}
            final_timing: dict = {}

            def remeasure(finalists: list[Evaluation]) -> dict[str, float]:
                found, precision = _time_finalists(ws, backend, evaluator, finalists, final,
                                                   config, store, out_dir)
                timings.update(found)
                final_timing.update(precision)
                return {d: lat.median_ms / base.median_ms
                        for d, (lat, base, _) in timings.items()}

            def confirm(ev: Evaluation) -> Confirmation:
                return _confirm(ws, backend, evaluator, ev, final, config, out_dir, holdout_base,
                                base_holdout_outputs, timings.get(ev.plan.digest), holdout_rule)

            best, tried = pick_answer(evaluations, accept, evaluator.baseline_plan,
                                      config.confirm_candidates, confirm, remeasure)
            reopened = [st for st in strategies if st.fall_back()] if best is None else []
            if reopened:  # the holdout refused every answer: the strategies' safer plans
                log.info("the holdout refused every answer: measuring the strategy's safer "
                         "plans")
                known = {e.plan.digest for e in evaluations}
                evaluations += [e for e in drive(reopened, evaluator.evaluate, on_eval, gated,
                                                 batch) if e.plan.digest not in known]
                best, again = pick_answer(evaluations, accept, evaluator.baseline_plan,
                                          config.confirm_candidates, confirm, remeasure,
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
        tried=tried, fresh=fresh, cached=cached, wall_s=time.perf_counter() - t_start,
        phases=phases, gains=gains,
        shared={"dir": str(shared.dir), "reused": shared.hits, "computed": shared.misses},
        timing=timing, resolution=resolution, decision=decision, latency_model=model,
        final_timing=final_timing or None,
        workers=dict(executor.kinds) if executor is not None else None,
        adaptive={"search": search_rule.to_json_dict() | {"looks": list(search_rule.looks(
                      len(ws.task.search)))} if evaluator.rule else None,
                  "holdout": holdout_rule.to_json_dict() | {"looks": list(holdout_rule.looks(
                      len(ws.task.holdout)))} if holdout_rule else None})


def rules(config: SearchConfig, baseline_metric: float
          ) -> tuple[SequentialRule | None, SequentialRule | None]:
    """The sequential rules of the search and holdout splits (None when --confidence off)."""
    if config.confidence is None:
        return None, None
    rule = SequentialRule(config.confidence, config.budget.allowed_drop(baseline_metric))
    holdout = rule if config.adaptive else replace(rule, max_looks=1)
    return rule, holdout


def judge(ws: Workspace, config: SearchConfig, baseline_metric: float
          ) -> tuple[SequentialRule | None, str, BudgetAccept]:
    """How the search split judges plans against the budget: its adaptive rule (None with
    --confidence off; it knows whether the search judges by point estimates, for its futility
    stops), the decision ("bound" or "point", `search_decision`) and the accept function."""
    rule, _ = rules(config, baseline_metric)
    decision = search_decision(ws, config, rule)
    if rule is not None:
        rule = replace(rule, point=decision == "point")
    accept = BudgetAccept.judging(config.budget, baseline_metric, decision)
    return rule, decision, accept


#: "auto" judges plans by their upper bound only when the search split can certify a plan that
#: changes a few results, not only a perfect one: the bound of a plan that changes nothing must
#: be at most this share of the allowed drop. (efficientnet-lite0 at 1%: 500 search samples
#: give a perfect plan 0.78% against 0.92% allowed, so any plan with a discordant pair or two
#: failed the bound and the search saw no plan in budget at all.)
BOUND_MARGIN = 0.5


def search_decision(ws: Workspace, config: SearchConfig, rule: SequentialRule | None) -> str:
    """"bound" or "point" (`SearchConfig.search_decision`); "auto" is "bound" when the search
    split can certify the budget with room to spare (a 0/1 metric on enough samples:
    `BOUND_MARGIN`), else "point"."""
    if config.search_decision != "auto":
        return config.search_decision
    metric = ws.task.metric
    if rule is None or not metric.binary:
        return "point"
    floor = rule.best_case_upper(len(ws.task.search), metric.reference)
    return "bound" if floor <= BOUND_MARGIN * rule.allowed else "point"


def resolvable(task, config: SearchConfig, baseline_metric: float | None = None) -> None:
    """Refuse (ConfigError, exit 2) a budget the holdout split cannot certify at the confidence
    level, before any work: for a 0/1 metric even a plan that changes no sample's result gets
    an upper bound of about 3.7 / n at 95% (3.0 / n for a fidelity metric). Without the
    baseline's metric yet, a relative budget is checked at the largest metric (1), which only
    lets through budgets that may still fail once the metric is known."""
    metric = task.metric
    if metric.reference and not metric.higher_is_better and config.budget.relative:
        raise ConfigError(f"the {metric.name} of the unquantized model with itself is 0, so a "
                          f"relative budget ({config.budget.describe()}) allows nothing; give "
                          "an absolute one, e.g. --max-drop 0.001")
    if config.confidence is None or not metric.binary:
        return
    base = 1.0 if baseline_metric is None else baseline_metric
    allowed = config.budget.allowed_drop(base)
    _, rule = rules(config, base)
    n = len(task.holdout)
    floor = rule.best_case_upper(n, metric.reference)
    if floor <= allowed:
        return
    level = rule.levels(len(rule.looks(n)))[-1]
    need = samples_needed(allowed, level, reference=metric.reference) if allowed > 0 else None
    fidelity = ("" if metric.reference else
                ", a fidelity metric (--metric agreement: no labels needed"
                + (f"; this task has a {len(task.fidelity)}-sample fidelity split"
                   if task.fidelity is not None else "") + ")")
    raise ConfigError(
        f"the holdout split ({n} samples) cannot certify a drop in {metric.name} of at most "
        f"{allowed:.4g} ({config.budget.describe()}) at {100 * config.confidence:g}% "
        f"confidence: even a plan that changes no result has an upper bound of {floor:.4g}"
        + (f"; certifying it needs about {need} holdout samples" if need else "")
        + f". Use a larger holdout split{fidelity}, a looser budget, or --confidence off "
        "(point estimates, not certified)")


def holdout_resolution(ws: Workspace, config: SearchConfig, baseline_metric: float
                       ) -> dict | None:
    """Whether the holdout split can certify the budget at the confidence level (0/1 metrics;
    `resolvable`), recorded in result.json. Raises ConfigError when it cannot."""
    if config.confidence is None or not ws.task.metric.binary:
        return None
    resolvable(ws.task, config, baseline_metric)
    _, rule = rules(config, baseline_metric)
    n = len(ws.task.holdout)
    return {"holdout_n": n, "confidence": config.confidence,
            "best_case_upper": rule.best_case_upper(n, ws.task.metric.reference),
            "allowed_drop": rule.allowed, "certifiable": True}


def pick_answer(evaluations: list[Evaluation], accept, baseline_plan: Plan, candidates: int,
                confirm, remeasure=None, exclude: Sequence[Evaluation] = ()
                ) -> tuple[Confirmation | None, list[Confirmation]]:
    """The answer: the fastest in-budget plan (on the search split) that is faster than the
    baseline and, when `confirm` re-measures it, holds the budget on the holdout split and is
    still faster than the baseline; the next fastest with other precisions is tried when one
    fails there, at most `candidates` in all. With `remeasure(finalists) -> {digest: ratio}`,
    the `candidates` fastest are first timed again together with the baseline in one fresh
    measurement and tried in that order: the search's fastest measurement is the minimum of
    noisy ones (the winner's curse), a joint re-measurement is not. Plans with the precisions of
    one in `exclude` (already tried) are not finalists. Returns (the confirmed answer or None,
    every confirmation tried, in order)."""
    finalists = []
    precisions = {Plan.of(e.plan.as_dict()).digest for e in exclude}
    for ev in ranked_in_budget(evaluations, accept):
        # one finalist per precision assignment, its fastest runtime-option variant: options
        # change speed, not what the holdout judges, so a plan's variants pass or fail there
        # together (minilm-sentiment: three tries, one plan with three options, one drop)
        key = Plan.of(ev.plan.as_dict()).digest
        if ev.plan != baseline_plan and ev.latency_ratio < 1.0 and key not in precisions:
            precisions.add(key)
            finalists.append(ev)
    finalists = finalists[:candidates]
    if remeasure is not None and finalists:
        ratios = remeasure(finalists)  # one fresh measurement of them all: no winner's curse
        finalists.sort(key=lambda e: (ratios[e.plan.digest], e.drop or 0.0))
    tried: list[Confirmation] = []
    for ev in finalists:
        conf = confirm(ev)
        tried.append(conf)
        if conf.in_budget and conf.latency_ratio < 1.0:
            return conf, tried
        if not conf.in_budget:
            log.info("%s: holdout drop %.2f%%%s is not within the budget; trying the next plan",
                     ev.label, 100 * conf.holdout_rel_drop,
                     f" (upper bound {100 * conf.bound.rel_upper:.2f}%)" if conf.bound else "")
        else:  # its search-time speed-up was noise (or the machine changed): not an answer
            log.warning("%s: re-measured at x%.3f of the baseline, not faster; trying the next "
                        "plan", ev.label, conf.latency_ratio)
    return None, tried


def check_timing(evaluator: Evaluator, baseline_ev: Evaluation,
                 config: SearchConfig) -> TimingCheck:
    """Is timing on this machine good enough to tell plans apart? The baseline evaluation timed
    a second build of the baseline against the first (a fresh self-timing when it came from the
    store or failed); while the two disagree beyond the tolerance or spread widely, warn and
    re-measure with twice the runs, and keep the larger run count for the rest of the search."""
    def fresh() -> tuple[float, float, int]:
        return TimingCheck.attempt(*evaluator.time_self())

    first = (TimingCheck.attempt(baseline_ev.latency, baseline_ev.baseline_latency)
             if baseline_ev.ok and not baseline_ev.cached else fresh())
    check = TimingCheck((first,), config.timing_tolerance, config.timing_max_spread)
    while not check.trusted and len(check.attempts) <= config.timing_retries:
        ratio, spread, n = check.attempts[-1]
        m = evaluator.measure
        evaluator.measure = replace(m, repeats=2 * m.repeats, min_repeats=2 * m.min_repeats,
                                    max_seconds=2 * m.max_seconds)
        log.warning("timing is noisy: the baseline against itself measured x%.3f (spread %.2f, "
                    "%d runs); measuring again with %d runs", ratio, spread, n,
                    evaluator.measure.repeats)
        check = replace(check, attempts=(*check.attempts, fresh()))
    if not check.trusted:
        log.warning("%s. Latency differences smaller than that are noise on this machine now: "
                    "stop other work on it (or pin --threads) and rerun, or read the ratios "
                    "with that in mind", check.describe())
    else:
        log.info("%s", check.describe())
    return check


def _option_space(ws: Workspace, backend: Backend, ranges: Ranges):
    """plan -> the runtime options the backend proposes for its materialized graph."""
    def space(plan: Plan):
        graph = materialize(ws.model, ws.groups, plan, ranges, backend.dialect)
        return backend.runtime_options(graph)
    return space


def _holdout_baseline(ws: Workspace, evaluator: Evaluator):
    task = ws.task
    outputs = evaluator.reference_outputs(task.holdout, "holdout")
    return task.metric(outputs, task.metric.target(task.holdout.labels, outputs)), outputs


def _time_finalists(ws: Workspace, backend: Backend, evaluator: Evaluator,
                    finalists: list[Evaluation], final: MeasureConfig, config: SearchConfig,
                    store: Store | None, out_dir: Path) -> tuple[dict, dict]:
    """The finalists and the baseline timed together, interleaved, in one fresh measurement
    that goes on until every ratio's 95% interval is within `config.final_halfwidth` (or the
    cap): ({digest: (latency, baseline latency, ratio interval)}, its precision). Stored, so a
    resumed search reuses it and reproduces the same answer without re-measuring."""
    # v2: each turn settled by untimed runs (`MeasureConfig.settle`); v1 blobs timed cold turns
    key = "final-timing-v2:" + ",".join(sorted(e.plan.digest for e in finalists))
    stored = store.get_blob(key) if store is not None else None
    if stored is not None:
        precision = stored.pop("_precision", {})
        return {d: (LatencyStats.from_json_dict(v["latency"]),
                    LatencyStats.from_json_dict(v["baseline_latency"]), tuple(v["ratio_ci"]))
                for d, v in stored.items()}, precision
    task = ws.task
    work = out_dir / ".final"
    runners = []
    try:
        for ev in finalists:
            graph = materialize(ws.model, ws.groups, ev.plan, evaluator.ranges, backend.dialect)
            artifact = backend.build(graph, work / ev.plan.digest, ws.groups,
                                     task.latency_feed(), max_batch=task.eval_batch,
                                     options=dict(ev.plan.options))
            runners.append(backend.open(artifact).__enter__())
        times, precision = time_until_precise([*runners, evaluator.baseline.runner],
                                              task.latency_feed(), final,
                                              config.final_halfwidth, config.final_cap_s)
    finally:
        for runner in runners:
            runner.close()
        shutil.rmtree(work, ignore_errors=True)
    base = LatencyStats.of(times[-1])
    out = {ev.plan.digest: (LatencyStats.of(t), base, ratio_interval(t, times[-1]))
           for ev, t in zip(finalists, times)}
    for ev, (lat, _, ci) in zip(finalists, out.values()):
        log.info("%s: re-measured with the other finalists at x%.3f (95%% CI %.3f-%.3f)",
                 ev.label, lat.median_ms / base.median_ms, *ci)
    (log.info if precision.reached else log.warning)(
        "final timing: %d rounds in %.0f s, ratio intervals within ±%.1f%% (target ±%.1f%%%s)",
        precision.rounds, precision.seconds, 100 * precision.halfwidth, 100 * precision.target,
        "" if precision.reached else f", not reached within the {config.final_cap_s:g} s cap")
    if store is not None:
        store.put_blob(key, {**{d: {"latency": lat.to_json_dict(), "baseline_latency":
                                    b.to_json_dict(), "ratio_ci": list(ci)}
                                for d, (lat, b, ci) in out.items()},
                             "_precision": precision.to_json_dict()})
    return out, precision.to_json_dict()


def _confirm(ws: Workspace, backend: Backend, evaluator: Evaluator, ev: Evaluation,
             measure: MeasureConfig, config: SearchConfig, out_dir: Path, holdout_base: float,
             base_outputs: dict, timing: tuple | None = None,
             rule: SequentialRule | None = None) -> Confirmation:
    """Rebuild the plan into `out_dir/candidate` and measure the holdout metric; its latency is
    `timing` (the finalists' joint re-measurement) or, when there is none (a single finalist),
    re-measured here with more runs, interleaved with the baseline. With `rule` (a confidence
    level) the plan is in budget only when the upper bound of its holdout drop is within the
    budget (certified), evaluated adaptively; without, on the point estimate."""
    task = ws.task
    graph = materialize(ws.model, ws.groups, ev.plan, evaluator.ranges, backend.dialect)
    cand_dir = out_dir / ".candidate"
    shutil.rmtree(cand_dir, ignore_errors=True)
    artifact = backend.build(graph, cand_dir, ws.groups, task.latency_feed(),
                             max_batch=task.eval_batch, options=dict(ev.plan.options))
    with backend.open(artifact) as runner:
        def run(part) -> dict:
            return compute_outputs(runner, part, task.eval_batch, desc="confirm (holdout)",
                                   progress=ws.progress)

        seq = None
        if rule is not None:
            seq = sequential_drop(task.metric, task.holdout, base_outputs, run, rule)
            metric = holdout_base - (seq.bound.drop if task.metric.higher_is_better
                                     else -seq.bound.drop)
        else:
            outputs = run(task.holdout)
            metric = task.metric(outputs, task.metric.target(task.holdout.labels,
                                                             base_outputs))
        if timing is not None:
            lat, base_lat, ratio_ci = timing
        else:
            lat, base_lat, ratio_ci = measure_pair(runner, evaluator.baseline.runner,
                                                   task.latency_feed(), measure)
        extra = {}
        for check in task.extra_checks:
            ref = evaluator.reference_outputs(check.split, f"check {check.name}")
            got = compute_outputs(runner, check.split, task.eval_batch, progress=False)
            extra[check.name] = float(check.fn(got, ref))
    drop, rel = drop_of(metric, holdout_base, task.metric.higher_is_better)
    if seq is not None:  # certified: the upper bound is within the budget
        in_budget = seq.decision == IN
        bound, samples = seq.bound, seq.samples
    else:
        in_budget = config.budget.accepts(drop, holdout_base)
        bound, samples = None, len(task.holdout)
    conf = Confirmation(evaluation=ev, holdout_metric=metric, holdout_drop=drop,
                        holdout_rel_drop=rel, latency=lat, baseline_latency=base_lat,
                        in_budget=in_budget, extra=extra, bound=bound, ratio_ci=ratio_ci,
                        samples=samples)
    if in_budget:
        conf.artifact = install_artifact(artifact, out_dir, {
            "plan": ev.plan.to_json_dict()["groups"], "runtime_options": dict(ev.plan.options),
            "model": task.name,
            "latency": lat.to_json_dict(), "baseline_latency": base_lat.to_json_dict(),
            "latency_ratio": conf.latency_ratio, "holdout_metric": metric,
            "holdout_drop": drop})
    shutil.rmtree(cand_dir, ignore_errors=True)
    return conf


__all__ = ["SearchConfig", "SearchOutcome", "Confirmation", "run_search", "low_precisions",
           "pick_answer", "check_timing", "accuracy_gate", "FastestInBudget", "final_measure",
           "judge", "resolvable", "rules", "search_decision"]
