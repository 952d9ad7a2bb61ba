"""A search over several deployment shapes, on a fake backend whose per-shape timings are set:
ONNX Runtime computes the outputs (so accuracy and the census are real), and every runner
reports a latency that depends on the plan (how many groups run int8) and on the batch it is
fed. Lowering more groups is faster at batch 1 and, past one group, slower at batch 8: the
answer must follow the weights, each plan's per-shape ratios must reach pareto.csv/json,
result.json and report.md, and the store must keep searches at other shapes apart."""

import csv
import json

import models
import pytest

from trt_mpq.backends import get_backend
from trt_mpq.backends.base import Backend, Runner
from trt_mpq.calib import CalibConfig
from trt_mpq.errors import ConfigError, DataError, StoreError
from trt_mpq.measure import MeasureConfig
from trt_mpq.pipeline.config import SearchConfig
from trt_mpq.pipeline.evaluator import Evaluator
from trt_mpq.pipeline.job import search_job, store_context
from trt_mpq.plan import Plan
from trt_mpq.plan import Precision as P
from trt_mpq.qdq import Dialect
from trt_mpq.search import Budget
from trt_mpq.search.strategies import FrontierConfig
from trt_mpq.shapes import ShapeSpec
from trt_mpq.store import Store

MEASURE = MeasureConfig(warmup=0, repeats=6, min_repeats=3)


def ratio(k: int, batch: int) -> float:
    """The set latency ratio of a plan with k int8 groups (of 4) at `batch`."""
    return 1 - 0.1 * k if batch == 1 else 1 - 0.2 * k + 0.08 * k * k


class ShapedRunner(Runner):
    def __init__(self, inner: Runner, k: int, calls: list) -> None:
        self.inner, self.k, self.calls = inner, k, calls
        self.input_names, self.output_names = inner.input_names, inner.output_names

    def run(self, feed):
        return self.inner.run(feed)

    def time_once(self, feed):
        batch = len(next(iter(feed.values())))
        self.calls.append(batch)
        return batch * ratio(self.k, batch) / 1e3

    def close(self):
        self.inner.close()


class ShapedBackend(Backend):
    name = "shaped"
    dialect = Dialect.ORT_CPU

    def __init__(self) -> None:
        self.real = get_backend("ort-cpu", threads=1)
        self.k: dict = {}
        self.calls: list[int] = []
        self.builds: list = []

    def build(self, model, out_dir, groups, sample_feed, max_batch=None, options=None, **kw):
        self.builds.append(kw.get("shapes"))
        artifact = self.real.build(model, out_dir, groups, sample_feed, max_batch)
        self.k[artifact.path] = sum(v == "int8" for v in artifact.census.executed.values())
        return artifact

    def open(self, artifact):
        return ShapedRunner(self.real.open(artifact), self.k[artifact.path], self.calls)

    def describe(self):
        return {"backend": self.name}


@pytest.fixture(scope="module")
def workspace(tmp_path_factory):
    return models.cnn_workspace(tmp_path_factory.mktemp("shaped"))


@pytest.fixture(scope="module")
def ranges(workspace):
    return workspace.calibrate(CalibConfig(num_samples=16))


CONFIG = SearchConfig(budget=Budget.parse("1"), strategy="frontier",  # every plan in budget
                      strategy_config=FrontierConfig(sweep_points=4), runtime_options=False,
                      confidence=None)


def _search(workspace, ranges, out, weights):
    ws = workspace.at_shapes(ShapeSpec.parse("batch=1,8"), weights)
    backend = ShapedBackend()
    result = search_job(ws, backend, ranges, CalibConfig(num_samples=16), MEASURE, CONFIG, out)
    return result, backend


@pytest.mark.parametrize("weights,k", [((10, 1), 4), ((1, 10), 1)])
def test_the_answer_follows_the_weighted_objective(workspace, ranges, tmp_path, weights, k):
    result, backend = _search(workspace, ranges, tmp_path / "out", weights)
    best = result["best"]
    assert best["precision_counts"] == ({"int8": 4} if k == 4 else {"fp32": 3, "int8": 1})
    w1, w8 = weights[0] / sum(weights), weights[1] / sum(weights)
    assert best["latency_ratio"] == pytest.approx(w1 * ratio(k, 1) + w8 * ratio(k, 8))
    shapes = {s["shape"]: s for s in best["shapes"]}
    assert shapes["batch=1"]["latency_ratio"] == pytest.approx(ratio(k, 1))
    assert shapes["batch=8"]["latency_ratio"] == pytest.approx(ratio(k, 8))
    assert result["shapes"]["shapes"][0]["dims"] == {"input": [1, 3, 16, 16]}
    assert result["shapes"]["primary"] == ("batch=1" if k == 4 else "batch=8")
    assert set(backend.calls) == {1, 8}  # every plan timed at both batches
    # every build is told the shapes its artifact must accept (a TensorRT profile)
    assert all(s == [{"input": (1, 3, 16, 16)}, {"input": (8, 3, 16, 16)},
                     {"input": (1, 3, 16, 16)}] for s in backend.builds)


def test_per_shape_ratios_reach_every_output(workspace, ranges, tmp_path):
    out = tmp_path / "out"
    result, _ = _search(workspace, ranges, out, None)
    evaluations = json.loads((out / "pareto.json").read_text())["evaluations"]
    by_k = {sum(1 for p in e["plan"].values() if p == "int8"): e for e in evaluations
            if e["status"] in ("ok", "slower")}
    three = {s["shape"]: s["latency_ratio"] for s in by_k[3]["shapes"]}
    assert three == {"batch=1": pytest.approx(0.7), "batch=8": pytest.approx(1.12)}
    assert by_k[3]["latency_ratio"] == pytest.approx((0.7 + 1.12) / 2)
    rows = list(csv.DictReader((out / "pareto.csv").open()))
    assert {"latency_ratio@batch=1", "latency_ratio@batch=8", "latency_ms@batch=8"} <= \
        set(rows[0])
    row3 = next(r for r in rows if r["plan_digest"] == by_k[3]["plan_digest"])
    assert float(row3["latency_ratio@batch=8"]) == pytest.approx(1.12)
    report = (out / "report.md").read_text()
    assert "## Deployment shapes" in report and "weighted mean of their per-shape" in report
    assert "| batch=8 | 0.5 | input 8x3x16x16 |" in report
    # a plan faster at batch 1 and slower at batch 8 is visible as such
    assert "faster than the baseline at some shapes and slower at others" in report
    assert "batch=8 x1.120" in report
    assert result["tried_on_holdout"][0]["shapes"][0]["shape"] == "batch=1"
    saved = json.loads((out / "result.json").read_text())
    assert saved["best"]["shapes"] == result["best"]["shapes"]
    assert saved["shapes"]["objective"].startswith("weighted mean of the per-shape")


def test_a_search_without_shapes_writes_what_it_always_did(workspace, ranges, tmp_path):
    out = tmp_path / "out"
    backend = ShapedBackend()
    result = search_job(workspace, backend, ranges, CalibConfig(num_samples=16), MEASURE, CONFIG,
                        out)
    assert "shapes" not in result and "shapes" not in result["best"]
    assert set(backend.calls) == {1} and all(s is None for s in backend.builds)
    rows = list(csv.DictReader((out / "pareto.csv").open()))
    assert not any("@" in c for c in rows[0])
    assert "Deployment shapes" not in (out / "report.md").read_text()
    assert result["best"]["precision_counts"] == {"int8": 4}  # batch 1 alone: all int8


def test_the_store_context_holds_the_shapes(workspace, ranges, tmp_path):
    backend = ShapedBackend()
    plain = store_context(workspace, backend, ranges, MEASURE)
    assert "shapes" not in plain  # a search without shapes keeps the context it had
    mix = store_context(workspace.at_shapes(ShapeSpec.parse("batch=1,8")), backend, ranges,
                        MEASURE)
    other = store_context(workspace.at_shapes(ShapeSpec.parse("batch=1,8"), (1, 3)), backend,
                          ranges, MEASURE)
    assert mix["shapes"]["shapes"][1]["dims"] == {"input": [8, 3, 16, 16]}
    assert len({json.dumps(c, sort_keys=True) for c in (plain, mix, other)}) == 3
    Store(tmp_path / "s.sqlite", mix).close()
    with pytest.raises(StoreError, match="differs in: shapes"):
        Store(tmp_path / "s.sqlite", other)


def test_shapes_the_model_cannot_run_are_refused_before_any_search(workspace, ranges, tmp_path):
    with pytest.raises(ConfigError, match="fixed at 16 on axis 2"):
        workspace.at_shapes(ShapeSpec.parse("input=1x3x32x32"))
    # a task that declares an axis free its graph cannot run at: refused when the baseline
    # runs at that shape (exit 2), not mid-search
    from dataclasses import replace

    ws = replace(workspace, task=replace(workspace.task, free_axes={"input": (1, 2, 3)}))
    wide = ws.at_shapes(ShapeSpec.parse("input=1x3x16x16,1x3x20x24"))
    assert wide.prepared_path != workspace.prepared_path  # the relaxed copy
    assert wide.model.graph.input[0].type.tensor_type.shape.dim[2].dim_param == "input_2"
    with Evaluator(wide, get_backend("ort-cpu", threads=1), ranges, MEASURE, None,
                   tmp_path / "w"):
        pass  # global pooling: this CNN runs at any image size
    bad = ws.at_shapes(ShapeSpec.parse("input=1x3x16x16,1x4x16x16"))  # 4 channels: it cannot
    with pytest.raises(DataError, match="does not run at shape input=1x4x16x16"):
        with Evaluator(bad, get_backend("ort-cpu", threads=1), ranges, MEASURE, None,
                       tmp_path / "w"):
            pass


def test_evaluations_at_several_shapes_round_trip_the_store(workspace, ranges, tmp_path):
    ws = workspace.at_shapes(ShapeSpec.parse("batch=1,8"), (1, 3))
    plan = Plan.uniform(ws.group_names(), P.INT8)
    with Store(tmp_path / "s.sqlite", {"m": 1}) as store, \
            Evaluator(ws, ShapedBackend(), ranges, MEASURE, store, tmp_path / "w") as ev:
        fresh = ev.evaluate(plan, "int8")
        again = ev.evaluate(plan, "int8")
    assert again.cached and again.shapes == fresh.shapes and len(fresh.shapes) == 2
    assert fresh.latency_ratio == pytest.approx(0.25 * 0.6 + 0.75 * ratio(4, 8))
