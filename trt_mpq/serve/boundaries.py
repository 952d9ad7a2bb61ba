"""The answer's precision boundaries as the page's plan strip shows them (markers between
groups with a tooltip), from the account result.json carries (`trt_mpq.pipeline.boundaries`)."""

from __future__ import annotations

from collections.abc import Mapping

#: what the page reads of each boundary
FIELDS = ("src", "dst", "from", "to", "tensors", "nodes", "estimated_cost", "measured_ms")


def answer_boundaries(best: Mapping) -> dict | None:
    """{"estimate": why there is or is no estimate, "measured": the source or why none, "list":
    the boundaries (their conversion kernels as [op, ms])}; None before accounts existed."""
    account = best.get("boundaries")
    if not isinstance(account, Mapping):
        return None
    estimate = account.get("estimate") or {}
    measured = account.get("measured") or {}
    rows = []
    for b in account.get("boundaries") or []:
        row = {k: b.get(k) for k in FIELDS}
        row["kernels"] = [[k.get("op"), k.get("ms")] for k in b.get("kernels") or []]
        row["layers"] = [[h.get("type"), h.get("name")] for h in b.get("layers") or []]
        rows.append(row)
    return {"estimate": {"fitted": bool(estimate.get("fitted")),
                         "reason": estimate.get("reason", "")},
            "measured": {"source": measured.get("source"), "reason": measured.get("reason", "")},
            "list": rows}


__all__ = ["answer_boundaries"]
