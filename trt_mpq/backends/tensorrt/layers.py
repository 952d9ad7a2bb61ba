"""What TensorRT says each layer of a built engine runs as, and the census it gives.

Two sources, same content: the builder's detailed layer report, printed to the logger at VERBOSE
when the config's profiling verbosity is DETAILED (available without a GPU, e.g. for
TensorRT-RTX ahead-of-time builds), and the engine inspector's JSON (needs the engine
deserialized, hence a GPU). Each gives per layer: name, type, and the data types of its inputs,
constants (weights) and outputs.

Layer names carry the ONNX node names they were made from: fused layers join them with "+"
(TensorRT-RTX/Myelin: "a+b+c_myl0_1") or " + " (classic TensorRT), Myelin adds "_myl<k>_<n>".
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from trt_mpq.model.groups import Group
from trt_mpq.plan.precision import TENSORRT, executed_word
from trt_mpq.results import UNVERIFIED, Census

_MYL = re.compile(r"_myl\d+_\d+$")
_ONNX_LAYER = re.compile(r"\[ONNX Layer: ([^\]]*)\]")

#: TensorRT data type spellings (enum names, report and inspector text) -> our words; the
#: exact spellings first, then words found inside format descriptions ("Thirty-two wide channel
#: vectorized row major Int8 format"), most specific first ("uint8" before "int8", "bfloat16"
#: before "float")
_DTYPE = {
    "int8": "int8", "float": "fp32", "fp32": "fp32", "float32": "fp32", "half": "fp16",
    "fp16": "fp16", "float16": "fp16", "fp8": "fp8", "float8": "fp8", "e4m3": "fp8",
    "int4": "int4", "fp4": "fp4", "bf16": "bf16", "bfloat16": "bf16", "int32": "int32",
    "int64": "int64", "bool": "bool", "uint8": "uint8",
}
_DTYPE_IN_TEXT = (("uint8", "uint8"), ("int8", "int8"), ("bfloat16", "bf16"), ("bf16", "bf16"),
                  ("fp8", "fp8"), ("e4m3", "fp8"), ("float8", "fp8"), ("int4", "int4"),
                  ("fp4", "fp4"), ("half", "fp16"), ("fp16", "fp16"), ("int32", "int32"),
                  ("int64", "int64"), ("bool", "bool"), ("fp32", "fp32"), ("float", "fp32"))
_NOT_DATA = ("bool", "int32", "int64")  # shape and index tensors, not a compute precision

#: what a layer computes (ParameterType, classic TensorRT; NVIDIA's trex classifies by it)
COMPUTE_KINDS = frozenset({"convolution", "deconvolution", "matrixmultiply", "fullyconnected",
                           "gemm"})
#: layer types that do the work of a Conv/Gemm/MatMul group, for layers without a ParameterType
#: (TensorRT-RTX / Myelin: correlation, gemm; classic kernels by name)
COMPUTE_TYPES = frozenset({"correlation", "convolution", "cask_convolution", "caskconvolution",
                           "cublasconvolution", "caskconvactpool", "convactpool",
                           "caskdeconvolution", "caskdeconvolutionv2", "deconvolution",
                           "gemm", "matrixmultiply", "matrix_multiply", "fullyconnected",
                           "cask_gemm", "caskgemm", "cublasgemm", "myelin_gemm"})


@dataclass(frozen=True)
class LayerInfo:
    name: str
    type: str  # LayerType: the kernel family ("CaskConvolution", "gemm", "Reformat", ...)
    inputs: tuple[str | None, ...]  # precision words of the data inputs; None: not reported
    constants: tuple[str | None, ...] = ()
    outputs: tuple[str | None, ...] = ()
    constant_shapes: tuple[tuple[int, ...], ...] = ()
    kind: str = ""  # ParameterType (classic TensorRT): what the layer computes
    weights: str | None = None  # "Weights": {"Type"} (classic TensorRT), as a precision word
    weight_count: int | None = None  # "Weights": {"Count"}
    metadata_ops: tuple[str, ...] = ()  # "[ONNX Layer: name]" entries of its Metadata

    @property
    def ops(self) -> tuple[str, ...]:
        """The ONNX node names this layer was made from: its Metadata, and its name (fused
        layers join node names with "+" or " + ", parallel merges with " || ")."""
        base = _MYL.sub("", self.name.strip())
        if base.startswith("{ForeignNode[") and base.endswith("]}"):
            base = base[len("{ForeignNode["):-2]
        named = [p.strip() for part in base.split("||") for p in part.split("+") if p.strip()]
        return tuple(dict.fromkeys([*self.metadata_ops, *named]))

    @property
    def is_compute(self) -> bool:
        if self.kind:
            return self.kind.lower().replace(" ", "") in COMPUTE_KINDS
        return self.type.lower().replace(" ", "") in COMPUTE_TYPES

    @property
    def weight_sizes(self) -> set[int]:
        """Element counts of the layer's weights: constants of rank >= 2, "Weights" Count."""
        sizes = {math.prod(s) for s in self.constant_shapes if len(s) >= 2}
        return sizes | ({self.weight_count} if self.weight_count else set())

    def to_json_dict(self) -> dict:
        return {"name": self.name, "type": self.type, "kind": self.kind,
                "inputs": list(self.inputs), "constants": list(self.constants),
                "outputs": list(self.outputs),
                "constant_shapes": [list(s) for s in self.constant_shapes],
                "weights": self.weights, "weight_count": self.weight_count,
                "metadata_ops": list(self.metadata_ops)}


def dtype_word(text: str | None) -> str | None:
    """Our word for a TensorRT data type spelling, or None when the text gives no data type
    (the inspector's "N/A due to dynamic shapes", an empty field, an unknown spelling)."""
    t = (text or "").strip().lower()
    if not t or t.startswith("n/a"):
        return None
    if t in _DTYPE:
        return _DTYPE[t]
    for key, word in _DTYPE_IN_TEXT:
        if key in t:
            return word
    return None


# -- the builder's detailed layer report (text) -------------------------------------------------
def _bracket(text: str, key: str) -> str:
    """The text inside `key: [ ... ]`, brackets balanced."""
    i = text.find(key + ": [")
    if i < 0:
        return ""
    i += len(key) + 3
    depth = 1
    j = i
    while j < len(text) and depth:
        depth += {"[": 1, "]": -1}.get(text[j], 0)
        j += 1
    return text[i:j - 1]


_TYPE_FIELD = re.compile(r"(?:Format/Datatype|Format/DataType|DataType|Datatype): ([^,}\]]+)")


def _entries(section: str) -> list[str]:
    """The `{ ... }` entries of an Inputs/Constants/Outputs section."""
    return re.findall(r"\{([^{}]*)\}", section)


def _dtypes(section: str) -> tuple[str | None, ...]:
    out = []
    for entry in _entries(section):
        m = _TYPE_FIELD.search(entry)
        out.append(dtype_word(m.group(1)) if m else None)
    return tuple(out)


def _shapes(section: str) -> tuple[tuple[int, ...], ...]:
    return tuple(tuple(int(x) for x in m.split(",") if x.strip().lstrip("-").isdigit())
                 for m in re.findall(r"Dimensions: \[([^\]]*)\]", section))


def parse_layer_report(log_lines: Iterable[str]) -> list[LayerInfo]:
    """Layers from the builder's detailed report ("Name: ..., LayerType: ..., Inputs: [...]",
    printed at VERBOSE when the profiling verbosity is DETAILED)."""
    layers = []
    for line in (piece for message in log_lines for piece in message.splitlines()):
        line = line.strip()
        if not line.startswith("Name: ") or ", LayerType: " not in line:
            continue
        name = line[len("Name: "): line.index(", LayerType: ")]
        rest = line[line.index(", LayerType: ") + len(", LayerType: "):]
        ltype = rest.split(",", 1)[0].strip()
        kind = re.search(r", ParameterType: ([^,]+)", line)
        meta = line[line.index(", Metadata: "):] if ", Metadata: " in line else ""
        constants = _bracket(line, "Constants")
        layers.append(LayerInfo(name=name, type=ltype, inputs=_dtypes(_bracket(line, "Inputs")),
                                constants=_dtypes(constants),
                                outputs=_dtypes(_bracket(line, "Outputs")),
                                constant_shapes=_shapes(constants),
                                kind=kind.group(1).strip() if kind else "",
                                metadata_ops=tuple(_ONNX_LAYER.findall(meta))))
    return layers


# -- the engine inspector (JSON) ----------------------------------------------------------------
def _tensor_dtype(item: Mapping) -> str | None:
    """A tensor entry's data type: "DataType" (TensorRT 11), "Datatype" (TensorRT-RTX),
    "Format/Datatype" (TensorRT 8-10, a format description); None if not reported."""
    for key in ("DataType", "Datatype", "Format/Datatype", "Format/DataType"):
        word = dtype_word(item.get(key)) if isinstance(item.get(key), str) else None
        if word is not None:
            return word
    return None


def parse_inspector_json(text: str) -> list[LayerInfo]:
    """Layers from `IEngineInspector.get_engine_information(LayerInformationFormat.JSON)`, for
    the schemas of TensorRT 10.x, 11.x and TensorRT-RTX (see `_tensor_dtype`)."""
    data = json.loads(text)
    out = []
    for layer in data.get("Layers", []):
        if isinstance(layer, str):  # verbosity below DETAILED: names only
            out.append(LayerInfo(layer, "", ()))
            continue
        constants = layer.get("Constants") or []
        weights = layer.get("Weights") if isinstance(layer.get("Weights"), Mapping) else {}
        count = weights.get("Count")
        out.append(LayerInfo(
            name=str(layer.get("Name", "")), type=str(layer.get("LayerType", "")),
            kind=str(layer.get("ParameterType", "")),
            inputs=tuple(_tensor_dtype(i) for i in layer.get("Inputs") or []),
            constants=tuple(_tensor_dtype(c) for c in constants),
            outputs=tuple(_tensor_dtype(o) for o in layer.get("Outputs") or []),
            constant_shapes=tuple(tuple(int(d) for d in c.get("Dimensions", []))
                                  for c in constants),
            weights=dtype_word(weights.get("Type")) if isinstance(weights.get("Type"), str)
            else None,
            weight_count=int(count) if isinstance(count, (int, float)) else None,
            metadata_ops=tuple(_ONNX_LAYER.findall(str(layer.get("Metadata") or "")))))
    return out


def classify(layer: LayerInfo) -> str | None:
    """The precision a compute layer runs: int4 weights if its weights are int4, else its first
    data input's type, else (inputs "N/A" in a dynamic-shape engine) its weights' type; None
    when the layer says nothing (census words of the "tensorrt" family)."""
    if "int4" in layer.constants or layer.weights == "int4":
        return executed_word(TENSORRT, "weights:int4")
    first = next((t for t in layer.inputs if t is not None and t not in _NOT_DATA), None)
    if first is None:
        first = layer.weights
    return executed_word(TENSORRT, first) if first is not None else None


def _does_work_of(layer: LayerInfo, op) -> bool:
    """Whether `layer` computes `op`: a compute layer, or a fusion without a ParameterType
    (TensorRT-RTX "runtime_fusion" such as "__myl_FcAddCast") that carries `op`'s weights. A
    layer that only names the op (a kgen that quantizes its input lists it in its Metadata) does
    not."""
    return layer.is_compute or (not layer.kind
                                and math.prod(op.weight_shape) in layer.weight_sizes)


def census_from_layers(layers: list[LayerInfo], groups: list[Group], source: str) -> Census:
    """Attribute compute layers to groups, then classify them.

    First by name: the ONNX node names a layer carries (Metadata, name). Fused kernels
    (TensorRT-RTX/Myelin "runtime_fusion" layers such as "__myl_FcAddCast") lose the names; a
    group op left without a layer is then matched to the next unclaimed layer, in execution
    order, that carries weights of the op's size (ops and layers are both in topological order).

    A group is `UNVERIFIED` when no layer was found for it or one of its layers does not say
    what it ran (e.g. "N/A due to dynamic shapes"): that is no information, never a precision.
    """
    owner = {op.name: (g.name, op) for g in groups for op in g.ops}
    found: dict[str, set[str | None]] = {g.name: set() for g in groups}
    claimed: set[int] = set()
    named_ops: set[str] = set()
    for i, layer in enumerate(layers):
        for name in layer.ops:
            if name in owner and _does_work_of(layer, owner[name][1]):
                claimed.add(i)
                named_ops.add(name)
                found[owner[name][0]].add(classify(layer))
    by_size = 0
    cursor = 0
    for g in groups:
        for op in g.ops:
            if op.name in named_ops:
                continue
            size = math.prod(op.weight_shape)
            for i in range(cursor, len(layers)):
                if (i not in claimed and size in layers[i].weight_sizes
                        and (layers[i].is_compute or not layers[i].kind)):
                    claimed.add(i)
                    found[g.name].add(classify(layers[i]))
                    cursor = i + 1
                    by_size += 1
                    break
    kernels: dict[str, int] = {}
    for i in sorted(claimed):
        key = f"{layers[i].kind or layers[i].type}:{classify(layers[i]) or UNVERIFIED}"
        kernels[key] = kernels.get(key, 0) + 1
    executed = {}
    for g in groups:
        words = found[g.name]
        if not words or None in words:
            executed[g.name] = UNVERIFIED
        else:
            executed[g.name] = (next(iter(words)) if len(words) == 1
                                else "mixed(" + ",".join(sorted(words)) + ")")  # type: ignore
    if by_size:
        source += f" ({by_size} op(s) matched by weight size and order)"
    return Census(executed=executed, kernels=dict(sorted(kernels.items())), source=source)


def merge_censuses(primary: Census, fallback: Census) -> Census:
    """`primary`'s answer per group, `fallback`'s where primary could not verify the group."""
    executed = {g: (fallback.executed.get(g, UNVERIFIED) if word == UNVERIFIED else word)
                for g, word in primary.executed.items()}
    filled = sum(1 for g, w in primary.executed.items()
                 if w == UNVERIFIED and executed[g] != UNVERIFIED)
    source = primary.source + (f"; {filled} group(s) from the {fallback.source}" if filled else "")
    return Census(executed=executed, kernels=dict(primary.kernels), source=source)


def layers_to_json(layers: list[LayerInfo]) -> list[Mapping]:
    return [layer.to_json_dict() for layer in layers]
