"""The evaluator's statuses, driven through a fake backend: every failure a candidate can have
gets its status from the error's type, and anything that is not a trt-mpq error propagates."""

from pathlib import Path

import models
import numpy as np
import pytest

from trt_mpq.backends import get_backend
from trt_mpq.backends.base import Artifact, Backend, Census, Runner
from trt_mpq.errors import BuildError, MaterializeError, MeasurementError, PlanError
from trt_mpq.measure import MeasureConfig
from trt_mpq.pipeline import evaluator as evaluator_module
from trt_mpq.pipeline.evaluator import Evaluator
from trt_mpq.pipeline.gate import Gate
from trt_mpq.plan import Plan
from trt_mpq.plan import Precision as P
from trt_mpq.qdq import Dialect
from trt_mpq.results import UNVERIFIED
from trt_mpq.search import Status
from trt_mpq.store import Store

MEASURE = MeasureConfig(warmup=1, repeats=3, min_repeats=3)


class FakeRunner(Runner):
    """Runs the real ONNX Runtime session, then does what the backend was told to fail with."""

    def __init__(self, inner: Runner, failure: str | None) -> None:
        self.inner, self.failure = inner, failure
        self.input_names, self.output_names = inner.input_names, inner.output_names

    def run(self, feed):
        if self.failure == "run":
            raise MeasurementError("the fake runtime crashed")
        out = self.inner.run(feed)
        if self.failure == "nan":
            out = {k: np.full_like(v, np.nan) for k, v in out.items()}
        if self.failure == "bug-run":
            raise ZeroDivisionError("a bug in a runner")
        return out

    def time_once(self, feed):
        if self.failure == "timing":
            raise MeasurementError("the fake timer failed")
        return self.inner.time_once(feed)

    def close(self):
        self.inner.close()


class FakeBackend(Backend):
    """ONNX Runtime underneath; `failures` maps plan digest -> the failure to inject."""

    name = "fake"
    dialect = Dialect.ORT_CPU

    def __init__(self, failures: dict[str, str]) -> None:
        self.real = get_backend("ort-cpu", threads=1)
        self.failures = failures
        self._failure_of: dict[Path, str | None] = {}
        self.current: str | None = None

    def build(self, model, out_dir, groups, sample_feed, max_batch=None, options=None) -> Artifact:
        failure = self.current
        if failure == "build":
            raise BuildError("the fake builder refused the graph")
        if failure == "build-run":
            raise MeasurementError("built, but the sample run failed")
        if failure == "bug-build":
            raise KeyError("a bug in a backend")
        artifact = self.real.build(model, out_dir, groups, sample_feed, max_batch)
        if failure == "mismatch":
            ran = {g: "fp32" for g in artifact.census.executed}
            artifact = Artifact(artifact.path, self.name, artifact.build_s,
                                Census(executed=ran, source="fake"), artifact.files)
        if failure == "unverified":  # e.g. a TensorRT inspector that says "N/A" for one group
            ran = dict(artifact.census.executed)
            ran[sorted(ran)[0]] = UNVERIFIED
            artifact = Artifact(artifact.path, self.name, artifact.build_s,
                                Census(executed=ran, source="fake inspector"), artifact.files)
        self._failure_of[artifact.path] = failure
        return artifact

    def open(self, artifact: Artifact) -> Runner:
        return FakeRunner(self.real.open(artifact), self._failure_of.get(artifact.path))

    def describe(self) -> dict:
        return {"backend": self.name}


@pytest.fixture(scope="module")
def workspace(tmp_path_factory):
    return models.cnn_workspace(tmp_path_factory.mktemp("evaluator"))


@pytest.fixture(scope="module")
def ranges(workspace):
    from trt_mpq.calib import CalibConfig

    return workspace.calibrate(CalibConfig(num_samples=16))


@pytest.fixture()
def run(workspace, ranges, tmp_path, monkeypatch):
    """evaluate(failure) -> the Evaluation of an all-int8 plan with `failure` injected."""
    plan = Plan.uniform(workspace.group_names(), P.INT8)
    backend = FakeBackend({})
    real_materialize = evaluator_module.materialize

    def materialize(model, groups, p, rngs, dialect):
        if p == plan and backend.current == "materialize":
            raise MaterializeError("the quantizer refused this graph")
        if p == plan and backend.current == "bug-materialize":
            raise AttributeError("a bug in a pass")
        return real_materialize(model, groups, p, rngs, dialect)

    monkeypatch.setattr(evaluator_module, "materialize", materialize)

    def evaluate(failure: str | None, store: Store | None = None, gate: Gate | None = None):
        backend.current = None
        with Evaluator(workspace, backend, ranges, MEASURE, store, tmp_path / "work") as ev:
            backend.current = failure
            return ev.evaluate(plan, f"int8 ({failure})", gate=gate)

    return evaluate


@pytest.mark.parametrize("failure,status,reason", [
    (None, Status.OK, ""),
    ("materialize", Status.BUILD_FAILED, "materialization failed: the quantizer refused"),
    ("build", Status.BUILD_FAILED, "the fake builder refused the graph"),
    ("build-run", Status.RUN_FAILED, "built, but the sample run failed"),
    ("mismatch", Status.PRECISION_MISMATCH, "ran another precision"),
    ("unverified", Status.UNVERIFIED, "1 group(s) could not be verified (fake inspector)"),
    ("run", Status.RUN_FAILED, "the fake runtime crashed"),
    ("nan", Status.NAN_OUTPUT, "non-finite"),
    ("timing", Status.RUN_FAILED, "the fake timer failed"),
])
def test_each_failure_has_its_status(run, failure, status, reason):
    ev = run(failure)
    assert ev.status is status, ev.reason
    assert reason in ev.reason
    if status is Status.OK:
        assert ev.metric is not None and ev.latency_ratio > 0 and ev.latency.n == 3
        assert ev.census.mismatches(ev.plan) == []
    else:
        assert ev.metric is None and ev.latency is None
    if status is Status.PRECISION_MISMATCH:
        assert "planned int8, ran fp32" in ev.reason


@pytest.mark.parametrize("failure,error", [("bug-materialize", AttributeError),
                                           ("bug-build", KeyError),
                                           ("bug-run", ZeroDivisionError)])
def test_bugs_propagate(run, failure, error):
    with pytest.raises(error, match="a bug"):
        run(failure)


def test_unverified_groups_are_measured_when_the_census_is_not_required(run):
    backend_requires = FakeBackend.require_census
    try:
        FakeBackend.require_census = False
        ev = run("unverified")
    finally:
        FakeBackend.require_census = backend_requires
    assert ev.status is Status.OK and ev.latency_ratio > 0
    assert len(ev.census.unverified(ev.plan)) == 1 and ev.census.mismatches(ev.plan) == []


def test_a_plan_timed_slower_than_the_gate_skips_its_accuracy_pass(run):
    slow = run(None, gate=Gate(1e-6))  # nothing is faster than that
    assert slow.status is Status.SLOWER and slow.metric is None
    assert slow.latency_ratio > 1e-6 and slow.latency is not None
    assert "accuracy was not measured" in slow.reason
    fast = run(None, gate=Gate(1e6))
    assert fast.status is Status.OK and fast.metric is not None


class ClockRunner(Runner):
    """Runs the real session for outputs; `time_once` reports `ms` (with a tiny jitter)."""

    def __init__(self, inner: Runner, ms: float) -> None:
        self.inner, self.ms, self._n = inner, ms, 0
        self.input_names, self.output_names = inner.input_names, inner.output_names

    def run(self, feed):
        return self.inner.run(feed)

    def time_once(self, feed):
        self._n += 1
        return self.ms * (1 + 0.001 * (self._n % 3 - 1)) / 1e3

    def close(self):
        self.inner.close()


class ClockBackend(Backend):
    """ONNX Runtime underneath; its runners report `ms[kind]` milliseconds, kind being what the
    evaluator built: the baseline, the evaluated plan, or the gate's rival."""

    name = "clock"
    dialect = Dialect.ORT_CPU

    def __init__(self, ms: dict[str, float]) -> None:
        self.real = get_backend("ort-cpu", threads=1)
        self.ms = ms
        self.built: list[str] = []
        self._kind: dict[Path, str] = {}

    def build(self, model, out_dir, groups, sample_feed, max_batch=None, options=None):
        artifact = self.real.build(model, out_dir, groups, sample_feed, max_batch)
        kind = Path(out_dir).name if Path(out_dir).name == "baseline" else Path(out_dir).parent.name
        self._kind[artifact.path] = kind
        self.built.append(kind)
        return artifact

    def open(self, artifact: Artifact) -> Runner:
        return ClockRunner(self.real.open(artifact), self.ms[self._kind[artifact.path]])

    def describe(self) -> dict:
        return {"backend": self.name}


@pytest.mark.parametrize("rival_ms,plan_ms,status,rechecked", [
    # the rival's ratio in the gate (x0.45) was a lucky draw: it runs at x0.50, the plan at
    # x0.47 is faster side by side, so its accuracy is measured
    (0.50, 0.47, Status.OK, True),
    # the rival does run at x0.45: the plan is x1.04 of it side by side, and is skipped
    (0.45, 0.47, Status.SLOWER, True),
    # far slower than the gate (above the recheck band): skipped without a second timing
    (0.50, 0.60, Status.SLOWER, False),
])
def test_a_plan_just_above_the_gate_is_timed_again_beside_the_plan_it_must_beat(
        workspace, ranges, tmp_path, rival_ms, plan_ms, status, rechecked):
    names = workspace.group_names()
    plan, rival = Plan.uniform(names, P.INT8), Plan.of({**{g: P.INT8 for g in names},
                                                        names[-1]: P.FP32})
    backend = ClockBackend({"baseline": 1.0, "evals": plan_ms, "rival": rival_ms})
    gate = Gate(0.45 * 1.03, rival, 0.03, 0.45 * 1.15)
    with Evaluator(workspace, backend, ranges, MEASURE, None, tmp_path / "w") as ev:
        got = ev.evaluate(plan, "p", gate=gate)
        again = ev.evaluate(plan.with_({names[0]: P.FP32}), "q", gate=gate)
    assert got.status is status and got.latency_ratio == pytest.approx(plan_ms, rel=0.01)
    assert (got.metric is not None) == (status is Status.OK)
    assert ev.rechecks == 2 * rechecked
    # the rival is built once while it stays the rival, and removed with the evaluator
    assert backend.built.count("rival") == int(rechecked)
    assert not (tmp_path / "w" / "rival").exists() or not any((tmp_path / "w" / "rival").iterdir())
    if status is Status.SLOWER:
        assert ("side by side" in got.reason) == rechecked
    assert again.status is got.status


def test_a_plan_for_another_model_is_the_callers_error(workspace, ranges, tmp_path):
    with Evaluator(workspace, FakeBackend({}), ranges, MEASURE, None, tmp_path) as ev:
        with pytest.raises(PlanError):
            ev.evaluate(Plan.uniform(["no-such-group"], P.INT8))


def test_failed_evaluations_are_stored_and_not_remeasured(run, tmp_path):
    with Store(tmp_path / "s.sqlite", {"k": 1}) as store:
        first = run("build", store)
        again = run(None, store)  # the store answers: no new build, even though it would work
    assert first.status is again.status is Status.BUILD_FAILED
    assert again.cached and not first.cached
