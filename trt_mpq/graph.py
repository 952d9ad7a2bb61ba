"""The group graph as a search sees it (no onnx here: strategies import it): an `Edge` wherever
activations flow from one quantizable group to another through glue ops. Built from a model by
`trt_mpq.model.groups.group_edges`."""

from __future__ import annotations

from dataclasses import dataclass

#: the graph's own inputs and outputs as ends of an `Edge` (they carry the model's float type)
GRAPH_INPUT = "<input>"
GRAPH_OUTPUT = "<output>"


@dataclass(frozen=True)
class Edge:
    """Activations flow from group `src` to group `dst` through ops no group owns (glue: Add,
    Relu, Reshape, LayerNorm, attention's activation x activation MatMuls, ...). Where the two
    ends run with different activation types (int8 beside float), the runtime converts at this
    edge: a precision boundary. `elements`: the size of the tensor that enters `dst` (or leaves
    `src` for the graph output), per sample, unknown dims counted as 1."""

    src: str  # a group name or GRAPH_INPUT
    dst: str  # a group name or GRAPH_OUTPUT
    elements: int


__all__ = ["GRAPH_INPUT", "GRAPH_OUTPUT", "Edge"]
