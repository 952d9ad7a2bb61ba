"""Sensitivity and latency-gain analysis of a workspace (the orders themselves and their
quality live in `trt_mpq.sensitivity.ordering`).

- `sensitivity(...)`: run one metric (cached in the store by metric, precisions and settings).
- `latency_gains(...)`: each group's measured latency gain, from the backend's per-layer profile
  of the all-baseline and the all-lowered plans (ONNX Runtime's profiler, per kernel, attributed
  to groups like the kernel census). Gains are per-kernel times; what no group owns (Q/DQ,
  layout conversions) is reported apart: it is why latency is not additive.
- `reference_drop(...)`: the measured one-at-a-time drop, the reference for order quality.
- `analyze(...)`: all of the above for `trt-mpq sensitivity`.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

from trt_mpq.backends.base import Backend
from trt_mpq.calib import Ranges
from trt_mpq.errors import ConfigError
from trt_mpq.pipeline.workspace import Workspace
from trt_mpq.plan import Plan, Precision
from trt_mpq.qdq import BASELINE, Dialect, materialize
from trt_mpq.sensitivity import (
    NEEDS_TORCH,
    SensitivityConfig,
    SensitivityContext,
    SensitivityResult,
    get_metric,
)
from trt_mpq.sensitivity.ordering import order, order_quality
from trt_mpq.sensitivity.simulator import make_simulator
from trt_mpq.store import Store
from trt_mpq.store.shared import SharedCache
from trt_mpq.task import Split


def torch_twin(ws: Workspace, spec: str | None):
    """A factory for the model's eval-mode torch twin: `--torch package.module:make_model` (no
    arguments) or the zoo task's own (`make_torch_model(cache_dir)`); None if neither."""
    if spec is None and ws.task.torch_model is None:
        return None
    from trt_mpq.sensitivity.torch_twin import load_twin

    if spec is not None:
        return load_twin(spec, None)
    return load_twin(ws.task.torch_model, ws.cache_dir)


def context(ws: Workspace, ranges: Ranges, dialect: Dialect, low: Mapping[str, Precision],
            config: SensitivityConfig, torch_spec: str | None = None,
            subset: Split | None = None) -> SensitivityContext:
    return SensitivityContext(
        model=ws.model, groups=tuple(ws.groups), ranges=ranges, dialect=dialect, low=dict(low),
        base=BASELINE[dialect], task=ws.task,
        subset=subset if subset is not None else ws.task.calibration.head(config.samples),
        simulate=make_simulator(ws.model, ws.groups, ranges, dialect, ws.task.eval_batch),
        config=config,
        input_names=tuple(i.name for i in ws.model.graph.input
                          if i.name not in {t.name for t in ws.model.graph.initializer}),
        output_names=tuple(o.name for o in ws.model.graph.output),
        torch_model=torch_twin(ws, torch_spec))


def sensitivity(ws: Workspace, ranges: Ranges, dialect: Dialect, low: Mapping[str, Precision],
                metric: str, config: SensitivityConfig, store: Store | None = None,
                torch_spec: str | None = None, memo: dict | None = None,
                shared: SharedCache | None = None) -> SensitivityResult:
    """One metric's result, from `memo` (this process), `store` (this search, resumed) or
    `shared` (any earlier run on the same model, data, backend and calibration) when there."""
    key = (f"sensitivity:{metric}:{Plan.of(low).digest}:"
           f"{hash_config(config)}:{torch_spec or ''}")
    memo = {} if memo is None else memo
    if key in memo:
        return memo[key]
    if store is not None:
        cached = store.get_blob(key)
        if cached is not None:
            memo[key] = SensitivityResult.from_json_dict(cached)
            return memo[key]

    def compute() -> dict:
        ctx = context(ws, ranges, dialect, low, config, torch_spec)
        if metric == "hessian+deps":  # reuse (and cache) the Hessian part
            from dataclasses import replace

            ctx = replace(ctx, prior={"hessian": sensitivity(
                ws, ranges, dialect, low, "hessian", config, store, torch_spec, memo, shared)})
        if metric in NEEDS_TORCH and ctx.torch_model is None:
            raise ConfigError(f"the {metric} sensitivity needs the model's torch twin: zoo "
                              "models have one; for your own model pass --torch "
                              "package.module:make_model")
        return get_metric(metric).score(ctx, progress=ws.progress).to_json_dict()

    if shared is None or torch_spec is not None:  # a user's twin may change under its name
        result = SensitivityResult.from_json_dict(compute())
    else:
        result = SensitivityResult.from_json_dict(
            shared.json(f"{key}:{ranges.digest}:{dialect.value}", compute))
    memo[key] = result
    if store is not None:
        store.put_blob(key, result.to_json_dict())
    return result


def hash_config(config: SensitivityConfig) -> str:
    import hashlib
    import json

    return hashlib.sha256(json.dumps(config.to_json_dict(), sort_keys=True).encode()
                          ).hexdigest()[:12]


@dataclass(frozen=True)
class Gains:
    """Measured per-group latency (ms per run) with every group at baseline and lowered."""

    base_ms: Mapping[str, float]
    low_ms: Mapping[str, float]
    other_base_ms: float  # kernels no group owns
    other_low_ms: float
    runs: int
    source: str = "onnxruntime profiler"
    extra: Mapping = field(default_factory=dict)

    @property
    def gain(self) -> dict[str, float]:
        return {g: self.base_ms[g] - self.low_ms[g] for g in self.base_ms}

    @property
    def gain_ratio(self) -> dict[str, float]:
        """Each group's gain in units of the baseline's profiled time (every kernel, the ones
        no group owns included): the latency model's prior."""
        total = sum(self.base_ms.values()) + self.other_base_ms
        return {g: v / total if total > 0 else 0.0 for g, v in self.gain.items()}

    def to_json_dict(self) -> dict:
        return {"base_ms": dict(self.base_ms), "low_ms": dict(self.low_ms),
                "other_base_ms": self.other_base_ms, "other_low_ms": self.other_low_ms,
                "runs": self.runs, "source": self.source}

    @classmethod
    def from_json_dict(cls, d: Mapping) -> Gains:
        return cls(base_ms=dict(d["base_ms"]), low_ms=dict(d["low_ms"]),
                   other_base_ms=float(d["other_base_ms"]), other_low_ms=float(d["other_low_ms"]),
                   runs=int(d["runs"]), source=str(d.get("source", "")))


def can_profile(backend: Backend) -> bool:
    """Whether `backend` gives the per-group latency profile measured gains come from."""
    return getattr(backend, "profile_groups", None) is not None


#: profiled sessions per plan in `latency_gains`. Now and then a profiled ONNX Runtime session
#: times some group's kernels 1.5-3x slower than the others do (resnet-digits on 2 cores: 6 of
#: 100 sessions; its layer4.1 conv2 at 0.215 ms against 0.08 in one search of 2026-12-05, whose
#: prior then said lowering it gains 6% of the model where it loses 3%, so that search kept it
#: lowered and the one before raised it). The median over 3 sessions outvotes one such session
#: (1 of 33 triples still had a group off by 1.5x, against 6 of 100 single sessions).
PROFILE_SESSIONS = 3


def latency_gains(ws: Workspace, backend: Backend, ranges: Ranges, low: Mapping[str, Precision],
                  store: Store | None = None, runs: int = 20,
                  sessions: int = PROFILE_SESSIONS) -> Gains:
    """Each group's kernel time with every group at the baseline precision and every group
    lowered: per group, the median over `sessions` profiled sessions (the two plans'
    alternating) of its mean over `runs` runs."""
    key = f"gains:{backend.name}:{Plan.of(low).digest}:{runs}x{sessions}"
    if store is not None:
        cached = store.get_blob(key)
        if cached is not None:
            return Gains.from_json_dict(cached)
    if not can_profile(backend):
        raise ConfigError(f"measured per-group latency gains (--order latency-aware, --strategy "
                          f"ilp or boundary) need a per-layer profile, which {backend.name} does "
                          "not give yet (ort-cpu does); use --order sensitivity with the "
                          "bisection, frontier or greedy strategy")
    import statistics

    profile = backend.profile_groups  # type: ignore[attr-defined]
    names = ws.group_names()
    feed = ws.latency_feed()  # the most-weighted shape's, when several are declared
    graphs = [materialize(ws.model, ws.groups, plan, ranges, backend.dialect)
              for plan in (Plan.uniform(names, BASELINE[backend.dialect]), Plan.of(low))]
    taken: list[list[tuple[dict[str, float], float]]] = [[], []]
    for _ in range(sessions):
        for i, graph in enumerate(graphs):
            taken[i].append(profile(graph, ws.groups, feed, runs=runs))

    def median(i: int) -> tuple[dict[str, float], float]:
        return ({g: statistics.median(t[g] for t, _ in taken[i]) for g in taken[i][0][0]},
                statistics.median(o for _, o in taken[i]))

    (base, other_b), (lowered, other_l) = median(0), median(1)
    gains = Gains(base_ms=base, low_ms=lowered, other_base_ms=other_b, other_low_ms=other_l,
                  runs=runs * sessions)
    if store is not None:
        store.put_blob(key, gains.to_json_dict())
    return gains


def reference_drop(ws: Workspace, ranges: Ranges, dialect: Dialect, low: Mapping[str, Precision],
                   store: Store | None = None) -> SensitivityResult:
    """The measured one-at-a-time metric drop on the *search* split: the reference order."""
    config = SensitivityConfig(samples=len(ws.task.search))
    key = f"reference:{Plan.of(low).digest}:{ws.task.search.digest}"
    if store is not None and (cached := store.get_blob(key)) is not None:
        return SensitivityResult.from_json_dict(cached)
    ctx = context(ws, ranges, dialect, low, config, subset=ws.task.search)
    result = get_metric("accuracy").score(ctx, progress=ws.progress)
    if store is not None:
        store.put_blob(key, result.to_json_dict())
    return result


__all__ = ["Gains", "analyze", "can_profile", "context", "latency_gains", "reference_drop",
           "sensitivity", "torch_twin"]


def analyze(ws: Workspace, backend: Backend, ranges: Ranges, low: Mapping[str, Precision],
            metrics: list[str], config: SensitivityConfig, *, reference: bool = True,
            gains: bool = False, torch_spec: str | None = None,
            store: Store | None = None) -> dict:
    """Every metric's scores, cost and order; with `reference`, their rank correlations with the
    measured one-at-a-time drop on the search split; with `gains`, the measured per-group
    latency gains and each metric's latency-aware order."""
    names = ws.group_names()
    report: dict = {"model": ws.task.name, "backend": backend.name, "groups": names,
                    "low_precisions": {g: p.value for g, p in low.items()},
                    "config": config.to_json_dict(), "metrics": {}}
    orders: dict[str, list[str]] = {}
    memo: dict = {}
    for metric in metrics:
        r = sensitivity(ws, ranges, backend.dialect, low, metric, config, store, torch_spec, memo)
        orders[metric] = order(names, r.scores)
        report["metrics"][metric] = {**r.to_json_dict(), "order": orders[metric]}
    measured = None
    if gains:
        measured = latency_gains(ws, backend, ranges, low, store)
        report["latency_gains"] = {**measured.to_json_dict(), "gain_ms": measured.gain}
        for metric in metrics:
            key = f"{metric} (latency-aware)"
            orders[key] = order(names, report["metrics"][metric]["scores"], measured.gain)
            report.setdefault("latency_aware_orders", {})[metric] = orders[key]
    if reference:
        ref = reference_drop(ws, ranges, backend.dialect, low, store)
        report["reference"] = {"what": "measured metric drop, one group lowered at a time, on "
                                       "the search split", **ref.to_json_dict()}
        # metrics by their raw scores (ties stay ties), latency-aware orders by position
        ranked = {**orders, **{m: report["metrics"][m]["scores"] for m in metrics}}
        report["order_quality"] = order_quality(ranked, ref.scores)
    return report
