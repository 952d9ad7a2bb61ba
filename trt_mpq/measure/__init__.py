"""Measurement: latency (interleaved with the baseline, in one process) and task accuracy."""

from trt_mpq.measure.accuracy import compute_outputs
from trt_mpq.measure.latency import LatencyStats, MeasureConfig, measure_interleaved

__all__ = ["LatencyStats", "MeasureConfig", "measure_interleaved", "compute_outputs"]
