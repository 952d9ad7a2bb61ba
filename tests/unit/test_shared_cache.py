"""The cache of what belongs to the model across searches: the baseline's outputs per split and
sensitivity scores are computed once per (model, data, backend settings) and reused by a later
search in another --out; any change to the context recomputes them."""

from pathlib import Path

import models
import numpy as np
import pytest

from trt_mpq.backends import get_backend
from trt_mpq.calib import CalibConfig
from trt_mpq.measure import MeasureConfig
from trt_mpq.pipeline import analysis
from trt_mpq.pipeline import evaluator as evaluator_module
from trt_mpq.pipeline.evaluator import Evaluator, shared_cache
from trt_mpq.plan import Precision as P
from trt_mpq.qdq import Dialect
from trt_mpq.sensitivity import SensitivityConfig
from trt_mpq.store import shared as shared_module
from trt_mpq.store.shared import SharedCache

MEASURE = MeasureConfig(warmup=1, repeats=3, min_repeats=3)


class Counter:
    def __init__(self, value):
        self.calls = 0
        self.value = value

    def __call__(self):
        self.calls += 1
        return self.value


def test_arrays_are_computed_once_per_context(tmp_path):
    value = {"logits": np.arange(6, dtype=np.float32).reshape(3, 2)}
    compute = Counter(value)
    first = SharedCache(tmp_path, {"model": "a"}).arrays("outputs-search", compute)
    again = SharedCache(tmp_path, {"model": "a"}).arrays("outputs-search", compute)
    assert compute.calls == 1
    np.testing.assert_array_equal(again["logits"], value["logits"])
    assert again["logits"].dtype == np.float32 and set(first) == {"logits"}
    SharedCache(tmp_path, {"model": "b"}).arrays("outputs-search", compute)
    SharedCache(tmp_path, {"model": "a"}).arrays("outputs-holdout", compute)
    assert compute.calls == 3  # another context, another entry: both computed


def test_json_values_round_trip_and_the_context_is_written_beside_them(tmp_path):
    compute = Counter({"scores": {"g1": 0.5, "g2": float("inf")}})
    cache = SharedCache(tmp_path, {"model": "a"})
    cache.json("sensitivity:noise", compute)
    got = SharedCache(tmp_path, {"model": "a"}).json("sensitivity:noise", compute)
    assert compute.calls == 1 and got == {"scores": {"g1": 0.5, "g2": float("inf")}}
    context = (cache.dir / "context.json").read_text()
    assert '"model": "a"' in context and '"trt_mpq"' in context


def test_an_unreadable_entry_is_recomputed_and_replaced(tmp_path, caplog):
    compute = Counter({"y": np.ones(4)})
    cache = SharedCache(tmp_path, {"m": 1})
    cache.arrays("out", compute)
    (entry,) = cache.dir.glob("*.npz")
    entry.write_bytes(b"not an npz file")
    got = SharedCache(tmp_path, {"m": 1}).arrays("out", compute)
    assert compute.calls == 2 and np.all(got["y"] == 1)
    assert "unreadable" in caplog.text
    assert SharedCache(tmp_path, {"m": 1}).arrays("out", compute)["y"].shape == (4,)
    assert compute.calls == 2  # the replaced entry is good again


def test_no_root_keeps_nothing_and_big_outputs_are_not_kept(tmp_path, monkeypatch):
    compute = Counter({"y": np.zeros(1000)})
    SharedCache(None, {}).arrays("out", compute)
    SharedCache(None, {}).arrays("out", compute)
    assert compute.calls == 2
    monkeypatch.setattr(shared_module, "MAX_ARRAY_BYTES", 100)
    SharedCache(tmp_path, {}).arrays("big", compute)
    SharedCache(tmp_path, {}).arrays("big", compute)
    assert compute.calls == 4 and not list((tmp_path / "results").rglob("*.npz"))


def test_a_cache_that_cannot_be_written_does_not_fail_the_caller(tmp_path, caplog):
    blocker = tmp_path / "file"
    blocker.write_text("a file where the cache folder should be")
    compute = Counter({"y": np.ones(2)})
    got = SharedCache(blocker, {}).arrays("out", compute)
    assert np.all(got["y"] == 1) and "cannot write" in caplog.text


WRITE_FAILS_MIDWAY = """
import resource, signal, sys
from pathlib import Path
from trt_mpq.store.shared import SharedCache

signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # writes past the limit fail with EFBIG
resource.setrlimit(resource.RLIMIT_FSIZE, (1 << 20, 1 << 20))
cache = SharedCache(Path(sys.argv[1]), {})
path = cache._path("entry", ".json")
cache._write(path, b"x" * (4 << 20))  # 4 MiB: the write fails a quarter of the way in
"""


def test_an_entry_is_replaced_whole_or_not_at_all(tmp_path):
    """A write that fails midway (here: a file-size limit hits it after 1 MiB, as a full disk
    would) leaves the entry a reader finds as it was, and no temporary file behind: entries
    are written to a temporary file and renamed."""
    import subprocess
    import sys

    cache = SharedCache(tmp_path, {})
    path = cache._path("entry", ".json")
    cache._write(path, b'{"old": true}')
    r = subprocess.run([sys.executable, "-c", WRITE_FAILS_MIDWAY, str(tmp_path)],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    assert "cannot write" in r.stderr  # the failure was met, and logged, not raised
    assert path.read_bytes() == b'{"old": true}'
    assert sorted(p.name for p in path.parent.iterdir()) == sorted(["context.json", path.name])


# -- the evaluator and the sensitivity analysis use it ---------------------------------------------

@pytest.fixture(scope="module")
def workspace(tmp_path_factory):
    return models.cnn_workspace(tmp_path_factory.mktemp("shared"))


@pytest.fixture(scope="module")
def ranges(workspace):
    return workspace.calibrate(CalibConfig(num_samples=16))


def test_a_second_evaluator_reuses_the_baseline_outputs(workspace, ranges, tmp_path,
                                                        monkeypatch):
    passes: list[str] = []
    real = evaluator_module.compute_outputs

    def counting(runner, split, batch, *, desc="", progress=None):
        passes.append(desc)
        return real(runner, split, batch, desc=desc, progress=progress)

    monkeypatch.setattr(evaluator_module, "compute_outputs", counting)
    backend = get_backend("ort-cpu", threads=1)
    metrics = []
    for i in range(2):
        with Evaluator(workspace, backend, ranges, MEASURE, None, tmp_path / f"w{i}",
                       shared=shared_cache(workspace, backend)) as ev:
            metrics.append(ev.baseline.metric)
            holdout = ev.reference_outputs(workspace.task.holdout, "holdout")
    assert passes == ["baseline (search)", "baseline (holdout)"]  # the second run: none
    assert metrics[0] == metrics[1] and len(next(iter(holdout.values()))) == 16
    other = get_backend("ort-cpu", threads=2)  # other settings: computed again
    with Evaluator(workspace, other, ranges, MEASURE, None, tmp_path / "w2",
                   shared=shared_cache(workspace, other)):
        pass
    assert passes[-1] == "baseline (search)" and len(passes) == 3


def test_sensitivity_is_reused_across_runs_unless_a_user_twin_is_named(workspace, ranges,
                                                                       monkeypatch):
    runs = []
    real = analysis.get_metric

    def counting(name):
        runs.append(name)
        return real(name)

    monkeypatch.setattr(analysis, "get_metric", counting)
    backend = get_backend("ort-cpu", threads=1)
    low = {g: P.INT8 for g in workspace.group_names()}
    config = SensitivityConfig(samples=8)
    results = [analysis.sensitivity(workspace, ranges, Dialect.ORT_CPU, low, "noise", config,
                                    shared=shared_cache(workspace, backend)) for _ in range(2)]
    assert runs == ["noise"] and results[0].scores == results[1].scores
    other = SensitivityConfig(samples=4)
    analysis.sensitivity(workspace, ranges, Dialect.ORT_CPU, low, "noise", other,
                         shared=shared_cache(workspace, backend))
    assert runs == ["noise", "noise"]
    assert Path(workspace.cache_dir / "results").is_dir()
