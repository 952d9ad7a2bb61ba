"""`trt-mpq serve`'s limits, probed from outside with test_serve_security.py's harness: body
caps and deadlines (oversize, chunked and slow bodies, slow request heads), streamed uploads
(the server's peak memory), concurrent uploads, queued jobs per client, the delete routes, one
server per root, the serve flags, and a token server started on a root prepared for retention
and the disk limit (the token cookie flow, the access log).
"""

from __future__ import annotations

import http.client
import os
import socket
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))
from test_serve_security import (  # noqa: E402
    TOKEN,
    Srv,
    a_job,
    cleanup,
    free_port,
    tasks_folder,
    tiny_model,
)


@pytest.fixture(scope="module")
def tasks(tmp_path_factory) -> Path:
    return tasks_folder(tmp_path_factory.mktemp("tasks"))


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> bytes:
    return tiny_model(tmp_path_factory.mktemp("m"))


@pytest.fixture(scope="module")
def srv(tmp_path_factory, tasks):
    s = Srv(tmp_path_factory.mktemp("a") / "serve", tasks, "--max-upload-mb", "80",
            "--max-concurrent-uploads", "1", "--max-queued", "3", "--request-timeout", "2",
            "--retention-days", "0", "--max-disk-gb", "0")
    yield s
    s.stop()


# -- 4. bodies, uploads, jobs and disk have bounds ----------------------------------------------
def _open(srv: Srv, head: str) -> socket.socket:
    s = socket.create_connection(("127.0.0.1", srv.port), timeout=30)
    s.sendall(head.encode())
    return s


def _answer(s: socket.socket) -> bytes:
    """What the server sends until it closes the connection."""
    data = b""
    try:
        while chunk := s.recv(65536):
            data += chunk
    except ConnectionResetError:
        pass
    return data


def _head(srv: Srv, method: str, path: str, ctype: str, length: int) -> str:
    return (f"{method} {path} HTTP/1.1\r\nHost: 127.0.0.1:{srv.port}\r\nContent-Type: "
            f"{ctype}\r\nX-TRT-MPQ-CSRF: {srv.csrf}\r\nContent-Length: {length}\r\n\r\n")


def test_a_job_body_over_64_kib_is_refused_before_it_is_read(srv):
    t = time.time()
    s = _open(srv, _head(srv, "POST", "/api/jobs", "application/json", 2**30))
    answer = _answer(s)  # a 1 GiB body announced, none sent: answered at once
    s.close()
    assert answer.startswith(b"HTTP/1.1 413") and b"65,536 bytes" in answer, answer
    assert time.time() - t < 5
    # a chunked body (no length announced) is cut at the cap too
    conn = http.client.HTTPConnection("127.0.0.1", srv.port, timeout=30)
    conn.request("POST", "/api/jobs", body=iter([b"{" + b" " * 40000] * 4), encode_chunked=True,
                 headers={"Content-Type": "application/json", "X-TRT-MPQ-CSRF": srv.csrf})
    r = conn.getresponse()
    assert r.status == 413 and b"65,536" in r.read()
    conn.close()


def test_slow_bodies_and_slow_heads_are_timed_out(srv):
    """20 connections trickling 16 B/s (bodies and request heads): each is answered 408 or
    closed within the server's --request-timeout (2 s here) plus slack, not held open."""
    t = time.time()
    bodies = [_open(srv, _head(srv, "POST", "/api/jobs", "application/json", 10_000))
              for _ in range(10)]
    heads = [_open(srv, "GET /api/jobs HTTP/1.1\r\nHo") for _ in range(10)]
    idle = socket.create_connection(("127.0.0.1", srv.port), timeout=30)  # sends nothing
    for s in bodies + heads + [idle]:
        s.setblocking(False)
    closed: dict[int, bytes] = {}
    while len(closed) < 21 and time.time() - t < 15:
        for i, s in enumerate(bodies + heads + [idle]):
            if i in closed:
                continue
            try:
                s.send(b"x")
                data = s.recv(65536)
            except BlockingIOError:
                continue
            except (BrokenPipeError, ConnectionResetError):
                data = b""
            if data or data == b"":
                closed[i] = data
        time.sleep(1 / 16)
    took = time.time() - t
    assert len(closed) == 21, f"{21 - len(closed)} slow connections still open after {took:.0f} s"
    assert took < 8, took
    assert all(closed[i].startswith(b"HTTP/1.1 408") for i in range(10)), closed[0]
    assert b"too slowly" in closed[0]
    for s in bodies + heads + [idle]:
        s.close()
    assert srv.call("GET", "/api/jobs")[0] == 200  # and the server still answers


def test_uploads_stream_to_disk_with_a_cap_and_a_limit_on_concurrency(srv, tiny):
    uploads = srv.root / "uploads"
    # announced over the cap: refused at once, nothing read
    s = _open(srv, _head(srv, "POST", "/api/uploads", "application/octet-stream", 81 * 2**20))
    answer = _answer(s)
    s.close()
    assert answer.startswith(b"HTTP/1.1 413") and b"--max-upload-mb" in answer
    # one upload in progress (--max-concurrent-uploads 1): a second is refused with 429
    slow = _open(srv, _head(srv, "POST", "/api/uploads", "application/octet-stream", 10_000))
    slow.sendall(b"x" * 100)
    time.sleep(0.3)
    status, _, body = srv.upload(tiny)
    assert status == 429 and "--max-concurrent-uploads" in body["error"], body
    slow.close()
    time.sleep(0.3)
    # a 64 MiB body is streamed to disk: the server's peak memory barely moves (it held
    # the whole body, several times over, before)
    before = srv.vm("VmHWM")
    status, _, body = srv.upload(os.urandom(2**20) * 64)
    assert status == 400 and "not a usable ONNX model" in body["error"], body
    grew = srv.vm("VmHWM") - before
    assert grew < 48 * 1024, f"the server's peak memory grew by {grew / 1024:.0f} MiB"
    assert not [p for p in uploads.iterdir() if p.suffix != ".onnx"]  # no partial file left
    assert srv.upload(tiny)[0] == 201  # and the next upload goes through


def test_queued_jobs_per_client_are_limited(srv, tiny):
    cleanup(srv)
    ids = [a_job(srv, tiny)["id"] for _ in range(3)]
    status, _, body = srv.change("POST", "/api/jobs", {"model": "resnet-digits",
                                                      "max_drop": "1%"})
    assert status == 429 and "--max-queued" in body["error"], body
    srv.change("POST", f"/api/jobs/{ids[-1]}/cancel")
    srv.wait(ids[-1], ("cancelled",))
    ids.append(a_job(srv, tiny)["id"])  # a cancelled job no longer counts
    cleanup(srv)


def test_jobs_and_uploads_can_be_deleted(srv, tiny):
    cleanup(srv)
    job = a_job(srv, tiny)
    up = job["spec"]["upload"]
    srv.wait(job["id"], ("running",))
    status, _, body = srv.change("DELETE", f"/api/jobs/{job['id']}")
    assert status == 409 and "cancel it first" in body["error"]
    status, _, body = srv.change("DELETE", f"/api/uploads/{up}")
    assert status == 409 and "queued or running job" in body["error"]
    srv.change("POST", f"/api/jobs/{job['id']}/cancel")
    srv.wait(job["id"], ("cancelled",))
    assert (srv.root / "jobs" / job["id"]).is_dir()
    assert srv.change("DELETE", f"/api/jobs/{job['id']}")[2] == {"deleted": job["id"]}
    assert not (srv.root / "jobs" / job["id"]).exists()
    assert srv.call("GET", f"/api/jobs/{job['id']}")[0] == 404
    assert srv.change("DELETE", f"/api/jobs/{job['id']}")[0] == 404
    queued = a_job(srv, tiny)  # a queued job can be deleted too (it never runs)
    assert srv.change("DELETE", f"/api/jobs/{queued['id']}")[0] in (200, 409)
    cleanup(srv)
    assert srv.change("DELETE", f"/api/uploads/{up}")[2] == {"deleted": up}
    assert not (srv.root / "uploads" / f"{up}.onnx").exists()
    for bad in (up, up[:-1] + "%0A", "..%2Fjobs.sqlite"):
        assert srv.change("DELETE", f"/api/uploads/{bad}")[0] == 404


# -- 6. one server per root; the flags -----------------------------------------------------
def test_a_second_server_on_the_same_root_refuses_to_start(srv):
    r = subprocess.run([sys.executable, "-m", "trt_mpq", "serve", "--port", str(free_port()),
                        "--root", str(srv.root)], capture_output=True, text=True, timeout=60,
                       env=dict(os.environ, TRT_MPQ_CACHE=str(srv.root.parent / "cache")))
    assert r.returncode == 2, r.stderr
    assert f"another trt-mpq serve (PID {srv.proc.pid})" in r.stderr and \
        "Traceback" not in r.stderr, r.stderr
    assert (srv.root / "server.lock").read_text().strip() == str(srv.proc.pid)
    assert srv.call("GET", "/api/jobs")[0] == 200


def test_the_servers_flags_are_checked_before_it_starts(srv, tmp_path):
    def serve(*argv: str, **env: str) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "trt_mpq", "serve", "--port",
                               str(free_port()), *argv], capture_output=True, text=True,
                              timeout=60, env={**os.environ, "TRT_MPQ_TOKEN": "", **env})

    r = serve("--root", str(tmp_path / "r"), "--ray-address", "10.0.0.1:6379")
    assert r.returncode == 2 and "--ray-address needs --executor ray" in r.stderr, r.stderr
    # --token works but warns that it shows in ps (this one stops at the busy root)
    r = serve("--root", str(srv.root), "--token", "abc", "--host", "0.0.0.0")
    assert r.returncode == 2 and "ps" in r.stderr and "--token-file" in r.stderr, r.stderr
    empty = tmp_path / "empty"
    empty.write_text("\n")
    r = serve("--root", str(tmp_path / "r"), "--token-file", str(empty))
    assert r.returncode == 2 and "first line is empty" in r.stderr, r.stderr
    r = serve("--host", "0.0.0.0", "--root", str(tmp_path / "r"))
    assert r.returncode == 2 and "token" in r.stderr, r.stderr

# -- 5 and 4 again: a server with a token, retention and a disk limit --------------------------
@pytest.fixture(scope="module")
def tok(tmp_path_factory, tasks):
    """A token server (the token from $TRT_MPQ_TOKEN, -v for the access log) started on a root
    prepared for retention: an old finished job, a recent one holding 1.2 MB (over the 1 MB
    disk limit), an old unused upload, an old upload a kept job names, a partial upload a dead
    server left."""
    from trt_mpq.serve.jobs import DONE, JobStore

    root = tmp_path_factory.mktemp("b") / "serve"
    (root / "uploads").mkdir(parents=True)
    jobs = JobStore(root / "jobs.sqlite")
    old_up, kept_up = "a" * 64, "b" * 64
    old = jobs.submit({"upload": old_up}, {}, "cpu")
    recent = jobs.submit({"upload": kept_up}, {}, "cpu")
    for job in (old, recent):
        jobs.claim("cpu")
        jobs.finish(job.id, DONE, 0, "budget met")
        (root / "jobs" / job.id / "out").mkdir(parents=True)
        (root / "jobs" / job.id / "out" / "report.md").write_bytes(b"x" * 1_200_000)
    long_ago = time.time() - 40 * 86400
    db = sqlite3.connect(root / "jobs.sqlite", isolation_level=None)
    db.execute("UPDATE jobs SET finished=?, created=? WHERE id=?", (long_ago, long_ago, old.id))
    db.close()
    for name in (f"{old_up}.onnx", f"{kept_up}.onnx", ".dead.part"):
        (root / "uploads" / name).write_bytes(b"x")
        os.utime(root / "uploads" / name, (long_ago, long_ago))
    s = Srv(root, tasks, "--retention-days", "30", "--max-disk-gb", str(1e6 / 2**30), "-v",
            env={"TRT_MPQ_TOKEN": TOKEN})
    s.prepared = {"old": old.id, "recent": recent.id, "old_up": old_up, "kept_up": kept_up}
    yield s
    s.stop()


def test_retention_deletes_old_finished_jobs_and_unused_uploads_at_start(tok):
    p = tok.prepared
    deadline = time.time() + 30
    while (tok.root / "jobs" / p["old"]).exists():
        assert time.time() < deadline, tok.output()
        time.sleep(0.2)
    assert [j["id"] for j in tok.jobs()] == [p["recent"]]
    assert (tok.root / "jobs" / p["recent"] / "out" / "report.md").is_file()
    left = {f.name for f in (tok.root / "uploads").iterdir()}
    assert left == {f"{p['kept_up']}.onnx"}, left


def test_the_disk_limit_refuses_uploads_and_jobs(tok, tiny):
    status, _, body = tok.upload(tiny)
    assert status == 507 and "--max-disk-gb" in body["error"], body
    status, _, body = tok.change("POST", "/api/jobs", {"model": "resnet-digits",
                                                      "max_drop": "1%"})
    assert status == 507 and "--max-disk-gb" in body["error"], body
    assert not [p for p in (tok.root / "uploads").iterdir() if p.suffix == ".part"]


def test_with_a_token_the_page_signs_in_with_a_cookie(tok):
    assert tok.call("GET", "/")[0] == 401
    assert tok.call("GET", "/api/jobs")[0] == 401
    assert tok.call("GET", "/?token=wrong")[0] == 401
    status, h, _ = tok.call("GET", f"/?token={TOKEN}")
    assert status == 303 and h["location"] == "/", h
    cookie = h["set-cookie"]
    assert "HttpOnly" in cookie and "SameSite=Strict" in cookie and TOKEN not in cookie
    jar = {"Cookie": cookie.split(";")[0]}
    assert tok.call("GET", "/", headers=jar)[0] == 200
    assert tok.call("GET", "/api/jobs", headers=jar)[0] == 200
    assert tok.call("GET", "/api/jobs", headers={"Cookie": jar["Cookie"][:-2] + "00"})[0] == 401
    # a token in any other URL is refused (it would sit in logs and history)
    status, _, body = tok.call("GET", f"/api/jobs?token={TOKEN}")
    assert status == 401 and "Authorization: Bearer" in body["error"]
    # the cookie is ambient, so changes need the CSRF token too; a bearer client does not
    # (a job that does not exist: 404 once past the guard)
    path, json_ct = "/api/jobs/0001-deadbeef/cancel", {"Content-Type": "application/json"}
    assert tok.call("POST", path, b"", {**jar, **json_ct})[0] == 403
    assert tok.call("POST", path, b"", {**jar, **json_ct, "X-TRT-MPQ-CSRF": tok.csrf})[0] == 404
    assert tok.call("POST", path, b"", {**tok.bearer, **json_ct})[0] == 404
    assert tok.call("POST", path, b"", {"Authorization": "Bearer nope", **json_ct,
                                        "X-TRT-MPQ-CSRF": tok.csrf})[0] == 401
    # with a token the Host may be any name (a token, not the name, guards the server)
    assert tok.call("GET", "/api/jobs", headers=tok.bearer, host="box.example:80")[0] == 200
    # the access log (-v) has the requests, never the token
    time.sleep(0.3)
    out = tok.output()
    assert "GET /api/jobs 200" in out and "GET / 303" in out, out[-2000:]
    assert TOKEN not in out
