"""`trt-mpq serve` with a zoo model (zoo: shares the session's resnet-digits build): a job
submitted through the API runs the CLI's own search and reaches the CLI's answer."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parents[1] / "e2e"))
from test_serve import Server, assert_same_answer  # noqa: E402

pytestmark = pytest.mark.zoo

OPTIONS = {"metric": "agreement", "repeats": 20, "warmup": 3, "sweep": 2,
           "runtime-options": False}


def _result(out: Path) -> dict:
    return json.loads((out / "result.json").read_text())


def test_a_zoo_job_reaches_the_clis_answer(resnet_digits, tmp_path):
    _, cache, _ = resnet_digits
    out = tmp_path / "cli"
    flags = [x for k, v in OPTIONS.items()
             for x in ((f"--{k}", str(v)) if not isinstance(v, bool) else
                       ((f"--{k}",) if v else (f"--no-{k}",)))]
    r = subprocess.run([sys.executable, "-m", "trt_mpq", "search", "resnet-digits",
                        "--max-drop", "1%", "--backend", "ort-cpu", "--out", str(out),
                        "--no-progress",
                        *flags],
                       env=dict(os.environ, TRT_MPQ_CACHE=str(cache)), capture_output=True,
                       text=True)
    assert r.returncode == 0, r.stderr[-3000:]
    server = Server(tmp_path / "serve", cache).start()
    try:
        status, job = server.request("POST", "/api/jobs", {"model": "resnet-digits",
                                                          "max_drop": "1%", "options": OPTIONS})
        assert status == 201, job
        job = server.wait(job["id"])
        assert job["state"] == "done" and job["exit_code"] == 0, job
    finally:
        server.stop()
    api_out = server.root / "jobs" / job["id"] / "out"
    # the same search: the same request, but for the output folder
    cli, api = (json.loads((d / "request.json").read_text()) for d in (out, api_out))
    assert cli.pop("output") == {"out": str(out), "resume": False}
    assert api.pop("output") == {"out": str(api_out), "resume": False}
    assert api == cli
    assert "--request" in _result(api_out)["command"]
    assert_same_answer(api_out, out)
