"""GPU check (run by gpu_check.sh on a lent H100/H200; writes $OUT/gpu_check.json and .md).

1. The GPU, driver and clocks (read only; nothing is changed).
2. Whether TensorRT-RTX engines built on a CPU machine for SM80/86/89/120 load and run here,
   and if so: their outputs against ONNX Runtime's for the same graph, and their latency with
   our harness (CUDA events around execute_async_v3, and CUDA-graph replay), FP16 vs INT8
   interleaved.
3. Whether TensorRT-RTX builds for this GPU itself (compute capability "current").
4. Our CUDA-event timer against torch.cuda.Event on a known kernel (fp16 GEMM).
5. Our CUDA-graph launcher (the one TrtRunner times with) on real kernels: capture in
   thread-local mode and replay; a capture that fails (an enqueue that reports failure, one
   that raises, one that does something illegal while capturing) falls back to plain enqueues
   and leaves the stream usable.
6. Whether `--backend tensorrt-rtx` accepts this GPU for measuring (it must refuse where
   TensorRT-RTX does not run: SM 9.0), and `--backend tensorrt` (TensorRT is not installed on
   the lent machines: the check says so).
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
    """TensorRT-RTX building for this GPU itself (no compute capability given = current), then
    running the engines: outputs against ONNX Runtime, FP16 vs INT8 latency interleaved, with
    and without CUDA-graph replay."""
    import onnx

    from trt_mpq.backends.tensorrt import TensorRTBackend, TrtConfig
    from trt_mpq.measure.latency import MeasureConfig, measure_interleaved
    from trt_mpq.model.groups import find_groups
    from trt_mpq.plan import Plan

    out = {}
    for model_name in ("tiny_cnn", "mobilenet_v2"):
        if not (ENGINES / f"{model_name}.prepared.onnx").exists():
            continue
        groups = find_groups(onnx.load(str(ENGINES / f"{model_name}.prepared.onnx")))
        feed = dict(np.load(ENGINES / f"{model_name}.inputs.npz"))
        one = {k: v[:1] for k, v in feed.items()}
        rows, runners = {}, {}
        for precision in ("fp16", "int8"):
            graph = onnx.load(str(ENGINES / f"{model_name}.{precision}.onnx"))
            plan = Plan.from_json_dict({"groups": {g.name: precision for g in groups}})
            row = {}
            try:
                backend = TensorRTBackend("tensorrt-rtx", TrtConfig(timing_cache=False))
                a = backend.build(graph, OUT / f"{model_name}_{precision}", groups, one,
                                  max_batch=8)
                row.update(built=True, build_s=a.build_s,
                           census_matches_plan=not a.census.mismatches(plan),
                           mismatches=a.census.mismatches(plan)[:5],
                           kernels=dict(a.census.kernels))
                runner = backend.open(a)
                got = runner.run(feed)[runner.output_names[0]]
                ref = np.load(ENGINES / f"{model_name}.{precision}.reference.npy")
                row.update(max_abs_diff_vs_ort=float(np.abs(got - ref).max()),
                           top1_agreement_vs_ort=float(np.mean(got.argmax(-1) == ref.argmax(-1))))
                runners[precision] = runner
                (OUT / f"{model_name}_{precision}" / "model.engine").unlink()
            except Exception as e:
                row.update(built=row.get("built", False),
                           error=f"{type(e).__name__}: {str(e)[:600]}")
            rows[precision] = row
        if len(runners) == 2:
            cfg = MeasureConfig(warmup=50, repeats=500, max_seconds=60)
            i8, f16 = measure_interleaved([runners["int8"], runners["fp16"]], one, cfg)
            rows["timing"] = {"fp16": f16.to_json_dict(), "int8": i8.to_json_dict(),
                              "int8_over_fp16": i8.median_ms / f16.median_ms}
            for r in runners.values():
                r.graphs.use_graph = True  # same engines, CUDA-graph replay
            gi8, gf16 = measure_interleaved([runners["int8"], runners["fp16"]], one, cfg)
            rows["timing_cuda_graph"] = {"fp16": gf16.to_json_dict(), "int8": gi8.to_json_dict(),
                                         "int8_over_fp16": gi8.median_ms / gf16.median_ms}
        for r in runners.values():
            r.close()
        out[model_name] = rows
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


@step("backends_here")
def _backends_here():
    """What each TensorRT backend says about measuring on this GPU."""
    from trt_mpq.backends import get_backend
    from trt_mpq.errors import ConfigError

    out = {}
    for name in ("tensorrt-rtx", "tensorrt"):
        try:
            backend = get_backend(name)
            backend.check_can_run()
            out[name] = {"can_measure": True, "version": backend.version}
        except ConfigError as e:
            out[name] = {"can_measure": False, "why": str(e)}
    return out


@step("cuda_graph_capture")
def _graph_capture():
    """GraphLauncher on torch kernels enqueued on a cuda-python stream (torch.cuda.ExternalStream):
    the same capture / replay / fallback code TrtRunner uses around execute_async_v3."""
    import torch

    from trt_mpq.backends.tensorrt.gpu import check, cudart
    from trt_mpq.backends.tensorrt.runner import EventTimer, GraphLauncher

    rt = cudart()
    stream = check(rt.cudaStreamCreate())
    ext = torch.cuda.ExternalStream(int(stream))
    a = torch.randn(2048, 2048, device="cuda", dtype=torch.float16)
    c = torch.empty_like(a)
    want = a @ a
    torch.cuda.synchronize()
    calls = {"n": 0}

    def mm(during_capture: str = "ok"):
        def enqueue():
            calls["n"] += 1
            capturing = calls["n"] == 2  # GraphLauncher: one plain run, then the capture
            with torch.cuda.stream(ext):
                torch.mm(a, a, out=c)
                if capturing and during_capture == "illegal":
                    c.sum().item()  # a device-to-host sync is not allowed while capturing
            if capturing and during_capture == "raise":
                raise RuntimeError("enqueue refused during capture")
            return not (capturing and during_capture == "false")
        return enqueue

    def correct() -> bool:
        check(rt.cudaStreamSynchronize(stream))
        ok = bool(torch.allclose(c, want, rtol=1e-2, atol=1e-1))
        c.zero_()
        torch.cuda.synchronize()
        return ok

    timer = EventTimer(stream)
    out = {}
    for mode in ("ok", "false", "raise", "illegal"):
        calls["n"] = 0
        g = GraphLauncher(rt, stream, mm(mode))
        g.launch()
        first = correct()
        times = [timer.time(g.launch) for _ in range(30)]
        out[mode] = {"graph_used": g.use_graph, "fallback_reason": g.fallback_reason[:200],
                     "outputs_correct_first": first, "outputs_correct_after": correct(),
                     "median_ms": float(np.median(times)) * 1e3}
        g.reset()
    plain = GraphLauncher(rt, stream, mm(), use_graph=False)
    out["plain_median_ms"] = float(np.median([timer.time(plain.launch) for _ in range(30)])) * 1e3
    timer.close()
    check(rt.cudaStreamDestroy(stream))
    return out


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
    for model, rows in b.items() if isinstance(b, dict) else []:
        if not isinstance(rows, dict):
            continue
        for p in ("fp16", "int8"):
            v = rows.get(p, {})
            if v.get("built") and "error" not in v:
                lines.append(f"\nBuilt on this GPU: {model} {p} in {v['build_s']:.1f} s; census "
                             f"matches plan: {v['census_matches_plan']}; max |diff| vs ORT "
                             f"{v['max_abs_diff_vs_ort']:.3g}, top-1 agreement "
                             f"{v['top1_agreement_vs_ort']:.3f}")
            else:
                lines.append(f"\nBuilding/running {model} {p} on this GPU failed: "
                             f"{v.get('error', '')[:300]}")
        for key in ("timing", "timing_cuda_graph"):
            t = rows.get(key)
            if t:
                lines.append(f"{model} batch 1 ({key.replace('_', ' ')}): fp16 "
                             f"{t['fp16']['median_ms']:.4f} ms, int8 {t['int8']['median_ms']:.4f}"
                             f" ms, ratio int8/fp16 {t['int8_over_fp16']:.3f} "
                             f"({t['int8']['n']} interleaved runs each)")
    for name, v in (r.get("backends_here") or {}).items():
        if isinstance(v, dict) and "can_measure" in v:
            lines.append(f"\n`--backend {name}` measuring here: "
                         + ("yes" if v["can_measure"] else f"no: {v['why'][:300]}"))
    g = r.get("cuda_graph_capture", {})
    if "ok" in g:
        lines.append("\nCUDA-graph launcher on a real kernel (fp16 GEMM 2048^3, "
                     "cuda-python stream):")
        for mode in ("ok", "false", "raise", "illegal"):
            v = g[mode]
            lines.append(f"- capture {mode}: graph used {v['graph_used']}, outputs correct "
                         f"{v['outputs_correct_first']}/{v['outputs_correct_after']}, median "
                         f"{v['median_ms']:.4f} ms" + (f"; fell back: {v['fallback_reason']}"
                                                       if v["fallback_reason"] else ""))
        lines.append(f"- plain enqueue: median {g['plain_median_ms']:.4f} ms")
    elif "error" in g:
        lines.append(f"\nCUDA-graph launcher: {g['error']}")
    t = r.get("timer_validation", {})
    if "ratio" in t:
        lines.append(f"\nTimer validation ({t['kernel']}): our CUDA events "
                     f"{t['ours_median_ms']:.4f}"
                     f" ms vs torch.cuda.Event {t['torch_median_ms']:.4f} ms (ratio "
                     f"{t['ratio']:.3f}; {t['tflops_ours']:.0f} TFLOP/s)")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    OUT.mkdir(parents=True, exist_ok=True)
    (OUT / "gpu_check.json").write_text(json.dumps(results, indent=2, default=str))
    (OUT / "gpu_check.md").write_text(markdown(results))
    print(markdown(results))
