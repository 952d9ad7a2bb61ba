"""`trt-mpq search --executor ray` on real Ray: a local Ray, and a multi-node cluster on this
machine (Ray's own `cluster_utils.Cluster`: a head and worker nodes, each a real raylet) from
which a node is removed mid-search. The searches are of the digits CNN with a sweep-heavy
strategy (`frontier`: one batch of evenly spaced prefixes), compared with `--executor local`."""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest

pytest.importorskip("ray")
pytestmark = pytest.mark.zoo  # the model is trained with torch

FIXTURES = Path(__file__).parents[1] / "fixtures"
# --full-frontier: every plan gets its accuracy pass, so the two searches' accuracies can be
# compared plan by plan (otherwise a sweep plan timed slower than FP32 skips it, and timing is
# noisy: which ones do differs between runs)
FLAGS = ["--task", "digits_task:make_task", "--max-drop", "3%", "--strategy", "frontier",
         "--sweep", "8", "--no-runtime-options", "--full-frontier", "--warmup", "3",
         "--no-progress"]


def search(model: Path, out: Path, cache: Path, *extra: str, background=False):
    argv = [sys.executable, "-m", "trt_mpq", "search", str(model), *FLAGS, "--out", str(out),
            *extra]
    env = dict(os.environ, PYTHONPATH=str(FIXTURES), TRT_MPQ_CACHE=str(cache),
               RAY_DEDUP_LOGS="0")
    if background:
        return subprocess.Popen(argv, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                text=True)
    r = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=900)
    assert r.returncode == 0, r.stderr[-4000:]
    assert "Traceback" not in r.stderr, r.stderr[-4000:]
    return r


def stored(out: Path) -> list[dict]:
    if not (out / "evaluations.sqlite").is_file():
        return []
    db = sqlite3.connect(f"file:{out / 'evaluations.sqlite'}?mode=ro", uri=True)
    try:
        return [json.loads(p) for (p,) in db.execute("SELECT payload FROM evaluations "
                                                     "ORDER BY seq")]
    except sqlite3.OperationalError:  # not created yet
        return []
    finally:
        db.close()


def same_plans_and_accuracies(ray_out: Path, local_out: Path) -> list[dict]:
    """The Ray search evaluated the local search's plans, with the same accuracy wherever both
    ran the accuracy pass (every plan, with --full-frontier, unless one failed)."""
    ray_evs, local_evs = stored(ray_out), stored(local_out)
    assert {e["plan_digest"] for e in ray_evs} == {e["plan_digest"] for e in local_evs}
    local = {e["plan_digest"]: e["drop"] for e in local_evs}
    both = [e for e in ray_evs if e["drop"] is not None and local[e["plan_digest"]] is not None]
    assert len(both) >= 3
    for e in both:
        assert e["drop"] == local[e["plan_digest"]], e["label"]
    return ray_evs


@pytest.fixture(scope="module")
def local_run(digits_model, tmp_path_factory, cache_dir):
    out = tmp_path_factory.mktemp("local") / "out"
    search(digits_model, out, cache_dir)
    return out


def test_a_local_ray_gives_the_local_plans_and_accuracies(digits_model, local_run, tmp_path,
                                                        cache_dir):
    out = tmp_path / "ray"
    search(digits_model, out, cache_dir, "--executor", "ray")
    evs = same_plans_and_accuracies(out, local_run)
    # every plan but the baseline (measured by the driver) was measured on a Ray worker
    assert all(e["device"] for e in evs if e["label"] != "baseline")
    res = json.loads((out / "result.json").read_text())
    assert res["best"]["certified"] and res["command"][-2:] == ["--executor", "ray"]


def test_a_cluster_spreads_a_batch_and_survives_a_node_removed_mid_search(
        digits_model, local_run, tmp_path, cache_dir):
    """A head and three worker nodes (one CPU each, so one worker each): the sweep's batch
    runs on several nodes at once; a node removed while its worker is mid-plan (its metric
    sleeps, so it surely is) hands that plan to another, and the search finishes with the local
    search's plans and accuracies."""
    from digits_task import SLOW_ENV
    from ray.cluster_utils import Cluster

    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 1})
    try:
        slow = cluster.add_node(num_cpus=1, env_vars={SLOW_ENV: "8"})
        [cluster.add_node(num_cpus=1) for _ in range(2)]
        cluster.wait_for_nodes()
        out = tmp_path / "cluster"
        proc = search(digits_model, out, cache_dir, "--executor", "ray", "--ray-address",
                      cluster.address, background=True)
        deadline = time.time() + 600
        while time.time() < deadline and proc.poll() is None:
            if any(e.get("device") for e in stored(out)):
                break  # the batch is under way, and the slow node's plan takes 8 s more
            time.sleep(0.05)
        assert proc.poll() is None, proc.communicate()[1][-4000:]
        cluster.remove_node(slow)  # its worker dies with the plan it holds
        stdout, stderr = proc.communicate(timeout=900)
        assert proc.returncode == 0, stderr[-4000:]
        assert "Traceback" not in stderr, stderr[-4000:]
        assert "died evaluating" in stderr, stderr[-4000:]  # its plan went to another worker
        evs = same_plans_and_accuracies(out, local_run)
        devices = {e["device"] for e in evs if e["device"]}
        assert len(devices) == 3  # the batch was spread over the other three nodes
    finally:
        cluster.shutdown()


def test_a_worker_takes_the_drivers_calibration_and_refuses_other_data(
        digits_model, cache_dir, monkeypatch):
    """In this process, as a worker starts: it measures with the calibration it is given (it
    does not calibrate again), and refuses to start when its model inputs differ from the
    driver's digests."""
    from trt_mpq.calib import Ranges
    from trt_mpq.errors import ConfigError
    from trt_mpq.pipeline.executor import WorkerSpec, data_digests, open_evaluator

    monkeypatch.setenv("TRT_MPQ_CACHE", str(cache_dir))  # restored after the test
    monkeypatch.setenv("PYTHONPATH", str(FIXTURES))
    monkeypatch.syspath_prepend(str(FIXTURES))
    from trt_mpq.cli.parser import build_parser
    from trt_mpq.cli.search import search_request

    request = search_request(build_parser().parse_args(["search", str(digits_model), *FLAGS]))
    spec = WorkerSpec(request=request.for_workers().to_json_dict(),
                      env={"TRT_MPQ_CACHE": str(cache_dir), "PYTHONPATH": str(FIXTURES)})
    ev = open_evaluator(spec)
    ev.__exit__(None, None, None)
    given = ev.ranges.to_json_dict()
    name = sorted(given["ranges"])[0]
    given["ranges"][name] = [v * 2 for v in given["ranges"][name]]
    digests = data_digests(ev.ws)
    ev2 = open_evaluator(WorkerSpec(request=spec.request, env=spec.env, ranges=given,
                                     digests=digests))
    ev2.__exit__(None, None, None)
    assert ev2.ranges[name] == tuple(given["ranges"][name]) != ev.ranges[name]
    assert ev2.ranges.digest == Ranges.from_json_dict(given).digest
    with pytest.raises(ConfigError, match="different search inputs .*OMP_NUM_THREADS"):
        open_evaluator(WorkerSpec(request=spec.request, env=spec.env, ranges=given,
                                  digests={**digests, "search inputs": "0" * 16}))


THREADS_TASK = '''
import os

import numpy as np

import digits_task
from trt_mpq.task import Split, Task


def make_task():
    """digits_task's, with search inputs that follow OMP_NUM_THREADS (as a BLAS matrix
    product's rounding does)."""
    t = digits_task.make_task()
    shift = np.float32(1e-3 * int(os.environ.get("OMP_NUM_THREADS") or 0))
    s = t.search
    return Task(**{**t.__dict__, "search": Split({"input": s.inputs["input"] + shift}, s.labels)})
'''


def test_workers_get_the_drivers_thread_settings_or_refuse_other_data(
        digits_model, tmp_path, cache_dir, monkeypatch):
    """A task whose inputs follow OMP_NUM_THREADS, on a cluster started without it (Ray gives
    a 1-CPU worker OMP_NUM_THREADS=1): a driver without it gets a clear refusal (exit 2); a
    driver with it hands it to the workers, which then compute the driver's data."""
    from ray.cluster_utils import Cluster

    (tmp_path / "threads_task.py").write_text(THREADS_TASK)
    for k in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
        monkeypatch.delenv(k, raising=False)  # the cluster's nodes start without them
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 1})
    try:
        def run(out: Path, **env):
            argv = [sys.executable, "-m", "trt_mpq", "search", str(digits_model), *FLAGS,
                    "--task", "threads_task:make_task", "--sweep", "2", "--out", str(out),
                    "--executor", "ray", "--ray-address", cluster.address]
            return subprocess.run(argv, capture_output=True, text=True, timeout=900, env=dict(
                os.environ, PYTHONPATH=os.pathsep.join([str(tmp_path), str(FIXTURES)]),
                TRT_MPQ_CACHE=str(cache_dir), **env))

        r = run(tmp_path / "refused")
        assert r.returncode == 2, r.stderr[-4000:]
        assert "search inputs than the driver" in r.stderr, r.stderr[-4000:]
        assert "Traceback" not in r.stderr
        assert not (tmp_path / "refused").exists()  # nothing half-written
        r = run(tmp_path / "out", OMP_NUM_THREADS="3")
        assert r.returncode == 0, r.stderr[-4000:]
        evs = stored(tmp_path / "out")
        assert any(e["device"] for e in evs)
    finally:
        cluster.shutdown()


def test_a_node_that_times_on_another_device_type_is_left_out_unless_mixed(
        digits_model, tmp_path, cache_dir):
    """A head node like this machine and a node whose processes may use one core only (as a
    smaller machine's would): its worker times on another device type, so its ratios are not
    comparable with the driver's. It is left out by default, and used with --mix-devices."""
    from ray.cluster_utils import Cluster

    mask = os.sched_getaffinity(0)
    if len(mask) < 2:
        pytest.skip("needs two cores to make a node with fewer")
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 1})
    try:
        os.sched_setaffinity(0, {min(mask)})
        try:
            cluster.add_node(num_cpus=1)  # its raylet and workers inherit the one core
        finally:
            os.sched_setaffinity(0, mask)
        cluster.wait_for_nodes()
        runs = {}
        for name, extra in (("default", []), ("mixed", ["--mix-devices"])):
            out = tmp_path / name
            r = search(digits_model, out, cache_dir, "--executor", "ray", "--ray-address",
                       cluster.address, "--sweep", "4", *extra)
            workers = json.loads((out / "result.json").read_text())["workers"]
            devices = {e["device"] for e in stored(out) if e["device"]}
            runs[name] = (r.stderr, workers, devices)
        stderr, workers, devices = runs["default"]
        assert "1 worker(s) left out, timing on another device type" in stderr
        assert len(workers) == 1 and devices == set(workers)
        assert next(iter(workers.values())).endswith(f"{len(mask)} intra-op threads")
        stderr, workers, devices = runs["mixed"]
        assert "left out" not in stderr
        assert len(set(workers.values())) == 2 and devices == set(workers)
    finally:
        cluster.shutdown()
