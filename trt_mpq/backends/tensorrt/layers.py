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

from trt_mpq.results import Census
from trt_mpq.model.groups import Group
from trt_mpq.plan.precision import TENSORRT, executed_word

_MYL = re.compile(r"_myl\d+_\d+$")

#: TensorRT data type spellings (report text, inspector JSON, enum names) -> our precision words
_DTYPE = {
    "int8": "int8", "float": "fp32", "fp32": "fp32", "float32": "fp32", "half": "fp16",
    "fp16": "fp16", "float16": "fp16", "fp8": "fp8", "float8": "fp8", "e4m3": "fp8",
    "int4": "int4", "bf16": "bf16", "bfloat16": "bf16", "int32": "int32", "int64": "int64",
    "bool": "bool", "uint8": "uint8",
}

#: layer types that do the work of a Conv/Gemm/MatMul group
COMPUTE_TYPES = frozenset({"correlation", "convolution", "cask_convolution", "caskconvolution",
                           "gemm", "matrixmultiply", "matrix_multiply", "fullyconnected",
                           "cask_gemm", "caskgemm", "myelin_gemm", "deconvolution"})


@dataclass(frozen=True)
class LayerInfo:
    name: str
    type: str
    inputs: tuple[str, ...]  # precision words, e.g. ("int8",)
    constants: tuple[str, ...]
    outputs: tuple[str, ...]
    constant_shapes: tuple[tuple[int, ...], ...] = ()

    @property
    def ops(self) -> tuple[str, ...]:
        """The ONNX node names this layer was made from."""
        base = _MYL.sub("", self.name.strip())
        if base.startswith("{ForeignNode[") and base.endswith("]}"):
            base = base[len("{ForeignNode["):-2]
        return tuple(p.strip() for p in base.split("+") if p.strip())

    @property
    def is_compute(self) -> bool:
        return self.type.lower().replace(" ", "") in COMPUTE_TYPES

    @property
    def weight_sizes(self) -> set[int]:
        """Element counts of the layer's constants of rank >= 2 (its weights)."""
        return {math.prod(s) for s in self.constant_shapes if len(s) >= 2}

    def to_json_dict(self) -> dict:
        return {"name": self.name, "type": self.type, "inputs": list(self.inputs),
                "constants": list(self.constants), "outputs": list(self.outputs),
                "constant_shapes": [list(s) for s in self.constant_shapes]}


def _dtype_word(text: str) -> str:
    t = text.strip().lower()
    if t in _DTYPE:
        return _DTYPE[t]
    for key, word in (("int8", "int8"), ("fp8", "fp8"), ("e4m3", "fp8"), ("int4", "int4"),
                      ("half", "fp16"), ("fp16", "fp16"), ("bf16", "bf16"), ("fp32", "fp32"),
                      ("float", "fp32")):
        if key in t:
            return word
    return t


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


def _dtypes(section: str) -> tuple[str, ...]:
    return tuple(_dtype_word(m) for m in re.findall(r"Datatype: ([A-Za-z0-9_]+)", section))


def _shapes(section: str) -> tuple[tuple[int, ...], ...]:
    return tuple(tuple(int(x) for x in m.split(",") if x.strip().lstrip("-").isdigit())
                 for m in re.findall(r"Dimensions: \[([^\]]*)\]", section))


def parse_layer_report(log_lines: Iterable[str]) -> list[LayerInfo]:
    """Layers from the builder's detailed report ("Name: ..., LayerType: ..., Inputs: [...]")."""
    layers = []
    for line in (piece for message in log_lines for piece in message.splitlines()):
        line = line.strip()
        if not line.startswith("Name: ") or ", LayerType: " not in line:
            continue
        name = line[len("Name: "): line.index(", LayerType: ")]
        rest = line[line.index(", LayerType: ") + len(", LayerType: "):]
        ltype = rest.split(",", 1)[0].strip()
        constants = _bracket(line, "Constants")
        layers.append(LayerInfo(name=name, type=ltype, inputs=_dtypes(_bracket(line, "Inputs")),
                                constants=_dtypes(constants),
                                outputs=_dtypes(_bracket(line, "Outputs")),
                                constant_shapes=_shapes(constants)))
    return layers


def parse_inspector_json(text: str) -> list[LayerInfo]:
    """Layers from `IEngineInspector.get_engine_information(LayerInformationFormat.JSON)`."""
    data = json.loads(text)
    out = []
    for layer in data.get("Layers", []):
        if isinstance(layer, str):  # verbosity below DETAILED: names only
            out.append(LayerInfo(layer, "", (), (), ()))
            continue

        def types(items) -> tuple[str, ...]:
            words = []
            for item in items or []:
                dt = item.get("Datatype") or item.get("Format/Datatype") or ""
                words.append(_dtype_word(dt))
            return tuple(words)

        shapes = tuple(tuple(int(d) for d in c.get("Dimensions", []))
                       for c in layer.get("Constants") or [])
        out.append(LayerInfo(name=str(layer.get("Name", "")),
                             type=str(layer.get("LayerType", "")),
                             inputs=types(layer.get("Inputs")),
                             constants=types(layer.get("Constants")),
                             outputs=types(layer.get("Outputs")), constant_shapes=shapes))
    return out


def classify(layer: LayerInfo) -> str:
    """The precision a compute layer runs: its data input type, int4 weights if its weights are
    int4 (census words of the "tensorrt" family, see `trt_mpq.plan.precision`)."""
    if "int4" in layer.constants:
        return executed_word(TENSORRT, "weights:int4")
    first = next((t for t in layer.inputs if t not in ("bool", "int32", "int64")), "")
    return executed_word(TENSORRT, first) if first else "unknown"


def census_from_layers(layers: list[LayerInfo], groups: list[Group], source: str) -> Census:
    """Attribute compute layers to groups, then classify them.

    First by name: the ONNX node names a layer carries. Fused kernels (TensorRT-RTX/Myelin
    "runtime_fusion" layers such as "__myl_FcAddCast") lose the names; a group op left without
    a layer is then matched to the next unclaimed layer, in execution order, that carries a
    weight constant of the op's size (the ops and the layers are both in topological order).
    """
    owner = {op: g.name for g in groups for op in g.op_names}
    found: dict[str, set[str]] = {g.name: set() for g in groups}
    claimed: set[int] = set()
    named_ops: set[str] = set()
    for i, layer in enumerate(layers):
        hits = [op for op in layer.ops if op in owner]
        if hits and (layer.is_compute or layer.weight_sizes):
            claimed.add(i)
            for op in hits:
                named_ops.add(op)
                found[owner[op]].add(classify(layer))
    by_size = 0
    cursor = 0
    for g in groups:
        for op in g.ops:
            if op.name in named_ops:
                continue
            size = math.prod(op.weight_shape)
            for i in range(cursor, len(layers)):
                if i not in claimed and size in layers[i].weight_sizes:
                    claimed.add(i)
                    found[g.name].add(classify(layers[i]))
                    cursor = i + 1
                    by_size += 1
                    break
    kernels: dict[str, int] = {}
    for i in sorted(claimed):
        key = f"{layers[i].type}:{classify(layers[i])}"
        kernels[key] = kernels.get(key, 0) + 1
    executed = {}
    for g in groups:
        words = found[g.name]
        executed[g.name] = (next(iter(words)) if len(words) == 1 else
                            "unknown" if not words else "mixed(" + ",".join(sorted(words)) + ")")
    if by_size:
        source += f" ({by_size} op(s) matched by weight size and order)"
    return Census(executed=executed, kernels=dict(sorted(kernels.items())), source=source)


def layers_to_json(layers: list[LayerInfo]) -> list[Mapping]:
    return [layer.to_json_dict() for layer in layers]
