"""Every user mistake exits 2 with one line that says what is wrong and what to do: no
traceback (unless -v), nothing half-written in --out, no debris in the cache."""

import os
import subprocess
import sys

import models
import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

TASK_MODULE = '''
import numpy as np
from trt_mpq.task import Metric, Split, Task, accuracy

def _split(n, seed, labels=None):
    x = np.random.default_rng(seed).normal(0, 1, (n, 3, 16, 16)).astype(np.float32)
    return Split({"input": x}, np.arange(n) % 10 if labels is None else labels)

def make_task():
    return Task(name="tiny", model_path=None, calibration=_split(16, 0),
                search=_split(16, 1), holdout=_split(16, 2), metric=accuracy(), eval_batch=8)

def make_missing_file():
    data = np.load("/no/such/data.npz")  # the user's own mistake
    return make_task()

def make_exact_task():
    """Metric: agreement with the FP32 model's own logits to 1e-6 (labels = those logits):
    every quantized plan misses any budget smaller than its error."""
    from pathlib import Path
    import onnxruntime as ort

    t = make_task()
    sess = ort.InferenceSession(str(Path(__file__).parent / "cnn.onnx"),
                                providers=["CPUExecutionProvider"])
    exact = lambda s: Split(s.inputs, sess.run(None, dict(s.inputs))[0])
    metric = Metric(name="-max abs error", fn=lambda out, ref: -float(np.max(np.abs(
        next(iter(out.values())) - ref))), kind="regression")
    return Task(name="tiny-exact", model_path=None, calibration=t.calibration,
                search=exact(t.search), holdout=exact(t.holdout), metric=metric, eval_batch=8)

def make_broken_metric():
    t = make_task()
    def metric(out, labels):
        raise KeyError("logits")  # the user's metric reads an output the model does not have
    return Task(**{**t.__dict__, "metric": Metric(name="mine", fn=metric)})

def make_label_mismatch():
    return Task(name="tiny", model_path=None, calibration=_split(16, 0),
                search=_split(16, 1, labels=np.zeros(15, np.int64)), holdout=_split(16, 2),
                metric=accuracy(), eval_batch=8)
'''


@pytest.fixture()
def setup(tmp_path):
    (tmp_path / "user_task.py").write_text(TASK_MODULE)
    (tmp_path / "broken_task.py").write_text("import numpy as np\n"
                                             "DATA = np.load('/no/such/file.npy')\n")
    model = models.tiny_cnn(tmp_path / "cnn.onnx")
    path = os.pathsep.join([str(tmp_path), os.environ.get("PYTHONPATH", "")])  # + the checkout
    env = dict(os.environ, PYTHONPATH=path, TRT_MPQ_CACHE=str(tmp_path / "cache"))
    return tmp_path, model, env


def cli(*args, env, cwd):
    return subprocess.run([sys.executable, "-m", "trt_mpq", *map(str, args)], env=env, cwd=cwd,
                          capture_output=True, text=True, timeout=300)


def _one_clear_line(r, *needles):
    assert r.returncode == 2, (r.returncode, r.stderr[-2000:])
    assert "Traceback" not in r.stderr, r.stderr
    lines = [ln for ln in r.stderr.splitlines() if "error:" in ln]
    assert len(lines) == 1, r.stderr
    for needle in needles:
        assert needle in lines[0], lines[0]
    return lines[0]


# point estimates: these 16-sample splits cannot certify 1% (that refusal has its own test)
SEARCH = ["--max-drop", "1%", "--repeats", "5", "--warmup", "1", "--no-progress",
          "--confidence", "off"]


def test_a_budget_the_holdout_cannot_certify_exits_2_before_any_work(setup):
    tmp, model, env = setup
    r = cli("search", model, "--task", "user_task:make_task", "--out", tmp / "out",
            *SEARCH[:-2], env=env, cwd=tmp)
    _one_clear_line(r, "the holdout split (16 samples) cannot certify", "upper bound of 0.2",
                    "needs about", "--metric agreement", "--confidence off")
    assert not (tmp / "out").exists()


def test_a_task_factory_that_raises_is_reported_with_the_users_line(setup):
    tmp, model, env = setup
    r = cli("search", model, "--task", "user_task:make_missing_file", "--out", tmp / "out",
            *SEARCH, env=env, cwd=tmp)
    line = _one_clear_line(r, "the task factory user_task:make_missing_file raised "
                              "FileNotFoundError", "/no/such/data.npz")
    assert f"{tmp / 'user_task.py'}:" in line and "in make_missing_file" in line
    assert not (tmp / "out").exists()
    verbose = cli("search", model, "--task", "user_task:make_missing_file", "--out",
                  tmp / "out", *SEARCH, "-v", env=env, cwd=tmp)
    assert verbose.returncode == 2 and "Traceback" in verbose.stderr
    assert 'np.load("/no/such/data.npz")' in verbose.stderr  # the user's frame is shown


def test_a_task_module_that_fails_to_import_is_reported_with_the_users_line(setup):
    tmp, model, env = setup
    r = cli("inspect", model, "--task", "broken_task:make_task", env=env, cwd=tmp)
    _one_clear_line(r, "importing the task module 'broken_task' raised FileNotFoundError",
                    f"{tmp / 'broken_task.py'}:2")
    r = cli("inspect", model, "--task", "no_such_module:make_task", env=env, cwd=tmp)
    _one_clear_line(r, "cannot find module 'no_such_module'", "PYTHONPATH")


def test_a_label_count_mismatch_names_the_split_and_the_fix(setup):
    tmp, model, env = setup
    r = cli("search", model, "--task", "user_task:make_label_mismatch", "--out", tmp / "out",
            *SEARCH, env=env, cwd=tmp)
    _one_clear_line(r, "the search split has 15 labels for 16 samples",
                    "give one label per sample", f"{tmp / 'user_task.py'}:")
    assert not (tmp / "out").exists()


def test_a_custom_op_names_the_op_and_the_users_file_and_leaves_no_debris(setup):
    tmp, _, env = setup
    w = numpy_helper.from_array(np.eye(4, dtype=np.float32), "w")
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "w"], ["h"], name="mm"),
         helper.make_node("FastGelu", ["h"], ["y"], name="my_gelu", domain="my.company.ops")],
        "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n", 4])], [w])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17),
                                                    helper.make_opsetid("my.company.ops", 1)])
    path = tmp / "custom.onnx"
    onnx.save(model, str(path))
    for command in (["inspect", path], ["search", path, "--task", "user_task:make_task",
                                        "--out", tmp / "out", *SEARCH]):
        r = cli(*command, env=env, cwd=tmp)
        _one_clear_line(r, str(path), "'my_gelu'", "my.company.ops:FastGelu",
                        "custom-op library")
    assert not (tmp / "out").exists()
    assert not list(tmp.glob("cache/**/*.onnx"))  # no prepared copy left in the cache


@pytest.mark.parametrize("command", ["search", "build", "evaluate"])
def test_an_out_path_that_cannot_be_used(setup, command):
    tmp, model, env = setup
    a_file = tmp / "taken.txt"
    a_file.write_text("a file the user has")
    extra = {"search": SEARCH, "build": ["--uniform", "int8"],
             "evaluate": ["--uniform", "int8", "--repeats", "5"]}[command]
    bad = a_file if command != "evaluate" else tmp  # evaluate --out is a file: give a folder
    r = cli(command, model, "--task", "user_task:make_task", "--out", bad, *extra, env=env,
            cwd=tmp)
    _one_clear_line(r, f"--out {bad}")
    assert a_file.read_text() == "a file the user has"
    if command != "evaluate":
        r = cli(command, model, "--task", "user_task:make_task", "--out", a_file / "sub",
                *extra, env=env, cwd=tmp)
        _one_clear_line(r, f"{a_file} is a file")
    assert not (tmp / "engines").exists()


def test_a_budget_no_plan_can_meet_exits_1_and_writes_the_frontier(setup):
    tmp, model, env = setup
    out = tmp / "out"
    # the budget after SEARCH's own --max-drop 1%: the last one given is the one used
    r = cli("search", model, "--task", "user_task:make_exact_task", "--out", out, *SEARCH,
            "--max-drop", "1e-5", "--sweep", "2", env=env, cwd=tmp)
    assert r.returncode == 1, r.stderr[-2000:]
    assert "budget NOT met" in r.stdout and "Traceback" not in r.stderr
    import json

    result = json.loads((out / "result.json").read_text())
    assert result["budget"]["max_drop"] == 1e-5 and not result["budget"]["relative"]
    assert result["budget_met"] is False and result["best"] is None
    assert (out / "pareto.csv").is_file() and "Budget not met" in (out / "report.md").read_text()
    assert not (out / "plan.json").exists() and not (out / "model.onnx").exists()


def test_a_metric_that_raises_is_the_users_error(setup):
    tmp, model, env = setup
    r = cli("search", model, "--task", "user_task:make_broken_metric", "--out", tmp / "out",
            *SEARCH, env=env, cwd=tmp)
    _one_clear_line(r, "the task metric 'mine' raised KeyError: 'logits'",
                    f"{tmp / 'user_task.py'}:")


def test_a_bug_exits_3_with_one_line_and_the_traceback_in_a_file(tmp_path, monkeypatch, capsys):
    from trt_mpq.cli import commands
    from trt_mpq.cli import main as cli_main

    def broken(args):
        return {}["a key trt-mpq forgot"]

    monkeypatch.setattr(commands, "cmd_zoo", broken)
    monkeypatch.setenv("TRT_MPQ_CACHE", str(tmp_path))
    assert cli_main.main(["zoo"]) == 3
    err = capsys.readouterr().err
    assert "internal error: KeyError" in err and "this is a bug in trt-mpq" in err
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1
    (crash,) = (tmp_path / "crashes").glob("*.txt")
    assert "Traceback" in crash.read_text() and "a key trt-mpq forgot" in crash.read_text()
    assert str(crash) in err
    assert cli_main.main(["zoo", "-v"]) == 3
    assert "Traceback" in capsys.readouterr().err


def test_evaluate_exits_1_when_its_plan_fails(setup):
    """fp16 on this CPU runs FP32 kernels: the census says so and the plan is not measured."""
    tmp, model, env = setup
    r = cli("evaluate", model, "--task", "user_task:make_task", "--uniform", "fp16",
            "--repeats", "5", env=env, cwd=tmp)
    assert r.returncode == 1, r.stderr[-2000:]
    assert "precision-mismatch" in r.stderr and "Traceback" not in r.stderr


@pytest.mark.parametrize("shapes,needles", [
    (["--shapes", "input=1x3x32x32"], ["fixed at 16 on axis 2", "[batch, 3, 16, 16]",
                                       "dynamic axes (0)"]),
    (["--shapes", "batch=0"], ["--shapes", "every size must be in 1.."]),
    (["--shapes", "pixels=1x3"], ["names input 'pixels'", "inputs are input"]),
    (["--shapes", "batch=1,8", "--shape-weights", "1"], ["1 weight(s) for 2 shape(s)"]),
    (["--shape-weights", "1,2"], ["--shape-weights needs --shapes"]),
])
def test_shapes_that_do_not_fit_the_model_exit_2_before_any_work(setup, shapes, needles):
    tmp, model, env = setup
    r = cli("search", model, "--task", "user_task:make_task", "--out", tmp / "out", *SEARCH,
            *shapes, env=env, cwd=tmp)
    _one_clear_line(r, *needles)
    assert not (tmp / "out").exists()
