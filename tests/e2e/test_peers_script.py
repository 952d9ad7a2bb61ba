"""The peer worker of benchmarks/peers.py, run as the benchmark runs it (a separate process that
imports nothing of trt_mpq), for ONNX Runtime's own quantizers on a tiny model."""

import json
import subprocess
import sys
from pathlib import Path

import models
import numpy as np
import pytest

ROOT = Path(__file__).parents[2]


@pytest.mark.parametrize("peer", ["ort-dynamic", "ort-static"])
def test_peer_worker_quantizes_and_reports(peer, tmp_path):
    models.tiny_cnn(tmp_path / "model.onnx")
    x = models.cnn_inputs(48)
    labels = np.arange(48) % 10
    np.savez(tmp_path / "data.npz", **{"calibration/input": x[:16], "search/input": x[16:],
                                        "search/#labels": labels[16:]})
    (tmp_path / "task.json").write_text(json.dumps(
        {"inputs": ["input"], "output": "logits", "budget": 0.01, "batch": 16}))
    r = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "peer_worker.py"), peer,
                        str(tmp_path)], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    info = json.loads((tmp_path / peer / "info.json").read_text())
    assert "error" not in info and info["wall_s"] > 0
    assert 0 <= info["search_accuracy"] <= 1 and info["settings"]
    import onnx

    ops = {n.op_type for n in onnx.load(str(tmp_path / peer / "model.onnx")).graph.node}
    assert ops & {"ConvInteger", "MatMulInteger", "DynamicQuantizeLinear", "QuantizeLinear"}


def test_a_peer_failure_is_recorded_not_raised(tmp_path):
    (tmp_path / "task.json").write_text("{}")  # no data: the peer fails
    r = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "peer_worker.py"),
                        "ort-dynamic", str(tmp_path)], capture_output=True, text=True, timeout=300)
    assert r.returncode == 1
    info = json.loads((tmp_path / "ort-dynamic" / "info.json").read_text())
    assert info["error"] and info["wall_s"] >= 0
