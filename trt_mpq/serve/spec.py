"""A submitted job, validated into the `SearchRequest` it runs.

The request names a zoo model or an uploaded ONNX file (by the id its upload returned) with a
task module from the server's `--tasks-dir`, a budget, a backend and any of the search's
settings by their flag names (`{"strategy": "boundary", "repeats": 20, "runtime-options":
false}`). The settings go through the same validation as the CLI's flags
(`SearchRequest.from_options`: type, finiteness, choices, range), so the API and the CLI accept
exactly the same things; the settings that would reach outside the job (its folder, the cache,
Python modules to import, where the search connects: `SERVER_KEYS`) are the server's and
refused in a request, and the server's own executor (`trt-mpq serve --executor`) is set on
every request it validates. Every refusal is a `SpecError` whose message says what to send
instead (the API answers 400 with it).

What the job stores and shows is what validation made of the request (`spec`: the model or
upload, task, budget, backend and `request.settings()`), never the body as it was sent.
"""

from __future__ import annotations

import ast
import re
from dataclasses import replace
from pathlib import Path

from trt_mpq.errors import TrtMpqError
from trt_mpq.pipeline.request import SERVER_KEYS, ExecutorConfig, SearchRequest

#: given as the job's own fields, not as options
JOB_KEYS = frozenset({"max-drop", "backend"})
#: matched with fullmatch (a `$` would let a trailing newline through)
UPLOAD_ID = re.compile(r"[0-9a-f]{64}")
TASK = re.compile(r"([A-Za-z_][A-Za-z0-9_]*):([A-Za-z_][A-Za-z0-9_]*)")
FIELDS = {"model", "upload", "task", "max_drop", "backend", "options"}


class SpecError(ValueError):
    """A request the server refuses (HTTP 400), with what to send instead."""


def settings_of(options) -> dict:
    """The request's `options` as settings by flag key; the server's own are refused."""
    if not isinstance(options, dict):
        raise SpecError('"options" must be an object of search settings, e.g. {"strategy": '
                        '"boundary"}')
    out = {}
    for key, value in options.items():
        name = str(key).lstrip("-")
        base = name[3:] if name.startswith("no-") else name
        if name in SERVER_KEYS or base in SERVER_KEYS:
            raise SpecError(f"option {key!r} is set by the server, not by a request")
        if name in JOB_KEYS:
            raise SpecError(f"option {key!r} is a field of the job: send "
                            f"\"{name.replace('-', '_')}\" beside \"options\"")
        out[name] = value
    return out


def task_functions(path: Path) -> list[str]:
    """The public functions a task module defines itself (read, never imported: the server
    runs no task code): the only names a request may give as its task factory."""
    try:
        tree = ast.parse(path.read_text())
    except (OSError, SyntaxError, ValueError):
        return []
    return sorted(n.name for n in tree.body
                  if isinstance(n, ast.FunctionDef) and not n.name.startswith("_"))


def validate(body, uploads: Path, tasks_dir: Path | None,
             executor: ExecutorConfig | None = None) -> tuple[dict, SearchRequest]:
    """The request body (parsed JSON) -> (the spec as the job shows it, the SearchRequest it
    runs, with the server's `executor`). Raises SpecError."""
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
        model_arg = model
        spec["model"] = model
    else:
        if not isinstance(upload, str) or not UPLOAD_ID.fullmatch(upload) or \
                not (uploads / f"{upload}.onnx").is_file():
            raise SpecError(f"unknown upload {upload!r}; POST the .onnx file to /api/uploads "
                            "first and send the id it returns")
        if tasks_dir is None:
            raise SpecError("this server takes no uploaded models: it was started without "
                            "--tasks-dir (where the task modules that load data live)")
        m = TASK.fullmatch(task) if isinstance(task, str) and len(task) <= 200 else None
        if m is None:
            shown = repr(task) if len(repr(task)) <= 80 else repr(task)[:77] + "..."
            raise SpecError('an uploaded model needs "task": "MODULE:FUNCTION", a public '
                            "function of a module in the server's --tasks-dir, got " + shown)
        path = (tasks_dir / f"{m.group(1)}.py").resolve()
        if path.parent != tasks_dir.resolve() or not path.is_file():
            available = sorted(p.stem for p in tasks_dir.glob("*.py"))
            raise SpecError(f"no task module {m.group(1)!r} in the server's tasks folder; it "
                            f"has {', '.join(available) or 'none'}")
        functions = task_functions(path)
        if m.group(2) not in functions:
            raise SpecError(f"{m.group(1)!r} defines no public function {m.group(2)!r}; a task "
                            f"factory is one of its own functions: "
                            f"{', '.join(functions) or 'it has none'}")
        model_arg = str(uploads / f"{upload}.onnx")
        spec.update(upload=upload, task=task)
    budget = body.get("max_drop")
    if not isinstance(budget, (str, int, float)) or isinstance(budget, bool):
        raise SpecError('"max_drop" is required: a relative budget like "1%" or an absolute '
                        "one like 0.005")
    backend = body.get("backend", "ort-cpu")
    options = body.get("options") or {}
    values = {**settings_of(options), "max-drop": str(budget), "backend": backend}
    if task is not None:
        values["task"] = task
    try:
        request = SearchRequest.from_options(model_arg, values)
    except TrtMpqError as e:  # ConfigError, BudgetError: the CLI's own checks
        raise SpecError(str(e)) from None
    if executor is not None:
        request = replace(request, executor=executor)
    settings = request.settings()
    shown = {k: v for k, v in settings.items()
             if k not in SERVER_KEYS and k not in JOB_KEYS}
    spec.update(max_drop=settings["max-drop"], backend=request.backend.name, options=shown)
    return spec, request


__all__ = ["SERVER_KEYS", "SpecError", "settings_of", "task_functions", "validate"]
