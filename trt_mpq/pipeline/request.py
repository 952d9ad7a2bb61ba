"""`SearchRequest`: one search, typed and validated, the only currency between the entry points.

The CLI parses `trt-mpq search` arguments into it (`from_options` with the flags' text), the
service validates a JSON job into it (`from_options` with JSON values, after refusing the
settings that are the server's: `SERVER_KEYS`), a Ray worker receives it serialized
(`to_json_dict` / `from_json_dict`), and `trt-mpq search --request FILE` runs a stored one
(every output folder keeps its own `request.json`). Every setting goes through the one
validation of `trt_mpq.options.coerce`, whichever way it came.

A request holds: the model (a zoo name or an .onnx path) with its task and metric, the backend
and its config, the calibration, the measurement, the search (budget, strategy and its config,
sensitivity, certification), the executor and the output folder.
"""

from __future__ import annotations

import dataclasses
import shlex
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from trt_mpq import options
from trt_mpq.backends import BACKENDS, backend_spec
from trt_mpq.calib import CalibConfig
from trt_mpq.errors import ConfigError
from trt_mpq.measure.latency import MeasureConfig
from trt_mpq.options import flag
from trt_mpq.pipeline.config import SearchConfig
from trt_mpq.search import STRATEGIES, strategy_spec
from trt_mpq.sensitivity import SensitivityConfig

FORMAT = "trt-mpq-request/1"
EXECUTORS = ("local", "ray")
#: settings a service request may not set: where the job writes and what it imports or
#: connects to are the server's (its folder, its cache, its --tasks-dir, its --executor)
SERVER_KEYS = frozenset({"out", "resume", "cache-dir", "task", "torch", "executor",
                         "ray-address", "mix-devices"})


@dataclass(frozen=True)
class ExecutorConfig:
    """Where a search's plans are evaluated."""

    kind: str = field(default="local", metadata=flag(
        "--executor", "where plans are evaluated: local (here, one after another) or ray "
        "(spread over a Ray cluster, one worker per node, or per GPU for a GPU backend; needs "
        "pip install 'trt-mpq[ray]' and the cache folder on every node)", choices=EXECUTORS))
    ray_address: str | None = field(default=None, metadata=flag(
        "--ray-address", "the Ray cluster to join (e.g. auto); default: start a local Ray",
        metavar="ADDRESS"))
    mix_devices: bool = field(default=False, metadata=flag(
        "--mix-devices", "with --executor ray, also use workers whose timing device (CPU model "
        "and cores, or GPU) differs from this driver's; their latency ratios then share one "
        "frontier (default: such workers are left out)"))

    def __post_init__(self) -> None:
        options.check(self)
        if self.kind == "local" and self.ray_address:
            raise ConfigError("--ray-address needs --executor ray")
        if self.kind == "local" and self.mix_devices:
            raise ConfigError("--mix-devices needs --executor ray")


@dataclass(frozen=True)
class OutputConfig:
    """Where a search writes, and whether it continues an earlier one there."""

    out: Path | None = field(default=None, metadata=flag(
        "--out", "output folder (default: engines/<model>-<backend>-<time>/)", metavar="DIR"))
    resume: bool = field(default=False, metadata=flag(
        "--resume", "continue the search in --out (or the latest one for this model and "
        "backend) without re-measuring anything"))

    def __post_init__(self) -> None:
        options.check(self)


@dataclass(frozen=True)
class ModelRef:
    """The model a request is about, with its task (data splits and metric)."""

    model: str  # a zoo name (`trt-mpq zoo`) or an .onnx file
    task: str | None = field(default=None, metadata=flag(
        "--task", "for an .onnx file: a function returning trt_mpq.task.Task (data splits + "
        "metric)", metavar="PKG.MODULE:FUNC"))
    metric: str | None = field(default=None, metadata=flag(
        "--metric", "judge plans by the task's own metric (default) or a fidelity metric that "
        "compares with the unquantized model's outputs and needs no labels: agreement (top-1 "
        "agreement), kl (mean KL divergence, an absolute budget); they use the task's "
        "fidelity split when it has one; fallback: what the task declares for budgets its "
        "labelled holdout cannot certify (chosen by itself when needed)", metavar="METRIC"))
    cache_dir: Path | None = field(default=None, metadata=flag(
        "--cache-dir", "where exported models, data and calibration are cached (default: "
        "$TRT_MPQ_CACHE or ~/.cache/trt-mpq)", metavar="DIR"))

    def __post_init__(self) -> None:
        if not isinstance(self.model, str) or not self.model.strip():
            raise ConfigError("give a MODEL: a zoo name (trt-mpq zoo) or an .onnx file")
        options.check(self)

    @classmethod
    def from_options(cls, model: str, values: Mapping[str, Any]) -> ModelRef:
        return options.build(cls, values, model=model)

    @property
    def cache(self) -> Path:
        from trt_mpq.task import default_cache_dir

        return Path(self.cache_dir) if self.cache_dir else default_cache_dir()

    def open(self, progress: bool | None = None):
        """The task, its prepared model and groups (`pipeline.workspace.Workspace`)."""
        from trt_mpq.pipeline.workspace import Workspace

        return Workspace.open(self.model, self.task, self.cache, progress=progress,
                              metric=self.metric)

    def for_workers(self) -> ModelRef:
        """As a process on another node reads it: an .onnx path and the cache made absolute."""
        model = str(Path(self.model).resolve()) if Path(self.model).suffix == ".onnx" \
            else self.model
        return replace(self, model=model, cache_dir=self.cache.resolve())


@dataclass(frozen=True)
class BackendChoice:
    """The backend plans are built and timed on, and its config."""

    name: str = field(default="ort-cpu", metadata=flag(
        "--backend", "the runtime plans are built and timed on",
        choices=lambda: tuple(BACKENDS)))
    config: Any = None  # the backend's own config object; None: its defaults

    def __post_init__(self) -> None:
        options.check(self)
        spec = backend_spec(self.name)
        if self.config is None:
            object.__setattr__(self, "config", spec.config())
        elif not isinstance(self.config, spec.config):
            raise ConfigError(f"the {self.name} backend takes a {spec.config.__name__}, not "
                              f"a {type(self.config).__name__}")

    @classmethod
    def from_options(cls, values: Mapping[str, Any]) -> BackendChoice:
        """--backend and its own flags; a flag of another backend is refused."""
        name = options.coerce(_option(cls, "name"), values.get("backend", "ort-cpu"))
        mine = backend_spec(name).config
        others = {n: backend_spec(n).config for n in BACKENDS}
        options.refuse_foreign(values, mine, {n: c for n, c in others.items() if c is not mine},
                               name)
        return cls(name, options.build(mine, values, name))

    def create(self, cache_dir: Path | None = None):
        from trt_mpq.backends import get_backend

        return get_backend(self.name, self.config, cache_dir=cache_dir)

    def to_json_dict(self) -> dict:
        return {"name": self.name, "config": options.to_json_dict(self.config)}

    @classmethod
    def from_json_dict(cls, data: Mapping[str, Any]) -> BackendChoice:
        if not isinstance(data, Mapping):
            raise ConfigError(f"backend must be an object, got {data!r}")
        name = options.coerce(_option(cls, "name"), data.get("name", "ort-cpu"))
        config = data.get("config")
        return cls(name, None if config is None else
                   options.from_json_dict(backend_spec(name).config, config, "backend config"))


def strategy_options(values: Mapping[str, Any]) -> tuple[str, Any]:
    """(--strategy, its config) from settings; a flag of another strategy is refused."""
    name = options.coerce(_option(SearchConfig, "strategy"), values.get("strategy", "bisection"))
    mine = strategy_spec(name).config
    others = {n: strategy_spec(n).config for n in STRATEGIES}
    owner = f"--strategy {name}"
    options.refuse_foreign(values, mine, {n: c for n, c in others.items() if c is not mine},
                           owner)
    return name, options.build(mine, values, owner)


@dataclass(frozen=True)
class SearchRequest:
    model: ModelRef
    search: SearchConfig
    backend: BackendChoice = field(default_factory=BackendChoice)
    calibration: CalibConfig = field(default_factory=CalibConfig)
    measure: MeasureConfig = field(default_factory=MeasureConfig)
    executor: ExecutorConfig = field(default_factory=ExecutorConfig)
    output: OutputConfig = field(default_factory=OutputConfig)

    #: the config classes whose settings a request takes directly (the chosen backend's and
    #: strategy's come on top)
    FLAT = (ModelRef, BackendChoice, CalibConfig, MeasureConfig, SearchConfig,
            SensitivityConfig, ExecutorConfig, OutputConfig)

    # -- building one ------------------------------------------------------------------------
    @classmethod
    def from_options(cls, model: str, values: Mapping[str, Any]) -> SearchRequest:
        """A request from settings by flag key (`{"max-drop": "1%", "repeats": 20}`): the
        flags' text from the command line, or JSON values from a service request. Unknown
        keys, and keys of a backend or strategy other than the chosen one, are refused."""
        backend = BackendChoice.from_options(values)
        strategy, strategy_config = strategy_options(values)
        known = set().union(*(options.keys(c) for c in cls.FLAT),
                            options.keys(type(backend.config)),
                            options.keys(type(strategy_config)))
        unknown = sorted(set(values) - known)
        if unknown:
            raise ConfigError(f"unknown setting --{unknown[0]}; the settings are the flags of "
                              "`trt-mpq search --help`")
        if values.get("max-drop") is None:
            raise ConfigError("--max-drop is required: the largest allowed metric drop, "
                              "relative (1%) or absolute (0.005)")
        search = options.build(SearchConfig, values, strategy_config=strategy_config,
                               sensitivity_config=options.build(SensitivityConfig, values))
        return cls(model=ModelRef.from_options(model, values), search=search, backend=backend,
                   calibration=options.build(CalibConfig, values),
                   measure=options.build(MeasureConfig, values),
                   executor=options.build(ExecutorConfig, values),
                   output=options.build(OutputConfig, values))

    def to_json_dict(self) -> dict:
        return {"format": FORMAT, "model": options.to_json_dict(self.model),
                "backend": self.backend.to_json_dict(),
                "calibration": options.to_json_dict(self.calibration),
                "measure": options.to_json_dict(self.measure),
                "search": self.search.to_json_dict(),
                "executor": options.to_json_dict(self.executor),
                "output": options.to_json_dict(self.output)}

    @classmethod
    def from_json_dict(cls, data: Mapping[str, Any]) -> SearchRequest:
        """`to_json_dict`'s inverse, every value validated again (a request file may have been
        written by hand)."""
        if not isinstance(data, Mapping) or data.get("format") != FORMAT:
            raise ConfigError(f"not a trt-mpq search request (its \"format\" must be "
                              f"{FORMAT!r})")
        unknown = sorted(set(data) - {"format", *(f.name for f in dataclasses.fields(cls))})
        if unknown:
            raise ConfigError(f"unknown request field(s): {', '.join(map(repr, unknown))}")
        if not isinstance(data.get("search"), Mapping) or not isinstance(data.get("model"),
                                                                          Mapping):
            raise ConfigError("a request needs \"model\" and \"search\" objects")
        flat = {"calibration": CalibConfig, "measure": MeasureConfig,
                "executor": ExecutorConfig, "output": OutputConfig}
        kwargs = {k: options.from_json_dict(c, data[k], k) for k, c in flat.items()
                  if data.get(k) is not None}
        if data.get("backend") is not None:
            kwargs["backend"] = BackendChoice.from_json_dict(data["backend"])
        return cls(model=options.from_json_dict(ModelRef, data["model"], "model"),
                   search=SearchConfig.from_json_dict(data["search"]), **kwargs)

    def for_workers(self) -> SearchRequest:
        """This request as a Ray worker on another node reads it: paths made absolute, the
        driver's own settings (its folder, resume, the executor) dropped."""
        return replace(self, model=self.model.for_workers(), executor=ExecutorConfig(),
                       output=OutputConfig())

    def command_line(self) -> str:
        """The `trt-mpq search` command that makes this request (the settings that differ
        from their defaults)."""
        return shlex.join(["trt-mpq", "search", self.model.model, *argv_of(self.settings())])

    def settings(self) -> dict[str, Any]:
        """Flag key -> JSON value of every setting that differs from its default."""
        out: dict[str, Any] = {}
        configs = [self.model, self.backend, self.backend.config, self.calibration,
                   self.measure, self.search, self.search.strategy_config,
                   self.search.sensitivity_config, self.executor, self.output]
        for config in configs:
            for o in options.options_of(type(config)):
                value = getattr(config, o.field)
                if o.required or value != o.default:
                    out[o.key] = options.dump(o, value)
        return out


def _option(cls: type, field_name: str) -> options.Option:
    return next(o for o in options.options_of(cls) if o.field == field_name)


def argv_of(settings: Mapping[str, Any]) -> list[str]:
    """Settings (flag key -> JSON value) as command-line flags."""
    argv: list[str] = []
    for key, value in settings.items():
        if isinstance(value, bool):
            argv.append(f"--{key}" if value else f"--no-{key}")
        elif value is None:
            argv += [f"--{key}", "off" if key == "confidence" else "auto"]
        elif isinstance(value, list):
            argv += [f"--{key}", ",".join(map(str, value))]
        else:
            argv += [f"--{key}", str(value)]
    return argv


__all__ = ["EXECUTORS", "FORMAT", "SERVER_KEYS", "BackendChoice", "ExecutorConfig", "ModelRef",
           "OutputConfig", "SearchRequest", "argv_of", "strategy_options"]
