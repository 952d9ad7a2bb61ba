"""Prepare what benchmarks/gpu_check.sh needs on a GPU machine that has no TensorRT and no
network, into .gpu/ (git-ignored; carried to the machine with the device tool):

  .gpu/whl/      TensorRT-RTX wheels for Python 3.12 (bindings, metapackages) and the 95 MB
                 libraries wheel split into two pieces (each call carries at most 64 MiB)
  .gpu/engines/  engines built here, on the CPU, ahead of time for SM80/86/89/120, with the
                 input and the ONNX Runtime reference output of the same materialized graph
  .gpu/c1, c2    the same files sorted into the two calls' loads (see gpu_check.sh)

    python benchmarks/gpu_prepare.py          # then see gpu_check.sh for the two calls
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
GPU = ROOT / ".gpu"
RTX = "1.7.1.116"
TARGETS = ("sm80", "sm86", "sm89", "sm120")


def wheels() -> None:
    whl = GPU / "whl"
    whl.mkdir(parents=True, exist_ok=True)
    pip = [sys.executable, "-m", "pip"]
    plat = ["--only-binary=:all:", "--python-version", "3.12", "--implementation", "cp",
            "--platform", "manylinux_2_28_x86_64", "--no-deps", "-d", str(whl)]
    subprocess.run([*pip, "download", *plat, f"tensorrt_rtx_cu13_bindings=={RTX}"], check=True)
    libs = whl / f"tensorrt_rtx_cu13_libs-{RTX}-py3-none-manylinux_2_28_x86_64.whl"
    if not libs.exists() and not (whl / "libs.part-aa").exists():
        subprocess.run([*pip, "download", *plat, f"tensorrt_rtx_cu13_libs=={RTX}"], check=True)
    # the two metapackages are sdists: build them here into pure-Python wheels
    subprocess.run([*pip, "wheel", "--no-deps", "-w", str(whl), f"tensorrt_rtx=={RTX}",
                    f"tensorrt_rtx_cu13=={RTX}"], check=True)
    if libs.exists():
        data = libs.read_bytes()
        half = len(data) // 2 + 1
        (whl / "libs.part-aa").write_bytes(data[:half])
        (whl / "libs.part-ab").write_bytes(data[half:])
        (whl / "libs.name").write_text(libs.name)
        libs.unlink()


def engines() -> None:
    import onnx

    sys.path.insert(0, str(ROOT / "tests"))
    import models

    from trt_mpq.backends import get_backend
    from trt_mpq.calib import CalibConfig, calibrate
    from trt_mpq.model import find_groups, prepare_model
    from trt_mpq.plan import Plan, Precision
    from trt_mpq.qdq import materialize

    out = GPU / "engines"
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    cases = {}
    src = models.tiny_cnn(GPU / "tmp" / "tiny_cnn.onnx")
    x = models.cnn_inputs(8, seed=5)
    cases["tiny_cnn"] = (src, {"input": x})
    # a real network for timing on the GPU: the zoo's MobileNetV2 graph at 224x224
    try:
        from trt_mpq.zoo.graphs import export_graph

        feed = export_graph("mobilenet_v2", GPU / "tmp" / "mobilenet_v2.onnx")
        cases["mobilenet_v2"] = (GPU / "tmp" / "mobilenet_v2.onnx",
                                 {"input": np.random.default_rng(1).normal(
                                     0, 1, (8, *feed["input"].shape[1:])).astype(np.float32)})
    except Exception as e:  # torch missing: the tiny model is enough for the load test
        print(f"skipping mobilenet_v2 ({e})", file=sys.stderr)
    index = []
    for name, (path, feed) in cases.items():
        prepared = prepare_model(path, GPU / "tmp")
        model = onnx.load(str(prepared))
        groups = find_groups(model)
        ranges = calibrate(prepared, [feed], CalibConfig(), progress=False)
        np.savez(out / f"{name}.inputs.npz", **feed)
        # groups come from the prepared graph; its weights' values are not needed for that
        skeleton = onnx.ModelProto()
        skeleton.CopyFrom(model)
        for init in skeleton.graph.initializer:
            init.ClearField("raw_data")
            for field in ("float_data", "int32_data", "int64_data", "double_data"):
                init.ClearField(field)
        onnx.save(skeleton, str(out / f"{name}.prepared.onnx"))
        for precision in (Precision.FP16, Precision.INT8):
            plan = Plan.uniform([g.name for g in groups], precision)
            # engines built here only for the small model (do they load there?); the larger
            # one travels as graphs, to be built on the GPU machine itself
            targets = TARGETS if name == "tiny_cnn" else ("sm89",)
            for cc in targets:
                backend = get_backend("tensorrt-rtx", compute_capabilities=(cc,))
                graph = materialize(model, groups, plan, ranges, backend.dialect)
                if cc == targets[0]:
                    import onnxruntime as ort

                    onnx.save(graph, str(out / f"{name}.{precision.value}.onnx"))

                    from trt_mpq.backends.ort import QDQ_DISABLED_OPTIMIZERS, has_qdq

                    # the session trt-mpq itself creates for this graph (the same optimizers
                    # off that mixed plans need), so the reference is what ort-cpu measures
                    ref = ort.InferenceSession(
                        graph.SerializeToString(), providers=["CPUExecutionProvider"],
                        disabled_optimizers=list(QDQ_DISABLED_OPTIMIZERS) if has_qdq(graph)
                        else []).run(None, feed)[0]
                    np.save(out / f"{name}.{precision.value}.reference.npy", ref)
                if name != "tiny_cnn":
                    continue
                d = GPU / "tmp" / f"{name}-{precision.value}-{cc}"
                a = backend.build(graph, d, groups, {k: v[:1] for k, v in feed.items()},
                                  max_batch=8)
                target = out / f"{name}.{precision.value}.{cc}.engine"
                shutil.copy(a.path, target)
                index.append({"model": name, "precision": precision.value, "target": cc,
                              "engine": target.name, "bytes": target.stat().st_size,
                              "census_matches": not a.census.mismatches(plan)})
    (out / "index.json").write_text(json.dumps(index, indent=1))
    shutil.rmtree(GPU / "tmp", ignore_errors=True)
    total = sum(p.stat().st_size for p in out.iterdir())
    print(f"{len(index)} engines, {total / 2**20:.1f} MiB in {out}")


def loads() -> None:
    """Sort the files into two loads of < 64 MiB with the repository: c1 = first libraries
    piece + engines that fit, c2 = second piece + the rest."""
    limit = 60 * 2**20
    for d in ("c1", "c2"):
        shutil.rmtree(GPU / d, ignore_errors=True)
        (GPU / d).mkdir()
    load = {"c1": 0, "c2": 0}

    def put(path: Path, where: str) -> None:
        shutil.copy(path, GPU / where / path.name)
        load[where] += path.stat().st_size

    put(GPU / "whl" / "libs.part-aa", "c1")
    put(GPU / "whl" / "libs.part-ab", "c2")
    for p in sorted((GPU / "whl").glob("*.whl")) + [GPU / "whl" / "libs.name"]:
        put(p, "c2")
    files = sorted((GPU / "engines").iterdir(), key=lambda p: p.stat().st_size)
    for p in files:
        where = "c1" if load["c1"] + p.stat().st_size < limit else "c2"
        if load[where] + p.stat().st_size >= limit:
            raise SystemExit(f"{p.name} does not fit in either call; build fewer engines")
        put(p, where)
    print({k: f"{v / 2**20:.1f} MiB" for k, v in load.items()})


if __name__ == "__main__":
    wheels()
    engines()
    loads()
