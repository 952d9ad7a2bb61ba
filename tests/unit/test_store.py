import sqlite3

import pytest

from trt_mpq.errors import StoreError
from trt_mpq.measure import LatencyStats
from trt_mpq.plan import Plan, Precision
from trt_mpq.search import Evaluation, Status
from trt_mpq.store import Store


def _ev(p, metric=0.9):
    lat = LatencyStats.of([0.001, 0.002, 0.003])
    return Evaluation(plan=p, status=Status.OK, label="x", metric=metric, drop=0.01, rel_drop=0.011,
                      latency=lat, baseline_latency=lat, latency_ratio=1.0)


def test_put_get_persist_and_order(tmp_path):
    a = Plan.of({"g": Precision.INT8})
    b = Plan.of({"g": Precision.FP32})
    with Store(tmp_path / "s.sqlite", {"model": "m"}) as s:
        s.put(_ev(a))
        s.put(Evaluation(plan=b, status=Status.BUILD_FAILED, reason="boom"))
        s.put_blob("k", {"v": 1})
    with Store(tmp_path / "s.sqlite", {"model": "m"}) as s:
        assert len(s) == 2
        assert s.get(a.digest) == _ev(a)
        assert s.get(b.digest).reason == "boom"
        assert [e.plan for e in s.all()] == [a, b]
        assert s.get_blob("k") == {"v": 1} and s.get_blob("nope") is None
        assert s.get("0" * 16) is None
    mode = sqlite3.connect(tmp_path / "s.sqlite").execute("PRAGMA journal_mode").fetchone()[0]
    assert mode == "wal"


def test_store_refuses_another_search(tmp_path):
    Store(tmp_path / "s.sqlite", {"model": "m", "backend": "ort"}).close()
    with pytest.raises(StoreError, match="different search.*model"):
        Store(tmp_path / "s.sqlite", {"model": "other", "backend": "ort"})


def test_damaged_store_is_a_clear_error(tmp_path):
    (tmp_path / "s.sqlite").write_text("not a database" * 100)
    with pytest.raises(StoreError, match="cannot open"):
        Store(tmp_path / "s.sqlite", {})
