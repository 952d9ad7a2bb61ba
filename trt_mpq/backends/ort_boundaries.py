"""The conversion kernels ONNX Runtime ran at a plan's precision boundaries, and their time.

At a precision boundary (`trt_mpq.qdq.boundaries`) the materialized graph has a Q/DQ pair or a
Cast. ONNX Runtime fuses a Q/DQ pair between two integer kernels away, but at a boundary the
QuantizeLinear or DequantizeLinear stays a kernel of its own, and around it the CPU provider
adds layout conversions of its own: Transposes to and from NHWC for its int8 convolutions,
ReorderInput / ReorderOutput to and from the blocked NCHWc layout of its float ones. Those are
the costs a per-layer latency table never sees (DESIGN.md §3).

`boundary_kernels` reads them from the graph ONNX Runtime optimized and one profiled run: the
conversion kernels that are, or touch the tensors of, a boundary's conversion nodes, and the
conversion kernels next to those (through their tensors), with their mean time per run. A
kernel shared by k boundaries (one Q/DQ pair feeding two float groups) counts 1/k to each.
"""

from __future__ import annotations

from collections.abc import Collection, Sequence

import onnx

from trt_mpq.backends.ort_census import _ran
from trt_mpq.qdq.boundaries import Boundary

#: kernels that convert an activation's type
TYPE_KERNELS = frozenset({"QuantizeLinear", "DequantizeLinear", "DynamicQuantizeLinear",
                          "Cast"})
#: kernels that convert an activation's layout (ONNX Runtime adds them; a model's own
#: Transpose keeps its name and is never counted)
LAYOUT_KERNELS = frozenset({"Transpose", "ReorderInput", "ReorderOutput"})
CONVERSION_KERNELS = TYPE_KERNELS | LAYOUT_KERNELS


def boundary_kernels(optimized: onnx.ModelProto, profile_events: list[dict],
                     boundaries: Sequence[Boundary], materialized: onnx.ModelProto,
                     model_nodes: Collection[str], runs: int) -> list[dict]:
    """Per boundary (in order): {"ms": mean milliseconds per run in its conversion kernels,
    "kernels": [{"name", "op", "ms", "shared"}]}. `materialized`: the graph ONNX Runtime was
    given; `model_nodes`: the prepared model's node names (a Cast or Transpose among them is
    the model's own, not a conversion)."""
    ran = _ran(profile_events)
    outputs = {n.name: set(n.output) for n in materialized.graph.node}
    nodes = list(optimized.graph.node)
    producer = {o: n for n in nodes for o in n.output if o}
    consumers: dict[str, list[onnx.NodeProto]] = {}
    for n in nodes:
        for i in n.input:
            consumers.setdefault(i, []).append(n)
    model_nodes = set(model_nodes)

    def converts(n: onnx.NodeProto) -> bool:
        op = ran.get(n.name, (n.op_type,))[0] or n.op_type
        return op in CONVERSION_KERNELS and n.name not in model_nodes

    claimed: list[set[str]] = []
    for b in boundaries:
        names = {name for name, _ in b.nodes}
        tensors = {t for name in names for t in outputs.get(name, ())}
        seeds = [n for n in nodes if converts(n) and (
            n.name in names or tensors & {*n.input, *n.output})]
        found: set[str] = set()
        todo = list(seeds)
        while todo:
            n = todo.pop()
            if n.name in found:
                continue
            found.add(n.name)
            near = [producer[i] for i in n.input if i in producer]
            near += [c for o in n.output for c in consumers.get(o, [])]
            todo += [m for m in near if converts(m) and m.name not in found]
        claimed.append(found)
    share = {}
    for found in claimed:
        for name in found:
            share[name] = share.get(name, 0) + 1
    scale = 1e-3 / max(runs, 1)
    order = {n.name: i for i, n in enumerate(nodes)}
    out = []
    for found in claimed:
        kernels = [{"name": name, "op": ran.get(name, ("",))[0] or _op(nodes, name),
                    "ms": ran[name][2] * scale / share[name] if name in ran else None,
                    "shared": share[name]}
                   for name in sorted(found, key=order.__getitem__)]
        timed = [k["ms"] for k in kernels if k["ms"] is not None]
        out.append({"ms": sum(timed) if timed else None, "kernels": kernels})
    return out


def total_ms(profile_events: list[dict], runs: int) -> float:
    """Mean milliseconds per run in all kernels of a profiled run."""
    return sum(us for _, _, us in _ran(profile_events).values()) * 1e-3 / max(runs, 1)


def _op(nodes: list[onnx.NodeProto], name: str) -> str:
    return next((n.op_type for n in nodes if n.name == name), "")


__all__ = ["CONVERSION_KERNELS", "LAYOUT_KERNELS", "TYPE_KERNELS", "boundary_kernels",
           "total_ms"]
