import numpy as np
import pytest

from trt_mpq.errors import DataError, TaskError
from trt_mpq.task import Split, Task, accuracy, check_inputs, load_task_factory


def _task(**over):
    x = np.zeros((4, 3, 8, 8), np.float32)
    s = Split({"input": x}, np.zeros(4, np.int64))
    kw = dict(name="t", model_path=None, calibration=s, search=s, holdout=s, metric=accuracy())
    kw.update(over)
    return Task(**kw)


SPEC = {"input": ("float32", ("batch", 3, 8, 8))}


def test_split_basics():
    s = Split({"a": np.arange(10), "b": np.arange(10) * 2}, np.arange(10))
    assert len(s) == 10 and len(s.head(3)) == 3
    assert [sl for _, sl in s.batches(4)] == [slice(0, 4), slice(4, 8), slice(8, 10)]
    assert s.digest == Split({"a": np.arange(10), "b": np.arange(10) * 2}, np.arange(10)).digest
    assert s.digest != s.head(9).digest
    assert s.problem() is None
    assert "different numbers of samples" in Split({"a": np.arange(3), "b": np.arange(4)}).problem()
    assert "4 labels for 3 samples" in Split({"a": np.arange(3)}, np.arange(4)).problem()


@pytest.mark.parametrize("which", ["calibration", "search", "holdout"])
def test_a_task_names_the_split_whose_counts_disagree(which):
    good = Split({"a": np.arange(4)}, np.arange(4))
    splits = {s: good for s in ("calibration", "search", "holdout")}
    splits[which] = Split({"a": np.arange(4)}, np.arange(3))
    with pytest.raises(DataError, match=f"task 't': the {which} split has 3 labels for 4 "
                                        "samples; give one label per sample"):
        Task(name="t", model_path=None, metric=accuracy(), **splits)
    splits[which] = Split({"a": np.arange(4), "b": np.arange(5)}, None)
    with pytest.raises(DataError, match=f"the {which} split has inputs with different numbers"):
        Task(name="t", model_path=None, metric=accuracy(), **splits)


def test_accuracy_metric():
    m = accuracy()
    logits = np.array([[0.1, 0.9], [0.8, 0.2], [0.3, 0.7]])
    assert m({"y": logits}, np.array([1, 0, 0])) == pytest.approx(2 / 3)
    with pytest.raises(DataError):
        m({"y": logits}, None)


def test_check_inputs_accepts_matching_data():
    check_inputs(_task(), SPEC)


@pytest.mark.parametrize("x, match", [
    ({"other": np.zeros((4, 3, 8, 8), np.float32)}, "feeds inputs"),
    ({"input": np.zeros((4, 3, 8, 8), np.float64)}, "float64, the model expects float32"),
    ({"input": np.zeros((4, 3, 8), np.float32)}, "rank"),
    ({"input": np.zeros((4, 3, 7, 7), np.float32)}, "axis 2: 7 != 8"),
])
def test_check_inputs_rejects_mismatches(x, match):
    s = Split(x, np.zeros(4, np.int64))
    with pytest.raises(DataError, match=match):
        check_inputs(_task(search=s), SPEC)


def test_empty_split_is_refused():
    empty = Split({"input": np.zeros((0, 3, 8, 8), np.float32)}, np.zeros(0, np.int64))
    with pytest.raises(DataError, match="holdout split is empty"):
        check_inputs(_task(holdout=empty), SPEC)


def test_latency_feed_takes_the_latency_batch():
    t = _task(latency_batch=2)
    assert t.latency_feed()["input"].shape == (2, 3, 8, 8)


@pytest.mark.parametrize("spec, match", [
    ("nocolon", "must look like"), ("no_such_module_xyz:f", "cannot find module"),
    ("json:no_such_function", "has no function")])
def test_task_factory_errors(spec, match):
    with pytest.raises(TaskError, match=match):
        load_task_factory(spec)
