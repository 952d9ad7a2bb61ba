"""The one validation of a setting (`options.coerce`), for a flag's text and a JSON value alike,
and the request type built on it: a `SearchRequest` from flags, from JSON, and back."""

from __future__ import annotations

import json
import math

import pytest

from trt_mpq import options
from trt_mpq.errors import ConfigError
from trt_mpq.pipeline.config import SearchConfig
from trt_mpq.pipeline.request import SearchRequest


def opt(cls, key):
    return next(o for o in options.options_of(cls) if o.key == key)


def test_types_ranges_finiteness_and_choices_are_checked_one_way():
    from trt_mpq.backends.ort import OrtConfig
    from trt_mpq.measure import MeasureConfig

    repeats, threads = opt(MeasureConfig, "repeats"), opt(OrtConfig, "threads")
    assert options.coerce(repeats, "20") == options.coerce(repeats, 20) == 20  # text or JSON
    assert options.coerce(repeats, 20.0) == 20
    assert options.coerce(threads, "2") == 2 and options.coerce(threads, None) is None
    for bad, why in [("many", "an integer in 3..100000, got 'many'"),
                     (-5, "got -5"), (2, "got 2"), (100001, "got 100001"),
                     (True, "got True"), ([1], "got [1]"), (2.5, "got 2.5"),
                     (math.nan, "a finite value"), (math.inf, "a finite value")]:
        with pytest.raises(ConfigError, match=f"--repeats takes .*{why.replace('[', '.')}"):
            options.coerce(repeats, bad)
    with pytest.raises(ConfigError, match="--threads takes an integer in 1..1024, got '0'"):
        options.coerce(threads, "0")
    strategy = opt(SearchConfig, "strategy")
    assert options.coerce(strategy, "boundary") == "boundary"
    with pytest.raises(ConfigError, match="--strategy takes one of bisection"):
        options.coerce(strategy, "magic")
    confidence = opt(SearchConfig, "confidence")
    assert options.coerce(confidence, "99%") == 0.99 == options.coerce(confidence, 0.99)
    assert options.coerce(confidence, "off") is None
    for bad in (1.0, 0.4, "nan", math.nan, "2"):
        with pytest.raises(ConfigError, match="--confidence"):
            options.coerce(confidence, bad)
    metric = opt(__import__("trt_mpq.pipeline.request", fromlist=["ModelRef"]).ModelRef,
                 "metric")
    with pytest.raises(ConfigError, match="--metric takes text of at most 200 characters"):
        options.coerce(metric, "x" * (3 << 20))  # a 3 MiB value is refused, never stored
    adaptive = opt(SearchConfig, "adaptive")
    assert options.coerce(adaptive, False) is False
    for bad in ("yes", 1, None):
        with pytest.raises(ConfigError, match="--adaptive takes true or false"):
            options.coerce(adaptive, bad)


def test_a_config_built_in_code_is_checked_as_a_parsed_one():
    from trt_mpq.backends.ort import OrtConfig
    from trt_mpq.measure import MeasureConfig

    with pytest.raises(ConfigError, match="--repeats takes an integer in 3..100000, got 2"):
        MeasureConfig(repeats=2)
    with pytest.raises(ConfigError, match="--threads takes an integer in 1..1024, got '2'"):
        OrtConfig(threads="2")  # the kind comes from the annotation, not the None default
    assert MeasureConfig(repeats=7).min_repeats == 7  # min(15, repeats)


def test_every_settings_kind_is_resolved_from_its_annotation():
    """A setting whose kind could not be read would be parsed as text (the bug that made
    `--threads 2` a TypeError)."""
    from trt_mpq.backends import BACKENDS, backend_spec
    from trt_mpq.search import STRATEGIES, strategy_spec

    classes = [*SearchRequest.FLAT, *(backend_spec(n).config for n in BACKENDS),
               *(strategy_spec(n).config for n in STRATEGIES)]
    for cls in classes:
        for o in options.options_of(cls):
            if isinstance(o.default, (bool, int, float)) and not isinstance(o.default, str):
                assert o.kind is type(o.default) or o.parse, (cls.__name__, o.name)
    assert opt(__import__("trt_mpq.backends.ort", fromlist=["OrtConfig"]).OrtConfig,
               "threads").kind is int


def test_a_request_from_flags_round_trips_through_json():
    request = SearchRequest.from_options("resnet-digits", {
        "max-drop": "0.1%", "strategy": "boundary", "polish": "3", "repeats": "20",
        "threads": "2", "confidence": "off", "precision": "int8", "metric": "agreement",
        "runtime-options": False, "neighbours": "2", "final-halfwidth": "2%"})
    data = json.loads(json.dumps(request.to_json_dict()))
    again = SearchRequest.from_json_dict(data)
    assert again == request
    assert again.search.strategy_config.polish == 3 and again.backend.config.threads == 2
    assert again.search.confidence is None and again.search.final_halfwidth == 0.02
    assert again.search.sensitivity_config.neighbours == 2
    assert SearchRequest.from_options("resnet-digits", again.settings()) == request


def test_a_request_refuses_what_it_cannot_run():
    base = {"max-drop": "1%"}
    for values, message in [
        ({}, "--max-drop is required"),
        ({**base, "frobnicate": 1}, "unknown setting --frobnicate"),
        ({**base, "threads": 2, "backend": "tensorrt-rtx"},
         "--threads applies to ort-cpu, not tensorrt-rtx"),
        ({**base, "ilp-steps": 2}, "--ilp-steps applies to ilp, not --strategy bisection"),
        ({**base, "ray-address": "h:1"}, "--ray-address needs --executor ray"),
        ({**base, "max-drop": "lots"}, "--max-drop: cannot read the budget"),
        ({**base, "final-halfwidth": "0%"}, "--final-halfwidth takes"),
    ]:
        with pytest.raises(ConfigError, match=message):
            SearchRequest.from_options("m.onnx", values)
    good = SearchRequest.from_options("m.onnx", base).to_json_dict()
    for broken, message in [({**good, "format": "x"}, "not a trt-mpq search request"),
                            ({**good, "extra": 1}, "unknown request field"),
                            ({**good, "measure": {"repeats": -1}}, "--repeats takes"),
                            ({**good, "measure": {"repetitions": 5}}, "unknown setting"),
                            ({**good, "search": {**good["search"], "budget": "nan"}},
                             "cannot read the budget")]:
        with pytest.raises(ConfigError, match=message):
            SearchRequest.from_json_dict(broken)
