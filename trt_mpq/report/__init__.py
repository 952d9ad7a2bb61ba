"""Outputs of a search: result.json, plan.json, pareto.{csv,json,png}, report.md, config.json.

Files are written whole (temporary file, then rename), so a reader never sees half a file.
`regenerate(out_dir)` rebuilds the human-facing files (report.md, pareto.csv/png) from
result.json and pareto.json alone.
"""

from __future__ import annotations

import csv
import io
import json
import os
import platform
from collections.abc import Mapping, Sequence
from pathlib import Path

from trt_mpq.errors import TrtMpqError
from trt_mpq.plan import Precision
from trt_mpq.report.boundaries import boundary_lines
from trt_mpq.report.files import file_mode, write_json, write_text
from trt_mpq.report.plots import plot_orders, plot_pareto
from trt_mpq.report.shapes import add_shape_columns, shape_lines

PRECISION_COLUMNS = tuple(p.value for p in Precision)


def machine_info() -> dict:
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:
        cores = os.cpu_count()
    return {"cpu": cpu, "cores": cores, "platform": platform.platform(),
            "python": platform.python_version()}


def versions() -> dict:
    import importlib.metadata as md

    out = {}
    for pkg in ("trt-mpq", "onnx", "onnxruntime", "numpy", "torch", "transformers", "tensorrt",
                "tensorrt-rtx"):
        try:
            out[pkg] = md.version(pkg)
        except md.PackageNotFoundError:
            continue
    return out


# -- pareto ------------------------------------------------------------------------------------
def pareto_rows(evaluations: Sequence[Mapping]) -> list[dict]:
    """Flat rows for pareto.csv from evaluation dicts (as in pareto.json)."""
    rows = []
    for e in evaluations:
        lat = e.get("latency") or {}
        base = e.get("baseline_latency") or {}
        row = {
            "plan_digest": e["plan_digest"], "label": e.get("label", ""), "status": e["status"],
            "metric": e.get("metric"), "drop": e.get("drop"), "rel_drop": e.get("rel_drop"),
            "drop_upper": e.get("drop_upper"), "samples": e.get("samples"),
            "latency_ms": lat.get("median_ms"), "latency_p90_ms": lat.get("p90_ms"),
            "baseline_latency_ms": base.get("median_ms"), "latency_ratio": e.get("latency_ratio"),
            "latency_ratio_lo": (e.get("latency_ratio_ci") or [None, None])[0],
            "latency_ratio_hi": (e.get("latency_ratio_ci") or [None, None])[1],
            "on_frontier": bool(e.get("on_frontier")), "in_budget": bool(e.get("in_budget")),
        }
        counts = e.get("precision_counts", {})
        for p in PRECISION_COLUMNS:
            row[f"n_{p}"] = counts.get(p, 0)
        row["runtime_options"] = ";".join(f"{k}={v}" for k, v in
                                          sorted((e.get("options") or {}).items()))
        row["reason"] = e.get("reason", "")
        rows.append(row)
    add_shape_columns(rows, evaluations)  # per deployment shape, when several were declared
    return rows


def render_csv(rows: Sequence[Mapping]) -> str:
    if not rows:
        return ""
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=list(rows[0]))
    w.writeheader()
    for r in rows:
        w.writerow({k: ("" if v is None else v) for k, v in r.items()})
    return buf.getvalue()


def _pct(x) -> str:
    return "n/a" if x is None else f"{100 * x:+.2f}%"


def _f(x, nd=4) -> str:
    return "n/a" if x is None else f"{x:.{nd}f}"


def _how(strategy: str) -> str:
    return {
        "bisection": "groups were lowered in this order (least sensitive first), bisecting on "
                     "how many to lower, then sweeping more prefixes; where a latency model with "
                     "precision-boundary costs, fitted on those plans, predicted lowered groups "
                     "not worth their cost, the best plan with them back in float was measured "
                     "too (`prune`).",
        "frontier": "evenly spaced prefixes of this order (least sensitive first) were measured.",
        "boundary": "each plan came from an integer program minimizing the predicted latency "
                    "(per-group gains and precision-boundary costs, refitted on every measured "
                    "plan) under a sensitivity budget bisected on measured accuracy.",
    }.get(strategy, f"plans were proposed by the `{strategy}` strategy.")


def _latency_model_lines(model: Mapping | None) -> list[str]:
    if not model or model.get("median_abs_error") is None:
        return []
    fit = model["fit"]
    out = ["", f"Latency model on the {model['plans']} measured plans (leave-one-out): median "
               f"error {100 * model['median_abs_error']:.1f}% of the baseline latency with "
               f"precision-boundary costs ({model['edges']} edges; learned cost per boundary "
               f"{100 * fit['c_edge']:.2f}% + {100 * fit['c_size']:.2f}% x relative tensor "
               f"size), {100 * model['additive_median_abs_error']:.1f}% with per-group gains "
               "alone (additive)."]
    search = model.get("search")
    if search and search.get("median_abs_error") is not None:
        out[-1] += (f" As the search saw it (each plan predicted before it was measured): "
                    f"{100 * search['median_abs_error']:.1f}% vs "
                    f"{100 * search['additive_median_abs_error']:.1f}% additive.")
    return out


def _decided_by(result: Mapping) -> list[str]:
    """Which measurement decided the answer: the finalists' joint re-timing (the order the
    holdout judged them in), and which of them were within each other's timing noise."""
    final = result.get("final_timing") or {}
    finalists = final.get("finalists") or []
    if len(finalists) < 2:
        return []
    lines = ["", "Which measurement decided it: the finalists timed together with the "
             f"baseline, interleaved ({final.get('rounds', '?')} rounds, ratio intervals "
             f"within ±{100 * final.get('halfwidth', 0):.1f}%), fastest first:", ""]
    first = finalists[0]
    for f in finalists:
        lo, hi = f["latency_ratio_ci"]
        lines.append(f"- {f['label']}: x{f['latency_ratio']:.3f} ({lo:.3f}-{hi:.3f})")
    close = [f["label"] for f in finalists[1:]
             if f["latency_ratio_ci"][0] <= first["latency_ratio_ci"][1]]
    if close:
        lines += ["", f"{first['label']} and {', '.join(close)} overlap in this timing: which "
                  "is judged first is within the machine's noise, and a rerun may answer "
                  "with the other, at about the same speed."]
    return lines


def render_report(result: Mapping, evaluations: Sequence[Mapping]) -> str:
    b = result["baseline"]
    best = result.get("best")
    lines = [f"# trt-mpq search: {result['model']} on {result['backend']}", ""]
    if result.get("weights") == "random":
        lines += ["> **Random weights**: this model's weights are random (no pretrained weights "
                  "were available offline). Latencies are real; the metric only measures "
                  "agreement with the FP32 model. Use it for latency studies only.", ""]
    verdict = ("**Budget met.**" if result["budget_met"] else
               "**Budget not met**: no quantized plan faster than the baseline stayed within the "
               "budget on both the search and the holdout split; the frontier below shows what "
               "was measured.")
    lines += [verdict, "",
              f"- Budget: metric drop at most {result['budget']['describe']} "
              f"(= {result['budget']['allowed_drop']:.4g} in metric units)",
              f"- Metric: {result['task']['metric']} "
              f"(search split {result['task']['splits']['search']} samples, holdout "
              f"{result['task']['splits']['holdout']})"
              + (f". {result['task']['metric_choice']['reason']}"
                 if (result["task"].get("metric_choice") or {}).get("reason") else ""),
              f"- Evaluations: {result['evaluations']} plans measured "
              f"({result['cached_evaluations']} reused from the store this run), "
              f"wall time {result['wall_s']:.0f} s"
              + (f"; {result['shared_cache']['reused']} baseline pass(es) and sensitivity "
                 "result(s) reused from earlier runs on this model"
                 if result.get("shared_cache", {}).get("reused") else "")]
    timing = result.get("timing_check")
    if timing:
        ratio, spread = timing["attempts"][-1]["ratio"], timing["attempts"][-1]["spread"]
        tries = len(timing["attempts"]) - 1
        lines.append(
            f"- Timing check: the baseline against itself measured x{ratio:.3f} (spread "
            f"{spread:.2f}"
            + (f", after {tries} re-measurement(s) with more runs" if tries else "") + "): "
            + ("within the tolerance" if timing["trusted"] else
               f"**not trusted** (tolerance ±{timing['tolerance']:.0%}, spread at most "
               f"{timing['max_spread']:.2f}); latency differences below that are noise"))
    resolution = result.get("holdout_resolution")
    tests = result.get("holdout_tests") or {}
    if tests.get("confidence"):
        lines.append(
            f"- Certification: the answer is in budget only if the upper bound of its paired "
            f"holdout drop is within {result['budget']['allowed_drop']:.4g}. The certificate "
            f"holds at {100 * tests['confidence']:g}% confidence over every plan the holdout "
            f"judged: it may judge up to {tests['declared']} (declared before it was read), "
            f"each at its own level ("
            + ", ".join(f"{100 * v:.4g}%" for v in tests["levels"])
            + f", in the order judged), and it judged {tests['judged']}"
            + (f"; its {resolution['holdout_n']} samples allow bounds down to "
               f"{resolution['best_case_upper']:.4g} at the first level" if resolution else ""))
    if result.get("search_decision"):
        samples = result.get("search_samples") or {}
        lines.append(
            "- Search split: plans judged in budget by "
            + ("their upper confidence bound" if result["search_decision"] == "bound"
               else "the point estimate of their drop")
            + (f"; adaptive evaluation used {samples['mean']:.0f} of {samples['split']} samples "
               f"per plan on average ({100 * samples['mean_share']:.0f}%)"
               if samples.get("mean") is not None else ""))
    lines.append("")
    lines += ["## Result", "", "| | baseline | chosen plan |", "|---|---|---|"]
    if best:
        lines += [
            f"| metric, search split | {_f(b['metric'])} | {_f(best['metric'])} "
            f"({_pct(-best['rel_drop'])}) |",
            f"| metric, holdout split | {_f(b['holdout_metric'])} | "
            f"{_f(best['holdout_metric'])} ({_pct(-best['holdout_rel_drop'])}) |",
            *([f"| holdout drop, upper bound certified at {100 * best['confidence']:g}% "
               f"(its test at {100 * best.get('test_level', best['confidence']):.4g}%; paired, "
               f"{best.get('holdout_samples_used') or best['holdout_n']} of "
               f"{best['holdout_n']} samples) | | "
               f"{_pct(best['holdout_rel_drop_upper'])} of baseline "
               f"({best['holdout_bound']['method']}) |"] if best.get("holdout_bound") else []),
            f"| latency, median (p90) | {b['latency_ms']:.3f} ms ({b['latency']['p90_ms']:.3f}) | "
            f"{best['latency_ms']:.3f} ms ({best['latency']['p90_ms']:.3f}) |",
            f"| latency ratio | 1.000 | **{best['latency_ratio']:.3f}**"
            + (" (95% CI {:.3f}-{:.3f})".format(*best["latency_ratio_ci"])
               if best.get("latency_ratio_ci") else "") + " |",
            f"| precisions | all {b['precision']} | "
            + ", ".join(f"{k}: {v}" for k, v in sorted(best["precision_counts"].items())) + " |",
            "| runtime options | defaults | "
            + (", ".join(f"{k}={v}" for k, v in sorted(best.get("runtime_options", {}).items()))
               or "defaults") + " |",
        ]
        for name, value in best.get("extra_checks", {}).items():
            lines.append(f"| {name} | 1.000 | {value:.4f} |")
        lines += ["", f"Latencies were re-measured for the chosen plan and the baseline in the "
                  f"same process, interleaved ({best['latency']['n']} runs each); the ratio is "
                  f"what to quote. Artifact: `{best.get('artifact', 'model.onnx')}` "
                  "(plan in `plan.json`)."]
        if best.get("census_kernels"):
            k = best["census_kernels"]
            lines += ["", "Kernels that ran (census): "
                      + ", ".join(f"{n} x{c}" for n, c in sorted(k.items(),
                                                                 key=lambda kv: -kv[1])[:12])]
        if best.get("unverified_groups"):
            u = best["unverified_groups"]
            lines += ["", f"**{len(u)} group(s) unverified**: the backend could not say what "
                      f"precision they ran ({best.get('census_source', '')}); the plan was "
                      "accepted because the search ran with --no-require-census: "
                      + ", ".join(f"`{g}`" for g in u[:10]) + (" ..." if len(u) > 10 else "")]
    else:
        lines += [f"| metric, search split | {_f(b['metric'])} | n/a |",
                  f"| metric, holdout split | {_f(b['holdout_metric'])} | n/a |"]
    tried = result.get("tried_on_holdout", [])
    if tried:
        lines += ["", "Plans the holdout judged, in order (the fastest in-budget finalists "
                  "first, by their joint re-timing):", ""]
        for t in tried:
            verdict = ("accepted" if t["in_budget"] and t["latency_ratio"] < 1.0 else
                       "rejected: out of budget" if not t["in_budget"] else
                       "rejected: re-measured no faster than the baseline")
            bound = t.get("holdout_bound") or {}
            level = (f", upper bound {_pct(bound['rel_drop_upper'])} at "
                     f"{100 * t['test_level']:.4g}%" if t.get("test_level") and bound else "")
            lines.append(f"- {t['label']}: latency x{t['latency_ratio']:.3f} (re-measured), "
                         f"holdout drop {_pct(t['holdout_rel_drop'])}{level} -> {verdict}")
    lines += _decided_by(result)
    lines += boundary_lines(result, evaluations)
    lines += shape_lines(result, evaluations)  # deployment shapes, when declared
    s = result["sensitivity"]
    lines += ["", "## How it was found", "",
              f"Sensitivity metric `{s['metric']}` ({s['passes']} passes over {s['samples']} "
              f"samples, {s['seconds']:.1f} s); " + _how(result.get("strategy", "bisection")),
              *_latency_model_lines(result.get("latency_model")),
              "", "![frontier](pareto.png)", "",
              "| # | how | status | metric | drop | latency ratio | frontier | in budget |",
              "|---|---|---|---|---|---|---|---|"]
    for i, e in enumerate(evaluations, 1):
        lines.append(
            f"| {i} | {e.get('label', '')} | {e['status']} | {_f(e.get('metric'))} | "
            f"{_pct(e.get('rel_drop'))} | {_f(e.get('latency_ratio'), 3)} | "
            f"{'yes' if e.get('on_frontier') else ''} | {'yes' if e.get('in_budget') else ''} |")
    slower = [e for e in evaluations if e["status"] == "slower"]
    if slower:
        lines += ["", f"{len(slower)} plan(s) were timed slower than the fastest in-budget plan "
                  "of their moment (or, before any, the baseline) and so could not be the "
                  "answer; their accuracy was not measured (`--full-frontier` measures it): "
                  + ", ".join(f"{e.get('label', '')} (x{e['latency_ratio']:.3f})"
                              for e in slower[:12])]
    failed = [e for e in evaluations if e["status"] not in ("ok", "slower")]
    if failed:
        lines += ["", "Failed candidates:", ""]
        lines += [f"- {e.get('label', '')}: {e['status']}: {e.get('reason', '')}" for e in failed]
    order = s.get("order", [])
    if len(order) >= 10:
        lines += ["", f"Least sensitive groups: {', '.join(f'`{g}`' for g in order[:5])}",
                  f"Most sensitive groups: {', '.join(f'`{g}`' for g in order[-5:][::-1])}"]
    notes = result.get("task", {}).get("notes", [])
    if notes:
        lines += ["", "## Notes", ""] + [f"- {n}" for n in notes]
    m = result.get("machine", {})
    lines += ["", "## Machine and versions", "",
              f"- {m.get('cpu', '?')}, {m.get('cores', '?')} cores, {m.get('platform', '')}",
              "- " + ", ".join(f"{k} {v}" for k, v in result.get("versions", {}).items()), ""]
    return "\n".join(lines)


def regenerate(out_dir: Path) -> list[Path]:
    """Rewrite report.md, pareto.csv and pareto.png from result.json + pareto.json."""
    out_dir = Path(out_dir)
    try:
        result = json.loads((out_dir / "result.json").read_text())
        evaluations = json.loads((out_dir / "pareto.json").read_text())["evaluations"]
    except FileNotFoundError as e:
        raise TrtMpqError(f"{out_dir} has no {Path(e.filename).name}; point `trt-mpq report` at "
                          "a finished search's output folder") from None
    except (json.JSONDecodeError, KeyError) as e:
        raise TrtMpqError(f"{out_dir}: result.json/pareto.json are damaged ({e}); rerun the "
                          "search with --resume to rewrite them") from None
    write_text(out_dir / "pareto.csv", render_csv(pareto_rows(evaluations)))
    plot_pareto(result, evaluations, out_dir / "pareto.png")
    write_text(out_dir / "report.md", render_report(result, evaluations))
    return [out_dir / "report.md", out_dir / "pareto.csv", out_dir / "pareto.png"]


__all__ = ["PRECISION_COLUMNS", "file_mode", "machine_info", "pareto_rows", "plot_orders",
           "plot_pareto", "regenerate", "render_csv", "render_report", "versions",
           "write_json", "write_text"]
