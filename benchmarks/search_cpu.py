"""CPU search benchmark: runs `trt-mpq search` on zoo models (ONNX Runtime, CPU) and writes a
table to benchmarks/RESULTS.md (between the markers of its "CPU search" section).

    python benchmarks/search_cpu.py                       # every model below
    python benchmarks/search_cpu.py --models resnet-digits minilm-sentiment

Per model: baseline latency, the uniform low-precision plan's latency ratio and drop (the
bisection's first evaluation: every group lowered), the searched plan's latency ratio and
holdout drop, evaluations, wall time, and materialization time per plan. Every ratio is measured
against the baseline in the same process, interleaved. Runs go to benchmarks/runs/ (ignored).
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
#: the built-in models with trained weights (the README's table); the random-weight latency
#: studies (resnet50, mobilenet_v2, bert-base) run when named with --models
MODELS = ["resnet-digits", "mobilenetv2-digits", "minilm-sentiment", "efficientnet-lite0"]


def run(model: str, max_drop: str, root: Path, extra: list[str], reuse: bool) -> dict:
    previous = sorted(root.glob(f"{model}-2*/result.json")) if reuse else []
    if previous:
        out = previous[-1].parent
        result = json.loads((out / "result.json").read_text())
        cmd = ["trt-mpq", *result["command"]]
    else:
        out = root / f"{model}-{time.strftime('%Y%m%d-%H%M%S')}"
        cmd = [sys.executable, "-m", "trt_mpq", "search", model, "--backend", "ort-cpu",
               "--max-drop", max_drop, "--out", str(out), "--no-progress", *extra]
        proc = subprocess.run(cmd, capture_output=True, text=True)
        if proc.returncode not in (0, 1):
            print(proc.stderr, file=sys.stderr)
            return {"model": model, "error": proc.stderr.strip().splitlines()[-1]
                    if proc.stderr else f"exit {proc.returncode}", "command": " ".join(cmd)}
        result = json.loads((out / "result.json").read_text())
        cmd = ["trt-mpq", *cmd[3:]]
    evals = json.loads((out / "pareto.json").read_text())["evaluations"]
    uniform = next((e for e in evals if e["label"].startswith("bisection k=")
                    and e["label"].split("=")[1].split("/")[0] == e["label"].split("/")[1]), None)
    mats = [e["materialize_s"] for e in evals if e["materialize_s"]]
    rel = lambda a: str(Path(a).resolve().relative_to(Path.cwd().resolve())) \
        if Path(a).resolve().is_relative_to(Path.cwd().resolve()) else a  # noqa: E731
    return {"model": model, "result": result, "uniform": uniform,
            "materialize_median_s": statistics.median(mats) if mats else None,
            "materialize_max_s": max(mats) if mats else None, "out": str(out),
            "command": " ".join(rel(a) if "/" in a else a for a in cmd)}


def fmt_row(r: dict) -> str:
    if "error" in r:
        return f"| {r['model']} | error: {r['error']} |" + " |" * 10
    res, u = r["result"], r["uniform"]
    best = res["best"]
    weights = res["weights"] + (" (latency only)" if res["weights"] == "random" else "")
    groups = len(res["low_precisions"])
    u_txt = (f"{u['latency_ratio']:.3f} / {100 * u['rel_drop']:+.2f}%"
             if u and u["status"] == "ok" else (u["status"] if u else "n/a"))
    metric = res["task"]["metric"]
    if best:
        ci = best.get("latency_ratio_ci") or [float("nan")] * 2
        s_txt = (f"**{best['latency_ratio']:.3f}** ({ci[0]:.3f}-{ci[1]:.3f}) / "
                 f"{100 * best['holdout_rel_drop']:+.2f}% (<= "
                 f"{100 * best['holdout_rel_drop_upper']:+.2f}%, {best['holdout_samples_used']:,}"
                 f" samples)")
        mix = ", ".join(f"{k} {v}" for k, v in sorted(best["precision_counts"].items()))
        mix += "".join(f"; {k}={v}" for k, v in sorted(best.get("runtime_options", {}).items()))
    else:
        s_txt, mix = "budget not met", "-"
    setup = res["phases"].get("setup_s", 0.0)
    return (f"| {res['model']} | {weights} | {metric} | {groups} | "
            f"{res['baseline']['latency_ms']:.2f} | "
            f"{u_txt} | {s_txt} | {mix} | {res['evaluations']} | "
            f"{res['wall_s'] - setup:.0f} (+{setup:.0f}) | "
            f"{r['materialize_median_s']:.2f} / {r['materialize_max_s']:.2f} |")


def table(rows: list[dict], max_drop: str) -> str:
    import onnxruntime
    from results_md import commit

    from trt_mpq.report import machine_info

    machine = machine_info()
    head = [
        f"Budget `--max-drop {max_drop}` (relative to the FP32 baseline), backend `ort-cpu` "
        f"(ONNX Runtime {onnxruntime.__version__}, CPU provider), latency at batch 1 (the task's "
        f"latency batch), median of interleaved runs. Machine: {machine['cpu']}, "
        f"{machine['cores']} cores; run on {time.strftime('%Y-%m-%d')}, commit {commit()}, "
        "with `python benchmarks/search_cpu.py`.",
        "",
        "Ratios are latency / baseline latency measured side by side in one process; "
        "*uniform low* lowers every group (int8-dynamic for MatMul, int8 for Conv/Gemm), "
        "measured on the search split; *searched* is the answer, re-measured and checked on the "
        "holdout split. Wall time is the search itself; *setup* (in brackets) is model export, "
        "zoo build on first use, preparation and calibration. Random-weight rows are latency "
        "studies: their metric is agreement with the FP32 model's top-1, which a random "
        "network's nearly tied logits make fragile.",
        "",
        "*judged by*: the metric the holdout certifies (a task falls back to its declared "
        "fallback, e.g. agreement with FP32 on its fidelity split, where its labelled holdout "
        "cannot certify the budget; result.json `task.metric_choice`). The holdout drop is "
        "followed by its certified upper bound (95% for the answer, over every plan the holdout "
        "judged) and the samples it read.",
        "",
        "| model | weights | judged by | groups | FP32 latency (ms) | uniform low: ratio / drop | "
        "searched: ratio (95% CI) / holdout drop (bound) | searched precisions | evaluations | "
        "wall s (+ setup) | materialize s/plan (median / max) |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    cmds = ["", "Commands:", ""] + [f"- `{r['command']}`" for r in rows]
    return "\n".join(head + [fmt_row(r) for r in rows] + boundary_table(rows) + cmds)


def boundary_table(rows: list[dict]) -> list[str]:
    """The answers' precision boundaries (result.json best.boundaries): how many, the latency
    model's estimate of their cost, and ONNX Runtime's profiled conversion kernels."""
    lines = ["", "The answers' precision boundaries (report.md, result.json `best.boundaries`): "
             "where a lowered region meets a float one, the latency model's estimated cost of "
             "all of them (share of FP32's latency), and the conversion kernels ONNX Runtime's "
             "profiler timed there (ms per run, against the answer's own latency).", "",
             "| model | boundaries | estimated cost | conversion kernels: ms per run "
             "(of the answer's ms) |", "|---|---|---|---|"]
    for r in rows:
        best = "error" not in r and r["result"].get("best")
        acc = (best or {}).get("boundaries")
        if not acc:
            continue
        est = acc.get("estimated_total")
        meas = acc.get("measured") or {}
        ms = meas.get("boundaries_ms")
        lines.append(f"| {r['model']} | {acc.get('count', 0)} | "
                     + (f"{100 * est:.1f}%" if est is not None else "not fitted") + " | "
                     + (f"{ms:.3f} ({best['latency_ms']:.2f})" if ms is not None
                        else meas.get("reason") or "-") + " |")
    return lines if len(lines) > 6 else []


def write_results(text: str) -> Path:
    from results_md import write_section

    return write_section("search_cpu", "CPU search (ONNX Runtime)", text)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", nargs="+", default=MODELS)
    ap.add_argument("--max-drop", default="1%")
    ap.add_argument("--runs", type=Path, default=HERE / "runs")
    ap.add_argument("--no-write", action="store_true", help="print the table only")
    ap.add_argument("--reuse", action="store_true",
                    help="tabulate the newest earlier run of each model instead of searching again")
    ap.add_argument("extra", nargs="*", help="more `trt-mpq search` options, after --")
    args = ap.parse_args()
    rows = []
    for m in args.models:
        print(f"== {m}", file=sys.stderr, flush=True)
        rows.append(run(m, args.max_drop, args.runs, args.extra, args.reuse))
        print(fmt_row(rows[-1]), flush=True)
    text = table(rows, args.max_drop)
    print(text)
    if not args.no_write:
        print(f"wrote {write_results(text)}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
