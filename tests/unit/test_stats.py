"""Paired drop bounds: exact binomial cases, coverage by simulation against known error rates,
the bootstrap for other metrics, and the dispatch by metric."""

import numpy as np
import pytest
from scipy.stats import binom

from trt_mpq.errors import ConfigError
from trt_mpq.measure.accuracy import drop_bound
from trt_mpq.measure.paired import paired_upper
from trt_mpq.measure.stats import (
    bootstrap_bound,
    cp_lower,
    cp_upper,
    discordant_bound,
    parse_confidence,
)
from trt_mpq.task import Metric, accuracy


@pytest.mark.parametrize("k,n", [(0, 1000), (3, 50), (17, 400), (0, 30000)])
def test_clopper_pearson_bounds_are_the_binomial_tail_inversions(k, n):
    alpha = 0.025
    up = cp_upper(k, n, alpha)
    assert binom.cdf(k, n, up) == pytest.approx(alpha, rel=1e-6)  # P(X <= k | up) = alpha
    if k:
        lo = cp_lower(k, n, alpha)
        assert binom.sf(k - 1, n, lo) == pytest.approx(alpha, rel=1e-6)  # P(X >= k | lo)
    assert cp_lower(0, n, alpha) == 0.0 and cp_upper(n, n, alpha) == 1.0


def test_no_discordant_sample_is_the_rule_of_three():
    right = np.ones(1000, bool)
    b = discordant_bound(right, right, 0.95)
    assert b.drop == 0 and b.worse == b.better == 0 and b.n == 1000
    assert b.upper == pytest.approx(paired_upper(0, 0, 1000, 0.05))  # ~3.0 / n
    assert 2.9 / 1000 < b.upper < 3.1 / 1000
    assert b.rel_upper == pytest.approx(b.upper)  # baseline accuracy 1


def test_discordant_counts_and_point_estimate():
    base = np.array([1, 1, 1, 0, 0, 1, 1, 0], bool)
    plan = np.array([1, 0, 0, 1, 0, 1, 1, 0], bool)
    b = discordant_bound(base, plan, 0.95)
    assert (b.worse, b.better) == (2, 1) and b.drop == pytest.approx(1 / 8)
    assert b.upper == pytest.approx(paired_upper(2, 1, 8, 0.05))
    assert b.lower == pytest.approx(-paired_upper(1, 2, 8, 0.05))
    assert b.method.startswith("discordant pairs: exact unconditional")
    assert b.baseline_metric == pytest.approx(5 / 8)
    with pytest.raises(ValueError):
        discordant_bound(base, plan[:4], 0.95)


@pytest.mark.parametrize("p_worse,p_better,n", [(0.0, 0.0, 500), (0.01, 0.0, 300),
                                                (0.05, 0.03, 400), (0.002, 0.004, 2000)])
def test_discordant_bound_covers_the_true_drop(p_worse, p_better, n):
    """Simulated paired outcomes with known discordance rates: the 95% bound is at or above
    the true drop in about 95% of trials or more. The bound is exact, not conservative (its
    exact coverage at 0.05/0.03 on 400 samples is 95.12%, tests/unit/test_paired.py checks it by
    enumeration), so 1,500 seeded trials allow their sampling error (0.56%) below 95%."""
    rng = np.random.default_rng(7)
    true = p_worse - p_better
    trials, covered = 1500, 0
    for _ in range(trials):
        u = rng.random(n)
        base = np.ones(n, bool)
        plan = np.ones(n, bool)
        plan[u < p_worse] = False  # baseline right, plan wrong
        both = (u >= p_worse) & (u < p_worse + p_better)
        base[both] = False  # baseline wrong, plan right
        covered += discordant_bound(base, plan, 0.95).upper >= true - 1e-12
    assert covered / trials >= 0.94


def test_bootstrap_bound_covers_a_continuous_metric():
    """Mean squared error of two noisy predictors (lower is better): the plan is worse by a
    known amount; the bootstrap bound covers it in about 95% of trials."""
    rng = np.random.default_rng(3)
    n, trials, covered = 400, 300, 0
    true = 0.04 - 0.01  # E[(0.2 e)^2] - E[(0.1 e)^2] with e ~ N(0, 1)
    for t in range(trials):
        e1, e2 = rng.normal(size=n), rng.normal(size=n)
        base_err, plan_err = (0.1 * e1) ** 2, (0.2 * e2) ** 2

        def metric(idx, b=base_err, p=plan_err):
            return float(b[idx].mean()), float(p[idx].mean())
        bound = bootstrap_bound(metric, n, 0.95, higher_is_better=False, rounds=400, seed=t)
        covered += bound.upper >= true
    assert covered / trials >= 0.90  # the bootstrap is approximate; exact is tested above


def test_drop_bound_dispatches_by_metric():
    rng = np.random.default_rng(0)
    logits = rng.normal(size=(200, 3))
    labels = logits.argmax(1)
    worse = logits.copy()
    worse[:10] = -worse[:10]  # flips ten predictions
    acc = drop_bound(accuracy(), {"y": logits}, {"y": worse}, labels, 0.95)
    assert acc.method.startswith("discordant pairs") and acc.worse == 10 and acc.better == 0
    assert acc.drop == pytest.approx(10 / 200) and acc.upper > acc.drop

    target = rng.normal(size=200)
    mse = Metric(name="-mse", fn=lambda out, lab: -float(np.mean((out["y"] - lab) ** 2)))
    base = {"y": target + 0.1 * rng.normal(size=200)}
    plan = {"y": target + 0.3 * rng.normal(size=200)}
    other = drop_bound(mse, base, plan, target, 0.95)
    assert other.method.startswith("paired bootstrap") and other.n == 200
    assert other.upper >= other.drop > 0


def test_parse_confidence():
    assert parse_confidence("0.95") == 0.95 and parse_confidence("99%") == pytest.approx(0.99)
    assert parse_confidence("off") is None and parse_confidence(None) is None
    for bad in ("1.5", "30%", "high"):
        with pytest.raises(ConfigError):
            parse_confidence(bad)


def test_best_case_upper_is_the_bound_of_a_plan_that_changes_nothing():
    from trt_mpq.measure.stats import best_case_upper

    for n in (300, 5312, 30000):
        right = np.ones(n, bool)
        assert best_case_upper(n, 0.95) == pytest.approx(discordant_bound(right, right, 0.95).upper)
    # 0.01% of an accuracy near 1 needs about 37,000 samples at 95% (3.7 / n)
    assert best_case_upper(30000, 0.95) > 1e-4 > best_case_upper(40000, 0.95)


def test_bootstrap_resamples_grow_with_the_level():
    """At least BOOTSTRAP_TAIL resamples lie beyond the percentile a bound is read at: 2,000 at
    95%, 25,000 at 99.8% (an early look's or a late holdout try's level)."""
    import numpy as np

    from trt_mpq.measure.stats import BOOTSTRAP_TAIL

    calls = []
    values = np.random.default_rng(0).normal(size=300)

    def metric(idx):
        calls.append(1)
        return 0.0, float(values[idx].mean())

    for confidence, rounds in [(0.95, 2000), (0.998, 25000)]:
        calls.clear()
        bound = bootstrap_bound(metric, 300, confidence, higher_is_better=True)
        assert len(calls) == rounds + 1 and (1 - confidence) * rounds >= BOOTSTRAP_TAIL - 1e-9
        assert f"({rounds} resamples)" in bound.method
