"""Timing the search can trust: the baseline timed against itself before the search
(`check_timing`), and the finalists timed together, interleaved, until their ratios are
precise (`time_finalists`), with the measurement they use (`final_measure`)."""

from __future__ import annotations

import logging
import shutil
from dataclasses import replace
from pathlib import Path

from trt_mpq.backends.base import Backend
from trt_mpq.measure.latency import (
    MeasureConfig,
    TimingCheck,
    TimingPrecision,
    time_until_precise,
)
from trt_mpq.measure.shaped import PairTiming, pair_timing, time_pair
from trt_mpq.pipeline.config import SearchConfig
from trt_mpq.pipeline.evaluator import Evaluator
from trt_mpq.pipeline.workspace import Workspace
from trt_mpq.qdq import materialize
from trt_mpq.search import Evaluation
from trt_mpq.store import Store

log = logging.getLogger(__name__)


def final_measure(measure: MeasureConfig, factor: int) -> MeasureConfig:
    """The measurement the finalists are timed with: `factor` (`final_repeats_factor`) times
    the runs (and time) of a search evaluation's."""
    return replace(measure, repeats=measure.repeats * factor,
                   max_seconds=measure.max_seconds * factor)


def check_timing(evaluator: Evaluator, baseline_ev: Evaluation,
                 config: SearchConfig) -> TimingCheck:
    """Is timing on this machine good enough to tell plans apart? The baseline evaluation timed
    a second build of the baseline against the first (a fresh self-timing when it came from the
    store or failed); while the two disagree beyond the tolerance or spread widely, warn and
    re-measure with twice the runs, and keep the larger run count for the rest of the search."""
    def fresh() -> tuple[float, float, int]:
        shapes = getattr(evaluator, "shapes", None)
        if shapes is not None and shapes.several:  # the objective, as plans are judged by
            with evaluator.backend.open(evaluator.baseline.artifact) as twin:
                return time_pair(twin, evaluator.baseline.runner, shapes,
                                 evaluator.measure).attempt()
        return TimingCheck.attempt(*evaluator.time_self())

    first = (_attempt_of(baseline_ev) if baseline_ev.ok and not baseline_ev.cached
             else fresh())
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


def _attempt_of(ev: Evaluation) -> tuple[float, float, int]:
    """A timing check's attempt from the baseline's own evaluation (a second baseline build
    timed against the first): at several shapes, its objective and widest spread."""
    if not ev.shapes:
        return TimingCheck.attempt(ev.latency, ev.baseline_latency)
    stats = [x for s in ev.shapes for x in (s.latency, s.baseline_latency)]
    return ev.latency_ratio, max(x.spread for x in stats), min(x.n for x in stats)


def time_finalists(ws: Workspace, backend: Backend, evaluator: Evaluator,
                    finalists: list[Evaluation], final: MeasureConfig, config: SearchConfig,
                    store: Store | None, out_dir: Path) -> tuple[dict[str, PairTiming], dict]:
    """The finalists and the baseline timed together, interleaved, in one fresh measurement
    that goes on until every ratio's 95% interval is within `config.final_halfwidth` (or the
    cap): ({digest: its `PairTiming` (unpacks as latency, baseline latency, ratio interval)},
    its precision). At several shapes, each shape is timed so in turn (the cap shared between
    them) and a finalist's ratio is the objective. Stored, so a resumed search reuses it and
    reproduces the same answer without re-measuring."""
    # v2: each turn settled by untimed runs (`MeasureConfig.settle`); v1 blobs timed cold turns
    key = "final-timing-v2:" + ",".join(sorted(e.plan.digest for e in finalists))
    stored = store.get_blob(key) if store is not None else None
    if stored is not None:
        precision = stored.pop("_precision", {})
        return {d: PairTiming.from_json_dict(v) for d, v in stored.items()}, precision
    task = ws.task
    shapes = ws.shape_set
    work = out_dir / ".final"
    runners = []
    try:
        for ev in finalists:
            graph = materialize(ws.model, ws.groups, ev.plan, evaluator.ranges, backend.dialect)
            artifact = backend.build(graph, work / ev.plan.digest, ws.groups,
                                     ws.latency_feed(), max_batch=task.eval_batch,
                                     options=dict(ev.plan.options), **ws.shape_kwargs())
            runners.append(backend.open(artifact).__enter__())
        timed = [time_until_precise([*runners, evaluator.baseline.runner], shape.feed, final,
                                    config.final_halfwidth, config.final_cap_s / len(shapes))
                 for shape in shapes]
    finally:
        for runner in runners:
            runner.close()
        shutil.rmtree(work, ignore_errors=True)
    times = [t for t, _ in timed]
    precision = timed[0][1] if len(timed) == 1 else TimingPrecision(
        target=config.final_halfwidth, halfwidth=max(p.halfwidth for _, p in timed),
        rounds=min(p.rounds for _, p in timed), seconds=sum(p.seconds for _, p in timed),
        reached=all(p.reached for _, p in timed))
    out = {ev.plan.digest: pair_timing(times, shapes, k) for k, ev in enumerate(finalists)}
    for ev, pair in zip(finalists, out.values()):
        log.info("%s: re-measured with the other finalists at x%.3f (95%% CI %.3f-%.3f)",
                 ev.label, pair.ratio, *pair.ratio_ci)
    (log.info if precision.reached else log.warning)(
        "final timing: %d rounds in %.0f s, ratio intervals within ±%.1f%% (target ±%.1f%%%s)",
        precision.rounds, precision.seconds, 100 * precision.halfwidth, 100 * precision.target,
        "" if precision.reached else f", not reached within the {config.final_cap_s:g} s cap")
    if store is not None:
        store.put_blob(key, {**{d: pair.to_json_dict() for d, pair in out.items()},
                             "_precision": precision.to_json_dict()})
    return out, precision.to_json_dict()


__all__ = ["check_timing", "final_measure", "time_finalists"]
