"""`SearchConfig`: how a search chooses, judges and confirms plans (its budget, strategy,
sensitivity, certification and final timing), each setting declared once with its flag and
range (`trt_mpq.options`)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from trt_mpq import options
from trt_mpq.errors import ConfigError
from trt_mpq.measure.stats import parse_confidence
from trt_mpq.options import flag
from trt_mpq.plan import Precision
from trt_mpq.search import Budget, strategy_spec
from trt_mpq.search.registry import STRATEGIES
from trt_mpq.sensitivity import METRICS, SensitivityConfig
from trt_mpq.sensitivity.ordering import ORDERS

SEARCH_DECISIONS = ("auto", "point", "bound")


def parse_share(text: str) -> float:
    """'1%' / '0.01' -> 0.01."""
    t = str(text).strip()
    try:
        return float(t[:-1]) / 100 if t.endswith("%") else float(t)
    except ValueError:
        raise ConfigError(f"give a share like 1% or 0.01, not {text!r}") from None


def parse_precision(text: str) -> Precision | None:
    """'auto' -> None (the dialect's default low precision per group), else a precision."""
    return None if str(text).strip().lower() == "auto" else Precision.parse(text)


def budget_text(budget: Budget) -> str:
    """A budget as `Budget.parse` reads it back: '1%' or '0.005'."""
    return (f"{budget.max_drop * 100:.12g}%" if budget.relative
            else f"{budget.max_drop:.12g}")


@dataclass(frozen=True)
class SearchConfig:
    budget: Budget = field(metadata=flag(
        "--max-drop", "largest allowed metric drop: relative (1%, 0.01%) or absolute (0.005)",
        parse=Budget.parse, dump=budget_text, metavar="BUDGET"))
    strategy: str = field(default="bisection", metadata=flag(
        "--strategy", "how plans are proposed (trt-mpq search --help lists each)",
        choices=lambda: tuple(STRATEGIES)))
    strategy_config: Any = None  # the strategy's own config object; None: its defaults
    sensitivity: str = field(default="noise", metadata=flag(
        "--sensitivity", "the sensitivity metric that orders the groups",
        choices=lambda: tuple(METRICS)))
    precision: Precision | None = field(default=None, metadata=flag(
        "--precision", "what groups are lowered to: auto (int8-dynamic for MatMul and int8 "
        "otherwise on ort-cpu), int8, int8-dynamic, int4w, fp8, ...",
        parse=parse_precision, dump=lambda p: p.value, metavar="PRECISION"))
    confirm_candidates: int = field(default=3, metadata=flag(
        "--finalists", "how many of the fastest in-budget plans (one per precision "
        "assignment) the holdout may judge, fastest first; the answer's error level is split "
        "over them, declared before the holdout is read (docs/certification.md)", lo=1, hi=8))
    final_repeats_factor: int = 2  # the final re-measurement uses this many times more runs
    order: str = field(default="sensitivity", metadata=flag(
        "--order", "sensitivity (least sensitive first, the papers) or latency-aware (least "
        "sensitivity per unit of measured latency gain first)", choices=ORDERS))
    sensitivity_config: SensitivityConfig = field(default_factory=SensitivityConfig)
    torch_model: str | None = field(default=None, metadata=flag(
        "--torch", "the model's torch twin (hessian, fisher) for your own ONNX model",
        metavar="PKG.MODULE:FUNC"))
    runtime_options: bool = field(default=True, metadata=flag(
        "--runtime-options", "also measure the fastest in-budget plans with the backend's "
        "runtime options (ONNX Runtime fusions to disable; TensorRT builder level, CUDA "
        "graphs) and keep the faster"))
    option_candidates: int = field(default=3, metadata=flag(
        "--option-candidates", "how many of the fastest in-budget plans get runtime-option "
        "variants (as many as --finalists: a finalist the holdout certifies runs with its "
        "fastest options)", lo=0, hi=16))
    full_frontier: bool = field(default=False, metadata=flag(
        "--full-frontier", "measure the accuracy of every plan of the sweep, refinement and "
        "options phases, even those timed slower than the fastest in-budget plan (which "
        "cannot be the answer: by default their accuracy pass is skipped)"))
    gate_margin: float = 0.03  # a plan "cannot win" if slower than the best by more than this
    #: ... and, if timed slower than the best by less than this, again side by side with it
    gate_recheck: float = 0.15
    timing_tolerance: float = 0.05  # the baseline against itself must time within this of x1
    timing_max_spread: float = 0.5  # ... with (p90 - p10) / median at most this
    timing_retries: int = 2  # re-measurements (each with twice the runs) before giving up
    confidence: float | None = field(default=0.95, metadata=flag(
        "--confidence", "one-sided level of the paired upper bound on the answer's holdout "
        "drop: the answer is in budget only if the bound is (certified), e.g. 0.95 or 99%; "
        "off: point estimates, not certified", parse=parse_confidence,
        lo=0.5, hi=1, below=True, metavar="LEVEL"))
    #: how the search judges a plan in budget on the search split: "point" (the point
    #: estimate), "bound" (its upper bound certifies it), "auto" (bound where the search split
    #: can certify the budget, else point); the answer is always certified on the holdout
    search_decision: str = field(default="auto", metadata=flag(
        "--search-decision", "how plans are judged in budget on the search split: point "
        "estimate, upper bound, or auto (the bound where the search split can certify the "
        "budget with room to spare, else the point estimate)", choices=SEARCH_DECISIONS))
    adaptive: bool = field(default=True, metadata=flag(
        "--adaptive", "evaluate plans on growing parts of large splits and stop as soon as "
        "the confidence bounds decide"))
    #: the finalists' joint re-measurement goes on until every latency ratio's 95% interval
    #: has at most this half-width (relative), or the cap (seconds) is reached
    final_halfwidth: float = field(default=0.01, metadata=flag(
        "--final-halfwidth", "the finalists are re-measured together until every latency "
        "ratio's 95% interval is within this of the ratio ...", parse=parse_share,
        dump=lambda v: f"{100 * v:.12g}%", lo=0, hi=1, above=True, below=True,
        metavar="SHARE"))
    final_cap_s: float = field(default=120.0, metadata=flag(
        "--final-cap", "... or for at most this many seconds", lo=0, hi=86_400,
        metavar="SECONDS"))

    def __post_init__(self) -> None:
        options.check(self)
        spec = strategy_spec(self.strategy)
        if self.strategy_config is None:
            object.__setattr__(self, "strategy_config", spec.config())
        elif not isinstance(self.strategy_config, spec.config):
            raise ConfigError(f"the {self.strategy} strategy takes a {spec.config.__name__}, "
                              f"not a {type(self.strategy_config).__name__}")
        if self.final_repeats_factor < 1:
            raise ConfigError("final_repeats_factor must be >= 1")
        if not 0 <= self.gate_recheck < 1:
            raise ConfigError("the gate's recheck band must be in [0, 1)")
        if not 0 <= self.gate_margin < 1:
            raise ConfigError("the gate margin must be in [0, 1)")
        if not 0 < self.timing_tolerance < 1 or self.timing_max_spread <= 0:
            raise ConfigError("the timing tolerance must be in (0, 1) and the spread > 0")
        if self.timing_retries < 0:
            raise ConfigError("timing retries must be >= 0")
        if self.search_decision == "bound" and self.confidence is None:
            raise ConfigError("--search-decision bound needs a --confidence level")

    @property
    def strategy_spec(self):
        return strategy_spec(self.strategy)

    @property
    def needs_gains(self) -> bool:
        return self.order == "latency-aware" or self.strategy_spec.needs_gains

    @property
    def sensitivity_samples(self) -> int:
        return self.sensitivity_config.samples

    def to_json_dict(self) -> dict:
        return options.to_json_dict(self)

    @classmethod
    def from_json_dict(cls, data: dict) -> SearchConfig:
        """`to_json_dict`'s inverse (a request file, a Ray worker's request)."""
        data = dict(data)
        strategy = data.get("strategy", "bisection")
        if not isinstance(strategy, str) or strategy not in STRATEGIES:
            raise ConfigError(f"unknown strategy {strategy!r}; use one of "
                              f"{', '.join(STRATEGIES)}")
        nested = {"strategy_config": strategy_spec(strategy).config,
                  "sensitivity_config": SensitivityConfig}
        built = {k: options.from_json_dict(c, data.pop(k), k) for k, c in nested.items()
                 if data.get(k) is not None}
        flat = options.from_json_dict(cls, data, "search")
        return cls(**{**{f: getattr(flat, f) for f in flat.__dataclass_fields__}, **built})


__all__ = ["SEARCH_DECISIONS", "SearchConfig", "budget_text", "parse_precision", "parse_share"]
