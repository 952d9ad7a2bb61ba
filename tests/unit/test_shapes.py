"""Deployment shapes: the text users declare them in, their validation (one place:
`options.coerce`), resolving them against a model's inputs, their feeds, the objective and its
interval, and the TensorRT profile dims they make."""

import numpy as np
import pytest

from trt_mpq import options
from trt_mpq.errors import ConfigError
from trt_mpq.measure import MeasureConfig
from trt_mpq.measure.latency import ratio_interval
from trt_mpq.measure.shaped import pair_timing, weighted_interval, weighted_ratio
from trt_mpq.shapes import (
    ShapeSet,
    ShapeSpec,
    changed_static_axes,
    fit,
    parse_weights,
    profile_dims,
    resolve,
)
from trt_mpq.task import Split


def _measure(**values):
    return options.build(MeasureConfig, values)


# -- the text --------------------------------------------------------------------------------
@pytest.mark.parametrize("text,count,labels", [
    ("batch=1,8,32", 3, ["batch=1", "batch=8", "batch=32"]),
    (" batch = 4 ", 1, ["batch=4"]),
    ("input_ids=1x64,8x128", 2, ["input_ids=1x64", "input_ids=8x128"]),
    ("a=1x64,8x64;b=1x3,8x3", 2, ["a=1x64;b=1x3", "a=8x64;b=8x3"]),
])
def test_shapes_parse_and_print_back(text, count, labels):
    spec = ShapeSpec.parse(text)
    assert len(spec) == count and [spec.key(i) for i in range(count)] == labels
    assert ShapeSpec.parse(str(spec)) == spec


@pytest.mark.parametrize("text,says", [
    ("batch=0", "every size must be in 1.."),
    ("batch=70000", "batch size must be in 1..65,536"),
    ("batch=1x8", "full dims per input"),
    ("batch=1;input_ids=1x64", "cannot be combined"),
    ("batch", "NAME=SIZES"),
    ("batch=", "NAME=SIZES"),
    ("batch=1,two", "not a size"),
    ("batch=-1", "not a size"),
    ("batch=1,1", "declared twice"),
    ("batch=" + ",".join(map(str, range(1, 18))), "1 to 16 shapes"),
    ("x=1x64,8x64x2", "differ in rank"),
    ("a=1x4,8x4;b=1x3", "as many shapes"),
    ("x=100000x100000", "elements"),
    ("x=1x2000000", "1..1,000,000"),
    ("1x=1", "not an input name"),
])
def test_nonsense_shapes_are_refused_with_what_is_wrong(text, says):
    with pytest.raises(ConfigError) as e:
        _measure(shapes=text)
    assert says in str(e.value) and str(e.value).startswith("--shapes")


@pytest.mark.parametrize("value,says", [
    ("0", "> 0"), ("1,-2", "> 0"), ("nan", "> 0"), ("inf", "> 0"), ("1,x", "not a number"),
    ([1, True], "--shape-weights takes"), ("1e7", "<= 1e+06"),
])
def test_nonsense_weights_are_refused(value, says):
    with pytest.raises(ConfigError, match="--shape-weights") as e:
        _measure(**{"shape-weights": value})
    assert says in str(e.value)


def test_settings_come_as_text_or_json_and_must_agree_in_count():
    m = _measure(shapes="batch=1,8", **{"shape-weights": "1,3"})
    assert m.shapes == ShapeSpec(batch=(1, 8)) and m.shape_weights == (1.0, 3.0)
    assert _measure(shapes="batch=1,8", **{"shape-weights": [1, 3]}) == m  # JSON numbers
    assert _measure(shapes="auto").shapes is None and MeasureConfig().shapes is None
    with pytest.raises(ConfigError, match="2 weight.* for 3 shape"):
        _measure(shapes="batch=1,8,32", **{"shape-weights": "1,3"})
    with pytest.raises(ConfigError, match="--shapes: '8' is not NAME=SIZES"):
        _measure(shapes=8)  # a number is not shapes
    with pytest.raises(ConfigError):  # a config built in code is checked alike
        MeasureConfig(shape_weights=(1.0, -1.0))
    assert parse_weights("auto") is None


def test_the_request_carries_shapes_to_the_service_ray_and_request_files():
    from trt_mpq.pipeline.request import SearchRequest

    r = SearchRequest.from_options("m.onnx", {"max-drop": "1%", "shapes": "input_ids=1x64,8x128",
                                              "shape-weights": "1,2"})
    assert str(r.measure.shapes) == "input_ids=1x64,8x128" and r.measure.shape_weights == (1, 2)
    again = SearchRequest.from_json_dict(r.to_json_dict())
    assert again == r and again.for_workers().measure == r.measure
    assert "--shapes input_ids=1x64,8x128 --shape-weights 1.0,2.0" in r.command_line()
    # only a declared set enters the store context's measurement
    assert "shapes" not in MeasureConfig().to_json_dict()
    assert r.measure.to_json_dict()["shapes"] == "input_ids=1x64,8x128"


def test_a_task_declares_shapes_as_text():
    import models

    from trt_mpq.task import Task, accuracy

    x = models.cnn_inputs(4)
    split = Split({"input": x}, np.arange(4))
    task = Task("t", None, split, split, split, accuracy(), shapes="batch=1,8",
                shape_weights=(1, 3))
    assert task.shapes == ShapeSpec(batch=(1, 8)) and task.shape_weights == (1.0, 3.0)
    with pytest.raises(ConfigError):
        Task("t", None, split, split, split, accuracy(), shapes="batch=0")


# -- resolving against a model ---------------------------------------------------------------
INPUTS = {"input_ids": ("int64", ("batch", 64)), "attention_mask": ("int64", ("batch", 64)),
          "extra": ("float32", ("batch", 3))}


@pytest.fixture()
def split():
    rng = np.random.default_rng(0)
    return Split({"input_ids": rng.integers(0, 100, (5, 64)),
                  "attention_mask": np.ones((5, 64), np.int64),
                  "extra": rng.normal(size=(5, 3)).astype(np.float32)})


def _resolve(text, split, weights=None, free=None):
    base = split.head(1).inputs
    return resolve(ShapeSpec.parse(text) if text else None, weights, INPUTS, split, base, free)


def test_batch_shapes_keep_every_other_dim_and_wrap_the_samples(split):
    shapes = _resolve("batch=1,8", split)
    assert [s.label for s in shapes] == ["batch=1", "batch=8"] and shapes.weights == (0.5, 0.5)
    big = shapes.shapes[1]
    assert big.dims == {"input_ids": (8, 64), "attention_mask": (8, 64), "extra": (8, 3)}
    assert {k: v.shape for k, v in big.feed.items()} == big.dims
    ids = split.inputs["input_ids"]
    assert (big.feed["input_ids"][5] == ids[0]).all()  # sample 5 of 8 from 5 samples is 0
    assert shapes.shapes[0].feed["input_ids"] is split.head(1).inputs["input_ids"] or \
        (shapes.shapes[0].feed["input_ids"] == ids[:1]).all()


def test_inputs_not_named_follow_a_named_one_of_their_shape(split):
    shapes = _resolve("input_ids=1x64,8x64", split, weights=(1, 3))
    s = shapes.shapes[1]
    assert s.dims == {"input_ids": (8, 64), "attention_mask": (8, 64), "extra": (8, 3)}
    assert shapes.weights == (0.25, 0.75) and shapes.primary is s


def test_a_static_axis_is_refused_unless_the_task_declares_it_free(split):
    with pytest.raises(ConfigError, match=r"'input_ids' is fixed at 64 on axis 1 .*\[batch, "
                                          r"64\].*dynamic axes \(0\)"):
        _resolve("input_ids=1x32,8x128", split)
    shapes = _resolve("input_ids=1x32,8x128", split,
                      free={"input_ids": (1,), "attention_mask": (1,)})
    long = shapes.shapes[1]
    assert long.dims["attention_mask"] == (8, 128) and long.feed["input_ids"].shape == (8, 128)
    assert (long.feed["input_ids"][:, 64:] == long.feed["input_ids"][:, :64]).all()  # wrapped
    assert shapes.shapes[0].feed["input_ids"].shape == (1, 32)  # cut
    assert changed_static_axes(shapes, INPUTS) == {"input_ids": (1,), "attention_mask": (1,)}


@pytest.mark.parametrize("text,weights,says", [
    ("nope=1x64", None, "has no input|inputs are"),
    ("input_ids=1x64x2", None, "rank 2"),
    ("batch=1,8", (1, 2, 3), "3 weight"),
    ("input_ids=1x64;extra=2x3", None, "same batch size"),
    ("", (1.0,), "--shape-weights needs --shapes"),
])
def test_shapes_that_do_not_fit_the_model_are_refused(split, text, weights, says):
    with pytest.raises(ConfigError, match=says):
        _resolve(text, split, weights)


def test_no_declaration_is_the_tasks_own_single_shape(split):
    shapes = _resolve("", split)
    assert not shapes.declared and len(shapes) == 1 and shapes.primary.label == "batch=1"
    assert ShapeSet.single({"x": np.zeros((2, 3))}).primary.dims == {"x": (2, 3)}


def test_fit_cuts_and_wraps_every_axis():
    a = np.arange(6).reshape(2, 3)
    assert fit(a, (3, 2)).tolist() == [[0, 1], [3, 4], [0, 1]]


# -- the objective ---------------------------------------------------------------------------
def test_the_objective_is_the_weighted_mean_of_per_shape_ratios(split):
    assert weighted_ratio([0.5, 1.5], [1, 3]) == pytest.approx(1.25)
    rng = np.random.default_rng(1)
    base = rng.normal(1.0, 0.01, 30)
    fast = base * 0.5 * rng.normal(1, 0.01, 30)
    slow = base * 1.5 * rng.normal(1, 0.01, 30)
    # one shape: exactly the single-shape interval
    assert weighted_interval([(fast, base)], [1.0]) == ratio_interval(fast, base)
    lo, hi = weighted_interval([(fast, base), (slow, base)], [0.25, 0.75])
    assert lo < 0.25 * 0.5 + 0.75 * 1.5 < hi and hi - lo < 0.05
    shapes = _resolve("batch=1,8", split, weights=(1, 3))
    times = [[list(fast), list(base)], [list(slow * 10), list(base * 10)]]
    pair = pair_timing(times, shapes, 0)
    assert [round(s.ratio, 1) for s in pair.shapes] == [0.5, 1.5]
    assert pair.ratio == pytest.approx(weighted_ratio([s.ratio for s in pair.shapes], [1, 3]))
    assert pair.latency == pair.shapes[1].latency  # quoted at the most-weighted shape
    lat, b, ci = pair  # unpacks as the triple timing gave before shapes
    assert ci == pair.ratio_ci and ci[0] < pair.ratio < ci[1]
    single = pair_timing([times[0]], ShapeSet.single(split.head(1).inputs), 0)
    assert single.shapes == () and single.ratio_ci == ratio_interval(fast, base)


# -- TensorRT's optimization profile -----------------------------------------------------------
def test_profile_dims_span_every_shape_with_opt_at_the_most_weighted():
    # today's single shape: batch 1 .. max_batch, other dims as the feed
    assert profile_dims([-1, 3, 8, 8], (1, 3, 8, 8), [], 64) == \
        ((1, 3, 8, 8), (1, 3, 8, 8), (64, 3, 8, 8))
    # batch=1,8,32 weighted to 8; accuracy batches of 64 at the data's own shape
    assert profile_dims([-1, 3, 224, 224], (8, 3, 224, 224),
                        [(1, 3, 224, 224), (32, 3, 224, 224), (1, 3, 224, 224)], 64) == \
        ((1, 3, 224, 224), (8, 3, 224, 224), (64, 3, 224, 224))
    # a dynamic sequence spans 32..128; a static axis stays what it is
    assert profile_dims([-1, -1], (8, 128), [(1, 32), (1, 64)], 16) == \
        ((1, 32), (8, 128), (16, 128))
    assert profile_dims([4, -1], (4, 64), [(4, 32)], 16) == ((4, 32), (4, 64), (4, 64))


def test_the_gate_recheck_compares_two_plans_by_the_weighted_objective(split):
    from trt_mpq.measure.shaped import relative

    shapes = _resolve("batch=1,8", split, weights=(1, 3))
    # plan 0 vs plan 1: x0.5 at batch 1, x2 at batch 8 -> 0.25 * 0.5 + 0.75 * 2
    times = [[[1.0] * 3, [2.0] * 3, [4.0] * 3], [[8.0] * 3, [4.0] * 3, [4.0] * 3]]
    assert relative(times, shapes, 0, 1) == pytest.approx(1.625)


def test_the_report_says_when_the_answer_is_slower_at_some_shape():
    from trt_mpq.report.shapes import shape_lines

    lat = {"median_ms": 2.0, "p90_ms": 2.0, "p10_ms": 2.0, "mean_ms": 2.0, "std_ms": 0.0,
           "min_ms": 2.0, "n": 3, "spread": 0.0}
    per = [{"shape": "batch=1", "weight": 0.5, "latency_ratio": 0.6, "latency_ratio_ci": None,
            "latency": lat, "baseline_latency": lat},
           {"shape": "batch=32", "weight": 0.5, "latency_ratio": 1.1, "latency_ratio_ci": None,
            "latency": lat, "baseline_latency": lat}]
    result = {"shapes": {"primary": "batch=1", "shapes": [
        {"shape": "batch=1", "weight": 0.5, "dims": {"x": [1, 3]}},
        {"shape": "batch=32", "weight": 0.5, "dims": {"x": [32, 3]}}]},
        "best": {"shapes": per}}
    text = "\n".join(shape_lines(result, [{"label": "k=3", "latency_ratio": 0.85,
                                           "shapes": per}]))
    assert "slower than the baseline at batch=32 (x1.100)" in text
    assert "| 1 | k=3 | 0.600 | 1.100 | 0.850 |" in text
    assert "k=3 (batch=1 x0.600, batch=32 x1.100)" in text
    assert shape_lines({"best": None}, []) == []


def test_noise_around_x1_is_not_a_plan_faster_at_one_shape_and_slower_at_another():
    from trt_mpq.report.shapes import mixed_plans

    def ev(*cis):
        return {"shapes": [{"shape": f"s{i}", "latency_ratio": sum(ci) / 2,
                            "latency_ratio_ci": list(ci)} for i, ci in enumerate(cis)]}

    noise = ev((0.98, 1.001), (0.99, 1.02))  # the baseline against itself
    flip = ev((0.60, 0.65), (1.05, 1.10))
    assert mixed_plans([noise, flip]) == [flip]
