"""What a search sees: `Evaluation` (one measured plan) and `Budget` (what "in budget" means)."""

from __future__ import annotations

import math
import re
from dataclasses import dataclass

from trt_mpq.errors import BudgetError
from trt_mpq.results import Evaluation, Status


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
        return (f"{self.max_drop * 100:g}% of baseline" if self.relative
                else f"{self.max_drop:g} absolute")

    def to_json_dict(self) -> dict:
        return {"max_drop": self.max_drop, "relative": self.relative}


def drop_of(metric: float, baseline: float, higher_is_better: bool) -> tuple[float, float]:
    """(absolute drop, relative drop) of `metric` against `baseline`."""
    d = baseline - metric if higher_is_better else metric - baseline
    rel = d / abs(baseline) if baseline else (0.0 if d == 0 else math.inf)
    return d, rel


__all__ = ["Budget", "Evaluation", "Status", "drop_of"]
