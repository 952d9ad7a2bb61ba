"""Several formats per layer against one format everywhere: the latency-accuracy frontier each
reaches, as `trt-mpq search` runs on the same model, backend and budget (issue 14, item 3).
Prints the table of RESULTS.md's "Several formats per layer" section.

Families (each one `trt-mpq search MODEL --max-drop B --full-frontier`, so every plan it
proposes is measured for accuracy and latency; the caches are shared, the stores are not):
- `--precision P` for each single format P the backend offers for MatMul (int8, int8-dynamic,
  int4w on ONNX Runtime CPU; the other groups go to int8), the default bisection strategy;
- `--strategy boundary` with `--precision auto`: each group chooses among every format its op
  supports (sensitivity and latency gain measured per (group, format)).

For each family: its plans, the area under its measured frontier (latency ratio against drop,
`search.pareto.area_under_frontier`, drop clipped at A; larger is better), its fastest plan
within the budget on the search split, and the wall time of the run. Ratios come from separate
runs, so they carry run-to-run timing noise (a few percent on this host).

    python benchmarks/formats.py --models minilm-sentiment bert-base --max-drop 1%
"""

from __future__ import annotations

import argparse
import json
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

FAMILIES = {
    "int8": ["--precision", "int8"],
    "int8-dynamic": ["--precision", "int8-dynamic"],
    "int4w": ["--precision", "int4w"],
    "all formats (boundary)": ["--strategy", "boundary"],
}


def evaluations(out: Path) -> list[dict]:
    db = sqlite3.connect(f"file:{out / 'evaluations.sqlite'}?mode=ro", uri=True)
    try:
        return [json.loads(p) for (p,) in db.execute("SELECT payload FROM evaluations")]
    finally:
        db.close()


def run_family(model: str, family: str, flags: list[str], budget: str, runs: Path,
               extra: list[str]) -> dict:
    out = runs / f"{model}-{family.split()[0]}"
    argv = [sys.executable, "-m", "trt_mpq", "search", model, "--max-drop", budget,
            "--full-frontier", "--no-runtime-options", "--no-progress", "--out", str(out),
            *flags, *extra]
    t0 = time.perf_counter()
    r = subprocess.run(argv, capture_output=True, text=True)
    wall = time.perf_counter() - t0
    (runs / f"{out.name}.log").write_text(r.stderr)
    if r.returncode not in (0, 1) or not (out / "evaluations.sqlite").is_file():
        return {"error": r.stderr.strip().splitlines()[-1] if r.stderr.strip() else
                f"exit {r.returncode}", "wall_s": wall}
    result = json.loads((out / "result.json").read_text())
    return {"evaluations": evaluations(out), "result": result, "wall_s": wall}


def summarize(runs: dict, clip: float) -> dict:
    from trt_mpq.search.pareto import area_under_frontier

    class P:  # what area_under_frontier reads of an evaluation
        def __init__(self, e: dict) -> None:
            self.latency_ratio, self.drop = e["latency_ratio"], e["drop"]

    rows = {}
    for family, run in runs.items():
        if "error" in run:
            rows[family] = {"error": run["error"], "wall_s": run["wall_s"]}
            continue
        evs = [e for e in run["evaluations"] if e["status"] == "ok"
               and e["latency_ratio"] is not None and e["drop"] is not None]
        res = run["result"]
        allowed = res["budget"]["allowed_drop"] if isinstance(res.get("budget"), dict) else None
        inb = [e for e in evs if allowed is not None and e["drop"] <= allowed + 1e-12]
        fastest = min(inb, key=lambda e: e["latency_ratio"]) if inb else None
        rows[family] = {
            "plans": len(evs), "area": area_under_frontier([P(e) for e in evs], clip),
            "fastest_in_budget": fastest["latency_ratio"] if fastest else None,
            "its_drop": fastest["drop"] if fastest else None,
            "its_plan": fastest["precision_counts"] if fastest else None,
            "answer": (res.get("best") or {}).get("latency_ratio"),
            "wall_s": run["wall_s"]}
    return rows


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", nargs="+", default=["minilm-sentiment", "bert-base"])
    ap.add_argument("--max-drop", default="1%")
    ap.add_argument("--clip", type=float, default=0.05,
                    help="drops above this (absolute) count as this in the area")
    ap.add_argument("--families", nargs="+", default=list(FAMILIES))
    ap.add_argument("--runs", type=Path, default=Path("benchmarks/runs/formats"))
    ap.add_argument("extra", nargs=argparse.REMAINDER,
                    help="after --: more `trt-mpq search` flags for every run")
    args = ap.parse_args()
    extra = [a for a in args.extra if a != "--"]
    args.runs.mkdir(parents=True, exist_ok=True)
    table = {}
    for model in args.models:
        runs = {}
        for family in args.families:
            runs[family] = run_family(model, family, FAMILIES[family], args.max_drop,
                                      args.runs, extra)
            print(f"{model} {family}: {runs[family].get('error') or 'done'} "
                  f"({runs[family]['wall_s']:.0f} s)", file=sys.stderr, flush=True)
        table[model] = summarize(runs, args.clip)
    (args.runs / "formats.json").write_text(json.dumps(table, indent=1))
    print(f"| model | family | plans | frontier area (drop clipped at {args.clip:g}) | "
          f"fastest within {args.max_drop} (search split) | its plan | wall s |")
    print("|---|---|---|---|---|---|---|")
    for model, rows in table.items():
        for family, r in rows.items():
            if "error" in r:
                print(f"| {model} | {family} | - | - | failed: {r['error']} | - | "
                      f"{r['wall_s']:.0f} |")
                continue
            fast = (f"x{r['fastest_in_budget']:.3f} ({100 * r['its_drop']:+.2f}%)"
                    if r["fastest_in_budget"] is not None else "-")
            plan = ", ".join(f"{k} {v}" for k, v in sorted((r["its_plan"] or {}).items()))
            print(f"| {model} | {family} | {r['plans']} | {r['area']:.3f} | {fast} | "
                  f"{plan or '-'} | {r['wall_s']:.0f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
