"""Running and timing a TensorRT engine on the GPU (needs one; never imported otherwise).

One execution context, device buffers allocated once for the largest shape seen, inputs copied
before timing. `time_once` records CUDA events on the stream immediately around
`execute_async_v3` (or around the launch of a CUDA graph captured from it), so host copies,
Python overhead and synchronization are outside the measured interval. Clocks and power settings
are never changed.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

from trt_mpq.backends.base import Runner
from trt_mpq.backends.tensorrt.gpu import check, cudart
from trt_mpq.errors import BuildError, MeasurementError


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


class TrtRunner(Runner):
    def __init__(self, trt, engine_bytes: bytes, cuda_graph: bool = False) -> None:
        self.trt = trt
        rt = cudart()
        self._rt = rt
        from trt_mpq.backends.tensorrt import _Logger

        self._logger = _Logger(trt)
        self._runtime = trt.Runtime(self._logger)
        self.engine = self._runtime.deserialize_cuda_engine(engine_bytes)
        if self.engine is None:
            errs = self._logger.errors() or ["(no message)"]
            raise BuildError(f"this GPU cannot load the engine: {errs[-1][:400]}")
        self.context = self.engine.create_execution_context()
        if self.context is None:
            raise BuildError("could not create an execution context for the engine")
        names = [self.engine.get_tensor_name(i) for i in range(self.engine.num_io_tensors)]
        is_input = {n: self.engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT for n in names}
        self.input_names = tuple(n for n in names if is_input[n])
        self.output_names = tuple(n for n in names if not is_input[n])
        self._dtype = {n: np.dtype(trt.nptype(self.engine.get_tensor_dtype(n))) for n in names}
        self.stream = check(rt.cudaStreamCreate())
        self._buffers: dict[str, tuple[int, int]] = {}  # name -> (device pointer, bytes)
        self._bound: tuple | None = None  # (shapes, id of the host arrays) last copied
        self._timer = EventTimer(self.stream)
        self._use_graph = cuda_graph
        self._graph = None
        self._graph_exec = None

    # -- buffers --------------------------------------------------------------------------------
    def _buffer(self, name: str, nbytes: int) -> int:
        ptr, size = self._buffers.get(name, (0, 0))
        if nbytes > size:
            if ptr:
                check(self._rt.cudaFree(ptr))
            ptr = check(self._rt.cudaMalloc(max(nbytes, 1)))
            self._buffers[name] = (ptr, nbytes)
            self._drop_graph()
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
            self._drop_graph()
        self._bound = key
        return shapes

    # -- execution ------------------------------------------------------------------------------
    def _enqueue(self) -> None:
        if not self.context.execute_async_v3(int(self.stream)):
            raise MeasurementError("execute_async_v3 failed")

    def _launch(self) -> None:
        if self._use_graph:
            if self._graph_exec is None:
                self._capture()
            check(self._rt.cudaGraphLaunch(self._graph_exec, self.stream))
        else:
            self._enqueue()

    def _capture(self) -> None:
        rt = self._rt
        self._enqueue()  # one plain run first: TensorRT may allocate on the first enqueue
        check(rt.cudaStreamSynchronize(self.stream))
        check(rt.cudaStreamBeginCapture(self.stream,
                                        rt.cudaStreamCaptureMode.cudaStreamCaptureModeGlobal))
        self._enqueue()
        self._graph = check(rt.cudaStreamEndCapture(self.stream))
        self._graph_exec = check(rt.cudaGraphInstantiate(self._graph, 0))

    def _drop_graph(self) -> None:
        if self._graph_exec is not None:
            self._rt.cudaGraphExecDestroy(self._graph_exec)
            self._rt.cudaGraphDestroy(self._graph)
        self._graph = self._graph_exec = None

    def run(self, feed: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        rt = self._rt
        shapes = self._bind(feed, force=True)
        self._enqueue()
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
        return self._timer.time(self._launch)

    def close(self) -> None:
        if getattr(self, "_rt", None) is None:
            return
        self._drop_graph()
        self._timer.close()
        for ptr, _ in self._buffers.values():
            self._rt.cudaFree(ptr)
        self._buffers.clear()
        self._rt.cudaStreamDestroy(self.stream)
        self.context = None
        self.engine = None
        self._rt = None
