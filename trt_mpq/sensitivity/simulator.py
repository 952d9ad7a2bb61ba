"""The numerical effect of a plan, for sensitivity metrics: materialize it and run it on ONNX
Runtime (CPU), whatever the target backend. Not a latency measurement."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import onnx

from trt_mpq.calib import Ranges
from trt_mpq.model.groups import Group
from trt_mpq.plan import Plan
from trt_mpq.qdq import Dialect, materialize
from trt_mpq.task import Split

Simulate = Callable[[Plan, Split], dict[str, np.ndarray]]


def make_simulator(model: onnx.ModelProto, groups: list[Group], ranges: Ranges,
                   dialect: Dialect, batch_size: int) -> Simulate:
    """run(plan, split) -> every output of the materialized plan over `split`, concatenated."""
    import onnxruntime as ort

    from trt_mpq.backends.ort import QDQ_DISABLED_OPTIMIZERS, has_qdq

    def run(plan: Plan, split: Split) -> dict[str, np.ndarray]:
        graph = materialize(model, groups, plan, ranges, dialect)
        so = ort.SessionOptions()
        so.log_severity_level = 3
        sess = ort.InferenceSession(graph.SerializeToString(), so,
                                    providers=["CPUExecutionProvider"],
                                    disabled_optimizers=list(QDQ_DISABLED_OPTIMIZERS)
                                    if has_qdq(graph) else [])
        names = [o.name for o in sess.get_outputs()]
        parts: dict[str, list] = {n: [] for n in names}
        for feed, _ in split.batches(batch_size):
            for n, v in zip(names, sess.run(None, feed)):
                parts[n].append(v)
        return {n: np.concatenate(v) for n, v in parts.items()}

    return run
