"""A bounded load test of `trt-mpq serve` on loopback: 20 real search jobs queued at once on the CPU
device while bursts of 50 concurrent API requests (lists, job views, plan lists, event streams and
refused requests) run every 15 s until they finish, then checks that nothing errs, no job is lost,
and that the measurements of two jobs never overlapped on the device (each job's searches ran
between its start and finish, and no two jobs' [start, finish] intervals on one device intersect).

During the first burst, large uploads (valid ONNX models of 64 to 96 MiB, two at a time: the
server's --max-concurrent-uploads) stream in while 20 event streams stay open; the server's
resident memory is sampled throughout and its peak (VmHWM, /proc/PID/status) reported, since an
upload is streamed to disk and never held in the server's memory.

    python benchmarks/serve_load.py [--jobs 20] [--requests 50] [--uploads 64,80,96,96]

Prints a table (for RESULTS.md's "The search service under load"). The jobs are real:
resnet-digits judged by agreement at a 1% budget, with short timing settings so that 20 of them
finish in minutes on 2 cores.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

JOB = {"model": "resnet-digits", "max_drop": "1%",
       "options": {"metric": "agreement", "repeats": 20, "warmup": 3, "sweep": 2,
                   "runtime-options": False, "final-cap": 10}}


HEADERS: dict[str, str] = {}  # the server's CSRF token, once it is up


def call(base: str, method: str, path: str, body=None, raw: bytes | None = None
         ) -> tuple[int, float, bytes]:
    data = raw if raw is not None else json.dumps(body).encode() if body is not None else None
    req = urllib.request.Request(base + path, data=data, method=method)
    if method != "GET":
        req.add_header("Content-Type", "application/octet-stream" if raw is not None
                       else "application/json")
        for k, v in HEADERS.items():
            req.add_header(k, v)
    t = time.perf_counter()
    try:
        with urllib.request.urlopen(req, timeout=600) as r:
            status, payload = r.status, r.read()
    except urllib.error.HTTPError as e:
        status, payload = e.code, e.read()
    return status, time.perf_counter() - t, payload


def big_model(mib: int) -> bytes:
    """A valid ONNX model of about `mib` MiB: y = x + w, w one large float32 initializer."""
    import numpy as np
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    n = mib * 2**20 // 4
    w = numpy_helper.from_array(np.random.default_rng(mib).random(n, dtype=np.float32), "w")
    graph = helper.make_graph([helper.make_node("Add", ["x", "w"], ["y"])], "big",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [n])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [n])], [w])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    onnx.checker.check_model(model)
    return model.SerializeToString()


class Memory(threading.Thread):
    """Samples a process's resident memory (VmRSS) until stopped; `peak()` is its VmHWM."""

    def __init__(self, pid: int) -> None:
        super().__init__(daemon=True)
        self.pid, self.samples, self.stopping = pid, [], threading.Event()

    def read(self, key: str) -> int:
        for line in open(f"/proc/{self.pid}/status"):
            if line.startswith(key + ":"):
                return int(line.split()[1]) // 1024  # MiB
        return 0

    def run(self) -> None:
        while not self.stopping.wait(0.1):
            try:
                self.samples.append(self.read("VmRSS"))
            except OSError:
                return

    def peak(self) -> int:
        return self.read("VmHWM")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--jobs", type=int, default=20)
    ap.add_argument("--requests", type=int, default=50)
    ap.add_argument("--uploads", default="64,80,96,96",
                    help="sizes in MiB of the uploads sent during the first burst")
    ap.add_argument("--cache", default=None, help="TRT_MPQ_CACHE (default: the usual cache)")
    args = ap.parse_args()
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    base = f"http://127.0.0.1:{port}"
    root = Path(tempfile.mkdtemp(prefix="trt-mpq-serve-load-"))
    env = dict(os.environ)
    if args.cache:
        env["TRT_MPQ_CACHE"] = args.cache
    sizes = [int(x) for x in args.uploads.split(",") if x]
    models = {mib: big_model(mib) for mib in set(sizes)}
    server = subprocess.Popen([sys.executable, "-m", "trt_mpq", "serve", "--port", str(port),
                               "--root", str(root), "--max-upload-mb", "128", "--max-queued",
                               str(args.jobs + 10)], env=env,
                              stdout=subprocess.DEVNULL, stderr=open(root / "server.log", "wb"))
    try:
        for _ in range(300):
            try:
                _, _, payload = call(base, "GET", "/api/session")
                HEADERS["X-TRT-MPQ-CSRF"] = json.loads(payload)["csrf"]
                break
            except urllib.error.URLError:
                time.sleep(0.2)
        memory = Memory(server.pid)
        rss_start = memory.read("VmRSS")
        memory.start()
        t0 = time.perf_counter()
        ids = []
        for _ in range(args.jobs):
            status, _, payload = call(base, "POST", "/api/jobs", JOB)
            assert status == 201, payload
            ids.append(json.loads(payload)["id"])
        submit_s = time.perf_counter() - t0

        def one(i: int) -> tuple[str, int, float]:
            job = ids[i % len(ids)]
            kind = ["list", "job", "plans", "bad", "events"][i % 5]
            if kind == "list":
                status, dt, _ = call(base, "GET", "/api/jobs")
            elif kind == "job":
                status, dt, _ = call(base, "GET", f"/api/jobs/{job}")
            elif kind == "plans":
                status, dt, _ = call(base, "GET", f"/api/jobs/{job}/plans")
            elif kind == "bad":
                status, dt, _ = call(base, "POST", "/api/jobs", {"model": "nope",
                                                                  "max_drop": "1%"})
                return kind, 0 if status == 400 else status, dt
            else:  # an event stream, read for a moment then dropped
                t = time.perf_counter()
                try:
                    with urllib.request.urlopen(f"{base}/api/jobs/{job}/events",
                                                timeout=120) as r:
                        r.readline()
                        status = r.status
                except urllib.error.HTTPError as e:
                    status = e.code
                dt = time.perf_counter() - t
            return kind, 0 if status == 200 else status, dt

        # a burst of concurrent requests every 15 s until every job is finished, so that the
        # API is loaded while searches run, not only while they queue
        def send(mib: int) -> tuple[int, float]:
            status, dt, _ = call(base, "POST", "/api/uploads", raw=models[mib])
            return status, dt

        def stream(i: int) -> int:  # an event stream held open while the uploads run
            try:
                with urllib.request.urlopen(f"{base}/api/jobs/{ids[i % len(ids)]}/events",
                                            timeout=600) as r:
                    while not uploads_done.is_set() and r.readline():
                        pass
                    return r.status
            except (urllib.error.URLError, OSError):
                return -1

        # the first burst runs with the uploads (two at a time) and 20 open event streams
        uploads_done = threading.Event()
        streams_pool = ThreadPoolExecutor(20)
        streams = [streams_pool.submit(stream, i) for i in range(20)]
        t = time.perf_counter()
        with ThreadPoolExecutor(2) as pool:
            sent = pool.map(send, sizes)
            tb = time.perf_counter()
            with ThreadPoolExecutor(args.requests) as burst:
                answers = list(burst.map(one, range(args.requests)))
            first_burst_s = time.perf_counter() - tb
            sent = list(sent)
        uploads_s = time.perf_counter() - t
        rss_uploads = memory.peak()
        uploads_done.set()
        stream_codes = [f.result() for f in streams]
        streams_pool.shutdown()
        bursts = [first_burst_s]
        deadline = time.time() + 3600
        while time.time() < deadline:
            time.sleep(15)
            t = time.perf_counter()
            with ThreadPoolExecutor(args.requests) as pool:
                answers += list(pool.map(one, range(args.requests)))
            bursts.append(time.perf_counter() - t)
            _, _, payload = call(base, "GET", "/api/jobs")
            jobs = json.loads(payload)["jobs"]
            if all(j["state"] in ("done", "failed", "cancelled") for j in jobs):
                break
        errors = [a for a in answers if a[1]]
        wall_s = time.perf_counter() - t0
        rss_peak = memory.peak()
    finally:
        server.send_signal(signal.SIGINT)
        server.wait(timeout=120)
    mine = [j for j in jobs if j["id"] in ids]
    states = {s: sum(j["state"] == s for j in mine) for s in ("done", "failed", "cancelled")}
    spans = sorted((j["started"], j["finished"]) for j in mine if j["started"])
    overlaps = sum(b[0] < a[1] for a, b in zip(spans, spans[1:]))
    # every evaluation a job stored was written inside its own [start, finish]
    import sqlite3

    outside = 0
    for j in mine:
        db = root / "jobs" / j["id"] / "out" / "evaluations.sqlite"
        if db.is_file():
            con = sqlite3.connect(db)
            for (ts,) in con.execute("SELECT created FROM evaluations"):
                outside += not (j["started"] - 1 <= ts <= j["finished"] + 1)
            con.close()
    lat = [a[2] for a in answers if a[0] != "events"]
    answers_ = {json.dumps(json.loads((root / "jobs" / j["id"] / "out" / "result.json"
                                       ).read_text())["best"]["plan_digest"])
                for j in mine if j["state"] == "done"}
    print("| measure | value |\n|---|---|")
    print(f"| jobs submitted / done / failed / cancelled / lost | {len(ids)} / {states['done']} / "
          f"{states['failed']} / {states['cancelled']} / {len(ids) - len(mine)} |")
    print(f"| API requests (bursts of {args.requests} concurrent) / errors | {len(answers)} "
          f"({len(bursts)} bursts) / {len(errors)} |")
    print(f"| API request latency under load, median / max (s) | {statistics.median(lat):.3f} / "
          f"{max(lat):.3f} |")
    print(f"| burst wall, median / max (s) / {len(ids)} submissions (s) | "
          f"{statistics.median(bursts):.2f} / {max(bursts):.2f} / {submit_s:.2f} |")
    print(f"| overlapping job runs on the cpu device | {overlaps} |")
    print(f"| evaluations stored outside their job's run | {outside} |")
    print(f"| distinct answers (plan digests) | {len(answers_)} |")
    print(f"| all jobs finished in (s) | {wall_s:.0f} |")
    ok_uploads = sum(st == 201 for st, _ in sent)
    mib_s = sum(sizes) / uploads_s
    print(f"| uploads during the first burst: {', '.join(map(str, sizes))} MiB, 2 at a time / "
          f"accepted | {len(sizes)} ({sum(sizes)} MiB, {mib_s:.0f} MiB/s) / {ok_uploads} |")
    print(f"| event streams open meanwhile / answered 200 | {len(stream_codes)} / "
          f"{sum(c == 200 for c in stream_codes)} |")
    print(f"| server resident memory at start / peak during the uploads / peak overall (MiB) | "
          f"{rss_start} / {rss_uploads} / {rss_peak} |")
    if errors:
        print("errors:", errors[:5])
    return 0 if not errors and states["done"] == len(ids) and not overlaps and not outside \
        and ok_uploads == len(sizes) else 1


if __name__ == "__main__":
    sys.exit(main())
