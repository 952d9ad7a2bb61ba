"""Task metrics: what judges a plan's outputs (`Metric`), the usual one (`accuracy`) and the
fidelity metrics that compare with the unquantized model's own outputs and need no labels
(`agreement`, `kl_divergence`; `FIDELITY_METRICS`)."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

import numpy as np

from trt_mpq.errors import DataError, user_code

Outputs = Mapping[str, np.ndarray]


@dataclass(frozen=True)
class Metric:
    """A task metric computed from the model's outputs over a whole split.

    `kind` tells output-divergence sensitivity how to compare outputs: "logits" (softmax + KL)
    or "regression" (MSE).
    """

    name: str
    fn: Callable[[Outputs, np.ndarray | None], float] = field(repr=False, compare=False)
    higher_is_better: bool = True
    output: str | None = None  # the output the metric reads (None: the first)
    kind: str = "logits"
    #: per-sample terms whose mean is the metric (accuracy: 1 where top-1 is right), if it is
    #: such a mean: drops are then bounded exactly on discordant pairs, else by bootstrap
    per_sample: Callable[[Outputs, np.ndarray | None], np.ndarray] | None = field(
        default=None, repr=False, compare=False)
    #: a fidelity metric: it compares the outputs with the baseline's own outputs on the same
    #: samples (passed where labels would be), so it needs no labels
    reference: bool = False
    #: per-sample terms are 0/1 (accuracy, agreement): drops get exact bounds, and whether a
    #: split can certify a budget is known before any run (`trt_mpq.measure.stats`)
    binary: bool = False

    def __call__(self, outputs: Outputs, labels) -> float:
        with user_code(f"the task metric {self.name!r}"):  # the task's code, not trt-mpq's
            return float(self.fn(outputs, labels))

    def target(self, labels: np.ndarray | None, reference: Outputs | None):
        """What the metric compares outputs with: the baseline's outputs for a fidelity metric,
        else the labels."""
        if self.reference:
            if reference is None:
                raise ValueError(f"{self.name} compares with the baseline's outputs; give them")
            return reference
        return labels


def accuracy(output: str | None = None) -> Metric:
    """Top-1 accuracy of the argmax of `output` (or the first output) against integer labels."""

    def right(outputs: Outputs, labels: np.ndarray | None) -> np.ndarray:
        if labels is None:
            raise DataError("accuracy needs labels; the split has none")
        logits = outputs[output] if output else next(iter(outputs.values()))
        return np.argmax(logits, axis=-1) == labels

    def fn(outputs: Outputs, labels: np.ndarray | None) -> float:
        return float(np.mean(right(outputs, labels)))

    return Metric(name="accuracy", fn=fn, output=output, kind="logits", per_sample=right,
                  binary=True)


def _logits(outputs: Outputs, output: str | None) -> np.ndarray:
    return np.asarray(outputs[output] if output else next(iter(outputs.values())))


def agreement(output: str | None = None) -> Metric:
    """Top-1 agreement with the baseline's own outputs (a fidelity metric: no labels needed).
    The baseline agrees with itself on every sample, so its value is 1 and a plan's drop is
    its disagreement rate."""

    def same(outputs: Outputs, reference: Outputs) -> np.ndarray:
        return np.argmax(_logits(outputs, output), -1) == np.argmax(_logits(reference, output),
                                                                    -1)

    return Metric(name="agreement", fn=lambda o, r: float(np.mean(same(o, r))), output=output,
                  kind="logits", per_sample=same, reference=True, binary=True)


def kl_divergence(output: str | None = None) -> Metric:
    """Mean KL(softmax(baseline) || softmax(plan)) in nats over samples (a fidelity metric;
    lower is better, 0 for the baseline, so its budget must be absolute, e.g. 0.001)."""

    def per_sample(outputs: Outputs, reference: Outputs) -> np.ndarray:
        from scipy.special import log_softmax

        lq = log_softmax(_logits(outputs, output).astype(np.float64), axis=-1)
        lp = log_softmax(_logits(reference, output).astype(np.float64), axis=-1)
        return np.sum(np.exp(lp) * (lp - lq), axis=-1)

    return Metric(name="kl", fn=lambda o, r: float(np.mean(per_sample(o, r))),
                  higher_is_better=False, output=output, kind="logits", per_sample=per_sample,
                  reference=True)


FIDELITY_METRICS: dict[str, Callable[[str | None], Metric]] = {
    "agreement": agreement, "kl": kl_divergence}


__all__ = ["FIDELITY_METRICS", "Metric", "Outputs", "accuracy", "agreement", "kl_divergence"]
