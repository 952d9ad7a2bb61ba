"""Reading TensorRT's per-layer report and turning it into a census (no TensorRT needed)."""

from pathlib import Path

import pytest

from trt_mpq.backends.tensorrt.layers import (
    LayerInfo,
    census_from_layers,
    classify,
    dtype_word,
    merge_censuses,
    parse_inspector_json,
    parse_layer_report,
)
from trt_mpq.model.groups import Group, GroupOp
from trt_mpq.plan import Plan, Precision
from trt_mpq.results import UNVERIFIED, Census

FIXTURES = Path(__file__).parents[1] / "fixtures" / "trt"

REPORT = """Engine Layer Information:
Name: __mye1_0_myl0_0, LayerType: shape_call, Inputs: [], Outputs: [], TacticName: x
Name: /conv1/Conv_myl0_2, LayerType: correlation, Inputs: [ { Name: a, Dimensions: [1,3,32,32], Datatype: Int8, Format: (NHWC) }], Constants: [ { Name: w, Dimensions: [64,3,7,7], Strides: [147,1,21,3], Datatype: Int8, Format: x }, { Name: b, Dimensions: [64], Datatype: Float }], Outputs: [ { Name: c, Dimensions: [1,64,16,16], Datatype: Float }], TacticName: t
Name: /q/MatMul+/k/MatMul+/v/MatMul_myl0_1, LayerType: gemm, Inputs: [ { Name: x, Dimensions: [1,64,384], Datatype: Half }], Constants: [ { Name: w, Dimensions: [384,1152], Datatype: Half }], Outputs: [ { Name: y, Datatype: Half }]
Name: __myl_FcAddCast_myl0_9, LayerType: runtime_fusion, Inputs: [ { Name: z, Dimensions: [1,512], Datatype: Half }], Constants: [ { Name: w, Dimensions: [512,10], Datatype: Half }, { Name: b, Dimensions: [1,10], Datatype: Half }], Outputs: [ { Name: logits, Datatype: Float }]
Name: __myl_ReplCastMulCastFc_myl0_3, LayerType: runtime_fusion, Inputs: [ { Name: z, Datatype: Half }], Constants: [ { Name: w, Dimensions: [384,384], Datatype: Int4 }, { Name: s, Dimensions: [12,384], Datatype: Half }], Outputs: []
"""


def _op(name, op_type, shape):
    return GroupOp(name=name, op_type=op_type, input=name + ":in", output=name + ":out",
                   weight=name + ":w", bias=None, weight_shape=shape, output_shape=(), params=0,
                   macs=0)


GROUPS = [
    Group("/conv1/Conv", (_op("/conv1/Conv", "Conv", (64, 3, 7, 7)),)),
    Group("/q/MatMul", (_op("/q/MatMul", "MatMul", (384, 384)),
                        _op("/k/MatMul", "MatMul", (384, 384)),
                        _op("/v/MatMul", "MatMul", (384, 384)))),
    Group("/fc/Gemm", (_op("/fc/Gemm", "Gemm", (10, 512)),)),
    Group("/out/MatMul", (_op("/out/MatMul", "MatMul", (384, 384)),)),
]


def test_parse_layer_report():
    layers = parse_layer_report([REPORT])
    assert [layer.type for layer in layers] == ["shape_call", "correlation", "gemm",
                                                "runtime_fusion", "runtime_fusion"]
    conv = layers[1]
    assert conv.inputs == ("int8",) and conv.constants == ("int8", "fp32")
    assert conv.constant_shapes == ((64, 3, 7, 7), (64,)) and conv.weight_sizes == {9408}
    assert conv.ops == ("/conv1/Conv",)
    assert layers[2].ops == ("/q/MatMul", "/k/MatMul", "/v/MatMul")
    assert classify(layers[2]) == "fp16" and classify(layers[4]) == "int4w"


def test_census_by_name_then_by_weight_size_in_order():
    layers = parse_layer_report([REPORT])
    census = census_from_layers(layers, GROUPS, "report")
    assert census.executed == {"/conv1/Conv": "int8", "/q/MatMul": "fp16", "/fc/Gemm": "fp16",
                               "/out/MatMul": "int4w"}
    assert "matched by weight size" in census.source
    plan = Plan.of({"/conv1/Conv": Precision.INT8, "/q/MatMul": Precision.FP16,
                    "/fc/Gemm": Precision.FP16, "/out/MatMul": Precision.INT4_WEIGHT})
    assert census.mismatches(plan) == []
    wrong = plan.with_({"/q/MatMul": Precision.INT8})
    assert census.mismatches(wrong) == [("/q/MatMul", "int8", "fp16")]


def test_unmatched_group_is_unverified_and_mixed_is_reported():
    layers = [LayerInfo("/conv1/Conv_myl0_1", "correlation", ("int8",), ("int8",), ()),
              LayerInfo("/conv1/Conv_myl0_2", "correlation", ("fp16",), ("fp16",), ())]
    census = census_from_layers(layers, GROUPS[:2], "t")
    assert census.executed["/conv1/Conv"] == "mixed(fp16,int8)"
    assert census.executed["/q/MatMul"] == UNVERIFIED  # no layer says what it ran
    plan = Plan.of({"/conv1/Conv": Precision.INT8, "/q/MatMul": Precision.INT8})
    assert census.mismatches(plan) == [("/conv1/Conv", "int8", "mixed(fp16,int8)")]
    assert census.unverified(plan) == ["/q/MatMul"]


# -- real reports, one flavour per file (tests/fixtures/trt/README.md) --------------------------
def _fixture(name: str) -> str:
    return (FIXTURES / name).read_text()


def _conv(name: str, out: int, inp: int, k: int) -> Group:
    return Group(name, (_op(name, "Conv", (out, inp, k, k)),))


RESNET_CONV = "resnetv15_stage3_conv4_fwd"


@pytest.mark.parametrize("fixture", ["trt10-inspector-resnet18-int8.json",
                                     "trt11-inspector-resnet18-int8.json"])
def test_inspector_json_of_tensorrt_10_and_11(fixture):
    layers = parse_inspector_json(_fixture(fixture))
    reformat, conv = layers
    assert not reformat.is_compute and reformat.kind == "Reformat"
    assert conv.is_compute and conv.kind == "Convolution" and conv.type == "CaskConvolution"
    assert conv.inputs == ("int8", "int8") and conv.outputs == ("int8",)
    assert conv.weights == "int8" and conv.weight_count == 589824
    assert conv.metadata_ops[:2] == (RESNET_CONV, "resnetv15_stage3_batchnorm4_fwd")
    assert RESNET_CONV in conv.ops
    census = census_from_layers(layers, [_conv(RESNET_CONV, 256, 256, 3)], "inspector")
    assert census.executed == {RESNET_CONV: "int8"}
    assert census.kernels == {"Convolution:int8": 1}


def test_dynamic_shapes_without_a_context_are_no_information_never_a_precision():
    """TensorRT reports "N/A due to dynamic shapes" for every tensor when the inspector has no
    execution context. That text must not become a precision (every plan would then be a
    precision-mismatch); the weights' type, where a layer has weights, still says what ran."""
    layers = parse_inspector_json(_fixture("trt-inspector-dynamic-no-context.json"))
    assert all(t is None for layer in layers for t in (*layer.inputs, *layer.outputs))
    conv = _conv("(Unnamed Layer* 1) [Convolution]", 12, 128, 3)
    matmul = Group("/fc/MatMul", (_op("/fc/MatMul", "MatMul", (25088, 10)),))
    census = census_from_layers(layers, [conv, matmul], "inspector")
    assert census.executed == {conv.name: "int8", "/fc/MatMul": UNVERIFIED}
    plan = Plan.of({conv.name: Precision.INT8, "/fc/MatMul": Precision.INT8})
    assert census.mismatches(plan) == [] and census.unverified(plan) == ["/fc/MatMul"]
    # without the weights' type the convolution is unverified too, not a mismatch
    no_weights = [LayerInfo(x.name, x.type, x.inputs, x.constants, x.outputs, kind=x.kind)
                  for x in layers]
    blind = census_from_layers(no_weights, [conv], "inspector")
    assert blind.executed == {conv.name: UNVERIFIED}


def test_the_report_fills_what_the_inspector_leaves_unverified():
    inspector = Census({"a": "int8", "b": UNVERIFIED, "c": UNVERIFIED}, source="inspector")
    report = Census({"a": "fp16", "b": "fp16", "c": UNVERIFIED}, source="report")
    merged = merge_censuses(inspector, report)
    assert merged.executed == {"a": "int8", "b": "fp16", "c": UNVERIFIED}
    assert "1 group(s) from the report" in merged.source


@pytest.mark.parametrize("which", ["cnn", "transformer"])
def test_tensorrt_rtx_builder_report_matches_a_mixed_plan(which, prepared_cnn,
                                                          prepared_transformer):
    """Reports printed by TensorRT-RTX 1.7.1 here for the mixed plans of the tiny models (even
    groups int8, odd fp16): the census matches them group by group."""
    groups = (prepared_cnn if which == "cnn" else prepared_transformer)[2]
    layers = parse_layer_report([_fixture(f"rtx-1.7.1-{which}-mixed.report.txt")])
    assert layers and all(None not in layer.inputs for layer in layers if layer.is_compute)
    plan = Plan.of({g.name: (Precision.INT8 if i % 2 == 0 else Precision.FP16)
                    for i, g in enumerate(groups)})
    census = census_from_layers(layers, groups, "report")
    assert census.mismatches(plan) == [] and census.unverified(plan) == [], census.executed
    # the kgen layer that quantizes conv0's input names conv0 in its Metadata; it is not the
    # convolution and must not be counted as one
    if which == "cnn":
        kgen = next(x for x in layers if x.type == "kgen" and "conv0" in x.metadata_ops)
        assert not kgen.is_compute


def test_classic_report_text_reads_format_descriptions():
    """The classic builder report spells `Format/Datatype: Row major linear FP32`: the data type
    is FP32, not the first word of the format ("Row")."""
    line = ("Name: /fc/Gemm, LayerType: CaskGemm, Inputs: [ { Name: x, Dimensions: [1,512], "
            "Format/Datatype: Row major linear FP32 }], Outputs: [ { Name: y, Dimensions: "
            "[1,10], Format/Datatype: Channel major FP16 format where channel % 8 == 0 }], "
            "ParameterType: FullyConnected, Metadata: [ONNX Layer: /fc/Gemm]")
    (layer,) = parse_layer_report([line])
    assert layer.inputs == ("fp32",) and layer.outputs == ("fp16",)
    assert layer.kind == "FullyConnected" and layer.is_compute and classify(layer) == "fp32"


def test_tensor_type_keys_of_every_schema():
    """TensorRT 11 splits "Format/Datatype"; NVIDIA's migration guide spells the new key
    "DataType", Polygraphy's inspector reads "Datatype" (as TensorRT-RTX prints it): both count."""
    import json

    for key, value in (("DataType", "Half"), ("Datatype", "Half"),
                       ("Format/Datatype", "Channel major FP16 format where channel % 8 == 0")):
        text = json.dumps({"Layers": [{"Name": "/fc/Gemm", "LayerType": "CaskGemm",
                                       "ParameterType": "MatrixMultiply",
                                       "Inputs": [{"Name": "x", key: value}], "Outputs": []}]})
        (layer,) = parse_inspector_json(text)
        assert layer.inputs == ("fp16",) and classify(layer) == "fp16", key


def test_dtype_words():
    assert dtype_word("N/A due to dynamic shapes") is None and dtype_word("") is None
    assert dtype_word("Row major linear BFloat16 format") == "bf16"
    assert dtype_word("Thirty-two wide channel vectorized row major Int8 format") == "int8"
    assert dtype_word("Row major linear UInt8 format") == "uint8"
    assert dtype_word("Half") == "fp16" and dtype_word("FP8") == "fp8"
    assert dtype_word("Something new") is None


def test_the_backend_reads_the_inspector_through_a_context_with_shapes_set():
    """With a GPU, the census asks the engine inspector, after attaching an execution context
    whose input shapes are those of the sample feed (else a dynamic-shape engine says "N/A");
    what the inspector cannot vouch for comes from the builder's report. Fake TensorRT objects
    in the shape of the bindings' API (the names are checked by test_tensorrt_surface.py)."""
    import types

    import numpy as np

    from trt_mpq.backends.tensorrt import TensorRTBackend

    calls = []
    dynamic = _fixture("trt-inspector-dynamic-no-context.json")
    static = dynamic.replace("N/A due to dynamic shapes", "Row major linear FP16 format")

    class Context:
        shapes: dict = {}

        def set_input_shape(self, name, shape):
            calls.append(("set_input_shape", name, shape))
            self.shapes[name] = shape
            return True

    class Inspector:
        execution_context = None

        def get_engine_information(self, fmt):
            calls.append(("get_engine_information", self.execution_context is not None))
            return static if self.execution_context and self.execution_context.shapes else dynamic

    class Engine:
        num_io_tensors = 2

        def get_tensor_name(self, i):
            return ["foo0", "out"][i]

        def get_tensor_mode(self, name):
            return "in" if name == "foo0" else "out"

        def create_execution_context(self):
            return Context()

        def create_engine_inspector(self):
            return Inspector()

    fake_trt = types.SimpleNamespace(
        Runtime=lambda logger: types.SimpleNamespace(deserialize_cuda_engine=lambda b: Engine()),
        TensorIOMode=types.SimpleNamespace(INPUT="in"),
        LayerInformationFormat=types.SimpleNamespace(JSON="json"), ILogger=object)
    backend = object.__new__(TensorRTBackend)
    backend.trt, backend.name, backend.gpu = fake_trt, "tensorrt", {"sm": "sm90"}
    logger = types.SimpleNamespace(text=lambda: [], errors=lambda: [])
    conv = _conv("(Unnamed Layer* 1) [Convolution]", 12, 128, 3)
    feed = {"foo0": np.zeros((4, 25088), np.float32)}
    import trt_mpq.backends.tensorrt as trt_backend

    real_logger = trt_backend._Logger
    trt_backend._Logger = lambda trt: logger
    try:
        layers, census = backend._census(b"engine", logger, [conv], feed)
    finally:
        trt_backend._Logger = real_logger
    assert calls == [("set_input_shape", "foo0", (4, 25088)), ("get_engine_information", True)]
    assert census.executed == {conv.name: "fp16"}  # the input type, now that shapes are set
    assert "engine inspector" in census.source
