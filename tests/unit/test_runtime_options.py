"""Runtime options as part of the plan: plans carry them (JSON, digest), ONNX Runtime proposes
the fusions a graph really gets, and a search measures them and carries the chosen one through
to the artifact, its sidecar, result.json and config.json."""

import json

import models
import numpy as np
import onnx
import pytest

from trt_mpq.backends.base import Artifact, Runner
from trt_mpq.backends.ort import DISABLED_OPTION, OrtBackend, OrtConfig
from trt_mpq.calib import CalibConfig
from trt_mpq.errors import PlanError
from trt_mpq.measure import MeasureConfig
from trt_mpq.model import find_groups, prepare_model
from trt_mpq.pipeline.config import SearchConfig
from trt_mpq.pipeline.job import search_job
from trt_mpq.pipeline.workspace import Workspace
from trt_mpq.plan import Plan
from trt_mpq.plan import Precision as P
from trt_mpq.search import Budget, OptionSweep, Status
from trt_mpq.search.evaluation import Evaluation


def test_plans_carry_options():
    plan = Plan.uniform(["a", "b"], P.INT8)
    fast = plan.with_options({"speed": "fast"})
    assert fast != plan and fast.digest != plan.digest
    assert plan.digest == Plan.uniform(["b", "a"], P.INT8).digest  # no options: digest as before
    assert Plan.from_json(fast.to_json()) == fast
    assert json.loads(plan.to_json()).keys() == {"format", "groups"}
    assert fast.with_({"a": P.FP32}).options == (("speed", "fast"),)
    assert fast.with_options({"speed": ""}) == plan  # an empty value removes the option
    with pytest.raises(PlanError, match='"options" must be an object of strings'):
        Plan.from_json_dict({"groups": {"a": "int8"}, "options": {"speed": 1}})
    ev = Evaluation(plan=fast, status=Status.OK)
    assert Evaluation.from_json_dict(ev.to_json_dict()).plan == fast


def test_option_sweep_varies_the_fastest_in_budget_plans():
    base = Plan.uniform(["a", "b"], P.FP32)

    def ev(plan, ratio, drop=0.0, label=""):
        return Evaluation(plan=plan, status=Status.OK, latency_ratio=ratio, drop=drop,
                          label=label)

    evs = [ev(base, 1.0, label="baseline"),
           ev(base.with_({"a": P.INT8}), 0.8, label="k=1"),
           ev(Plan.uniform(["a", "b"], P.INT8), 0.6, drop=0.5, label="k=2"),  # out of budget
           ev(base.with_({"b": P.INT8}), 0.9, label="k=1b")]
    accept = lambda e: e.drop <= 0.1  # noqa: E731
    sweep = OptionSweep(evs, lambda plan: {"x": ("", "1", "2")}, accept, candidates=1,
                        exclude=base)
    asked = sweep.ask()
    assert [label for _, label in asked] == ["k=1 + x=1", "k=1 + x=2"]
    assert all(p.options for p, _ in asked)
    for plan, _ in asked:
        sweep.tell(plan, ev(plan, 0.7))
    assert sweep.ask() == [] and sweep.evaluations == 2


@pytest.fixture(scope="module")
def transformer(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("opts")
    path = prepare_model(models.tiny_transformer(tmp / "t.onnx"), tmp)
    return path, onnx.load(str(path))


def test_ort_proposes_only_fusions_that_apply_and_work(transformer, tmp_path):
    """The tiny transformer's residual Add + LayerNormalization becomes ONNX Runtime's
    SkipLayerNormalization; disabling SkipLayerNormFusion must really remove it."""
    _, model = transformer
    backend = OrtBackend(OrtConfig(threads=1))
    space = backend.runtime_options(model)
    assert "SkipLayerNormFusion" in space[DISABLED_OPTION]
    assert space[DISABLED_OPTION][0] == ""
    groups = find_groups(model)
    feed = {"input": models.transformer_inputs(2)}
    ops = {}
    for value in ("", "SkipLayerNormFusion"):
        a = backend.build(model, tmp_path / (value or "default"), groups, feed,
                          options={DISABLED_OPTION: value} if value else None)
        optimized = onnx.load(str(a.files[0]))
        ops[value] = {n.op_type for n in optimized.graph.node}
        recipe = json.loads((a.path.parent / "model.onnx.json").read_text())
        assert ("SkipLayerNormFusion" in recipe["disabled_optimizers"]) == bool(value)
        assert "disabled_optimizers=" in recipe["python"]
    assert "SkipLayerNormalization" in ops[""]
    assert "SkipLayerNormalization" not in ops["SkipLayerNormFusion"]
    with pytest.raises(PlanError, match="no runtime option 'speed'"):
        backend.check_options({"speed": "fast"})


class SlowRunner(Runner):
    """The real ONNX Runtime runner, 3 ms slower per run unless built with speed=fast."""

    def __init__(self, inner, fast):
        self.inner, self.fast = inner, fast
        self.input_names, self.output_names = inner.input_names, inner.output_names

    def run(self, feed):
        return self.inner.run(feed)

    def time_once(self, feed):
        t = self.inner.time_once(feed)
        return t if self.fast else t + 0.003

    def close(self):
        self.inner.close()


class OptionBackend(OrtBackend):
    """ONNX Runtime plus a fake runtime option, "speed", that only the measurement can judge."""

    name = "ort-cpu"

    def check_options(self, options):
        if set(options) - {"speed"}:
            raise PlanError("unknown option")

    def runtime_options(self, model):
        return {"speed": ("", "fast")}

    def build(self, model, out_dir, groups, sample_feed, max_batch=None, options=None):
        a = super().build(model, out_dir, groups, sample_feed, max_batch)
        return Artifact(a.path, a.backend, a.build_s, a.census, a.files, dict(options or {}))

    def open(self, artifact):
        return SlowRunner(super().open(artifact), artifact.options.get("speed") == "fast")


def test_a_search_chooses_an_option_by_measurement_and_carries_it_to_the_artifact(
        transformer, tmp_path):
    from trt_mpq.task import Split, Task, accuracy

    path, model = transformer
    x = models.transformer_inputs(96)
    labels = np.zeros(96, dtype=np.int64)
    task = Task(name="tiny", model_path=path, calibration=Split({"input": x[:32]}, labels[:32]),
                search=Split({"input": x[32:64]}, labels[32:64]),
                holdout=Split({"input": x[64:]}, labels[64:]), metric=accuracy(), eval_batch=16)
    ws = Workspace(task=task, source_path=path, prepared_path=path, model=model,
                   groups=find_groups(model), cache_dir=tmp_path, progress=False)
    calib = CalibConfig(num_samples=32)
    ranges = ws.calibrate(calib)
    # an absolute budget of 0.99 accepts every plan: what decides here is latency alone
    config = SearchConfig(budget=Budget.parse("0.99"), option_candidates=1)
    measure = MeasureConfig(warmup=1, repeats=8, min_repeats=8)
    out = tmp_path / "out"
    result = search_job(ws, OptionBackend(OrtConfig(threads=1)), ranges, calib, measure,
                        config, out)
    best = result["best"]
    assert best is not None and best["runtime_options"] == {"speed": "fast"}
    plan = json.loads((out / "plan.json").read_text())
    assert plan["options"] == {"speed": "fast"}
    sidecar = json.loads((out / "model.onnx.json").read_text())
    assert sidecar["runtime_options"] == {"speed": "fast"}
    assert json.loads((out / "config.json").read_text())["search"]["runtime_options"] is True
    labels = [e["label"] for e in json.loads((out / "pareto.json").read_text())["evaluations"]]
    assert any(label.endswith("+ speed=fast") for label in labels)
