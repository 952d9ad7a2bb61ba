"""TensorRT backends: `tensorrt` (TensorRT 10.x / 11.x, module `tensorrt`) and `tensorrt-rtx`
(module `tensorrt_rtx`), one implementation behind the backend contract.

Build: parse the materialized ONNX, build a serialized engine with the settings of `TrtConfig`
(strongly typed from the `tensorrt` dialect; on TensorRT 10 optionally weakly typed, with
per-layer precision constraints and our calibrated dynamic ranges), keep a timing cache per GPU,
and read what every layer runs from the builder's detailed layer report (works without a GPU,
e.g. TensorRT-RTX ahead-of-time builds) or, with a GPU, from the engine inspector. Run/time:
`runner.TrtRunner` (cuda-python, CUDA events around `execute_async_v3`, optional CUDA graph).

Nothing here is imported by `import trt_mpq`; the TensorRT module is imported when a backend is
created, with a clear error if it is missing.
"""

from __future__ import annotations

import hashlib
import importlib
import json
import logging
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import onnx

from trt_mpq import options
from trt_mpq.backends.base import Artifact, Backend, BackendSpec, Runner
from trt_mpq.backends.tensorrt.gpu import gpu_info
from trt_mpq.backends.tensorrt.layers import (
    LayerInfo,
    census_from_layers,
    layers_to_json,
    merge_censuses,
    parse_inspector_json,
    parse_layer_report,
)
from trt_mpq.backends.tensorrt.logger import _Logger
from trt_mpq.errors import BuildError, ConfigError
from trt_mpq.model.groups import Group
from trt_mpq.options import flag
from trt_mpq.qdq import Dialect
from trt_mpq.results import Census
from trt_mpq.shapes import profile_dims

log = logging.getLogger(__name__)

MODULES = {"tensorrt": "tensorrt", "tensorrt-rtx": "tensorrt_rtx"}
INSTALL_HINT = {
    "tensorrt": "run inside NVIDIA's TensorRT container (docker/Dockerfile), or install TensorRT "
                "with its libraries from NVIDIA's index: pip install tensorrt-cu13 "
                "--extra-index-url https://pypi.nvidia.com (PyPI has the Python bindings, "
                "tensorrt-cu13-bindings, but not the libraries they load)",
    "tensorrt-rtx": "pip install 'trt-mpq[tensorrt-rtx]' (TensorRT-RTX, builds engines even "
                    "without a GPU)",
}
#: runtime options a plan may carry (`Plan.options`) and their values ("" = the config's)
RUNTIME_OPTIONS = {"builder_optimization_level": ("", "0", "1", "2", "3", "4", "5"),
                   "cuda_graph": ("", "0", "1")}
RTX_TARGETS = ("sm75", "sm80", "sm86", "sm89", "sm120", "sm121")


def rtx_runs_on(sm: str) -> bool:
    """Whether TensorRT-RTX runs engines on a GPU of this compute capability ("sm90")."""
    major, minor = int(sm[2:-1]), int(sm[-1])
    return (major, minor) in ((7, 5), (8, 0), (8, 6), (8, 9)) or major >= 12


def import_trt(flavor: str):
    if flavor not in MODULES:
        raise ConfigError(f"unknown TensorRT flavour {flavor!r}; use one of {sorted(MODULES)}")
    try:
        return importlib.import_module(MODULES[flavor])
    except ImportError as e:
        raise ConfigError(f"backend {flavor} needs the Python module {MODULES[flavor]!r} "
                          f"({e}); {INSTALL_HINT[flavor]}") from None


def major_version(trt) -> int:
    return int(str(trt.__version__).split(".")[0])


def _targets(text: str) -> tuple[str, ...]:
    return tuple(c.strip().lower() for c in text.split(",") if c.strip())


@dataclass(frozen=True)
class TrtConfig:
    optimization_level: int = field(default=3, metadata=flag(
        "--opt-level", "builder optimization level", lo=0, hi=5))
    workspace_mb: int | None = field(default=None, metadata=flag(
        "--workspace-mb", "workspace limit in MiB (default: the device's memory)",
        lo=1, hi=2**24))
    compute_capabilities: tuple[str, ...] = field(default=(), metadata=flag(
        "--compute-capability", "tensorrt-rtx: GPUs to build for, e.g. sm86,sm89 (default: the "
        "GPU present; needed without a GPU)", parse=_targets, metavar="SM[,SM...]"))
    typing: str = field(default="strong", metadata=flag(
        "--typing", "strong (precision from the graph) or weak (TensorRT 10 only: per-layer "
        "precision constraints)", choices=("strong", "weak")))
    timing_cache: bool = True  # one timing cache per GPU, reused by every plan of a search
    cuda_graph: bool = field(default=False, metadata=flag(
        "--cuda-graph", "time CUDA-graph replays instead of enqueues"))
    require_census: bool = field(default=True, metadata=flag(
        "--require-census", "refuse plans whose engine does not say what every group runs "
        "(--no-require-census: measure them, and the report says which groups are unverified)"))

    def __post_init__(self) -> None:
        options.check(self)
        bad = [c for c in self.compute_capabilities if c not in RTX_TARGETS]
        if bad:
            raise ConfigError(f"unknown compute capability {bad[0]!r}; TensorRT-RTX targets "
                              f"{', '.join(RTX_TARGETS)}")

    def to_json_dict(self) -> dict:
        return options.to_json_dict(self)


class TensorRTBackend(Backend):
    dialect = Dialect.TENSORRT

    def __init__(self, flavor: str = "tensorrt", config: TrtConfig | None = None,
                 cache_dir: Path | None = None) -> None:
        self.flavor = flavor
        self.cache_dir = cache_dir  # where the timing cache is kept (None: not kept)
        self.name = flavor
        self.trt = import_trt(flavor)
        self.version = str(self.trt.__version__)
        self.config = config or TrtConfig()
        self.rtx = flavor == "tensorrt-rtx"
        self.require_census = self.config.require_census
        if self.config.typing == "weak":
            if self.rtx or major_version(self.trt) >= 11:
                raise ConfigError(f"{flavor} {self.version} builds strongly typed networks only; "
                                  "weak typing (per-layer precision constraints) needs TensorRT 10")
            self.dialect = Dialect.TENSORRT_WEAK
        if self.config.compute_capabilities and not self.rtx:
            raise ConfigError("--compute-capability targets TensorRT-RTX ahead-of-time builds; "
                              "TensorRT builds for the GPU it runs on")
        self.gpu = gpu_info()
        if self.rtx and not self.config.compute_capabilities and self.gpu is None:
            raise ConfigError("no NVIDIA GPU is visible: give TensorRT-RTX the GPUs to build for, "
                              f"e.g. --compute-capability sm86 (one of {', '.join(RTX_TARGETS)})")

    # -- settings -------------------------------------------------------------------------------
    def describe(self) -> dict:
        return {"backend": self.name, "module": MODULES[self.flavor], "version": self.version,
                **self.config.to_json_dict(), "gpu": self.gpu}

    def timing_device(self) -> str:
        if self.gpu is None:
            return "no GPU"
        return f"{self.gpu['name']} ({self.gpu['sm']}, {self.gpu['multiprocessors']} SMs)"

    def targets(self) -> list[str]:
        """The compute capabilities engines are built for."""
        if self.config.compute_capabilities:
            return list(self.config.compute_capabilities)
        return [self.gpu["sm"]] if self.gpu else []

    def check_plan(self, plan, groups: list[Group]) -> None:
        super().check_plan(plan, groups)
        from trt_mpq.errors import PlanError
        from trt_mpq.plan import Precision

        if plan.groups_at(Precision.FP8):
            old = [t for t in self.targets() if int(t[2:]) < 89]
            if old:
                raise PlanError(f"fp8 needs compute capability 8.9 or newer (Ada, Hopper, "
                                f"Blackwell); the engine is built for {', '.join(old)}")

    def check_can_run(self) -> None:
        gpu = self.require_gpu()
        if self.rtx and not rtx_runs_on(gpu["sm"]):
            raise ConfigError(
                f"TensorRT-RTX {self.version} cannot run engines on {gpu['name']} (compute "
                f"capability {gpu['compute_capability']}): it supports 8.0, 8.6, 8.9 and 12.x "
                "(measured on an H200: engines build but do not load). Use --backend tensorrt "
                "(TensorRT 10/11, e.g. in NVIDIA's container, docker/Dockerfile)")

    def require_gpu(self) -> dict:
        if self.gpu is None:
            raise ConfigError(f"measuring on {self.name} needs an NVIDIA GPU and none is visible; "
                              "`trt-mpq build MODEL --plan plan.json --backend tensorrt-rtx "
                              "--compute-capability sm86` builds engines ahead of time without one")
        return self.gpu

    def _timing_cache_path(self) -> Path | None:
        if not self.config.timing_cache or self.gpu is None or self.cache_dir is None:
            return None
        key = f"{self.flavor}-{self.version}-{self.gpu['name']}-{self.gpu['sm']}"
        digest = hashlib.sha256(key.encode()).hexdigest()[:12]
        return Path(self.cache_dir) / "trt-timing" / f"{self.gpu['sm']}-{digest}.cache"

    # -- build ----------------------------------------------------------------------------------
    # -- runtime options ------------------------------------------------------------------------
    def check_options(self, options: Mapping[str, str]) -> None:
        from trt_mpq.errors import PlanError

        for key, value in options.items():
            if key not in RUNTIME_OPTIONS:
                raise PlanError(f"{self.name} has no runtime option {key!r}; it has "
                                f"{', '.join(sorted(RUNTIME_OPTIONS))}")
            if value not in RUNTIME_OPTIONS[key]:
                raise PlanError(f"{self.name}: {key} must be one of "
                                f"{', '.join(RUNTIME_OPTIONS[key])}, got {value!r}")

    def runtime_options(self, model: onnx.ModelProto) -> dict[str, tuple[str, ...]]:
        """The builder's highest optimization level (longer builds, sometimes faster tactics)
        and CUDA-graph replay, where the configuration does not already use them."""
        out: dict[str, tuple[str, ...]] = {}
        if self.config.optimization_level < 5:
            out["builder_optimization_level"] = ("", "5")
        if not self.config.cuda_graph:
            out["cuda_graph"] = ("", "1")
        return out

    def _level(self, options: Mapping[str, str]) -> int:
        return int(options.get("builder_optimization_level") or self.config.optimization_level)

    def build(self, model: onnx.ModelProto, out_dir: Path, groups: list[Group],
              sample_feed: Mapping[str, np.ndarray], max_batch: int | None = None,
              options: Mapping[str, str] | None = None,
              shapes: Sequence[Mapping[str, tuple[int, ...]]] | None = None) -> Artifact:
        options = dict(options or {})
        self.check_options(options)
        trt = self.trt
        out_dir.mkdir(parents=True, exist_ok=True)
        logger = _Logger(trt)
        builder = trt.Builder(logger)
        flags = 0  # TensorRT 11 is strongly typed always; its flag is deprecated and ignored
        if self.config.typing == "strong" and major_version(trt) < 11 or self.rtx:
            flags = 1 << int(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED)
        network = builder.create_network(flags)
        parser = trt.OnnxParser(network, logger)
        if not parser.parse(model.SerializeToString()):
            errors = [str(parser.get_error(i)) for i in range(parser.num_errors)]
            raise BuildError(f"the TensorRT ONNX parser refused the graph: {'; '.join(errors[:3])}")
        cfg = builder.create_builder_config()
        cfg.builder_optimization_level = self._level(options)
        cfg.profiling_verbosity = trt.ProfilingVerbosity.DETAILED
        if self.config.workspace_mb:
            cfg.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE,
                                      self.config.workspace_mb * 2**20)
        if self.rtx and self.config.compute_capabilities:
            cfg.num_compute_capabilities = len(self.config.compute_capabilities)
            for i, cc in enumerate(self.config.compute_capabilities):
                cfg.set_compute_capability(getattr(trt.ComputeCapability, cc.upper()), i)
        dims_by_input = self._add_profile(builder, network, cfg, sample_feed, max_batch, shapes)
        if self.config.typing == "weak":
            from trt_mpq.backends.tensorrt.weak import apply_weak_typing

            apply_weak_typing(trt, network, cfg, model, groups)
        cache_path = self._timing_cache_path()
        timing_cache = None
        if cache_path is not None:
            blob = cache_path.read_bytes() if cache_path.exists() else b""
            timing_cache = cfg.create_timing_cache(blob)
            cfg.set_timing_cache(timing_cache, ignore_mismatch=False)
        t0 = time.perf_counter()
        serialized = builder.build_serialized_network(network, cfg)
        build_s = time.perf_counter() - t0
        if serialized is None:
            errs = logger.errors() or ["(no error message)"]
            raise BuildError(f"{self.name} could not build the engine: {errs[-1][:500]}")
        if timing_cache is not None and cache_path is not None:
            cache_path.parent.mkdir(parents=True, exist_ok=True)
            cache_path.write_bytes(bytes(cfg.get_timing_cache().serialize()))
        engine_path = out_dir / "model.engine"
        engine_path.write_bytes(bytes(serialized))
        layers, census = self._census(serialized, logger, groups, sample_feed)
        layers_path = out_dir / "layers.json"
        layers_path.write_text(json.dumps(layers_to_json(layers), indent=1))
        sidecar = out_dir / "model.engine.json"
        sidecar.write_text(json.dumps({
            "format": "trt-mpq-engine/1", "backend": self.name, "tensorrt_version": self.version,
            "built_for": self.targets(),
            "gpu_at_build": self.gpu, "settings": self.config.to_json_dict(),
            "runtime_options": options,
            "build_s": build_s, "census": census.to_json_dict(),
            "inputs": {k: list(v.shape) for k, v in sample_feed.items()},
            "max_batch": max_batch,
            # the optimization profile (dynamic inputs): min/opt/max dims per input
            "profile": {k: {"min": list(lo), "opt": list(opt), "max": list(hi)}
                        for k, (lo, opt, hi) in dims_by_input.items()},
        }, indent=2))
        return Artifact(path=engine_path, backend=self.name, build_s=build_s, census=census,
                        files=(sidecar, layers_path), options=options)

    def _add_profile(self, builder, network, cfg, feed: Mapping[str, np.ndarray],
                     max_batch: int | None,
                     shapes: Sequence[Mapping[str, tuple[int, ...]]] | None = None) -> dict:
        """One optimization profile (`shapes.profile_dims`): opt = the feed (the
        most-weighted deployment shape), each dynamic axis spanning every shape in `shapes`,
        a dynamic batch 1 .. max(max_batch, the largest). Returns {input: (min, opt, max)}."""
        profile = builder.create_optimization_profile()
        dims_of = {}
        for i in range(network.num_inputs):
            tensor = network.get_input(i)
            dims = list(tensor.shape)
            if tensor.name not in feed:
                raise BuildError(f"the engine input {tensor.name!r} has no sample data")
            if all(d >= 0 for d in dims):
                continue
            others = [s[tensor.name] for s in shapes or () if tensor.name in s]
            lo, opt, hi = profile_dims(dims, feed[tensor.name].shape, others, max_batch)
            profile.set_shape(tensor.name, lo, opt, hi)
            dims_of[tensor.name] = (lo, opt, hi)
        if dims_of:
            cfg.add_optimization_profile(profile)
        return dims_of

    def _census(self, serialized, logger, groups: list[Group],
                feed: Mapping[str, np.ndarray]) -> tuple[list[LayerInfo], Census]:
        """What every group runs: from the engine inspector when this machine can load the
        engine (with an execution context whose input shapes are set, so that a dynamic-shape
        engine reports data types instead of "N/A"), and from the builder's detailed layer
        report for every group the inspector leaves unverified (or for all, without a GPU)."""
        report_layers = parse_layer_report(logger.text())
        report = census_from_layers(report_layers, groups, f"{self.name} builder layer report")
        inspected = None
        if self.gpu is not None:
            try:
                inspected = self._inspect(serialized, feed)
            except RuntimeError as e:  # how TensorRT's bindings raise; the report still answers
                log.warning("%s: the engine inspector failed (%s); the census comes from the "
                            "builder's layer report", self.name, str(e).splitlines()[0][:300])
        if not inspected:
            return report_layers, report
        census = census_from_layers(inspected, groups, f"{self.name} engine inspector")
        return inspected, merge_censuses(census, report)

    def _inspect(self, serialized, feed: Mapping[str, np.ndarray]) -> list[LayerInfo] | None:
        """The engine inspector's layers, read with the input shapes of `feed` set; None if the
        engine does not load here (the layer report is used instead)."""
        logger = _Logger(self.trt)
        engine = self.trt.Runtime(logger).deserialize_cuda_engine(serialized)
        if engine is None:
            log.info("%s: the engine does not load on this GPU (%s); the census comes from the "
                     "builder's layer report", self.name, (logger.errors() or ["no message"])[-1])
            return None
        context = engine.create_execution_context()
        for i in range(engine.num_io_tensors):
            name = engine.get_tensor_name(i)
            if engine.get_tensor_mode(name) == self.trt.TensorIOMode.INPUT and name in feed:
                context.set_input_shape(name, tuple(feed[name].shape))
        inspector = engine.create_engine_inspector()
        inspector.execution_context = context
        text = inspector.get_engine_information(self.trt.LayerInformationFormat.JSON)
        return parse_inspector_json(text)

    # -- run ------------------------------------------------------------------------------------
    def open(self, artifact: Artifact) -> Runner:
        self.require_gpu()
        from trt_mpq.backends.tensorrt.runner import TrtRunner

        chosen = artifact.options.get("cuda_graph")
        return TrtRunner(self.trt, Path(artifact.path).read_bytes(),
                         cuda_graph=chosen == "1" if chosen else self.config.cuda_graph)


SPEC = BackendSpec(
    name="tensorrt", config=TrtConfig,
    create=lambda config, cache_dir: TensorRTBackend("tensorrt", config, cache_dir),
    description="TensorRT 10/11 on an NVIDIA GPU (e.g. NVIDIA's container, docker/Dockerfile)",
    gpu=True)
RTX_SPEC = BackendSpec(
    name="tensorrt-rtx", config=TrtConfig,
    create=lambda config, cache_dir: TensorRTBackend("tensorrt-rtx", config, cache_dir),
    description="TensorRT-RTX (builds engines without a GPU; runs them on SM 7.5/8.x/12.x)",
    gpu=True)
