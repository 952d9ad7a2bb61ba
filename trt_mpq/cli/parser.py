"""The `trt-mpq` argument parser. The settings' flags come from the config classes that declare
them (`trt_mpq.options`); this module only arranges them into commands and groups."""

from __future__ import annotations

import argparse
from pathlib import Path

from trt_mpq import options
from trt_mpq.cli import flags


def _backends():
    from trt_mpq.backends import BACKENDS, backend_spec

    return [backend_spec(n) for n in BACKENDS]


def _strategies():
    from trt_mpq.search import STRATEGIES, strategy_spec

    return [strategy_spec(n) for n in STRATEGIES]


def _model(p: argparse.ArgumentParser, task: bool = True, optional: bool = False) -> None:
    from trt_mpq.pipeline.request import ModelRef

    p.add_argument("model", metavar="MODEL", nargs="?" if optional else None,
                   help="a zoo name (`trt-mpq zoo`) or an .onnx file")
    flags.add_flags(p, ModelRef, only={"task", "metric", "cache-dir"} if task
                      else {"cache-dir"})


def _per_owner(p: argparse.ArgumentParser, specs, what: str, seen: dict) -> None:
    """One argument group per config class of `specs` (backends or strategies)."""
    by_config: dict[type, list] = {}
    for spec in specs:
        by_config.setdefault(spec.config, []).append(spec)
    for config, owners in by_config.items():
        if options.options_of(config):
            group = p.add_argument_group(
                f"{what} {', '.join(s.name for s in owners)}",
                "; ".join(f"{s.name}: {s.description}" for s in owners))
            flags.add_flags(group, config, seen)


def _backend(p: argparse.ArgumentParser, measure: bool = True) -> None:
    from trt_mpq.calib import CalibConfig
    from trt_mpq.measure import MeasureConfig
    from trt_mpq.pipeline.request import BackendChoice

    flags.add_flags(p, BackendChoice)
    _per_owner(p, _backends(), "backend", {})
    flags.add_flags(p.add_argument_group("calibration"), CalibConfig)
    if measure:
        flags.add_flags(p.add_argument_group("measurement"), MeasureConfig)


def _plan(p: argparse.ArgumentParser) -> None:
    g = p.add_mutually_exclusive_group(required=True)
    g.add_argument("--plan", type=Path, help="plan.json (from a search, or written by hand)")
    g.add_argument("--uniform", metavar="PRECISION",
                   help="every group at one precision, e.g. int8, fp32, fp16")


def _search(p: argparse.ArgumentParser) -> None:
    from trt_mpq.pipeline.config import SearchConfig
    from trt_mpq.pipeline.request import ExecutorConfig, OutputConfig
    from trt_mpq.sensitivity import SensitivityConfig

    _model(p, optional=True)
    _backend(p)
    p.add_argument("--request", type=Path, metavar="FILE",
                   help="run the search a request file describes (request.json of an earlier "
                        "search, or written by hand; docs/options.md); only --out, --resume "
                        "and the logging flags may be given with it")
    flags.add_flags(p.add_argument_group("search"), SearchConfig)
    flags.add_flags(p.add_argument_group("sensitivity"), SensitivityConfig)
    _per_owner(p, _strategies(), "strategy", {})
    flags.add_flags(p.add_argument_group("output"), OutputConfig)
    flags.add_flags(p.add_argument_group("executor"), ExecutorConfig)


def build_parser() -> argparse.ArgumentParser:
    from trt_mpq.pipeline.config import SearchConfig
    from trt_mpq.sensitivity import SensitivityConfig

    # -v/-q/--no-progress work before or after the command
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("-v", "--verbose", action="count", default=argparse.SUPPRESS,
                       help="more log lines (-vv: debug)")
    common.add_argument("-q", "--quiet", action="count", default=argparse.SUPPRESS,
                       help="warnings and errors only")
    common.add_argument("--no-progress", action="store_true", default=argparse.SUPPRESS,
                       help="no progress bars (they are off anyway when stderr is not a terminal)")
    parser = argparse.ArgumentParser(
        prog="trt-mpq", parents=[common],
        description="Latency-measured mixed-precision post-training quantization search.")
    parser.set_defaults(verbose=0, quiet=0, no_progress=False)
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    def command(name: str, help: str) -> argparse.ArgumentParser:
        return sub.add_parser(name, help=help, parents=[common])

    command("zoo", "list the built-in models and tasks")

    p = command("inspect", "list a model's quantizable groups")
    _model(p)
    p.add_argument("--json", action="store_true", help="print JSON")

    from trt_mpq.calib import CalibConfig

    p = command("calibrate", "collect (and cache) activation ranges")
    _model(p)
    flags.add_flags(p, CalibConfig)

    p = command("evaluate", "measure one plan: accuracy, latency ratio, census")
    _model(p)
    _backend(p)
    _plan(p)
    p.add_argument("--out", type=Path, help="also write the evaluation JSON to this file")

    _search(command("search", "find the fastest plan within an accuracy budget"))

    p = command("sensitivity", "score every group with sensitivity metrics and rank the orders "
                               "against the measured drop")
    _model(p)
    _backend(p)
    p.add_argument("--metrics", default="noise,sqnr,accuracy,hessian,hessian+deps,fisher",
                   help="comma-separated: noise, sqnr, accuracy, hessian, hessian+deps, fisher")
    flags.add_flags(p, SensitivityConfig)
    flags.add_flags(p, SearchConfig, only={"precision", "torch"})
    p.add_argument("--no-reference", action="store_true",
                   help="skip the measured one-at-a-time drop on the search split")
    p.add_argument("--gains", action="store_true",
                   help="also measure per-group latency gains (profiler) and latency-aware orders")
    p.add_argument("--out", type=Path, default=None,
                   help="write sensitivity.json and sensitivity.png into this folder")

    p = command("build", "build one plan's artifact (e.g. a TensorRT engine, without a GPU for "
                         "tensorrt-rtx) and check its precisions")
    _model(p)
    _backend(p, measure=False)
    _plan(p)
    p.add_argument("--out", type=Path, default=None,
                   help="output folder (default: engines/<model>-<backend>-build-<time>/)")

    p = command("report", "rewrite report.md and the plots of a finished search")
    p.add_argument("out", type=Path, metavar="DIR")

    p = command("serve", "run searches as a service: a JSON API, a job queue per timing device "
                         "and a live latency-accuracy page")
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
                   help="every request must carry it (Authorization: Bearer TOKEN, or the "
                        "cookie the page gets from /?token=TOKEN); required off loopback. "
                        "Visible to every user in `ps`: prefer --token-file or $TRT_MPQ_TOKEN")
    p.add_argument("--token-file", type=Path, default=None, metavar="FILE",
                   help="read the token from FILE (its first line)")
    p.add_argument("--allowed-host", action="append", default=[], metavar="NAME",
                   help="without a token, also answer requests whose Host is NAME (e.g. a "
                        "reverse proxy's name; default: loopback names only); repeatable")
    p.add_argument("--executor", choices=("local", "ray"), default="local",
                   help="where every job's plans are evaluated (a request cannot choose)")
    p.add_argument("--ray-address", default=None, metavar="ADDRESS",
                   help="with --executor ray: the cluster every job joins (auto, or "
                        "HEAD:6379)")
    p.add_argument("--max-upload-mb", type=float, default=512,
                   help="largest ONNX upload (default 512 MB)")
    p.add_argument("--max-concurrent-uploads", type=int, default=2, metavar="N",
                   help="uploads received at once; more are refused with 429 (default 2)")
    p.add_argument("--max-queued", type=int, default=20, metavar="N",
                   help="queued or running jobs per client address; more are refused with "
                        "429 (default 20)")
    p.add_argument("--max-disk-gb", type=float, default=100, metavar="GB",
                   help="disk the uploads and jobs may use; past it uploads and new jobs are "
                        "refused with 507 (default 100; 0: no limit)")
    p.add_argument("--retention-days", type=float, default=30, metavar="DAYS",
                   help="finished jobs and unused uploads older than this are deleted, at "
                        "start and hourly (default 30; 0: keep everything)")
    p.add_argument("--request-timeout", type=float, default=30, metavar="S",
                   help="a request's head must arrive within S seconds, its body without "
                        "pauses over S seconds (default 30)")
    p.add_argument("--gpus", type=int, default=1,
                   help="GPUs that time TensorRT jobs, one job at a time each (cuda:0..N-1; "
                        "default 1); CPU jobs have their own queue")
    return parser


__all__ = ["build_parser"]
