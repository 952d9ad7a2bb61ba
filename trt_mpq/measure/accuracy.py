"""Task accuracy on the real artifact's outputs."""

from __future__ import annotations

import numpy as np
from tqdm.auto import tqdm

from trt_mpq.backends.base import Runner
from trt_mpq.errors import NonFiniteOutputError
from trt_mpq.task import Split


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
