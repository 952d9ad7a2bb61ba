"""Quantizable groups.

A quantizable op is a Conv, Gemm or MatMul whose weight (input 1) is a constant initializer.
Ops that read the same activation tensor form one group (a ResNet block's first conv and its
downsample conv; attention's query, key and value projections): they share that tensor's
activation quantizer, so quantizing one and not the other would either quantize the tensor for
a float consumer or make two copies of it. A group is named after its first op (graph order),
which is an ONNX node name and therefore stable across runs.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import onnx

from trt_mpq.errors import ModelError
from trt_mpq.graph import GRAPH_INPUT, GRAPH_OUTPUT, Edge

QUANTIZABLE_OPS = ("Conv", "Gemm", "MatMul")


@dataclass(frozen=True)
class GroupOp:
    name: str
    op_type: str
    input: str  # the activation tensor
    output: str
    weight: str  # initializer name
    bias: str | None  # initializer name (Conv/Gemm input 2), if any
    weight_shape: tuple[int, ...]
    output_shape: tuple[int | str, ...]
    params: int
    macs: int  # multiply-accumulates for one sample (unknown dims counted as 1)


@dataclass(frozen=True)
class Group:
    name: str
    ops: tuple[GroupOp, ...]

    @property
    def op_type(self) -> str:
        types = {o.op_type for o in self.ops}
        return self.ops[0].op_type if len(types) == 1 else "+".join(sorted(types))

    @property
    def op_names(self) -> tuple[str, ...]:
        return tuple(o.name for o in self.ops)

    @property
    def params(self) -> int:
        return sum(o.params for o in self.ops)

    @property
    def macs(self) -> int:
        return sum(o.macs for o in self.ops)

    @property
    def weights(self) -> tuple[str, ...]:
        return tuple(o.weight for o in self.ops)

    def to_json_dict(self) -> dict:
        return {
            "name": self.name,
            "op_type": self.op_type,
            "ops": [
                {"name": o.name, "op_type": o.op_type, "weight_shape": list(o.weight_shape),
                 "output_shape": list(o.output_shape), "params": o.params, "macs": o.macs}
                for o in self.ops
            ],
            "params": self.params,
            "macs": self.macs,
        }


def _shape_of(vi: onnx.ValueInfoProto) -> tuple[int | str, ...]:
    t = vi.type.tensor_type
    if not t.HasField("shape"):
        return ()
    return tuple(d.dim_value if d.HasField("dim_value") else (d.dim_param or "?")
                 for d in t.shape.dim)


def _known(dims: tuple[int | str, ...]) -> list[int]:
    return [d if isinstance(d, int) and d > 0 else 1 for d in dims]


def find_groups(model: onnx.ModelProto) -> list[Group]:
    """Return the model's quantizable groups in graph order. Raises `ModelError` if none."""
    inits = {i.name: tuple(i.dims) for i in model.graph.initializer}
    shapes: dict[str, tuple[int | str, ...]] = {}
    for vi in list(model.graph.value_info) + list(model.graph.input) + list(model.graph.output):
        shapes[vi.name] = _shape_of(vi)
    if not any(n.op_type in QUANTIZABLE_OPS for n in model.graph.node) or len(shapes) <= len(
        model.graph.input
    ) + len(model.graph.output):
        try:
            inferred = onnx.shape_inference.infer_shapes(model)
            for vi in inferred.graph.value_info:
                shapes.setdefault(vi.name, _shape_of(vi))
        except Exception:  # shapes are for reporting MACs only
            pass

    ops: list[GroupOp] = []
    for node in model.graph.node:
        if node.op_type not in QUANTIZABLE_OPS or node.domain not in ("", "ai.onnx"):
            continue
        if len(node.input) < 2 or node.input[1] not in inits or node.input[0] in inits:
            continue
        wshape = inits[node.input[1]]
        if node.op_type == "Gemm":
            attrs = {a.name: a for a in node.attribute}
            if "transA" in attrs and attrs["transA"].i:
                continue  # activation transposed: not a weight GEMM we quantize
        bias = None
        if node.op_type in ("Conv", "Gemm") and len(node.input) > 2 and node.input[2] in inits:
            bias = node.input[2]
        out_shape = shapes.get(node.output[0], ())
        params = math.prod(wshape) + (math.prod(inits[bias]) if bias else 0)
        ops.append(GroupOp(
            name=node.name, op_type=node.op_type, input=node.input[0], output=node.output[0],
            weight=node.input[1], bias=bias, weight_shape=wshape, output_shape=out_shape,
            params=params, macs=_macs(node.op_type, wshape, out_shape, node),
        ))
    if not ops:
        raise ModelError(
            "the model has no quantizable layer (no Conv, Gemm or MatMul with a constant weight); "
            "trt-mpq has nothing to search. Export the model with weights as initializers"
        )
    by_input: dict[str, list[GroupOp]] = {}
    for op in ops:
        by_input.setdefault(op.input, []).append(op)
    groups: list[Group] = []
    done: set[str] = set()
    for op in ops:
        if op.input in done:
            continue
        done.add(op.input)
        members = tuple(by_input[op.input])
        groups.append(Group(name=members[0].name, ops=members))
    return groups


def _macs(op_type: str, wshape: tuple[int, ...], out_shape: tuple[int | str, ...],
          node: onnx.NodeProto) -> int:
    out = _known(out_shape)
    if op_type == "Conv" and len(wshape) >= 3 and out:
        # out: N, M, spatial...; weight: M, C/group, k...
        per_out = math.prod(wshape[1:])
        return int(math.prod(out[1:]) * per_out)
    if op_type in ("MatMul", "Gemm") and len(wshape) == 2:
        k, n = wshape
        if op_type == "Gemm":
            attrs = {a.name: a for a in node.attribute}
            if "transB" in attrs and attrs["transB"].i:
                n, k = wshape
        rows = math.prod(out[1:-1]) if len(out) > 2 else 1
        return int(rows * k * n)
    return 0


def group_index(groups: list[Group]) -> dict[str, Group]:
    return {g.name: g for g in groups}


def group_edges(model: onnx.ModelProto, groups: list[Group]) -> list[Edge]:
    """The group graph: an edge wherever a path of glue ops leads from one group's output (or a
    graph input) to another group's activation input (or a graph output). Paths stop at group
    ops, so an edge never skips over a group. Sorted by (src, dst) in graph order."""
    inits = {i.name for i in model.graph.initializer}
    shapes: dict[str, tuple[int | str, ...]] = {}
    try:
        inferred = onnx.shape_inference.infer_shapes(model)
        value_infos = list(inferred.graph.value_info)
    except Exception:  # sizes only weigh edges; unknown ones count as 1
        value_infos = list(model.graph.value_info)
    for vi in value_infos + list(model.graph.input) + list(model.graph.output):
        shapes.setdefault(vi.name, _shape_of(vi))
    consumers: dict[str, list[onnx.NodeProto]] = {}
    for node in model.graph.node:
        for t in node.input:
            consumers.setdefault(t, []).append(node)
    op_group = {op.name: g.name for g in groups for op in g.ops}
    op_input = {op.name: op.input for g in groups for op in g.ops}
    outputs = {o.name for o in model.graph.output}

    def size(tensor: str) -> int:
        return math.prod(_known(shapes.get(tensor, ())[1:])) if shapes.get(tensor) else 1

    # a join: a glue op where streams computed by different groups meet (a residual Add, a
    # Concat); attention's score and context MatMuls, whose inputs come from one group (its
    # query/key/value projections), are not joins. ONNX nodes are in topological order.
    producers: dict[str, frozenset[str]] = {}
    joins: set[str] = set()
    for node in model.graph.node:
        group = op_group.get(node.name)
        if group is not None:
            for out in node.output:
                producers[out] = frozenset({group})
            continue
        ins = [producers[t] for t in node.input if t in producers]
        if len(set(ins)) >= 2:
            joins.add(node.name)
        merged = frozenset().union(*ins) if ins else None
        if merged:
            for out in node.output:
                producers[out] = merged

    def reach(start: str) -> dict[str, int]:
        """Groups (and GRAPH_OUTPUT) reached from `start` through glue, with the tensor size.
        A path crosses at most one join: past it the stream is shared with other groups, and
        its next join's edges are that join's own (a residual stream does not connect every
        block to every later block)."""
        found: dict[str, int] = {}
        seen, todo = {start: 0}, [(start, 0)]
        while todo:
            t, crossed = todo.pop()
            if t in outputs:
                found.setdefault(GRAPH_OUTPUT, size(t))
            for node in consumers.get(t, []):
                group = op_group.get(node.name)
                if group is not None:
                    if op_input[node.name] == t:  # its activation, not a weight or bias
                        found.setdefault(group, size(t))
                    continue
                n = crossed + (node.name in joins)
                if n > 1:
                    continue
                for out in node.output:
                    if out and seen.get(out, 2) > n:
                        seen[out] = n
                        todo.append((out, n))
        return found

    pos = {g.name: i for i, g in enumerate(groups)} | {GRAPH_INPUT: -1,
                                                       GRAPH_OUTPUT: len(groups)}
    edges: dict[tuple[str, str], int] = {}
    for i in model.graph.input:
        if i.name not in inits:
            for dst, n in reach(i.name).items():
                edges[(GRAPH_INPUT, dst)] = max(edges.get((GRAPH_INPUT, dst), 0), n)
    for g in groups:
        for op in g.ops:
            for dst, n in reach(op.output).items():
                if dst != g.name:
                    edges[(g.name, dst)] = max(edges.get((g.name, dst), 0), n)
    return [Edge(s, d, n) for (s, d), n in sorted(edges.items(),
                                                  key=lambda kv: (pos[kv[0][0]], pos[kv[0][1]]))]
