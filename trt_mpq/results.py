"""The plain result types every layer shares: what a backend says ran (`Census`), latency
statistics (`LatencyStats`) and one measured plan (`Evaluation`, `Status`).

No heavy imports (numpy only): `trt_mpq.search`, the store and the report read these without
onnx, onnxruntime or a backend installed.
"""

from __future__ import annotations

import enum
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np

from trt_mpq.plan import Plan

#: what a census records for a group whose precision no source could establish
UNVERIFIED = "unverified"


@dataclass(frozen=True)
class Census:
    """What each group really ran as, read from the backend (profiler, engine inspector, builder
    report). `executed` maps group -> precision value ("fp32", "int8", "int8-dynamic", ...),
    "unknown" when the ONNX Runtime census could attribute no kernel (a census fault: counted as
    a mismatch), or `UNVERIFIED` when the backend's sources do not say what ran (e.g. a
    TensorRT inspector's "N/A"): not a mismatch; the search refuses or accepts such plans as
    the user chooses (--require-census). `kernels` counts kernels by type."""

    executed: Mapping[str, str]
    kernels: Mapping[str, int] = field(default_factory=dict)
    source: str = ""  # how it was read, e.g. "onnxruntime profiler"

    def mismatches(self, plan: Plan) -> list[tuple[str, str, str]]:
        """(group, planned, executed) for every group whose executed precision is known and
        differs from the plan's (unverified groups are not mismatches: see `unverified`)."""
        out = []
        for group, planned in plan.items:
            got = self.executed.get(group, "unknown")
            if got != planned.value and got != UNVERIFIED:
                out.append((group, planned.value, got))
        return out

    def unverified(self, plan: Plan) -> list[str]:
        """The plan's groups whose precision the backend could not establish."""
        return [g for g in plan.groups if self.executed.get(g) == UNVERIFIED]

    def to_json_dict(self) -> dict:
        return {"executed": dict(self.executed), "kernels": dict(self.kernels),
                "source": self.source}

    @classmethod
    def from_json_dict(cls, d: Mapping) -> Census:
        return cls(executed=dict(d.get("executed", {})), kernels=dict(d.get("kernels", {})),
                   source=str(d.get("source", "")))


@dataclass(frozen=True)
class LatencyStats:
    median_ms: float
    p90_ms: float
    p10_ms: float
    mean_ms: float
    std_ms: float
    min_ms: float
    n: int

    @classmethod
    def of(cls, seconds: Sequence[float]) -> LatencyStats:
        ms = np.asarray(seconds, dtype=np.float64) * 1e3
        return cls(median_ms=float(np.median(ms)), p90_ms=float(np.percentile(ms, 90)),
                   p10_ms=float(np.percentile(ms, 10)), mean_ms=float(ms.mean()),
                   std_ms=float(ms.std()), min_ms=float(ms.min()), n=int(ms.size))

    @property
    def spread(self) -> float:
        """(p90 - p10) / median: relative width of the middle 80% of runs."""
        return (self.p90_ms - self.p10_ms) / self.median_ms if self.median_ms else math.inf

    def to_json_dict(self) -> dict:
        return {"median_ms": self.median_ms, "p90_ms": self.p90_ms, "p10_ms": self.p10_ms,
                "mean_ms": self.mean_ms, "std_ms": self.std_ms, "min_ms": self.min_ms,
                "n": self.n, "spread": self.spread}

    @classmethod
    def from_json_dict(cls, d: Mapping) -> LatencyStats:
        return cls(**{k: d[k] for k in ("median_ms", "p90_ms", "p10_ms", "mean_ms", "std_ms",
                                        "min_ms", "n")})


@dataclass(frozen=True)
class ShapeTiming:
    """One plan timed against the baseline, interleaved, at one deployment shape
    (`trt_mpq.shapes`): its label (batch=8), weight in the objective, both latencies and
    the ratio's 95% interval over the paired rounds."""

    label: str
    weight: float
    latency: LatencyStats
    baseline_latency: LatencyStats
    ratio_ci: tuple[float, float] | None = None

    @property
    def ratio(self) -> float:
        return self.latency.median_ms / self.baseline_latency.median_ms

    def to_json_dict(self) -> dict:
        return {"shape": self.label, "weight": self.weight, "latency_ratio": self.ratio,
                "latency_ratio_ci": list(self.ratio_ci) if self.ratio_ci else None,
                "latency": self.latency.to_json_dict(),
                "baseline_latency": self.baseline_latency.to_json_dict()}

    @classmethod
    def from_json_dict(cls, d: Mapping) -> ShapeTiming:
        return cls(label=str(d["shape"]), weight=float(d["weight"]),
                   latency=LatencyStats.from_json_dict(d["latency"]),
                   baseline_latency=LatencyStats.from_json_dict(d["baseline_latency"]),
                   ratio_ci=tuple(d["latency_ratio_ci"]) if d.get("latency_ratio_ci") else None)


class Status(enum.Enum):
    OK = "ok"
    BUILD_FAILED = "build-failed"
    RUN_FAILED = "run-failed"
    PRECISION_MISMATCH = "precision-mismatch"
    UNVERIFIED = "unverified"  # the census could not establish what some groups ran
    SLOWER = "slower"  # timed slower than the best in-budget plan: accuracy not measured
    NAN_OUTPUT = "nan-output"


@dataclass(frozen=True)
class Evaluation:
    plan: Plan
    status: Status
    reason: str = ""
    label: str = ""  # how the plan came about, e.g. "bisection k=12/25"
    metric: float | None = None  # task metric on the search split
    drop: float | None = None  # baseline metric - metric (sign flipped if lower is better)
    rel_drop: float | None = None  # drop / |baseline metric|
    latency: LatencyStats | None = None
    baseline_latency: LatencyStats | None = None  # timed in the same rounds
    #: latency.median / baseline_latency.median; with several deployment shapes, the weighted
    #: mean of the per-shape ratios (`shapes`; `latency` is then at the most-weighted shape)
    latency_ratio: float | None = None
    ratio_ci: tuple[float, float] | None = None  # its 95% interval over the paired rounds
    census: Census | None = None
    samples: int | None = None  # search-split samples the metric used (adaptive evaluation)
    drop_upper: float | None = None  # paired bounds on the drop at the search's confidence
    drop_lower: float | None = None
    materialize_s: float = 0.0
    build_s: float = 0.0
    wall_s: float = 0.0
    device: str = ""  # where it was measured, when not this process (a Ray worker's node)
    cached: bool = field(default=False, compare=False)
    shapes: tuple[ShapeTiming, ...] = ()  # per deployment shape, when several were declared

    @property
    def ok(self) -> bool:
        return self.status is Status.OK

    def to_json_dict(self) -> dict:
        return {
            "plan_digest": self.plan.digest,
            "plan": self.plan.to_json_dict()["groups"],
            "options": dict(self.plan.options),
            "precision_counts": self.plan.counts(),
            "status": self.status.value,
            "reason": self.reason,
            "label": self.label,
            "metric": self.metric,
            "drop": self.drop,
            "rel_drop": self.rel_drop,
            "latency": self.latency.to_json_dict() if self.latency else None,
            "baseline_latency": (self.baseline_latency.to_json_dict()
                                 if self.baseline_latency else None),
            "latency_ratio": self.latency_ratio,
            "latency_ratio_ci": list(self.ratio_ci) if self.ratio_ci else None,
            "census": self.census.to_json_dict() if self.census else None,
            "samples": self.samples,
            "drop_upper": self.drop_upper,
            "drop_lower": self.drop_lower,
            "materialize_s": self.materialize_s,
            "build_s": self.build_s,
            "wall_s": self.wall_s,
            "device": self.device,
            **({"shapes": [s.to_json_dict() for s in self.shapes]} if self.shapes else {}),
        }

    @classmethod
    def from_json_dict(cls, d: Mapping) -> Evaluation:
        return cls(
            plan=Plan.from_json_dict({"groups": d["plan"], "options": d.get("options") or {}}),
            status=Status(d["status"]),
            reason=d.get("reason", ""),
            label=d.get("label", ""),
            metric=d.get("metric"),
            drop=d.get("drop"),
            rel_drop=d.get("rel_drop"),
            latency=LatencyStats.from_json_dict(d["latency"]) if d.get("latency") else None,
            baseline_latency=(LatencyStats.from_json_dict(d["baseline_latency"])
                              if d.get("baseline_latency") else None),
            latency_ratio=d.get("latency_ratio"),
            ratio_ci=tuple(d["latency_ratio_ci"]) if d.get("latency_ratio_ci") else None,
            census=Census.from_json_dict(d["census"]) if d.get("census") else None,
            samples=d.get("samples"),
            drop_upper=d.get("drop_upper"),
            drop_lower=d.get("drop_lower"),
            materialize_s=d.get("materialize_s", 0.0),
            build_s=d.get("build_s", 0.0),
            wall_s=d.get("wall_s", 0.0),
            device=d.get("device", ""),
            shapes=tuple(ShapeTiming.from_json_dict(s) for s in d.get("shapes") or ()),
        )


