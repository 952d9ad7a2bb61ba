"""Orders of the groups for a search, and how good an order is.

- `order(...)`: by sensitivity (the papers: least sensitive first) or latency-aware, by
  sensitivity per unit of measured latency gain.
- `order_quality(...)`: Spearman and Kendall rank correlations of orders with a reference.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Mapping, Sequence

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


def order_quality(orders: Mapping[str, Sequence[str] | Mapping[str, float]],
                  reference: Mapping[str, float]) -> dict:
    """Spearman and Kendall (tau-b) correlation of each order with the reference scores. An
    order is either a metric's raw scores (ties stay ties) or a list of groups (its position is
    the rank). Ties in either are given average ranks, so tied groups count as tied and never
    as an order the tie-break made up; with no variation in either side the correlation is
    undefined (None). 1 = the same order as the reference, least first."""
    from scipy.stats import kendalltau, spearmanr

    groups = sorted(reference)
    ref = [float(reference[g]) for g in groups]
    out = {}
    for name, seq in orders.items():
        if isinstance(seq, Mapping):
            values = [float(seq[g]) for g in groups]
        else:
            rank = {g: r for r, g in enumerate(seq)}
            values = [float(rank[g]) for g in groups]
        with warnings.catch_warnings():  # constant input: undefined, reported as None
            warnings.simplefilter("ignore")
            rho = spearmanr(ref, values).statistic
            tau = kendalltau(ref, values).statistic
        out[name] = {"spearman": None if math.isnan(rho) else float(rho),
                     "kendall": None if math.isnan(tau) else float(tau)}
    return out


__all__ = ["ORDERS", "order", "order_quality"]
