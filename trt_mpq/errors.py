"""One error hierarchy. Every message says what failed and what to do next.

User-facing errors (bad files, bad data, bad plans, bad settings) derive from `TrtMpqError`;
the CLI prints them without a traceback and exits with code 2. Anything else is a bug and
propagates.
"""

from __future__ import annotations

import contextlib


class TrtMpqError(Exception):
    """Base class of every error trt-mpq raises on purpose."""


class ModelError(TrtMpqError):
    """The model file is missing, not ONNX, corrupt, or has nothing to quantize."""


class DataError(TrtMpqError):
    """The task's data does not fit the model (names, shapes, types) or a split is empty."""


class TaskError(TrtMpqError):
    """A task or zoo entry cannot be found or built."""


class CalibrationError(TrtMpqError):
    """Calibration failed or produced unusable ranges."""


class PlanError(TrtMpqError):
    """A precision plan is malformed, names unknown groups, or asks for what the target cannot
    run."""


class MaterializeError(TrtMpqError):
    """A plan could not be turned into a graph: a quantizer or converter refused this graph.
    During a search this fails the one candidate (status build-failed), not the search."""


class BuildError(TrtMpqError):
    """The backend could not build an artifact from a materialized graph."""


class MeasurementError(TrtMpqError):
    """Running or timing an artifact failed."""


class NonFiniteOutputError(MeasurementError):
    """An artifact ran but produced NaN or Inf outputs."""


class BudgetError(TrtMpqError):
    """An accuracy budget is malformed."""


class ConfigError(TrtMpqError):
    """A setting is out of range or inconsistent with another."""


class StoreError(TrtMpqError):
    """The evaluation store cannot be opened or belongs to a different search."""


@contextlib.contextmanager
def third_party(step: str, error: type[TrtMpqError] = MaterializeError):
    """Turn any exception raised inside a call into a library we do not own (a quantizer, a
    converter, a runtime) into `error`, naming the step; our own errors pass through unchanged.
    Use it around the third-party call only, never around our own code: a bug is a bug."""
    try:
        yield
    except TrtMpqError:
        raise
    except Exception as e:  # noqa: BLE001 - the boundary to code we do not own
        text = str(e).strip()
        detail = text.splitlines()[0][:500] if text else ""
        raise error(f"{step} failed: {type(e).__name__}" + (f": {detail}" if detail else "")
                    ) from e


def _user_frame(tb) -> str:
    """' (at FILE:LINE, in FUNC)' for the innermost frame of `tb` in the user's own code (not
    trt-mpq, not the standard library or an installed package); '' if there is none."""
    import sysconfig
    import traceback
    from pathlib import Path

    ours = str(Path(__file__).resolve().parent)
    libraries = {str(Path(p).resolve()) for k, p in sysconfig.get_paths().items()
                 if k in ("stdlib", "platstdlib", "purelib", "platlib")}
    for frame in reversed(traceback.extract_tb(tb)):
        path = str(Path(frame.filename).resolve())
        if frame.filename.startswith("<") or path.startswith(ours) or \
                any(path.startswith(lib) for lib in libraries):
            continue
        return f" (at {frame.filename}:{frame.lineno}, in {frame.name})"
    return ""


@contextlib.contextmanager
def user_code(what: str, error: type[TrtMpqError] = TaskError):
    """Run the user's own code (a task factory, a torch-twin factory, their module's import):
    whatever it raises becomes `error` saying `what` failed, with the exception's type, message
    and the line of the user's code it came from -- not trt-mpq's frames. A trt-mpq error it
    raised (e.g. a `Task` refusing a split) keeps its type, with `what` and that line added."""
    try:
        yield
    except TrtMpqError as e:
        raise type(e)(f"{what}: {e}{_user_frame(e.__traceback__)}") from e
    except Exception as e:  # noqa: BLE001 - the boundary to the user's code
        text = str(e).strip().splitlines()
        raise error(f"{what} raised {type(e).__name__}" + (f": {text[0][:500]}" if text else "")
                    + _user_frame(e.__traceback__)) from e
