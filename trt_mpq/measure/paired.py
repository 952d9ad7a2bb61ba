"""The exact upper confidence bound on a paired difference of two rates: how much more often a
plan gets a sample wrong that the baseline gets right (`worse`) than the reverse (`better`).

Each of the n samples is "worse" with probability p_w, "better" with p_b, or neither; the drop
is delta = p_w - p_b. Its one-sided upper bound at level 1 - alpha is the largest delta that an
exact unconditional test does not reject:

- the test statistic is Tango's score statistic for the paired difference (Tango 1998, Stat Med
  17:891), (w - b - n delta) / sqrt(n (2 q + delta (1 - delta))), q the maximum-likelihood p_b
  under delta: small values speak against the drop being delta or more;
- its p-value is the largest probability, over the nuisance parameter pi = p_w + p_b, that a
  trinomial sample scores as low as the observed one (the exact distribution, summed over every
  outcome with non-negligible probability; the neglected mass is added to the p-value);
- the largest is taken over a confidence interval for pi at level 1 - gamma (Berger & Boos 1994),
  gamma = `GAMMA_SHARE` x alpha, which is added to the p-value; the supremum over that interval
  is taken on a grid of `NUISANCE_GRID` values including its ends, as scipy's barnard_exact
  does.

It spends alpha once on the difference where the bound it replaces (Clopper-Pearson on both
rates, Bonferroni) spent alpha/2 on each rate and added their widths: on 5,312 samples with 59
worse and 52 better at 98% it gives 0.55% against 0.80% (the normal approximation: 0.54%), and
3.0 / n rather than 3.7 / n at 95% when no sample changes. Its coverage is checked exactly, by
enumerating every outcome, in tests/unit/test_paired.py.
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np

#: share of alpha spent on the nuisance parameter's confidence interval (Berger-Boos gamma)
GAMMA_SHARE = 0.02
#: nuisance values between the interval's ends at which the tail probability is evaluated
NUISANCE_GRID = 32
#: outcomes less likely than this (per tail of each binomial) are left out, their mass added
NEGLIGIBLE = 1e-12
#: the bound's resolution (absolute): the bisection stops within it, on the safe side
RESOLUTION = 1e-6


def _cp(k: int, n: int, alpha: float, upper: bool) -> float:
    from scipy.stats import beta

    if upper:
        return 1.0 if k >= n else float(beta.ppf(1 - alpha, k + 1, n - k))
    return 0.0 if k <= 0 else float(beta.ppf(alpha, k, n - k + 1))


def score(worse, better, n: int, delta: float) -> np.ndarray:
    """Tango's score statistic of (worse, better) on n samples against a drop of `delta`."""
    w = np.asarray(worse, dtype=float)
    b = np.asarray(better, dtype=float)
    a2 = 2.0 * n
    b1 = -w - b + (2.0 * n - w + b) * delta
    c0 = -b * delta * (1.0 - delta)
    q = (np.sqrt(np.maximum(b1 * b1 - 4.0 * a2 * c0, 0.0)) - b1) / (2.0 * a2)
    var = n * (2.0 * q + delta * (1.0 - delta))
    num = w - b - n * delta
    with np.errstate(divide="ignore", invalid="ignore"):
        z = num / np.sqrt(var)
    return np.where(var > 0, z, np.where(num > 0, np.inf, np.where(num < 0, -np.inf, 0.0)))


def _rows(n: int, lo: float, hi: float) -> np.ndarray:
    """The discordant counts d that have non-negligible probability for some nuisance value in
    [lo, hi]: the outcomes the p-value sums over (the mass outside is added to it)."""
    from scipy.stats import binom

    d_lo = int(binom.ppf(NEGLIGIBLE, n, lo)) - 1 if lo > 0 else 0
    d_hi = int(binom.isf(NEGLIGIBLE, n, hi)) + 1 if hi < 1 else n
    return np.arange(max(d_lo, 0), min(d_hi, n) + 1)


def _low_counts(rows: np.ndarray, n: int, delta: float, observed: float) -> np.ndarray:
    """For each discordant count d, how many splits w = 0, 1, ... score at or below `observed`
    (the score is nondecreasing in w for a fixed d, tests/unit/test_paired.py): those outcomes
    are the p-value's tail."""
    lo = np.full(len(rows), -1)  # score(lo) <= observed, or lo = -1
    hi = rows + 1  # score(hi) > observed, or hi = d + 1
    while np.any(hi - lo > 1):
        mid = (lo + hi) // 2
        ok = score(mid, rows - mid, n, delta) <= observed
        lo, hi = np.where(ok, mid, lo), np.where(ok, hi, mid)
    return lo + 1


def _p_value(worse: int, better: int, n: int, delta: float, gamma: float,
             nuisance: tuple[float, float], rows: np.ndarray) -> float:
    """The Berger-Boos p-value of "the drop is `delta` or more" (module doc)."""
    from scipy.stats import binom

    lo, hi = max(nuisance[0], abs(delta)), nuisance[1]
    if lo > hi:  # no nuisance value in its interval is compatible with delta
        return gamma
    observed = float(score(worse, better, n, delta)) + 1e-9  # ties count against delta
    below = _low_counts(rows, n, delta, observed) - 1  # the tail: w <= below, for each d
    pis = np.unique(np.concatenate([np.linspace(lo, hi, NUISANCE_GRID), [lo, hi]]))[:, None]
    with np.errstate(divide="ignore", invalid="ignore"):
        thetas = np.where(pis > 0, np.clip((pis + delta) / (2 * pis), 0.0, 1.0), 0.5)
    weights = binom.pmf(rows[None, :], n, pis)
    tails = np.where(below >= 0, binom.cdf(below[None, :], rows[None, :], thetas), 0.0)
    neglected = np.maximum(1.0 - weights.sum(axis=1), 0.0)
    worst = float(np.max(np.sum(weights * tails, axis=1) + neglected))
    return min(worst + gamma, 1.0)


@lru_cache(maxsize=4096)
def paired_upper(worse: int, better: int, n: int, alpha: float) -> float:
    """The one-sided upper bound at level 1 - alpha on p_w - p_b (module doc): the drop is above
    it with probability at most alpha, whatever p_w and p_b."""
    if not (0 <= worse and 0 <= better and worse + better <= n and n > 0):
        raise ValueError(f"counts {worse} worse and {better} better do not fit {n} samples")
    if not 0 < alpha < 1:
        raise ValueError("alpha must be in (0, 1)")
    if worse == n:
        return 1.0
    gamma = GAMMA_SHARE * alpha
    d = worse + better
    nuisance = (_cp(d, n, gamma / 2, upper=False), _cp(d, n, gamma / 2, upper=True))
    lo = (worse - better) / n
    # a first guess above the bound (Bonferroni at alpha/4 per rate), widened if it is not
    hi = min(1.0, _cp(worse, n, alpha / 4, True) - _cp(better, n, alpha / 4, False) + 1 / n)
    rows = _rows(n, *nuisance)
    while hi < 1.0 and _p_value(worse, better, n, hi, gamma, nuisance, rows) > alpha:
        lo, hi = hi, min(1.0, 2 * hi - lo + 1 / n)
    while hi - lo > RESOLUTION:
        mid = (lo + hi) / 2
        if _p_value(worse, better, n, mid, gamma, nuisance, rows) <= alpha:
            hi = mid
        else:
            lo = mid
    return hi


def paired_lower(worse: int, better: int, n: int, alpha: float) -> float:
    """The one-sided lower bound at level 1 - alpha on p_w - p_b: the upper bound of the
    reverse difference, negated."""
    return -paired_upper(better, worse, n, alpha)


__all__ = ["GAMMA_SHARE", "NUISANCE_GRID", "paired_lower", "paired_upper", "score"]
