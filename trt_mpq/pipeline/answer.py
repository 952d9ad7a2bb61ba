"""The answer: the finalists (the fastest in-budget plans, one per precision assignment),
timed together, then each confirmed on the holdout split the search never saw, in speed order
(`pick_answer`, `confirm`): rebuilt, its holdout drop certified at the confidence level, its
artifact installed in the output folder."""

from __future__ import annotations

import logging
import shutil
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from trt_mpq.backends.base import Backend
from trt_mpq.measure.accuracy import compute_outputs
from trt_mpq.measure.latency import LatencyStats, MeasureConfig
from trt_mpq.measure.sequential import IN, SequentialRule, sequential_drop
from trt_mpq.measure.shaped import time_pair
from trt_mpq.measure.stats import DropBound
from trt_mpq.pipeline.artifacts import install_artifact
from trt_mpq.pipeline.config import SearchConfig
from trt_mpq.pipeline.evaluator import Evaluator
from trt_mpq.pipeline.workspace import Workspace
from trt_mpq.plan import Plan
from trt_mpq.qdq import materialize
from trt_mpq.search import Evaluation, drop_of, ranked_in_budget

log = logging.getLogger(__name__)


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
    ratio: float | None = None  # the objective at several shapes (None: latency / baseline)
    shapes: tuple = ()  # `ShapeTiming` per deployment shape, when several were declared

    @property
    def latency_ratio(self) -> float:
        if self.ratio is not None:
            return self.ratio
        return self.latency.median_ms / self.baseline_latency.median_ms


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


def holdout_baseline(ws: Workspace, evaluator: Evaluator):
    task = ws.task
    outputs = evaluator.reference_outputs(task.holdout, "holdout")
    return task.metric(outputs, task.metric.target(task.holdout.labels, outputs)), outputs


def confirm(ws: Workspace, backend: Backend, evaluator: Evaluator, ev: Evaluation,
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
    artifact = backend.build(graph, cand_dir, ws.groups, ws.latency_feed(),
                             max_batch=task.eval_batch, options=dict(ev.plan.options),
                             **ws.shape_kwargs())
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
        if timing is None:
            timing = time_pair(runner, evaluator.baseline.runner, ws.shape_set, measure)
        lat, base_lat, ratio_ci = timing
        shaped = getattr(timing, "shapes", ())
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
                        samples=samples, ratio=timing.ratio if shaped else None,
                        shapes=tuple(shaped))
    if in_budget:
        conf.artifact = install_artifact(artifact, out_dir, {
            "plan": ev.plan.to_json_dict()["groups"], "runtime_options": dict(ev.plan.options),
            "model": task.name,
            "latency": lat.to_json_dict(), "baseline_latency": base_lat.to_json_dict(),
            "latency_ratio": conf.latency_ratio, "holdout_metric": metric,
            "holdout_drop": drop,
            **({"shapes": [s.to_json_dict() for s in shaped]} if shaped else {})})
    shutil.rmtree(cand_dir, ignore_errors=True)
    return conf


__all__ = ["Confirmation", "confirm", "holdout_baseline", "pick_answer"]
