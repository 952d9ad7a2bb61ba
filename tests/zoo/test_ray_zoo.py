"""A simulated larger Ray cluster (Ray's `cluster_utils.Cluster`: a head and seven nodes on
this machine, each declaring one CPU, so one trt-mpq worker each) kept busy by a sweep-heavy
search of resnet-digits (zoo: shares the session's build)."""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import sys

import pytest

pytest.importorskip("ray")
# 8 raylets and 8 workers on a 2-core machine: minutes, so not in the default suite; run with
#   python -m pytest -m slow tests/zoo/test_ray_zoo.py
pytestmark = [pytest.mark.zoo, pytest.mark.slow]

NODES = 8


def test_eight_workers_are_kept_busy_by_a_sweep(resnet_digits, tmp_path):
    from ray.cluster_utils import Cluster

    _, cache, _ = resnet_digits
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 1})
    try:
        for _ in range(NODES - 1):
            cluster.add_node(num_cpus=1)
        cluster.wait_for_nodes()
        out = tmp_path / "out"
        r = subprocess.run(
            [sys.executable, "-m", "trt_mpq", "search", "resnet-digits", "--metric",
             "agreement", "--max-drop", "1%", "--strategy", "frontier", "--sweep", "16",
             "--full-frontier", "--no-runtime-options", "--repeats", "20", "--warmup", "3",
             "--out", str(out), "--no-progress", "--executor", "ray", "--ray-address",
             cluster.address],
            env=dict(os.environ, TRT_MPQ_CACHE=str(cache)), capture_output=True, text=True,
            timeout=1200)
        assert r.returncode == 0, r.stderr[-4000:]
    finally:
        cluster.shutdown()
    db = sqlite3.connect(out / "evaluations.sqlite")
    evs = [json.loads(p) for (p,) in db.execute("SELECT payload FROM evaluations")]
    db.close()
    sweep = [e for e in evs if e["label"].startswith("sweep")]
    assert len(sweep) == 16  # one batch of 16 prefixes
    per_device: dict[str, int] = {}
    for e in sweep:
        per_device[e["device"]] = per_device.get(e["device"], 0) + 1
    assert len(per_device) == NODES, per_device  # every one of the 8 workers measured plans
    assert all(n >= 1 for n in per_device.values())
