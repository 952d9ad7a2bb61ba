"""The accuracy gate of latency-first evaluations: which plans skip their accuracy pass because,
whatever their accuracy, they cannot be the answer (`Gate`), set by the fastest in-budget plans
seen so far (`FastestInBudget`, `accuracy_gate`)."""

from __future__ import annotations

from dataclasses import dataclass

from trt_mpq.plan import Plan
from trt_mpq.search.evaluation import Evaluation


@dataclass(frozen=True)
class Gate:
    """When a latency-first evaluation skips its accuracy pass: a plan timed slower than `ratio`
    (of the baseline) cannot be the answer. Before any plan is in budget `ratio` is the
    baseline's 1.0 and there is no `rival`. After, `ratio` is the fastest in-budget plan's
    (`rival`: with several finalists, the slowest of the fastest ones, `FastestInBudget`)
    with a noise `margin`; but one search-time timing varies more from one moment to the
    next than its own interval says (resnet-digits: about +-0.04 at x0.45), and the rival's
    ratio is the smallest of several such timings, so biased low. A plan timed above `ratio`
    but not above `recheck` is timed again, side by side with the rival (and FP32), and
    skips its accuracy pass only if it is slower than the rival by more than `margin` there."""

    ratio: float
    rival: Plan | None = None
    margin: float = 0.0
    recheck: float = 0.0

    def to_json_dict(self) -> dict:
        return {"ratio": self.ratio, "margin": self.margin, "recheck": self.recheck,
                "rival": self.rival.to_json_dict() if self.rival is not None else None}

    @classmethod
    def from_json_dict(cls, d: dict) -> Gate:
        return cls(float(d["ratio"]), Plan.from_json_dict(d["rival"]) if d.get("rival") else None,
                   float(d.get("margin", 0.0)), float(d.get("recheck", 0.0)))


def accuracy_gate(best: Evaluation | None, margin: float, recheck: float = 0.0) -> Gate:
    """When a latency-first evaluation skips its accuracy pass (`Gate`): slower than the fastest
    in-budget plan `best` by more than the noise `margin` (and, if timed within `recheck` of it,
    again when timed side by side with it), or, before any plan is in budget, slower than the
    baseline. Either way, whatever its accuracy, the plan cannot be the answer (`pick_answer`
    takes only plans measured faster than the baseline) and the baseline dominates it on the
    frontier."""
    if best is None:
        return Gate(1.0)
    r = best.latency_ratio
    return Gate(min(1.0, r * (1 + margin)), best.plan, margin, min(1.0, r * (1 + recheck)))


class FastestInBudget:
    """The fastest in-budget quantized plans seen so far (`see` every evaluation), one per
    precision assignment, and the gate they set for latency-first evaluations: a plan cannot
    be the answer when `keep` in-budget plans with other precisions are faster, since only
    the `keep` fastest (`--finalists`) go to the holdout. (With one finalist that is the
    fastest plan; with three, a plan slower than the fastest can still be the answer when the
    holdout refuses the faster ones, so it keeps its accuracy pass until three are faster.)
    The gate's rival is the `keep`-th fastest (`accuracy_gate`)."""

    def __init__(self, accept, margin: float, recheck: float,
                 baseline_plan: Plan | None = None, keep: int = 1) -> None:
        self.accept, self.margin, self.recheck = accept, margin, recheck
        self.baseline_plan = baseline_plan
        self.keep = keep
        self.fastest: dict[str, Evaluation] = {}  # precision assignment -> its fastest plan

    def see(self, ev: Evaluation) -> None:
        if self.accept(ev) and ev.plan != self.baseline_plan and ev.latency_ratio < 1.0:
            key = Plan.of(ev.plan.as_dict()).digest
            known = self.fastest.get(key)
            if known is None or ev.latency_ratio < known.latency_ratio:
                self.fastest[key] = ev

    def ranked(self) -> list[Evaluation]:
        return sorted(self.fastest.values(), key=lambda e: e.latency_ratio)

    @property
    def best(self) -> Evaluation | None:
        ranked = self.ranked()
        return ranked[0] if ranked else None

    def gate(self) -> Gate:
        ranked = self.ranked()
        return accuracy_gate(ranked[self.keep - 1] if len(ranked) >= self.keep else None,
                             self.margin, self.recheck)


__all__ = ["FastestInBudget", "Gate", "accuracy_gate"]
