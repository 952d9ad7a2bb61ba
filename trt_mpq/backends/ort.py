"""ONNX Runtime (CPU execution provider): the embedded backend that runs anywhere.

Build = create an inference session with fixed settings, save the graph ONNX Runtime actually
optimized (`model.optimized.onnx`, specific to this CPU), and read a kernel census from one
profiled run: which groups ran integer kernels. The deployable artifact is `model.onnx`, the
portable Q/DQ graph; it must be loaded with the session settings recorded in `describe()`
(notably the disabled graph transformers below).

This module holds the session settings, the runtime options (graph transformers a plan may
turn off), build, profiling and the runner; the kernel census and per-group kernel times read
from a profiled run are `ort_census`.
"""

from __future__ import annotations

import json
import logging
import os
import time
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import onnx

from trt_mpq import options
from trt_mpq.backends.base import Artifact, Backend, BackendSpec, Runner
from trt_mpq.backends.ort_census import (
    COMPUTE_KERNELS,
    FLOAT_KERNELS,
    FUSED_TAIL_OPS,
    INTEGER_KERNELS,
    WEIGHT_PASSTHROUGH,
    attribute_kernels,
    group_times,
    read_census,
)
from trt_mpq.errors import BuildError, ConfigError, MeasurementError, PlanError
from trt_mpq.model.groups import Group
from trt_mpq.options import flag
from trt_mpq.qdq import Dialect

log = logging.getLogger(__name__)

#: the runtime option (a plan's `options`) naming graph transformers to disable, comma-separated
DISABLED_OPTION = "disabled_optimizers"
#: fused kernels ONNX Runtime's graph transformers create -> the transformers that create them
#: (names as onnxruntime 1.32 registers them; `runtime_options` checks each one works)
FUSIONS = {
    "SkipLayerNormalization": ("SkipLayerNormFusion",),
    "Gelu": ("GeluFusion", "GeluFusionL2"),
    "FastGelu": ("FastGeluFusion",),
    "BiasGelu": ("BiasGeluFusion",),
    "QuickGelu": ("QuickGeluFusion",),
    "FusedMatMul": ("MatMulScaleFusion",),
    "Attention": ("AttentionFusion",),
    "EmbedLayerNormalization": ("EmbedLayerNormFusion",),
    "BiasSoftmax": ("BiasSoftmaxFusion",),
}

#: Graph transformers disabled for graphs that contain Q/DQ (DESIGN.md §3):
#: WeightBiasQuantization silently quantizes float Conv/MatMul between DQ and Q (a mixed plan
#: would run all-int8); MatMulAddFusion breaks loading of mixed BERT Q/DQ graphs.
QDQ_DISABLED_OPTIMIZERS = ("WeightBiasQuantization", "MatMulAddFusion")


@dataclass(frozen=True)
class OrtConfig:
    threads: int | None = field(default=None, metadata=flag(
        "--threads", "intra-op threads (default: every core this process may use)",
        lo=1, hi=1024))
    inter_op_threads: int = 1
    allow_spinning: bool = False  # spinning pools of interleaved sessions steal each other's cores
    optimization_level: str = "all"  # "basic" | "extended" | "all"

    def __post_init__(self) -> None:
        options.check(self)
        if self.inter_op_threads < 1:
            raise ConfigError("inter-op threads must be >= 1")
        if self.optimization_level not in ("basic", "extended", "all"):
            raise ConfigError("optimization level must be basic, extended or all")

    @property
    def resolved_threads(self) -> int:
        if self.threads is not None:
            return self.threads
        try:
            return len(os.sched_getaffinity(0))
        except AttributeError:  # not on Linux
            return os.cpu_count() or 1


def has_qdq(model: onnx.ModelProto) -> bool:
    return any(n.op_type in ("QuantizeLinear", "DequantizeLinear", "DynamicQuantizeLinear",
                             "MatMulNBits", "MatMulInteger") for n in model.graph.node)


class OrtBackend(Backend):
    name = "ort-cpu"
    dialect = Dialect.ORT_CPU

    def __init__(self, config: OrtConfig | None = None) -> None:
        self.config = config or OrtConfig()

    # -- settings -------------------------------------------------------------------------------
    def session_options(self, *, profile_prefix: str | None = None,
                        optimized_path: Path | None = None):
        import onnxruntime as ort

        so = ort.SessionOptions()
        so.intra_op_num_threads = self.config.resolved_threads
        so.inter_op_num_threads = self.config.inter_op_threads
        so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        so.graph_optimization_level = {
            "basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
            "extended": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED,
            "all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL,
        }[self.config.optimization_level]
        so.add_session_config_entry("session.intra_op.allow_spinning",
                                    "1" if self.config.allow_spinning else "0")
        so.log_severity_level = 3
        if profile_prefix:
            so.enable_profiling = True
            so.profile_file_prefix = profile_prefix
        if optimized_path is not None:
            so.optimized_model_filepath = str(optimized_path)
        return so

    def disabled_optimizers(self, qdq: bool, options: Mapping[str, str] | None = None
                            ) -> list[str]:
        """The graph transformers a session is created without: those that break Q/DQ graphs,
        and those the plan's runtime options turn off."""
        disabled = list(QDQ_DISABLED_OPTIMIZERS) if qdq else []
        extra = (options or {}).get(DISABLED_OPTION, "")
        return disabled + [n for n in extra.split(",") if n and n not in disabled]

    def _session(self, model_path: Path, qdq: bool, options: Mapping[str, str] | None = None,
                 **kw):
        import onnxruntime as ort

        return ort.InferenceSession(str(model_path), self.session_options(**kw),
                                    providers=["CPUExecutionProvider"],
                                    disabled_optimizers=self.disabled_optimizers(qdq, options))

    # -- runtime options ------------------------------------------------------------------------
    def check_options(self, options: Mapping[str, str]) -> None:
        unknown = sorted(set(options) - {DISABLED_OPTION})
        if unknown:
            raise PlanError(f"ort-cpu has no runtime option {unknown[0]!r}; it has "
                            f"{DISABLED_OPTION!r} (comma-separated graph transformers to disable)")

    def runtime_options(self, model: onnx.ModelProto) -> dict[str, tuple[str, ...]]:
        """Fusions ONNX Runtime applies to this graph that a session can be created without:
        for every fused kernel the optimized graph holds (`FUSIONS`), the transformers that make
        it, kept only if disabling them really removes the kernel (checked with a second
        session: transformer names differ between versions, and a wrong one is ignored
        silently). On some CPUs a fused kernel is slower than the ops it replaces (MiniLM's
        SkipLayerNormalization: 1132 vs 554 us per run here), so the search measures both."""
        import tempfile

        with tempfile.TemporaryDirectory() as tmp:
            path = Path(tmp) / "model.onnx"
            onnx.save(model, str(path))
            qdq = has_qdq(model)

            def fused_ops(options: Mapping[str, str] | None) -> Counter:
                optimized = Path(tmp) / "optimized.onnx"
                self._session(path, qdq, options, optimized_path=optimized)
                return Counter(n.op_type for n in onnx.load(str(optimized),
                                                            load_external_data=False).graph.node)

            try:
                present = fused_ops(None)
            except Exception as e:  # noqa: BLE001 - the build will report it for this plan
                log.debug("runtime options: no session for this graph (%s)", _first_line(e))
                return {}
            original = Counter(n.op_type for n in model.graph.node)
            values = [""]
            for op, transformers in FUSIONS.items():
                if present[op] <= original[op]:
                    continue
                value = ",".join(transformers)
                if fused_ops({DISABLED_OPTION: value})[op] < present[op]:
                    values.append(value)
        return {DISABLED_OPTION: tuple(values)} if len(values) > 1 else {}

    def describe(self) -> dict:
        import onnxruntime as ort

        return {
            "backend": self.name,
            "onnxruntime": ort.__version__,
            "provider": "CPUExecutionProvider",
            "intra_op_threads": self.config.resolved_threads,
            "inter_op_threads": self.config.inter_op_threads,
            "allow_spinning": self.config.allow_spinning,
            "optimization_level": self.config.optimization_level,
            "disabled_optimizers_for_qdq_graphs": list(QDQ_DISABLED_OPTIMIZERS),
        }

    def timing_device(self) -> str:
        return f"{super().timing_device()}, {self.config.resolved_threads} intra-op threads"

    # -- build ----------------------------------------------------------------------------------
    def build(self, model: onnx.ModelProto, out_dir: Path, groups: list[Group],
              sample_feed: Mapping[str, np.ndarray], max_batch: int | None = None,
              options: Mapping[str, str] | None = None,
              shapes: Sequence[Mapping[str, tuple[int, ...]]] | None = None) -> Artifact:
        # one session runs every shape the graph's dynamic axes allow: `shapes` needs nothing
        options = dict(options or {})
        self.check_options(options)
        out_dir.mkdir(parents=True, exist_ok=True)
        path = out_dir / "model.onnx"
        optimized = out_dir / "model.optimized.onnx"
        onnx.save(model, str(path))
        qdq = has_qdq(model)
        t0 = time.perf_counter()
        try:
            sess = self._session(path, qdq, options, profile_prefix=str(out_dir / "profile"),
                                 optimized_path=optimized)
        except Exception as e:
            raise BuildError(f"ONNX Runtime could not create a session: {_first_line(e)}") from None
        build_s = time.perf_counter() - t0
        try:
            sess.run(None, dict(sample_feed))
        except Exception as e:
            raise MeasurementError(
                f"ONNX Runtime failed to run the model: {_first_line(e)}") from None
        profile_path = Path(sess.end_profiling())
        try:
            events = json.loads(profile_path.read_text())
        finally:
            profile_path.unlink(missing_ok=True)
        census = read_census(onnx.load(str(optimized), load_external_data=False), events, groups,
                             materialized=model)
        sidecar = out_dir / "model.onnx.json"
        sidecar.write_text(json.dumps(self.session_recipe(qdq, options), indent=2))
        return Artifact(path=path, backend=self.name, build_s=build_s, census=census,
                        files=(optimized, sidecar), options=options)

    def session_recipe(self, qdq: bool, options: Mapping[str, str]) -> dict:
        """How to create the session that was measured, by hand (written beside model.onnx)."""
        import onnxruntime as ort

        disabled = self.disabled_optimizers(qdq, options)
        level = {"basic": "ORT_ENABLE_BASIC", "extended": "ORT_ENABLE_EXTENDED",
                 "all": "ORT_ENABLE_ALL"}[self.config.optimization_level]
        return {
            "format": "trt-mpq-ort-session/1", "backend": self.name,
            "onnxruntime": ort.__version__, "runtime_options": dict(options),
            "disabled_optimizers": disabled,
            "intra_op_num_threads": self.config.resolved_threads,
            "inter_op_num_threads": self.config.inter_op_threads,
            "graph_optimization_level": level,
            "python": (
                "import onnxruntime as ort\n"
                "so = ort.SessionOptions()\n"
                f"so.intra_op_num_threads = {self.config.resolved_threads}\n"
                f"so.graph_optimization_level = ort.GraphOptimizationLevel.{level}\n"
                "sess = ort.InferenceSession('model.onnx', so, "
                f"providers=['CPUExecutionProvider'], disabled_optimizers={disabled!r})"),
        }

    def profile_groups(self, model: onnx.ModelProto, groups: list[Group],
                       feed: Mapping[str, np.ndarray], runs: int = 30,
                       work_dir: Path | None = None) -> tuple[dict[str, float], float]:
        """Per-group kernel milliseconds (mean of `runs` profiled runs after a warm-up) and the
        time in kernels no group owns; see `group_times`."""
        optimized, events = self.profiled_run(model, feed, runs, work_dir=work_dir)
        return group_times(optimized, events, groups, model, runs)

    def profiled_run(self, model: onnx.ModelProto, feed: Mapping[str, np.ndarray],
                     runs: int, options: Mapping[str, str] | None = None,
                     work_dir: Path | None = None) -> tuple[onnx.ModelProto, list[dict]]:
        """The graph ONNX Runtime optimized `model` into and the profiler's events of `runs`
        runs of `feed`, after a warm-up in a session of its own (with `options`, a plan's
        runtime options)."""
        import tempfile

        with tempfile.TemporaryDirectory(dir=work_dir) as tmp:
            path = Path(tmp) / "model.onnx"
            optimized = Path(tmp) / "model.optimized.onnx"
            onnx.save(model, str(path))
            qdq = has_qdq(model)
            try:
                warm = self._session(path, qdq, options)
                sess = self._session(path, qdq, options, profile_prefix=str(Path(tmp) / "profile"),
                                     optimized_path=optimized)
            except Exception as e:
                raise BuildError(f"ONNX Runtime could not create a session to profile: "
                                 f"{_first_line(e)}") from None
            try:
                for _ in range(3):
                    warm.run(None, dict(feed))
                del warm
                for _ in range(runs):
                    sess.run(None, dict(feed))
            except Exception as e:
                raise MeasurementError(f"ONNX Runtime failed to run the model it profiles: "
                                       f"{_first_line(e)}") from None
            events = json.loads(Path(sess.end_profiling()).read_text())
            return onnx.load(str(optimized), load_external_data=False), events

    # -- run ------------------------------------------------------------------------------------
    def open(self, artifact: Artifact) -> OrtRunner:
        qdq = has_qdq(onnx.load(str(artifact.path), load_external_data=False))
        try:
            sess = self._session(artifact.path, qdq, artifact.options)
        except Exception as e:
            raise BuildError(
                f"ONNX Runtime could not load {artifact.path}: {_first_line(e)}") from None
        return OrtRunner(sess)


SPEC = BackendSpec(
    name="ort-cpu", config=OrtConfig,
    create=lambda config, cache_dir: OrtBackend(config),
    description="ONNX Runtime, CPU execution provider (default; runs anywhere)")


class OrtRunner(Runner):
    def __init__(self, session) -> None:
        self._sess = session
        self.input_names = tuple(i.name for i in session.get_inputs())
        self.output_names = tuple(o.name for o in session.get_outputs())

    def run(self, feed: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        try:
            outs = self._sess.run(None, dict(feed))
        except Exception as e:
            raise MeasurementError(f"inference failed: {_first_line(e)}") from None
        return dict(zip(self.output_names, outs))

    def time_once(self, feed: Mapping[str, np.ndarray]) -> float:
        t0 = time.perf_counter()
        try:
            self._sess.run(None, feed)
        except Exception as e:
            raise MeasurementError(f"inference failed: {_first_line(e)}") from None
        return time.perf_counter() - t0

    def close(self) -> None:
        self._sess = None


def _first_line(e: BaseException) -> str:
    text = str(e).strip()
    return text.splitlines()[0][:500] if text else type(e).__name__


# the census lives in ort_census; its names are also importable from here
__all__ = ["COMPUTE_KERNELS", "DISABLED_OPTION", "FLOAT_KERNELS", "FUSED_TAIL_OPS", "FUSIONS",
           "INTEGER_KERNELS", "QDQ_DISABLED_OPTIMIZERS", "SPEC", "WEIGHT_PASSTHROUGH",
           "OrtBackend", "OrtConfig", "OrtRunner", "attribute_kernels", "group_times",
           "has_qdq", "read_census"]
