"""Hutchinson's estimator of Hessian traces by double backward, per parameter tensor: what the
`hessian` sensitivity metric (HAWQ-V2) scores each weight with.

`hutchinson_trace` averages Rademacher probes v . (H v) over one or several loss closures (one
per data batch), in rounds that reuse each batch's gradient graph, until every tensor's estimate
is within a relative standard error or a probe cap; each tensor's result is a `TraceEstimate`.
torch is imported lazily: importing this module works without it.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from trt_mpq.errors import ConfigError

if TYPE_CHECKING:  # pragma: no cover
    import torch


@dataclass(frozen=True)
class TraceEstimate:
    """Hutchinson estimate of the trace of one parameter tensor's diagonal Hessian block."""

    mean: float
    stderr: float  # standard error of `mean` over the iterations
    iterations: int  # probe vectors (per batch)
    rounds: int = 0  # gradient graphs built per batch (each reused by several probes)

    @property
    def rel_stderr(self) -> float:
        if self.stderr == 0:
            return 0.0
        return self.stderr / abs(self.mean) if self.mean else math.inf


def hutchinson_trace(loss_fn: Callable[[], torch.Tensor] | Sequence[Callable[[], torch.Tensor]],
                     params: Sequence[torch.Tensor], *, rel_tol: float = 0.05,
                     min_iter: int = 8, max_iter: int = 100, seed: int = 0,
                     weights: Sequence[float] | None = None,
                     progress: Callable[[int], None] | None = None) -> list[TraceEstimate]:
    """Per-tensor Hessian traces Tr(H_pp) of L = sum_b weights[b] * loss_fn[b]() by Hutchinson's
    estimator: E[v_p . (H v)_p] = Tr(H_pp) for Rademacher v (one v over all `params`; the
    cross-block terms vanish in expectation). H v comes from double backward:
    g = grad(L, params, create_graph=True), H v = grad(g . v).

    `loss_fn` is one closure (one batch) or a sequence of closures, one per data batch;
    `weights` default to equal (1/B). Averaging over batches: every iteration visits every
    batch once, with an independent probe per batch, and its estimate is
    sum_b weights[b] * v_b . H_b v_b. That is unbiased for the trace of the whole subset's
    Hessian, with no data-sampling noise (each batch is used exactly once per iteration), and
    the independent per-batch probes average the probe noise over the batches: for positive
    semi-definite batch Hessians its variance is never above that of one shared probe with the
    accumulated H v, at the same cost. An iteration costs one Hessian-vector product (a
    double backward) per batch.

    Probes come in rounds: per batch, one forward + gradient with `create_graph=True` is reused
    (`retain_graph`) by every probe of the round. The first round has `min_iter` probes; later
    rounds as many as the worst relative standard error predicts are still needed (at most
    `min_iter`). It stops when, for every parameter, stderr <= rel_tol * |mean|, or at
    `max_iter` iterations. `progress(iterations)` is called after every round.
    """
    import torch

    fns = [loss_fn] if callable(loss_fn) else list(loss_fn)
    if not fns:
        raise ConfigError("hutchinson_trace needs at least one loss closure")
    if not params:
        return []
    if not 2 <= min_iter <= max_iter:
        raise ConfigError("Hutchinson iterations: need 2 <= min_iter <= max_iter")
    w = [1.0 / len(fns)] * len(fns) if weights is None else [float(x) for x in weights]
    if len(w) != len(fns):
        raise ConfigError("hutchinson_trace: one weight per loss closure")
    params = list(params)
    gen = torch.Generator(device="cpu")
    gen.manual_seed(int(seed))
    samples: list[np.ndarray] = []  # one row per iteration: the per-parameter estimates
    rounds = 0
    n = 0
    with torch.enable_grad():
        while n < max_iter:
            r = min_iter if n == 0 else min(max_iter - n, _more(samples, rel_tol, min_iter))
            est = np.zeros((r, len(params)))
            for wb, fn in zip(w, fns):
                loss = fn()
                grads = torch.autograd.grad(loss, params, create_graph=True, allow_unused=True)
                live = [i for i, g in enumerate(grads) if g is not None and g.requires_grad]
                for k in range(r):
                    vs = [_rademacher(p, gen) for p in params]
                    if not live:
                        continue
                    hv = torch.autograd.grad([grads[i] for i in live], params,
                                             grad_outputs=[vs[i] for i in live],
                                             retain_graph=k < r - 1, allow_unused=True)
                    for i, (v, h) in enumerate(zip(vs, hv)):
                        if h is not None:
                            est[k, i] += wb * float(torch.sum(v * h.detach()))
                del loss, grads
            rounds += 1
            samples.append(est)
            n += r
            if progress is not None:
                progress(n)
            if _converged(samples, rel_tol):
                break
    allv = np.concatenate(samples)
    mean = allv.mean(axis=0)
    se = allv.std(axis=0, ddof=1) / math.sqrt(len(allv))
    return [TraceEstimate(float(m), float(s), int(len(allv)), rounds) for m, s in zip(mean, se)]


def _rademacher(p: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    import torch

    v = torch.randint(0, 2, p.shape, generator=gen, dtype=torch.int8).to(p.dtype)
    return (v * 2 - 1).to(p.device)


def _rel_se(samples: list[np.ndarray]) -> np.ndarray:
    allv = np.concatenate(samples)
    mean = np.abs(allv.mean(axis=0))
    se = allv.std(axis=0, ddof=1) / math.sqrt(len(allv))
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(se == 0, 0.0, se / mean)


def _converged(samples: list[np.ndarray], rel_tol: float) -> bool:
    return bool(np.all(_rel_se(samples) <= rel_tol))


def _more(samples: list[np.ndarray], rel_tol: float, cap: int) -> int:
    """Probes the worst parameter still needs (SE ~ 1/sqrt(n)), between 1 and `cap`."""
    n = sum(len(s) for s in samples)
    worst = float(np.max(_rel_se(samples)))
    if not math.isfinite(worst):
        return cap
    need = math.ceil(n * (worst / rel_tol) ** 2) - n
    return max(1, min(cap, need))
