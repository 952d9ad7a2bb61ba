"""The measured latency-accuracy frontier and the choice of the answer."""

from __future__ import annotations

from collections.abc import Callable, Sequence

from trt_mpq.search.evaluation import Evaluation


def frontier(evaluations: Sequence[Evaluation]) -> list[Evaluation]:
    """Pareto-optimal OK evaluations (no other is at least as fast and at least as accurate, and
    strictly better in one), sorted by latency ratio."""
    pts = [e for e in evaluations if e.ok and e.latency_ratio is not None and e.drop is not None]
    out = []
    for e in pts:
        dominated = any(
            o is not e and o.latency_ratio <= e.latency_ratio and o.drop <= e.drop
            and (o.latency_ratio < e.latency_ratio or o.drop < e.drop)
            for o in pts
        )
        if not dominated:
            out.append(e)
    out.sort(key=lambda e: (e.latency_ratio, e.drop))
    # identical points (same ratio and drop) from different plans: keep the first
    uniq: list[Evaluation] = []
    for e in out:
        if not uniq or (e.latency_ratio, e.drop) != (uniq[-1].latency_ratio, uniq[-1].drop):
            uniq.append(e)
    return uniq


def ranked_in_budget(evaluations: Sequence[Evaluation],
                     accept: Callable[[Evaluation], bool]) -> list[Evaluation]:
    """In-budget OK evaluations, fastest first (ties: smaller drop first)."""
    ok = [e for e in evaluations if e.ok and e.latency_ratio is not None and accept(e)]
    return sorted(ok, key=lambda e: (e.latency_ratio, e.drop if e.drop is not None else 0.0))


def area_under_frontier(points: Sequence[Evaluation], max_drop: float) -> float:
    """Area of the region dominated by the frontier in (latency ratio, drop) space, with drop
    clipped to [0, max_drop] and ratio to [0, 1]; normalized to [0, 1]. Larger is better: a
    frontier that reaches low latency at small drop dominates more."""
    pts = sorted((min(max(e.latency_ratio, 0.0), 1.0), min(max(e.drop, 0.0), max_drop))
                  for e in points if e.latency_ratio is not None and e.drop is not None)
    if not pts or max_drop <= 0:
        return 0.0
    area = 0.0
    # for each ratio r in [0,1], the best (smallest) drop achievable at ratio <= r
    best_drop = max_drop
    prev_r = pts[0][0]
    for r, d in pts:
        area += (r - prev_r) * (max_drop - best_drop)
        best_drop = min(best_drop, d)
        prev_r = r
    area += (1.0 - prev_r) * (max_drop - best_drop)
    return area / max_drop
