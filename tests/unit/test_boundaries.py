"""Precision boundaries: the boundary list of known plans on the tiny CNN built in code (tensors
and conversion nodes, by hand), ONNX Runtime's profiled conversion kernels attributed to their
boundary, TensorRT reformat layers, and the accounts in the outputs and report.md."""

from types import SimpleNamespace

import models
import pytest

from trt_mpq.backends import get_backend
from trt_mpq.backends.ort_boundaries import boundary_kernels
from trt_mpq.backends.tensorrt.reformats import boundary_layers
from trt_mpq.calib import CalibConfig
from trt_mpq.graph import GRAPH_INPUT, GRAPH_OUTPUT
from trt_mpq.model import group_edges
from trt_mpq.plan import Plan
from trt_mpq.plan import Precision as P
from trt_mpq.qdq import BASELINE, Dialect, materialize
from trt_mpq.qdq.boundaries import boundary_edges, find_boundaries
from trt_mpq.search.latency_model import LatencyModel

QDQ = ("QuantizeLinear", "DequantizeLinear")

# tiny_cnn: input -> conv0 -> relu0 (r0) -> conv_a | conv_b (one group) -> add -> relu1 (r1)
# -> conv2 -> relu2 -> gap (g) -> flatten (f) -> fc -> logits


def _plan(groups, base, **low):
    return Plan.of({g.name: low.get(g.name, base) for g in groups})


def _rows(boundaries):
    return [(b.src, b.dst, b.src_type, b.dst_type, b.tensors, b.nodes) for b in boundaries]


def _pair(tensor):
    return ((f"{tensor}_QuantizeLinear", "QuantizeLinear"),
            (f"{tensor}_DequantizeLinear", "DequantizeLinear"))


def test_an_int8_island_on_ort_cpu_has_two_boundaries_with_their_qdq_pairs(prepared_cnn,
                                                                           cnn_ranges):
    _, model, groups = prepared_cnn
    plan = _plan(groups, P.FP32, conv_a=P.INT8)
    graph = materialize(model, groups, plan, cnn_ranges, Dialect.ORT_CPU)
    found = find_boundaries(model, groups, plan, graph, P.FP32)
    assert _rows(found) == [
        ("conv0", "conv_a", "fp32", "int8", ("r0",), _pair("r0")),
        # relu1 quantizes along with the add (glue), so the stream returns to float at r1
        ("conv_a", "conv2", "int8", "fp32", ("r1",), _pair("r1")),
    ]
    # the nodes are the graph's own
    ops = {n.name: n.op_type for n in graph.graph.node}
    assert all(ops[name] == op for b in found for name, op in b.nodes)


def test_boundaries_at_the_graph_input_and_output(prepared_cnn, cnn_ranges):
    _, model, groups = prepared_cnn
    plan = _plan(groups, P.FP32, conv0=P.INT8, fc=P.INT8)
    graph = materialize(model, groups, plan, cnn_ranges, Dialect.ORT_CPU)
    assert _rows(find_boundaries(model, groups, plan, graph, P.FP32)) == [
        (GRAPH_INPUT, "conv0", "fp32", "int8", ("input",), _pair("input")),
        ("conv0", "conv_a", "int8", "fp32", ("r0",), _pair("r0")),
        ("conv2", "fc", "fp32", "int8", ("f",), _pair("f")),
        # the quantizer renamed fc's output (logits_QuantizeLinear_Input): still `logits`
        ("fc", GRAPH_OUTPUT, "int8", "fp32", ("logits",), _pair("logits")),
    ]
    uniform = Plan.uniform([g.name for g in groups], P.INT8)
    graph = materialize(model, groups, uniform, cnn_ranges, Dialect.ORT_CPU)
    assert [(b.src, b.dst) for b in find_boundaries(model, groups, uniform, graph, P.FP32)] \
        == [(GRAPH_INPUT, "conv0"), ("fc", GRAPH_OUTPUT)]


def test_tensorrt_int8_island_converts_inside_the_kernel_on_its_way_out(prepared_cnn,
                                                                        cnn_ranges):
    _, model, groups = prepared_cnn
    plan = _plan(groups, P.FP16, conv_a=P.INT8)
    graph = materialize(model, groups, plan, cnn_ranges, Dialect.TENSORRT)
    assert _rows(find_boundaries(model, groups, plan, graph, P.FP16)) == [
        ("conv0", "conv_a", "fp16", "int8", ("r0",), _pair("r0")),
        ("conv_a", "conv2", "int8", "fp16", ("r1",), ()),  # int8 conv writes fp16 itself
    ]


def test_float_and_dynamic_precisions(prepared_cnn, cnn_ranges, prepared_transformer,
                                      transformer_ranges):
    _, model, groups = prepared_cnn
    plan = _plan(groups, P.FP32, conv_a=P.FP16)
    graph = materialize(model, groups, plan, cnn_ranges, Dialect.ORT_CPU)
    found = find_boundaries(model, groups, plan, graph, P.FP32)
    assert [(b.src, b.dst, b.src_type, b.dst_type, b.tensors) for b in found] == [
        ("conv0", "conv_a", "fp32", "fp16", ("r0",)), ("conv_a", "conv2", "fp16", "fp32", ("r1",))]
    assert all(b.nodes and {op for _, op in b.nodes} == {"Cast"} for b in found)
    # dynamic int8 and weight-only int4 keep float activations: no boundary
    _, model, groups = prepared_transformer
    names = [g.name for g in groups]
    mixed = Plan.of({n: (P.INT8_DYNAMIC if i % 2 else P.FP32) for i, n in enumerate(names)})
    graph = materialize(model, groups, mixed, transformer_ranges, Dialect.ORT_CPU)
    assert find_boundaries(model, groups, mixed, graph, P.FP32) == []


def test_the_boundaries_are_the_latency_models_boundary_edges(prepared_cnn, prepared_transformer):
    import itertools

    for _, model, groups in (prepared_cnn, prepared_transformer):
        names = [g.name for g in groups]
        edges = group_edges(model, groups)
        lm = LatencyModel(names, edges, P.FP32, {})
        for lows in itertools.product((P.FP32, P.INT8), repeat=len(names)):
            plan = Plan.of(dict(zip(names, lows)))
            assert boundary_edges(plan, edges, P.FP32) == lm.boundary_edges(plan)


def test_ort_profiling_finds_the_qdq_kernels_at_their_boundary(prepared_cnn, cnn_ranges):
    """A real profiled run: the QuantizeLinear that enters the int8 island and the
    DequantizeLinear that leaves it ran as kernels of their own, each at its boundary."""
    _, model, groups = prepared_cnn
    backend = get_backend("ort-cpu", threads=1)
    plan = _plan(groups, P.FP32, conv_a=P.INT8)
    graph = materialize(model, groups, plan, cnn_ranges, backend.dialect)
    found = find_boundaries(model, groups, plan, graph, P.FP32)
    optimized, events = backend.profiled_run(graph, {"input": models.cnn_inputs(2)}, runs=3)
    into, out_of = boundary_kernels(optimized, events, found, graph,
                                    {n.name for n in model.graph.node}, runs=3)
    ops_in = {k["name"]: k["op"] for k in into["kernels"]}
    ops_out = {k["name"]: k["op"] for k in out_of["kernels"]}
    assert ops_in.get("r0_QuantizeLinear") == "QuantizeLinear"
    assert ops_out.get("r1_DequantizeLinear") == "DequantizeLinear"
    assert not set(ops_in) & set(ops_out)  # each kernel at its own boundary
    conversions = {"QuantizeLinear", "DequantizeLinear", "Cast", "Transpose", "ReorderInput",
                   "ReorderOutput"}
    for side in (into, out_of):
        assert {k["op"] for k in side["kernels"]} <= conversions
        assert all(k["ms"] is not None and k["ms"] > 0 for k in side["kernels"])
        assert side["ms"] == pytest.approx(sum(k["ms"] for k in side["kernels"]))
    # a plan without boundaries in the graph: nothing attributed
    fp32 = Plan.uniform([g.name for g in groups], P.FP32)
    assert find_boundaries(model, groups, fp32, materialize(model, groups, fp32, cnn_ranges,
                                                            backend.dialect), P.FP32) == []


def test_tensorrt_reformat_and_conversion_layers_at_their_boundary(prepared_cnn, cnn_ranges):
    _, model, groups = prepared_cnn
    plan = _plan(groups, P.FP16, conv_a=P.INT8)
    graph = materialize(model, groups, plan, cnn_ranges, Dialect.TENSORRT)
    found = find_boundaries(model, groups, plan, graph, P.FP16)
    layers = [
        {"name": "Reformatting CopyNode for Input Tensor 0 to conv_a + conv_b", "type":
         "Reformat", "kind": "Reformat", "metadata_ops": []},
        {"name": "conv_a_myl0_4", "type": "correlation", "metadata_ops": ["conv_a"]},
        {"name": "__myl_MulMinMaxRounCast_myl0_6", "type": "kgen",
         "metadata_ops": ["r0_QuantizeLinear"]},
        {"name": "conv2_myl0_7", "type": "correlation",
         "metadata_ops": ["conv2", "r0_DequantizeLinear"]},  # fused: no layer of its own
    ]
    into, out_of = boundary_layers(layers, found, [("conv_a", "conv_b"), ("conv2",)])
    assert [(h["name"], h["why"]) for h in into] == [
        ("Reformatting CopyNode for Input Tensor 0 to conv_a + conv_b", "reformat"),
        ("__myl_MulMinMaxRounCast_myl0_6", "conversion kernel")]
    assert out_of == []


def _outcome(ws, plan, latency_model, frontier=()):
    best = SimpleNamespace(evaluation=SimpleNamespace(plan=plan, label="the answer"))
    return SimpleNamespace(best=best, frontier=list(frontier), latency_model=latency_model)


def test_accounts_reach_result_pareto_and_the_report(tmp_path):
    from trt_mpq.pipeline.boundaries import account, insert
    from trt_mpq.report.boundaries import boundary_lines

    ws = models.cnn_workspace(tmp_path)
    ranges = ws.calibrate(CalibConfig(num_samples=16))
    backend = get_backend("ort-cpu", threads=1)
    plan = _plan(ws.groups, P.FP32, conv_a=P.INT8)
    other = SimpleNamespace(plan=Plan.uniform(ws.group_names(), P.INT8), label="all int8")
    fitted = {"plans": 6, "fit": {"c_edge": 0.02, "c_size": 0.01}}
    accounts = account(ws, backend, ranges, _outcome(ws, plan, fitted, [other]), tmp_path)
    a = accounts[plan.digest]
    assert a["count"] == 2 and a["estimate"]["fitted"]
    edges = {(e.src, e.dst): e for e in group_edges(ws.model, ws.groups)}
    lm = LatencyModel(ws.group_names(), edges.values(), P.FP32, {})
    for row in a["boundaries"]:  # c_edge + c_size x relative size, as the model charges
        rel = lm.size[(row["src"], row["dst"])]
        assert row["estimated_cost"] == pytest.approx(0.02 + 0.01 * rel)
        assert row["measured_ms"] > 0 and row["kernels"]
    assert a["measured"]["source"] == "onnxruntime profiler"
    assert accounts[other.plan.digest]["count"] == 2  # graph input and output
    result = {"best": {"plan_digest": plan.digest}, "baseline": {"precision": "fp32"}}
    evals = [{"plan_digest": plan.digest, "on_frontier": True, "label": "the answer"},
             {"plan_digest": other.plan.digest, "on_frontier": True, "label": "all int8",
              "latency_ratio": 0.8, "rel_drop": 0.01}]
    insert(result, evals, accounts)
    assert result["best"]["boundaries"] is a and all("boundaries" in e for e in evals)
    text = "\n".join(boundary_lines(result, evals))
    assert "## Precision boundaries" in text and "fitted on the 6 measured plans" in text
    assert "`r0_QuantizeLinear` (QuantizeLinear)" in text and "`r1`" in text
    assert "#### all int8 (x0.800, drop +1.00%): 2 boundaries" in text
    assert "QuantizeLinear" in text.split("`conv0` (fp32) | `conv_a` (int8)")[1].split("\n")[0]


def test_without_a_latency_model_or_a_profile_the_report_says_so(tmp_path):
    from trt_mpq.pipeline.boundaries import account
    from trt_mpq.report.boundaries import boundary_lines

    ws = models.cnn_workspace(tmp_path)
    ranges = ws.calibrate(CalibConfig(num_samples=16))
    backend = SimpleNamespace(name="fake", dialect=Dialect.ORT_CPU)  # no profile of any kind
    plan = _plan(ws.groups, BASELINE[Dialect.ORT_CPU], conv_a=P.INT8)
    a = account(ws, backend, ranges, _outcome(ws, plan, None), tmp_path)[plan.digest]
    assert a["estimated_total"] is None and not a["estimate"]["fitted"]
    assert all(r["estimated_cost"] is None and "measured_ms" not in r for r in a["boundaries"])
    text = "\n".join(boundary_lines({"best": {"plan_digest": plan.digest, "boundaries": a},
                                     "baseline": {"precision": "fp32"}}, []))
    assert "Estimated cost: none (fake gives no per-layer profile" in text
    assert "Measured: nothing" in text and "| n/a |" in text
