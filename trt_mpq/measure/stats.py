"""Paired accuracy statistics: how much worse than the baseline a plan is, with a one-sided upper
confidence bound, computed on the same samples for both (paired).

- Accuracy-type metrics (the metric is the mean of a per-sample 0/1 term, e.g. top-1 correct):
  the drop is (b - c) / n, where b samples the baseline gets right and the plan wrong and c the
  reverse (the discordant pairs). The bound is exact and needs no asymptotics: the largest drop
  an exact unconditional score test of the paired difference does not reject
  (`trt_mpq.measure.paired`), so P(drop > bound) <= alpha whatever the rates. With no discordant
  sample it is the "rule of three": about 3.0 / n at 95%. For a fidelity metric (agreement with
  the baseline's own outputs) the baseline is right on every sample by construction, so only
  the disagreement rate is bounded, at the full alpha (about 3.0 / n with none).
- Any other metric: a paired bootstrap over samples (the same resampled indices for baseline
  and plan), the (1 - alpha) percentile of the resampled drop.

Drops are signed so that positive = the plan is worse (for lower-is-better metrics too);
relative values divide by |baseline metric|.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from trt_mpq.errors import ConfigError
from trt_mpq.measure.paired import paired_lower, paired_upper

BOOTSTRAP_ROUNDS = 2000
#: resamples beyond a bootstrap bound's percentile, at least: its rounds grow with its level
#: (2,000 at 95%, 25,000 at 99.8%), so a bound never rests on a handful of extreme resamples
BOOTSTRAP_TAIL = 50


@dataclass(frozen=True)
class DropBound:
    drop: float  # point estimate, absolute (positive = worse)
    upper: float  # one-sided upper confidence bound on the absolute drop
    baseline_metric: float
    n: int
    confidence: float
    method: str
    worse: int | None = None  # discordant pairs: baseline right, plan wrong
    better: int | None = None  # ... and the reverse
    lower: float | None = None  # one-sided lower bound at the same level (clearly worse?)

    @property
    def rel_drop(self) -> float:
        return self.drop / abs(self.baseline_metric) if self.baseline_metric else 0.0

    @property
    def rel_upper(self) -> float:
        return self.upper / abs(self.baseline_metric) if self.baseline_metric else float("inf")

    def to_json_dict(self) -> dict:
        return {"drop": self.drop, "drop_upper": self.upper, "rel_drop": self.rel_drop,
                "rel_drop_upper": self.rel_upper, "n": self.n, "confidence": self.confidence,
                "drop_lower": self.lower, "method": self.method,
                "discordant_worse": self.worse, "discordant_better": self.better}


def parse_confidence(text: str | float | None) -> float | None:
    """'0.95' / '95%' -> 0.95; 'off' / None -> None (point estimates only)."""
    text = None if text is None else str(text).strip()
    if text is None or text.lower() == "off":
        return None
    try:
        value = float(text[:-1]) / 100 if text.endswith("%") else float(text)
    except ValueError:
        raise ConfigError(f"--confidence must be a level like 0.95 or 95%, or off; got {text!r}"
                          ) from None
    if not 0.5 <= value < 1:
        raise ConfigError(f"--confidence must be in [0.5, 1), got {value:g}")
    return value


def cp_upper(k: int, n: int, alpha: float) -> float:
    """One-sided Clopper-Pearson upper bound on a binomial rate: P(rate > bound) <= alpha."""
    from scipy.stats import beta

    return 1.0 if k >= n else float(beta.ppf(1 - alpha, k + 1, n - k))


def cp_lower(k: int, n: int, alpha: float) -> float:
    from scipy.stats import beta

    return 0.0 if k <= 0 else float(beta.ppf(alpha, k, n - k + 1))


def discordant_bound(base_right: np.ndarray, plan_right: np.ndarray,
                     confidence: float, *, reference: bool = False) -> DropBound:
    """The accuracy drop of a plan, paired, with its exact one-sided upper bound (module doc)
    and lower bound at the same level. `reference`: the baseline is right on every sample by
    construction (a fidelity metric), so the drop is the rate of `worse` alone."""
    base_right = np.asarray(base_right, dtype=bool)
    plan_right = np.asarray(plan_right, dtype=bool)
    if base_right.shape != plan_right.shape or base_right.ndim != 1 or not len(base_right):
        raise ValueError("paired per-sample results must be two equal, non-empty 1-d arrays")
    if reference and not base_right.all():
        raise ValueError("a fidelity metric's baseline must be right on every sample")
    n = len(base_right)
    worse = int(np.sum(base_right & ~plan_right))
    better = int(np.sum(~base_right & plan_right))
    alpha = 1 - confidence
    if reference:
        upper, lower = cp_upper(worse, n, alpha), cp_lower(worse, n, alpha)
        method = "disagreements with the baseline: Clopper-Pearson"
    else:
        upper = paired_upper(worse, better, n, alpha)
        lower = paired_lower(worse, better, n, alpha)
        method = "discordant pairs: exact unconditional score bound (Berger-Boos)"
    return DropBound(drop=(worse - better) / n, upper=upper,
                     baseline_metric=float(np.mean(base_right)), n=n, confidence=confidence,
                     method=method, worse=worse, better=better, lower=lower)


def bootstrap_bound(metric: Callable[[np.ndarray], tuple[float, float]], n: int,
                    confidence: float, higher_is_better: bool, rounds: int = BOOTSTRAP_ROUNDS,
                    seed: int = 0) -> DropBound:
    """`metric(indices) -> (baseline value, plan value)` on those samples; the drop's upper
    bound is the `confidence` percentile over paired bootstrap resamples (at least `rounds`,
    and enough that `BOOTSTRAP_TAIL` resamples lie beyond the percentile)."""
    rounds = max(rounds, math.ceil(BOOTSTRAP_TAIL / (1 - confidence) - 1e-9))
    sign = 1.0 if higher_is_better else -1.0
    base, plan = metric(np.arange(n))
    rng = np.random.default_rng(seed)
    drops = np.empty(rounds)
    for r in range(rounds):
        b, p = metric(rng.integers(0, n, n))
        drops[r] = sign * (b - p)
    return DropBound(drop=sign * (base - plan), upper=float(np.quantile(drops, confidence)),
                     baseline_metric=float(base), n=n, confidence=confidence,
                     method=f"paired bootstrap over samples ({rounds} resamples)",
                     lower=float(np.quantile(drops, 1 - confidence)))


def best_case_upper(n: int, confidence: float, *, reference: bool = False) -> float:
    """The smallest upper bound `discordant_bound` can give on n samples: that of a plan that
    changes no sample's result (about 3.0 / n at 95%, for a fidelity metric too). A budget
    below it cannot be certified on n samples, whatever the plan."""
    alpha = 1 - confidence
    return cp_upper(0, n, alpha) if reference else paired_upper(0, 0, n, alpha)


def samples_needed(allowed: float, confidence: float, *, reference: bool = False) -> int:
    """The fewest samples on which a plan that changes no result certifies `allowed`."""
    if allowed <= 0:
        raise ValueError("a drop of 0 or less cannot be certified on any number of samples")
    lo, hi = 1, 2
    while best_case_upper(hi, confidence, reference=reference) > allowed:
        lo, hi = hi, hi * 2
    while lo < hi:
        mid = (lo + hi) // 2
        if best_case_upper(mid, confidence, reference=reference) <= allowed:
            hi = mid
        else:
            lo = mid + 1
    return lo


__all__ = ["DropBound", "best_case_upper", "bootstrap_bound", "cp_lower", "cp_upper",
           "discordant_bound", "parse_confidence", "samples_needed"]
