"""One worker per timing device: it takes that device's queued jobs one at a time, so two
searches never time each other's noise on one device.

Each job runs the CLI itself on its request (`python -m trt_mpq search --request
<job>/request.json --out <job>/out`) in a child process: the API and the CLI run one and the
same search, a job's outputs are the files a CLI
search writes, and a crash or a cancel cannot take the server down. A cancel interrupts the
child (SIGINT, as Ctrl-C: the search saves its state); a job started again resumes with
`--resume` from its stored evaluations. The child dies with the server: it is started as
`python -m trt_mpq.serve.child --parent PID search ...`, which sets its own PR_SET_PDEATHSIG
before it becomes the search (no `preexec_fn` in a forked child of this threaded server), so a
server killed with -9 leaves no search timing in the background; the restarted server finds the
job `running`, queues it again and it resumes.
"""

from __future__ import annotations

import logging
import os
import shutil
import signal
import subprocess
import sys
import threading
from pathlib import Path

from trt_mpq.pipeline.job import REQUEST_FILE, STORE_FILE
from trt_mpq.report import write_json
from trt_mpq.serve.jobs import CANCELLED, DONE, FAILED, QUEUED, Job, JobStore

log = logging.getLogger(__name__)

EXIT_MESSAGES = {0: "budget met", 1: "budget not met: no quantized plan faster than the "
                 "baseline stayed within the budget (see report.md)"}


def job_dir(root: Path, job_id: str) -> Path:
    return root / "jobs" / job_id


def last_error(log_file: Path) -> str:
    """The search's own one-line error (`trt-mpq search: error: ...`), else its last line."""
    try:
        lines = [ln.strip() for ln in log_file.read_text(errors="replace").splitlines()
                 if ln.strip()]
    except OSError:
        return ""
    for ln in reversed(lines):
        if "error:" in ln:
            return ln
    return lines[-1] if lines else ""


class Worker(threading.Thread):
    def __init__(self, device: str, jobs: JobStore, root: Path, env: dict[str, str],
                 tasks_dir: Path | None, poll_s: float = 0.3) -> None:
        super().__init__(name=f"trt-mpq worker {device}", daemon=True)
        self.device = device
        self.jobs = jobs
        self.root = root
        self.env = env
        self.tasks_dir = tasks_dir
        self.poll_s = poll_s
        self.stopping = threading.Event()
        self.current: str | None = None  # the running job's id

    def stop(self) -> None:
        self.stopping.set()

    def run(self) -> None:
        while not self.stopping.is_set():
            try:
                job = self.jobs.claim(self.device)
            except Exception:  # noqa: BLE001 - a locked database: try again
                log.exception("claiming a job on %s", self.device)
                job = None
            if job is None:
                self.stopping.wait(self.poll_s)
                continue
            self.current = job.id
            try:
                self._run(job)
            except Exception as e:  # noqa: BLE001 - the job fails, the worker goes on
                log.exception("job %s", job.id)
                self.jobs.finish(job.id, FAILED, None, f"the server could not run it: {e}")
            finally:
                self.current = None

    def command(self, job: Job, out: Path) -> list[str]:
        if job.request is not None:
            request = out.parent / REQUEST_FILE
            write_json(request, job.request)
            search = ["--request", str(request)]
        else:  # queued by an older server: the arguments it was validated into
            search = list(job.argv)
        argv = [*search, "--out", str(out), "--no-progress"]
        if (out / STORE_FILE).is_file():
            argv.append("--resume")
        return [sys.executable, "-m", "trt_mpq.serve.child", "--parent", str(os.getpid()),
                "search", *argv]

    def _run(self, job: Job) -> None:
        d = job_dir(self.root, job.id)
        out = d / "out"
        if out.exists() and not (out / STORE_FILE).is_file():
            shutil.rmtree(out)  # started before, nothing measured: start afresh
        d.mkdir(parents=True, exist_ok=True)
        env = dict(self.env)
        if "task" in job.spec and self.tasks_dir is not None:
            env["PYTHONPATH"] = os.pathsep.join(
                [str(self.tasks_dir), *filter(None, [env.get("PYTHONPATH")])])
        if self.device.startswith("cuda:"):
            env["CUDA_VISIBLE_DEVICES"] = self.device.split(":", 1)[1]
        argv = self.command(job, out)
        with open(d / "log.txt", "ab") as logf:
            logf.write(f"$ trt-mpq {' '.join(argv[argv.index('search'):])}\n".encode())
            logf.flush()
            proc = subprocess.Popen(argv, stdout=logf, stderr=subprocess.STDOUT, env=env,
                                    cwd=d)
            interrupted = False
            while True:
                try:
                    code = proc.wait(timeout=self.poll_s)
                    break
                except subprocess.TimeoutExpired:
                    pass
                if interrupted:
                    continue
                now = self.jobs.get(job.id)
                if self.stopping.is_set() or (now is not None and now.cancel):
                    proc.send_signal(signal.SIGINT)  # the search saves its state and exits
                    interrupted = True
        if code in EXIT_MESSAGES:
            self.jobs.finish(job.id, DONE, code, EXIT_MESSAGES[code])
        elif interrupted and self.stopping.is_set():
            self.jobs.finish(job.id, QUEUED, code, "interrupted by the server stopping; it "
                             "resumes when the server starts again")
        elif interrupted:
            self.jobs.finish(job.id, CANCELLED, code, "cancelled; its evaluations are saved "
                             "(POST .../resume continues it)")
        else:
            what = f"killed by signal {-code}" if code < 0 else f"exit code {code}"
            self.jobs.finish(job.id, FAILED, code,
                             last_error(d / "log.txt") or f"the search stopped ({what})")


__all__ = ["Worker", "job_dir", "last_error"]
