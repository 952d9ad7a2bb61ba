"""A bounded load test of `trt-mpq serve` on loopback: 20 real search jobs queued at once on the CPU
device while bursts of 50 concurrent API requests (lists, job views, plan lists, event streams and
refused requests) run every 15 s until they finish, then checks that nothing errs, no job is lost,
and that the measurements of two jobs never overlapped on the device (each job's searches ran
between its start and finish, and no two jobs' [start, finish] intervals on one device intersect).

    python benchmarks/serve_load.py [--jobs 20] [--requests 50]

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
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

JOB = {"model": "resnet-digits", "max_drop": "1%",
       "options": {"metric": "agreement", "repeats": 20, "warmup": 3, "sweep": 2,
                   "runtime-options": False, "final-cap": 10}}


def call(base: str, method: str, path: str, body=None) -> tuple[int, float, bytes]:
    data = json.dumps(body).encode() if body is not None else None
    req = urllib.request.Request(base + path, data=data, method=method)
    t = time.perf_counter()
    try:
        with urllib.request.urlopen(req, timeout=120) as r:
            status, payload = r.status, r.read()
    except urllib.error.HTTPError as e:
        status, payload = e.code, e.read()
    return status, time.perf_counter() - t, payload


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--jobs", type=int, default=20)
    ap.add_argument("--requests", type=int, default=50)
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
    server = subprocess.Popen([sys.executable, "-m", "trt_mpq", "serve", "--port", str(port),
                               "--root", str(root)], env=env, stdout=subprocess.DEVNULL,
                              stderr=open(root / "server.log", "wb"))
    try:
        for _ in range(300):
            try:
                call(base, "GET", "/api/models")
                break
            except urllib.error.URLError:
                time.sleep(0.2)
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
        answers, bursts = [], []
        deadline = time.time() + 3600
        while time.time() < deadline:
            t = time.perf_counter()
            with ThreadPoolExecutor(args.requests) as pool:
                answers += list(pool.map(one, range(args.requests)))
            bursts.append(time.perf_counter() - t)
            _, _, payload = call(base, "GET", "/api/jobs")
            jobs = json.loads(payload)["jobs"]
            if all(j["state"] in ("done", "failed", "cancelled") for j in jobs):
                break
            time.sleep(15)
        errors = [a for a in answers if a[1]]
        wall_s = time.perf_counter() - t0
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
    if errors:
        print("errors:", errors[:5])
    return 0 if not errors and states["done"] == len(ids) and not overlaps and not outside \
        else 1


if __name__ == "__main__":
    sys.exit(main())
