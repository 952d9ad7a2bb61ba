"""benchmarks/compare_methods.py end to end on the tiny digits CNN (trains it in seconds)."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).parents[2]

pytestmark = pytest.mark.zoo


def test_compare_methods_on_a_tiny_model(tmp_path):
    r = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "compare_methods.py"),
                        "--models", "tiny", "--latency-models", "tiny", "--no-write",
                        "--repeats", "5",
                        "--cache", str(tmp_path / "cache"), "--runs", str(tmp_path / "runs")],
                       capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    main, latency = r.stdout.split("### Latency-only rows")
    rows = [line for line in main.splitlines()
            if line.startswith("| ") and not line.startswith("| method")]
    methods = [line.split("|")[1].strip() for line in rows]
    assert methods == ["uniform", "graph-order", "aimet", "hawq", "autoquantize", "random",
                       "deps", "ours-v1", "ours"]
    result = json.loads((tmp_path / "runs" / "compare-tiny" / "compare.json").read_text())
    # each budget judged by the task's metric where its holdout can certify it, else agreement
    assert result["metrics"]["0.01%"] == "agreement"
    assert set(result["metrics"].values()) <= {"accuracy", "agreement"}
    for method, by_budget in result["rows"].items():
        assert set(by_budget) == {"1%", "0.1%", "0.01%"}
        for budget, row in by_budget.items():
            assert row["evaluations"] >= 1
            assert row["metric"] == result["metrics"][budget]
            assert all(1 <= n <= row["search_n"] for n in row["search_samples"])
            if row["ratio"] is not None:  # an answer is certified within its budget
                # chosen because it measured faster than FP32 during the search; then re-measured
                # with every other answer and FP32 side by side (on a tiny CNN int8 and FP32 are
                # close, so the re-measured ratio may land on either side of 1)
                assert 0 < row["search_ratio"] < 1.0, (method, budget, row)
                lo, hi = row["ratio_ci"]
                assert 0 < lo <= row["ratio"] <= hi, (method, budget, row)
                assert row["holdout_drop"] <= row["holdout_upper"] \
                    <= float(budget.rstrip("%")) / 100 + 1e-12, (method, budget, row)
                assert 1 <= row["holdout_samples"] <= row["holdout_n"]
    assert len(result["rows"]["ours"]["1%"]["search_samples"]) <= 12
    assert 0 < result["mean_sample_share"] <= 1
    model = result["latency_model"]
    assert model["plans"] >= 2 and model["median_abs_error"] >= 0 \
        and model["additive_median_abs_error"] >= 0
    assert {"hessian", "fisher", "accuracy", "hessian+deps"} <= set(result["sensitivity_cost"])
    assert (tmp_path / "runs" / "compare-tiny" / "frontier.png").stat().st_size > 0
    # latency-only rows: the three families, the fastest plan of each, from the same store
    lat = json.loads((tmp_path / "runs" / "latency-tiny" / "compare.json").read_text())
    families = list(lat["rows"])
    assert lat["latency_only"] and families[:3] == ["uniform", "graph-order sweep",
                                                    "latency-aware sweep"]
    assert families[-1] == "boundary, all formats"
    for row in lat["rows"].values():
        assert row["ratio"] > 0 and row["evaluations"] >= 1 and row["plan"]
    assert lat["rows"]["uniform"]["evaluations"] == 1
    assert [line for line in latency.splitlines() if line.startswith("| tiny (")]
    assert not (ROOT / "benchmarks" / "compare_tiny.png").exists()  # --no-write writes nothing
