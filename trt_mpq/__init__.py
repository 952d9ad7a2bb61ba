"""trt-mpq: latency-measured mixed-precision post-training quantization search.

`import trt_mpq` is cheap and works without torch, CUDA or TensorRT: heavy imports live inside
the functions that need them.
"""

__version__ = "0.1.0"

from trt_mpq.errors import (  # re-exported
    BudgetError,
    BuildError,
    CalibrationError,
    ConfigError,
    DataError,
    MeasurementError,
    ModelError,
    PlanError,
    StoreError,
    TaskError,
    TrtMpqError,
)

__all__ = ["BudgetError", "BuildError", "CalibrationError", "ConfigError", "DataError",
           "MeasurementError", "ModelError", "PlanError", "StoreError", "TaskError",
           "TrtMpqError", "__version__"]
