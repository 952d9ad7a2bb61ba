"""The layers of a TensorRT / TensorRT-RTX engine that convert at a plan's precision boundaries.

Two kinds, read from the layer report (`layers.json`, `trt_mpq.backends.tensorrt.layers`):

- Reformat layers ("Reformatting CopyNode for Input Tensor 0 to <layer>"): TensorRT inserts
  them where a tensor's type or layout does not suit the layer that reads it; one that feeds
  a layer made from the boundary's conversion nodes or from the group the stream enters is at
  that boundary. These are the layers of TensorRT issues #4039 / #4273 (INT8 engines no
  faster than FP16).
- Conversion kernels: layers made only from conversion nodes (a QuantizeLinear that Myelin
  compiled into a kernel of its own, "__myl_MulMinMaxRounCast" with Metadata
  "[ONNX Layer: r1_QuantizeLinear]"), some of them the boundary's. A Q/DQ fused into a
  compute layer costs no layer of its own and is not listed.

The report has no times: per-layer times need the engine profiler on a GPU.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence

from trt_mpq.backends.tensorrt.layers import LayerInfo
from trt_mpq.qdq.boundaries import Boundary

_REFORMAT = re.compile(r"^Reformatting CopyNode for (?:Input|Output) Tensor \d+ to (.*)$")


def _layer(d: Mapping) -> LayerInfo:
    return LayerInfo(name=str(d.get("name", "")), type=str(d.get("type", "")), inputs=(),
                     kind=str(d.get("kind", "")),
                     metadata_ops=tuple(d.get("metadata_ops") or ()))


def _is_reformat(layer: LayerInfo) -> bool:
    return "reformat" in (layer.kind or layer.type).lower().replace(" ", "")


def _target_ops(name: str) -> set[str]:
    m = _REFORMAT.match(name.strip())
    return {p.strip() for p in m.group(1).split("+") if p.strip()} if m else set()


def boundary_layers(layers: Sequence[Mapping], boundaries: Sequence[Boundary],
                    entered: Sequence[Sequence[str]]) -> list[list[dict]]:
    """Per boundary (in order), the layers at it: [{"name", "type", "why"}]. `layers`: the
    layer report as `layers_to_json` wrote it; `entered`: per boundary, the ONNX node names of
    the group the stream enters (empty for the graph output)."""
    parsed = [_layer(d) for d in layers]
    conversions = {name for b in boundaries for name, _ in b.nodes}
    out: list[list[dict]] = []
    for b, ops in zip(boundaries, entered):
        mine = {name for name, _ in b.nodes}
        hits = []
        for layer in parsed:
            if _is_reformat(layer):
                target = _target_ops(layer.name) | set(layer.metadata_ops)
                if target & (mine | set(ops)):
                    hits.append({"name": layer.name, "type": layer.kind or layer.type,
                                 "why": "reformat"})
            elif (made := set(layer.metadata_ops) or set(layer.ops)) and made <= conversions \
                    and made & mine:  # Myelin names its kernels "__myl_...": trust Metadata
                hits.append({"name": layer.name, "type": layer.kind or layer.type,
                             "why": "conversion kernel"})
        out.append(hits)
    return out


__all__ = ["boundary_layers"]
