"""Every built-in model answers the README's kind of command, `trt-mpq search NAME --max-drop
1%`, with a certified answer on a fresh cache (exit 0), and where its labelled holdout cannot
certify 1% the search says first which metric judges it and records why. Slow: the four
builds and searches take about 25 minutes on 2 cores.

    python -m pytest -m slow tests/zoo/test_builtin_answers.py
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

pytestmark = [pytest.mark.zoo, pytest.mark.slow]

#: model -> the metric that judges it at 1%, and whether the task's fallback chose it
JUDGED = {"resnet-digits": ("agreement", True), "mobilenetv2-digits": ("agreement", True),
          "efficientnet-lite0": ("accuracy", True), "minilm-sentiment": ("accuracy", False)}


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    return tmp_path_factory.mktemp("fresh-cache")


@pytest.mark.parametrize("model", list(JUDGED))
def test_every_builtin_model_answers_at_1_percent(model, cache, tmp_path):
    out = tmp_path / "out"
    r = subprocess.run([sys.executable, "-m", "trt_mpq", "search", model, "--max-drop", "1%",
                        "--out", str(out), "--no-progress"],
                       env=dict(os.environ, TRT_MPQ_CACHE=str(cache)), capture_output=True,
                       text=True, timeout=3600)
    assert r.returncode == 0, r.stderr[-3000:]
    result = json.loads((out / "result.json").read_text())
    best, choice = result["best"], result["task"]["metric_choice"]
    assert best["certified"] and best["confidence"] == 0.95
    assert best["holdout_rel_drop_upper"] <= 0.01 and best["latency_ratio"] < 1
    metric, fallback = JUDGED[model]
    assert result["task"]["metric"] == metric
    assert (choice["chosen_by"] == "task fallback") == fallback
    if fallback:  # said before the search, not silently
        search_line = next(i for i, ln in enumerate(r.stderr.splitlines())
                           if ln.startswith(f"search {model}"))
        said = next(i for i, ln in enumerate(r.stderr.splitlines())
                    if ln.startswith(f"{model} is judged by {metric}"))
        assert said < search_line
