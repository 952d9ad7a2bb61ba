"""Plots people would rather look at than read: the measured latency-accuracy frontier of a
search (`pareto.png`) and how each sensitivity metric's order compares with the measured one
(`sensitivity.png`). matplotlib is imported on use, with the Agg backend (no display needed)."""

from __future__ import annotations

import math
import os
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path


def save_figure(fig, path: Path, dpi: int) -> None:
    """Write the PNG whole or not at all (temporary file, then rename), and close `fig`."""
    import matplotlib.pyplot as plt

    from trt_mpq.report.files import file_mode

    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".png")
    os.close(fd)
    try:
        fig.savefig(tmp, dpi=dpi)
        os.chmod(tmp, file_mode())
        os.replace(tmp, path)
    finally:
        plt.close(fig)
        if os.path.exists(tmp):
            os.unlink(tmp)

def plot_pareto(result: Mapping, evaluations: Sequence[Mapping], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ok = [e for e in evaluations if e["status"] == "ok" and e.get("latency_ratio") is not None]
    fig, ax = plt.subplots(figsize=(7.5, 5))
    base_metric = result["baseline"]["metric"]
    allowed = result["budget"]["allowed_drop"]
    higher = result.get("task", {}).get("higher_is_better", True)
    floor = base_metric - allowed if higher else base_metric + allowed
    if ok:
        xs = [e["latency_ratio"] for e in ok]
        top = max(max(e["metric"] for e in ok), base_metric) + 0.01 * abs(base_metric or 1)
        ax.axhspan(floor, top,
                   color="tab:green", alpha=0.08, label="within budget (search split)")
        ax.scatter(xs, [e["metric"] for e in ok], s=22, c="0.55", label="evaluated plans",
                   zorder=2)
        front = sorted((e for e in ok if e.get("on_frontier")), key=lambda e: e["latency_ratio"])
        if front:
            ax.plot([e["latency_ratio"] for e in front], [e["metric"] for e in front], "-o",
                    c="tab:blue", ms=5, label="measured frontier", zorder=3)
    ax.axhline(floor, c="tab:green", lw=1, ls="--")
    ax.scatter([1.0], [base_metric], marker="s", s=60, c="k", label="baseline", zorder=4)
    best = result.get("best")
    if best:
        ax.scatter([best["search_latency_ratio"]], [best["metric"]], marker="*", s=220,
                   c="tab:red", label="chosen plan", zorder=5)
    ax.set_xlabel("latency / baseline latency (measured, interleaved)")
    ax.set_ylabel(f"{result.get('task', {}).get('metric', 'metric')} (search split)")
    ax.set_title(f"{result['model']} on {result['backend']} "
                 f"(budget {result['budget']['describe']})")
    ax.grid(alpha=0.3)
    ax.legend(loc="lower right", fontsize=8)
    fig.tight_layout()
    save_figure(fig, path, dpi=110)


def plot_orders(report: dict, path) -> None:
    """Each metric's rank of every group against the reference rank (a perfect order lies on
    the diagonal)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ref = report["reference"]["scores"]
    ref_rank = {g: r for r, g in enumerate(sorted(ref, key=lambda g: (ref[g], g)))}
    metrics = list(report["metrics"])
    cols = min(3, len(metrics)) or 1
    rows = math.ceil(len(metrics) / cols) or 1
    fig, axes = plt.subplots(rows, cols, figsize=(4 * cols, 3.6 * rows), squeeze=False)
    for ax, metric in zip(axes.flat, metrics):
        seq = report["metrics"][metric]["order"]
        q = report["order_quality"][metric]
        ax.scatter([ref_rank[g] for g in seq], range(len(seq)), s=14)
        n = len(seq)
        ax.plot([0, n - 1], [0, n - 1], c="0.7", lw=1)
        rho = q["spearman"]
        ax.set_title(f"{metric}: Spearman {rho:.2f}" if rho is not None else metric, fontsize=9)
        ax.set_xlabel("rank by measured drop (search split)", fontsize=8)
        ax.set_ylabel("rank by metric", fontsize=8)
    for ax in list(axes.flat)[len(metrics):]:
        ax.axis("off")
    fig.suptitle(f"{report['model']}: sensitivity orders vs the measured one-at-a-time drop",
                 fontsize=10)
    fig.tight_layout()
    save_figure(fig, Path(path), dpi=100)
