"""report.md's "Precision boundaries" section, from result.json and pareto.json alone (the
accounts `trt_mpq.pipeline.boundaries` adds to them)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence


def _end(name: str, precision: str) -> str:
    return f"`{name}` ({precision})"


def _cost(x) -> str:
    return "n/a" if x is None else f"{100 * x:.2f}%"


def _measured(row: Mapping) -> str:
    if row.get("kernels") is not None:
        if not row["kernels"]:
            return "no kernel of its own (fused)"
        parts = [f"{k['op']} {k['ms']:.3f}" + (f" (shared by {k['shared']})"
                                                if k.get("shared", 1) > 1 else "")
                 for k in row["kernels"] if k.get("ms") is not None]
        return (f"{row['measured_ms']:.3f} ms: " if row.get("measured_ms") is not None
                else "") + ", ".join(parts)
    if row.get("layers") is not None:
        return "; ".join(f"{h['type']} `{h['name']}`" for h in row["layers"]) or \
            "no layer of its own"
    return ""


def _table(account: Mapping) -> list[str]:
    rows = account.get("boundaries") or []
    if not rows:
        return []
    out = ["| from | to | tensor | conversion nodes in the graph | estimated cost | measured |",
           "|---|---|---|---|---|---|"]
    for r in rows:
        nodes = ", ".join(f"`{n['name']}` ({n['op_type']})" for n in r["nodes"]) or \
            "none (the runtime converts inside the kernel)"
        out.append(f"| {_end(r['src'], r['from'])} | {_end(r['dst'], r['to'])} | "
                   + ", ".join(f"`{t}`" for t in r["tensors"])
                   + f" | {nodes} | {_cost(r.get('estimated_cost'))} | {_measured(r)} |")
    return out


def _summary(account: Mapping) -> str:
    if account.get("error"):
        return f"not accounted: {account['error']}"
    n = account.get("count", 0)
    if not n:
        return "no precision boundary"
    text = f"{n} boundar{'y' if n == 1 else 'ies'}"
    if account.get("estimated_total") is not None:
        text += f", estimated {100 * account['estimated_total']:.2f}% of the baseline's latency"
    m = account.get("measured") or {}
    if m.get("boundaries_ms") is not None:
        share = (f" ({100 * m['boundaries_ms'] / m['total_ms']:.0f}% of its profiled kernel "
                 "time)" if m.get("total_ms") else "")
        text += f"; conversion kernels {m['boundaries_ms']:.3f} ms per run{share}"
    elif m.get("reason") and m["reason"] != "no boundary":
        text += f"; not measured: {m['reason']}"
    return text


def boundary_lines(result: Mapping, evaluations: Sequence[Mapping]) -> list[str]:
    """The section, or nothing when no plan has an account."""
    answer = (result.get("best") or {}).get("boundaries")
    digest = (result.get("best") or {}).get("plan_digest")
    frontier = [e for e in evaluations if e.get("on_frontier") and e.get("boundaries")
                and e.get("plan_digest") != digest]
    if not answer and not frontier:
        return []
    first = answer or frontier[0]["boundaries"]
    basis = first.get("estimate") or {}
    base = result.get("baseline", {}).get("precision", "baseline")
    lines = ["", "## Precision boundaries", "",
             "Where a lowered region meets a float one (or two low precisions meet), the "
             "runtime converts: the Q/DQ pair or Cast in the graph and, on ONNX Runtime's "
             "CPU provider, layout conversions (Transpose, ReorderInput/ReorderOutput) around "
             "it. Per-layer latency tables do not see these costs, and they can cancel the "
             "gain of the layers between them.", ""]
    if basis.get("fitted"):
        lines.append(f"- Estimated cost: the boundary-aware latency model fitted on the "
                     f"{basis['plans']} measured plans ({100 * basis['c_edge']:.2f}% + "
                     f"{100 * basis['c_size']:.2f}% x the tensor's size relative to the mean "
                     f"edge's), in % of the {base} baseline's latency.")
    else:
        lines.append(f"- Estimated cost: none ({basis.get('reason', 'no latency model')}).")
    sources = {(e.get("measured") or {}).get("source") for e in
               ([answer] if answer else []) + [f["boundaries"] for f in frontier]} - {None}
    lines.append("- Measured: " + (", ".join(sorted(sources)) + (
        " (the conversion kernels at each boundary in a short profiled run of the plan, ms "
        "per run)" if any("profiler" in s for s in sources) else "")
        if sources else "nothing (the backend reports no per-kernel conversions)") + ".")
    if answer:
        lines += ["", f"### The answer ({answer.get('label', '')}): {_summary(answer)}", "",
                  *_table(answer)]
    if frontier:
        lines += ["", "### Frontier plans"]
        for e in frontier:
            b = e["boundaries"]
            head = (f"{e.get('label', '')} (x{e['latency_ratio']:.3f}"
                    if e.get("latency_ratio") is not None else e.get("label", "") + " (")
            drop = e.get("rel_drop")
            head += (f", drop {100 * drop:+.2f}%)" if drop is not None else ")")
            lines += ["", f"#### {head}: {_summary(b)}"]
            if b.get("boundaries"):
                lines += ["", *_table(b)]
    return lines


__all__ = ["boundary_lines"]
