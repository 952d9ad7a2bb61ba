"""GPU check (run by gpu_check.sh on a lent H100/H200; writes $OUT/gpu_check.json and .md).

1. The GPU, driver and clocks (read only; nothing is changed).
2. Whether TensorRT-RTX engines built on a CPU machine for SM80/86/89/120 load and run here,
   and if so: their outputs against ONNX Runtime's for the same graph, and their latency with
   our harness (CUDA events around execute_async_v3, and CUDA-graph replay), FP16 vs INT8
   interleaved.
3. Whether TensorRT-RTX builds for this GPU itself (compute capability "current").
4. Our CUDA-event timer against torch.cuda.Event on a known kernel (fp16 GEMM).
"""

from __future__ import annotations

import json
import os
import platform
import sys
import time
import traceback
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
OUT = Path(os.environ.get("OUT", "gpu_check_out"))
ENGINES = Path(os.environ.get("GPU_ENGINES", ROOT / ".gpu" / "engines"))
results: dict = {"started": time.strftime("%Y-%m-%d %H:%M:%S"), "python": platform.python_version()}


def step(name):
    def wrap(fn):
        t0 = time.perf_counter()
        try:
            results[name] = fn()
        except Exception as e:  # record and go on: every step is independent
            results[name] = {"error": f"{type(e).__name__}: {e}",
                             "traceback": traceback.format_exc()[-2000:]}
        results.setdefault("seconds", {})[name] = round(time.perf_counter() - t0, 2)
        print(f"[{name}] {json.dumps(results[name], default=str)[:600]}", flush=True)
        return fn
    return wrap


@step("gpu")
def _gpu():
    from trt_mpq.backends.tensorrt.gpu import gpu_info

    info = gpu_info()
    try:
        import cuda.bindings

        info["cuda_bindings"] = cuda.bindings.__version__
    except Exception:
        pass
    try:
        import torch

        info["torch"] = torch.__version__
    except Exception:
        pass
    return info


@step("tensorrt_rtx")
def _trt():
    import tensorrt_rtx as trt

    return {"version": trt.__version__}


def _load_and_run(trt, entry):
    from trt_mpq.backends.tensorrt.runner import TrtRunner
    from trt_mpq.measure.latency import MeasureConfig, measure_interleaved

    model, precision = entry["model"], entry["precision"]
    feed = dict(np.load(ENGINES / f"{model}.inputs.npz"))
    ref = np.load(ENGINES / f"{model}.{precision}.reference.npy")
    runner = TrtRunner(trt, (ENGINES / entry["engine"]).read_bytes())
    out = runner.run(feed)[runner.output_names[0]]
    row = {"loads": True, "max_abs_diff_vs_ort": float(np.abs(out - ref).max()),
           "top1_agreement_vs_ort": float(np.mean(out.argmax(-1) == ref.argmax(-1)))}
    one = {k: v[:1] for k, v in feed.items()}
    stats = measure_interleaved([runner], one, MeasureConfig(warmup=20, repeats=200))[0]
    row["latency_ms"] = stats.to_json_dict()
    graph_runner = TrtRunner(trt, (ENGINES / entry["engine"]).read_bytes(), cuda_graph=True)
    gstats = measure_interleaved([graph_runner], one, MeasureConfig(warmup=20, repeats=200))[0]
    row["latency_cuda_graph_ms"] = gstats.to_json_dict()
    return row, runner, graph_runner


@step("aot_engines")
def _engines():
    import tensorrt_rtx as trt

    index = json.loads((ENGINES / "index.json").read_text())
    rows, runners = [], {}
    for entry in index:
        if not (ENGINES / entry["engine"]).exists():
            continue
        row = dict(entry)
        try:
            extra, runner, graph_runner = _load_and_run(trt, entry)
            row.update(extra)
            runners[(entry["model"], entry["target"], entry["precision"])] = runner
            graph_runner.close()
        except Exception as e:
            row.update(loads=False, error=f"{type(e).__name__}: {str(e)[:400]}")
        rows.append(row)
    # FP16 vs INT8 interleaved, where both load
    from trt_mpq.measure.latency import MeasureConfig, measure_interleaved

    ratios = []
    for (model, target, precision), runner in runners.items():
        if precision != "int8" or (model, target, "fp16") not in runners:
            continue
        feed = {k: v[:1] for k, v in np.load(ENGINES / f"{model}.inputs.npz").items()}
        i8, f16 = measure_interleaved([runner, runners[(model, target, "fp16")]], feed,
                                      MeasureConfig(warmup=20, repeats=300))
        ratios.append({"model": model, "target": target, "fp16_ms": f16.median_ms,
                       "int8_ms": i8.median_ms, "int8_over_fp16": i8.median_ms / f16.median_ms})
    for r in runners.values():
        r.close()
    return {"engines": rows, "int8_vs_fp16": ratios}


@step("build_here")
def _build_here():
    """TensorRT-RTX building for this GPU itself (no compute capability given = current)."""
    import onnx

    from trt_mpq.backends.tensorrt import TensorRTBackend, TrtConfig
    from trt_mpq.model.groups import find_groups

    out = {}
    for precision in ("fp16", "int8"):
        path = ENGINES / f"tiny_cnn.{precision}.onnx"
        model = onnx.load(str(path))
        try:
            backend = TensorRTBackend("tensorrt-rtx", TrtConfig(timing_cache=False))
            feed = {k: v[:1] for k, v in np.load(ENGINES / "tiny_cnn.inputs.npz").items()}
            a = backend.build(model, OUT / f"built_{precision}", find_groups(model), feed,
                              max_batch=8)
            out[precision] = {"built": True, "census": a.census.to_json_dict()}
        except Exception as e:
            out[precision] = {"built": False, "error": f"{type(e).__name__}: {str(e)[:600]}"}
    return out


@step("timer_validation")
def _timer():
    import torch

    from trt_mpq.backends.tensorrt.runner import EventTimer

    a = torch.randn(4096, 4096, device="cuda", dtype=torch.float16)
    stream = torch.cuda.current_stream()
    timer = EventTimer(stream.cuda_stream)
    for _ in range(10):
        a @ a
    ours, theirs = [], []
    for _ in range(50):
        ours.append(timer.time(lambda: a @ a))
        s, e = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        s.record(stream)
        a @ a
        e.record(stream)
        e.synchronize()
        theirs.append(s.elapsed_time(e) / 1e3)
    timer.close()
    mo, mt = float(np.median(ours)) * 1e3, float(np.median(theirs)) * 1e3
    return {"kernel": "fp16 GEMM 4096^3 (torch)", "ours_median_ms": mo, "torch_median_ms": mt,
            "ratio": mo / mt, "tflops_ours": 2 * 4096**3 / (mo / 1e3) / 1e12}


def markdown(r: dict) -> str:
    gpu = r.get("gpu") or {}
    lines = [f"GPU check on {gpu.get('name', '?')} ({gpu.get('sm', '?')}), driver "
             f"{gpu.get('driver_version', '?')}, SM clock {gpu.get('clocks.sm', '?')} "
             f"(max {gpu.get('clocks.max.sm', '?')}), power limit {gpu.get('power.limit', '?')}; "
             f"TensorRT-RTX {r.get('tensorrt_rtx', {}).get('version', '?')}, "
             f"Python {r['python']}, {r['started']}.", ""]
    eng = r.get("aot_engines", {})
    if "engines" in eng:
        lines += ["| engine (built on CPU) | loads here | max |diff| vs ORT | latency median ms "
                  "(CUDA graph) |", "|---|---|---|---|"]
        for e in eng["engines"]:
            if e.get("loads"):
                lines.append(f"| {e['engine']} | yes | {e['max_abs_diff_vs_ort']:.3g} | "
                             f"{e['latency_ms']['median_ms']:.4f} "
                             f"({e['latency_cuda_graph_ms']['median_ms']:.4f}) |")
            else:
                lines.append(f"| {e['engine']} | **no**: {e.get('error', '')[:160]} | | |")
        for q in eng.get("int8_vs_fp16", []):
            lines.append(f"\n{q['model']} ({q['target']} engine): int8 {q['int8_ms']:.4f} ms vs "
                         f"fp16 {q['fp16_ms']:.4f} ms interleaved, ratio {q['int8_over_fp16']:.3f}")
    elif "error" in eng:
        lines.append(f"AOT engines: {eng['error']}")
    b = r.get("build_here", {})
    for p, v in b.items() if isinstance(b, dict) else []:
        if isinstance(v, dict):
            lines.append(f"\nBuilding on this GPU ({p}): "
                         + ("built" if v.get("built") else f"failed: {v.get('error', '')[:300]}"))
    t = r.get("timer_validation", {})
    if "ratio" in t:
        lines.append(f"\nTimer validation ({t['kernel']}): our CUDA events {t['ours_median_ms']:.4f}"
                     f" ms vs torch.cuda.Event {t['torch_median_ms']:.4f} ms (ratio "
                     f"{t['ratio']:.3f}; {t['tflops_ours']:.0f} TFLOP/s)")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    OUT.mkdir(parents=True, exist_ok=True)
    (OUT / "gpu_check.json").write_text(json.dumps(results, indent=2, default=str))
    (OUT / "gpu_check.md").write_text(markdown(results))
    print(markdown(results))
