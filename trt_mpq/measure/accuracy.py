"""Task accuracy on the real artifact's outputs."""

from __future__ import annotations

import numpy as np
from tqdm.auto import tqdm

from trt_mpq.backends.base import Runner
from trt_mpq.errors import NonFiniteOutputError, user_code
from trt_mpq.measure.stats import DropBound, bootstrap_bound, discordant_bound
from trt_mpq.task import Metric, Split


def compute_outputs(runner: Runner, split: Split, batch_size: int, *, desc: str = "",
                    progress: bool | None = None) -> dict[str, np.ndarray]:
    """All outputs of `runner` over `split`, concatenated along axis 0. Raises
    `NonFiniteOutputError` if any output is not finite (`MeasurementError` if a run fails)."""
    parts: dict[str, list[np.ndarray]] = {}
    with tqdm(total=len(split), desc=desc or "infer", unit="sample", leave=False,
              disable=None if progress is None else not progress) as bar:
        for feed, sl in split.batches(batch_size):
            for name, value in runner.run(feed).items():
                parts.setdefault(name, []).append(np.asarray(value))
            bar.update(sl.stop - sl.start)
    outputs = {k: np.concatenate(v, axis=0) for k, v in parts.items()}
    for name, value in outputs.items():
        if np.issubdtype(value.dtype, np.floating) and not np.all(np.isfinite(value)):
            bad = int(np.sum(~np.isfinite(value)))
            raise NonFiniteOutputError(f"output {name!r} has {bad} non-finite value(s) (NaN/Inf)")
    return outputs


def drop_bound(metric: Metric, base_outputs: dict[str, np.ndarray],
               plan_outputs: dict[str, np.ndarray], labels: np.ndarray | None,
               confidence: float) -> DropBound:
    """The plan's drop against the baseline on the same samples, with its one-sided upper (and
    lower) bound at `confidence` (see `trt_mpq.measure.stats`): exact on discordant pairs when
    the metric is the mean of a per-sample 0/1 term (accuracy, agreement), a paired bootstrap
    otherwise. A fidelity metric compares with `base_outputs` (`labels` is not read)."""
    n = len(next(iter(base_outputs.values())))
    target = metric.target(labels, base_outputs)
    if metric.per_sample is not None:
        with user_code(f"the task metric {metric.name!r}"):
            b = np.asarray(metric.per_sample(base_outputs, target), dtype=np.float64)
            p = np.asarray(metric.per_sample(plan_outputs, target), dtype=np.float64)
        if metric.higher_is_better and np.isin(b, (0.0, 1.0)).all() and \
                np.isin(p, (0.0, 1.0)).all():
            return discordant_bound(b == 1.0, p == 1.0, confidence, reference=metric.reference)
        return bootstrap_bound(lambda idx: (float(b[idx].mean()), float(p[idx].mean())), n,
                               confidence, metric.higher_is_better)

    def on(idx: np.ndarray) -> tuple[float, float]:
        tgt = (None if labels is None else labels[idx]) if not metric.reference else \
            {k: v[idx] for k, v in base_outputs.items()}
        return (metric({k: v[idx] for k, v in base_outputs.items()}, tgt),
                metric({k: v[idx] for k, v in plan_outputs.items()}, tgt))

    return bootstrap_bound(on, n, confidence, metric.higher_is_better, rounds=500)
