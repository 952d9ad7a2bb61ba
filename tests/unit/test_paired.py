"""The exact paired bound (trt_mpq.measure.paired): its coverage computed exactly, by enumerating
every outcome on small sample counts, the property its tail computation relies on, and its
tightness against the Clopper-Pearson + Bonferroni bound it replaced."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.special import gammaln

from trt_mpq.measure.paired import GAMMA_SHARE, paired_lower, paired_upper, score
from trt_mpq.measure.stats import cp_lower, cp_upper


def _worst_miss(n: int, alpha: float, grid: int = 41) -> tuple[float, tuple[float, float]]:
    """The largest probability, over a grid of (p_worse, p_better), that the upper bound lies
    below the true drop: exact, summed over every outcome (w, b) of n samples."""
    w, b = np.array([(w, b) for w in range(n + 1) for b in range(n + 1 - w)]).T
    upper = np.array([paired_upper(int(x), int(y), n, alpha) for x, y in zip(w, b)])
    log_coef = gammaln(n + 1) - gammaln(w + 1) - gammaln(b + 1) - gammaln(n - w - b + 1)
    worst, where = 0.0, (0.0, 0.0)
    for p_w in np.linspace(0, 1, grid):
        for p_b in np.linspace(0, 1 - p_w, grid):
            with np.errstate(divide="ignore", invalid="ignore"):
                log_p = (log_coef + np.where(w > 0, w * np.log(p_w), 0.0)
                         + np.where(b > 0, b * np.log(p_b), 0.0)
                         + np.where(n - w - b > 0, (n - w - b) * np.log1p(-p_w - p_b), 0.0))
            prob = np.exp(np.nan_to_num(log_p, nan=-np.inf))
            miss = float(prob[upper < p_w - p_b - 1e-12].sum())
            if miss > worst:
                worst, where = miss, (float(p_w), float(p_b))
    return worst, where


@pytest.mark.parametrize("n,alpha", [(12, 0.05), (30, 0.05), (30, 0.2)])
def test_the_bound_holds_at_its_level_for_every_rate(n, alpha):
    """Exact coverage: whatever the two rates, the bound misses the true drop with probability
    at most alpha (over 41 x 41 rate pairs, every outcome of n samples enumerated)."""
    worst, where = _worst_miss(n, alpha)
    assert worst <= alpha, f"misses {worst:.4f} > {alpha} at p_worse, p_better = {where}"
    assert worst > alpha / 3, "the bound should not be far more conservative than its level"


def test_the_score_is_nondecreasing_in_worse_for_a_fixed_discordant_count():
    """The p-value's tail for each discordant count d is the splits w = 0 .. k (paired.py
    counts them by bisection), which needs the score nondecreasing in w."""
    rng = np.random.default_rng(0)
    for n in (5, 20, 200, 5312, 50000):
        for d in {*range(min(n, 40) + 1), *rng.integers(0, n + 1, 20).tolist()}:
            w = np.arange(d + 1)
            for delta in np.concatenate([np.linspace(-0.99, 0.99, 67),
                                         rng.uniform(-0.05, 0.05, 20)]):
                z = score(w, d - w, n, delta)
                assert np.all(np.diff(z) >= -1e-12), (n, d, delta)


@pytest.mark.parametrize("worse,better,n,alpha,old_excess", [
    (59, 52, 5312, 0.02, 0.0018),  # minilm-sentiment's first finalist, 2026-12-05
    (10, 2, 5312, 0.05, 0.0005), (20, 12, 400, 0.05, 0.01), (500, 400, 50000, 0.02, 0.0005)])
def test_the_bound_is_tighter_than_clopper_pearson_with_bonferroni(worse, better, n, alpha,
                                                                   old_excess):
    upper = paired_upper(worse, better, n, alpha)
    old = cp_upper(worse, n, alpha / 2) - cp_lower(better, n, alpha / 2)
    assert (worse - better) / n < upper < old - old_excess
    lower = paired_lower(worse, better, n, alpha)
    assert lower < (worse - better) / n
    assert lower == pytest.approx(-paired_upper(better, worse, n, alpha))


def test_no_discordant_sample_gives_the_one_rate_bound():
    """With no sample changed the bound is that of one rate at the full alpha, 3.0 / n at 95%:
    the p-value is the chance of no worse sample at p_better = 0 (plus Berger-Boos's gamma)."""
    level = 0.05 * (1 - GAMMA_SHARE)
    for n in (100, 1000, 5312):
        assert paired_upper(0, 0, n, 0.05) == pytest.approx(1 - level ** (1 / n), rel=1e-3)
    assert paired_upper(7, 0, 7, 0.05) == 1.0
    with pytest.raises(ValueError, match="do not fit"):
        paired_upper(5, 6, 10, 0.05)
