"""The `boundary` strategy's accuracy side: the interval of t (the summed estimated sensitivity
of the options a plan lowers, the program's accuracy constraint) that brackets the accuracy
budget, bisected on *measured* accuracy.

lo is the largest t settled in budget, hi the smallest settled out; the strategy decides how a
step settles (a plan measured in budget, or one that cannot improve the answer because it was
predicted or timed slower than the fastest in-budget plan, settles it in). The next t is a
secant step where the accept function says how far in and out of budget the plans at the ends
measured (a `BudgetAccept`), else the geometric midpoint (`BudgetInterval.step`).
"""

from __future__ import annotations

import math
from collections.abc import Iterable

from trt_mpq.results import Evaluation
from trt_mpq.search.base import Accept, BudgetAccept


class BudgetInterval:
    """[lo, hi] on t, from [0, `hi`], and how far in or out of budget the plans at its ends
    measured."""

    def __init__(self, hi: float, accept: Accept) -> None:
        self.lo, self.hi = 0.0, hi
        # where the accept function says how far in or out of budget a plan measured (a
        # BudgetAccept), t -> that statistic for the plans measured at t: the secant steps
        self.steer = accept if isinstance(accept, BudgetAccept) else None
        self.stat_at: dict[float, float] = {}
        self.sides: list[bool] = []  # how each t step settled, for the secant's safeguard
        self.secant_steps = 0

    def measured(self, at: Iterable[float], evaluation: Evaluation) -> None:
        """Remember how far in or out of budget `evaluation` measured, for each t in `at` (the
        t its plan stands for)."""
        stat = self.steer.statistic(evaluation) if self.steer and evaluation.ok else None
        for x in at:
            if stat is not None and math.isfinite(stat):
                self.stat_at[x] = stat

    def settle(self, t: float, in_budget: bool) -> None:
        if in_budget:
            self.lo = max(self.lo, t)
        else:
            self.hi = min(self.hi, t)

    def settle_step(self, t: float, in_budget: bool) -> None:
        """Settle a bisection step at t, and remember which side it settled (the secant's
        safeguard reads the last two)."""
        self.settle(t, in_budget)
        self.sides.append(in_budget)

    def step(self, low_end: float) -> float:
        """The next t in [low_end, hi]. Where the accept function says how far out of budget the
        plan at hi measured (and how far in the one at lo, else 0 at t=0): the secant, the t
        where the line through them meets the allowed drop (drops grow about in proportion to t,
        the lowered options' summed sensitivity), kept within the middle 80% of the interval on
        a log scale so that each step narrows it; after two steps that settled the same side
        (noise, or a curved drop), and where nothing says the distance, the geometric midpoint.
        resnet-digits at 0.1%: the all-lowered plan measured just out (bound 0.12% against
        0.10%), so the answer lies just below t_low, where geometric steps from the smallest
        sensitivity took five measurements to come back up."""
        geo = math.sqrt(low_end * self.hi)
        if self.steer is None or self.sides[-2:] in ([True, True], [False, False]):
            return geo
        s_hi = self.stat_at.get(self.hi)
        if s_hi is None or s_hi <= self.steer.allowed:
            return geo
        t_in, s_in = ((self.lo, self.stat_at[self.lo]) if self.lo in self.stat_at
                      else (0.0, 0.0))
        if s_hi <= s_in or t_in >= self.hi:
            return geo
        t = t_in + (self.steer.allowed - s_in) * (self.hi - t_in) / (s_hi - s_in)
        a, b = math.log(low_end), math.log(self.hi)
        x = min(max(math.log(t) if t > 0 else a, a + 0.1 * (b - a)), b - 0.1 * (b - a))
        self.secant_steps += 1
        return math.exp(x)
