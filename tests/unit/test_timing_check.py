"""The timing guard: the baseline timed against a second copy of itself must come out x1.
A fake backend's runners report chosen times, so disagreement is certain, not luck: it is
detected, warned about, re-measured with more runs and recorded in result.json and report.md."""

import itertools
import json
import logging

import models
import pytest

from trt_mpq.backends import get_backend
from trt_mpq.backends.base import Backend, Runner
from trt_mpq.calib import CalibConfig
from trt_mpq.measure import MeasureConfig
from trt_mpq.pipeline.config import SearchConfig
from trt_mpq.pipeline.evaluator import Evaluator
from trt_mpq.pipeline.job import search_job
from trt_mpq.pipeline.timing import check_timing
from trt_mpq.qdq import Dialect
from trt_mpq.search import Budget

MEASURE = MeasureConfig(warmup=0, repeats=6, min_repeats=3)


class TimedRunner(Runner):
    """Runs the real session for outputs; `time_once` reports `ms` (with a tiny fixed jitter)."""

    def __init__(self, inner: Runner, ms: float) -> None:
        self.inner, self.ms = inner, ms
        self.input_names, self.output_names = inner.input_names, inner.output_names
        self._jitter = itertools.cycle([0.0, 0.001, -0.001])

    def run(self, feed):
        return self.inner.run(feed)

    def time_once(self, feed):
        return self.ms * (1 + next(self._jitter)) / 1e3

    def close(self):
        self.inner.close()


class NoisyBackend(Backend):
    """ONNX Runtime underneath. The first runner opened (the evaluator's baseline) reports
    1 ms; the k-th one after it reports `copies[k - 1]` ms (the last value repeats)."""

    name = "noisy"
    dialect = Dialect.ORT_CPU

    def __init__(self, copies: list[float]) -> None:
        self.real = get_backend("ort-cpu", threads=1)
        self.copies = copies
        self.opened = 0

    def build(self, model, out_dir, groups, sample_feed, max_batch=None, options=None):
        return self.real.build(model, out_dir, groups, sample_feed, max_batch)

    def open(self, artifact):
        k, self.opened = self.opened, self.opened + 1
        ms = 1.0 if k == 0 else self.copies[min(k - 1, len(self.copies) - 1)]
        return TimedRunner(self.real.open(artifact), ms)

    def describe(self):
        return {"backend": self.name, "copies": self.copies}


@pytest.fixture(scope="module")
def workspace(tmp_path_factory):
    return models.cnn_workspace(tmp_path_factory.mktemp("timing"))


@pytest.fixture(scope="module")
def ranges(workspace):
    return workspace.calibrate(CalibConfig(num_samples=16))


CONFIG = SearchConfig(budget=Budget.parse("50%"), timing_retries=2, confidence=None)


def _check(workspace, ranges, tmp_path, copies):
    backend = NoisyBackend(copies)
    with Evaluator(workspace, backend, ranges, MEASURE, None, tmp_path) as ev:
        baseline_ev = ev.evaluate(ev.baseline_plan, "baseline")
        check = check_timing(ev, baseline_ev, CONFIG)
        return check, ev.measure


def test_agreeing_copies_are_trusted_with_one_attempt(workspace, ranges, tmp_path, caplog):
    check, measure = _check(workspace, ranges, tmp_path, [1.0])
    assert check.trusted and len(check.attempts) == 1
    assert check.attempts[0][0] == pytest.approx(1.0, abs=0.01)
    assert measure == MEASURE and "noisy" not in caplog.text


def test_a_lasting_disagreement_is_warned_about_remeasured_and_not_trusted(workspace, ranges,
                                                                           tmp_path, caplog):
    caplog.set_level(logging.WARNING)
    check, measure = _check(workspace, ranges, tmp_path, [1.3])
    assert not check.trusted and len(check.attempts) == 3  # the first + 2 re-measurements
    assert [a[2] for a in check.attempts] == [6, 12, 24]  # twice the runs each time
    assert all(a[0] == pytest.approx(1.3, abs=0.01) for a in check.attempts)
    assert measure.repeats == 24  # the rest of the search keeps the larger count
    assert caplog.text.count("timing is noisy") == 2 and "NOT trusted" in caplog.text


def test_a_passing_disagreement_is_trusted_after_remeasuring(workspace, ranges, tmp_path):
    check, measure = _check(workspace, ranges, tmp_path, [1.3, 1.0])
    assert check.trusted and len(check.attempts) == 2
    assert check.attempts[0][0] == pytest.approx(1.3, abs=0.01)
    assert measure.repeats == 12


def test_the_check_is_recorded_in_result_json_and_the_report(workspace, ranges, tmp_path):
    out = tmp_path / "out"
    config = SearchConfig(budget=Budget.parse("50%"), runtime_options=False, timing_retries=1,
                          confidence=None)
    result = search_job(workspace, NoisyBackend([1.2]), ranges, CalibConfig(num_samples=16),
                        MEASURE, config, out)
    saved = json.loads((out / "result.json").read_text())
    assert saved["timing_check"] == result["timing_check"]
    assert saved["timing_check"]["trusted"] is False
    assert [round(a["ratio"], 2) for a in saved["timing_check"]["attempts"]] == [1.2, 1.2]
    report = (out / "report.md").read_text()
    assert "Timing check: the baseline against itself measured x1.200" in report
    assert "**not trusted**" in report


def test_timing_is_trusted_only_within_the_tolerance_and_the_spread():
    from trt_mpq.measure.latency import TimingCheck

    def check(ratio, spread):
        return TimingCheck(((ratio, spread, 60),), tolerance=0.05, max_spread=0.5).trusted

    assert check(1.0, 0.1) and check(1.04, 0.5)
    assert not check(1.06, 0.1)  # the baseline against itself is not x1
    assert not check(1.0, 0.9)  # x1, but each run spreads too much to tell plans apart


def test_a_baseline_from_the_store_is_timed_afresh():
    """A resumed search's baseline comes from the store, timed on another day: the timing
    check times the baseline against itself now, and never trusts the stored timing."""
    from trt_mpq.measure import LatencyStats
    from trt_mpq.plan import Plan
    from trt_mpq.plan import Precision as P
    from trt_mpq.search import Evaluation, Status

    stored = LatencyStats.of([1.0] * 10)
    fresh_times = LatencyStats.of([1.0] * 10), LatencyStats.of([1.5] * 10)  # noisy now

    class Fake:
        measure = MEASURE
        calls = 0

        def time_self(self):
            Fake.calls += 1
            return fresh_times

    ev = Evaluation(plan=Plan.uniform(["g"], P.FP32), status=Status.OK, label="baseline",
                    metric=1.0, drop=0.0, rel_drop=0.0, latency=stored,
                    baseline_latency=stored, latency_ratio=1.0, cached=True)
    result = check_timing(Fake(), ev, SearchConfig(budget=Budget.parse("1%"), timing_retries=0,
                                                   confidence=None))
    assert Fake.calls == 1 and not result.trusted
    assert result.attempts[0][0] == pytest.approx(1 / 1.5)
