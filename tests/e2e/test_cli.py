"""The command line, end to end, on a small CNN trained on real digits (torch builds it once)."""

import csv
import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import models
import pytest

from trt_mpq.cli.main import main

FIXTURES = Path(__file__).parents[1] / "fixtures"
TASK = "digits_task:make_task"
MEASURE = ["--repeats", "20", "--warmup", "3", "--no-progress"]
FAST = [*MEASURE, "--sweep", "3"]

pytestmark = pytest.mark.zoo  # the fixture model is trained with torch


@pytest.fixture()
def env(tmp_path, cache_dir, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("TRT_MPQ_CACHE", str(cache_dir))
    monkeypatch.syspath_prepend(str(FIXTURES))
    path = os.pathsep.join([str(FIXTURES), os.environ.get("PYTHONPATH", "")])
    e = dict(os.environ, PYTHONPATH=path,
             TRT_MPQ_CACHE=str(cache_dir))
    return e


def cli(*args, env=None, traceback_ok=False, **kw):
    """Run the CLI; a traceback on stderr fails the test unless the test expects one (only
    -v prints them: every error trt-mpq expects is one line, every bug exits 3)."""
    r = subprocess.run([sys.executable, "-m", "trt_mpq", *map(str, args)], env=env,
                       capture_output=True, text=True, **kw)
    if not traceback_ok:
        assert "Traceback" not in r.stderr, r.stderr[-3000:]
    assert r.returncode != 3, r.stderr[-3000:]  # an internal error is never a test's outcome
    return r


@pytest.fixture(scope="module")
def searched(digits_model, tmp_path_factory, cache_dir):
    """One full search, shared by the tests that read its outputs."""
    out = tmp_path_factory.mktemp("search") / "out"
    env = dict(os.environ, PYTHONPATH=str(FIXTURES), TRT_MPQ_CACHE=str(cache_dir))
    r = cli("search", digits_model, "--task", TASK, "--max-drop", "3%", "--out", out, *FAST,
            env=env)
    assert r.returncode == 0, r.stderr
    return out, r


def test_search_meets_the_budget_and_writes_everything(searched):
    out, r = searched
    assert "budget met" in r.stdout
    for name in ("result.json", "plan.json", "model.onnx", "model.optimized.onnx", "pareto.csv",
                 "pareto.json", "pareto.png", "report.md", "config.json", "evaluations.sqlite"):
        assert (out / name).is_file(), name
    assert not (out / ".work").exists() and not (out / ".candidate").exists()
    res = json.loads((out / "result.json").read_text())
    assert res["budget_met"] is True and res["backend"] == "ort-cpu"
    assert res["weights"] == "trained"
    best = res["best"]
    for key in ("plan", "metric", "drop", "holdout_metric", "holdout_drop", "latency_ms",
                "latency_ratio", "precision_counts", "artifact"):
        assert key in best
    assert best["holdout_rel_drop"] <= 0.03 + 1e-9 and best["rel_drop"] <= 0.03 + 1e-9
    # certified: the paired upper bound of the holdout drop is within the budget
    assert best["certified"] and best["holdout_rel_drop_upper"] <= 0.03 + 1e-9
    assert best["latency_ratio"] < 1.0  # int8 convs on a VNNI CPU are faster than FP32
    assert res["baseline"]["latency_ms"] > 0 and res["evaluations"] >= 3
    assert res["budget"] == {"max_drop": 0.03, "relative": True,
                             "allowed_drop": pytest.approx(0.03 * res["baseline"]["metric"]),
                             "describe": "3% of baseline"}
    assert "versions" in res and res["versions"]["onnxruntime"] == "1.32.0"
    # every OK evaluation's kernel census matched its plan
    pareto = json.loads((out / "pareto.json").read_text())["evaluations"]
    for e in pareto:
        if e["status"] == "ok":
            executed = e["census"]["executed"]
            assert executed == e["plan"], e["label"]
    assert "int8" in best["precision_counts"] and best["census_kernels"].get("QLinearConv", 0) > 0
    # in budget as the search judged it: by the drop's upper bound where it decided by bounds
    allowed, bound = res["budget"]["allowed_drop"], res["search_decision"] == "bound"
    for e in pareto:
        stat = e["drop_upper"] if bound else e["drop"]
        assert e["in_budget"] == (e["status"] == "ok" and stat <= allowed + 1e-12), e["label"]
    header = (out / "pareto.csv").read_text().splitlines()[0]
    assert header.startswith("plan_digest,label,status,metric")


def test_evaluate_the_found_plan_reproduces_its_accuracy(searched, digits_model, env):
    out, _ = searched
    r = cli("evaluate", digits_model, "--task", TASK, "--plan", out / "plan.json",
            "--repeats", "10", "--no-progress", env=env)
    assert r.returncode == 0, r.stderr
    ev = json.loads(r.stdout)
    res = json.loads((out / "result.json").read_text())
    assert ev["status"] == "ok"
    assert ev["metric"] == pytest.approx(res["best"]["metric"])
    assert ev["census"]["executed"] == ev["plan"]


def test_report_regenerates(searched, env):
    out, _ = searched
    (out / "report.md").unlink()
    r = cli("report", out, env=env)
    assert r.returncode == 0, r.stderr
    assert "Budget met" in (out / "report.md").read_text()
    assert "## Precision boundaries" in (out / "report.md").read_text()


def test_the_answer_and_the_frontier_carry_their_precision_boundaries(searched):
    """result.json's answer, pareto.json's frontier plans and report.md list each boundary:
    its tensor, the conversion nodes of the deployed graph there, the latency model's estimate
    and the conversion kernels ONNX Runtime's profiler timed there."""
    import onnx

    out, _ = searched
    res = json.loads((out / "result.json").read_text())
    account = res["best"]["boundaries"]
    assert account["estimate"]["fitted"] and account["count"] == len(account["boundaries"]) >= 1
    assert account["measured"]["source"] == "onnxruntime profiler"
    deployed = {n.name: n.op_type for n in onnx.load(str(out / "model.onnx")).graph.node}
    report = (out / "report.md").read_text().split("## Precision boundaries")[1]
    for b in account["boundaries"]:
        assert b["from"] != b["to"] and b["tensors"] and b["estimated_cost"] >= 0
        assert all(deployed[n["name"]] == n["op_type"] for n in b["nodes"])
        assert b["measured_ms"] is None or b["measured_ms"] > 0
        assert f"`{b['tensors'][0]}`" in report
    pareto = json.loads((out / "pareto.json").read_text())["evaluations"]
    assert all("boundaries" in e for e in pareto if e["on_frontier"])


def test_evaluate_uniform_int8(digits_model, env):
    r = cli("evaluate", digits_model, "--task", TASK, "--uniform", "int8", "--repeats", "10",
            "--no-progress", "--out", "ev.json", env=env)
    assert r.returncode == 0, r.stderr
    ev = json.loads(Path("ev.json").read_text())
    assert ev["status"] == "ok" and set(ev["plan"].values()) == {"int8"}
    assert set(ev["census"]["executed"].values()) == {"int8"}


def test_threads_is_an_integer_setting_on_every_command(digits_model, env):
    """`--threads 2` was read as text ('<' not supported between 'str' and 'int'), exit 2."""
    r = cli("evaluate", digits_model, "--task", TASK, "--uniform", "int8", "--repeats", "5",
            "--threads", "2", "--no-progress", env=env)
    assert r.returncode == 0, r.stderr
    r = cli("search", digits_model, "--task", TASK, "--max-drop", "3%", "--out", "threads",
            *FAST, "--threads", "2", env=env)
    assert r.returncode == 0, r.stderr
    request = json.loads(Path("threads/request.json").read_text())
    assert request["backend"] == {"name": "ort-cpu", "config": {
        "threads": 2, "inter_op_threads": 1, "allow_spinning": False,
        "optimization_level": "all"}}
    session = json.loads(Path("threads/model.onnx.json").read_text())
    assert session["intra_op_num_threads"] == 2  # the session that was measured


def test_inspect_and_zoo(digits_model, env):
    r = cli("inspect", digits_model, env=env)
    assert r.returncode == 0 and "5 groups" in r.stdout and "/0/Conv" in r.stdout
    r = cli("inspect", digits_model, "--json", env=env)
    assert len(json.loads(r.stdout)["groups"]) == 5
    r = cli("zoo", env=env)
    assert r.returncode == 0 and "minilm-sentiment" in r.stdout


# -- bad input: exit 2, a message that names the problem and the fix, nothing written --------
def _bad(args, match, capsys):
    before = set(Path(".").iterdir())
    code = main([str(a) for a in args])  # in-process: the same code path as the console script
    err = capsys.readouterr().err
    assert code == 2, (args, err)
    assert match in err, err
    assert "Traceback" not in err
    assert set(Path(".").iterdir()) == before  # no output folder, no half-written file


def test_bad_inputs_exit_2_with_a_clear_message(digits_model, env, capsys):
    Path("notonnx.onnx").write_text("hello, I am a text file\n" * 20)
    cut = Path("cut.onnx")
    cut.write_bytes(digits_model.read_bytes()[:3000])
    noq = models.no_quantizable(Path("noq.onnx"))
    Path("bad_plan.json").write_text('{"groups": {"/0/Conv": "int9"}}')
    Path("plan_unknown.json").write_text('{"groups": {"nope": "int8"}, "default": "fp32"}')
    search = ["search", digits_model, "--task", TASK, "--max-drop", "1%", *FAST]
    cases = [
        (["search", "notonnx.onnx", "--task", TASK, "--max-drop", "1%"], "not a readable ONNX"),
        (["search", cut, "--task", TASK, "--max-drop", "1%"], "not a readable ONNX"),
        (["search", noq, "--task", TASK, "--max-drop", "1%"], "no quantizable layer"),
        (["search", "missing.onnx", "--task", TASK, "--max-drop", "1%"], "does not exist"),
        (["search", digits_model, "--task", "digits_task:make_wrong_shape_task", "--max-drop",
          "1%"], "expects"),
        (["search", digits_model, "--task", "digits_task:make_empty_split_task", "--max-drop",
          "1%"], "search split is empty"),
        (["search", digits_model, "--task", "digits_task:make_nan_task", "--max-drop", "1%",
          *FAST], "non-finite"),
        (["search", "resnet-digitz", "--max-drop", "1%"], "did you mean 'resnet-digits'"),
        (["search", digits_model, "--max-drop", "1%"], "needs a task"),
        (["search", digits_model, "--task", "nomodule_xyz:f", "--max-drop", "1%"],
         "cannot find module"),
        ([*search[:4], "--max-drop", "lots"], "cannot read the budget"),
        ([*search, "--precision", "fp8"], "fp8 is not available on ort-cpu"),
        ([*search, "--backend", "tpu"],
         "--backend takes one of ort-cpu, tensorrt, tensorrt-rtx, got 'tpu'"),
        ([*search, "--threads", "0"], "--threads takes an integer in 1..1024, got '0'"),
        ([*search, "--repeats", "-5"], "--repeats takes an integer in 3..100000, got '-5'"),
        ([*search, "--confidence", "nan"], "--confidence"),
        (["search", "--max-drop", "1%"], "give a MODEL"),
        (["search", "--request", "nofile.json"], "cannot read --request nofile.json"),
        (["search", "--request", "bad_plan.json"], "not a trt-mpq search request"),
        (["search", "--request", "bad_plan.json", "--repeats", "5"],
         "only --out and --resume go with it, not --repeats"),
        (["search", digits_model, "--task", TASK], "--max-drop is required"),
        ([*search, "--threads", "2", "--backend", "tensorrt-rtx"],
         "--threads applies to ort-cpu, not tensorrt-rtx"),
        ([*search[:6], "--strategy", "greedy", "--ilp-steps", "2"],
         "--ilp-steps applies to ilp, not --strategy greedy"),
        (["evaluate", digits_model, "--task", TASK, "--plan", "bad_plan.json"],
         "unknown precision"),
        (["evaluate", digits_model, "--task", TASK, "--plan", "plan_unknown.json"],
         "does not have"),
        (["evaluate", digits_model, "--task", TASK, "--plan", "nofile.json"], "cannot read"),
        (["report", "nowhere"], "no result.json"),
    ]
    for args, match in cases:
        _bad(args, match, capsys)


def test_existing_output_folder_needs_resume(searched, digits_model, env):
    out, _ = searched
    r = cli("search", digits_model, "--task", TASK, "--max-drop", "3%", "--out", out, *FAST,
            env=env)
    assert r.returncode == 2 and "--resume" in r.stderr


def test_budget_not_met_exits_1_and_still_writes_the_frontier(digits_model, env):
    r = cli("search", digits_model, "--task", TASK, "--max-drop", "0.0001", "--out", "strict",
            "--precision", "int4w", "--confidence", "off",  # point estimates: 0.0001 on 469
            *FAST, env=env)  # int4w applies to no group: all int8
    res = json.loads(Path("strict/result.json").read_text())
    assert r.returncode == (0 if res["budget_met"] else 1), r.stderr
    assert "Traceback" not in r.stderr
    assert Path("strict/pareto.csv").is_file() and Path("strict/report.md").is_file()
    if r.returncode == 1:  # test_user_mistakes.py pins exit 1 with a budget no plan can meet
        assert res["best"] is None and not Path("strict/plan.json").exists()
        assert "Budget not met" in Path("strict/report.md").read_text()


# -- interruption and resume -------------------------------------------------------------------
def _evaluations(store: Path) -> int:
    try:
        with sqlite3.connect(store, timeout=5) as db:
            return db.execute("SELECT COUNT(*) FROM evaluations").fetchone()[0]
    except sqlite3.OperationalError:
        return 0


def _interruptible() -> None:  # pragma: no cover - runs in the child before exec
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def _start_slow_search(digits_model, out, env):
    """A search whose every metric call sleeps 0.5 s, so that it is surely still going when the
    test stops it, started with SIGINT at its default as in a terminal: a suite run in the
    background of a non-interactive shell inherits SIGINT ignored, and so would the search."""
    from digits_task import SLOW_ENV

    args = ["search", digits_model, "--task", TASK, "--max-drop", "3%", "--out", out,
            "--repeats", "400", "--warmup", "3", "--sweep", "4", "--no-progress"]
    return subprocess.Popen([sys.executable, "-m", "trt_mpq", *map(str, args)],
                            env=dict(env, **{SLOW_ENV: "0.5"}), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, preexec_fn=_interruptible), args


def _wait_for(store, n, proc, timeout=240):
    t0 = time.time()
    while _evaluations(store) < n:
        assert proc.poll() is None, proc.communicate()
        assert time.time() - t0 < timeout, "search too slow to reach the kill point"
        time.sleep(0.2)


def test_killed_search_resumes_without_repeating_an_evaluation(digits_model, env):
    out = Path("killed")
    proc, args = _start_slow_search(digits_model, out, env)
    _wait_for(out / "evaluations.sqlite", 3, proc)
    proc.kill()  # SIGKILL: no chance to clean up
    proc.wait()
    done_before = _evaluations(out / "evaluations.sqlite")
    assert not (out / "result.json").exists()

    r = cli(*args, "--resume", env=env)
    assert r.returncode == 0, r.stderr
    res = json.loads((out / "result.json").read_text())
    assert res["cached_evaluations"] == done_before
    assert res["fresh_evaluations"] == res["evaluations"] - done_before
    with sqlite3.connect(out / "evaluations.sqlite") as db:
        digests = [r[0] for r in db.execute("SELECT plan_digest FROM evaluations")]
    assert len(digests) == len(set(digests)) == res["evaluations"]

    # resuming a finished search from its request file measures nothing again and gives the
    # same answer (request.json holds every setting of the search)
    (out / "result.json").unlink()
    r = cli("search", "--request", out / "request.json", "--resume", env=env)
    assert r.returncode == 0, r.stderr
    again = json.loads((out / "result.json").read_text())
    assert again["fresh_evaluations"] == 0
    assert again["best"]["plan_digest"] == res["best"]["plan_digest"]


def test_interrupt_exits_130_and_says_how_to_resume(digits_model, env):
    out = Path("interrupted")
    proc, _ = _start_slow_search(digits_model, out, env)
    _wait_for(out / "evaluations.sqlite", 1, proc)
    proc.send_signal(signal.SIGINT)
    stdout, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 130, stderr
    assert f"--request {out / 'request.json'} --resume" in stderr and "Traceback" not in stderr
    assert json.loads((out / "request.json").read_text())["output"]["out"] == str(out)


def test_main_without_command_prints_help(capsys):
    assert main([]) == 2


# -- issue 3: sensitivities, orders and strategies from the command line ----------------------
def test_sensitivity_command_scores_orders_and_ranks(digits_model, env, tmp_path):
    import digits_task

    env = dict(env, **{digits_task.TWIN_ENV: str(digits_model.with_suffix(".pt"))})
    r = cli("sensitivity", digits_model, "--task", TASK, "--metrics",
            "noise,sqnr,accuracy,fisher,hessian,hessian+deps", "--gains", "--out", "sens",
            "--no-progress", env=env)
    assert r.returncode == 0, r.stderr
    report = json.loads(Path("sens/sensitivity.json").read_text())
    names = report["groups"]
    for m in ("noise", "sqnr", "accuracy", "fisher", "hessian", "hessian+deps"):
        res = report["metrics"][m]
        assert sorted(res["order"]) == sorted(names) and res["passes"] >= 1
        assert res["seconds"] >= 0
        assert m in report["order_quality"]
    deps = report["metrics"]["hessian+deps"]["extra"]
    assert len(deps["interactions"]) == len(names) - 1  # neighbours=1: consecutive pairs
    assert set(report["latency_gains"]["gain_ms"]) == set(names)
    assert set(report["latency_aware_orders"]) == set(report["metrics"])
    assert Path("sens/sensitivity.png").stat().st_size > 0


@pytest.mark.parametrize("extra", [["--strategy", "greedy", "--greedy-candidates", "2"],
                                   ["--strategy", "ilp", "--ilp-steps", "3"],
                                   ["--order", "latency-aware", "--sensitivity", "sqnr"]])
def test_search_strategies_and_orders(digits_model, env, extra):
    out = Path("strategy")
    flags = MEASURE if "--strategy" in extra else FAST  # --sweep belongs to bisection/frontier
    r = cli("search", digits_model, "--task", TASK, "--max-drop", "3%", "--out", out, *flags,
            *extra, env=env)
    res = json.loads((out / "result.json").read_text())
    assert r.returncode == (0 if res["budget_met"] else 1), r.stderr
    assert "Traceback" not in r.stderr
    labels = [e["label"] for e in json.loads((out / "pareto.json").read_text())["evaluations"]]
    if "greedy" in extra:
        assert any(label.startswith("greedy step") for label in labels)
    if "ilp" in extra:
        assert any(label.startswith("ilp") for label in labels)
        assert res["latency_gains"] is not None
    if "latency-aware" in extra:
        assert res["sensitivity"]["ordering"] == "latency-aware"
        assert res["latency_gains"]["base_ms"]


def test_the_deployable_model_holds_only_what_it_runs(searched, digits_model, capfd):
    """Replaced float weights leave the artifact: no initializer that no node reads, smaller
    than the FP32 model, and ONNX Runtime loads it without a warning."""
    import onnx
    import onnxruntime as ort

    out, _ = searched
    model = onnx.load(str(out / "model.onnx"))
    read = {i for n in model.graph.node for i in n.input} | {o.name for o in model.graph.output}
    assert [i.name for i in model.graph.initializer if i.name not in read] == []
    assert (out / "model.onnx").stat().st_size < Path(digits_model).stat().st_size
    capfd.readouterr()
    options = ort.SessionOptions()
    options.log_severity_level = 2  # warnings and errors (info lists ORT's own fusions)
    ort.InferenceSession(str(out / "model.onnx"), options, providers=["CPUExecutionProvider"])
    err = capfd.readouterr().err
    assert "not used" not in err and "Removing initializer" not in err, err


def test_the_answer_carries_its_paired_holdout_bound(searched):
    out, r = searched
    res = json.loads((out / "result.json").read_text())
    best = res["best"]
    assert best["confidence"] == 0.95 and best["holdout_n"] == res["task"]["splits"]["holdout"]
    bound = best["holdout_bound"]
    assert bound["method"].startswith("discordant pairs")  # accuracy: the exact bound
    assert best["holdout_drop_upper"] >= best["holdout_drop"] - 1e-12
    n = best["holdout_n"]
    assert best["holdout_drop"] == pytest.approx(
        (bound["discordant_worse"] - bound["discordant_better"]) / n)
    report = (out / "report.md").read_text()
    tests = res["holdout_tests"]
    assert tests["judged"] == len(res["tried_on_holdout"]) >= 1 and tests["levels"][0] == 0.975
    level = tests["levels"][tests["judged"] - 1]  # the answer is the last plan judged
    assert best["test_level"] == level
    assert f"upper bound certified at 95% (its test at {100 * level:.4g}%; paired" in report
    assert "at 95% confidence" in r.stdout
    lo, hi = best["latency_ratio_ci"]
    assert lo <= best["latency_ratio"] <= hi and "95% CI" in r.stdout
    rows = list(csv.DictReader((out / "pareto.csv").open()))
    timed = [row for row in rows if row["latency_ratio"]]
    assert timed and all(float(row["latency_ratio_lo"]) <= float(row["latency_ratio"])
                         <= float(row["latency_ratio_hi"]) for row in timed)


def test_when_the_holdout_refuses_every_answer_the_search_measures_its_safer_plans(
        digits_model, env, monkeypatch, capsys):
    """`--strategy boundary` ends at an accuracy boundary (the all-lowered plan out of budget)
    without measuring its fallback plans; they are measured only when the holdout refuses every
    answer. Here a holdout that refuses every plan the search found first: the safer plans are
    measured after it, tried on the holdout, and one of them is the answer."""
    import dataclasses

    from trt_mpq.pipeline import answer
    from trt_mpq.pipeline import search as search_module

    real = answer.confirm
    judged = []

    def refusing(ws, backend, evaluator, ev, *args, **kwargs):
        conf = real(ws, backend, evaluator, ev, *args, **kwargs)
        judged.append(ev.label)
        if ev.label.startswith("boundary fallback"):
            return conf
        return dataclasses.replace(conf, in_budget=False, artifact="")

    args = ["search", str(digits_model), "--task", TASK, "--max-drop", "0.2%", "--confidence",
            "off", "--strategy", "boundary", *MEASURE]
    assert main([*args, "--out", "agree"]) == 0  # the holdout agrees: no fallback measured
    labels = [e["label"]
              for e in json.loads(Path("agree/pareto.json").read_text())["evaluations"]]
    assert any(label.startswith("boundary t=") for label in labels)
    assert not any("fallback" in label for label in labels)

    monkeypatch.setattr(search_module, "confirm", refusing)
    code = main([*args, "--out", "refused"])
    err = capsys.readouterr().err
    assert "the holdout refused every answer" in err
    res = json.loads(Path("refused/result.json").read_text())
    labels = [e["label"]
              for e in json.loads(Path("refused/pareto.json").read_text())["evaluations"]]
    fallbacks = [label for label in labels if label.startswith("boundary fallback")]
    refused_first = [label for label in judged if not label.startswith("boundary fallback")]
    tried_after = judged[len(refused_first):]  # every first-round plan, then the fallbacks
    assert refused_first and fallbacks and tried_after
    assert all(label in fallbacks for label in tried_after)
    assert code == 0 and res["budget_met"]
    assert res["best"]["label"].startswith("boundary fallback")
