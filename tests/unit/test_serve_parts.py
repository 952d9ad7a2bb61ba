"""The service's parts without a server: request validation into the CLI's own search
arguments, the job store's queue (one claim per job, recovery after a crash, cancel and
resume), and the frontier the page draws."""

from __future__ import annotations

import shlex
import threading
from pathlib import Path

import pytest

from trt_mpq.serve.app import frontier
from trt_mpq.serve.jobs import CANCELLED, DONE, FAILED, QUEUED, RUNNING, JobStore
from trt_mpq.serve.spec import SpecError, validate

FIXTURES = Path(__file__).parents[1] / "fixtures"
UPLOAD = "ab" * 32


@pytest.fixture()
def uploads(tmp_path):
    d = tmp_path / "uploads"
    d.mkdir()
    (d / f"{UPLOAD}.onnx").write_bytes(b"x")
    return d


def test_a_zoo_job_becomes_the_search_request_the_cli_would_make(uploads):
    from trt_mpq.cli.parser import build_parser
    from trt_mpq.cli.search import search_request

    spec, request = validate({"model": "resnet-digits", "max_drop": "1%",
                              "options": {"strategy": "boundary", "repeats": 20,
                                          "runtime-options": False, "full-frontier": True,
                                          "metric": "agreement"}}, uploads, None)
    assert spec["model"] == "resnet-digits" and spec["backend"] == "ort-cpu"
    assert request.search.strategy == "boundary" and request.measure.repeats == 20
    assert not request.search.runtime_options and request.search.full_frontier
    assert request.model.metric == "agreement"
    # the same request as the command line with the same settings
    argv = ["search", "resnet-digits", "--max-drop", "1%", "--strategy", "boundary",
            "--repeats", "20", "--no-runtime-options", "--full-frontier", "--metric",
            "agreement"]
    assert search_request(build_parser().parse_args(argv)) == request
    # and the command line it prints makes it again
    again = shlex.split(request.command_line())
    assert again[:3] == ["trt-mpq", "search", "resnet-digits"] and set(again) == {"trt-mpq",
                                                                                  *argv}
    assert search_request(build_parser().parse_args(again[1:])) == request


def test_an_upload_job_names_a_task_module_of_the_tasks_folder(uploads):
    spec, request = validate({"upload": UPLOAD, "task": "digits_task:make_task",
                              "max_drop": 0.02}, uploads, FIXTURES)
    assert request.model.model == str(uploads / f"{UPLOAD}.onnx")
    assert request.model.task == "digits_task:make_task"
    assert spec["upload"] == UPLOAD and spec["max_drop"] == "0.02"
    assert not request.search.budget.relative and request.search.budget.max_drop == 0.02


@pytest.mark.parametrize("body, message", [
    ([1, 2], "JSON object"),
    ({"max_drop": "1%"}, "exactly one of"),
    ({"model": "resnet-digits", "upload": UPLOAD, "max_drop": "1%"}, "exactly one of"),
    ({"model": "no-such-model", "max_drop": "1%"}, "unknown model 'no-such-model'"),
    ({"model": "resnet-digits"}, '"max_drop" is required'),
    ({"model": "resnet-digits", "max_drop": "lots"}, "budget|max-drop|drop"),
    ({"model": "resnet-digits", "max_drop": "1%", "backend": "cuda"},
     "--backend takes one of ort-cpu"),
    ({"model": "resnet-digits", "max_drop": "1%", "options": {"out": "/etc"}},
     "set by the server"),
    ({"model": "resnet-digits", "max_drop": "1%", "options": {"--torch": "os:system"}},
     "set by the server"),
    ({"model": "resnet-digits", "max_drop": "1%", "options": {"cache-dir": "/"}},
     "set by the server"),
    ({"model": "resnet-digits", "max_drop": "1%", "options": {"frobnicate": 1}},
     "unknown setting --frobnicate"),
    ({"model": "resnet-digits", "max_drop": "1%", "options": {"strategy": "magic"}},
     "--strategy takes one of bisection"),
    ({"model": "resnet-digits", "max_drop": "1%", "options": {"repeats": "many"}},
     "--repeats takes an integer in 3..100000, got 'many'"),
    ({"model": "resnet-digits", "max_drop": "1%", "options": {"repeats": [1]}},
     "--repeats takes an integer"),
    ({"model": "resnet-digits", "max_drop": "1%", "options": {"repeats": -5}},
     "--repeats takes an integer in 3..100000, got -5"),
    ({"model": "resnet-digits", "max_drop": "1%", "options": {"threads": 100000}},
     "--threads takes an integer in 1..1024"),
    ({"model": "resnet-digits", "max_drop": "1%", "options": {"final-cap": float("nan")}},
     "--final-cap takes a finite value"),
    ({"model": "resnet-digits", "max_drop": "1%", "options": {"confidence": float("inf")}},
     "--confidence takes a finite value"),
    ({"model": "resnet-digits", "max_drop": float("nan")}, "cannot read the budget"),
    ({"model": "resnet-digits", "max_drop": "1%", "options": {"executor": "ray",
                                                               "ray-address": "h:1"}},
     "set by the server"),
    ({"model": "resnet-digits", "max_drop": "1%", "options": {"mix-devices": True}},
     "set by the server"),
    ({"model": "resnet-digits", "max_drop": "1%", "options": {"max-drop": "5%"}},
     "field of the job"),
    ({"model": "resnet-digits", "max_drop": "1%", "options": {"strategy": "boundary",
                                                               "probes": "yes"}},
     "--probes takes true or false"),
    ({"model": "resnet-digits", "max_drop": "1%", "options": {"probes": True}},
     "--probes applies to boundary, not --strategy bisection"),
    ({"model": "resnet-digits", "max_drop": "1%", "extra": 1}, "unknown field"),
    ({"model": "resnet-digits", "max_drop": "1%", "task": "digits_task:make_task"},
     "for an uploaded model"),
    ({"upload": "../../etc/passwd", "task": "digits_task:make_task", "max_drop": "1%"},
     "unknown upload"),
    ({"upload": "cd" * 32, "task": "digits_task:make_task", "max_drop": "1%"}, "unknown upload"),
    ({"upload": UPLOAD, "task": "../digits_task:make_task", "max_drop": "1%"}, "MODULE:FUNCTION"),
    ({"upload": UPLOAD, "task": "os:system", "max_drop": "1%"}, "no task module 'os'"),
    ({"upload": UPLOAD, "task": "digits_task", "max_drop": "1%"}, "MODULE:FUNCTION"),
])
def test_bad_requests_are_refused_with_what_to_send(uploads, body, message):
    with pytest.raises(SpecError, match=message):
        validate(body, uploads, FIXTURES)


def test_uploads_need_a_tasks_folder(uploads):
    with pytest.raises(SpecError, match="without --tasks-dir"):
        validate({"upload": UPLOAD, "task": "digits_task:make_task", "max_drop": "1%"},
                 uploads, None)


def test_each_queued_job_is_claimed_once_per_device(tmp_path):
    jobs = JobStore(tmp_path / "jobs.sqlite")
    for i in range(30):
        jobs.submit({"i": i}, ["m"], "cpu")
    gpu = jobs.submit({"i": "g"}, ["m"], "cuda:0")
    claimed: list[str] = []
    lock = threading.Lock()

    def worker():
        while (job := jobs.claim("cpu")) is not None:
            with lock:
                claimed.append(job.id)

    threads = [threading.Thread(target=worker) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(claimed) == len(set(claimed)) == 30  # none twice, none lost
    assert jobs.get(gpu.id).state == QUEUED  # another device's queue
    assert {j.state for j in jobs.all() if j.device == "cpu"} == {RUNNING}
    assert [j.spec["i"] for j in jobs.all()][:3] == [0, 1, 2]  # kept in submission order


def test_a_claim_is_one_transaction_even_when_workers_interleave(tmp_path, monkeypatch):
    """Two workers whose every read is followed by a pause (so the other runs in between, as a
    busy machine schedules them): each queued job is still claimed by exactly one. A claim
    that read the oldest queued job and marked it running in two steps would hand it to
    both."""
    import time

    class Pausing:
        def __init__(self, db):
            self.db = db

        def execute(self, sql, *args):
            cursor = self.db.execute(sql, *args)
            if sql.lstrip().upper().startswith("SELECT"):
                time.sleep(0.02)  # the other worker's turn
            return cursor

        def __getattr__(self, name):
            return getattr(self.db, name)

    jobs = JobStore(tmp_path / "jobs.sqlite")
    for i in range(8):
        jobs.submit({"i": i}, {}, "cpu")
    real = JobStore._db
    monkeypatch.setattr(JobStore, "_db", lambda self: Pausing(real(self)))
    claimed: list[str] = []

    def worker():
        while (job := jobs.claim("cpu")) is not None:
            claimed.append(job.id)

    threads = [threading.Thread(target=worker) for _ in range(2)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    assert len(claimed) == len(set(claimed)) == 8


def test_recovery_cancel_and_resume(tmp_path):
    jobs = JobStore(tmp_path / "jobs.sqlite")
    a, b = jobs.submit({}, [], "cpu"), jobs.submit({}, [], "cpu")
    assert jobs.claim("cpu").id == a.id
    # the server died with `a` running: a new server queues it again, first in line
    again = JobStore(tmp_path / "jobs.sqlite")
    assert again.recover() == [a.id]
    job = again.claim("cpu")
    assert job.id == a.id and job.attempts == 2 and "interrupted" not in job.message
    # cancelling: a queued job at once, a running one is flagged for its worker
    assert again.request_cancel(b.id).state == CANCELLED
    assert again.request_cancel(a.id).cancel
    again.finish(a.id, CANCELLED, 130, "cancelled")
    assert again.requeue(a.id) and again.get(a.id).state == QUEUED
    again.claim("cpu")
    again.finish(a.id, DONE, 0, "budget met")
    assert not again.requeue(a.id)  # a finished job stays finished
    again.finish(b.id, FAILED, 2, "bad")
    assert again.requeue(b.id)


def test_the_frontier_keeps_plans_no_other_beats_on_both_axes():
    pts = [{"seq": 1, "status": "ok", "ratio": 1.0, "drop": 0.0},
           {"seq": 2, "status": "ok", "ratio": 0.6, "drop": 0.02},
           {"seq": 3, "status": "ok", "ratio": 0.7, "drop": 0.03},  # beaten by 2
           {"seq": 4, "status": "ok", "ratio": 0.8, "drop": 0.01},
           {"seq": 5, "status": "build_failed", "ratio": None, "drop": None},
           {"seq": 6, "status": "ok", "ratio": 0.6, "drop": 0.05}]  # same speed, worse
    assert frontier(pts) == [2, 4, 1]


def test_the_servers_executor_is_set_on_every_request_and_never_shown(uploads):
    from trt_mpq.pipeline.request import ExecutorConfig, SearchRequest

    ray = ExecutorConfig(kind="ray", ray_address="10.1.2.3:6379")
    spec, request = validate({"model": "resnet-digits", "max_drop": "1%",
                              "options": {"repeats": "20"}}, uploads, None, ray)
    assert request.executor == ray
    again = SearchRequest.from_json_dict(request.to_json_dict())  # what the worker runs
    assert again.executor == ray
    # the job shows the settings as validation made them, and none of the server's own
    assert spec["options"] == {"repeats": 20}
    assert "10.1.2.3" not in repr(spec) and "ray" not in repr(spec)
    _, local = validate({"model": "resnet-digits", "max_drop": "1%"}, uploads, None)
    assert local.executor == ExecutorConfig()


@pytest.mark.parametrize("body, message", [
    ({"upload": UPLOAD + "\n", "task": "digits_task:make_task", "max_drop": "1%"},
     "unknown upload"),
    ({"upload": UPLOAD, "task": "digits_task:make_task\n", "max_drop": "1%"},
     "MODULE:FUNCTION"),
    ({"upload": UPLOAD, "task": "digits_task:TRAIN", "max_drop": "1%"},
     "no public function 'TRAIN'"),
    ({"upload": UPLOAD, "task": "digits_task:Path", "max_drop": "1%"},
     "no public function 'Path'"),  # imported, not its own
    ({"upload": UPLOAD, "task": "digits_task:_net", "max_drop": "1%"},
     "no public function '_net'"),
    ({"upload": UPLOAD, "task": "digits_task:" + "x" * 300, "max_drop": "1%"},
     "MODULE:FUNCTION"),
])
def test_names_are_matched_whole_and_a_factory_is_a_public_function(uploads, body, message):
    with pytest.raises(SpecError, match=message):
        validate(body, uploads, FIXTURES)


def test_task_functions_reads_the_module_without_importing_it(tmp_path):
    from trt_mpq.serve.spec import task_functions

    mod = tmp_path / "boom.py"
    mod.write_text("raise SystemExit('imported!')\nfrom os import system\nx = 1\n"
                   "def make(): pass\nasync def amake(): pass\ndef _hidden(): pass\n"
                   "class K:\n    def method(self): pass\n")
    assert task_functions(mod) == ["make"]
    (tmp_path / "bad.py").write_text("def (:")
    assert task_functions(tmp_path / "bad.py") == []


def test_a_row_that_cannot_be_read_does_not_break_the_store(tmp_path):
    import sqlite3

    from trt_mpq.serve.jobs import QueueFull

    jobs = JobStore(tmp_path / "jobs.sqlite")
    with pytest.raises(ValueError):
        jobs.submit({"x": float("nan")}, {}, "cpu")  # never stored
    a = jobs.submit({}, {}, "cpu", "10.0.0.1", max_unfinished=2)
    jobs.submit({}, {}, "cpu", "10.0.0.1", max_unfinished=2)
    with pytest.raises(QueueFull):
        jobs.submit({}, {}, "cpu", "10.0.0.1", max_unfinished=2)
    jobs.submit({}, {}, "cpu", "10.0.0.2", max_unfinished=2)  # per client
    jobs.request_cancel(a.id)
    jobs.submit({}, {}, "cpu", "10.0.0.1", max_unfinished=2)  # a cancelled one frees a place
    db = sqlite3.connect(tmp_path / "jobs.sqlite", isolation_level=None)
    db.execute("UPDATE jobs SET spec='{broken', request='[' WHERE id=?", (a.id,))
    db.close()
    shown = jobs.get(a.id)
    assert shown.spec == {"unreadable": True} and shown.request is None
    assert len(jobs.all()) == 4
    running = jobs.claim("cpu")
    assert not jobs.delete(running.id)  # running: refused
    assert jobs.delete(a.id) and jobs.get(a.id) is None


def test_clean_and_redact_make_what_clients_read_safe(tmp_path):
    import json

    from trt_mpq.serve.redact import Redactor, clean

    assert clean({"a": float("nan"), "b": [float("inf"), 1.5], "c": "x" * 5000,
                  "d": (1, 2), "e": object}) == {"a": None, "b": [None, 1.5],
                                                 "c": "x" * 1000 + "...", "d": [1, 2],
                                                 "e": "<class 'object'>"}
    deep: list = [1]
    for _ in range(30):
        deep = [deep]
    assert "1" not in json.dumps(clean({"deep": deep}), allow_nan=False)  # nesting bounded
    root = tmp_path / "serve"
    (root / "jobs" / "0001-abcdef12").mkdir(parents=True)
    r = Redactor.for_server(root, tmp_path / "cache", FIXTURES, "10.9.8.7:6379")
    job = r.for_job(root / "jobs" / "0001-abcdef12")
    text = (f"$ trt-mpq search --request {root}/jobs/0001-abcdef12/request.json --out "
            f"{root}/jobs/0001-abcdef12/out {root}/uploads/{UPLOAD}.onnx {tmp_path}/cache/zoo "
            f"{FIXTURES}/digits_task.py ray at 10.9.8.7:6379, other job {root}/jobs/0002-x")
    assert job(text) == ("$ trt-mpq search --request <job>/request.json --out <job>/out "
                         f"<uploads>/{UPLOAD}.onnx <cache>/zoo <tasks>/digits_task.py ray at "
                         "<ray-address>, other job <jobs>/0002-x")


def test_retention_deletes_old_finished_jobs_and_unused_uploads(tmp_path):
    import os
    import time

    from trt_mpq.serve.housekeeping import disk_used, sweep

    root = tmp_path / "serve"
    (root / "uploads").mkdir(parents=True)
    jobs = JobStore(root / "jobs.sqlite")
    now = time.time()
    old_done = jobs.submit({"upload": "a" * 64}, {}, "cpu")
    old_queued = jobs.submit({"upload": "b" * 64}, {}, "cpu")
    new_done = jobs.submit({"upload": "c" * 64}, {}, "cpu")
    for j in (old_done, new_done):
        (root / "jobs" / j.id).mkdir(parents=True)
        (root / "jobs" / j.id / "log.txt").write_text("x" * 100)
    jobs.claim("cpu")
    jobs.finish(old_done.id, DONE, 0, "ok")
    jobs.request_cancel(new_done.id)
    for name in ("a", "b", "c", "d"):
        (root / "uploads" / f"{name * 64}.onnx").write_bytes(b"x" * 10)
        os.utime(root / "uploads" / f"{name * 64}.onnx", (now - 5 * 86400,) * 2)
    (root / "uploads" / ".x.part").write_bytes(b"x")
    assert disk_used(root) == 200 + 41
    # a week later, with 3 days' retention: the job finished 'now' is 7 days old too
    gone = sweep(root, jobs, days=3, now=now + 7 * 86400)
    assert sorted(gone["jobs"]) == sorted([old_done.id, new_done.id])
    assert old_queued.id in {j.id for j in jobs.all()}  # unfinished: kept
    assert not (root / "jobs" / old_done.id).exists()
    # uploads: the queued job's is kept, the others (unused, old) go, the partial one too
    assert sorted(p.name for p in (root / "uploads").iterdir()) == ["b" * 64 + ".onnx"]
    assert sweep(root, jobs, days=3, now=now) == {"jobs": [], "uploads": []}


def test_one_server_per_root(tmp_path):
    import subprocess
    import sys

    from trt_mpq.errors import ConfigError
    from trt_mpq.serve.housekeeping import lock_root

    held = lock_root(tmp_path)
    with pytest.raises(ConfigError, match="another trt-mpq serve"):
        lock_root(tmp_path)  # a second open file description: flock refuses it too
    code = ("import sys; from pathlib import Path; from trt_mpq.serve.housekeeping import "
            "lock_root\ntry:\n    lock_root(Path(sys.argv[1]))\nexcept Exception as e:\n"
            "    print(e); sys.exit(2)")
    r = subprocess.run([sys.executable, "-c", code, str(tmp_path)], capture_output=True,
                       text=True)
    assert r.returncode == 2 and "another trt-mpq serve" in r.stdout
    held.close()
    lock_root(tmp_path).close()  # free again


def test_the_plans_view_gives_the_answers_boundaries_as_the_strip_shows_them():
    from trt_mpq.serve.boundaries import answer_boundaries

    assert answer_boundaries({"plan_digest": "x"}) is None  # a result from before accounts
    row = {"src": "a", "dst": "b", "from": "fp32", "to": "int8", "tensors": ["t"],
           "nodes": [{"name": "t_QuantizeLinear", "op_type": "QuantizeLinear"}],
           "estimated_cost": 0.02, "measured_ms": 0.05, "elements": 9,
           "kernels": [{"name": "t_QuantizeLinear", "op": "QuantizeLinear", "ms": 0.05,
                        "shared": 1}]}
    view = answer_boundaries({"boundaries": {
        "estimate": {"fitted": True, "plans": 3}, "measured": {"source": "onnxruntime profiler"},
        "boundaries": [row]}})
    assert view["estimate"] == {"fitted": True, "reason": ""}
    assert view["measured"]["source"] == "onnxruntime profiler"
    (b,) = view["list"]
    assert b["kernels"] == [["QuantizeLinear", 0.05]] and b["layers"] == []
    assert b["tensors"] == ["t"] and "elements" not in b
