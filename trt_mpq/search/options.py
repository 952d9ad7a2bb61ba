"""Runtime options as part of the plan: after the precision search, the fastest in-budget plans
are measured again with each runtime option the backend proposes for them (one option changed
at a time), so the graph optimizer's choices (ONNX Runtime's fusions, TensorRT's builder level,
CUDA-graph replay) are chosen by measurement like the precisions are.

The strategy sees the backend only through `space(plan) -> {option: values}`, which the search
pipeline supplies; it never imports a backend.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence

from trt_mpq.plan import Plan
from trt_mpq.results import Evaluation
from trt_mpq.search.base import Accept, Proposal, Strategy

Space = Callable[[Plan], Mapping[str, Sequence[str]]]


class OptionSweep(Strategy):
    """One batch: for each of the `candidates` fastest in-budget plans among `evaluated` (other
    than `exclude`, the baseline) that carry no options yet, the plan with each non-default
    value of each option `space(plan)` proposes. A plan measured no faster than the baseline
    is a candidate too: an option may be what makes it faster."""

    name = "options"
    latency_first = True

    def __init__(self, evaluated: Sequence[Evaluation], space: Space, accept: Accept,
                 candidates: int = 2, exclude: Plan | None = None) -> None:
        super().__init__()
        if candidates < 0:
            raise ValueError("candidates must be >= 0")
        ranked = sorted((e for e in evaluated if accept(e) and not e.plan.options
                         and e.plan != exclude and e.latency_ratio is not None),
                        key=lambda e: e.latency_ratio)
        self.bases = ranked[:candidates]
        self._space = space
        self._pending: dict[str, tuple[Plan, str]] | None = None
        self.proposed: list[tuple[Plan, str]] = []

    def ask(self) -> list[Proposal]:
        if self._pending is None:
            self._pending = {}
            for base in self.bases:
                for option, values in self._space(base.plan).items():
                    for value in values:
                        if not value:
                            continue
                        plan = base.plan.with_options({option: value})
                        label = f"{base.label} + {option}={value}"
                        self._pending.setdefault(plan.digest, (plan, label))
            self.proposed = list(self._pending.values())
        return list(self._pending.values())

    def tell(self, plan: Plan, evaluation: Evaluation) -> None:
        if self._pending is None or plan.digest not in self._pending:
            raise ValueError("tell() got a plan this strategy did not ask for")
        del self._pending[plan.digest]
        self.evaluations += 1


__all__ = ["OptionSweep", "Space"]
