"""Where the search's plans are evaluated: in this process one after another (the default), or
spread over a Ray cluster (`--executor ray`).

With Ray the driver keeps the strategy and the store (one writer); each batch a strategy
proposes is spread over one worker per node, an actor that builds the same workspace, backend,
calibration and evaluator as the CLI (from the same `trt-mpq search` arguments, so the cache
folder must be reachable from every node: a shared filesystem, or the same path on each) and
materializes, builds, evaluates and times one plan at a time. A plan's latency is timed on its
worker, interleaved with that worker's own baseline, so one timing runs per node and each ratio
compares like with like; the evaluation records the node it ran on (`Evaluation.device`). A
worker that dies mid-plan loses nothing measured: its plan goes to another worker, and the
driver, if it dies, resumes from the store with `--resume` as always.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import socket
import sys
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from trt_mpq.errors import ConfigError, TrtMpqError
from trt_mpq.plan import Plan
from trt_mpq.results import Evaluation

log = logging.getLogger(__name__)

EXECUTORS = ("local", "ray")


@dataclass(frozen=True)
class WorkerSpec:
    argv: list[str]  # `trt-mpq search` arguments: model, --task, backend and measure flags
    env: dict[str, str]  # TRT_MPQ_CACHE, PYTHONPATH (a task module's folder)
    rule: dict | None = None  # the search split's adaptive rule (SequentialRule's fields)


def open_evaluator(spec: WorkerSpec):
    """The evaluator a worker measures with, built as `trt-mpq search` builds its own."""
    from trt_mpq.cli.main import (_backend, _calib_config, _measure, _workspace,
                                  build_parser)
    from trt_mpq.measure.sequential import SequentialRule
    from trt_mpq.pipeline.evaluator import Evaluator, shared_cache

    os.environ.update(spec.env)
    for p in reversed(spec.env.get("PYTHONPATH", "").split(os.pathsep)):
        if p and p not in sys.path:
            sys.path.insert(0, p)
    args = build_parser().parse_args(["search", *spec.argv])
    ws = _workspace(args)
    backend = _backend(args)
    backend.check_can_run()
    ranges = ws.calibrate(_calib_config(args))
    evaluator = Evaluator(ws, backend, ranges, _measure(args), None,
                          Path(tempfile.mkdtemp(prefix="trt-mpq-worker-")),
                          shared=shared_cache(ws, backend),
                          rule=SequentialRule(**spec.rule) if spec.rule else None)
    evaluator.__enter__()
    return evaluator


class EvalWorker:
    """One per node (a Ray actor): evaluates one plan at a time."""

    def __init__(self, spec: str) -> None:
        self.evaluator = open_evaluator(WorkerSpec(**json.loads(spec)))
        import ray

        self.device = f"{socket.gethostname()}/{ray.get_runtime_context().get_node_id()[:8]}"

    def where(self) -> str:
        return self.device

    def evaluate(self, plan: dict, label: str, gate: float | None) -> dict:
        ev = self.evaluator.evaluate(Plan.from_json_dict(plan), label, gate=gate)
        return dataclasses.replace(ev, device=self.device).to_json_dict()


class RayExecutor:
    """Evaluate batches of plans on a Ray cluster (`address`: an existing cluster, e.g.
    "auto" or "ray://head:10001"; None starts a local Ray on this machine)."""

    def __init__(self, spec: WorkerSpec, address: str | None = None) -> None:
        try:
            import ray  # noqa: F401
        except ImportError:
            raise ConfigError("--executor ray needs Ray: pip install 'trt-mpq[ray]'") from None
        self.spec = spec
        self.address = address
        self.actors: list = []
        self.devices: dict = {}

    def start(self, rule: dict | None) -> None:
        import ray
        from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

        if not ray.is_initialized():
            ray.init(address=self.address, include_dashboard=False, log_to_driver=False,
                     configure_logging=False)
        spec = json.dumps(dataclasses.asdict(dataclasses.replace(self.spec, rule=rule)))
        nodes = [n for n in ray.nodes() if n["Alive"] and n["Resources"].get("CPU", 0) >= 1]
        actor = ray.remote(num_cpus=1, max_restarts=0)(EvalWorker)
        self.actors = [actor.options(scheduling_strategy=NodeAffinitySchedulingStrategy(
            n["NodeID"], soft=False)).remote(spec) for n in nodes]
        alive = []
        for a in self.actors:
            try:
                self.devices[a] = ray.get(a.where.remote())
                alive.append(a)
            except ray.exceptions.RayActorError as e:
                log.warning("a Ray worker could not start: %s", e)
        if not alive:
            raise TrtMpqError("no Ray worker could start (see the Ray logs); the search needs "
                              "at least one node with a CPU and the cache folder")
        self.actors = alive
        log.info("Ray: %d worker(s), one per node: %s", len(alive),
                 ", ".join(self.devices[a] for a in alive))

    @property
    def workers(self) -> int:
        return len(self.actors)

    def evaluate(self, items: list[tuple[Plan, str, float | None]],
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
                running[a.evaluate.remote(plan.to_json_dict(), label, gate)] = (i, a)
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


__all__ = ["EXECUTORS", "EvalWorker", "RayExecutor", "WorkerSpec", "open_evaluator"]
