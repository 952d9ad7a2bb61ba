"""A whole search as one call. `run_request` runs a `SearchRequest` as `trt-mpq search` does
(checks before any work, the output folder, calibration, the executor); `search_job` opens the
evaluation store for its context, runs the search and writes every output file."""

from __future__ import annotations

import logging
import shutil
import time
from dataclasses import replace
from pathlib import Path

from trt_mpq.backends.base import Backend
from trt_mpq.calib import CalibConfig, Ranges
from trt_mpq.errors import TrtMpqError
from trt_mpq.measure.latency import MeasureConfig
from trt_mpq.pipeline.config import SearchConfig
from trt_mpq.pipeline.folders import STORE_FILE, search_folder
from trt_mpq.pipeline.outputs import write_search_outputs
from trt_mpq.pipeline.request import OutputConfig, SearchRequest
from trt_mpq.pipeline.search import low_precisions, run_search
from trt_mpq.pipeline.workspace import Workspace
from trt_mpq.report import write_json
from trt_mpq.store import Store

log = logging.getLogger(__name__)
REQUEST_FILE = "request.json"


class SearchInterrupted(KeyboardInterrupt):
    """The search was interrupted; `saved` evaluations are in the store in `out`."""

    def __init__(self, out: Path, saved: int) -> None:
        super().__init__(f"{saved} evaluation(s) saved in {out}")
        self.out = out
        self.saved = saved


def store_context(ws: Workspace, backend: Backend, ranges: Ranges,
                  measure: MeasureConfig) -> dict:
    """What an evaluation store belongs to: a store opened for another context is refused, so a
    resumed search never mixes measurements of another model, data, backend or setting."""
    return {"model": ws.model_digest, "task_data": ws.task.data_digest,
            "backend": dict(backend.describe()), "ranges": ranges.digest,
            "measure": measure.to_json_dict(), "latency_batch": ws.task.latency_batch,
            # the declared deployment shapes and weights (absent: the task's own shape)
            **({"shapes": ws.shapes.to_json_dict()} if ws.shapes is not None else {})}


def run_request(request: SearchRequest, progress: bool | None = None,
                argv: list[str] | None = None) -> tuple[Path, dict]:
    """Run `request` as `trt-mpq search` does: every check that can fail fast (the sensitivity
    metric, the backend, the model and task, the precisions, a budget the holdout cannot
    certify, the executor, the output folder) before any long work, then calibration and the
    search. Returns (the output folder, result.json's content)."""
    from trt_mpq.pipeline.executor import make_executor
    from trt_mpq.pipeline.judging import choose_metric, resolvable
    from trt_mpq.sensitivity import get_metric

    t_start = time.perf_counter()
    config = request.search
    get_metric(config.sensitivity)
    backend = request.backend.create(request.model.cache)
    backend.check_can_run()
    ws = request.model.open(progress)
    ws, metric_choice = choose_metric(ws, config, request.model.metric)
    if metric_choice["reason"]:
        log.warning("%s", metric_choice["reason"])
        # workers and a rerun of request.json open the task judged the same way
        request = replace(request, model=replace(request.model, metric="fallback"))
    ws = ws.at_shapes(request.measure.shapes, request.measure.shape_weights)  # fit the model?
    low_precisions(ws, backend, config.precision)  # refuse impossible precisions
    resolvable(ws.task, config)  # and budgets the holdout cannot certify
    executor = make_executor(request, backend)  # and an executor that cannot run
    out = search_folder(request.output.out, request.output.resume, ws.task.name, backend.name)
    ranges = ws.calibrate(request.calibration)
    setup_s = time.perf_counter() - t_start
    log.info("search %s on %s, budget %s -> %s", ws.task.name, backend.name,
             config.budget.describe(), out)
    stored = replace(request, output=OutputConfig(out=out))
    result = search_job(ws, backend, ranges, request.calibration, request.measure, config, out,
                        argv=argv, setup_s=setup_s, executor=executor,
                        request=stored.to_json_dict(), metric_choice=metric_choice)
    return out, result


def search_job(ws: Workspace, backend: Backend, ranges: Ranges, calib: CalibConfig,
               measure: MeasureConfig, config: SearchConfig, out: Path,
               argv: list[str] | None = None, setup_s: float = 0.0, executor=None,
               request: dict | None = None, metric_choice: dict | None = None) -> dict:
    """Run the search into `out` (created if needed; an existing store there is resumed) and
    return result.json's content; `request` (its JSON) is kept as request.json, which
    `trt-mpq search --request` runs again. Bad input found before anything was measured
    removes the folders this call created; an interrupt raises `SearchInterrupted` (the store
    keeps every finished evaluation)."""
    created = out  # the top-most folder this call creates
    while not created.parent.exists():
        created = created.parent
    created = None if created.exists() else created
    out.mkdir(parents=True, exist_ok=True)
    if request is not None:
        write_json(out / REQUEST_FILE, request)
    with Store(out / STORE_FILE, store_context(ws, backend, ranges, measure)) as store:
        try:
            outcome = run_search(ws, backend, ranges, measure, config, out, store, executor)
        except TrtMpqError:
            if created is not None and len(store) == 0:  # nothing measured: leave nothing
                store.close()
                shutil.rmtree(created, ignore_errors=True)
            raise
        except KeyboardInterrupt:
            raise SearchInterrupted(out, len(store)) from None
        try:
            return write_search_outputs(out, ws, backend, outcome, config, calib, ranges,
                                        measure, argv=argv, setup_s=setup_s,
                                        metric_choice=metric_choice)
        except KeyboardInterrupt:  # every evaluation is stored: --resume rewrites the outputs
            raise SearchInterrupted(out, len(store)) from None


__all__ = ["REQUEST_FILE", "STORE_FILE", "SearchInterrupted", "run_request", "search_job",
           "store_context"]
