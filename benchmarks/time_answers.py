"""Time the answers of several finished searches of one model together: each run's model.onnx
(opened by ort-cpu as the search opens it, with the runtime options its model.onnx.json
records), interleaved round by round with the prepared FP32 model
and with each other, in one process. Answers timed in separate searches carry each search's
own host drift (up to about 8% here); timed together, their ratios compare.

    python benchmarks/time_answers.py benchmarks/runs/resnet-digits-2026*

Prints one row per run: its plan, its latency ratio against FP32 with a 95% interval (paired
bootstrap over the rounds), and the ratio it reported when its search timed it.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path

HERE = Path(__file__).parent
sys.path.insert(0, str(HERE.parent))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("runs", nargs="+", type=Path, help="search output folders (--out) of one model")
    ap.add_argument("--repeats", type=int, default=900, help="timed runs per model")
    ap.add_argument("--max-seconds", type=float, default=180.0)
    args = ap.parse_args()

    from trt_mpq.backends.base import Artifact
    from trt_mpq.backends.ort import OrtBackend
    from trt_mpq.measure.latency import MeasureConfig, ratio_interval, time_rounds
    from trt_mpq.pipeline.workspace import Workspace
    from trt_mpq.task import default_cache_dir

    runs = []
    for out in args.runs:
        try:
            result = json.loads((out / "result.json").read_text())
            settings = json.loads((out / "model.onnx.json").read_text())
        except (OSError, ValueError) as e:
            print(f"error: {out} is not a finished search's folder ({e})", file=sys.stderr)
            return 2
        runs.append((out, result, settings))
    models = {r["model"] for _, r, _ in runs}
    if len(models) != 1:
        print(f"error: the runs are of several models ({', '.join(sorted(models))}); "
              "give the runs of one model", file=sys.stderr)
        return 2

    backend = OrtBackend()  # the search's own sessions: its threads, no spinning

    def runner(path: Path, options: dict):
        return backend.open(Artifact(path=path, backend=backend.name, build_s=0.0,
                                     options=options))

    model = models.pop()
    ws = Workspace.open(model, None, default_cache_dir(), progress=False)
    runners = [runner(ws.prepared_path, {})]
    runners += [runner(out / "model.onnx", s.get("runtime_options", {})) for out, _, s in runs]
    config = MeasureConfig(repeats=args.repeats, max_seconds=args.max_seconds)
    times = time_rounds(runners, ws.task.latency_feed(), config)
    base = statistics.median(times[0])
    print(f"{model}: FP32 {base * 1e3:.3f} ms (median of {len(times[0])} runs), "
          "every model timed interleaved in this process\n")
    print("| run | plan | ratio together (95% CI) | ratio in its own search |")
    print("|---|---|---|---|")
    for (out, result, _), t in zip(runs, times[1:]):
        lo, hi = ratio_interval(t, times[0])
        ratio = statistics.median(t) / base
        mix = ", ".join(f"{k} {v}" for k, v in sorted(result["best"]["precision_counts"].items()))
        print(f"| {out.name} | {mix} | x{ratio:.3f} ({lo:.3f}-{hi:.3f}) | "
              f"x{result['best']['latency_ratio']:.3f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
