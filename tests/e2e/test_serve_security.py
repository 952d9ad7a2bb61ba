"""`trt-mpq serve`'s posture, probed from outside: a real server in its own process on
127.0.0.1, driven with raw http.client requests (forged Host, Origin, Sec-Fetch-Site and
Content-Type, NaN and oversize options, server settings in a request, task names, the headers,
what clients read). Its limits, the delete routes, one server per root, retention and the
token cookie flow: test_serve_limits.py, with the same harness (`Srv`).

The jobs here never search: their task factory (`wait_task:make_task`, written to the
server's --tasks-dir) sleeps, so a job stays queued or running for as long as a test needs and
costs no CPU. One server is shared by the module.
"""

from __future__ import annotations

import http.client
import json
import os
import socket
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest

TASK = "wait_task:make_task"
WAIT_TASK = '''"""A task factory that waits (a job that stays running until it is cancelled)."""
import time
from os import system  # noqa: F401 - a function the module imports, not one it defines

helper = 3


class Factory:
    pass


def _private():
    return None


def make_task():
    time.sleep(3600)
'''
TOKEN = "t0ken-for-tests-only"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Srv:
    """`python -m trt_mpq serve` on a free loopback port, spoken to with http.client."""

    def __init__(self, root: Path, tasks: Path, *extra: str, env: dict | None = None) -> None:
        self.root, self.port = root, free_port()
        self.log_path = root.parent / f"server-{self.port}.log"
        argv = [sys.executable, "-m", "trt_mpq", "serve", "--port", str(self.port), "--root",
                str(root), "--tasks-dir", str(tasks), *extra]
        full_env = dict(os.environ, TRT_MPQ_CACHE=str(root.parent / "cache"))
        full_env.pop("TRT_MPQ_TOKEN", None)
        full_env.update(env or {})
        self.log = open(self.log_path, "ab")
        self.proc = subprocess.Popen(argv, env=full_env, stdout=self.log,
                                     stderr=subprocess.STDOUT)
        self.bearer = {"Authorization": f"Bearer {full_env['TRT_MPQ_TOKEN']}"} \
            if full_env.get("TRT_MPQ_TOKEN") else {}
        deadline = time.time() + 60
        while True:
            assert self.proc.poll() is None, self.output()
            try:
                status, _, body = self.call("GET", "/api/session", headers=self.bearer)
                assert status in (200, 404), body  # 404: a server without CSRF tokens
                self.csrf = body["csrf"] if status == 200 else ""
                return
            except OSError:
                assert time.time() < deadline, self.output()
                time.sleep(0.2)

    def output(self) -> str:
        self.log.flush()
        return self.log_path.read_text(errors="replace")

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(2)
            try:
                self.proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.log.close()

    def call(self, method: str, path: str, body: bytes | None = None,
             headers: dict | None = None, host: str | None = None, timeout: float = 30):
        """(status, headers, JSON or bytes) of one request, on its own connection."""
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=timeout)
        try:
            conn.request(method, path, body=body,
                         headers={"Host": f"127.0.0.1:{self.port}" if host is None else host,
                                  **(headers or {})})
            r = conn.getresponse()
            payload, hdrs = r.read(), {k.lower(): v for k, v in r.getheaders()}
        finally:
            conn.close()
        assert r.status != 500, payload
        return r.status, hdrs, json.loads(payload) if "json" in hdrs.get("content-type", "") \
            else payload

    def change(self, method: str, path: str, body=None, headers: dict | None = None):
        """A state change as the page sends it: JSON, with the CSRF token."""
        data = json.dumps(body).encode() if body is not None else None
        return self.call(method, path, data, {"Content-Type": "application/json",
                                              "X-TRT-MPQ-CSRF": self.csrf, **self.bearer,
                                              **(headers or {})})

    def upload(self, data: bytes, headers: dict | None = None):
        return self.call("POST", "/api/uploads", data, {
            "Content-Type": "application/octet-stream", "X-TRT-MPQ-CSRF": self.csrf,
            **self.bearer, **(headers or {})})

    def jobs(self) -> list[dict]:
        status, _, body = self.call("GET", "/api/jobs", headers=self.bearer)
        assert status == 200, body
        return body["jobs"]

    def wait(self, job_id: str, states, timeout: float = 60) -> dict:
        deadline = time.time() + timeout
        while True:
            _, _, job = self.call("GET", f"/api/jobs/{job_id}", headers=self.bearer)
            if job["state"] in states:
                return job
            assert time.time() < deadline, (job, self.output()[-3000:])
            time.sleep(0.2)

    def vm(self, key: str = "VmHWM") -> int:
        """The server process's memory figure from /proc, in KiB."""
        for line in Path(f"/proc/{self.proc.pid}/status").read_text().splitlines():
            if line.startswith(key + ":"):
                return int(line.split()[1])
        raise AssertionError(key)


def tasks_folder(d: Path) -> Path:
    (d / "wait_task.py").write_text(WAIT_TASK)
    return d


def tiny_model(d: Path) -> bytes:
    import models

    return models.tiny_cnn(d / "tiny.onnx").read_bytes()


@pytest.fixture(scope="module")
def tasks(tmp_path_factory) -> Path:
    return tasks_folder(tmp_path_factory.mktemp("tasks"))


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> bytes:
    return tiny_model(tmp_path_factory.mktemp("m"))


@pytest.fixture(scope="module")
def srv(tmp_path_factory, tasks):
    s = Srv(tmp_path_factory.mktemp("a") / "serve", tasks, "--retention-days", "0")
    yield s
    s.stop()


def a_job(srv: Srv, tiny: bytes, **options) -> dict:
    status, _, up = srv.upload(tiny)
    assert status == 201, up
    status, _, job = srv.change("POST", "/api/jobs", {"upload": up["upload"], "task": TASK,
                                                     "max_drop": "1%", "options": options})
    assert status == 201, job
    return job


def cleanup(srv: Srv) -> None:
    """Cancel and delete every job (the per-client limit counts them)."""
    for job in srv.jobs():
        if job["state"] in ("queued", "running"):
            srv.change("POST", f"/api/jobs/{job['id']}/cancel")
            srv.wait(job["id"], ("cancelled", "failed", "done"))
        assert srv.change("DELETE", f"/api/jobs/{job['id']}")[0] == 200


# -- 1. any web page could drive the server ---------------------------------------------------
def test_a_rebinding_host_is_refused_and_loopback_names_are_not(srv):
    for host in ("rebind.attacker.example", f"rebind.attacker.example:{srv.port}",
                 f"10.0.0.1:{srv.port}", ""):
        for path in ("/api/jobs", "/", "/api/session"):
            status, _, body = srv.call("GET", path, host=host)
            assert status == 403 and "--allowed-host" in body["error"], (host, path, body)
    for host in (f"localhost:{srv.port}", f"127.0.0.1:{srv.port}", f"[::1]:{srv.port}",
                 "localhost", f"LOCALHOST:{srv.port}"):
        assert srv.call("GET", "/api/jobs", host=host)[0] == 200, host


def test_cross_site_requests_are_refused(srv, tiny):
    before = len(srv.jobs())
    body = json.dumps({"model": "resnet-digits", "max_drop": "1%"}).encode()
    ok = {"Content-Type": "application/json", "X-TRT-MPQ-CSRF": srv.csrf}
    for headers in ({"Origin": "http://evil.example"}, {"Origin": "null"},
                    {"Origin": f"http://localhost:{srv.port + 1}"},
                    {"Sec-Fetch-Site": "cross-site"}, {"Sec-Fetch-Site": "same-site"}):
        status, _, answer = srv.call("POST", "/api/jobs", body, {**ok, **headers})
        assert status == 403 and "refused" in answer["error"], (headers, answer)
        assert srv.call("GET", "/api/jobs", headers=headers)[0] == 403, headers
        assert srv.call("GET", "/api/jobs/0001-00000000/files/model.onnx",
                        headers=headers)[0] == 403
    # a link to the page from elsewhere still opens it; the same origin passes
    assert srv.call("GET", "/", headers={"Sec-Fetch-Site": "cross-site",
                                         "Sec-Fetch-Mode": "navigate"})[0] == 200
    status, _, answer = srv.call("POST", "/api/jobs", json.dumps({"model": "nope",
                                                                  "max_drop": "1%"}).encode(),
                                 {**ok, "Origin": f"http://127.0.0.1:{srv.port}",
                                  "Sec-Fetch-Site": "same-origin"})
    assert status == 400 and "unknown model" in answer["error"]
    assert len(srv.jobs()) == before


def test_state_changes_need_json_and_the_csrf_token(srv, tiny):
    uploads = set((srv.root / "uploads").iterdir())
    job = a_job(srv, tiny)
    uploads_now = set((srv.root / "uploads").iterdir())
    n = len(srv.jobs())
    body = json.dumps({"model": "resnet-digits", "max_drop": "1%"}).encode()
    simple = ("text/plain", "application/x-www-form-urlencoded", "multipart/form-data; b=x",
              None)
    for ctype in simple:  # what a cross-site form or a no-cors fetch can send
        headers = {"X-TRT-MPQ-CSRF": srv.csrf, **({"Content-Type": ctype} if ctype else {})}
        for method, path, data in (("POST", "/api/jobs", body),
                                   ("POST", "/api/uploads", tiny),
                                   ("POST", f"/api/jobs/{job['id']}/cancel", b""),
                                   ("DELETE", f"/api/jobs/{job['id']}", None)):
            status, _, answer = srv.call(method, path, data, headers)
            assert status == 415 and "Content-Type" in answer["error"], (ctype, path, answer)
    for csrf in (None, "", "wrong"):  # JSON, but no proof it comes from the page
        headers = {"Content-Type": "application/json",
                   **({"X-TRT-MPQ-CSRF": csrf} if csrf is not None else {})}
        status, _, answer = srv.call("POST", "/api/jobs", body, headers)
        assert status == 403 and "X-TRT-MPQ-CSRF" in answer["error"], answer
        status, _, answer = srv.call("POST", f"/api/jobs/{job['id']}/cancel", b"", headers)
        assert status == 403
        status, _, answer = srv.call("POST", "/api/uploads", tiny, {
            **headers, "Content-Type": "application/octet-stream"})
        assert status == 403
    assert len(srv.jobs()) == n and set((srv.root / "uploads").iterdir()) == uploads_now
    assert srv.call("GET", f"/api/jobs/{job['id']}")[2]["state"] in ("queued", "running")
    assert uploads <= uploads_now
    cleanup(srv)


# -- 2. a request cannot choose where the server connects or what it reads ---------------------
@pytest.mark.parametrize("options", [
    {"executor": "ray"}, {"ray-address": "10.0.0.1:6379"}, {"--ray-address": "auto"},
    {"mix-devices": True}, {"no-mix-devices": True}, {"out": "/tmp/x"}, {"resume": True},
    {"cache-dir": "/"}, {"torch": "os:system"}, {"task": "os:system"}])
def test_options_that_reach_outside_the_job_are_refused(srv, options):
    status, _, body = srv.change("POST", "/api/jobs", {"model": "resnet-digits",
                                                      "max_drop": "1%", "options": options})
    assert status == 400 and "set by the server" in body["error"], body


@pytest.mark.parametrize("task, message", [
    (TASK + "\n", "MODULE:FUNCTION"), ("wait_task:helper", "no public function 'helper'"),
    ("wait_task:system", "no public function 'system'"),
    ("wait_task:Factory", "no public function"), ("wait_task:_private", "no public function"),
    ("wait_task:time", "no public function"), ("../wait_task:make_task", "MODULE:FUNCTION"),
    ("os:system", "no task module 'os'")])
def test_a_task_is_a_public_function_of_a_tasks_dir_module(srv, tiny, task, message):
    up = srv.upload(tiny)[2]["upload"]
    status, _, body = srv.change("POST", "/api/jobs", {"upload": up, "task": task,
                                                      "max_drop": "1%"})
    assert status == 400 and message in body["error"], body
    status, _, body = srv.change("POST", "/api/jobs", {"upload": up + "\n", "task": TASK,
                                                      "max_drop": "1%"})
    assert status == 400 and "unknown upload" in body["error"]


def test_an_upload_with_external_data_is_refused(srv, tiny):
    """Its tensors would be read from a path the model names (outside the job)."""
    import onnx
    from onnx.external_data_helper import set_external_data

    model = onnx.load_model_from_string(tiny)
    weight = model.graph.initializer[0]
    set_external_data(weight, location="../../../../etc/passwd", offset=0, length=64)
    weight.ClearField("raw_data")
    weight.data_location = onnx.TensorProto.EXTERNAL
    status, _, body = srv.upload(model.SerializeToString())
    assert status == 400 and "external data" in body["error"], body


# -- 3. a bad value is a 400 and never stored; a stored job never breaks the list --------------
@pytest.mark.parametrize("raw, code, message", [
    (b'{"model": "resnet-digits", "max_drop": "1%", "options": {"repeats": NaN}}', 400,
     "NaN is not a number"),
    (b'{"model": "resnet-digits", "max_drop": Infinity}', 400, "Infinity"),
    (b'{"model": "resnet-digits", "max_drop": "1%", "options": {"final-cap": -Infinity}}', 400,
     "Infinity"),
    (b'{"model": "resnet-digits", "max_drop": "1%", "options": {"repeats": 1e999}}', 400,
     "finite"),
    (b'{"model": "resnet-digits", "max_drop": "1%", "options": {"metric": "' + b"x" * 300
     + b'"}}', 400, "--metric takes text of at most 200 characters"),
    (b'{"model": "resnet-digits", "max_drop": "1%", "options": {"strategy": "' + b"x" * 300
     + b'"}}', 400, "--strategy takes"),
    (b'{"model": "resnet-digits", "max_drop": "1%", "options": {"repeats": -5}}', 400,
     "--repeats takes an integer in"),
    (b'[' * 30000 + b']' * 30000, 400, "not JSON"),  # nesting deeper than Python's stack
    (b'{"model": "resnet-digits", "max_drop": "1%", "options": {"x": "' + b"y" * 3 * 2**20
     + b'"}}', 413, "over 65,536 bytes")])
def test_bad_values_are_refused_through_the_api_and_never_stored(srv, raw, code, message):
    import re

    n = len(srv.jobs())
    status, headers, body = srv.call("POST", "/api/jobs", raw, {
        "Content-Type": "application/json", "X-TRT-MPQ-CSRF": srv.csrf})
    assert status == code and re.search(message, body["error"]), body
    assert len(srv.jobs()) == n


def test_what_a_job_stores_and_shows_is_the_validated_request(srv, tiny):
    job = a_job(srv, tiny, repeats="20", **{"--warmup": 4.0, "strategy": "bisection"})
    # the settings as validation made them (types, defaults dropped), never the body as sent
    assert job["spec"]["options"] == {"repeats": 20, "warmup": 4}, job["spec"]
    assert job["spec"]["max_drop"] == "1%" and job["spec"]["task"] == TASK
    db = sqlite3.connect(srv.root / "jobs.sqlite")
    (spec, request), = db.execute("SELECT spec, request FROM jobs WHERE id=?", (job["id"],))
    db.close()
    assert json.loads(spec)["options"] == {"repeats": 20, "warmup": 4}
    assert json.loads(request)["executor"] == {"kind": "local", "ray_address": None,
                                               "mix_devices": False}
    cleanup(srv)


def test_a_stored_job_never_breaks_the_list(srv):
    db = sqlite3.connect(srv.root / "jobs.sqlite", isolation_level=None)
    rows = [("9001-0000dead", '{"model": "x", "options": {"repeats": NaN, "y": Infinity}}'),
            ("9002-0000beef", "{not json"), ("9003-0000cafe", '"' + "z" * 2**20 + '"')]
    for job_id, spec in rows:
        db.execute("INSERT INTO jobs (id, seq, state, device, spec, argv, created, finished) "
                   "VALUES (?, ?, 'done', 'cpu', ?, '[]', ?, ?)",
                   (job_id, int(job_id[:4]), spec, time.time(), time.time()))
    db.close()
    status, _, raw = srv.call("GET", "/api/jobs", headers={"Accept": "*/*"})
    assert status == 200
    shown = {j["id"]: j for j in raw["jobs"]}
    assert shown["9001-0000dead"]["spec"]["options"] == {"repeats": None, "y": None}
    assert shown["9002-0000beef"]["spec"] == {"unreadable": True}
    assert len(json.dumps(raw)) < 100_000
    for job_id, _ in rows:
        assert srv.call("GET", f"/api/jobs/{job_id}")[0] == 200
        assert srv.change("DELETE", f"/api/jobs/{job_id}")[0] == 200


# -- 5, 7. headers on every response; what clients read --------------------------------------
def test_every_response_carries_the_security_headers(srv, tiny):
    job = a_job(srv, tiny)
    srv.wait(job["id"], ("running",))
    time.sleep(0.5)
    for path in ("/", "/app.js", "/app.css", "/api/jobs", "/api/models", "/api/jobs/x",
                 f"/api/jobs/{job['id']}/files/log.txt", "/nope"):
        _, h, _ = srv.call("GET", path)
        csp = h.get("content-security-policy", "")
        assert "default-src 'none'" in csp and "script-src 'self'" in csp, (path, h)
        assert "unsafe-inline" not in csp and "frame-ancestors 'none'" in csp
        assert h.get("x-frame-options") == "DENY" and h.get("x-content-type-options") == \
            "nosniff" and h.get("referrer-policy") == "no-referrer", (path, h)
    _, h, page = srv.call("GET", "/")
    page = page.decode()
    assert "<style" not in page and "style=" not in page and "<script>" not in page
    assert f'<meta name="trt-mpq-csrf" content="{srv.csrf}">' in page
    assert "style=" not in srv.call("GET", "/app.js")[2].decode().replace("e.style", "")
    cleanup(srv)


def test_clients_read_no_server_paths(srv, tiny, tasks):
    job = a_job(srv, tiny)
    srv.wait(job["id"], ("running",))
    log = srv.call("GET", f"/api/jobs/{job['id']}/files/log.txt")[2].decode()
    assert "$ trt-mpq search --request <job>/request.json --out <job>/out" in log, log
    now = srv.call("GET", f"/api/jobs/{job['id']}")[2]
    assert now["phase"].startswith("$ trt-mpq search --request <job>/request.json"), now
    shown = json.dumps(now) + log + json.dumps(srv.jobs())
    for secret in (str(srv.root), str(srv.root.resolve()), str(tasks), sys.prefix):
        assert secret not in shown, secret
    # the job's files on disk keep the real paths (the search needs them)
    raw = (srv.root / "jobs" / job["id"] / "log.txt").read_text()
    assert str(srv.root) in raw
    cleanup(srv)
