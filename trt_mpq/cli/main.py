"""`trt-mpq <verb>`: parse, build a config, call the library. Nothing more.

Exit codes, one meaning each: 0 ok; 1 the answer is "no" (search: budget not met, outputs
still written; evaluate: the plan failed; build: the artifact does not run the plan); 2 user
error (clear message, no traceback); 3 internal error (a bug: one line, the traceback saved to
a file, -v prints it); 130 interrupted (evaluations so far are saved; --resume continues).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import shlex
import sys
import time
from pathlib import Path

from trt_mpq.errors import ConfigError, TrtMpqError

log = logging.getLogger("trt_mpq.cli")

EXIT_OK, EXIT_BUDGET, EXIT_USER, EXIT_BUG, EXIT_INTERRUPTED = 0, 1, 2, 3, 130


# -- logging -----------------------------------------------------------------------------------
class _TqdmHandler(logging.Handler):
    """Log lines that do not tear progress bars apart."""

    def emit(self, record: logging.LogRecord) -> None:
        try:
            from tqdm.auto import tqdm

            tqdm.write(self.format(record), file=sys.stderr)
        except Exception:  # pragma: no cover - logging must never raise
            self.handleError(record)


def configure_logging(verbosity: int) -> None:
    level = logging.WARNING if verbosity < 0 else logging.DEBUG if verbosity > 0 else logging.INFO
    handler = _TqdmHandler()
    handler.setFormatter(logging.Formatter("%(message)s" if verbosity <= 0 else
                                           "%(asctime)s %(name)s %(levelname)s: %(message)s"))
    root = logging.getLogger("trt_mpq")
    root.handlers[:] = [handler]
    root.setLevel(level)
    root.propagate = False


# -- shared options ----------------------------------------------------------------------------
def _common(p: argparse.ArgumentParser, *, task: bool = True) -> None:
    p.add_argument("model", metavar="MODEL",
                   help="a zoo name (`trt-mpq zoo`) or an .onnx file")
    if task:
        p.add_argument("--task", metavar="PKG.MODULE:FUNC",
                       help="for an .onnx file: a function returning trt_mpq.task.Task "
                            "(data splits + metric)")
        p.add_argument("--metric", default=None,
                       help="judge plans by the task's own metric (default) or a fidelity "
                            "metric that compares with the unquantized model's outputs and "
                            "needs no labels: agreement (top-1 agreement), kl (mean KL "
                            "divergence, an absolute budget); they use the task's fidelity "
                            "split when it has one")
    p.add_argument("--cache-dir", type=Path, default=None,
                   help="where exported models, data and calibration are cached "
                        "(default: $TRT_MPQ_CACHE or ~/.cache/trt-mpq)")


def _sensitivity_opts(p: argparse.ArgumentParser) -> None:
    p.add_argument("--sensitivity-samples", type=int, default=64,
                   help="calibration samples the sensitivity metrics use")
    p.add_argument("--torch", metavar="PKG.MODULE:FUNC", default=None,
                   help="the model's torch twin (hessian, fisher) for your own ONNX model")
    p.add_argument("--neighbours", type=int, default=1,
                   help="hessian+deps: pair each group with the next N groups")
    p.add_argument("--conditional", action="store_true",
                   help="hessian+deps: greedy conditional order instead of pairwise folding")


def _sensitivity_config(args):
    from trt_mpq.sensitivity import SensitivityConfig

    return SensitivityConfig(samples=args.sensitivity_samples, neighbours=args.neighbours,
                             conditional=args.conditional)


def _config_groups(p: argparse.ArgumentParser, specs, what: str) -> None:
    """One argument group per config class of `specs` (backends or strategies), its flags taken
    from the config's fields (`trt_mpq.options`)."""
    from trt_mpq import options

    by_config: dict[type, list[str]] = {}
    for spec in specs:
        by_config.setdefault(spec.config, []).append(spec.name)
    seen: dict[str, tuple] = {}
    for config, names in by_config.items():
        if options.flag_fields(config):
            group = p.add_argument_group(f"{what} {', '.join(names)}")
            options.add_flags(group, config, seen)


def _backend_specs():
    from trt_mpq.backends import BACKENDS, backend_spec

    return [backend_spec(n) for n in BACKENDS]


def _strategy_specs():
    from trt_mpq.search import STRATEGIES, strategy_spec

    return [strategy_spec(n) for n in STRATEGIES]


def _backend_opts(p: argparse.ArgumentParser, measure: bool = True) -> None:
    specs = _backend_specs()
    p.add_argument("--backend", default="ort-cpu", choices=[s.name for s in specs],
                   help="; ".join(f"{s.name}: {s.description}" for s in specs))
    _config_groups(p, specs, "backend")
    if not measure:
        return
    p.add_argument("--calib-method", default="minmax", help="minmax | percentile | entropy")
    p.add_argument("--calib-samples", type=int, default=256)
    p.add_argument("--warmup", type=int, default=10, help="untimed runs before timing")
    p.add_argument("--repeats", type=int, default=60, help="timed runs per plan and baseline")
    p.add_argument("--settle", type=int, default=2,
                   help="untimed runs at the start of each timed turn, so that a plan timed "
                        "interleaved with the baseline runs with its own weights in the caches, "
                        "as deployed (0: time cold turns)")


def build_parser() -> argparse.ArgumentParser:
    # -v/-q/--no-progress work before or after the command
    flags = argparse.ArgumentParser(add_help=False)
    flags.add_argument("-v", "--verbose", action="count", default=argparse.SUPPRESS,
                       help="more log lines (-vv: debug)")
    flags.add_argument("-q", "--quiet", action="count", default=argparse.SUPPRESS,
                       help="warnings and errors only")
    flags.add_argument("--no-progress", action="store_true", default=argparse.SUPPRESS,
                       help="no progress bars (they are off anyway when stderr is not a terminal)")
    parser = argparse.ArgumentParser(
        prog="trt-mpq", parents=[flags],
        description="Latency-measured mixed-precision post-training quantization search.")
    parser.set_defaults(verbose=0, quiet=0, no_progress=False)
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    _add = sub.add_parser

    def add_parser(name, **kw):
        return _add(name, parents=[flags], **kw)

    sub.add_parser = add_parser  # type: ignore[method-assign]

    sub.add_parser("zoo", help="list the built-in models and tasks")

    p = sub.add_parser("inspect", help="list a model's quantizable groups")
    _common(p)
    p.add_argument("--json", action="store_true", help="print JSON")

    p = sub.add_parser("calibrate", help="collect (and cache) activation ranges")
    _common(p)
    p.add_argument("--calib-method", default="minmax", help="minmax | percentile | entropy")
    p.add_argument("--calib-samples", type=int, default=256)

    p = sub.add_parser("evaluate", help="measure one plan: accuracy, latency ratio, census")
    _common(p)
    _backend_opts(p)
    g = p.add_mutually_exclusive_group(required=True)
    g.add_argument("--plan", type=Path, help="plan.json (from a search, or written by hand)")
    g.add_argument("--uniform", metavar="PRECISION",
                   help="every group at one precision, e.g. int8, fp32, fp16")
    p.add_argument("--out", type=Path, help="also write the evaluation JSON to this file")

    p = sub.add_parser("search", help="find the fastest plan within an accuracy budget")
    _common(p)
    _backend_opts(p)
    p.add_argument("--max-drop", required=True, metavar="BUDGET",
                   help="largest allowed metric drop: relative (1%%, 0.01%%) or absolute (0.005)")
    p.add_argument("--out", type=Path, default=None,
                   help="output folder (default: engines/<model>-<backend>-<time>/)")
    p.add_argument("--resume", action="store_true",
                   help="continue the search in --out (or the latest one for this model and "
                        "backend) without re-measuring anything")
    strategies = _strategy_specs()
    p.add_argument("--strategy", default="bisection", choices=[s.name for s in strategies],
                   help="; ".join(f"{s.name}: {s.description}" for s in strategies))
    _config_groups(p, strategies, "strategy")
    p.add_argument("--sensitivity", default="noise", help="sensitivity metric (noise)")
    p.add_argument("--precision", default="auto",
                   help="what groups are lowered to: auto (int8-dynamic for MatMul and int8 "
                        "otherwise on ort-cpu), int8, int8-dynamic, int4w, ...")
    p.add_argument("--runtime-options", action=argparse.BooleanOptionalAction, default=True,
                   help="also measure the fastest in-budget plans with the backend's runtime "
                        "options (ONNX Runtime fusions to disable; TensorRT builder level, "
                        "CUDA graphs) and keep the faster (default: on)")
    p.add_argument("--full-frontier", action="store_true",
                   help="measure the accuracy of every plan of the sweep, refinement and "
                        "options phases, even those timed slower than the fastest in-budget "
                        "plan (which cannot be the answer: by default their accuracy pass is "
                        "skipped and they are marked slower)")
    p.add_argument("--confidence", default="0.95",
                   help="one-sided level of the paired upper bound on the answer's holdout "
                        "drop: the answer is in budget only if the bound is (certified), e.g. "
                        "0.95 or 99%%; off: point estimates, not certified")
    p.add_argument("--search-decision", default="auto", choices=["auto", "point", "bound"],
                   help="how plans are judged in budget on the search split: point estimate, "
                        "upper bound, or auto (the bound where the search split can certify "
                        "the budget with room to spare, else the point estimate)")
    p.add_argument("--adaptive", action=argparse.BooleanOptionalAction, default=True,
                   help="evaluate plans on growing parts of large splits and stop as soon as "
                        "the confidence bounds decide (default: on)")
    p.add_argument("--final-halfwidth", default="1%",
                   help="the finalists are re-measured together until every latency ratio's "
                        "95%% interval is within this of the ratio (default 1%%) ...")
    p.add_argument("--final-cap", type=float, default=120.0, metavar="SECONDS",
                   help="... or for at most this long (default 120)")
    p.add_argument("--option-candidates", type=int, default=2,
                   help="how many of the fastest in-budget plans get runtime-option variants")
    p.add_argument("--executor", default="local", choices=["local", "ray"],
                   help="where plans are evaluated: local (here, one after another; default) "
                        "or ray (spread over a Ray cluster, one worker per node, or per GPU "
                        "for a GPU backend; needs pip install 'trt-mpq[ray]' and the cache "
                        "folder on every node)")
    p.add_argument("--ray-address", default=None,
                   help="the Ray cluster to join (e.g. auto, or ray://HEAD:10001); default: "
                        "start a local Ray")
    p.add_argument("--mix-devices", action="store_true",
                   help="with --executor ray, also use workers whose timing device (CPU model "
                        "and cores, or GPU) differs from this driver's; their latency ratios "
                        "then share one frontier (default: such workers are left out)")
    p.add_argument("--order", default="sensitivity",
                   help="sensitivity (least sensitive first, the papers) or latency-aware "
                        "(least sensitivity per unit of measured latency gain first)")
    _sensitivity_opts(p)

    p = sub.add_parser("sensitivity", help="score every group with sensitivity metrics and "
                                           "rank the orders against the measured drop")
    _common(p)
    _backend_opts(p)
    p.add_argument("--metrics", default="noise,sqnr,accuracy,hessian,hessian+deps,fisher",
                   help="comma-separated: noise, sqnr, accuracy, hessian, hessian+deps, fisher")
    _sensitivity_opts(p)
    p.add_argument("--precision", default="auto", help="what groups are lowered to (as search)")
    p.add_argument("--no-reference", action="store_true",
                   help="skip the measured one-at-a-time drop on the search split")
    p.add_argument("--gains", action="store_true",
                   help="also measure per-group latency gains (profiler) and latency-aware orders")
    p.add_argument("--out", type=Path, default=None,
                   help="write sensitivity.json and sensitivity.png into this folder")

    p = sub.add_parser("build", help="build one plan's artifact (e.g. a TensorRT engine, "
                                     "without a GPU for tensorrt-rtx) and check its precisions")
    _common(p)
    _backend_opts(p, measure=False)
    p.add_argument("--calib-method", default="minmax", help="minmax | percentile | entropy")
    p.add_argument("--calib-samples", type=int, default=256)
    g = p.add_mutually_exclusive_group(required=True)
    g.add_argument("--plan", type=Path, help="plan.json")
    g.add_argument("--uniform", metavar="PRECISION", help="every group at one precision")
    p.add_argument("--out", type=Path, default=None,
                   help="output folder (default: engines/<model>-<backend>-build-<time>/)")

    p = sub.add_parser("report", help="rewrite report.md and the plots of a finished search")
    p.add_argument("out", type=Path, metavar="DIR")

    p = sub.add_parser("serve", help="run searches as a service: a JSON API, a job queue per "
                                     "timing device and a live latency-accuracy page")
    p.add_argument("--host", default="127.0.0.1",
                   help="address to bind (default 127.0.0.1; any other needs --token)")
    p.add_argument("--port", type=int, default=8765)
    p.add_argument("--root", type=Path, default=None,
                   help="where jobs, uploads and outputs are kept (default: <cache>/serve)")
    p.add_argument("--cache-dir", default=None,
                   help="the searches' cache (default: $TRT_MPQ_CACHE or ~/.cache/trt-mpq)")
    p.add_argument("--tasks-dir", type=Path, default=None,
                   help="folder of task modules (MODULE.py with a function returning a "
                        "trt_mpq.task.Task) that uploaded models may name; without it only "
                        "zoo models are taken")
    p.add_argument("--token", default=None,
                   help="every request must carry it (Authorization: Bearer TOKEN, or "
                        "?token=TOKEN); default $TRT_MPQ_TOKEN; required off loopback")
    p.add_argument("--max-upload-mb", type=float, default=512,
                   help="largest ONNX upload (default 512 MB)")
    p.add_argument("--gpus", type=int, default=1,
                   help="GPUs that time TensorRT jobs, one job at a time each (cuda:0..N-1; "
                        "default 1); CPU jobs have their own queue")
    return parser


# -- helpers -----------------------------------------------------------------------------------
def _cache_dir(args) -> Path:
    from trt_mpq.task import default_cache_dir

    return Path(args.cache_dir) if args.cache_dir else default_cache_dir()


def _progress(args) -> bool | None:
    return False if args.no_progress else None


def _percent(text: str, flag: str) -> float:
    """'1%' / '0.01' -> 0.01."""
    t = str(text).strip()
    try:
        return float(t[:-1]) / 100 if t.endswith("%") else float(t)
    except ValueError:
        raise ConfigError(f"{flag} must be a share like 1% or 0.01, got {text!r}") from None


def _workspace(args):
    from trt_mpq.pipeline.workspace import Workspace

    return Workspace.open(args.model, getattr(args, "task", None), _cache_dir(args),
                          progress=_progress(args), metric=getattr(args, "metric", None))


def _calib_config(args):
    from trt_mpq.calib import CalibConfig, CalibMethod

    return CalibConfig(method=CalibMethod.parse(args.calib_method), num_samples=args.calib_samples)


def _backend(args):
    """The backend of --backend, configured from its own flags; flags of another backend are
    refused."""
    from trt_mpq import options
    from trt_mpq.backends import backend_spec, get_backend

    spec = backend_spec(args.backend)
    others = {s.name: s.config for s in _backend_specs() if s.config is not spec.config}
    config = options.build(spec.config, args, spec.name, others)
    return get_backend(spec.name, config, cache_dir=_cache_dir(args))


def _strategy_config(args):
    from trt_mpq import options
    from trt_mpq.search import strategy_spec

    spec = strategy_spec(args.strategy)
    others = {s.name: s.config for s in _strategy_specs() if s.config is not spec.config}
    return options.build(spec.config, args, f"--strategy {spec.name}", others)


def _measure(args):
    from trt_mpq.measure import MeasureConfig

    return MeasureConfig(warmup=args.warmup, repeats=args.repeats,
                         min_repeats=min(15, args.repeats), settle=args.settle)


# -- commands ----------------------------------------------------------------------------------
def cmd_zoo(args) -> int:
    from trt_mpq.zoo import ZOO

    width = max(len(n) for n in ZOO)
    for name, e in ZOO.items():
        print(f"{name:<{width}}  [{e.weights}]  {e.description}")
    return EXIT_OK


def cmd_inspect(args) -> int:
    import onnx

    from trt_mpq.model.groups import find_groups
    from trt_mpq.model.load import prepare_model
    from trt_mpq.pipeline.workspace import looks_like_path, model_input_specs, resolve_task

    cache = _cache_dir(args)
    if looks_like_path(args.model) and not args.task:
        source = Path(args.model)
    else:
        source = resolve_task(args.model, args.task, cache, _progress(args)).model_path
    prepared = prepare_model(source, cache)
    model = onnx.load(str(prepared))
    groups = find_groups(model)
    inputs = model_input_specs(model)
    if args.json:
        print(json.dumps({"model": str(source), "inputs": {k: {"dtype": d, "shape": list(s)}
                                                           for k, (d, s) in inputs.items()},
                          "groups": [g.to_json_dict() for g in groups]}, indent=2))
        return EXIT_OK
    print(f"model: {source}")
    for name, (dtype, shape) in inputs.items():
        print(f"input: {name} {dtype} {list(shape)}")
    for o in model.graph.output:
        print(f"output: {o.name}")
    w = min(70, max(len(g.name) for g in groups))
    print(f"\n{'group':<{w}}  {'op':<7} {'ops':>3}  {'weight shape':<18} {'MACs':>14} "
          f"{'params':>11}")
    for g in groups:
        shape = "x".join(str(d) for d in g.ops[0].weight_shape)
        print(f"{g.name[-w:]:<{w}}  {g.op_type:<7} {len(g.ops):>3}  {shape:<18} "
              f"{g.macs:>14,} {g.params:>11,}")
    print(f"\n{len(groups)} groups, {sum(len(g.ops) for g in groups)} quantizable ops, "
          f"{sum(g.macs for g in groups):,} MACs per sample, {sum(g.params for g in groups):,} "
          "weights")
    return EXIT_OK


def cmd_calibrate(args) -> int:
    ws = _workspace(args)
    config = _calib_config(args)
    t0 = time.perf_counter()
    ranges = ws.calibrate(config)
    print(json.dumps({"model": ws.task.name, "method": ranges.method.value,
                      "samples": ranges.num_samples, "tensors": len(ranges.values),
                      "ranges_digest": ranges.digest,
                      "seconds": round(time.perf_counter() - t0, 2)}, indent=2))
    return EXIT_OK


def _plan_arg(args, ws):
    """The plan of --plan FILE or --uniform PRECISION, checked against the model's groups."""
    from trt_mpq.errors import PlanError
    from trt_mpq.plan import Plan, Precision

    if args.plan:
        try:
            text = Path(args.plan).read_text()
        except OSError as e:
            raise PlanError(f"cannot read the plan file {args.plan}: {e.strerror}") from None
        return Plan.from_json(text, ws.group_names())
    return Plan.uniform(ws.group_names(), Precision.parse(args.uniform))


def cmd_build(args) -> int:
    """Build one plan into an artifact folder; exit 1 if the built artifact does not run the
    plan's precisions (its census disagrees)."""
    from trt_mpq.pipeline.artifacts import update_sidecar
    from trt_mpq.qdq import materialize
    from trt_mpq.report import write_text

    backend = _backend(args)
    ws = _workspace(args)
    plan = _plan_arg(args, ws)
    backend.check_plan(plan, ws.groups)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    out = (Path(args.out) if args.out
           else Path("engines") / f"{ws.task.name}-{backend.name}-build-{stamp}")
    _check_writable(out, "--out", folder=True)
    if out.exists() and any(out.iterdir()):
        raise ConfigError(f"output folder {out} is not empty; choose another --out")
    ranges = ws.calibrate(_calib_config(args))
    graph = materialize(ws.model, ws.groups, plan, ranges, backend.dialect)
    artifact = backend.build(graph, out, ws.groups, ws.task.latency_feed(),
                             max_batch=ws.task.eval_batch, options=dict(plan.options))
    write_text(out / "plan.json", plan.to_json() + "\n")
    bad = artifact.census.mismatches(plan) if artifact.census else []
    update_sidecar(artifact.path, {"plan": plan.to_json_dict()["groups"],
                                   "runtime_options": dict(plan.options), "model": ws.task.name,
                                   "census_matches_plan": not bad})
    print(json.dumps({"artifact": str(artifact.path), "build_s": round(artifact.build_s, 3),
                      "precision_counts": plan.counts(),
                      "census": artifact.census.to_json_dict() if artifact.census else None,
                      "mismatches": [{"group": g, "planned": p, "ran": x} for g, p, x in bad]},
                     indent=2))
    if bad:
        print(f"precision-mismatch: {len(bad)} group(s) do not run as planned, e.g. "
              f"{bad[0][0]}: planned {bad[0][1]}, ran {bad[0][2]}", file=sys.stderr)
        return EXIT_BUDGET
    return EXIT_OK


def cmd_evaluate(args) -> int:
    import tempfile

    from trt_mpq.pipeline.evaluator import Evaluator, shared_cache

    if args.out:
        _check_writable(Path(args.out), "--out", folder=False)
    backend = _backend(args)
    backend.check_can_run()
    ws = _workspace(args)
    measure = _measure(args)
    plan = _plan_arg(args, ws)
    backend.check_plan(plan, ws.groups)
    ranges = ws.calibrate(_calib_config(args))
    with tempfile.TemporaryDirectory(prefix="trt-mpq-eval-") as tmp:
        with Evaluator(ws, backend, ranges, measure, None, Path(tmp),
                       shared=shared_cache(ws, backend)) as ev:
            evaluation = ev.evaluate(plan, "evaluate")
            baseline_metric = ev.baseline.metric
    out = {"model": ws.task.name, "backend": backend.name, "weights": ws.task.weights,
           "baseline_metric": baseline_metric, **evaluation.to_json_dict()}
    text = json.dumps(out, indent=2)
    print(text)
    if args.out:
        from trt_mpq.report import write_text

        write_text(Path(args.out), text + "\n")
    if not evaluation.ok:
        print(f"the plan did not produce a measurement: {evaluation.status.value}: "
              f"{evaluation.reason}", file=sys.stderr)
        return EXIT_BUDGET
    return EXIT_OK


def _check_writable(path: Path, flag: str, folder: bool) -> None:
    """`path` (an output folder, or a file when not `folder`) can be created and written by
    this user: checked before any long work, so a mistake costs seconds and leaves nothing."""
    if folder and path.exists() and not path.is_dir():
        raise ConfigError(f"{flag} {path} is a file, not a folder; choose a folder path (it is "
                          "created if missing)")
    if not folder and path.is_dir():
        raise ConfigError(f"{flag} {path} is a folder; give a file path")
    existing = path if folder and path.exists() else path.parent
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if not existing.is_dir():
        raise ConfigError(f"{flag} {path}: {existing} is a file, so {path} cannot be created; "
                          f"choose another {flag}")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise ConfigError(f"{flag} {path}: {existing} is not writable by this user; choose "
                          f"another {flag}")


def _resolve_out(args, model_name: str, backend_name: str) -> Path:
    engines = Path("engines")
    if args.out is not None:
        out = Path(args.out)
    elif args.resume:
        candidates = sorted(engines.glob(f"{model_name}-{backend_name}-*/evaluations.sqlite"),
                            key=lambda p: p.stat().st_mtime)
        if not candidates:
            raise ConfigError(f"--resume found no earlier search of {model_name} on "
                              f"{backend_name} under {engines}/; pass --out DIR")
        out = candidates[-1].parent
    else:
        stamp = time.strftime("%Y%m%d-%H%M%S")
        out = engines / f"{model_name}-{backend_name}-{stamp}"
    _check_writable(out, "--out", folder=True)
    store = out / "evaluations.sqlite"
    if args.resume:
        if not store.exists():
            raise ConfigError(f"--resume: {out} holds no earlier search (no evaluations.sqlite)")
    elif out.exists() and any(out.iterdir()):
        hint = ("it holds an earlier search: add --resume to continue it, or "
                if store.exists() else "")
        raise ConfigError(f"output folder {out} is not empty; {hint}choose another --out")
    return out


#: flags a Ray worker does not take (the driver's own: its folder, resume, the executor)
_DRIVER_FLAGS = {"--out": 1, "--resume": 0, "--executor": 1, "--ray-address": 1,
                 "--mix-devices": 0, "-v": 0, "-vv": 0, "--verbose": 0, "-q": 0, "--quiet": 0,
                 "--no-progress": 0}


def _executor(args):
    """None (evaluate here) or a RayExecutor whose workers rebuild this search's workspace,
    backend and measurement settings from the same arguments."""
    if args.executor == "local":
        if args.ray_address:
            raise ConfigError("--ray-address needs --executor ray")
        if args.mix_devices:
            raise ConfigError("--mix-devices needs --executor ray")
        return None
    import os

    from trt_mpq.backends import backend_spec
    from trt_mpq.pipeline.executor import RayExecutor, WorkerSpec

    argv, skip, command = [], 0, False
    for a in args.argv:
        if skip:
            skip -= 1
            continue
        if a == "search" and not command:
            command = True
            continue
        name = a.split("=", 1)[0]
        if name in _DRIVER_FLAGS:
            skip = _DRIVER_FLAGS[name] if "=" not in a else 0
            continue
        argv.append(a)
    model = Path(args.model)
    if model.suffix == ".onnx":  # a path the workers can open from anywhere
        argv[argv.index(args.model)] = str(model.resolve())
    path = os.pathsep.join(p for p in [os.environ.get("PYTHONPATH", ""), os.getcwd()] if p)
    env = {"TRT_MPQ_CACHE": str(_cache_dir(args).resolve()), "PYTHONPATH": path}
    return RayExecutor(WorkerSpec(argv=argv, env=env), args.ray_address,
                       gpu=backend_spec(args.backend).gpu, mix_devices=args.mix_devices)


def cmd_search(args) -> int:
    from trt_mpq.measure.stats import parse_confidence
    from trt_mpq.pipeline.job import SearchInterrupted, search_job
    from trt_mpq.pipeline.search import SearchConfig, low_precisions, resolvable
    from trt_mpq.plan import Precision
    from trt_mpq.search import Budget
    from trt_mpq.sensitivity import get_metric

    t_start = time.perf_counter()
    budget = Budget.parse(args.max_drop)
    precision = None if args.precision == "auto" else Precision.parse(args.precision)
    config = SearchConfig(budget=budget, strategy=args.strategy,
                          strategy_config=_strategy_config(args), sensitivity=args.sensitivity,
                          precision=precision, sensitivity_samples=args.sensitivity_samples,
                          order=args.order, sensitivity_config=_sensitivity_config(args),
                          torch_model=args.torch, runtime_options=args.runtime_options,
                          option_candidates=args.option_candidates,
                          full_frontier=args.full_frontier,
                          confidence=parse_confidence(args.confidence),
                          search_decision=args.search_decision, adaptive=args.adaptive,
                          final_halfwidth=_percent(args.final_halfwidth, "--final-halfwidth"),
                          final_cap_s=args.final_cap)
    get_metric(config.sensitivity)
    calib = _calib_config(args)
    measure = _measure(args)
    backend = _backend(args)
    backend.check_can_run()
    ws = _workspace(args)
    low_precisions(ws, backend, precision)  # refuse impossible precisions before work
    resolvable(ws.task, config)  # and budgets the holdout cannot certify
    executor = _executor(args)  # and an executor that cannot run (Ray not installed)
    out = _resolve_out(args, ws.task.name, backend.name)
    ranges = ws.calibrate(calib)
    setup_s = time.perf_counter() - t_start
    log.info("search %s on %s, budget %s -> %s", ws.task.name, backend.name, budget.describe(), out)
    try:
        result = search_job(ws, backend, ranges, calib, measure, config, out,
                            argv=sys.argv[1:], setup_s=setup_s, executor=executor)
    except SearchInterrupted as e:
        print(f"\ninterrupted: {e.saved} evaluation(s) are saved in {out}; continue with\n"
              f"  trt-mpq search {shlex.join(sys.argv[2:]) if len(sys.argv) > 2 else ''} "
              f"--resume --out {out}", file=sys.stderr)
        return EXIT_INTERRUPTED
    best = result["best"]
    timing = result.get("timing_check")
    untrusted = ("; timing NOT trusted on this machine (report.md says why)"
                 if timing and not timing["trusted"] else "")
    if best:
        options = "".join(f", {k}={v}" for k, v in sorted(best["runtime_options"].items()))
        ci = ("(95% CI {:.3f}-{:.3f}) ".format(*best["latency_ratio_ci"])
              if best.get("latency_ratio_ci") else "")
        print(f"budget met: {best['precision_counts']}{options} -> latency "
              f"x{best['latency_ratio']:.3f} {ci}"
              f"of baseline ({result['baseline']['latency_ms']:.3f} -> "
              f"{best['latency_ms']:.3f} ms), "
              f"holdout drop {100 * best['holdout_rel_drop']:+.2f}% "
              + (f"(<= {100 * best['holdout_rel_drop_upper']:+.2f}% at "
                 f"{100 * best['confidence']:g}% confidence, certified on "
                 f"{best['holdout_samples_used']} of {best['holdout_n']} samples) "
                 if best.get("holdout_rel_drop_upper") is not None else "")
              + f"({result['evaluations']} plans, {result['wall_s']:.0f} s)"
              + untrusted + f"\n  {out / best['artifact']}\n  {out / 'report.md'}")
        return EXIT_OK
    print(f"budget NOT met: no quantized plan faster than the baseline stayed within "
          f"{budget.describe()} on search and holdout"
          + (f" (certified at {100 * config.confidence:g}% confidence)"
             if config.confidence is not None else "")
          + f"; frontier and report in {out}"
          + untrusted)
    return EXIT_BUDGET


def cmd_sensitivity(args) -> int:
    from trt_mpq.pipeline.analysis import analyze
    from trt_mpq.pipeline.search import low_precisions
    from trt_mpq.plan import Precision
    from trt_mpq.report import plot_orders, write_json
    from trt_mpq.sensitivity import get_metric

    metrics = [m.strip() for m in args.metrics.split(",") if m.strip()]
    for m in metrics:
        get_metric(m)  # unknown names fail before any work
    config = _sensitivity_config(args)
    backend = _backend(args)
    ws = _workspace(args)
    precision = None if args.precision == "auto" else Precision.parse(args.precision)
    low = low_precisions(ws, backend, precision)
    ranges = ws.calibrate(_calib_config(args))
    report = analyze(ws, backend, ranges, low, metrics, config, reference=not args.no_reference,
                     gains=args.gains, torch_spec=args.torch)
    for m in metrics:
        r = report["metrics"][m]
        q = report.get("order_quality", {}).get(m, {})
        corr = (f"  spearman {q['spearman']:+.2f} kendall {q['kendall']:+.2f}"
                if q.get("spearman") is not None else "")
        log.info("%-13s %6.1f s %6d passes%s   most sensitive: %s", m, r["seconds"], r["passes"],
                 corr, r["order"][-1])
    if args.out:
        out = Path(args.out)
        write_json(out / "sensitivity.json", report)
        if "reference" in report:
            plot_orders(report, out / "sensitivity.png")
        print(out / "sensitivity.json")
    else:
        print(json.dumps(report, indent=2))
    return EXIT_OK


def cmd_report(args) -> int:
    from trt_mpq.report import regenerate

    for p in regenerate(args.out):
        print(p)
    return EXIT_OK


def cmd_serve(args) -> int:
    import ipaddress
    import os

    from trt_mpq.serve import ServeConfig, create_app

    token = args.token or os.environ.get("TRT_MPQ_TOKEN") or None
    host = args.host
    try:
        loopback = host == "localhost" or ipaddress.ip_address(host).is_loopback
    except ValueError:
        loopback = False
    if not loopback and not token:
        raise ConfigError(f"--host {host} is reachable from other machines: give --token (or "
                          "set TRT_MPQ_TOKEN) so that every request must carry it")
    if not 0 < args.port < 65536:
        raise ConfigError(f"--port must be in 1..65535, got {args.port}")
    if args.tasks_dir is not None and not args.tasks_dir.is_dir():
        raise ConfigError(f"--tasks-dir {args.tasks_dir} is not a folder")
    if args.max_upload_mb <= 0 or args.gpus < 0:
        raise ConfigError("--max-upload-mb must be > 0 and --gpus >= 0")
    cache = _cache_dir(args)
    root = args.root or cache / "serve"
    _check_writable(root, "--root", folder=True)
    env = dict(os.environ, TRT_MPQ_CACHE=str(cache))
    env.pop("TRT_MPQ_TOKEN", None)  # the searches have no use for it
    config = ServeConfig(root=root, env=env, tasks_dir=args.tasks_dir, token=token,
                         max_upload_bytes=int(args.max_upload_mb * 2**20), gpus=args.gpus)
    import uvicorn

    print(f"trt-mpq serve: http://{host}:{args.port}/{'?token=...' if token else ''} "
          f"(jobs in {root}; Ctrl-C stops, running jobs resume at the next start)", flush=True)
    uvicorn.run(create_app(config), host=host, port=args.port,
                log_level="warning" if not args.verbose else "info")
    return EXIT_OK


COMMANDS = {"zoo": cmd_zoo, "inspect": cmd_inspect, "calibrate": cmd_calibrate,
            "evaluate": cmd_evaluate, "search": cmd_search, "build": cmd_build,
            "sensitivity": cmd_sensitivity,
            "report": cmd_report, "serve": cmd_serve}


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    argv = list(sys.argv[1:] if argv is None else argv)
    try:
        args = parser.parse_args(argv)
        args.argv = argv  # as given (a Ray worker rebuilds the search from them)
    except SystemExit as e:  # argparse: usage error (2, message printed) or --help (0)
        return EXIT_USER if e.code else EXIT_OK
    if not args.command:
        parser.print_help()
        return EXIT_USER
    configure_logging(args.verbose - args.quiet)
    try:
        return COMMANDS[args.command](args)
    except TrtMpqError as e:
        if args.verbose:  # -v: the whole story, the user's own frames included
            import traceback

            traceback.print_exception(e, file=sys.stderr)
        print(f"trt-mpq {args.command}: error: {e}", file=sys.stderr)
        return EXIT_USER
    except KeyboardInterrupt:
        print("\ninterrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    except BrokenPipeError:  # e.g. `trt-mpq inspect MODEL | head`
        sys.stderr.close()
        return EXIT_OK
    except Exception as e:  # noqa: BLE001 - anything else is a bug in trt-mpq
        return _internal_error(args, e)


def _internal_error(args, e: Exception) -> int:
    """A bug: one line that says so, the traceback in a file (and on stderr with -v)."""
    import traceback

    text = "".join(traceback.format_exception(e))
    saved = ""
    try:
        from trt_mpq.task import default_cache_dir

        folder = Path(getattr(args, "cache_dir", None) or default_cache_dir()) / "crashes"
        folder.mkdir(parents=True, exist_ok=True)
        path = folder / f"{time.strftime('%Y%m%d-%H%M%S')}-{os.getpid()}.txt"
        path.write_text(f"trt-mpq {' '.join(sys.argv[1:])}\n\n{text}")
        saved = f"; traceback in {path}"
    except Exception:  # noqa: BLE001 - reporting a bug must not raise another
        pass
    if args.verbose:
        print(text, file=sys.stderr, end="")
    print(f"trt-mpq {args.command}: internal error: {type(e).__name__}: "
          f"{str(e).strip().splitlines()[0] if str(e).strip() else ''} -- this is a bug in "
          f"trt-mpq, not in your input{saved} (-v prints it); please report it with the "
          "command line", file=sys.stderr)
    return EXIT_BUG


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
