"""Evaluate one plan on a backend: materialize, build, census, accuracy, latency (interleaved
with the baseline), recorded in the store.

A candidate's failure is recorded with its reason and the search goes on; which status it gets
follows from the error's type alone: `MaterializeError` / `BuildError` -> build-failed,
`MeasurementError` -> run-failed, `NonFiniteOutputError` -> nan-output, a census that disagrees
with the plan -> precision-mismatch, one that cannot say what some groups ran -> unverified
(when the backend requires a census; otherwise the plan is measured and its census says so).
`PlanError` (the plan is wrong for this model) and any exception that is not a trt-mpq error
propagate: they are the caller's mistake or a bug."""

from __future__ import annotations

import logging
import math
import shutil
import time
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from trt_mpq.backends.base import Artifact, Backend, Runner
from trt_mpq.calib import Ranges
from trt_mpq.errors import (
    BuildError,
    DataError,
    MaterializeError,
    MeasurementError,
    NonFiniteOutputError,
)
from trt_mpq.measure.accuracy import compute_outputs
from trt_mpq.measure.latency import (
    LatencyStats,
    MeasureConfig,
    measure_interleaved,
)
from trt_mpq.measure.sequential import SequentialRule, sequential_drop
from trt_mpq.measure.shaped import relative, time_pair, time_shapes
from trt_mpq.pipeline.gate import Gate
from trt_mpq.pipeline.workspace import Workspace
from trt_mpq.plan import Plan
from trt_mpq.qdq import BASELINE, materialize
from trt_mpq.search.evaluation import Evaluation, Status, drop_of
from trt_mpq.shapes import ShapeSet
from trt_mpq.store import Store
from trt_mpq.store.shared import SharedCache
from trt_mpq.task import Split

log = logging.getLogger(__name__)


@dataclass
class Baseline:
    plan: Plan
    artifact: Artifact
    runner: Runner
    metric: float  # on the search split


def shared_cache(ws: Workspace, backend: Backend) -> SharedCache:
    """The cache of what belongs to this model, data and backend across searches (kept under
    the workspace's cache directory)."""
    return SharedCache(ws.cache_dir, {
        "model": ws.model_digest, "task": ws.task.name, "task_data": ws.task.data_digest,
        "backend": dict(backend.describe()), "eval_batch": ws.task.eval_batch})


class Evaluator:
    """Use as a context manager: it keeps the baseline artifact open for interleaved timing.
    The baseline's outputs on a split come from `shared` when an earlier run computed them."""

    def __init__(self, ws: Workspace, backend: Backend, ranges: Ranges, measure: MeasureConfig,
                 store: Store | None, workdir: Path, keep_artifacts: bool = False,
                 shared: SharedCache | None = None, rule: SequentialRule | None = None) -> None:
        self.ws = ws
        #: adaptive evaluation on the search split (None: every plan sees all of it)
        self.rule = rule
        self.shared = shared if shared is not None else SharedCache(None, {})
        self.backend = backend
        self.ranges = ranges
        self.measure = measure
        self.store = store
        self.workdir = Path(workdir)
        self.keep_artifacts = keep_artifacts
        self.baseline: Baseline | None = None
        self.fresh = 0  # evaluations measured in this process
        self.cached = 0  # evaluations reused from the store
        declared = getattr(ws, "shapes", None)  # the deployment shapes (`Workspace.at_shapes`)
        #: every plan is timed at each shape, against the baseline (undeclared: the task's own)
        self.shapes = declared or ShapeSet.single(ws.task.latency_feed())
        self._feed = dict(self.shapes.primary.feed)
        self._build_kw = ws.shape_kwargs() if declared else {}  # every shape a build accepts
        self._search_reference: dict[str, np.ndarray] | None = None
        self._rival: tuple[str, Runner, Path] | None = None  # (plan digest, runner, its dir)
        self.rechecks = 0  # plans timed again side by side with the rival (`Gate`)

    # -- lifecycle ------------------------------------------------------------------------------
    def __enter__(self) -> Evaluator:
        self.open_baseline()
        return self

    def __exit__(self, *exc) -> None:
        self._close_rival()
        if self.baseline is not None:
            self.baseline.runner.close()
            self.baseline = None

    @property
    def baseline_plan(self) -> Plan:
        return Plan.uniform(self.ws.group_names(), BASELINE[self.backend.dialect])

    def open_baseline(self) -> Baseline:
        plan = self.baseline_plan
        try:
            graph = materialize(self.ws.model, self.ws.groups, plan, self.ranges,
                                self.backend.dialect)
            artifact = self.backend.build(graph, self.workdir / "baseline", self.ws.groups,
                                          self._feed, max_batch=self.ws.task.eval_batch,
                                          **self._build_kw)
        except (MaterializeError, BuildError, MeasurementError) as e:
            raise DataError(f"the unquantized model does not build/run on {self.backend.name}: "
                            f"{e}") from None
        runner = self.backend.open(artifact).__enter__()
        if self.shapes.declared:
            self._runs_at_every_shape(runner)
        cached = self.store.get_blob("baseline_metric") if self.store else None
        if cached is not None:
            metric = float(cached)
        else:
            try:
                outputs = self._reference(runner, self.ws.task.search, "search")
            except MeasurementError as e:
                runner.close()
                raise DataError(f"the unquantized model gives non-finite outputs on the search "
                                f"split ({e}); check the data preprocessing") from None
            task = self.ws.task
            metric = task.metric(outputs, task.metric.target(task.search.labels, outputs))
            if not np.isfinite(metric):
                runner.close()
                raise DataError(f"the task metric of the unquantized model is {metric}; check "
                                "the labels and the metric")
            if self.store:
                self.store.put_blob("baseline_metric", metric)
        self.baseline = Baseline(plan=plan, artifact=artifact, runner=runner, metric=metric)
        return self.baseline

    def _runs_at_every_shape(self, runner: Runner) -> None:
        """DataError (exit 2) when the unquantized model does not run at a declared shape."""
        for shape in self.shapes:
            try:
                runner.run(shape.feed)
            except MeasurementError as e:
                runner.close()
                raise DataError(f"the unquantized model does not run at shape {shape.label} "
                                f"on {self.backend.name} ({e}); declare shapes it accepts "
                                "(--shapes)") from None

    def time_self(self) -> tuple[LatencyStats, LatencyStats]:
        """The baseline artifact opened a second time, timed interleaved with the baseline
        runner: (second copy, baseline). Their ratio is the timing noise floor."""
        assert self.baseline is not None, "open the baseline first"
        with self.backend.open(self.baseline.artifact) as twin:
            twin_lat, base_lat = measure_interleaved([twin, self.baseline.runner], self._feed,
                                                     self.measure)
        return twin_lat, base_lat

    def reference_outputs(self, split: Split, name: str) -> dict[str, np.ndarray]:
        """The baseline's outputs on `split` (named `name` in progress bars), from the shared
        cache when an earlier run computed them."""
        assert self.baseline is not None, "open the baseline first"
        return self._reference(self.baseline.runner, split, name)

    def search_reference(self) -> dict[str, np.ndarray]:
        """The baseline's outputs on the search split (kept in memory once computed)."""
        if self._search_reference is None:
            self._search_reference = self.reference_outputs(self.ws.task.search, "search")
        return self._search_reference

    def _reference(self, runner: Runner, split: Split, name: str) -> dict[str, np.ndarray]:
        return self.shared.arrays(
            f"outputs-{name}-{split.digest}",
            lambda: compute_outputs(runner, split, self.ws.task.eval_batch,
                                    desc=f"baseline ({name})", progress=self.ws.progress))

    # -- evaluation -----------------------------------------------------------------------------
    def evaluate(self, plan: Plan, label: str = "", gate: Gate | None = None) -> Evaluation:
        """Measure `plan` (or take it from the store). With `gate`: a plan timed slower than
        it allows (`Gate`) is not run on the search split; its status says `slower`."""
        found = self._stored(plan, label)
        if found is not None:
            return found
        return self._keep(self._measure(plan, label, gate))

    def evaluate_many(self, proposals: list[tuple[Plan, str]], gate: Gate | None,
                      executor) -> list[Evaluation]:
        """`evaluate` for several plans, those not in the store measured by `executor` (e.g.
        `RayExecutor`: in parallel on its workers)."""
        found = {p.digest: self._stored(p, label) for p, label in proposals}
        todo = [(p, label, gate) for p, label in proposals if found[p.digest] is None]
        if todo:  # each stored as it arrives: a driver stopped mid-batch keeps what finished
            executor.evaluate(todo, lambda ev: found.__setitem__(ev.plan.digest, self._keep(ev)))
        return [found[p.digest] for p, _ in proposals]

    def _stored(self, plan: Plan, label: str) -> Evaluation | None:
        if self.store is None:
            return None
        found = self.store.get(plan.digest)
        if found is not None and self._undecided(found):
            log.info("%s: measured on %d samples before, which do not decide it under "
                     "this budget; measuring it again", label or plan.digest, found.samples)
            return None
        if found is not None:
            self.cached += 1
            return replace(found, cached=True)
        return None

    def _keep(self, ev: Evaluation) -> Evaluation:
        self.fresh += 1
        if self.store is not None:
            self.store.put(ev)
        return ev

    def _undecided(self, ev: Evaluation) -> bool:
        """A stored evaluation that stopped early (on part of the search split) and whose bounds
        do not decide under the current rule, e.g. after a resume with another budget."""
        n = len(self.ws.task.search)
        if not ev.ok or ev.samples is None or ev.samples >= n:
            return False
        if self.rule is None:
            return True
        upper, lower = ev.drop_upper, ev.drop_lower
        metric = self.ws.task.metric
        futile = metric.reference and metric.binary and ev.drop is not None and \
            self.rule.futile(round(ev.drop * ev.samples), n)  # drop = disagreements / samples
        return not ((upper is not None and upper <= self.rule.allowed + 1e-12) or
                    (lower is not None and lower > self.rule.allowed + 1e-12) or futile)

    def _score(self, runner: Runner, label: str) -> dict:
        """The plan's metric on the search split: adaptively (`sequential_drop`) when the
        evaluator has a rule, else on every sample. Returns the Evaluation fields."""
        task = self.ws.task
        assert self.baseline is not None

        def run(part: Split) -> dict[str, np.ndarray]:
            return compute_outputs(runner, part, task.eval_batch, desc=label or "evaluate",
                                   progress=self.ws.progress)

        if self.rule is None:
            outputs = run(task.search)
            target = task.metric.target(
                task.search.labels, self.search_reference() if task.metric.reference else None)
            metric = task.metric(outputs, target)
            drop, rel = drop_of(metric, self.baseline.metric, task.metric.higher_is_better)
            return {"metric": metric, "drop": drop, "rel_drop": rel, "samples": len(task.search)}
        res = sequential_drop(task.metric, task.search, self.search_reference(), run, self.rule)
        b = res.bound
        rel = b.drop / abs(self.baseline.metric) if self.baseline.metric else 0.0
        return {"metric": res.metric, "drop": b.drop, "rel_drop": rel, "samples": res.samples,
                "drop_upper": b.upper, "drop_lower": b.lower}

    def _rival_runner(self, plan: Plan) -> Runner | None:
        """The gate's rival plan, built and opened once while it stays the rival (None if it
        no longer builds: the gate then decides on the ratio alone)."""
        if self._rival is not None and self._rival[0] == plan.digest:
            return self._rival[1]
        self._close_rival()
        out_dir = self.workdir / "rival" / plan.digest
        try:
            graph = materialize(self.ws.model, self.ws.groups, plan, self.ranges,
                                self.backend.dialect)
            artifact = self.backend.build(graph, out_dir, self.ws.groups, self._feed,
                                          max_batch=self.ws.task.eval_batch,
                                          options=dict(plan.options), **self._build_kw)
            runner = self.backend.open(artifact).__enter__()
        except (MaterializeError, BuildError, MeasurementError) as e:
            log.debug("the gate's rival %s does not build again (%s)", plan.digest, e)
            self._cleanup(out_dir)
            return None
        self._rival = (plan.digest, runner, out_dir)
        return runner

    def _close_rival(self) -> None:
        if self._rival is not None:
            _, runner, out_dir = self._rival
            self._rival = None
            runner.close()
            self._cleanup(out_dir)

    def _slower(self, runner: Runner, ratio: float, gate: Gate | None, label: str) -> str | None:
        """Why the plan timed at `ratio` (its `runner` open) skips its accuracy pass, or None
        where it does not (`Gate`)."""
        if gate is None or ratio <= gate.ratio:
            return None
        why = (f"x{ratio:.3f} is slower than x{gate.ratio:.3f} (the fastest in-budget plan so "
               "far with a noise margin, or the baseline)")
        rival = self._rival_runner(gate.rival) \
            if gate.rival is not None and ratio <= gate.recheck else None
        if rival is not None:
            assert self.baseline is not None
            self.rechecks += 1
            try:
                if self.shapes.several:  # the weighted mean of the per-shape ratios
                    rel = relative(time_shapes([runner, rival, self.baseline.runner],
                                               self.shapes, self.measure), self.shapes, 0, 1)
                else:
                    cand, riv, _ = measure_interleaved([runner, rival, self.baseline.runner],
                                                       self._feed, self.measure)
                    rel = cand.median_ms / riv.median_ms
            except MeasurementError as e:  # the rival's fault, not the plan's: decide on ratio
                log.debug("side-by-side timing failed (%s)", e)
                rel = math.inf
            if rel <= 1 + gate.margin:
                log.info("%s: timed x%.3f, above the gate x%.3f, but side by side with the "
                         "fastest in-budget plan x%.3f of it: its accuracy is measured",
                         label or "plan", ratio, gate.ratio, rel)
                return None
            if math.isfinite(rel):
                why += f", and x{rel:.3f} of that plan timed side by side"
        return why + ": it cannot be the answer, so its accuracy was not measured " \
                     "(--full-frontier measures it)"

    def _measure(self, plan: Plan, label: str, gate: Gate | None = None) -> Evaluation:
        assert self.baseline is not None, "use the Evaluator as a context manager"
        t0 = time.perf_counter()
        base = dict(plan=plan, label=label)
        self.backend.check_plan(plan, self.ws.groups)  # PlanError: the caller's plan is wrong
        try:
            graph = materialize(self.ws.model, self.ws.groups, plan, self.ranges,
                                self.backend.dialect)
        except MaterializeError as e:  # a quantizer refused this graph: a failed candidate
            return Evaluation(**base, status=Status.BUILD_FAILED,
                              reason=f"materialization failed: {e}",
                              wall_s=time.perf_counter() - t0)
        t_mat = time.perf_counter() - t0
        out_dir = self.workdir / "evals" / plan.digest
        try:
            artifact = self.backend.build(graph, out_dir, self.ws.groups, self._feed,
                                          max_batch=self.ws.task.eval_batch,
                                          options=dict(plan.options), **self._build_kw)
        except BuildError as e:
            self._cleanup(out_dir)
            return Evaluation(**base, status=Status.BUILD_FAILED, reason=str(e),
                              materialize_s=t_mat, wall_s=time.perf_counter() - t0)
        except MeasurementError as e:
            self._cleanup(out_dir)
            return Evaluation(**base, status=Status.RUN_FAILED, reason=str(e),
                              materialize_s=t_mat, wall_s=time.perf_counter() - t0)
        common = dict(**base, census=artifact.census, materialize_s=t_mat,
                      build_s=artifact.build_s)
        if artifact.census is not None:
            bad = artifact.census.mismatches(plan)
            if bad:
                self._cleanup(out_dir)
                detail = "; ".join(f"{g}: planned {p}, ran {x}" for g, p, x in bad[:3])
                more = f" (+{len(bad) - 3} more)" if len(bad) > 3 else ""
                return Evaluation(**common, status=Status.PRECISION_MISMATCH,
                                  reason=f"{len(bad)} group(s) ran another precision: "
                                         f"{detail}{more}",
                                  wall_s=time.perf_counter() - t0)
            unverified = artifact.census.unverified(plan)
            if unverified and self.backend.require_census:
                self._cleanup(out_dir)
                return Evaluation(**common, status=Status.UNVERIFIED,
                                  reason=f"{len(unverified)} group(s) could not be verified "
                                         f"({artifact.census.source}), e.g. {unverified[0]!r}; "
                                         "--no-require-census accepts such plans",
                                  wall_s=time.perf_counter() - t0)
        try:
            with self.backend.open(artifact) as runner:
                pair = time_pair(runner, self.baseline.runner, self.shapes, self.measure)
                cand, base_lat, ratio_ci = pair
                ratio = pair.ratio  # with several shapes, the weighted mean of their ratios
                common["shapes"] = pair.shapes
                slower = self._slower(runner, ratio, gate, label)
                if slower is not None:
                    return Evaluation(**common, status=Status.SLOWER, latency=cand,
                                      baseline_latency=base_lat, latency_ratio=ratio,
                                      ratio_ci=ratio_ci, reason=slower,
                                      wall_s=time.perf_counter() - t0)
                try:
                    score = self._score(runner, label)
                except NonFiniteOutputError as e:
                    return Evaluation(**common, status=Status.NAN_OUTPUT, reason=str(e),
                                      wall_s=time.perf_counter() - t0)
        except (BuildError, MeasurementError) as e:
            return Evaluation(**common, status=Status.RUN_FAILED, reason=str(e),
                              wall_s=time.perf_counter() - t0)
        finally:
            if not self.keep_artifacts:
                self._cleanup(out_dir)
        return Evaluation(**common, status=Status.OK, **score, latency=cand,
                          baseline_latency=base_lat, latency_ratio=ratio, ratio_ci=ratio_ci,
                          wall_s=time.perf_counter() - t0)

    @staticmethod
    def _cleanup(path: Path) -> None:
        shutil.rmtree(path, ignore_errors=True)
