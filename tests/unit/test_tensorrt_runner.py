"""CUDA-graph timing as NVIDIA's tools do it, against a fake CUDA runtime: capture in
thread-local mode, and a failed enqueue during capture ends the capture, clears the error it
left and falls back to plain enqueues (the real thing runs in benchmarks/gpu_check.py)."""

import types

import pytest

from trt_mpq.backends.tensorrt.runner import GraphLauncher
from trt_mpq.errors import MeasurementError

OK = types.SimpleNamespace(value=0)
FAILED = types.SimpleNamespace(value=901)  # cudaErrorStreamCaptureInvalidated


class FakeRuntime:
    cudaStreamCaptureMode = types.SimpleNamespace(cudaStreamCaptureModeGlobal="global",
                                                  cudaStreamCaptureModeThreadLocal="thread-local")

    def __init__(self, end_capture=OK, instantiate=OK):
        self.calls: list = []
        self.capturing = False
        self._end, self._instantiate = end_capture, instantiate

    def cudaStreamSynchronize(self, stream):
        self.calls.append("sync")
        return (OK,)

    def cudaStreamBeginCapture(self, stream, mode):
        self.calls.append(("begin", mode))
        self.capturing = True
        return (OK,)

    def cudaStreamEndCapture(self, stream):
        self.calls.append("end")
        self.capturing = False
        return (self._end, "graph")

    def cudaGraphInstantiate(self, graph, flags):
        self.calls.append("instantiate")
        return (self._instantiate, "exec")

    def cudaGraphLaunch(self, graph_exec, stream):
        self.calls.append("launch")
        return (OK,)

    def cudaGraphDestroy(self, graph):
        self.calls.append("destroy")
        return (OK,)

    def cudaGraphExecDestroy(self, graph_exec):
        self.calls.append("destroy-exec")
        return (OK,)

    def cudaGetLastError(self):
        self.calls.append("clear-error")
        return (OK,)


def enqueuer(rt, during_capture=True, raises=False):
    def enqueue():
        rt.calls.append("enqueue" + (" (captured)" if rt.capturing else ""))
        if rt.capturing and raises:
            raise RuntimeError("operation not permitted when stream is capturing")
        return True if not rt.capturing else during_capture
    return enqueue


def test_captures_once_in_thread_local_mode_then_replays():
    rt = FakeRuntime()
    g = GraphLauncher(rt, "stream", enqueuer(rt))
    for _ in range(3):
        g.launch()
    assert rt.calls == ["enqueue", "sync", ("begin", "thread-local"), "enqueue (captured)", "end",
                        "instantiate", "launch", "launch", "launch"]
    assert g.use_graph and not g.fallback_reason
    g.reset()
    assert rt.calls[-2:] == ["destroy-exec", "destroy"]


@pytest.mark.parametrize("case", ["enqueue-false", "enqueue-raises", "end-capture-fails",
                                  "instantiate-fails"])
def test_a_failed_capture_ends_the_capture_and_falls_back(case):
    rt = FakeRuntime(end_capture=FAILED if case == "end-capture-fails" else OK,
                     instantiate=FAILED if case == "instantiate-fails" else OK)
    g = GraphLauncher(rt, "stream", enqueuer(rt, during_capture=case != "enqueue-false",
                                             raises=case == "enqueue-raises"))
    g.launch()  # the capture fails; this launch is a plain enqueue
    g.launch()
    assert not rt.capturing  # the stream is never left capturing
    assert "end" in rt.calls and "clear-error" in rt.calls and "launch" not in rt.calls
    assert rt.calls[-2:] == ["enqueue", "enqueue"]
    assert not g.use_graph and g.fallback_reason


def test_plain_enqueues_raise_on_failure():
    rt = FakeRuntime()
    g = GraphLauncher(rt, "stream", lambda: False, use_graph=False)
    with pytest.raises(MeasurementError, match="execute_async_v3 failed"):
        g.launch()
