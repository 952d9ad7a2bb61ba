"""Peers on their own ground: trt-mpq's default search against Intel Neural Compressor's
accuracy-aware tuning, ONNX Runtime's own quantizers and NNCF, on the same models, data, budget
and machine. Writes a table to benchmarks/RESULTS.md (section "Peers").

    python benchmarks/peers.py                                    # all models, all peers
    python benchmarks/peers.py --models resnet-digits --peers ort-dynamic inc-dynamic

Each peer runs as its users run it (benchmarks/peer_worker.py), in its own virtual environment
under benchmarks/.peers/ (created on first use from the pins below, so its pins never touch
ours), handed the FP32 model, the calibration split and an accuracy function on the search
split. trt-mpq runs as `trt-mpq search MODEL --max-drop 1%` with default settings, twice: first
in a cache folder that holds only the zoo's build of the model (so it prepares, calibrates and
computes the baseline's outputs and sensitivity from scratch, as a user's first search of a
model does), then again into another folder with that cache, as every later search of the
model runs (another budget, strategy or --out: it reuses calibration, the baseline's outputs
and sensitivity scores).
Then, in one
process: every answer is loaded like its users would (peers with ONNX Runtime's default session
options; trt-mpq's as its model.onnx.json says), checked on the holdout split the searches never
saw, and timed at batch 1 interleaved round by round with the FP32 model and each other. Each
latency ratio comes with a 95% bootstrap interval over the rounds. Wall time is each tool's
whole process, from start to answer, caches of the zoo build excluded.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).parent
ROOT = HERE.parent
sys.path.insert(0, str(ROOT))
PEER_ENVS = HERE / ".peers"
MODELS = ["minilm-sentiment", "resnet-digits", "efficientnet-lite0"]

#: environment -> pinned requirements. onnx-neural-compressor 1.0 (2024-07) drives ONNX Runtime
#: quantizer internals that later releases removed (`_dynamic_quantize_bias`): it gets the
#: ONNX Runtime and onnx of its time; it imports prettytable, psutil, py-cpuinfo, scipy and
#: transformers without declaring them all; its numpy must be < 2.
REQUIREMENTS = {
    "ort": ["onnxruntime==1.32.0", "onnx==1.23.2", "numpy==2.4.6"],
    "inc": ["onnx-neural-compressor==1.0", "onnxruntime==1.18.1", "onnx==1.16.2",
            "numpy==1.26.4", "prettytable==3.18.0", "psutil==7.2.2", "py-cpuinfo==9.0.0",
            "scipy==1.17.1", "transformers==5.24.0"],
    "nncf": ["nncf==3.4.0", "onnxruntime==1.32.0", "onnx==1.23.2"],
}
PEERS = {"ort-dynamic": "ort", "ort-static": "ort", "inc-dynamic": "inc", "inc-static": "inc",
         "nncf": "nncf"}


def peer_python(env: str) -> Path:
    """The interpreter of a peer's environment, created (and its pins installed) on first use."""
    venv = PEER_ENVS / env
    python = venv / "bin" / "python"
    stamp = venv / "requirements.txt"
    wanted = "\n".join(REQUIREMENTS[env]) + "\n"
    if python.exists() and stamp.exists() and stamp.read_text() == wanted:
        return python
    print(f"[peers] creating {venv} ({', '.join(REQUIREMENTS[env])})", flush=True)
    subprocess.run([sys.executable, "-m", "venv", "--clear", str(venv)], check=True)
    subprocess.run([str(python), "-m", "pip", "install", "--quiet", *REQUIREMENTS[env]],
                   check=True)
    stamp.write_text(wanted)
    return python


def export_task(model: str, work: Path, max_drop: float, cache: Path | None):
    """The zoo task's FP32 model, splits and metric, as peer_worker.py reads them."""
    from trt_mpq.pipeline.workspace import Workspace
    from trt_mpq.task import default_cache_dir

    ws = Workspace.open(model, None, cache or default_cache_dir(), progress=False)
    task = ws.task
    work.mkdir(parents=True, exist_ok=True)
    target = work / "model.onnx"
    if not target.exists():
        target.write_bytes(Path(ws.source_path).read_bytes())
    calib = task.calibration.head(256)  # what trt-mpq calibrates with by default
    arrays = {f"calibration/{k}": v for k, v in calib.inputs.items()}
    arrays.update({f"search/{k}": v for k, v in task.search.inputs.items()})
    arrays["search/#labels"] = task.search.labels
    np.savez(work / "data.npz", **arrays)
    (work / "task.json").write_text(json.dumps({
        "model": model, "inputs": list(task.search.inputs), "output": task.metric.output,
        "budget": max_drop, "batch": task.eval_batch}))
    return ws


def run_timed(cmd: list[str], env: dict | None = None) -> tuple[float, subprocess.CompletedProcess]:
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
    return time.perf_counter() - t0, proc


def fresh_cache(cache: Path, work: Path) -> Path:
    """A cache folder that holds only the built zoo entries of `cache` (linked, not copied):
    a search there prepares, calibrates and computes its shared results from scratch, as a
    user's first search of a model does."""
    import shutil

    first = work / "cache-first"
    if first.exists():
        shutil.rmtree(first)
    first.mkdir(parents=True)
    for part in ("zoo", "downloads"):
        if (cache / part).exists():
            (first / part).symlink_to((cache / part).resolve(), target_is_directory=True)
    return first


#: trt-mpq's runs: (row name, output folder, extra flags); the first runs in a fresh cache
TRT_MPQ_RUNS = [("trt-mpq", "trt-mpq", []),
                ("trt-mpq (later search)", "trt-mpq-later", []),
                # what certification costs: the same search judged on point estimates
                ("trt-mpq --confidence off", "trt-mpq-uncertified", ["--confidence", "off"])]


def run_trt_mpq(model: str, work: Path, max_drop: str, cache: Path, first: bool,
                name: str = "", folder: str = "", extra: list[str] | None = None) -> dict:
    """`trt-mpq search` with default settings (and `extra` flags): the `first` search of the
    model in a fresh cache holding only `cache`'s zoo build, else a later one reusing it."""
    import shutil

    name = name or ("trt-mpq" if first else "trt-mpq (later search)")
    out = work / (folder or ("trt-mpq" if first else "trt-mpq-later"))
    if out.exists():
        shutil.rmtree(out)
    cache = fresh_cache(cache, work) if first else work / "cache-first"
    cmd = [sys.executable, "-m", "trt_mpq", "search", model, "--max-drop", max_drop, "--out",
           str(out), "--cache-dir", str(cache), "--no-progress", "-q", *(extra or [])]
    wall, proc = run_timed(cmd)
    row = {"method": name, "wall_s": wall, "command": "trt-mpq " + " ".join(cmd[3:])}
    if proc.returncode not in (0, 1) or not (out / "result.json").exists():
        row["error"] = (proc.stderr.strip().splitlines() or [f"exit {proc.returncode}"])[-1]
        return row
    result = json.loads((out / "result.json").read_text())
    if not result["best"]:
        row["error"] = "budget not met"
        return row
    recipe = json.loads((out / "model.onnx.json").read_text())
    row.update(model_path=str(out / "model.onnx"), disabled=recipe["disabled_optimizers"],
               settings=", ".join(f"{k} {v}" for k, v in
                                  sorted(result["best"]["precision_counts"].items()))
               + "".join(f"; {k}={v}" for k, v in result["best"]["runtime_options"].items()),
               evaluations=result["evaluations"])
    return row


def run_peer(peer: str, work: Path) -> dict:
    python = peer_python(PEERS[peer])
    env = dict(os.environ, PYTHONPATH="")  # nothing of ours on the peer's path
    wall, proc = run_timed([str(python), str(HERE / "peer_worker.py"), peer, str(work)], env)
    info_path = work / peer / "info.json"
    info = json.loads(info_path.read_text()) if info_path.exists() else {}
    row = {"method": peer, "wall_s": wall, "settings": info.get("settings", ""),
           "evaluations": info.get("evaluations", 1 if "error" not in info else None),
           "command": f"{PEERS[peer]} venv: python benchmarks/peer_worker.py {peer} WORK"}
    if proc.returncode != 0 or "error" in info or not info:
        row["error"] = info.get("error") or (proc.stderr.strip().splitlines()
                                             or [f"exit {proc.returncode}, no answer"])[-1]
    else:
        row["model_path"] = str(work / peer / "model.onnx")
    return row


def session(path: str, threads: int, disabled: list[str] | None = None):
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
    opts.log_severity_level = 3
    return ort.InferenceSession(path, opts, providers=["CPUExecutionProvider"],
                                disabled_optimizers=disabled or [])


def evaluate(ws, rows: list[dict], repeats: int, threads: int) -> None:
    """Holdout accuracy of every answer, and latency interleaved with FP32, in this process."""
    from trt_mpq.backends.ort import OrtRunner
    from trt_mpq.measure.accuracy import compute_outputs

    task = ws.task
    fp32 = OrtRunner(session(str(ws.source_path), threads))
    base = task.metric(compute_outputs(fp32, task.holdout, task.eval_batch, progress=False),
                       task.holdout.labels)
    live = [r for r in rows if "model_path" in r]
    runners = [fp32]
    for r in list(live):
        try:
            runner = OrtRunner(session(r["model_path"], threads, r.get("disabled")))
            outputs = compute_outputs(runner, task.holdout, task.eval_batch, progress=False)
        except Exception as e:  # noqa: BLE001 - a peer's unloadable answer is a result
            r["error"] = f"its model does not run here: {type(e).__name__}: {e}"[:300]
            live.remove(r)
            continue
        runners.append(runner)
        metric = task.metric(outputs, task.holdout.labels)
        r.update(holdout_metric=metric, holdout_drop=(base - metric) / base)
    feed = task.latency_feed()
    for _ in range(20):
        for runner in runners:
            runner.time_once(feed)
    times = np.zeros((repeats, len(runners)))
    for i in range(repeats):
        order = range(len(runners)) if i % 2 == 0 else reversed(range(len(runners)))
        for k in order:
            times[i, k] = runners[k].time_once(feed)
    rng = np.random.default_rng(0)
    for k, r in enumerate(live, start=1):
        ratio = float(np.median(times[:, k]) / np.median(times[:, 0]))
        boot = []
        for _ in range(1000):
            idx = rng.integers(0, repeats, repeats)
            boot.append(np.median(times[idx, k]) / np.median(times[idx, 0]))
        r.update(latency_ratio=ratio, ratio_lo=float(np.percentile(boot, 2.5)),
                 ratio_hi=float(np.percentile(boot, 97.5)))
    for r in rows:
        r["baseline_holdout"] = base
        r["fp32_ms"] = float(np.median(times[:, 0]) * 1e3)


def table(results: dict, max_drop: float) -> str:
    import onnxruntime
    from results_md import commit

    from trt_mpq.report import machine_info

    m = machine_info()
    lines = [
        f"Budget: holdout accuracy drop at most {max_drop:.0%} of FP32. ONNX Runtime "
        f"{onnxruntime.__version__} (CPU) for every timing, {m['cpu']}, {m['cores']} cores, "
        f"run on {time.strftime('%Y-%m-%d')}, commit {commit()}, with `python "
        "benchmarks/peers.py`. Latency ratio: "
        "median over rounds interleaved with FP32 in one process, batch 1, with a 95% bootstrap "
        "interval; *in budget* = holdout drop within the budget. Wall time: the tool's whole "
        "process to its answer (zoo builds cached); *trt-mpq* is the first search of a model "
        "(it prepares and calibrates the model and computes the baseline's outputs and "
        "sensitivity), *trt-mpq (later search)* a second one into another folder, which "
        "reuses them (trt-mpq's caches); *trt-mpq --confidence off* the same search judged "
        "by point estimates, not certified (what certification costs).", ""]
    for model, rows in results.items():
        fp32 = next((r.get("fp32_ms") for r in rows if r.get("fp32_ms")), None)
        lines += [f"### {model} (FP32 {fp32:.2f} ms at batch 1)" if fp32 else f"### {model}", "",
                  "| method | wall s to answer | latency ratio (95% CI) | holdout drop | "
                  "in budget | evaluations | what it chose |", "|---|---|---|---|---|---|---|"]
        for r in rows:
            if "error" in r or "latency_ratio" not in r:
                lines.append(f"| {r['method']} | {r['wall_s']:.0f} | - | - | - | "
                             f"{r.get('evaluations') or '-'} | failed: "
                             f"{str(r.get('error', ''))[:160]} |")
                continue
            ok = r["holdout_drop"] <= max_drop + 1e-12
            lines.append(
                f"| {r['method']} | {r['wall_s']:.0f} | {r['latency_ratio']:.3f} "
                f"({r['ratio_lo']:.3f}-{r['ratio_hi']:.3f}) | {100 * r['holdout_drop']:+.2f}% | "
                f"{'yes' if ok else '**no**'} | {r.get('evaluations') or '-'} | "
                f"{r.get('settings', '')} |")
        lines.append("")
    lines += ["Peer environments (pinned, benchmarks/.peers/): " + "; ".join(
        f"{env}: {' '.join(reqs)}" for env, reqs in REQUIREMENTS.items())]
    return "\n".join(lines)


def write_results(text: str) -> Path:
    from results_md import write_section

    return write_section("peers", "Peers (ONNX Runtime CPU)", text)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", nargs="+", default=MODELS)
    ap.add_argument("--peers", nargs="+", default=list(PEERS), choices=list(PEERS))
    ap.add_argument("--max-drop", type=float, default=0.01, help="relative, e.g. 0.01 = 1%%")
    ap.add_argument("--repeats", type=int, default=300, help="interleaved timing rounds")
    ap.add_argument("--work", type=Path, default=HERE / "runs" / "peers")
    ap.add_argument("--cache", type=Path, default=None)
    ap.add_argument("--no-write", action="store_true", help="print the table only")
    ap.add_argument("--reuse", action="store_true",
                    help="take a model's rows from an earlier run (WORK/MODEL/rows.json)")
    ap.add_argument("--reuse-peers", action="store_true",
                    help="rerun trt-mpq only: the peers' answers and wall times come from the "
                         "earlier run (WORK/MODEL/rows.json); every answer is timed again")
    args = ap.parse_args()
    from trt_mpq.task import default_cache_dir

    threads = len(os.sched_getaffinity(0))
    results = {}
    for model in args.models:
        work = args.work / model
        if args.reuse and (work / "rows.json").exists():
            results[model] = json.loads((work / "rows.json").read_text())
            continue
        ws = export_task(model, work, args.max_drop, args.cache)
        earlier = {}
        if args.reuse_peers and (work / "rows.json").exists():
            earlier = {r["method"]: r for r in json.loads((work / "rows.json").read_text())}
        rows = []
        for i, (name, folder, extra) in enumerate(TRT_MPQ_RUNS):
            rows.append(run_trt_mpq(model, work, f"{100 * args.max_drop:g}%",
                                    args.cache or default_cache_dir(), i == 0, name, folder,
                                    extra))
            print(f"[{model}] {rows[-1]['method']}: {json.dumps(rows[-1], default=str)[:400]}",
                  flush=True)
        for peer in args.peers:
            if peer in earlier:
                keep = ("method", "wall_s", "settings", "evaluations", "command", "error",
                        "model_path")
                rows.append({k: v for k, v in earlier[peer].items() if k in keep})
                continue
            rows.append(run_peer(peer, work))
            print(f"[{model}] {peer}: {json.dumps(rows[-1], default=str)[:400]}", flush=True)
        evaluate(ws, rows, args.repeats, threads)
        results[model] = rows
        (work / "rows.json").write_text(json.dumps(rows, indent=1, default=str))
    text = table(results, args.max_drop)
    print(text)
    if not args.no_write:
        print(f"written to {write_results(text)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
