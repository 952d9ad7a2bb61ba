"""Precisions, each declared once.

`Precision` names a precision (its `value` is the spelling in JSON and on the command line);
`PrecisionSpec` says everything else the code needs to know about it, in one place:

- `bits`: weight bits (reports, bit budgets);
- `op_types`: the quantizable op types it applies to (None: all of them);
- `census`: per census family (``"onnxruntime"`` kernels, ``"tensorrt"`` layers), the words the
  backend's census reader produces for a compute kernel that runs this precision. The readers
  look words up here (`from_census`), so a backend can never report a precision by a spelling
  that differs from the plan's;
- `fake_quant`: ``"module:function"`` of the torch fake quantizer the Hessian / Fisher metrics
  use (imported on use; torch is never imported here);
- `label` for reports, `aliases` the parser accepts, `unavailable` per dialect with the reason;
- `activations`: the activation type at the group's edges (precision boundaries, see
  `edge_type`).

Adding a precision: a member of `Precision`, its `PrecisionSpec` in `SPECS`, and one pass per
dialect that can materialize it (`trt_mpq/qdq/<dialect>.py`, its `PASSES`).
"""

from __future__ import annotations

import enum
from collections.abc import Mapping
from dataclasses import dataclass, field

from trt_mpq.errors import PlanError


class Precision(enum.Enum):
    """How one group's compute runs. `value` is its spelling in JSON and on the command line."""

    FP32 = "fp32"
    FP16 = "fp16"
    INT8 = "int8"  # static: calibrated activation ranges, per-channel int8 weights
    INT8_DYNAMIC = "int8-dynamic"  # activations quantized at run time (MatMul only)
    FP8 = "fp8"  # E4M3, static ranges
    INT4_WEIGHT = "int4w"  # weight-only, block-wise int4, float activations (MatMul only)

    @classmethod
    def parse(cls, text: str) -> Precision:
        key = text.strip().lower().replace("_", "-")
        for p in cls:
            if key == p.value or key in SPECS[p].aliases:
                return p
        raise PlanError(
            f"unknown precision {text!r}; use one of: {', '.join(p.value for p in cls)}"
        )

    @property
    def spec(self) -> PrecisionSpec:
        return SPECS[self]

    @property
    def is_float(self) -> bool:
        return SPECS[self].is_float

    @property
    def bits(self) -> int:
        """Weight bits, for reports and bit budgets."""
        return SPECS[self].bits

    def applies_to(self, op_type: str) -> bool:
        ops = SPECS[self].op_types
        return ops is None or op_type in ops


#: census families: how backends read what ran (see `PrecisionSpec.census`)
ONNXRUNTIME = "onnxruntime"  # words: the integer kernel's op type, or "float:<input dtype>"
TENSORRT = "tensorrt"  # words: a compute layer's input dtype, or "weights:int4"


@dataclass(frozen=True)
class PrecisionSpec:
    bits: int
    label: str
    is_float: bool = False
    op_types: frozenset[str] | None = None  # None: every quantizable op type
    census: Mapping[str, frozenset[str]] = field(default_factory=dict)
    fake_quant: str = ""  # "module:function"; "" = no weight perturbation modelled
    aliases: tuple[str, ...] = ()
    unavailable: Mapping[str, str] = field(default_factory=dict)  # dialect -> why not
    #: the type its activations have where they enter and leave the group; two groups joined
    #: by an edge with different types meet at a precision boundary (a conversion). None: float
    #: in, float out, like the baseline it replaces (dynamic int8, weight-only int4)
    activations: str | None = None


_TWIN = "trt_mpq.sensitivity.torch_twin"

SPECS: dict[Precision, PrecisionSpec] = {
    Precision.FP32: PrecisionSpec(
        bits=32, label="FP32", activations="fp32", is_float=True, aliases=("float32",),
        census={ONNXRUNTIME: frozenset({"float:float"}), TENSORRT: frozenset({"fp32"})},
        fake_quant=f"{_TWIN}:fq_identity"),
    Precision.FP16: PrecisionSpec(
        bits=16, label="FP16", activations="fp16", is_float=True, aliases=("float16", "half"),
        census={ONNXRUNTIME: frozenset({"float:float16"}), TENSORRT: frozenset({"fp16"})},
        fake_quant=f"{_TWIN}:fq_fp16"),
    Precision.INT8: PrecisionSpec(
        bits=8, label="INT8", activations="int8",
        census={ONNXRUNTIME: frozenset({"QLinearConv", "QGemm", "QLinearMatMul",
                                        "NhwcQLinearConv"}),
                TENSORRT: frozenset({"int8"})},
        fake_quant=f"{_TWIN}:fq_int8"),
    Precision.INT8_DYNAMIC: PrecisionSpec(
        bits=8, label="INT8 (dynamic)", op_types=frozenset({"MatMul"}),
        aliases=("int8-dyn", "dynamic"),
        census={ONNXRUNTIME: frozenset({"MatMulInteger", "DynamicQuantizeMatMul",
                                        "MatMulIntegerToFloat", "ConvInteger"})},
        fake_quant=f"{_TWIN}:fq_int8",
        unavailable={"tensorrt": "TensorRT has no dynamic int8 quantization; use int8 (static)",
                     "tensorrt-weak": "TensorRT has no dynamic int8 quantization"}),
    Precision.FP8: PrecisionSpec(
        bits=8, label="FP8 (E4M3)", activations="fp8", aliases=("fp8-e4m3",),
        census={TENSORRT: frozenset({"fp8"})},
        fake_quant=f"{_TWIN}:fq_fp8",
        unavailable={"ort-cpu": "ONNX Runtime's CPU provider has no FP8 kernels",
                     "tensorrt-weak": "FP8 needs explicit Q/DQ: use strong typing"}),
    Precision.INT4_WEIGHT: PrecisionSpec(
        bits=4, label="INT4 weight-only", op_types=frozenset({"MatMul"}),
        aliases=("int4", "int4-weight"),
        census={ONNXRUNTIME: frozenset({"MatMulNBits"}), TENSORRT: frozenset({"weights:int4"})},
        fake_quant=f"{_TWIN}:fq_int4_blocks",
        unavailable={"tensorrt-weak": "int4 weights need explicit DQ: use strong typing"}),
}


def edge_type(precision: Precision, base: Precision) -> str:
    """The activation type at the edges of a group run at `precision` in a plan whose baseline
    precision is `base`: where two neighbouring groups' types differ, a precision boundary."""
    return precision.spec.activations or base.spec.activations or base.value


def _census_index() -> dict[tuple[str, str], Precision]:
    index: dict[tuple[str, str], Precision] = {}
    for p, spec in SPECS.items():
        for family, words in spec.census.items():
            for word in words:
                if (family, word) in index:
                    raise AssertionError(f"census word {family}:{word} is claimed by both "
                                         f"{index[family, word].value} and {p.value}")
                index[family, word] = p
    return index


_CENSUS = _census_index()


def from_census(family: str, word: str) -> Precision | None:
    """The precision a backend's census word means, or None if no precision claims it."""
    return _CENSUS.get((family, word))


def census_words(family: str) -> frozenset[str]:
    """Every word of `family` that some precision claims."""
    return frozenset(w for f, w in _CENSUS if f == family)


def executed_word(family: str, word: str) -> str:
    """What a census records for a kernel: the precision's value, else the raw word."""
    p = from_census(family, word)
    return p.value if p is not None else word


__all__ = ["Precision", "PrecisionSpec", "SPECS", "ONNXRUNTIME", "TENSORRT", "from_census",
           "census_words", "edge_type", "executed_word"]
