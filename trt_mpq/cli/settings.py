"""Parsed command-line arguments -> the library's config objects, through `trt_mpq.options` (the
same validation the service and request files get)."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from trt_mpq import options
from trt_mpq.cli import flags


def values(args: argparse.Namespace) -> dict[str, Any]:
    """Flag key -> raw value of every setting given on the command line."""
    from trt_mpq.backends import BACKENDS, backend_spec
    from trt_mpq.pipeline.request import SearchRequest
    from trt_mpq.search import STRATEGIES, strategy_spec

    classes = [*SearchRequest.FLAT, *(backend_spec(n).config for n in BACKENDS),
               *(strategy_spec(n).config for n in STRATEGIES)]
    return flags.given(args, classes)


def progress(args: argparse.Namespace) -> bool | None:
    return False if args.no_progress else None


def model_ref(args: argparse.Namespace):
    from trt_mpq.pipeline.request import ModelRef

    return ModelRef.from_options(args.model, values(args))


def workspace(args: argparse.Namespace):
    return model_ref(args).open(progress(args))


def backend(args: argparse.Namespace):
    """The backend of --backend, configured from its own flags; flags of another backend are
    refused."""
    from trt_mpq.pipeline.request import BackendChoice

    return BackendChoice.from_options(values(args)).create(model_ref(args).cache)


def calibration(args: argparse.Namespace):
    from trt_mpq.calib import CalibConfig

    return options.build(CalibConfig, values(args))


def measure(args: argparse.Namespace):
    from trt_mpq.measure import MeasureConfig

    return options.build(MeasureConfig, values(args))


def cache_dir(args: argparse.Namespace) -> Path:
    """--cache-dir (of any command), else $TRT_MPQ_CACHE or ~/.cache/trt-mpq."""
    from trt_mpq.task import default_cache_dir

    given = getattr(args, "opt_cache_dir", None) or getattr(args, "cache_dir", None)
    return Path(given) if given else default_cache_dir()


__all__ = ["backend", "cache_dir", "calibration", "measure", "model_ref", "progress", "values",
           "workspace"]
