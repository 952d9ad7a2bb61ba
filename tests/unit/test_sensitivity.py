import models
import numpy as np
import onnx
import pytest
from conftest import run_ort
from onnx import numpy_helper

from trt_mpq.calib import CalibConfig, calibrate
from trt_mpq.model import find_groups
from trt_mpq.plan import Precision as P
from trt_mpq.qdq import Dialect, materialize
from trt_mpq.sensitivity import (
    OutputNoise,
    SensitivityContext,
    SensitivityResult,
    get_metric,
    ordering,
    output_divergence,
)
from trt_mpq.task import Split, Task, accuracy


def test_output_divergence():
    a = np.array([[2.0, 0.0, -1.0], [0.0, 1.0, 0.0]])
    assert output_divergence(a, a, "logits") == pytest.approx(0.0, abs=1e-12)
    assert output_divergence(a, a[::-1], "logits") > 0
    assert output_divergence(a, a + 1.0, "logits") == pytest.approx(0.0, abs=1e-12)  # shift-free
    assert output_divergence(a, a + 1.0, "regression") == pytest.approx(1.0)


def _context(model, path, groups):
    x = models.cnn_inputs(48, seed=3)
    ranges = calibrate(path, [{"input": x}], CalibConfig(), progress=False)
    split = Split({"input": x}, np.zeros(len(x), np.int64))
    task = Task(name="t", model_path=path, calibration=split, search=split, holdout=split,
                metric=accuracy())

    def simulate(plan, s):
        out = run_ort(materialize(model, groups, plan, ranges, Dialect.ORT_CPU), dict(s.inputs))
        return {"logits": out[0]}

    return SensitivityContext(model=model, groups=tuple(groups), ranges=ranges,
                              dialect=Dialect.ORT_CPU, low={g.name: P.INT8 for g in groups},
                              base=P.FP32, task=task, subset=split, simulate=simulate)


def test_noise_ranks_a_badly_quantizable_group_last(prepared_cnn, tmp_path):
    """Constructed case: channel 0 of conv2's input is always 0 (conv_a/conv_b produce -1 there,
    then ReLU), and conv2 gets a huge weight on that channel. The FP32 output does not change,
    but per-channel int8 of conv2 now rounds every other weight to zero: quantizing conv2 alone
    must hurt the output most."""
    _, model, _ = prepared_cnn
    bad = onnx.ModelProto()
    bad.CopyFrom(model)
    nodes = {n.name: n for n in bad.graph.node}
    inits = {i.name: i for i in bad.graph.initializer}

    def edit(name, fn):
        arr = numpy_helper.to_array(inits[name]).copy()
        fn(arr)
        inits[name].CopyFrom(numpy_helper.from_array(arr, name))

    for conv, bias in (("conv_a", -1.0), ("conv_b", 0.0)):
        edit(nodes[conv].input[1], lambda w: w.__setitem__(0, 0.0))
        edit(nodes[conv].input[2], lambda b, v=bias: b.__setitem__(0, v))
    edit(nodes["conv2"].input[1], lambda w: w.__setitem__((slice(None), 0), 1000 * np.abs(w).max()))
    path = tmp_path / "bad.onnx"
    onnx.save(bad, str(path))
    groups = find_groups(bad)
    ctx = _context(bad, path, groups)
    result = OutputNoise().score(ctx, progress=False)
    assert set(result.scores) == {g.name for g in groups}
    assert all(s >= 0 and np.isfinite(s) for s in result.scores.values())
    assert ordering.order([g.name for g in groups], result.scores)[-1] == "conv2"
    assert result.passes == len(groups) + 1 and result.samples == 48
    assert SensitivityResult.from_json_dict(result.to_json_dict()) == result


def test_order_ties_keep_graph_order(prepared_cnn):
    groups = prepared_cnn[2]
    names = [g.name for g in groups]
    assert ordering.order(names, {g: 0.0 for g in names}) == names


def test_unknown_metric():
    from trt_mpq.errors import ConfigError

    with pytest.raises(ConfigError, match="unknown sensitivity metric"):
        get_metric("magic")
