"""Strategies, backends, precisions and dialects are each declared in one place; everything
else (CLI flags, search config, census words, dialect support) is derived from there."""

import dataclasses
import subprocess
import sys
import textwrap

import pytest

from trt_mpq import options
from trt_mpq.backends import BACKENDS, backend_spec, get_backend
from trt_mpq.cli.flags import add_flags
from trt_mpq.cli.main import build_parser, main
from trt_mpq.errors import ConfigError, PlanError
from trt_mpq.pipeline.config import SearchConfig
from trt_mpq.plan import SPECS, Precision
from trt_mpq.plan.precision import ONNXRUNTIME, TENSORRT, census_words, from_census
from trt_mpq.qdq import BASELINE, SUPPORTED, Dialect, check_plan, dialect_spec
from trt_mpq.search import STRATEGIES, Budget, strategy_spec
from trt_mpq.search import registry as strategy_registry


def test_search_imports_without_onnx_or_onnxruntime():
    code = textwrap.dedent("""
        import builtins, sys
        real = builtins.__import__
        def guarded(name, *args, **kwargs):
            if name.split(".")[0] in ("onnx", "onnxruntime", "onnx_graphsurgeon", "torch"):
                raise ImportError(f"{name} is blocked in this test")
            return real(name, *args, **kwargs)
        builtins.__import__ = guarded
        import trt_mpq.search, trt_mpq.results, trt_mpq.plan
        from trt_mpq.search import Bisection, Greedy, IlpSearch, PrefixPlans, drive
        assert not any(m.split(".")[0] in ("onnx", "onnxruntime") for m in sys.modules)
        print("ok")
    """)
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert r.returncode == 0 and r.stdout.strip() == "ok", r.stderr


def test_the_blocker_really_blocks():
    """The import test above would pass vacuously if the guard did nothing."""
    code = ("import builtins\nreal = builtins.__import__\n"
            "builtins.__import__ = lambda n, *a, **k: (_ for _ in ()).throw(ImportError(n)) "
            "if n.split('.')[0] == 'onnx' else real(n, *a, **k)\nimport trt_mpq.qdq\n")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert r.returncode != 0 and "ImportError" in r.stderr


@pytest.mark.parametrize("name", list(STRATEGIES))
def test_every_strategy_resolves_and_builds_from_defaults(name):
    spec = strategy_spec(name)
    assert spec.name == name and spec.description
    config = spec.config()
    assert dataclasses.is_dataclass(config)
    with pytest.raises(dataclasses.FrozenInstanceError):
        setattr(config, dataclasses.fields(config)[0].name, 1)
    search = SearchConfig(budget=Budget.parse("1%"), strategy=name)
    assert search.strategy_config == config
    assert search.to_json_dict()["strategy_config"] == options.to_json_dict(config)


@pytest.mark.parametrize("name", list(BACKENDS))
def test_every_backend_resolves(name):
    spec = backend_spec(name)
    assert spec.name == name and spec.description and dataclasses.is_dataclass(spec.config)


def test_unknown_names_are_config_errors():
    with pytest.raises(ConfigError, match="unknown strategy 'annealing'; use one of: bisection"):
        strategy_spec("annealing")
    with pytest.raises(ConfigError, match="unknown backend 'openvino'"):
        get_backend("openvino")
    with pytest.raises(ConfigError, match="has no setting 'thread'"):
        get_backend("ort-cpu", thread=2)
    with pytest.raises(ConfigError, match="takes a GreedyConfig"):
        SearchConfig(budget=Budget.parse("1%"), strategy="greedy",
                     strategy_config=strategy_spec("ilp").config())


def test_a_new_strategy_is_one_module_and_one_registry_line(tmp_path, monkeypatch):
    (tmp_path / "my_strategy.py").write_text(textwrap.dedent("""
        from dataclasses import dataclass, field
        from trt_mpq.options import flag
        from trt_mpq.search.base import StrategySpec
        from trt_mpq.search.strategies import PrefixSweep

        @dataclass(frozen=True)
        class EveryOtherConfig:
            stride: int = field(default=2, metadata=flag("--every-other-stride", "stride"))

        SPEC = StrategySpec(
            name="every-other", config=EveryOtherConfig, description="every other prefix",
            build=lambda config, inputs: [PrefixSweep(inputs.prefixes,
                                                      len(inputs.order) // config.stride)])
    """))
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setitem(STRATEGIES, "every-other", "my_strategy:SPEC")
    strategy_registry.strategy_spec.cache_clear()
    try:
        args = build_parser().parse_args(["search", "m.onnx", "--max-drop", "1%", "--strategy",
                                          "every-other", "--every-other-stride", "3"])
        from trt_mpq.cli.search import search_request

        config = search_request(args).search.strategy_config
        assert config.stride == 3
        assert SearchConfig(budget=Budget.parse("1%"), strategy="every-other",
                            strategy_config=config).strategy == "every-other"
    finally:
        strategy_registry.strategy_spec.cache_clear()


def test_flags_of_another_strategy_or_backend_are_refused(capsys):
    for argv, message in [
        (["--strategy", "greedy", "--ilp-steps", "3"], "--ilp-steps applies to ilp, not "
                                                        "--strategy greedy"),
        (["--strategy", "greedy", "--sweep", "3"], "--sweep applies to bisection, frontier"),
        (["--backend", "tensorrt-rtx", "--threads", "2"], "--threads applies to ort-cpu, not "
                                                           "tensorrt-rtx"),
        (["--opt-level", "2"], "--opt-level applies to tensorrt, tensorrt-rtx, not ort-cpu"),
    ]:
        assert main(["search", "nothing.onnx", "--max-drop", "1%", *argv]) == 2
        assert message in capsys.readouterr().err


def test_shared_flags_must_agree():
    @dataclasses.dataclass(frozen=True)
    class A:
        x: int = dataclasses.field(default=1, metadata=options.flag("--x", "x"))

    @dataclasses.dataclass(frozen=True)
    class B:
        x: int = dataclasses.field(default=2, metadata=options.flag("--x", "x"))

    import argparse

    p = argparse.ArgumentParser()
    seen: dict = {}
    add_flags(p, A, seen)
    with pytest.raises(AssertionError, match="declared twice"):
        add_flags(p, B, seen)


# -- precisions --------------------------------------------------------------------------------
def test_every_precision_has_one_spec():
    assert set(SPECS) == set(Precision)
    for p, spec in SPECS.items():
        assert spec.bits in (4, 8, 16, 32) and spec.label
        assert spec.fake_quant.count(":") == 1
        for alias in spec.aliases:
            assert Precision.parse(alias) is p


def test_census_words_name_one_precision_each():
    for family in (ONNXRUNTIME, TENSORRT):
        for word in census_words(family):
            p = from_census(family, word)
            assert word in SPECS[p].census[family]
    assert from_census(ONNXRUNTIME, "QLinearConv") is Precision.INT8
    assert from_census(TENSORRT, "weights:int4") is Precision.INT4_WEIGHT
    assert from_census(TENSORRT, "bf16") is None


def test_every_fake_quantizer_resolves():
    pytest.importorskip("torch")
    import importlib

    for spec in SPECS.values():
        module, name = spec.fake_quant.split(":")
        assert callable(getattr(importlib.import_module(module), name))


def test_dialect_support_follows_its_passes():
    for d in Dialect:
        spec = dialect_spec(d)
        assert SUPPORTED[d] == spec.supported and BASELINE[d] is spec.baseline
        for p in Precision:
            if p not in SUPPORTED[d]:
                assert p.spec.unavailable.get(d.value), (d, p)  # a reason for every refusal
    assert SUPPORTED[Dialect.ORT_CPU] == {Precision.FP32, Precision.FP16, Precision.INT8,
                                          Precision.INT8_DYNAMIC, Precision.INT4_WEIGHT}
    assert SUPPORTED[Dialect.TENSORRT_WEAK] == {Precision.FP32, Precision.FP16, Precision.INT8}


def test_refusals_say_why(prepared_cnn, prepared_transformer):
    groups = prepared_cnn[2]
    from trt_mpq.plan import Plan

    with pytest.raises(PlanError, match="no FP8 kernels"):
        check_plan(Plan.uniform([g.name for g in groups], Precision.FP8), groups, Dialect.ORT_CPU)
    with pytest.raises(PlanError, match="applies to MatMul groups only"):
        check_plan(Plan.uniform([g.name for g in groups], Precision.INT4_WEIGHT), groups,
                   Dialect.TENSORRT)
