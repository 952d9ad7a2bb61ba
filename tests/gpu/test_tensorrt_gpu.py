"""GPU-only checks (marked `gpu`: skipped without an NVIDIA GPU). They use whichever TensorRT is
installed (`tensorrt` first, then `tensorrt-rtx`). benchmarks/gpu_check.sh runs them and more on a
lent H100/H200 and records what it found (benchmarks/RESULTS.md)."""

import importlib.util
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import models
import numpy as np
import pytest
from conftest import run_ort

from trt_mpq.plan import Plan
from trt_mpq.plan import Precision as P
from trt_mpq.qdq import materialize

pytestmark = pytest.mark.gpu


def _flavor() -> str:
    for flavor, module in (("tensorrt", "tensorrt"), ("tensorrt-rtx", "tensorrt_rtx")):
        if importlib.util.find_spec(module):
            return flavor
    pytest.skip("no TensorRT module installed")


@pytest.fixture(scope="module")
def backend():
    from trt_mpq.backends import get_backend
    from trt_mpq.errors import ConfigError

    try:
        b = get_backend(_flavor())
        b.check_can_run()
    except ConfigError as e:
        pytest.skip(str(e))
    return b


def test_event_timer_agrees_with_torch_events():
    torch = pytest.importorskip("torch")
    if not torch.cuda.is_available():
        pytest.skip("torch sees no GPU")
    from trt_mpq.backends.tensorrt.runner import EventTimer

    a = torch.randn(4096, 4096, device="cuda", dtype=torch.float16)
    stream = torch.cuda.current_stream()
    timer = EventTimer(stream.cuda_stream)
    for _ in range(5):
        a @ a
    ours, theirs = [], []
    for _ in range(20):
        ours.append(timer.time(lambda: a @ a))
        s, e = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        s.record(stream)
        a @ a
        e.record(stream)
        e.synchronize()
        theirs.append(s.elapsed_time(e) / 1e3)
    timer.close()
    assert np.median(ours) == pytest.approx(np.median(theirs), rel=0.1)


def test_engine_outputs_match_the_graph_and_time(backend, prepared_cnn, cnn_ranges, tmp_path):
    _, model, groups = prepared_cnn
    x = models.cnn_inputs(8)
    for precision in (P.FP16, P.INT8):
        plan = Plan.uniform([g.name for g in groups], precision)
        graph = materialize(model, groups, plan, cnn_ranges, backend.dialect)
        a = backend.build(graph, tmp_path / precision.value, groups, {"input": x[:1]}, max_batch=8)
        assert a.census.mismatches(plan) == []
        ref = run_ort(graph, {"input": x})[0]
        with backend.open(a) as runner:
            out = runner.run({"input": x})[runner.output_names[0]]
            np.testing.assert_allclose(out, ref, rtol=0.05, atol=0.05)
            t0 = time.perf_counter()
            took = runner.time_once({"input": x[:1]})
            assert 0 < took <= time.perf_counter() - t0 + 1e-4  # seconds, of this one run
        from trt_mpq.backends.tensorrt import TensorRTBackend, TrtConfig

        graphs = TensorRTBackend(backend.flavor, TrtConfig(cuda_graph=True))
        with graphs.open(a) as runner:
            t0 = time.perf_counter()
            took = runner.time_once({"input": x[:1]})
            assert 0 < took <= time.perf_counter() - t0 + 1e-4


def test_search_end_to_end(backend, digits_model, tmp_path, cache_dir):
    fixtures = Path(__file__).parents[1] / "fixtures"
    env = dict(os.environ, TRT_MPQ_CACHE=str(cache_dir),
               PYTHONPATH=os.pathsep.join([str(fixtures), os.environ.get("PYTHONPATH", "")]))
    out = tmp_path / "out"
    r = subprocess.run([sys.executable, "-m", "trt_mpq", "search", str(digits_model), "--task",
                        "digits_task:make_task", "--backend", backend.flavor, "--max-drop", "1%",
                        "--out", str(out), "--repeats", "30", "--no-progress"],
                       env=env, capture_output=True, text=True)
    res = json.loads((out / "result.json").read_text())
    assert r.returncode == (0 if res["budget_met"] else 1), r.stderr
    assert "Traceback" not in r.stderr
    assert res["backend"] == backend.flavor and res["baseline"]["precision"] == "fp16"
    if res["budget_met"]:
        sidecar = json.loads((out / "model.engine.json").read_text())
        assert sidecar["plan"] and sidecar["latency"]["median_ms"] > 0
        assert sidecar["gpu_at_build"]["name"]
