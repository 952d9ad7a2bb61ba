"""Deployment shapes in the outputs (`trt_mpq.shapes`): per-shape columns of pareto.csv and the
report's shapes section. Nothing is added for a search that declared no shapes."""

from __future__ import annotations

from collections.abc import Mapping, Sequence


def shape_labels(evaluations: Sequence[Mapping]) -> list[str]:
    """Every shape an evaluation was timed at, in the order first seen."""
    seen: dict[str, None] = {}
    for e in evaluations:
        for s in e.get("shapes") or ():
            seen.setdefault(s["shape"], None)
    return list(seen)


def add_shape_columns(rows: list[dict], evaluations: Sequence[Mapping]) -> None:
    """pareto.csv: `latency_ratio@<shape>` and `latency_ms@<shape>` for every declared shape
    (every row gets them, empty where a plan was not timed)."""
    labels = shape_labels(evaluations)
    for row, e in zip(rows, evaluations):
        by = {s["shape"]: s for s in e.get("shapes") or ()}
        for label in labels:
            s = by.get(label)
            row[f"latency_ratio@{label}"] = s["latency_ratio"] if s else None
            row[f"latency_ms@{label}"] = s["latency"]["median_ms"] if s else None


def _ratio(s: Mapping) -> str:
    ci = s.get("latency_ratio_ci")
    return f"x{s['latency_ratio']:.3f}" + (f" ({ci[0]:.3f}-{ci[1]:.3f})" if ci else "")


def _side(s: Mapping) -> int:
    """-1 faster than the baseline at this shape, +1 slower, 0 within the timing noise (its
    95% interval holds x1; without an interval, by the ratio alone)."""
    lo, hi = s.get("latency_ratio_ci") or (s["latency_ratio"], s["latency_ratio"])
    return -1 if hi < 1.0 else 1 if lo > 1.0 else 0


def mixed_plans(evaluations: Sequence[Mapping]) -> list[Mapping]:
    """Plans measured faster than the baseline at some shapes and slower at others, each
    beyond its timing noise."""
    out = []
    for e in evaluations:
        sides = {_side(s) for s in e.get("shapes") or ()}
        if {-1, 1} <= sides:
            out.append(e)
    return out


def shape_lines(result: Mapping, evaluations: Sequence[Mapping]) -> list[str]:
    """The report's shapes section: the objective, the chosen plan at every shape, and every
    plan's per-shape ratios (a plan faster at one shape and slower at another shows here)."""
    declared = result.get("shapes")
    if not declared:
        return []
    shapes = declared["shapes"]
    lines = ["", "## Deployment shapes", "",
             f"Every plan was timed at each of {len(shapes)} shape(s), interleaved with the "
             "baseline at the same shape; plans are ranked by the **weighted mean of their "
             "per-shape latency ratios** (the latency ratio quoted above). Latencies in ms "
             f"are at {declared['primary']} (the most-weighted shape, the first of equals).",
             ""]
    best = result.get("best") or {}
    timed = {s["shape"]: s for s in best.get("shapes") or ()}
    lines += ["| shape | weight | dims | baseline | chosen plan | latency ratio (95% CI) |",
              "|---|---|---|---|---|---|"]
    for s in shapes:
        dims = ", ".join(f"{k} {'x'.join(map(str, v))}" for k, v in s["dims"].items())
        t = timed.get(s["shape"])
        lines.append(f"| {s['shape']} | {s['weight']:.3g} | {dims} | "
                     + (f"{t['baseline_latency']['median_ms']:.3f} ms | "
                        f"{t['latency']['median_ms']:.3f} ms | {_ratio(t)} |" if t
                        else "n/a | n/a | n/a |"))
    slower = [s for s in timed.values() if _side(s) > 0]
    if slower:
        lines += ["", "**The chosen plan is slower than the baseline at "
                  + ", ".join(f"{s['shape']} (x{s['latency_ratio']:.3f})" for s in slower)
                  + "**: the weighted objective still favours it; change --shape-weights if "
                  "that shape matters more."]
    labels = [s["shape"] for s in shapes]
    rows = [e for e in evaluations if e.get("shapes")]
    if rows:
        lines += ["", "Per-shape latency ratios of every timed plan:", "",
                  "| # | how | " + " | ".join(labels) + " | weighted |",
                  "|---|---|" + "---|" * (len(labels) + 1)]
        for i, e in enumerate(evaluations, 1):
            by = {s["shape"]: s["latency_ratio"] for s in e.get("shapes") or ()}
            if not by:
                continue
            cells = [f"{by[label]:.3f}" if label in by else "n/a" for label in labels]
            lines.append(f"| {i} | {e.get('label', '')} | " + " | ".join(cells)
                         + f" | {e['latency_ratio']:.3f} |")
    mixed = mixed_plans(evaluations)
    if mixed:
        lines += ["", f"{len(mixed)} plan(s) are faster than the baseline at some shapes and "
                  "slower at others (beyond their 95% intervals): " + ", ".join(
                      f"{e.get('label', '')} (" + ", ".join(
                          f"{s['shape']} x{s['latency_ratio']:.3f}" for s in e["shapes"]) + ")"
                      for e in mixed[:8])]
    return lines


__all__ = ["add_shape_columns", "mixed_plans", "shape_labels", "shape_lines"]
