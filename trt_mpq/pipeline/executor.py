"""Where the search's plans are evaluated: in this process one after another (the default), or
spread over a Ray cluster (`--executor ray`).

With Ray the driver keeps the strategy and the store (one writer); each batch a strategy
proposes is spread over one worker per timing device (per node for a CPU backend, per GPU for a
GPU backend), an actor that builds the same workspace, backend and evaluator as the driver
(from the driver's `SearchRequest`, serialized; so the model, the task and the cache folder must be
reachable from every node: a shared filesystem, or the same path on each) with the driver's
calibration, and materializes, builds, evaluates and times one plan at a time. A worker whose
model or data digests differ from the driver's refuses to start: its accuracies would not be
comparable. A plan's latency is timed on its worker, interleaved with that worker's own
baseline, so one timing runs per device and each ratio compares like with like; the evaluation
records the worker it ran on (`Evaluation.device`), and workers timing on another device type
than the driver's are left out unless the user mixes them. A worker that dies mid-plan loses
nothing measured: its plan goes to another worker, and the driver, if it dies, resumes from the
store with `--resume` as always.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import os
import socket
import sys
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from trt_mpq.errors import ConfigError, TrtMpqError
from trt_mpq.plan import Plan
from trt_mpq.results import Evaluation

if TYPE_CHECKING:
    from trt_mpq.pipeline.gate import Gate

log = logging.getLogger(__name__)



@dataclass(frozen=True)
class WorkerSpec:
    #: the driver's SearchRequest (`for_workers`, as JSON): the model, task, backend,
    #: calibration and measurement a worker evaluates with
    request: dict
    env: dict[str, str]  # TRT_MPQ_CACHE, PYTHONPATH (a task module's folder)
    rule: dict | None = None  # the search split's adaptive rule (SequentialRule's fields)
    ranges: dict | None = None  # the driver's calibration (Ranges.to_json_dict): calibrated once
    digests: dict | None = None  # the driver's model and data digests (`data_digests`)


#: variables that set the thread count of a BLAS or OpenMP library: a worker gets the driver's
#: (Ray gives a 1-CPU actor OMP_NUM_THREADS=1 otherwise)
THREAD_VARS = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS")


def data_digests(ws) -> dict[str, str]:
    """What a worker must see as the driver does: the prepared model, each split's data and
    the model inputs of its first samples (a split with a transform digests its stored form
    only: this is where a transform that computes other inputs in a worker shows)."""
    from trt_mpq.task import SPLITS

    out = {"model": ws.model_digest}
    for s in SPLITS:
        split = ws.task.split(s)
        out[f"{s} split"] = split.digest
        h = hashlib.sha256()
        for feed, _ in split.head(8).batches(8):
            for k in sorted(feed):
                h.update(k.encode())
                h.update(np.ascontiguousarray(feed[k]).tobytes())
        out[f"{s} inputs"] = h.hexdigest()[:16]
    return out


def check_same_data(ws, expected: dict[str, str] | None) -> None:
    """ConfigError when this process computes another model or other data than the driver."""
    if not expected:
        return
    here = data_digests(ws)
    differ = [k for k, v in expected.items() if here.get(k) != v]
    if differ:
        raise ConfigError(
            f"this Ray worker computes a different {', '.join(differ)} than the driver "
            f"({', '.join(f'{here.get(k)} vs {expected[k]}' for k in differ)}): its plans "
            "would be measured on other data. Make the model file and the task's data the same "
            "on every node, and its transforms independent of the thread count (e.g. no BLAS "
            "matrix product whose summation order follows OMP_NUM_THREADS), or set "
            f"{'/'.join(THREAD_VARS)} alike for the driver and every node")


def open_evaluator(spec: WorkerSpec):
    """The evaluator a worker measures with, built from the driver's request as the driver
    builds its own."""
    from trt_mpq.calib import Ranges
    from trt_mpq.measure.sequential import SequentialRule
    from trt_mpq.pipeline.evaluator import Evaluator, shared_cache
    from trt_mpq.pipeline.request import SearchRequest

    os.environ.update(spec.env)
    for p in reversed(spec.env.get("PYTHONPATH", "").split(os.pathsep)):
        if p and p not in sys.path:
            sys.path.insert(0, p)
    request = SearchRequest.from_json_dict(spec.request)
    ws = request.model.open(progress=False).at_shapes(request.measure.shapes,
                                                      request.measure.shape_weights)
    check_same_data(ws, spec.digests)
    backend = request.backend.create(request.model.cache)
    backend.check_can_run()
    ranges = (Ranges.from_json_dict(spec.ranges) if spec.ranges is not None
              else ws.calibrate(request.calibration))
    evaluator = Evaluator(ws, backend, ranges, request.measure, None,
                          Path(tempfile.mkdtemp(prefix="trt-mpq-worker-")),
                          shared=shared_cache(ws, backend),
                          rule=SequentialRule(**spec.rule) if spec.rule else None)
    evaluator.__enter__()
    return evaluator


def _cause(e: Exception) -> str:
    """The last line of a Ray actor's creation error: the exception it raised."""
    lines = [ln.strip() for ln in str(e).splitlines() if ln.strip()]
    return lines[-1] if lines else type(e).__name__


def placements(nodes: list[dict], gpu: bool) -> list[tuple[str, dict]]:
    """(node id, actor resources) of each worker, from `ray.nodes()`: one per GPU for a
    backend that times on GPUs, else one per node with a CPU (one timing per device)."""
    out = []
    for n in nodes:
        if not n.get("Alive"):
            continue
        res = n.get("Resources", {})
        if gpu:
            out += [(n["NodeID"], {"num_cpus": 0, "num_gpus": 1})] * int(res.get("GPU", 0))
        elif res.get("CPU", 0) >= 1:
            out.append((n["NodeID"], {"num_cpus": 1}))
    return out


def like_the_driver(kinds: list[str], driver: str, mix: bool) -> list[int]:
    """Indices of the workers whose timing device is of the driver's type (all with `mix`):
    ratios timed on different device types never share a frontier unless asked for."""
    return [i for i, k in enumerate(kinds) if mix or k == driver]


class EvalWorker:
    """One per timing device (a Ray actor): evaluates one plan at a time."""

    def __init__(self, spec: str) -> None:
        self.evaluator = open_evaluator(WorkerSpec(**json.loads(spec)))
        import ray

        ctx = ray.get_runtime_context()
        gpus = ",".join(str(g) for g in ctx.get_accelerator_ids().get("GPU", []))
        self.device = (f"{socket.gethostname()}/{ctx.get_node_id()[:8]}"
                       + (f"/gpu{gpus}" if gpus else ""))

    def where(self) -> tuple[str, str]:
        """This worker's name and the type of device it times on."""
        return self.device, self.evaluator.backend.timing_device()

    def evaluate(self, plan: dict, label: str, gate: dict | None) -> dict:
        from trt_mpq.pipeline.gate import Gate

        ev = self.evaluator.evaluate(Plan.from_json_dict(plan), label,
                                     gate=Gate.from_json_dict(gate) if gate else None)
        return dataclasses.replace(ev, device=self.device).to_json_dict()


class RayExecutor:
    """Evaluate batches of plans on a Ray cluster (`address`: an existing cluster, e.g.
    "auto" or "ray://head:10001"; None starts a local Ray on this machine)."""

    def __init__(self, spec: WorkerSpec, address: str | None = None, gpu: bool = False,
                 mix_devices: bool = False) -> None:
        try:
            import ray  # noqa: F401
        except ImportError:
            raise ConfigError("--executor ray needs Ray: pip install 'trt-mpq[ray]'") from None
        self.spec = spec
        self.address = address
        self.gpu = gpu  # the backend times on GPUs: one worker per GPU
        self.mix_devices = mix_devices
        self.actors: list = []
        self.devices: dict = {}  # actor -> its name
        self.kinds: dict[str, str] = {}  # worker name -> the device type it times on

    def start(self, rule: dict | None, ranges: dict | None = None,
              digests: dict | None = None, kind: str | None = None) -> None:
        """One worker per timing device, each given the search split's rule, the driver's
        calibration `ranges` and its `digests` (a worker whose model or data differ refuses to
        start). Workers timing on another device type than the driver's (`kind`) are left
        out unless `mix_devices`."""
        import ray
        from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

        if not ray.is_initialized():
            ray.init(address=self.address, include_dashboard=False, log_to_driver=False,
                     configure_logging=False)
        spec = json.dumps(dataclasses.asdict(dataclasses.replace(
            self.spec, rule=rule, ranges=ranges, digests=digests)))
        env = {k: os.environ[k] for k in THREAD_VARS if k in os.environ}
        actor = ray.remote(max_restarts=0)(EvalWorker)
        started = [actor.options(
            scheduling_strategy=NodeAffinitySchedulingStrategy(node, soft=False),
            runtime_env={"env_vars": env} if env else None, **resources).remote(spec)
            for node, resources in placements(ray.nodes(), self.gpu)]
        alive, kinds, why = [], [], []
        for a in started:
            try:
                self.devices[a], k = ray.get(a.where.remote())
                alive.append(a)
                kinds.append(k)
            except ray.exceptions.RayActorError as e:
                why.append(_cause(e))
                log.warning("a Ray worker could not start: %s", why[-1])
        if not alive:
            what = "GPU" if self.gpu else "CPU"
            raise TrtMpqError("no Ray worker could start: " + (why[0] if why else f"no node "
                              f"with a {what}") + f"; the search needs at least one node with a "
                              f"{what}, the model, the task and the cache folder")
        keep = like_the_driver(kinds, kind, self.mix_devices or kind is None)
        left = [i for i in range(len(alive)) if i not in keep]
        for i in left:
            ray.kill(alive[i])
        if left:
            log.warning("Ray: %d worker(s) left out, timing on another device type than this "
                        "driver's (%s): %s; --mix-devices uses them too (their latency ratios "
                        "then share one frontier)", len(left), kind,
                        "; ".join(f"{self.devices[alive[i]]}: {kinds[i]}" for i in left))
        if not keep:
            raise TrtMpqError(f"no Ray worker times on this driver's device type ({kind}); run "
                              "the driver on a node of the type you want plans timed on, or "
                              "pass --mix-devices")
        self.actors = [alive[i] for i in keep]
        self.kinds = {self.devices[alive[i]]: kinds[i] for i in keep}
        log.info("Ray: %d worker(s), one per %s: %s", len(self.actors),
                 "GPU" if self.gpu else "node", ", ".join(self.kinds))

    @property
    def workers(self) -> int:
        return len(self.actors)

    def evaluate(self, items: list[tuple[Plan, str, Gate | None]],
                 on_result: Callable[[Evaluation], None] | None = None) -> list[Evaluation]:
        """Evaluate (plan, label, gate) items, each on one idle worker (`on_result` sees each
        evaluation as it arrives); a worker that dies hands its plan to another."""
        import ray

        pending = list(range(len(items)))
        results: dict[int, Evaluation] = {}
        running: dict = {}  # object ref -> (item index, actor)
        idle = list(self.actors)
        while pending or running:
            while pending and idle:
                i, a = pending.pop(0), idle.pop(0)
                plan, label, gate = items[i]
                running[a.evaluate.remote(plan.to_json_dict(), label,
                                          gate.to_json_dict() if gate else None)] = (i, a)
            (ref,), _ = ray.wait(list(running), num_returns=1)
            i, a = running.pop(ref)
            try:
                results[i] = Evaluation.from_json_dict(ray.get(ref))
                idle.append(a)
                if on_result is not None:
                    on_result(results[i])
            except ray.exceptions.RayActorError:
                self.actors.remove(a)
                log.warning("Ray worker %s died evaluating %s; %d left, the plan goes to "
                            "another", self.devices.get(a, "?"), items[i][1], len(self.actors))
                if not self.actors:
                    raise TrtMpqError("every Ray worker died; continue with --resume (nothing "
                                      "measured is lost)") from None
                pending.insert(0, i)
        return [results[i] for i in range(len(items))]

    def close(self) -> None:
        import ray

        for a in self.actors:
            ray.kill(a)
        self.actors = []


def make_executor(request, backend) -> RayExecutor | None:
    """None (evaluate here) or a RayExecutor whose workers rebuild `request`'s workspace,
    backend and measurement (`SearchRequest.for_workers`); Ray not installed: ConfigError."""
    from trt_mpq.backends import backend_spec

    ex = request.executor
    if ex.kind == "local":
        return None
    path = os.pathsep.join(p for p in [os.environ.get("PYTHONPATH", ""), os.getcwd()] if p)
    worker_request = request.for_workers()
    env = {"TRT_MPQ_CACHE": str(worker_request.model.cache), "PYTHONPATH": path}
    return RayExecutor(WorkerSpec(request=worker_request.to_json_dict(), env=env),
                       ex.ray_address, gpu=backend_spec(backend.name).gpu,
                       mix_devices=ex.mix_devices)


__all__ = ["THREAD_VARS", "EvalWorker", "RayExecutor", "WorkerSpec", "check_same_data",
           "data_digests", "like_the_driver", "make_executor", "open_evaluator", "placements"]
