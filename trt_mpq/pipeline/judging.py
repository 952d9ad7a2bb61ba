"""The budget rules: how plans are judged in budget on the search split (point estimate or
upper confidence bound, `judge`), the sequential rules of the search and holdout splits
(`rules`), how the holdout's error level is split over every plan it may judge (`HoldoutTests`),
and whether the holdout can certify a budget at all (`resolvable`), checked before any work.

The answer's guarantee: with probability at least `confidence`, the plan returned has a true
drop within the budget, however many finalists and fallbacks the holdout judged. The holdout
may judge up to `declared_tries` plans, a number fixed by the settings before the holdout is
read; the i-th plan it judges is certified at level 1 - alpha * w_i with w = 1/2, 1/4, ...,
and the last weight repeated so that the weights sum to 1 (Bonferroni: the chance that any
judged plan whose true drop exceeds the budget is certified is at most the sum, alpha). The
first, fastest finalist gets half of alpha. Within one plan's test, its level is spent again
across the adaptive looks (`trt_mpq.measure.sequential`)."""

from __future__ import annotations

from dataclasses import dataclass, replace

from trt_mpq.errors import ConfigError
from trt_mpq.measure.sequential import SequentialRule
from trt_mpq.measure.stats import samples_needed
from trt_mpq.pipeline.config import SearchConfig
from trt_mpq.pipeline.workspace import Workspace
from trt_mpq.search import BudgetAccept


def rules(config: SearchConfig, baseline_metric: float
          ) -> tuple[SequentialRule | None, SequentialRule | None]:
    """The sequential rules of the search and holdout splits (None when --confidence off)."""
    if config.confidence is None:
        return None, None
    rule = SequentialRule(config.confidence, config.budget.allowed_drop(baseline_metric))
    holdout = rule if config.adaptive else replace(rule, max_looks=1)
    return rule, holdout


def declared_tries(config: SearchConfig) -> int:
    """How many plans the holdout may judge: up to `confirm_candidates` finalists, and as many
    again after a fallback when the strategy can fall back. Fixed by the settings alone, before
    any plan is measured."""
    spec = config.strategy_spec
    return config.confirm_candidates * (2 if spec.can_fall_back(config.strategy_config) else 1)


def holdout_levels(confidence: float, tries: int) -> tuple[float, ...]:
    """The level each of `tries` holdout tests is certified at (module doc): their alphas are
    alpha/2, alpha/4, ..., the last repeated, summing to alpha."""
    alpha = 1 - confidence
    weights = [0.5 ** (i + 1) for i in range(tries - 1)] + [0.5 ** (tries - 1)]
    return tuple(1 - alpha * w for w in weights)


@dataclass
class HoldoutTests:
    """The holdout's tests, in the order the plans are judged: each gets the next declared
    level (`holdout_levels`); None with --confidence off."""

    rule: SequentialRule | None  # at the overall confidence
    declared: int
    judged: int = 0

    def next_rule(self) -> SequentialRule | None:
        if self.rule is None:
            self.judged += 1
            return None
        if self.judged >= self.declared:
            raise AssertionError(f"the holdout judged more plans than the {self.declared} "
                                 "declared before it was read")
        level = holdout_levels(self.rule.confidence, self.declared)[self.judged]
        self.judged += 1
        return replace(self.rule, confidence=level)

    def to_json_dict(self) -> dict:
        levels = (list(holdout_levels(self.rule.confidence, self.declared))
                  if self.rule is not None else None)
        return {"confidence": self.rule.confidence if self.rule else None,
                "declared": self.declared, "judged": self.judged, "levels": levels,
                "method": "Bonferroni over the plans the holdout may judge, declared before it "
                          "is read (alpha/2, alpha/4, ... in the order they are judged)"}


def judge(ws: Workspace, config: SearchConfig, baseline_metric: float
          ) -> tuple[SequentialRule | None, str, BudgetAccept]:
    """How the search split judges plans against the budget: its adaptive rule (None with
    --confidence off; it knows whether the search judges by point estimates, for its futility
    stops), the decision ("bound" or "point", `search_decision`) and the accept function."""
    rule, _ = rules(config, baseline_metric)
    decision = search_decision(ws, config, rule)
    if rule is not None:
        rule = replace(rule, point=decision == "point")
    accept = BudgetAccept.judging(config.budget, baseline_metric, decision)
    return rule, decision, accept


#: "auto" judges plans by their upper bound only when the search split can certify a plan that
#: changes a few results, not only a perfect one: the bound of a plan that changes nothing must
#: be at most this share of the allowed drop. (efficientnet-lite0 at 1%: 500 search samples
#: give a perfect plan 0.78% against 0.92% allowed, so any plan with a discordant pair or two
#: failed the bound and the search saw no plan in budget at all.)
BOUND_MARGIN = 0.5


def search_decision(ws: Workspace, config: SearchConfig, rule: SequentialRule | None) -> str:
    """"bound" or "point" (`SearchConfig.search_decision`); "auto" is "bound" when the search
    split can certify the budget with room to spare (a 0/1 metric on enough samples:
    `BOUND_MARGIN`), else "point"."""
    if config.search_decision != "auto":
        return config.search_decision
    metric = ws.task.metric
    if rule is None or not metric.binary:
        return "point"
    floor = rule.best_case_upper(len(ws.task.search), metric.reference)
    return "bound" if floor <= BOUND_MARGIN * rule.allowed else "point"


def resolvable(task, config: SearchConfig, baseline_metric: float | None = None) -> None:
    """Refuse (ConfigError, exit 2) a budget the holdout split cannot certify at the confidence
    level, before any work: for a 0/1 metric even a plan that changes no sample's result gets
    an upper bound of about 3.0 / n at 95%. Without the
    baseline's metric yet, a relative budget is checked at the largest metric (1), which only
    lets through budgets that may still fail once the metric is known."""
    metric = task.metric
    if metric.reference and not metric.higher_is_better and config.budget.relative:
        raise ConfigError(f"the {metric.name} of the unquantized model with itself is 0, so a "
                          f"relative budget ({config.budget.describe()}) allows nothing; give "
                          "an absolute one, e.g. --max-drop 0.001")
    if config.confidence is None or not metric.binary:
        return
    base = 1.0 if baseline_metric is None else baseline_metric
    allowed = config.budget.allowed_drop(base)
    rule = first_holdout_rule(config, base)
    n = len(task.holdout)
    floor = rule.best_case_upper(n, metric.reference)
    if floor <= allowed:
        return
    level = rule.levels(len(rule.looks(n)))[-1]
    need = samples_needed(allowed, level, reference=metric.reference) if allowed > 0 else None
    fidelity = ("" if metric.reference else
                ", a fidelity metric (--metric agreement: no labels needed"
                + (f"; this task has a {len(task.fidelity)}-sample fidelity split"
                   if task.fidelity is not None else "") + ")")
    raise ConfigError(
        f"the holdout split ({n} samples) cannot certify a drop in {metric.name} of at most "
        f"{allowed:.4g} ({config.budget.describe()}) at {100 * config.confidence:g}% "
        f"confidence (its first test, at {100 * rule.confidence:g}%): even a plan that "
        f"changes no result has an upper bound of {floor:.4g}"
        + (f"; certifying it needs about {need} holdout samples" if need else "")
        + f". Use a larger holdout split{fidelity}, a looser budget, or --confidence off "
        "(point estimates, not certified)")


def first_holdout_rule(config: SearchConfig, baseline_metric: float) -> SequentialRule:
    """The holdout's rule at its first (most lenient) test's level."""
    _, rule = rules(config, baseline_metric)
    assert rule is not None
    return replace(rule, confidence=holdout_levels(rule.confidence, declared_tries(config))[0])


def choose_metric(ws: Workspace, config: SearchConfig, given: str | None
                  ) -> tuple[Workspace, dict]:
    """The workspace judged by the metric the search uses, and why (result.json's
    `task.metric_choice`). A metric given by the user is used as given. Otherwise a task that
    declares a `fallback_metric` (the zoo's: agreement with the unquantized model on its
    fidelity split) is judged by it when its labelled holdout cannot certify the budget with
    room to spare: a plan that changes no result would get more than `BOUND_MARGIN` of the
    allowed drop (checked before the baseline is known, at a baseline metric of 1, the most
    lenient). Never silently: the caller logs the reason first."""
    task = ws.task
    own = {"metric": task.metric.name, "chosen_by": "--metric" if given else "task",
           "reason": ""}
    if given is not None or task.fallback_metric is None or config.confidence is None \
            or not task.metric.binary:
        return ws, own
    allowed = config.budget.allowed_drop(1.0)
    rule = replace(first_holdout_rule(config, 1.0), max_looks=1)
    n = len(task.holdout)
    floor = rule.best_case_upper(n, task.metric.reference)
    if floor <= BOUND_MARGIN * allowed:
        return ws, own
    judged = replace(ws, task=task.judged_by_fallback())
    reason = (f"{task.name} is judged by {task.fallback_metric} ({task.fallback_source()}), "
              f"the fallback the task declares, not by its own {task.metric.name} on its "
              f"labelled holdout: that holdout's {n} samples cannot certify "
              f"{config.budget.describe()} with room to spare (a plan that changes no result "
              f"would be bounded at {floor:.3g}, against {allowed:.3g} allowed). "
              f"--metric {task.metric.name} judges by {task.metric.name} anyway")
    return judged, {"metric": task.fallback_metric, "chosen_by": "task fallback",
                    "reason": reason}


def holdout_resolution(ws: Workspace, config: SearchConfig, baseline_metric: float
                       ) -> dict | None:
    """Whether the holdout split can certify the budget at the confidence level (0/1 metrics;
    `resolvable`), recorded in result.json. Raises ConfigError when it cannot."""
    if config.confidence is None or not ws.task.metric.binary:
        return None
    resolvable(ws.task, config, baseline_metric)
    rule = first_holdout_rule(config, baseline_metric)
    n = len(ws.task.holdout)
    return {"holdout_n": n, "confidence": config.confidence, "first_level": rule.confidence,
            "best_case_upper": rule.best_case_upper(n, ws.task.metric.reference),
            "allowed_drop": rule.allowed, "certifiable": True}


__all__ = ["BOUND_MARGIN", "HoldoutTests", "choose_metric", "declared_tries", "first_holdout_rule",
           "holdout_levels", "holdout_resolution", "judge", "resolvable", "rules",
           "search_decision"]
