"""A plan's precision boundaries, and the conversion nodes its materialized graph has there.

A boundary is a group edge (`trt_mpq.model.group_edges`: activations flowing from one group to
another through glue ops) whose two ends run with different activation types (`edge_type`:
int8 beside float, fp16 beside fp32, int8 beside fp8; the graph's own inputs and outputs have
the baseline's type). These are exactly the edges the boundary-aware latency model charges a
cost for (`trt_mpq.search.latency_model.LatencyModel.boundary_edges`).

`find_boundaries` then finds, on each boundary's path in the materialized graph, the
conversion nodes that materialize put there (a Q/DQ pair, Casts, a DynamicQuantizeLinear):
walking back from the group the stream enters, the first conversion met on each branch that
comes from the other group -- where the stream takes the entered side's type. A path can have
none: TensorRT's int8 layers write float (or fp16) outputs themselves, and the runtime then
converts inside the kernel.

Pure: reads the prepared model, its groups, the plan and the materialized graph; no backend.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import onnx

from trt_mpq.graph import GRAPH_INPUT, GRAPH_OUTPUT, Edge
from trt_mpq.model.groups import Group, group_edges
from trt_mpq.plan import Plan, Precision
from trt_mpq.plan.precision import edge_type

#: ops materialize inserts to convert an activation between types
CONVERSION_OPS = frozenset({"QuantizeLinear", "DequantizeLinear", "Cast",
                            "DynamicQuantizeLinear"})


@dataclass(frozen=True)
class Boundary:
    """One precision boundary of a plan."""

    src: str  # a group or GRAPH_INPUT
    dst: str  # a group or GRAPH_OUTPUT
    src_type: str  # the activation type on each side (`edge_type`)
    dst_type: str
    elements: int  # the edge tensor's size per sample (`Edge.elements`)
    #: the tensors (of the prepared model) the conversion sits on; with no conversion node,
    #: the tensor that enters `dst`
    tensors: tuple[str, ...]
    nodes: tuple[tuple[str, str], ...]  # (name, op type) of the conversion nodes

    @property
    def edge(self) -> Edge:
        return Edge(self.src, self.dst, self.elements)

    def to_json_dict(self) -> dict:
        return {"src": self.src, "dst": self.dst, "from": self.src_type, "to": self.dst_type,
                "elements": self.elements, "tensors": list(self.tensors),
                "nodes": [{"name": n, "op_type": t} for n, t in self.nodes]}


def boundary_edges(plan: Plan, edges: Iterable[Edge], base: Precision) -> list[Edge]:
    """The edges where `plan` switches activation type (in the order given)."""
    def kind(end: str) -> str:
        if end in (GRAPH_INPUT, GRAPH_OUTPUT):
            return edge_type(base, base)
        return edge_type(plan[end], base)

    return [e for e in edges if e.src != e.dst and kind(e.src) != kind(e.dst)]


class _Graph:
    """Producer and consumer maps of one ModelProto."""

    def __init__(self, model: onnx.ModelProto) -> None:
        self.inits = {i.name for i in model.graph.initializer}
        self.inputs = [i.name for i in model.graph.input if i.name not in self.inits]
        self.outputs = [o.name for o in model.graph.output]
        self.nodes = {n.name: n for n in model.graph.node}
        self.producer = {o: n for n in model.graph.node for o in n.output if o}
        self.consumers: dict[str, list[onnx.NodeProto]] = {}
        for n in model.graph.node:
            for i in n.input:
                self.consumers.setdefault(i, []).append(n)


def _path(src: _Graph, group_ops: set[str], starts: Sequence[str], ends: Sequence[str]
          ) -> set[str]:
    """Tensors of the prepared model on a glue path from `starts` to `ends`."""
    ahead, todo = set(starts), list(starts)
    while todo:
        for node in src.consumers.get(todo.pop(), []):
            if node.name in group_ops:
                continue
            for out in node.output:
                if out and out not in ahead:
                    ahead.add(out)
                    todo.append(out)
    behind, todo = set(), [t for t in ends if t in ahead]
    while todo:
        t = todo.pop()
        if t in behind:
            continue
        behind.add(t)
        node = src.producer.get(t)
        if node is not None and node.name not in group_ops:
            todo += [i for i in node.input if i and i not in src.inits]
    return ahead & behind


def find_boundaries(model: onnx.ModelProto, groups: Sequence[Group], plan: Plan,
                    materialized: onnx.ModelProto, base: Precision,
                    edges: Iterable[Edge] | None = None) -> list[Boundary]:
    """Every precision boundary of `plan` (in the order of `edges`, default `group_edges`),
    with the conversion nodes `materialized` (the plan's graph) has on it."""
    edges = group_edges(model, list(groups)) if edges is None else edges
    src, mat = _Graph(model), _Graph(materialized)
    by_name = {g.name: g for g in groups}
    group_of = {op.name: g.name for g in groups for op in g.ops}
    group_ops = set(group_of)
    inserted = set(mat.nodes) - set(src.nodes)  # what materialize added
    order = {n.name: i for i, n in enumerate(materialized.graph.node)}

    def conversion(node: onnx.NodeProto | None) -> bool:
        return node is not None and node.op_type in CONVERSION_OPS and node.name in inserted

    def on_path(tensor: str, path: set[str], start: str) -> str | None:
        """The path tensor a conversion's input is, or None when it is on another stream:
        `tensor` itself, or, where materialize renamed it (a group op's or a glue op's output
        that became a graph output, an FP16 converter's "_cast_to_fp16" output), the output of
        the path's node that writes it."""
        if tensor in path:
            return tensor
        node = mat.producer.get(tensor)
        if node is None:
            return tensor if start == GRAPH_INPUT and tensor in mat.inputs else None
        original = src.nodes.get(node.name)
        if original is None or group_of.get(node.name, start) != start:
            return None  # a node materialize added, or another group's op
        return next((o for o in original.output if o in path), None)

    out = []
    for e in boundary_edges(plan, edges, base):
        starts = src.inputs if e.src == GRAPH_INPUT else \
            [op.output for op in by_name[e.src].ops]
        if e.dst == GRAPH_OUTPUT:
            ends = list(src.outputs)
            entries = [t for t in ends if t in mat.producer or t in mat.inputs]
        else:
            ends = [op.input for op in by_name[e.dst].ops]
            entries = [mat.nodes[op.name].input[0] if op.name in mat.nodes else op.input
                       for op in by_name[e.dst].ops]
        path = _path(src, group_ops, starts, ends)
        found: dict[str, str] = {}  # node name -> op type
        roots: list[str] = []
        seen: set[str] = set()
        todo = list(dict.fromkeys(entries))
        while todo:
            t = todo.pop()
            if t in seen:
                continue
            seen.add(t)
            node = mat.producer.get(t)
            if node is None or node.name in group_ops:
                continue
            if not conversion(node):  # glue: go on to its activation inputs
                todo += [i for i in node.input if i and i not in mat.inits]
                continue
            chain = [node]
            while conversion(p := mat.producer.get(chain[-1].input[0])):
                chain.append(p)
            root = on_path(chain[-1].input[0], path, e.src)
            if root is not None:  # on this edge, not on another stream
                found.update({n.name: n.op_type for n in chain})
                roots.append(root)
        nodes = tuple(sorted(found.items(), key=lambda kv: order[kv[0]]))
        tensors = tuple(dict.fromkeys(roots)) if roots else \
            tuple(dict.fromkeys(t for t in ends if t in path))
        out.append(Boundary(e.src, e.dst, _type(plan, e.src, base), _type(plan, e.dst, base),
                            e.elements, tensors, nodes))
    return out


def _type(plan: Plan, end: str, base: Precision) -> str:
    return edge_type(base if end in (GRAPH_INPUT, GRAPH_OUTPUT) else plan[end], base)


__all__ = ["CONVERSION_OPS", "Boundary", "boundary_edges", "find_boundaries"]
