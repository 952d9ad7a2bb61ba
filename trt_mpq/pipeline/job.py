"""A whole search as one call: open the evaluation store for its context, run the search and
write every output file. The CLI (and anything else that starts searches) calls `search_job`."""

from __future__ import annotations

import shutil
from pathlib import Path

from trt_mpq.backends.base import Backend
from trt_mpq.calib import CalibConfig, Ranges
from trt_mpq.errors import TrtMpqError
from trt_mpq.measure.latency import MeasureConfig
from trt_mpq.pipeline.outputs import write_search_outputs
from trt_mpq.pipeline.search import SearchConfig, run_search
from trt_mpq.pipeline.workspace import Workspace
from trt_mpq.store import Store

STORE_FILE = "evaluations.sqlite"


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
            "measure": measure.to_json_dict(), "latency_batch": ws.task.latency_batch}


def search_job(ws: Workspace, backend: Backend, ranges: Ranges, calib: CalibConfig,
               measure: MeasureConfig, config: SearchConfig, out: Path,
               argv: list[str] | None = None, setup_s: float = 0.0, executor=None) -> dict:
    """Run the search into `out` (created if needed; an existing store there is resumed) and
    return result.json's content. Bad input found before anything was measured removes the
    folders this call created; an interrupt raises `SearchInterrupted` (the store keeps every
    finished evaluation)."""
    created = out  # the top-most folder this call creates
    while not created.parent.exists():
        created = created.parent
    created = None if created.exists() else created
    out.mkdir(parents=True, exist_ok=True)
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
                                        measure, argv=argv, setup_s=setup_s)
        except KeyboardInterrupt:  # every evaluation is stored: --resume rewrites the outputs
            raise SearchInterrupted(out, len(store)) from None


__all__ = ["STORE_FILE", "SearchInterrupted", "search_job", "store_context"]
