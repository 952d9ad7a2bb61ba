"""A submitted job, validated into the `trt-mpq search` arguments it runs with.

The request names a zoo model or an uploaded ONNX file (by the id its upload returned) with a
task module from the server's `--tasks-dir`, a budget, a backend and any of the CLI's search
options by their flag names (`{"strategy": "boundary", "repeats": 20, "runtime-options":
false}`). The options are checked against the search command's own argument parser, so the API
and the CLI accept exactly the same things; the flags that would reach outside the job (its
folder, the cache, Python modules to import: --out, --resume, --cache-dir, --task, --torch) are
the server's to set and refused in a request. Every refusal is a `SpecError` whose message
says what to send instead (the API answers 400 with it).
"""

from __future__ import annotations

import argparse
import contextlib
import io
import re
from pathlib import Path

SERVER_FLAGS = {"out", "resume", "cache-dir", "task", "torch", "verbose", "quiet", "no-progress",
                "help", "max-drop", "backend"}
UPLOAD_ID = re.compile(r"^[0-9a-f]{64}$")
TASK = re.compile(r"^([A-Za-z_][A-Za-z0-9_]*):([A-Za-z_][A-Za-z0-9_]*)$")
FIELDS = {"model", "upload", "task", "max_drop", "backend", "options"}


class SpecError(ValueError):
    """A request the server refuses (HTTP 400), with what to send instead."""


def _search_parser() -> argparse.ArgumentParser:
    from trt_mpq.cli.main import build_parser

    parser = build_parser()
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return sub.choices["search"]


def _flags(parser: argparse.ArgumentParser) -> dict[str, argparse.Action]:
    return {s[2:]: a for a in parser._actions for s in a.option_strings if s.startswith("--")}


def option_args(options: dict, parser: argparse.ArgumentParser) -> list[str]:
    """{"repeats": 20, "probes": false} -> ["--repeats", "20", "--no-probes"]."""
    if not isinstance(options, dict):
        raise SpecError('"options" must be an object of search flags, e.g. {"strategy": '
                        '"boundary"}')
    flags = _flags(parser)
    argv: list[str] = []
    for key, value in options.items():
        name = str(key).lstrip("-")
        if name in SERVER_FLAGS or (name.startswith("no-") and name[3:] in SERVER_FLAGS):
            raise SpecError(f"option {key!r} is set by the server, not by a request")
        action = flags.get(name)
        if action is None:
            raise SpecError(f"unknown search option {key!r}; the options are the flags of "
                            "`trt-mpq search --help`, without the dashes")
        if isinstance(action, argparse.BooleanOptionalAction):
            if not isinstance(value, bool):
                raise SpecError(f"option {key!r} takes true or false, got {value!r}")
            argv.append(f"--{name}" if value else f"--no-{name}")
        elif action.nargs == 0:  # store_true
            if not isinstance(value, bool):
                raise SpecError(f"option {key!r} takes true or false, got {value!r}")
            if value:
                argv.append(f"--{name}")
        else:
            if isinstance(value, bool) or not isinstance(value, (str, int, float)):
                raise SpecError(f"option {key!r} takes one value (a string or number), "
                                f"got {value!r}")
            argv += [f"--{name}", str(value)]
    return argv


def _parse(parser: argparse.ArgumentParser, argv: list[str]) -> argparse.Namespace:
    err = io.StringIO()
    try:
        with contextlib.redirect_stderr(err):
            return parser.parse_args(argv)
    except SystemExit:
        lines = [ln for ln in err.getvalue().strip().splitlines() if ln.strip()]
        text = lines[-1] if lines else "invalid search options"
        raise SpecError(text.split("error: ", 1)[-1]) from None


def validate(body, uploads: Path, tasks_dir: Path | None) -> tuple[dict, list[str]]:
    """The request body (parsed JSON) -> (the spec as stored, `trt-mpq search` argv without
    --out/--resume). Raises SpecError."""
    from trt_mpq.backends import BACKENDS
    from trt_mpq.errors import TrtMpqError
    from trt_mpq.search import Budget
    from trt_mpq.zoo import ZOO

    if not isinstance(body, dict):
        raise SpecError("the request body must be a JSON object with \"model\" (a zoo name) or "
                        "\"upload\" (+ \"task\"), and \"max_drop\"")
    unknown = sorted(set(body) - FIELDS)
    if unknown:
        raise SpecError(f"unknown field(s) {', '.join(map(repr, unknown))}; a job has "
                        f"{', '.join(sorted(FIELDS))}")
    model, upload, task = body.get("model"), body.get("upload"), body.get("task")
    if (model is None) == (upload is None):
        raise SpecError('give exactly one of "model" (a zoo name, GET /api/models) and '
                        '"upload" (the id POST /api/uploads returned)')
    spec: dict = {}
    if model is not None:
        if not isinstance(model, str) or model not in ZOO:
            raise SpecError(f"unknown model {model!r}; the zoo has {', '.join(sorted(ZOO))}")
        if task is not None:
            raise SpecError('"task" is for an uploaded model; a zoo model brings its own')
        argv = [model]
        spec["model"] = model
    else:
        if not isinstance(upload, str) or not UPLOAD_ID.match(upload) or \
                not (uploads / f"{upload}.onnx").is_file():
            raise SpecError(f"unknown upload {upload!r}; POST the .onnx file to /api/uploads "
                            "first and send the id it returns")
        if tasks_dir is None:
            raise SpecError("this server takes no uploaded models: it was started without "
                            "--tasks-dir (where the task modules that load data live)")
        m = TASK.match(task) if isinstance(task, str) else None
        if m is None:
            raise SpecError('an uploaded model needs "task": "MODULE:FUNCTION", a function of '
                            f"a module in the server's --tasks-dir, got {task!r}")
        path = (tasks_dir / f"{m.group(1)}.py").resolve()
        if path.parent != tasks_dir.resolve() or not path.is_file():
            available = sorted(p.stem for p in tasks_dir.glob("*.py"))
            raise SpecError(f"no task module {m.group(1)!r} in the server's tasks folder; it "
                            f"has {', '.join(available) or 'none'}")
        argv = [str(uploads / f"{upload}.onnx"), "--task", task]
        spec.update(upload=upload, task=task)
    budget = body.get("max_drop")
    if not isinstance(budget, (str, int, float)) or isinstance(budget, bool):
        raise SpecError('"max_drop" is required: a relative budget like "1%" or an absolute '
                        "one like 0.005")
    try:
        Budget.parse(str(budget))
    except TrtMpqError as e:  # BudgetError
        raise SpecError(str(e)) from None
    backend = body.get("backend", "ort-cpu")
    if backend not in BACKENDS:
        raise SpecError(f"unknown backend {backend!r}; use one of {', '.join(BACKENDS)}")
    parser = _search_parser()
    options = body.get("options") or {}
    argv += ["--max-drop", str(budget), "--backend", backend, *option_args(options, parser)]
    _parse(parser, argv)  # the CLI's own checks (choices, types)
    spec.update(max_drop=str(budget), backend=backend, options=options)
    return spec, argv


__all__ = ["SpecError", "option_args", "validate"]
