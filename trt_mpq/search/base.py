"""The pieces every search strategy shares, ask/tell style.

A strategy proposes plans (`ask`) and learns their evaluations (`tell`); it never builds or
measures anything itself, so it is tested with a fake evaluator and can be resumed by replaying
stored evaluations. `drive` runs strategies against any `evaluate(plan, label) -> Evaluation`.
A `StrategySpec` declares a strategy by name (see `trt_mpq.search.registry`); `SearchInputs`
is what the search hands it.
"""

from __future__ import annotations

import abc
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from trt_mpq.errors import ConfigError
from trt_mpq.graph import Edge
from trt_mpq.options import flag
from trt_mpq.plan import Plan, Precision
from trt_mpq.results import Evaluation
from trt_mpq.search.evaluation import Budget

Proposal = tuple[Plan, str]  # (plan, label)
Evaluate = Callable[[Plan, str], Evaluation]
Accept = Callable[[Evaluation], bool]  # status ok and within the accuracy budget


@dataclass(frozen=True)
class BudgetAccept:
    """An `Accept` that also says how far in or out of budget a plan is: the number it compares
    (`statistic`: the drop's upper bound where the search decides by bounds, else the drop)
    against `allowed`. Strategies that steer by that distance (the boundary strategy's secant
    steps) read it where the accept function is one; any other callable works as before."""

    allowed: float  # the largest statistic in budget
    bound: bool  # compare the drop's upper bound (True) or the drop itself

    @classmethod
    def judging(cls, budget: Budget, baseline_metric: float, decision: str) -> BudgetAccept:
        """How a search judges plans against `budget`: by the drop's upper bound where its
        decision is "bound", else by the drop itself."""
        return cls(budget.allowed_drop(baseline_metric), decision == "bound")

    def statistic(self, e: Evaluation) -> float | None:
        return e.drop_upper if self.bound else e.drop

    def __call__(self, e: Evaluation) -> bool:
        s = self.statistic(e)
        return e.ok and s is not None and s <= self.allowed + 1e-12


MAX_SPECULATE = 4  # at most 2^5 - 1 = 31 plans per round


def speculate_field():
    """The `--speculate D` option of the strategies that can propose their next steps ahead."""
    return field(default=0, metadata=flag(
        "--speculate", "bisection, ilp: with each step's plan also propose the plans of the next "
                       "D steps, either way each goes, as one batch (up to 2^(D+1)-1 plans per "
                       "round, D+1 steps decided per round; for --executor ray)",
        lo=0, hi=MAX_SPECULATE))


def check_speculate(depth: int) -> None:
    if not 0 <= depth <= MAX_SPECULATE:
        raise ConfigError(f"--speculate must be 0 to {MAX_SPECULATE} (at most "
                          f"{2 ** (MAX_SPECULATE + 1) - 1} plans per round)")


class Strategy(abc.ABC):
    name: str = ""
    #: its proposals only matter if faster than the best in-budget plan so far (a sweep, a
    #: refinement); False where the strategy steers by their accuracy (bisection, greedy, ilp)
    latency_first: bool = False

    def __init__(self) -> None:
        self.evaluations = 0

    @abc.abstractmethod
    def ask(self) -> list[Proposal]:
        """Plans to evaluate next; an empty list when the strategy is done."""

    @abc.abstractmethod
    def tell(self, plan: Plan, evaluation: Evaluation) -> None:
        """The evaluation of a plan that `ask` proposed."""

    def observe(self, evaluation: Evaluation) -> None:
        """Every evaluation `drive` records, this strategy's own and those of the strategies
        run with it, in order (a strategy that learns from plans it did not propose, as
        `prune` does from a bisection's); the default ignores them."""
        return None

    def fall_back(self) -> bool:
        """Called once the strategy is done and the holdout refused every answer its plans
        gave: re-open to propose safer plans through the next `ask`s. Returns whether it did;
        a strategy with no fallbacks (the default) returns False."""
        return False


def checked_groups(groups: Sequence[str], low: Mapping[str, Precision]) -> tuple[str, ...]:
    """`groups` as a tuple, after checking they are distinct and that `low` names exactly them."""
    out = tuple(groups)
    if len(set(out)) != len(out):
        raise ValueError("groups must be distinct")
    if set(low) != set(out):
        raise ValueError("groups and low precisions must name the same groups")
    return out


class PrefixPlans:
    """Plans that lower the first k groups of `order` and keep the rest at `base`."""

    def __init__(self, order: Sequence[str], low: Mapping[str, Precision], base: Precision) -> None:
        if set(order) != set(low):
            raise ValueError("order and low precisions must name the same groups")
        self.order = tuple(order)
        self.low = dict(low)
        self.base = base

    @property
    def n(self) -> int:
        return len(self.order)

    def plan(self, k: int) -> Plan:
        lowered = set(self.order[:k])
        return Plan.of({g: (self.low[g] if g in lowered else self.base) for g in self.order})



@dataclass(frozen=True)
class SearchInputs:
    """What a strategy may be built from."""

    groups: tuple[str, ...]  # every group, in graph order
    order: tuple[str, ...]  # the search order: least sensitive (per unit of gain) first
    low: Mapping[str, Precision]  # the precision each group is lowered to
    base: Precision  # the baseline precision
    accept: Accept  # status ok and within the accuracy budget on the search split
    sensitivity: Mapping[str, float]  # per-group sensitivity scores (lower: lowered first)
    gain: Mapping[str, float] | None = None  # measured latency gain per group (needs_gains)
    #: the group graph (needs_graph): edges between groups through glue ops
    edges: tuple[Edge, ...] | None = None
    #: (group, precision) -> (sensitivity, profiled gain in ratio units) for every precision a
    #: group may take (needs_graph); by default each group's `low` precision only
    options: Mapping[tuple[str, Precision], tuple[float, float]] | None = None

    @property
    def option_sensitivity(self) -> dict[tuple[str, Precision], float]:
        """Each option's estimated sensitivity (`options` must be given)."""
        assert self.options is not None
        return {o: v[0] for o, v in self.options.items()}

    @property
    def prior_gain(self) -> dict[tuple[str, Precision], float]:
        """Each option's profiled latency gain (`options` must be given)."""
        assert self.options is not None
        return {o: v[1] for o, v in self.options.items()}

    @property
    def prefixes(self) -> PrefixPlans:
        return PrefixPlans(self.order, {g: self.low[g] for g in self.order}, self.base)


@dataclass(frozen=True)
class StrategySpec:
    """A strategy as the search and the CLI see it."""

    name: str
    description: str  # one line, shown by --help
    config: type  # frozen dataclass with defaults; validates itself in __post_init__
    build: Callable[[Any, SearchInputs], list[Strategy]]  # run one after another by `drive`
    needs_gains: bool = False  # measured per-group latency gains (`SearchInputs.gain`)
    #: uses measured gains (and the group graph) where the backend can profile them, and runs
    #: without them where it cannot (`SearchInputs.gain` then None)
    wants_gains: bool = False
    needs_graph: bool = False  # the group graph and per-option numbers (`edges`, `options`)
    #: whether a strategy built from this config may propose safer plans after the holdout
    #: refused every answer (`Strategy.fall_back`): the holdout then judges a second round of
    #: finalists, which its error split must count before it is read
    can_fall_back: Callable[[Any], bool] = lambda config: False


#: evaluates several proposals at once (e.g. on a cluster); the flag: the proposing strategy is
#: latency-first. Returns the evaluations in the order of the proposals.
EvaluateBatch = Callable[[list[Proposal], bool], list[Evaluation]]


def drive(strategies: Sequence[Strategy], evaluate: Evaluate,
          on_evaluation: Callable[[Evaluation], None] | None = None,
          evaluate_latency_first: Evaluate | None = None,
          evaluate_batch: EvaluateBatch | None = None) -> list[Evaluation]:
    """Run strategies one after another; each plan is evaluated once even if proposed twice.
    Proposals of a strategy whose `latency_first` is set go to `evaluate_latency_first` when it
    is given (an evaluation that may skip the accuracy pass of a plan measured slower than the
    fastest in-budget plan so far: it cannot be the answer). With `evaluate_batch`, the new
    plans of each `ask` are evaluated together (in parallel where it can), then told in order:
    the same plans and the same tells as one at a time. Every strategy `observe`s every
    evaluation recorded, before the proposing strategy is told it."""
    seen: dict[str, Evaluation] = {}
    out: list[Evaluation] = []

    def record(ev: Evaluation) -> None:
        seen[ev.plan.digest] = ev
        out.append(ev)
        if on_evaluation:
            on_evaluation(ev)
        for s in strategies:
            s.observe(ev)

    for strategy in strategies:
        while True:
            proposals = strategy.ask()
            if not proposals:
                break
            if evaluate_batch is not None:
                new: dict[str, Proposal] = {}
                for plan, label in proposals:
                    if plan.digest not in seen:
                        new.setdefault(plan.digest, (plan, label))
                if new:
                    for ev in evaluate_batch(list(new.values()), strategy.latency_first):
                        record(ev)
            fn = (evaluate_latency_first if strategy.latency_first and evaluate_latency_first
                  else evaluate)
            for plan, label in proposals:
                if plan.digest not in seen:
                    record(fn(plan, label))
                strategy.tell(plan, seen[plan.digest])
    return out
