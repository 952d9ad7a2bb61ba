"""Running and timing a TensorRT engine on the GPU (needs one; never imported otherwise).

One execution context, device buffers allocated once for the largest shape seen, inputs copied
before timing. `time_once` records CUDA events on the stream immediately around
`execute_async_v3` (or around the launch of a CUDA graph captured from it, `GraphLauncher`), so
host copies, Python overhead and synchronization are outside the measured interval. The timed
context has NVTX annotations off. Clocks and power settings are never changed.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping

import numpy as np

from trt_mpq.backends.base import Runner
from trt_mpq.backends.tensorrt.gpu import check, cudart
from trt_mpq.errors import BuildError, MeasurementError

log = logging.getLogger(__name__)


class EventTimer:
    """Elapsed GPU time between two CUDA events recorded on `stream` around `fn()`."""

    def __init__(self, stream) -> None:
        rt = cudart()
        self._rt = rt
        # a raw handle (e.g. torch's `stream.cuda_stream`) or a cuda-python cudaStream_t
        self.stream = rt.cudaStream_t(stream) if isinstance(stream, int) else stream
        self.start = check(rt.cudaEventCreate())
        self.end = check(rt.cudaEventCreate())

    def time(self, fn) -> float:
        rt = self._rt
        check(rt.cudaEventRecord(self.start, self.stream))
        fn()
        check(rt.cudaEventRecord(self.end, self.stream))
        check(rt.cudaEventSynchronize(self.end))
        return check(rt.cudaEventElapsedTime(self.start, self.end)) / 1e3

    def close(self) -> None:
        for ev in (self.start, self.end):
            self._rt.cudaEventDestroy(ev)


class GraphLauncher:
    """Launches `enqueue` on `stream`, or a CUDA graph captured from it, as trtexec does: one
    plain run first (TensorRT may allocate on its first enqueue), then capture in thread-local
    mode (other threads' CUDA calls are not disturbed). If the enqueue fails or raises during
    capture, the capture is still ended, the error it left is cleared, and every later launch
    is a plain enqueue (`fallback_reason` says why). `enqueue()` returns False on failure."""

    def __init__(self, rt, stream, enqueue, use_graph: bool = True) -> None:
        self._rt = rt
        self.stream = stream
        self._enqueue = enqueue
        self.use_graph = use_graph
        self.fallback_reason = ""
        self._graph = None
        self._exec = None

    def enqueue(self) -> None:
        """One plain enqueue; `MeasurementError` if it fails."""
        if not self._enqueue():
            raise MeasurementError("execute_async_v3 failed")

    def launch(self) -> None:
        if self.use_graph and self._exec is None:
            self._capture()
        if self._exec is not None:
            check(self._rt.cudaGraphLaunch(self._exec, self.stream))
        else:
            self.enqueue()

    def _capture(self) -> None:
        rt = self._rt
        self.enqueue()
        check(rt.cudaStreamSynchronize(self.stream))
        mode = rt.cudaStreamCaptureMode.cudaStreamCaptureModeThreadLocal
        check(rt.cudaStreamBeginCapture(self.stream, mode))
        reason = ""
        try:
            if not self._enqueue():
                reason = "execute_async_v3 failed during capture"
        except Exception as e:  # noqa: BLE001 - TensorRT refusing to be captured: fall back
            reason = f"enqueue raised during capture: {type(e).__name__}: {e}"
        err, graph = rt.cudaStreamEndCapture(self.stream)
        if not reason and getattr(err, "value", err) != 0:
            reason = f"cudaStreamEndCapture failed ({err})"
        if not reason:
            err, graph_exec = rt.cudaGraphInstantiate(graph, 0)
            if getattr(err, "value", err) == 0:
                self._graph, self._exec = graph, graph_exec
                return
            reason = f"cudaGraphInstantiate failed ({err})"
        if graph is not None:
            rt.cudaGraphDestroy(graph)
        rt.cudaGetLastError()  # clear the sticky error a failed capture leaves
        self.use_graph = False
        self.fallback_reason = reason
        log.warning("CUDA graph capture failed (%s); timing plain enqueues instead", reason)

    def reset(self) -> None:
        """Forget the graph (buffers or shapes changed); the next launch captures again."""
        if self._exec is not None:
            self._rt.cudaGraphExecDestroy(self._exec)
            self._rt.cudaGraphDestroy(self._graph)
        self._graph = self._exec = None


class TrtRunner(Runner):
    def __init__(self, trt, engine_bytes: bytes, cuda_graph: bool = False) -> None:
        self.trt = trt
        rt = cudart()
        self._rt = rt
        from trt_mpq.backends.tensorrt.logger import _Logger

        self._logger = _Logger(trt)
        self._runtime = trt.Runtime(self._logger)
        self.engine = self._runtime.deserialize_cuda_engine(engine_bytes)
        if self.engine is None:
            errs = self._logger.errors() or ["(no message)"]
            raise BuildError(f"this GPU cannot load the engine: {errs[-1][:400]}")
        self.context = self.engine.create_execution_context()
        if self.context is None:
            raise BuildError("could not create an execution context for the engine")
        # engines are built with DETAILED profiling verbosity (for the layer census); NVIDIA
        # documents that it raises enqueueV3 latency, so the timed context runs without NVTX
        self.context.nvtx_verbosity = trt.ProfilingVerbosity.NONE
        names = [self.engine.get_tensor_name(i) for i in range(self.engine.num_io_tensors)]
        is_input = {n: self.engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT for n in names}
        self.input_names = tuple(n for n in names if is_input[n])
        self.output_names = tuple(n for n in names if not is_input[n])
        self._dtype = {n: np.dtype(trt.nptype(self.engine.get_tensor_dtype(n))) for n in names}
        self.stream = check(rt.cudaStreamCreate())
        self._buffers: dict[str, tuple[int, int]] = {}  # name -> (device pointer, bytes)
        self._bound: tuple | None = None  # (shapes, id of the host arrays) last copied
        self._timer = EventTimer(self.stream)
        self.graphs = GraphLauncher(rt, self.stream,
                                    lambda: self.context.execute_async_v3(int(self.stream)),
                                    use_graph=cuda_graph)

    # -- buffers --------------------------------------------------------------------------------
    def _buffer(self, name: str, nbytes: int) -> int:
        ptr, size = self._buffers.get(name, (0, 0))
        if nbytes > size:
            if ptr:
                check(self._rt.cudaFree(ptr))
            ptr = check(self._rt.cudaMalloc(max(nbytes, 1)))
            self._buffers[name] = (ptr, nbytes)
            self.graphs.reset()
        return ptr

    def _bind(self, feed: Mapping[str, np.ndarray],
              force: bool = False) -> dict[str, tuple[int, ...]]:
        """Set shapes and addresses and copy the inputs to the device; `time_once` skips the
        copy when it is handed the same arrays again (`run` always copies)."""
        rt = self._rt
        key = tuple((n, tuple(np.shape(feed[n])), id(feed[n])) for n in self.input_names)
        if self._bound == key and not force:
            return {n: tuple(self.context.get_tensor_shape(n)) for n in self.output_names}
        for n in self.input_names:
            if n not in feed:
                raise MeasurementError(f"the engine needs input {n!r}")
            arr = np.ascontiguousarray(feed[n], dtype=self._dtype[n])
            if not self.context.set_input_shape(n, arr.shape):
                raise MeasurementError(f"input {n!r} of shape {arr.shape} is outside the "
                                       "engine's optimization profile")
            ptr = self._buffer(n, arr.nbytes)
            check(rt.cudaMemcpyAsync(ptr, arr.ctypes.data, arr.nbytes,
                                     rt.cudaMemcpyKind.cudaMemcpyHostToDevice, self.stream))
            self.context.set_tensor_address(n, ptr)
        shapes = {}
        for n in self.output_names:
            shape = tuple(self.context.get_tensor_shape(n))
            nbytes = int(np.prod(shape)) * self._dtype[n].itemsize
            self.context.set_tensor_address(n, self._buffer(n, nbytes))
            shapes[n] = shape
        check(rt.cudaStreamSynchronize(self.stream))
        if self._bound is not None and self._bound != key:
            self.graphs.reset()
        self._bound = key
        return shapes

    # -- execution ------------------------------------------------------------------------------
    def run(self, feed: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        rt = self._rt
        shapes = self._bind(feed, force=True)
        self.graphs.enqueue()
        out = {}
        for n, shape in shapes.items():
            host = np.empty(shape, dtype=self._dtype[n])
            check(rt.cudaMemcpyAsync(host.ctypes.data, self._buffers[n][0], host.nbytes,
                                     rt.cudaMemcpyKind.cudaMemcpyDeviceToHost, self.stream))
            out[n] = host
        check(rt.cudaStreamSynchronize(self.stream))
        return {n: (v.astype(np.float32) if v.dtype == np.float16 else v) for n, v in out.items()}

    def time_once(self, feed: Mapping[str, np.ndarray]) -> float:
        self._bind(feed)
        return self._timer.time(self.graphs.launch)

    def close(self) -> None:
        if getattr(self, "_rt", None) is None:
            return
        self.graphs.reset()
        self._timer.close()
        for ptr, _ in self._buffers.values():
            self._rt.cudaFree(ptr)
        self._buffers.clear()
        self._rt.cudaStreamDestroy(self.stream)
        self.context = None
        self.engine = None
        self._rt = None
