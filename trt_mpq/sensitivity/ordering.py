"""Orders of the groups for a search, and how good an order is.

- `order(...)`: by sensitivity (the papers: least sensitive first) or latency-aware, by
  sensitivity per unit of measured latency gain.
- `order_quality(...)`: Spearman and Kendall rank correlations of orders with a reference.
"""

from __future__ import annotations

import math
from collections.abc import Mapping

ORDERS = ("sensitivity", "latency-aware")


def order(groups_in_graph_order: list[str], scores: Mapping[str, float],
          gains: Mapping[str, float] | None = None) -> list[str]:
    """Least sensitive first; with `gains`, least sensitivity per unit of gain first (groups
    that gain nothing or lose go last, by sensitivity). Ties keep graph order."""
    position = {g: i for i, g in enumerate(groups_in_graph_order)}
    if gains is None:
        return sorted(groups_in_graph_order, key=lambda g: (scores[g], position[g]))

    def key(g: str):
        gain = gains.get(g, 0.0)
        if gain <= 0:
            return (1, scores[g], position[g])
        return (0, max(scores[g], 0.0) / gain, position[g])

    return sorted(groups_in_graph_order, key=key)


def order_quality(orders: Mapping[str, list[str]], reference: Mapping[str, float]) -> dict:
    """Spearman and Kendall correlation of each order's ranks with the reference's (the groups
    sorted by the reference score, ascending). 1 = identical order."""
    from scipy.stats import kendalltau, spearmanr

    groups = sorted(reference)
    ref_rank = {g: r for r, g in enumerate(sorted(groups, key=lambda g: (reference[g], g)))}
    out = {}
    for name, seq in orders.items():
        rank = {g: r for r, g in enumerate(seq)}
        a = [ref_rank[g] for g in groups]
        b = [rank[g] for g in groups]
        rho = spearmanr(a, b).statistic
        tau = kendalltau(a, b).statistic
        out[name] = {"spearman": None if math.isnan(rho) else float(rho),
                     "kendall": None if math.isnan(tau) else float(tau)}
    return out


__all__ = ["ORDERS", "order", "order_quality"]
