"""Search strategies by name: the one place a strategy is registered.

`STRATEGIES` maps a name to the `StrategySpec` its own module defines ("module:attribute",
imported on use). A spec says what the strategy needs, which frozen config class holds its
settings (its fields carry their command-line flags, see `trt_mpq.options`) and how to build it
from that config and the search's `SearchInputs`. Adding a strategy: one module with the
`Strategy` and its `StrategySpec`, and one line here.
"""

from __future__ import annotations

from functools import cache

from trt_mpq.registry import resolve
from trt_mpq.search.base import StrategySpec

#: name -> "module:attribute" of its StrategySpec
STRATEGIES: dict[str, str] = {
    "bisection": "trt_mpq.search.strategies:BISECTION",
    "boundary": "trt_mpq.search.boundary:SPEC",
    "frontier": "trt_mpq.search.strategies:FRONTIER",
    "greedy": "trt_mpq.search.greedy:SPEC",
    "ilp": "trt_mpq.search.ilp:SPEC",
}


@cache
def strategy_spec(name: str) -> StrategySpec:
    return resolve(STRATEGIES, name, "strategy")


__all__ = ["STRATEGIES", "strategy_spec"]
