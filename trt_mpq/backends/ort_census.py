"""ONNX Runtime's kernel census: which kernels each group's work ran as, read from the graph
ONNX Runtime optimized (`model.optimized.onnx`) and the events of one profiled run.

`read_census` classifies each group by the kernels it ran (integer kernels or float ones, as
the precision they mean); `group_times` sums the profiled kernel time per group. Both rest on
`attribute_kernels`, which finds the compute kernels that do a group's work in the optimized
graph, where ONNX Runtime has fused, renamed and re-laid-out the ops it was given.
"""

from __future__ import annotations

from collections import Counter

import onnx

from trt_mpq.backends.base import Census
from trt_mpq.model.groups import Group
from trt_mpq.plan.precision import ONNXRUNTIME, census_words, executed_word

#: float kernels of the compute ops; the integer kernels each precision runs are declared with
#: the precision (`PrecisionSpec.census["onnxruntime"]`)
FLOAT_KERNELS = frozenset({"Conv", "FusedConv", "NhwcFusedConv", "Gemm", "FusedGemm", "MatMul",
                           "FusedMatMul", "ConvTranspose"})
INTEGER_KERNELS = frozenset(w for w in census_words(ONNXRUNTIME) if not w.startswith("float:"))
COMPUTE_KERNELS = INTEGER_KERNELS | FLOAT_KERNELS
#: ops a weight passes through on its way to the kernel that uses it
WEIGHT_PASSTHROUGH = frozenset({"DequantizeLinear", "Cast", "Transpose", "Reshape",
                                "ReorderInput"})


def _classify(kernel: str, input_types: list[str]) -> str:
    """The census word of one compute kernel (an integer kernel's op type, or "float:<type of
    its first input>"), as the precision it means."""
    first_input = input_types[0] if input_types else "float"
    word = kernel if kernel in INTEGER_KERNELS else f"float:{first_input}"
    return executed_word(ONNXRUNTIME, word)


#: elementwise ops ONNX Runtime fuses into the Conv/Gemm before them (their output then names
#: the fused node)
FUSED_TAIL_OPS = frozenset({"Relu", "Clip", "Sigmoid", "HardSigmoid", "LeakyRelu", "Tanh",
                            "HardSwish", "Add", "Mul"})


def _tail_tensors(model: onnx.ModelProto, groups: list[Group]) -> dict[str, str]:
    """Output tensor -> group, for each group op's output and the single-consumer elementwise
    ops after it that ONNX Runtime may fuse into it."""
    consumers: dict[str, list[onnx.NodeProto]] = {}
    for node in model.graph.node:
        for i in node.input:
            consumers.setdefault(i, []).append(node)
    tails: dict[str, str] = {}
    for g in groups:
        for op in g.ops:
            t = op.output
            tails.setdefault(t, g.name)
            for _ in range(3):
                nxt = consumers.get(t, [])
                if len(nxt) != 1 or nxt[0].op_type not in FUSED_TAIL_OPS:
                    break
                t = nxt[0].output[0]
                tails.setdefault(t, g.name)
    return tails


def _ran(profile_events: list[dict]) -> dict[str, tuple[str, list[str], float]]:
    """Node name -> (kernel that ran, input types, total microseconds) from profiler events."""
    ran: dict[str, tuple[str, list[str], float]] = {}
    for ev in profile_events:
        if ev.get("cat") != "Node" or not ev.get("name", "").endswith("_kernel_time"):
            continue
        args = ev.get("args", {})
        node = ev["name"][: -len("_kernel_time")]
        types = [next(iter(t)) for t in args.get("input_type_shape", []) if t]
        prev = ran.get(node, ("", [], 0.0))[2]
        ran[node] = (args.get("op_name", ""), types, prev + float(ev.get("dur", 0)))
    return ran


def attribute_kernels(optimized: onnx.ModelProto, ran: dict, groups: list[Group],
                      materialized: onnx.ModelProto | None = None) -> dict[str, set[str]]:
    """Compute-kernel node name -> the groups whose work it does.

    A kernel belongs to a group when it consumes (possibly through a DequantizeLinear, Cast or
    layout reorder) an initializer that is one of the group's weights or biases, or was derived
    from one by ONNX Runtime or its quantizers (derived names extend the original with "_...").
    Layout transforms (NCHWc) may re-create weight *and* bias under new names; such a kernel is
    named after the tensor it produces ("<output>_nchwc"), which is the group op's output or that
    of an activation fused into it (`materialized` gives those names).
    """
    owner: dict[str, str] = {}  # weight/bias name -> group
    # a bias proves ownership only when nothing else reads it: exporters and ONNX Runtime
    # deduplicate equal initializers, so an all-zero bias may be one tensor that a LayerNorm
    # and every other layer read as well
    bias_uses = Counter(op.bias for g in groups for op in g.ops if op.bias)
    readers = Counter(i for n in optimized.graph.node for i in set(n.input))
    for g in groups:
        for op in g.ops:
            owner[op.weight] = g.name
            if op.bias and bias_uses[op.bias] == 1 and readers[op.bias] <= 1:
                owner[op.bias] = g.name
    inits = {i.name for i in optimized.graph.initializer}

    def group_of(tensor: str) -> str | None:
        if tensor not in inits:
            return None
        # derived initializers keep the original name and add "_..." segments before or after
        # it (W_quantized, FusedBack_W, ...): try every such trimming, longest first
        parts = tensor.split("_")
        for drop_front in range(len(parts)):
            for end in range(len(parts), drop_front, -1):
                name = "_".join(parts[drop_front:end])
                if name in owner:
                    return owner[name]
        return None

    consumers: dict[str, list[onnx.NodeProto]] = {}
    for node in optimized.graph.node:
        for i in node.input:
            consumers.setdefault(i, []).append(node)
    tails = _tail_tensors(materialized, groups) if materialized is not None else {}

    def named_group(node: onnx.NodeProto) -> str | None:
        base = node.name[: -len("_nchwc")] if node.name.endswith("_nchwc") else node.name
        return tails.get(base)

    kernel_groups: dict[str, set[str]] = {}
    for node in optimized.graph.node:
        gs = {g for g in (group_of(i) for i in node.input) if g}
        if not gs and ran.get(node.name, (node.op_type,))[0] in COMPUTE_KERNELS:
            g = named_group(node)
            gs = {g} if g else set()
        if not gs:
            continue
        frontier = [node]
        seen: set[str] = set()
        while frontier:
            n = frontier.pop()
            if n.name in seen:
                continue
            seen.add(n.name)
            kernel = ran.get(n.name, (n.op_type,))[0]
            if kernel in COMPUTE_KERNELS:
                kernel_groups.setdefault(n.name, set()).update(gs)
            elif n.op_type in WEIGHT_PASSTHROUGH:
                for out in n.output:
                    frontier.extend(consumers.get(out, []))
    return kernel_groups


def read_census(optimized: onnx.ModelProto, profile_events: list[dict],
                groups: list[Group], materialized: onnx.ModelProto | None = None) -> Census:
    """Classify what each group's kernels ran (see `attribute_kernels`); the profiled run tells
    which kernel each node really executed and with which input types."""
    ran = _ran(profile_events)
    kernels = Counter(kernel for kernel, _, _ in ran.values())
    found: dict[str, set[str]] = {g.name: set() for g in groups}
    optimized_types = {n.name: n.op_type for n in optimized.graph.node}
    for node, gs in attribute_kernels(optimized, ran, groups, materialized).items():
        kernel, types, _ = ran.get(node, (optimized_types.get(node, ""), [], 0.0))
        for g in gs:
            found[g].add(_classify(kernel, types))
    executed = {}
    for g in groups:
        classes = found[g.name]
        if len(classes) == 1:
            executed[g.name] = next(iter(classes))
        elif not classes:
            executed[g.name] = "unknown"
        else:
            executed[g.name] = "mixed(" + ",".join(sorted(classes)) + ")"
    return Census(executed=executed, kernels=dict(sorted(kernels.items())),
                  source="onnxruntime profiler + optimized graph")


def group_times(optimized: onnx.ModelProto, profile_events: list[dict], groups: list[Group],
                materialized: onnx.ModelProto | None, runs: int) -> tuple[dict[str, float], float]:
    """Mean milliseconds per run spent in each group's kernels, and in all other kernels (the
    Q/DQ, layout conversions and other ops no group owns). A kernel shared by k groups (fused
    Q/K/V) counts 1/k to each."""
    ran = _ran(profile_events)
    attributed = attribute_kernels(optimized, ran, groups, materialized)
    per_group = {g.name: 0.0 for g in groups}
    other = 0.0
    for node, (_, _, us) in ran.items():
        gs = attributed.get(node)
        if gs:
            for g in gs:
                per_group[g] += us / len(gs)
        else:
            other += us
    scale = 1e-3 / max(runs, 1)
    return {g: t * scale for g, t in per_group.items()}, other * scale
