"""Which strategy should `trt-mpq search` run by default? Runs the CLI search once per strategy
(today's default `bisection`, and `boundary`) on each case, one after another, then re-times
both answers, the uniform plan (every group at its default low precision) and FP32 together in
one interleaved measurement (each turn settled, until every ratio's 95% interval is within
+-1%, cap 120 s), so the answers are compared in one run, not across runs' timings. Prints a
table (and writes benchmarks/runs/default-choice-<date>.json) for the "Default choice" section of
benchmarks/RESULTS.md.

    python benchmarks/default_choice.py                            # every case below
    python benchmarks/default_choice.py --cases resnet-digits:1%:agreement

A case is MODEL:BUDGET[:METRIC] (METRIC: the search's --metric, e.g. agreement).
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).parent
CASES = ["resnet-digits:1%:agreement", "resnet-digits:0.1%:agreement",
         "mobilenetv2-digits:1%:agreement", "mobilenetv2-digits:0.1%:agreement",
         "minilm-sentiment:1%", "efficientnet-lite0:1%"]
STRATEGIES = ["bisection", "boundary"]


def search(model: str, budget: str, metric: str | None, strategy: str, out: Path) -> dict:
    cmd = [sys.executable, "-m", "trt_mpq", "search", model, "--backend", "ort-cpu",
           "--max-drop", budget, "--strategy", strategy, "--out", str(out), "--no-progress",
           *(["--metric", metric] if metric else [])]
    t = time.perf_counter()
    proc = subprocess.run(cmd, check=False, capture_output=True, text=True)
    wall = time.perf_counter() - t
    line = "trt-mpq " + " ".join(cmd[3:])
    if proc.returncode not in (0, 1):  # 1: no plan met the budget (a result all the same)
        return {"command": line, "error": (proc.stderr.strip().splitlines() or ["?"])[-1]}
    res = json.loads((out / "result.json").read_text())
    best = res.get("best")
    return {"command": line, "wall_s": wall, "evaluations": res["evaluations"],
            "budget_met": res["budget_met"], "out": str(out),
            "search_ratio": best and best["latency_ratio"],
            "holdout_drop": best and best.get("holdout_drop"),
            "holdout_upper": best and best.get("holdout_drop_upper"),
            "certified": bool(best and best.get("certified")),
            "counts": best and best["precision_counts"],
            "options": (best or {}).get("runtime_options") or {}}


def joint_timing(model: str, metric: str | None, runs: list[dict], cache: Path | None) -> dict:
    """Time every run's deployed model.onnx, the uniform plan and FP32, interleaved; sets each
    run's "ratio" and "ci" and returns the uniform plan's."""
    from trt_mpq.backends import get_backend
    from trt_mpq.backends.base import Artifact
    from trt_mpq.calib import CalibConfig
    from trt_mpq.measure import MeasureConfig
    from trt_mpq.measure.latency import ratio_interval, time_until_precise
    from trt_mpq.pipeline.search import low_precisions
    from trt_mpq.pipeline.workspace import Workspace
    from trt_mpq.plan import Plan
    from trt_mpq.qdq import BASELINE, materialize
    from trt_mpq.task import default_cache_dir

    ws = Workspace.open(model, None, cache or default_cache_dir(), progress=False, metric=metric)
    backend = get_backend("ort-cpu")
    # FP32 as the search times it (the baseline plan materialized and built by the backend),
    # and the uniform plan (every group at its default low precision) as a reference
    ranges = ws.calibrate(CalibConfig())
    work = Path(runs[0]["out"]).parent / f".joint-{model}"

    def built(plan: Plan, name: str) -> Artifact:
        return backend.build(materialize(ws.model, ws.groups, plan, ranges, backend.dialect),
                             work / name, ws.groups, ws.task.latency_feed(),
                             max_batch=ws.task.eval_batch)

    uniform = built(Plan.of(low_precisions(ws, backend, None)), "uniform")
    fp32 = built(Plan.uniform(ws.group_names(), BASELINE[backend.dialect]), "fp32")
    with_answer = [r for r in runs if r.get("counts")]
    arts = [Artifact(Path(r["out"]) / "model.onnx", "ort-cpu", 0.0, options=r["options"])
            for r in with_answer]
    arts += [uniform, fp32]
    runners = [backend.open(a).__enter__() for a in arts]
    try:
        times, precision = time_until_precise(runners, ws.task.latency_feed(),
                                              MeasureConfig(repeats=100, min_repeats=15),
                                              0.01, 120.0)
    finally:
        for r in runners:
            r.close()
    reference = {"strategy": "uniform"}
    for r, t in zip([*with_answer, reference], times):
        r["ci"] = list(ratio_interval(t, times[-1]))
        r["ratio"] = statistics.median(t) / statistics.median(times[-1])
        r["joint_rounds"] = precision.rounds
    return reference


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--cases", nargs="+", default=CASES)
    ap.add_argument("--strategies", nargs="+", default=STRATEGIES)
    ap.add_argument("--root", type=Path, default=HERE / "runs")
    ap.add_argument("--cache", type=Path, default=None)
    args = ap.parse_args()
    stamp = time.strftime("%Y%m%d-%H%M%S")
    rows = []
    for case in args.cases:
        model, budget, *rest = case.split(":")
        metric = rest[0] if rest else None
        runs = []
        for s in args.strategies:
            out = args.root / f"default-{stamp}" / f"{model}-{budget.rstrip('%')}-{s}"
            runs.append({"strategy": s, **search(model, budget, metric, s, out)})
        uniform = joint_timing(model, metric, runs, args.cache)
        rows.append({"case": case, "runs": runs, "uniform": uniform})
        print(json.dumps(rows[-1]), file=sys.stderr, flush=True)
    (args.root / f"default-choice-{stamp}.json").write_text(json.dumps(rows, indent=1))
    print("| case | uniform (joint) | " + " | ".join(
        f"{s}: joint ratio (95% CI) / holdout drop / evals / wall s" for s in args.strategies)
        + " |")
    print("|---|---|" + "---|" * len(args.strategies))
    for row in rows:
        cells = []
        for r in row["runs"]:
            if "error" in r:
                cells.append(f"error: {r['error'][:60]}")
            elif not r.get("counts"):
                cells.append(f"no answer / - / {r['evaluations']} / {r['wall_s']:.0f}")
            else:
                lo, hi = r["ci"]
                cells.append(f"x{r['ratio']:.3f} ({lo:.3f}-{hi:.3f}) / "
                             f"{100 * r['holdout_drop']:+.2f}% / {r['evaluations']} / "
                             f"{r['wall_s']:.0f}")
        u = row["uniform"]
        print(f"| {row['case']} | x{u['ratio']:.3f} ({u['ci'][0]:.3f}-{u['ci'][1]:.3f}) | "
              + " | ".join(cells) + " |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
