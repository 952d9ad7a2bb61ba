"""Search: strategies over plans. Never imports a backend; sees only evaluate(plan) -> Evaluation."""

from trt_mpq.search.evaluation import Budget, Evaluation, Status, drop_of
from trt_mpq.search.greedy import Greedy
from trt_mpq.search.ilp import IlpSearch
from trt_mpq.search.pareto import area_under_frontier, frontier, ranked_in_budget
from trt_mpq.search.strategies import (
    Around,
    Bisection,
    PrefixPlans,
    PrefixSweep,
    Strategy,
    drive,
)

__all__ = ["Budget", "Evaluation", "Status", "drop_of", "frontier", "ranked_in_budget",
           "area_under_frontier", "Bisection", "PrefixSweep", "Around", "PrefixPlans", "Strategy",
           "drive", "Greedy", "IlpSearch"]
