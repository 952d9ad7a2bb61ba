import json

import pytest

from trt_mpq.errors import PlanError
from trt_mpq.plan import Plan, Precision


def test_precision_parse_and_aliases():
    assert Precision.parse("INT8") is Precision.INT8
    assert Precision.parse("int8_dynamic") is Precision.INT8_DYNAMIC
    assert Precision.parse("int4") is Precision.INT4_WEIGHT
    assert Precision.parse("half") is Precision.FP16
    with pytest.raises(PlanError, match="unknown precision 'int3'"):
        Precision.parse("int3")


def test_plan_identity_does_not_depend_on_order():
    a = Plan.of({"b": Precision.INT8, "a": Precision.FP32})
    b = Plan.of({"a": Precision.FP32, "b": Precision.INT8})
    assert a == b and hash(a) == hash(b) and a.digest == b.digest
    assert a.groups == ("a", "b")
    assert a.digest != Plan.of({"a": Precision.INT8, "b": Precision.FP32}).digest


def test_plan_json_round_trip_and_views():
    p = Plan.of({"x": Precision.INT8, "y": Precision.FP16, "z": Precision.INT8})
    q = Plan.from_json(p.to_json(), ["x", "y", "z"])
    assert q == p
    assert p.counts() == {"int8": 2, "fp16": 1}
    assert p.groups_at(Precision.INT8) == ("x", "z")
    assert p["y"] is Precision.FP16
    assert p.with_({"y": Precision.FP32})["y"] is Precision.FP32
    with pytest.raises(PlanError, match="unknown group"):
        p.with_({"nope": Precision.FP32})


def test_plan_default_fills_unlisted_groups():
    p = Plan.from_json(json.dumps({"groups": {"a": "int8"}, "default": "fp32"}), ["a", "b"])
    assert p.as_dict() == {"a": Precision.INT8, "b": Precision.FP32}


@pytest.mark.parametrize("text, match", [
    ("{not json", "not valid JSON"),
    ("[1, 2]", 'must be a JSON object with a "groups"'),
    ('{"groups": {"a": 8}}', "precision must be a string"),
    ('{"groups": {"a": "int9"}}', "unknown precision"),
    ('{"groups": {"zzz": "int8"}, "default": "fp32"}', "does not have"),
    ('{"groups": {"a": "int8"}}', "unassigned"),
    ('{"groups": {}}', "unassigned"),
])
def test_malformed_plans_are_refused_with_a_fix(text, match):
    with pytest.raises(PlanError, match=match):
        Plan.from_json(text, ["a", "b"])


def test_duplicate_group_refused():
    with pytest.raises(PlanError):
        Plan((("a", Precision.INT8), ("a", Precision.FP32)))
