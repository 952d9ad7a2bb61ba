"""What a search sees: `Evaluation` (one measured plan) and `Budget` (what "in budget" means)."""

from __future__ import annotations

import enum
import math
import re
from collections.abc import Mapping
from dataclasses import dataclass, field

from trt_mpq.backends.base import Census
from trt_mpq.errors import BudgetError
from trt_mpq.measure.latency import LatencyStats
from trt_mpq.plan import Plan


class Status(enum.Enum):
    OK = "ok"
    BUILD_FAILED = "build-failed"
    RUN_FAILED = "run-failed"
    PRECISION_MISMATCH = "precision-mismatch"
    NAN_OUTPUT = "nan-output"


@dataclass(frozen=True)
class Evaluation:
    plan: Plan
    status: Status
    reason: str = ""
    label: str = ""  # how the plan came about, e.g. "bisection k=12/25"
    metric: float | None = None  # task metric on the search split
    drop: float | None = None  # baseline metric - metric (sign flipped if lower is better)
    rel_drop: float | None = None  # drop / |baseline metric|
    latency: LatencyStats | None = None
    baseline_latency: LatencyStats | None = None  # timed in the same rounds
    latency_ratio: float | None = None  # latency.median / baseline_latency.median
    census: Census | None = None
    materialize_s: float = 0.0
    build_s: float = 0.0
    wall_s: float = 0.0
    cached: bool = field(default=False, compare=False)

    @property
    def ok(self) -> bool:
        return self.status is Status.OK

    def to_json_dict(self) -> dict:
        return {
            "plan_digest": self.plan.digest,
            "plan": self.plan.to_json_dict()["groups"],
            "precision_counts": self.plan.counts(),
            "status": self.status.value,
            "reason": self.reason,
            "label": self.label,
            "metric": self.metric,
            "drop": self.drop,
            "rel_drop": self.rel_drop,
            "latency": self.latency.to_json_dict() if self.latency else None,
            "baseline_latency": (self.baseline_latency.to_json_dict()
                                 if self.baseline_latency else None),
            "latency_ratio": self.latency_ratio,
            "census": self.census.to_json_dict() if self.census else None,
            "materialize_s": self.materialize_s,
            "build_s": self.build_s,
            "wall_s": self.wall_s,
        }

    @classmethod
    def from_json_dict(cls, d: Mapping) -> Evaluation:
        return cls(
            plan=Plan.from_json_dict({"groups": d["plan"]}),
            status=Status(d["status"]),
            reason=d.get("reason", ""),
            label=d.get("label", ""),
            metric=d.get("metric"),
            drop=d.get("drop"),
            rel_drop=d.get("rel_drop"),
            latency=LatencyStats.from_json_dict(d["latency"]) if d.get("latency") else None,
            baseline_latency=(LatencyStats.from_json_dict(d["baseline_latency"])
                              if d.get("baseline_latency") else None),
            latency_ratio=d.get("latency_ratio"),
            census=Census.from_json_dict(d["census"]) if d.get("census") else None,
            materialize_s=d.get("materialize_s", 0.0),
            build_s=d.get("build_s", 0.0),
            wall_s=d.get("wall_s", 0.0),
        )


@dataclass(frozen=True)
class Budget:
    """Largest allowed drop of the task metric: relative to the baseline ("1%") or absolute
    in metric units ("0.005")."""

    max_drop: float
    relative: bool = True

    def __post_init__(self) -> None:
        if not math.isfinite(self.max_drop) or self.max_drop < 0:
            raise BudgetError("the accuracy budget must be a finite drop >= 0")
        if self.relative and self.max_drop >= 1:
            raise BudgetError("a relative budget must be below 100%")

    @classmethod
    def parse(cls, text: str) -> Budget:
        s = text.strip()
        m = re.fullmatch(r"([0-9]*\.?[0-9]+(?:[eE][-+]?[0-9]+)?)\s*(%?)", s)
        if not m:
            raise BudgetError(f"cannot read the budget {text!r}; write a relative drop like 1% "
                              "or 0.01%, or an absolute drop in metric units like 0.005")
        value = float(m.group(1))
        if m.group(2):
            return cls(max_drop=value / 100.0, relative=True)
        return cls(max_drop=value, relative=False)

    def allowed_drop(self, baseline_metric: float) -> float:
        return self.max_drop * abs(baseline_metric) if self.relative else self.max_drop

    def accepts(self, drop: float | None, baseline_metric: float) -> bool:
        return drop is not None and drop <= self.allowed_drop(baseline_metric) + 1e-12

    def describe(self) -> str:
        return f"{self.max_drop * 100:g}% of baseline" if self.relative else f"{self.max_drop:g} absolute"

    def to_json_dict(self) -> dict:
        return {"max_drop": self.max_drop, "relative": self.relative}


def drop_of(metric: float, baseline: float, higher_is_better: bool) -> tuple[float, float]:
    """(absolute drop, relative drop) of `metric` against `baseline`."""
    d = baseline - metric if higher_is_better else metric - baseline
    rel = d / abs(baseline) if baseline else (0.0 if d == 0 else math.inf)
    return d, rel
