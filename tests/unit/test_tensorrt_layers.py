"""Reading TensorRT's per-layer report and turning it into a census (no TensorRT needed)."""

import json

from trt_mpq.backends.tensorrt.layers import (
    LayerInfo,
    census_from_layers,
    classify,
    parse_inspector_json,
    parse_layer_report,
)
from trt_mpq.model.groups import Group, GroupOp
from trt_mpq.plan import Plan, Precision

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
    Group("/q/MatMul", (_op("/q/MatMul", "MatMul", (384, 384)), _op("/k/MatMul", "MatMul", (384, 384)),
                        _op("/v/MatMul", "MatMul", (384, 384)))),
    Group("/fc/Gemm", (_op("/fc/Gemm", "Gemm", (10, 512)),)),
    Group("/out/MatMul", (_op("/out/MatMul", "MatMul", (384, 384)),)),
]


def test_parse_layer_report():
    layers = parse_layer_report([REPORT])
    assert [l.type for l in layers] == ["shape_call", "correlation", "gemm", "runtime_fusion",
                                        "runtime_fusion"]
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


def test_unmatched_group_is_unknown_and_mixed_is_reported():
    layers = [LayerInfo("/conv1/Conv_myl0_1", "correlation", ("int8",), ("int8",), ()),
              LayerInfo("/conv1/Conv_myl0_2", "correlation", ("fp16",), ("fp16",), ())]
    census = census_from_layers(layers, GROUPS[:2], "t")
    assert census.executed["/conv1/Conv"] == "mixed(fp16,int8)"
    assert census.executed["/q/MatMul"] == "unknown"


def test_parse_inspector_json():
    text = json.dumps({"Layers": [
        {"Name": "/conv1/Conv + /relu/Relu", "LayerType": "CaskConvolution",
         "Inputs": [{"Name": "x", "Dimensions": [1, 3, 8, 8], "Format/Datatype": "Channel major INT8 format"}],
         "Constants": [{"Dimensions": [64, 3, 7, 7], "Datatype": "Int8"}],
         "Outputs": [{"Format/Datatype": "Row major linear FP16 format"}]},
        "name-only-layer"]})
    layers = parse_inspector_json(text)
    assert layers[0].ops == ("/conv1/Conv", "/relu/Relu")
    assert layers[0].inputs == ("int8",) and layers[0].outputs == ("fp16",)
    assert layers[0].is_compute and classify(layers[0]) == "int8"
    assert layers[1].name == "name-only-layer" and not layers[1].is_compute
