"""A BERT-family model exported the way most users export one (transformers' default sdpa
attention, whose mask puts -inf into the attention scores) searches end to end on ort-cpu with
every calibration method, as does the same model exported with eager attention."""

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import numpy_helper

FIXTURES = Path(__file__).parents[1] / "fixtures"
FAST = ["--repeats", "10", "--warmup", "2", "--no-progress", "--sweep", "2",
        "--sensitivity-samples", "16", "--option-candidates", "0"]

pytestmark = pytest.mark.zoo  # torch and transformers export the model


@pytest.fixture(scope="module")
def exports(tmp_path_factory):
    sys.path.insert(0, str(FIXTURES))
    try:
        import bert_task
    finally:
        sys.path.remove(str(FIXTURES))
    tmp = tmp_path_factory.mktemp("bert")
    return {a: bert_task.export(tmp / a / "bert.onnx", a) for a in ("sdpa", "eager")}


def _env(model: Path, cache: Path) -> dict:
    return dict(os.environ, PYTHONPATH=str(FIXTURES), TRT_MPQ_CACHE=str(cache),
                BERT_TASK_DATA=str(model.with_suffix(".npz")))


def _minus_inf_constants(path: Path) -> int:
    model = onnx.load(str(path))
    tensors = [numpy_helper.to_array(a.t) for n in model.graph.node for a in n.attribute
               if n.op_type == "Constant" and a.name == "value"]
    tensors += [numpy_helper.to_array(i) for i in model.graph.initializer]
    return sum(int(np.any(np.isneginf(t))) for t in tensors if t.dtype.kind == "f")


def test_the_default_export_really_masks_with_minus_infinity(exports):
    assert _minus_inf_constants(exports["sdpa"]) >= 1
    assert _minus_inf_constants(exports["eager"]) == 0


@pytest.mark.parametrize("attention,method", [("sdpa", "minmax"), ("sdpa", "percentile"),
                                              ("sdpa", "entropy"), ("eager", "minmax")])
def test_search_runs_end_to_end(exports, attention, method, tmp_path):
    model = exports[attention]
    out = tmp_path / "out"
    r = subprocess.run([sys.executable, "-m", "trt_mpq", "search", str(model), "--task",
                        "bert_task:make_task", "--max-drop", "10%", "--calib-method", method,
                        "--out", str(out), *FAST], env=_env(model, tmp_path / "cache"),
                       capture_output=True, text=True, timeout=600)
    assert "Traceback" not in r.stderr, r.stderr[-3000:]
    result = json.loads((out / "result.json").read_text())
    # met or not is the latency's call (a 64-wide BERT gains little from int8 on a busy CPU);
    # what must hold: every plan built, ran its precisions and gave finite outputs
    assert r.returncode == (0 if result["budget_met"] else 1), r.stderr[-3000:]
    evaluations = json.loads((out / "pareto.json").read_text())["evaluations"]
    assert {e["status"] for e in evaluations} <= {"ok", "slower"}, evaluations
    lowered = [e for e in evaluations if e["status"] == "ok"
               and e["precision_counts"].get("int8-dynamic", 0) > 0]
    assert lowered and all(e["drop"] is not None for e in lowered)
    ranges = json.loads(next((tmp_path / "cache" / "calibration").glob("*.json")).read_text())
    assert ranges["method"] == method
    assert all(np.isfinite(v).all() for v in ranges["ranges"].values())


def test_boundary_search_chooses_among_formats_per_group(exports, tmp_path):
    """`--strategy boundary` with `--precision auto`: every MatMul may be int8, dynamic int8 or
    int4 weight-only; the plans it proposes mix them, build, run the precisions planned, and the
    latency models are reported."""
    model = exports["eager"]
    out = tmp_path / "out"
    r = subprocess.run([sys.executable, "-m", "trt_mpq", "search", str(model), "--task",
                        "bert_task:make_task", "--max-drop", "10%", "--strategy", "boundary",
                        "--max-evaluations", "8", "--out", str(out),
                        *FAST[:FAST.index("--sweep")], *FAST[FAST.index("--sweep") + 2:]],
                       env=_env(model, tmp_path / "cache"), capture_output=True, text=True,
                       timeout=600)
    assert "Traceback" not in r.stderr, r.stderr[-3000:]
    result = json.loads((out / "result.json").read_text())
    assert r.returncode == (0 if result["budget_met"] else 1), r.stderr[-3000:]
    assert result["strategy"] == "boundary"
    model_report = result["latency_model"]
    options = model_report["options"]
    groups = len(result["low_precisions"])
    assert options["int8"] == groups  # every group's op takes static int8
    assert 0 < options["int8-dynamic"] == options["int4w"] < groups  # MatMuls only, not the Gemm
    search = model_report["search"]
    evaluations = json.loads((out / "pareto.json").read_text())["evaluations"]
    assert {e["status"] for e in evaluations} <= {"ok", "slower"}, evaluations
    assert 1 <= len(search["predictions"]) == len(evaluations) - 1 <= 8  # all but the baseline
    assert all(p["measured"] > 0 and p["predicted"] > 0 for p in search["predictions"])
    # the all-lowered plan and the probes use the default (dynamic int8 for MatMul) precision
    labels = [p["label"] for p in search["predictions"]]
    assert labels[:3] == ["boundary all-lowered", "boundary probe: alternate groups",
                          "boundary probe: first half"]
    assert model_report["plans"] >= 3 and model_report["median_abs_error"] is not None
    assert "Latency model on the" in (out / "report.md").read_text()
