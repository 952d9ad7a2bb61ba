"""One error hierarchy. Every message says what failed and what to do next.

User-facing errors (bad files, bad data, bad plans, bad settings) derive from `TrtMpqError`;
the CLI prints them without a traceback and exits with code 2. Anything else is a bug and
propagates.
"""

from __future__ import annotations


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
    """A precision plan is malformed, names unknown groups, or asks for what the target cannot run."""


class BuildError(TrtMpqError):
    """The backend could not build an artifact from a materialized graph."""


class MeasurementError(TrtMpqError):
    """Running or timing an artifact failed, or produced non-finite outputs."""


class BudgetError(TrtMpqError):
    """An accuracy budget is malformed."""


class ConfigError(TrtMpqError):
    """A setting is out of range or inconsistent with another."""


class StoreError(TrtMpqError):
    """The evaluation store cannot be opened or belongs to a different search."""
