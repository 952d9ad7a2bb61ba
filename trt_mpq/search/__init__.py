"""Search: strategies over plans. Never imports a backend (nor onnx): it sees only
evaluate(plan) -> Evaluation. Strategies are registered by name in `registry.STRATEGIES`."""

from trt_mpq.search.base import (
    BudgetAccept,
    PrefixPlans,
    SearchInputs,
    Strategy,
    StrategySpec,
    drive,
)
from trt_mpq.search.evaluation import Budget, Evaluation, Status, drop_of
from trt_mpq.search.greedy import Greedy, GreedyConfig
from trt_mpq.search.ilp import IlpConfig, IlpSearch
from trt_mpq.search.options import OptionSweep
from trt_mpq.search.pareto import area_under_frontier, frontier, ranked_in_budget
from trt_mpq.search.registry import STRATEGIES, strategy_spec
from trt_mpq.search.strategies import (
    Around,
    Bisection,
    BisectionConfig,
    FrontierConfig,
    PrefixSweep,
)

__all__ = ["Budget", "BudgetAccept", "Evaluation", "Status", "drop_of", "frontier",
           "ranked_in_budget", "area_under_frontier", "Bisection", "BisectionConfig",
           "FrontierConfig", "PrefixSweep", "Around", "PrefixPlans", "SearchInputs", "Strategy",
           "StrategySpec", "drive", "OptionSweep", "Greedy", "GreedyConfig", "IlpSearch",
           "IlpConfig", "STRATEGIES", "strategy_spec"]
