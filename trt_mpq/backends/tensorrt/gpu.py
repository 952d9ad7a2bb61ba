"""The GPU, read (never changed) through NVIDIA's cuda-python bindings and nvidia-smi.

cuda-python rather than pycuda: it is NVIDIA's maintained, complete binding of the CUDA runtime
(streams, events, graphs), ships as wheels for every CUDA 12/13 platform without compiling
against a local toolkit, and does not create a context of its own at import (pycuda's autoinit
does), so it coexists with TensorRT's and PyTorch's use of the primary context.
"""

from __future__ import annotations

import shutil
import subprocess
from functools import lru_cache

from trt_mpq.errors import MeasurementError


class CudaError(MeasurementError):
    """A CUDA runtime call failed."""


def cudart():
    """`cuda.bindings.runtime` (cuda-python >= 12.6), or the older `cuda.cudart`."""
    try:
        from cuda.bindings import runtime
    except ImportError:
        from cuda import cudart as runtime  # type: ignore[no-redef]
    return runtime


def check(result):
    """Unpack a cuda-python call's (error, *values) and raise on error."""
    err, *values = result if isinstance(result, tuple) else (result,)
    code = getattr(err, "value", err)
    if code != 0:
        rt = cudart()
        name = rt.cudaGetErrorName(err)[1] if hasattr(rt, "cudaGetErrorName") else err
        raise CudaError(f"CUDA error {name!r}")
    if not values:
        return None
    return values[0] if len(values) == 1 else tuple(values)


@lru_cache(maxsize=1)
def gpu_info() -> dict | None:
    """Name, compute capability, driver and clocks of GPU 0, or None without a usable GPU."""
    try:
        rt = cudart()
        count = check(rt.cudaGetDeviceCount())
    except Exception:
        return None
    if not count:
        return None
    props = check(rt.cudaGetDeviceProperties(0))
    name = props.name.decode() if isinstance(props.name, bytes) else str(props.name)
    info = {"name": name.strip("\x00 "), "compute_capability": f"{props.major}.{props.minor}",
            "sm": f"sm{props.major}{props.minor}", "multiprocessors": props.multiProcessorCount,
            "memory_gib": round(props.totalGlobalMem / 2**30, 1)}
    try:
        v = check(rt.cudaDriverGetVersion())
        info["cuda_driver_api"] = f"{v // 1000}.{v % 1000 // 10}"
    except Exception:
        pass
    info.update(_smi())
    return info


def _smi() -> dict:
    """Driver version, clocks and power limit from nvidia-smi (read only)."""
    exe = shutil.which("nvidia-smi")
    if not exe:
        return {}
    fields = ["driver_version", "clocks.sm", "clocks.mem", "clocks.max.sm", "clocks.max.mem",
              "power.limit", "persistence_mode"]
    try:
        out = subprocess.run([exe, f"--query-gpu={','.join(fields)}", "--format=csv,noheader",
                              "-i", "0"], capture_output=True, text=True, timeout=20).stdout
    except (OSError, subprocess.SubprocessError):
        return {}
    values = [v.strip() for v in out.strip().split(",")]
    return dict(zip(fields, values)) if len(values) == len(fields) else {}
