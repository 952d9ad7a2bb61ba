"""Calibration, once: activation ranges from ONNX Runtime's calibrators, cached on disk.

The ranges are a value (`Ranges`) that every plan's materialization reuses; nothing is
recalibrated per plan. The cache key is (prepared model digest, calibration data digest, config).
"""

from __future__ import annotations

import enum
import hashlib
import json
import logging
import os
import tempfile
from collections.abc import Collection, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np

from trt_mpq import options
from trt_mpq.errors import CalibrationError, ConfigError
from trt_mpq.options import flag

log = logging.getLogger(__name__)


class CalibMethod(enum.Enum):
    MINMAX = "minmax"
    PERCENTILE = "percentile"
    ENTROPY = "entropy"

    @classmethod
    def parse(cls, text: str) -> CalibMethod:
        for m in cls:
            if m.value == text.strip().lower():
                return m
        raise ConfigError(f"unknown calibration method {text!r}; use one of: "
                          f"{', '.join(m.value for m in cls)}")


@dataclass(frozen=True)
class CalibConfig:
    method: CalibMethod = field(default=CalibMethod.MINMAX, metadata=flag(
        "--calib-method", "how activation ranges are calibrated",
        choices=("minmax", "percentile", "entropy")))
    #: taken from the task's calibration split (all of it if smaller)
    num_samples: int = field(default=256, metadata=flag(
        "--calib-samples", "calibration samples", lo=1, hi=1_000_000))
    batch_size: int = 16
    percentile: float = 99.999  # PERCENTILE only
    num_bins: int = 2048  # PERCENTILE / ENTROPY histograms

    def __post_init__(self) -> None:
        options.check(self)
        if self.batch_size < 1:
            raise ConfigError("calibration batch_size must be >= 1")
        if not 50.0 < self.percentile <= 100.0:
            raise ConfigError("percentile must be in (50, 100]")
        if self.num_bins < 16:
            raise ConfigError("num_bins must be >= 16")

    def to_json_dict(self) -> dict:
        return {"method": self.method.value, "num_samples": self.num_samples,
                "batch_size": self.batch_size, "percentile": self.percentile,
                "num_bins": self.num_bins}


@dataclass(frozen=True)
class Ranges:
    """Per-tensor activation ranges (min, max) of the prepared FP32 graph."""

    method: CalibMethod
    values: Mapping[str, tuple[float, float]] = field(repr=False)
    num_samples: int = 0

    def __getitem__(self, tensor: str) -> tuple[float, float]:
        return self.values[tensor]

    def __contains__(self, tensor: object) -> bool:
        return tensor in self.values

    def amax(self, tensor: str) -> float:
        lo, hi = self.values[tensor]
        return max(abs(lo), abs(hi))

    @property
    def digest(self) -> str:
        canon = json.dumps(self.to_json_dict(), sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(canon.encode()).hexdigest()[:16]

    def to_tensors_data(self):
        """The same ranges as ONNX Runtime's `TensorsData`, for its quantizers."""
        from onnxruntime.quantization.calibrate import CalibrationMethod, TensorData, TensorsData

        ort_method = {CalibMethod.MINMAX: CalibrationMethod.MinMax,
                      CalibMethod.PERCENTILE: CalibrationMethod.Percentile,
                      CalibMethod.ENTROPY: CalibrationMethod.Entropy}[self.method]
        data = {k: TensorData(lowest=np.array(lo, dtype=np.float32),
                              highest=np.array(hi, dtype=np.float32))
                for k, (lo, hi) in self.values.items()}
        return TensorsData(ort_method, data)

    def to_json_dict(self) -> dict:
        return {"format": "trt-mpq-ranges/1", "method": self.method.value,
                "num_samples": self.num_samples,
                "ranges": {k: [float(lo), float(hi)]
                           for k, (lo, hi) in sorted(self.values.items())}}

    @classmethod
    def from_json_dict(cls, data: dict) -> Ranges:
        try:
            return cls(method=CalibMethod.parse(data["method"]),
                       values={k: (float(v[0]), float(v[1])) for k, v in data["ranges"].items()},
                       num_samples=int(data.get("num_samples", 0)))
        except (KeyError, TypeError, ValueError, IndexError) as e:
            raise CalibrationError(f"calibration cache is malformed ({e}); delete it and "
                                   "calibrate again") from None

    def save(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, suffix=".tmp")
        with os.fdopen(fd, "w") as f:
            json.dump(self.to_json_dict(), f)
        os.replace(tmp, path)

    @classmethod
    def load(cls, path: Path) -> Ranges:
        try:
            data = json.loads(path.read_text())
        except (OSError, json.JSONDecodeError) as e:
            raise CalibrationError(f"cannot read calibration cache {path} ({e}); delete it and "
                                   "calibrate again") from None
        return cls.from_json_dict(data)


#: what is calibrated: the tensors the plans may quantize (`trt_mpq.qdq.calibration_tensors`);
#: part of the cache key, so ranges cached under another selection are not reused
SELECTION = "plan-tensors/1"


def cache_key(model_digest: str, data_digest: str, config: CalibConfig) -> str:
    canon = json.dumps([model_digest, data_digest, config.to_json_dict(), SELECTION],
                       sort_keys=True)
    return hashlib.sha256(canon.encode()).hexdigest()[:16]


def _calibrator(model_path: Path, augmented: Path, config: CalibConfig,
                tensors: Collection[str] | None):
    """ONNX Runtime's calibrator for `config.method`, collecting only `tensors` (all float
    tensors when None): its `select_tensors_to_calibrate` hook, narrowed."""
    from onnxruntime.quantization.calibrate import (
        EntropyCalibrater,
        MinMaxCalibrater,
        PercentileCalibrater,
    )

    if config.method is CalibMethod.MINMAX:
        cls, kwargs = MinMaxCalibrater, {"symmetric": False}
    elif config.method is CalibMethod.PERCENTILE:
        cls, kwargs = PercentileCalibrater, {"symmetric": False, "num_bins": config.num_bins,
                                             "percentile": config.percentile}
    else:
        cls, kwargs = EntropyCalibrater, {"symmetric": False,
                                          "num_bins": min(config.num_bins, 512)}
    only = None if tensors is None else set(tensors)

    class Selected(cls):
        def select_tensors_to_calibrate(self, model):
            chosen, value_infos = super().select_tensors_to_calibrate(model)
            return (chosen if only is None else chosen & only), value_infos

    calibrator = Selected(Path(model_path), [], augmented_model_path=str(augmented), **kwargs)
    calibrator.augment_graph()
    calibrator.create_inference_session()
    return calibrator


def calibrate(model_path: Path, batches: list[dict[str, np.ndarray]], config: CalibConfig,
              cache_dir: Path | None = None, cache_tag: str | None = None,
              progress: bool | None = None, tensors: Collection[str] | None = None,
              required: Collection[str] | None = None) -> Ranges:
    """Collect activation ranges of `tensors` of `model_path` (every float tensor when None)
    over `batches`.

    A tensor the model fills with NaN or Inf on this data (an attention mask's -inf scores) gets
    no range, so nothing quantizes it: the glue ops around it stay float. If it is one of
    `required` (the inputs the quantizable layers read; every tensor when None), that is a
    `CalibrationError` naming it and saying whether the model's own outputs are finite (run,
    not assumed).

    With `cache_dir` and `cache_tag` (see `cache_key`), a previous result is loaded instead of
    recomputed, and a new result is stored.
    """
    cache_file = (cache_dir / "calibration" / f"{cache_tag}.json"
                  if cache_dir and cache_tag else None)
    if cache_file is not None and cache_file.exists():
        log.debug("calibration: reusing %s", cache_file)
        return Ranges.load(cache_file)
    if not batches:
        raise CalibrationError("the calibration split is empty; give the task calibration samples")
    try:
        found = _collect(model_path, batches, config, tensors, progress)
    except _HistogramNotFinite:
        # ONNX Runtime's histograms refuse an infinite value: find those tensors with min/max,
        # then collect the histograms of the others
        minmax = replace(config, method=CalibMethod.MINMAX)
        bounds = _collect(model_path, batches, minmax, tensors, progress)
        keep = {t for t, (lo, hi) in bounds.items() if np.isfinite(lo) and np.isfinite(hi)}
        bad = sorted(set(bounds) - keep)
        if not bad:
            raise CalibrationError("calibration: ONNX Runtime's histogram refused a range that "
                                   "min/max finds finite; use --calib-method minmax") from None
        found = {**_collect(model_path, batches, config, keep, progress),
                 **{t: bounds[t] for t in bad}}
    values: dict[str, tuple[float, float]] = {}
    skipped = []
    must = set(found) if required is None else set(required)
    for name, (lo, hi) in sorted(found.items()):
        if np.isfinite(lo) and np.isfinite(hi):
            values[name] = (lo, hi)
        elif name in must:
            raise _non_finite(model_path, batches, name, config)
        else:
            skipped.append(name)
    if skipped:
        log.info("calibration: %d tensor(s) hold NaN or Inf on the calibration data (e.g. %r, "
                 "an attention mask's -inf scores); the ops around them stay float",
                 len(skipped), skipped[0])
    n = sum(len(next(iter(b.values()))) for b in batches)
    ranges = Ranges(method=config.method, values=values, num_samples=n)
    if cache_file is not None:
        ranges.save(cache_file)
    return ranges


class _HistogramNotFinite(Exception):
    pass


def _collect(model_path: Path, batches: list[dict[str, np.ndarray]], config: CalibConfig,
             tensors: Collection[str] | None, progress: bool | None
             ) -> dict[str, tuple[float, float]]:
    """One calibration pass: {tensor: (lo, hi)}, NaN/Inf included as ONNX Runtime found them."""
    from onnxruntime.quantization.calibrate import CalibrationDataReader
    from tqdm.auto import tqdm

    class _Reader(CalibrationDataReader):
        def __init__(self, chunk: list[dict[str, np.ndarray]]):
            self._it = iter(chunk)

        def get_next(self):
            return next(self._it, None)

    n = sum(len(next(iter(b.values()))) for b in batches)
    with tempfile.TemporaryDirectory(prefix="trt-mpq-calib-") as tmp:
        try:
            calibrator = _calibrator(model_path, Path(tmp) / "augmented.onnx", config, tensors)
        except Exception as e:
            raise CalibrationError(f"ONNX Runtime could not prepare the model for calibration: "
                                   f"{e}") from None
        chunk = 4  # batches per collect call: bounds the memory of intermediate outputs
        with tqdm(total=n, desc=f"calibrate ({config.method.value})", unit="sample",
                  disable=None if progress is None else not progress, leave=False) as bar:
            for i in range(0, len(batches), chunk):
                part = batches[i:i + chunk]
                try:
                    calibrator.collect_data(_Reader(part))
                except ValueError as e:
                    if "finite" in str(e) and config.method is not CalibMethod.MINMAX:
                        raise _HistogramNotFinite() from None
                    raise CalibrationError(f"calibration failed: {e}") from None
                except Exception as e:
                    raise CalibrationError(f"calibration inference failed: {e}") from None
                bar.update(sum(len(next(iter(b.values()))) for b in part))
        try:
            data = calibrator.compute_data()
        except ValueError as e:
            if "finite" in str(e) and config.method is not CalibMethod.MINMAX:
                raise _HistogramNotFinite() from None
            raise CalibrationError(f"calibration failed: {e}") from None
    return {name: tuple(float(np.asarray(v).reshape(-1)[0]) for v in td.range_value)
            for name, td in data.data.items()}


def _non_finite(model_path: Path, batches: list[dict[str, np.ndarray]], tensor: str,
                config: CalibConfig) -> CalibrationError:
    """The error for a quantizable tensor holding NaN/Inf: which one, and whether the model's
    outputs are finite on the same data (run here, not assumed)."""
    import onnxruntime as ort

    try:
        sess = ort.InferenceSession(str(model_path), providers=["CPUExecutionProvider"])
        finite = all(np.all(np.isfinite(o)) for b in batches for o in sess.run(None, b)
                     if np.issubdtype(np.asarray(o).dtype, np.floating))
        outputs = ("the model's outputs are finite on the same data, so a layer's input holds "
                   "NaN/Inf inside the model" if finite else
                   "the model's outputs also hold NaN or Inf on this data: check the "
                   "calibration split's preprocessing")
    except Exception as e:  # noqa: BLE001 - the diagnosis must not hide the finding
        outputs = f"the model's outputs could not be checked ({e})"
    return CalibrationError(
        f"calibration ({config.method.value}): tensor {tensor!r}, which quantized layers read, "
        f"holds NaN or Inf; {outputs}. Quantizing it cannot work: make it finite (the model's "
        "preprocessing or data), or keep those layers float")
