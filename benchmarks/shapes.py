"""Does the answer change with the shapes a model is deployed at? For each model, runs
`trt-mpq search` once per single shape and once on the mix of them (`--shapes`, equal
weights), then rebuilds every answer (plan.json and its runtime options) and FP32 from the
mix's workspace and times them all together at every shape of the mix, interleaved (each shape
until every ratio's 95% interval is within +-2%, or the cap), so the answers are compared in
one measurement, not across the searches' timings. Prints a markdown table with its provenance
(date, commit, machine, load, commands) and writes benchmarks/runs/shapes-<date>.json.

    python benchmarks/shapes.py                                   # both models below
    python benchmarks/shapes.py --models efficientnet-lite0 --repeats 20 --cap 30

The search's own flags can be added after --: `python benchmarks/shapes.py -- --sweep 4`.
An interrupted run goes on with `--resume benchmarks/runs/shapes-<date>` (same flags): the
searches that wrote their result.json are read back, the others run.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shlex
import statistics
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).parent
#: model -> (the single shapes, the mix); minilm-sentiment's sequence axis is free (its task)
CASES = {
    "efficientnet-lite0": (["batch=1", "batch=8", "batch=32"], "batch=1,8,32"),
    "minilm-sentiment": (["input_ids=1x32", "input_ids=1x128", "input_ids=8x64"],
                         "input_ids=1x32,1x64,1x128,8x64"),
}


def search(model: str, shapes: str, budget: str, out: Path, extra: list[str]) -> dict:
    cmd = [sys.executable, "-m", "trt_mpq", "search", model, "--backend", "ort-cpu",
           "--max-drop", budget, "--shapes", shapes, "--out", str(out), "--no-progress", *extra]
    line = "trt-mpq " + shlex.join(cmd[3:])
    if (out / "result.json").is_file():  # --resume: this search finished in an earlier run
        return read_search(shapes, line, out)
    t = time.perf_counter()
    proc = subprocess.run(cmd, check=False, capture_output=True, text=True)
    if proc.returncode not in (0, 1):  # 1: no plan met the budget (a result all the same)
        return {"shapes": shapes, "command": line, "wall_s": time.perf_counter() - t,
                "out": str(out), "error": (proc.stderr.strip().splitlines() or ["?"])[-1]}
    return read_search(shapes, line, out)


def read_search(shapes: str, line: str, out: Path) -> dict:
    res = json.loads((out / "result.json").read_text())
    best = res.get("best")
    return {"shapes": shapes, "command": line, "wall_s": res["wall_s"], "out": str(out),
            "evaluations": res["evaluations"], "budget_met": res["budget_met"],
            "search_ratio": best and best["latency_ratio"],
            "holdout_drop": best and best.get("holdout_rel_drop"),
            "counts": best and best["precision_counts"],
            "options": (best or {}).get("runtime_options") or {},
            "plan": best and json.loads((out / "plan.json").read_text())}


def joint_timing(model: str, mix: str, runs: list[dict], repeats: int, cap: float) -> dict:
    """Every run's answer and FP32, built from the mix's workspace and timed together at
    each shape of the mix; sets each run's per-shape ratios and returns FP32's latencies."""
    from trt_mpq.backends import get_backend
    from trt_mpq.calib import CalibConfig
    from trt_mpq.measure import MeasureConfig
    from trt_mpq.measure.latency import ratio_interval, time_until_precise
    from trt_mpq.pipeline.workspace import Workspace
    from trt_mpq.plan import Plan
    from trt_mpq.qdq import BASELINE, materialize
    from trt_mpq.shapes import ShapeSpec
    from trt_mpq.task import default_cache_dir

    ws = Workspace.open(model, None, default_cache_dir(), progress=False)
    ws = ws.at_shapes(ShapeSpec.parse(mix))
    backend = get_backend("ort-cpu")
    ranges = ws.calibrate(CalibConfig())
    work = Path(runs[0]["out"]).parent / f".joint-{model}"
    plans: dict[str, Plan] = {}  # one build per distinct plan (with its options)
    for r in runs:
        if r.get("plan"):
            plan = Plan.from_json_dict(r["plan"]).with_options(r["options"])
            r["digest"] = plan.digest
            plans.setdefault(plan.digest, plan)
    fp32 = Plan.uniform(ws.group_names(), BASELINE[backend.dialect])
    arts = []
    for digest, plan in [*plans.items(), ("fp32", fp32)]:
        graph = materialize(ws.model, ws.groups, plan, ranges, backend.dialect)
        arts.append(backend.build(graph, work / digest, ws.groups, ws.latency_feed(),
                                  max_batch=ws.task.eval_batch, options=dict(plan.options),
                                  **ws.shape_kwargs()))
    runners = [backend.open(a).__enter__() for a in arts]
    measure = MeasureConfig(repeats=repeats, min_repeats=min(15, repeats))
    ratios: dict[str, dict[str, list]] = {d: {} for d in plans}
    base_ms = {}
    try:
        for shape in ws.shape_set:
            times, precision = time_until_precise(runners, shape.feed, measure, 0.02, cap)
            base_ms[shape.label] = 1e3 * statistics.median(times[-1])
            for d, t in zip(plans, times):
                med = statistics.median(t) / statistics.median(times[-1])
                ratios[d][shape.label] = [med, *ratio_interval(t, times[-1]),
                                          precision.rounds]
    finally:
        for r in runners:
            r.close()
    for r in runs:
        if r.get("digest"):
            r["joint"] = ratios[r["digest"]]
            per = [v[0] for v in r["joint"].values()]
            r["joint_mean"] = sum(per) / len(per)
    return {"fp32_ms": base_ms, "shapes": [s.label for s in ws.shape_set]}


def load() -> str:
    try:
        return "/".join(f"{x:.1f}" for x in os.getloadavg())
    except OSError:
        return "?"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--models", nargs="+", default=list(CASES), choices=list(CASES))
    ap.add_argument("--max-drop", default="1%")
    ap.add_argument("--repeats", type=int, default=30, help="timed runs per plan and shape")
    ap.add_argument("--cap", type=float, default=60.0, help="joint timing: seconds per shape")
    ap.add_argument("--root", type=Path, default=HERE / "runs")
    ap.add_argument("--resume", type=Path, metavar="DIR",
                    help="an earlier run's folder (runs/shapes-<date>): its finished searches "
                         "are read, not rerun (same flags); the joint timing is always afresh")
    ap.add_argument("extra", nargs="*", help="more `trt-mpq search` flags (after --)")
    args = ap.parse_args()
    stamp = time.strftime("%Y%m%d-%H%M%S")
    run_dir = args.resume or args.root / f"shapes-{stamp}"
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True,
                            text=True, cwd=HERE).stdout.strip()
    from trt_mpq.report import machine_info, versions

    machine, started, load0 = machine_info(), time.strftime("%Y-%m-%d %H:%M"), load()
    extra = ["--repeats", str(args.repeats), *args.extra]
    tables = []
    for model in args.models:
        singles, mix = CASES[model]
        runs = []
        for shapes in [*singles, mix]:
            out = run_dir / f"{model}-{shapes.replace(',', '_')}"
            runs.append(search(model, shapes, args.max_drop, out, extra))
            print(json.dumps({k: v for k, v in runs[-1].items() if k != "plan"}),
                  file=sys.stderr, flush=True)
        joint = joint_timing(model, mix, runs, args.repeats, args.cap)
        tables.append({"model": model, "mix": mix, "runs": runs, **joint})
    (args.root / f"shapes-{stamp}.json").write_text(json.dumps(tables, indent=1))
    ort = versions().get("onnxruntime", "?")
    print(f"{started} · commit {commit} · {machine['cpu']}, {machine['cores']} cores, ONNX "
          f"Runtime {ort}, CPU · load average (1/5/15 min) {load0} at the start, {load()} at "
          f"the end · `python benchmarks/shapes.py --models {' '.join(args.models)} "
          f"--repeats {args.repeats} --cap {args.cap:g}"
          + (f" --resume {args.resume}" if args.resume else "")
          + (f" -- {shlex.join(args.extra)}" if args.extra else "") + "`")
    for t in tables:
        shapes = t["shapes"]
        print(f"\n**{t['model']}**, budget {args.max_drop}; joint timing of every answer at "
              f"each shape of the mix ({t['mix']}); FP32 there: "
              + ", ".join(f"{s} {t['fp32_ms'][s]:.2f} ms" for s in shapes) + "\n")
        print("| searched at | precisions (options) | search: ratio / holdout drop / evals "
              "/ wall s | " + " | ".join(f"joint x at {s}" for s in shapes)
              + " | joint mean |")
        print("|---|---|---|" + "---|" * (len(shapes) + 1))
        for r in t["runs"]:
            if "error" in r:
                print(f"| {r['shapes']} | error: {r['error'][:80]} |" + " |" * (len(shapes) + 2))
                continue
            if not r.get("counts"):
                print(f"| {r['shapes']} | no answer | - / - / {r['evaluations']} / "
                      f"{r['wall_s']:.0f} |" + " - |" * (len(shapes) + 1))
                continue
            counts = ", ".join(f"{k} {v}" for k, v in sorted(r["counts"].items()))
            opts = ";".join(f"{k}={v}" for k, v in sorted(r["options"].items()))
            cells = [f"{v[0]:.3f} ({v[1]:.3f}-{v[2]:.3f})" for v in
                     (r["joint"][s] for s in shapes)]
            print(f"| {r['shapes']} | {counts}{f' ({opts})' if opts else ''} | "
                  f"x{r['search_ratio']:.3f} / {100 * r['holdout_drop']:+.2f}% / "
                  f"{r['evaluations']} / {r['wall_s']:.0f} | " + " | ".join(cells)
                  + f" | **{r['joint_mean']:.3f}** |")
    print("\nCommands: " + "; ".join(f"`{r['command']}`" for t in tables for r in t["runs"]))
    print(f"\nPython {platform.python_version()}; runs in {run_dir}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
