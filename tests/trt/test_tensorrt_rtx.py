"""TensorRT-RTX engines built ahead of time on a CPU-only machine: every layer's precision is read
from the builder's layer report and checked against the plan. Needs `tensorrt_rtx`
(pip install 'trt-mpq[tensorrt-rtx]'); GPU-only parts are in tests/gpu/."""

import json
from pathlib import Path

import models
import numpy as np
import onnx
import pytest

from trt_mpq.cli.main import main
from trt_mpq.errors import ConfigError, PlanError
from trt_mpq.plan import Plan
from trt_mpq.plan import Precision as P
from trt_mpq.qdq import materialize

pytest.importorskip("tensorrt_rtx")

from trt_mpq.backends import get_backend  # noqa: E402

TARGET = ("sm86",)


@pytest.fixture(scope="module")
def rtx():
    return get_backend("tensorrt-rtx", compute_capabilities=TARGET)


def _plans(groups):
    names = [g.name for g in groups]
    return {"fp16": Plan.uniform(names, P.FP16), "int8": Plan.uniform(names, P.INT8),
            "mixed": Plan.of({n: (P.INT8 if i % 2 == 0 else P.FP16) for i, n in enumerate(names)})}


@pytest.mark.parametrize("which", ["cnn", "transformer"])
def test_aot_engines_run_the_planned_precisions(rtx, which, prepared_cnn, prepared_transformer,
                                                cnn_ranges, transformer_ranges, tmp_path):
    _, model, groups = prepared_cnn if which == "cnn" else prepared_transformer
    ranges = cnn_ranges if which == "cnn" else transformer_ranges
    feed = {"input": models.cnn_inputs(1) if which == "cnn" else models.transformer_inputs(1)}
    for name, plan in _plans(groups).items():
        a = rtx.build(materialize(model, groups, plan, ranges, rtx.dialect), tmp_path / name,
                      groups, feed, max_batch=8)
        assert a.path.stat().st_size > 0
        assert a.census.mismatches(plan) == [], (name, a.census.executed)
        sidecar = json.loads((tmp_path / name / "model.engine.json").read_text())
        assert sidecar["built_for"] == ["sm86"] and sidecar["tensorrt_version"] == rtx.version
        assert sidecar["census"]["executed"] == a.census.executed
        layers = json.loads((tmp_path / name / "layers.json").read_text())
        assert any(layer["type"] for layer in layers)


def test_a_wrong_plan_is_a_precision_mismatch(rtx, prepared_cnn, cnn_ranges, tmp_path):
    """The engine of a uniform FP16 graph, judged against an INT8 plan: every group differs."""
    _, model, groups = prepared_cnn
    names = [g.name for g in groups]
    fp16 = Plan.uniform(names, P.FP16)
    a = rtx.build(materialize(model, groups, fp16, cnn_ranges, rtx.dialect), tmp_path, groups,
                  {"input": models.cnn_inputs(1)})
    wrong = Plan.uniform(names, P.INT8)
    assert {(p, x) for _, p, x in a.census.mismatches(wrong)} == {("int8", "fp16")}


def test_fp8_needs_ada_or_newer(prepared_cnn, cnn_ranges, tmp_path):
    _, model, groups = prepared_cnn
    plan = Plan.uniform([g.name for g in groups], P.FP8)
    with pytest.raises(PlanError, match="8.9 or newer"):
        get_backend("tensorrt-rtx", compute_capabilities=("sm86",)).check_plan(plan, groups)
    ada = get_backend("tensorrt-rtx", compute_capabilities=("sm89",))
    a = ada.build(materialize(model, groups, plan, cnn_ranges, ada.dialect), tmp_path, groups,
                  {"input": models.cnn_inputs(1)})
    assert a.census.executed == {g.name: "fp8" for g in groups}  # the 3-channel conv too
    assert a.census.mismatches(plan) == []


def test_fp8_transformer_runs_every_group_in_fp8(prepared_transformer, transformer_ranges,
                                                 tmp_path):
    _, model, groups = prepared_transformer
    ada = get_backend("tensorrt-rtx", compute_capabilities=("sm89",))
    plan = Plan.uniform([g.name for g in groups], P.FP8)
    a = ada.build(materialize(model, groups, plan, transformer_ranges, ada.dialect), tmp_path,
                  groups, {"input": models.transformer_inputs(1)}, max_batch=8)
    assert a.census.executed == {g.name: "fp8" for g in groups}


def test_int4_weights_what_tensorrt_rtx_really_runs(prepared_transformer, transformer_ranges,
                                                    tmp_path):
    """Block-wise int4 weights (block 32) on every MatMul: TensorRT-RTX runs the 32x128 and
    128x32 weights as int4 but keeps the 32x32 ones (the q/k/v group and the output projection)
    in FP16 -- and the census says so group by group, so such a plan is a precision mismatch
    for those groups, never silently accepted."""
    _, model, groups = prepared_transformer
    ada = get_backend("tensorrt-rtx", compute_capabilities=("sm89",))
    plan = Plan.of({g.name: P.INT4_WEIGHT if g.op_type == "MatMul" else P.FP16 for g in groups})
    a = ada.build(materialize(model, groups, plan, transformer_ranges, ada.dialect), tmp_path,
                  groups, {"input": models.transformer_inputs(1)}, max_batch=8)
    shapes = {g.name: g.ops[0].weight_shape for g in groups}
    assert shapes == {"q_proj": (32, 32), "out_proj": (32, 32), "ffn_in": (32, 128),
                      "ffn_out": (128, 32), "head": (2, 32)}
    assert a.census.executed == {"q_proj": "fp16", "out_proj": "fp16", "ffn_in": "int4w",
                                 "ffn_out": "int4w", "head": "fp16"}
    assert sorted(g for g, _, _ in a.census.mismatches(plan)) == ["out_proj", "q_proj"]


def test_settings_are_checked(tmp_path):
    with pytest.raises(ConfigError, match="compute capability"):
        get_backend("tensorrt-rtx", compute_capabilities=("sm90",))
    with pytest.raises(ConfigError, match="strongly typed"):
        get_backend("tensorrt-rtx", compute_capabilities=TARGET, typing="weak")
    with pytest.raises(ConfigError, match="--opt-level takes an integer in 0..5, got 9"):
        get_backend("tensorrt-rtx", compute_capabilities=TARGET, optimization_level=9)
    rtx = get_backend("tensorrt-rtx", compute_capabilities=TARGET)
    if rtx.gpu is None:
        with pytest.raises(ConfigError, match="needs an NVIDIA GPU"):
            rtx.check_can_run()


def test_tensorrt_rtx_does_not_claim_hopper():
    """Measured on an H200: TensorRT-RTX 1.7 builds there but its engines do not load (SM 9.0)."""
    from trt_mpq.backends.tensorrt import rtx_runs_on

    assert not rtx_runs_on("sm90") and not rtx_runs_on("sm100")
    assert all(rtx_runs_on(s) for s in ("sm75", "sm80", "sm86", "sm89", "sm120", "sm121"))


def test_parser_errors_are_build_errors(rtx, prepared_cnn, tmp_path):
    from trt_mpq.errors import BuildError

    _, model, groups = prepared_cnn
    broken = onnx.ModelProto()
    broken.CopyFrom(model)
    broken.graph.node[0].op_type = "NoSuchOp"
    with pytest.raises(BuildError, match="parser"):
        rtx.build(broken, tmp_path, groups, {"input": models.cnn_inputs(1)})


def test_cli_build_writes_engine_sidecar_and_plan(cnn_path, cache_dir, tmp_path, monkeypatch,
                                                  capsys):
    """`trt-mpq build` on a user model: engine, sidecar with the plan, exit 0; a plan the
    engine does not honour exits 1 with precision-mismatch."""
    monkeypatch.syspath_prepend(str(Path(__file__).parent))
    (tmp_path / "tiny_task.py").write_text(
        "import numpy as np\n"
        "from trt_mpq.task import Split, Task, accuracy\n"
        "def make_task():\n"
        "    x = np.random.default_rng(0).normal(0, 1, (64, 3, 16, 16)).astype(np.float32)\n"
        "    y = np.zeros(64, np.int64)\n"
        "    s = Split({'input': x}, y)\n"
        "    return Task(name='tiny', model_path=None, calibration=s, search=s, holdout=s,\n"
        "                metric=accuracy(), eval_batch=16)\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    out = tmp_path / "eng"
    args = ["build", str(cnn_path), "--task", "tiny_task:make_task", "--backend", "tensorrt-rtx",
            "--compute-capability", "sm86", "--cache-dir", str(cache_dir)]
    assert main([*args, "--uniform", "int8", "--out", str(out)]) == 0
    printed = json.loads(capsys.readouterr().out)
    assert printed["mismatches"] == [] and set(printed["census"]["executed"].values()) == {"int8"}
    sidecar = json.loads((out / "model.engine.json").read_text())
    assert set(sidecar["plan"].values()) == {"int8"} and sidecar["census_matches_plan"] is True
    assert (out / "plan.json").is_file() and (out / "model.engine").stat().st_size > 0
    # TensorRT-RTX 1.7 (the pinned version) folds the casts around conv2 when FP32 is asked for
    # between int8 layers and runs it in FP16: the census catches it -> exit 1
    plan = tmp_path / "fp32_between_int8.json"
    plan.write_text(json.dumps({"groups": {"conv0": "fp32", "conv_a": "int8", "conv2": "fp32",
                                           "fc": "int8"}}))
    code = main([*args, "--plan", str(plan), "--out", str(tmp_path / "fp32mix")])
    captured = capsys.readouterr()
    assert code == 1 and "precision-mismatch" in captured.err
    ran = {m["group"]: m["ran"] for m in json.loads(captured.out)["mismatches"]}
    assert ran.get("conv2") == "fp16"


@pytest.mark.zoo
@pytest.mark.parametrize("name", ["resnet-digits", "mobilenetv2-digits", "minilm-sentiment",
                                  "efficientnet-lite0", "resnet50", "mobilenet_v2", "bert-base"])
def test_every_zoo_model_builds_with_planned_precisions(rtx, name, tmp_path_factory):
    """Each zoo model's graph (architecture-only export: same ops and node names as the full
    build, without training or data; see trt_mpq/zoo/graphs.py), as FP16 baseline, uniform
    INT8 and a mixed plan; ranges from random calibration inputs (precision checks do not
    depend on them)."""
    from trt_mpq.calib import CalibConfig, calibrate
    from trt_mpq.model import find_groups, prepare_model
    from trt_mpq.zoo.graphs import export_graph

    work = tmp_path_factory.mktemp(name)
    feed = export_graph(name, work / "model.onnx")
    prepared = prepare_model(work / "model.onnx", work)
    model = onnx.load(str(prepared))
    groups = find_groups(model)
    rng = np.random.default_rng(0)
    cal = {k: (rng.normal(0, 1, (8, *v.shape[1:])).astype(v.dtype) if v.dtype == np.float32
               else np.repeat(v, 8, axis=0)) for k, v in feed.items()}
    ranges = calibrate(prepared, [cal], CalibConfig(), progress=False)
    for plan_name, plan in _plans(groups).items():
        a = rtx.build(materialize(model, groups, plan, ranges, rtx.dialect), work / plan_name,
                      groups, feed, max_batch=4)
        assert a.census.mismatches(plan) == [], (plan_name, a.census.mismatches(plan)[:3])


def test_an_engine_for_several_shapes_has_one_profile_spanning_them(rtx, prepared_transformer,
                                                                    transformer_ranges, tmp_path):
    """Deployment shapes (`--shapes`): one engine whose optimization profile spans the batch
    sizes and sequence lengths declared, tuned (opt) for the most-weighted shape; the
    transformer's sequence axis, fixed at 8 in its file, made dynamic as `Task.free_axes`
    does. The engine builds, runs the plan's precisions, and its sidecar records the profile."""
    from trt_mpq.pipeline.workspace import relax_inputs

    path, _, groups = prepared_transformer
    relaxed = relax_inputs(path, {"input": (1,)})
    model = onnx.load(str(relaxed))
    assert model.graph.input[0].type.tensor_type.shape.dim[1].dim_param == "input_1"
    plan = _plans(groups)["mixed"]
    opt = {"input": models.transformer_inputs(4, seq=16)}  # the most-weighted: 4 x 16
    shapes = [{"input": (1, 4, 32)}, {"input": (4, 16, 32)}, {"input": (2, 32, 32)},
              {"input": (1, 8, 32)}]  # the accuracy batches' own shape, at batch 1
    a = rtx.build(materialize(model, groups, plan, transformer_ranges, rtx.dialect), tmp_path,
                  groups, opt, max_batch=8, shapes=shapes)
    assert a.census.mismatches(plan) == [], a.census.executed
    sidecar = json.loads((tmp_path / "model.engine.json").read_text())
    assert sidecar["profile"] == {"input": {"min": [1, 4, 32], "opt": [4, 16, 32],
                                            "max": [8, 32, 32]}}
    assert sidecar["inputs"] == {"input": [4, 16, 32]}
