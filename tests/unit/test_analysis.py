"""Orders, their quality, measured per-group gains, and the simulated sensitivities (accuracy,
sqnr, inter-layer dependencies) on constructed cases with a known answer."""

import models
import numpy as np
import pytest

from trt_mpq.model.groups import Group, GroupOp
from trt_mpq.plan import Plan
from trt_mpq.plan import Precision as P
from trt_mpq.qdq import Dialect
from trt_mpq.sensitivity import SensitivityConfig, SensitivityContext, get_metric
from trt_mpq.sensitivity.ordering import order, order_quality
from trt_mpq.sensitivity.simulated import (
    AccuracyDrop,
    Divergence,
    Sqnr,
    conditional_order,
    pairwise_interactions,
)
from trt_mpq.task import Split, Task, accuracy

NAMES = ["a", "b", "c", "d"]


def test_order_by_sensitivity_and_latency_aware():
    scores = {"a": 0.3, "b": 0.1, "c": 0.1, "d": 0.9}
    assert order(NAMES, scores) == ["b", "c", "a", "d"]  # ties keep graph order
    gains = {"a": 3.0, "b": 0.1, "c": 1.0, "d": -0.2}
    # per unit of gain: a 0.1, b 1.0, c 0.1 -> a, c (graph order on the tie), b; d gains nothing
    assert order(NAMES, scores, gains) == ["a", "c", "b", "d"]


def test_order_quality():
    ref = {"a": 0.0, "b": 1.0, "c": 2.0, "d": 3.0}
    q = order_quality({"same": ["a", "b", "c", "d"], "reversed": ["d", "c", "b", "a"]}, ref)
    assert q["same"] == {"spearman": pytest.approx(1.0), "kendall": pytest.approx(1.0)}
    assert q["reversed"]["spearman"] == pytest.approx(-1.0)


def test_order_quality_counts_ties_as_ties():
    """Regression: with every reference score tied, the reference scored -1.0 against itself
    (alphabetical vs graph-order tie-breaks). Ties get average ranks: undefined, not -1."""
    tied = {"b": 0.0, "a": 0.0, "c": 0.0}
    q = order_quality({"itself": tied, "some order": ["c", "a", "b"]}, tied)
    assert q["itself"] == {"spearman": None, "kendall": None}
    assert q["some order"] == {"spearman": None, "kendall": None}
    # partly tied: a metric that ties exactly where the reference ties agrees perfectly
    ref = {"a": 0.0, "b": 0.0, "c": 1.0, "d": 2.0}
    q = order_quality({"same ties": {"a": 5.0, "b": 5.0, "c": 6.0, "d": 9.0},
                       "breaks the tie": ["b", "a", "c", "d"]}, ref)
    assert q["same ties"]["spearman"] == pytest.approx(1.0)
    assert q["same ties"]["kendall"] == pytest.approx(1.0)
    from scipy.stats import spearmanr

    expect = spearmanr([0, 0, 1, 2], [1, 0, 2, 3]).statistic  # b first: a=1, b=0
    assert q["breaks the tie"]["spearman"] == pytest.approx(expect) and expect < 1.0


def _op(name):
    return GroupOp(name, "MatMul", name + ":x", name + ":y", name + ":w", None, (2, 2), (), 4, 4)


def _fake_ctx(delta: dict[str, np.ndarray], n=64, labels=None):
    """A context whose 'simulation' adds a fixed perturbation per lowered group to fixed logits:
    the outcome of every plan is known exactly."""
    rng = np.random.default_rng(0)
    logits = rng.normal(0, 1, (n, 3))
    groups = tuple(Group(k, (_op(k),)) for k in delta)
    labels = labels if labels is not None else logits.argmax(1)
    split = Split({"x": np.zeros((n, 1), np.float32)}, labels)
    task = Task(name="t", model_path=None, calibration=split, search=split, holdout=split,
                metric=accuracy())
    calls = []

    def simulate(plan: Plan, s: Split):
        calls.append(plan)
        out = logits.copy()
        for g in plan.groups_at(P.INT8):
            out = out + delta[g]
        return {"logits": out}

    ctx = SensitivityContext(model=None, groups=groups, ranges=None, dialect=Dialect.ORT_CPU,
                             low={g.name: P.INT8 for g in groups}, base=P.FP32, task=task,
                             subset=split, simulate=simulate,
                             config=SensitivityConfig(neighbours=1))
    return ctx, calls


def test_interactions_compound_and_cancel():
    v = np.array([0.0, 0.8, -0.8])
    # a and b push the logits the same way (errors compound); c pushes back (cancels b's)
    ctx, _ = _fake_ctx({"a": v, "b": v, "c": -v})
    d, div = pairwise_interactions(ctx, neighbours=1, progress=False)
    assert set(d) == {("a", "b"), ("b", "c")}
    assert d[("a", "b")] > 0  # l(ab) = KL(2v) > l(a) + l(b)
    assert d[("b", "c")] < 0  # l(bc) = 0 < l(b) + l(c)
    assert div(["b", "c"]) == pytest.approx(0.0, abs=1e-12)
    assert div.passes == 1 + 3 + 2  # baseline, singles, pairs (memoized)


def test_conditional_order_picks_the_cheapest_next_group():
    v = np.array([0.0, 0.5, -0.5])
    ctx, _ = _fake_ctx({"a": 2 * v, "b": v, "c": -v})
    div = Divergence(ctx)
    seq, inc = conditional_order(ctx, div, progress=False)
    # b and c are equally cheap alone; once b is in, c cancels it (negative increment)
    assert seq[:2] in (["b", "c"], ["c", "b"]) and seq[2] == "a"
    assert inc[seq[1]] < 0


def test_accuracy_and_sqnr_on_known_perturbations():
    v = np.array([0.0, 3.0, -3.0])
    ctx, _ = _fake_ctx({"a": 0.01 * v, "b": v, "c": 0 * v})
    acc = AccuracyDrop().score(ctx, progress=False)
    assert acc.scores["c"] == 0 and acc.scores["b"] > acc.scores["a"] >= 0
    sq = Sqnr().score(ctx, progress=False)
    assert sq.scores["c"] == 0 and sq.scores["b"] > sq.scores["a"] > 0
    assert sq.extra["sqnr_db"]["a"] > sq.extra["sqnr_db"]["b"]
    assert acc.passes == sq.passes == 4


def test_profile_groups_attributes_kernel_time(prepared_cnn, cnn_ranges):
    from trt_mpq.backends import get_backend
    from trt_mpq.qdq import materialize

    _, model, groups = prepared_cnn
    backend = get_backend("ort-cpu", threads=1)
    feed = {"input": models.cnn_inputs(4)}
    for precision in (P.FP32, P.INT8):
        plan = Plan.uniform([g.name for g in groups], precision)
        times, other = backend.profile_groups(materialize(model, groups, plan, cnn_ranges,
                                                          backend.dialect), groups, feed, runs=3)
        assert set(times) == {g.name for g in groups}
        assert all(t > 0 for t in times.values()) and other >= 0


def test_one_slow_profiled_session_does_not_set_a_groups_gain(tmp_path):
    """The latency model's prior comes from profiled sessions; one session that times a group's
    kernels 3x slower (as ONNX Runtime's sometimes do) must not turn the group's loss into a
    gain: the median over the sessions, the baseline's and the lowered plan's alternating."""
    from trt_mpq.backends import get_backend
    from trt_mpq.calib import CalibConfig
    from trt_mpq.pipeline import analysis

    ws = models.cnn_workspace(tmp_path / "ws")
    ranges = ws.calibrate(CalibConfig(num_samples=16))
    low = {g: P.INT8 for g in ws.group_names()}
    victim = ws.group_names()[0]
    backend = get_backend("ort-cpu", threads=1)
    real, calls = backend.profile_groups, []

    def profile(graph, groups, feed, runs):
        times, other = real(graph, groups, feed, runs=runs)
        lowered = any(n.op_type == "QuantizeLinear" for n in graph.graph.node)
        calls.append(lowered)
        if not lowered and calls.count(False) == 1:  # the baseline's first session is slow
            times = {**times, victim: times[victim] * 3 + 1.0}
        return times, other

    backend.profile_groups = profile
    gains = analysis.latency_gains(ws, backend, ranges, low, runs=2)
    assert calls == [False, True] * analysis.PROFILE_SESSIONS
    assert gains.base_ms[victim] < 1.0 and gains.runs == 2 * analysis.PROFILE_SESSIONS
    calls.clear()
    one = analysis.latency_gains(ws, backend, ranges, low, runs=2, sessions=2)
    assert one.base_ms[victim] > 0.5  # two sessions cannot outvote it: the test can fail
# -- sensitivity values, not only their order ------------------------------------------------

def _softmax(x):
    e = np.exp(x - x.max(axis=-1, keepdims=True))
    return e / e.sum(axis=-1, keepdims=True)


def test_values_equal_independent_computations():
    """accuracy drop, sqnr, the output divergence (KL) and hessian+deps' combination against
    the same quantities computed here from the known logits (scipy's rel_entr for the KL)."""
    from scipy.special import rel_entr

    from trt_mpq.sensitivity import SensitivityResult

    v = np.array([0.0, 3.0, -3.0])
    ctx, _ = _fake_ctx({"a": 0.1 * v, "b": v, "c": -0.5 * v})
    ref = ctx.simulate(ctx.base_plan(), ctx.subset)["logits"]
    labels = ctx.subset.labels
    outs = {g: ref + d for g, d in {"a": 0.1 * v, "b": v, "c": -0.5 * v}.items()}

    acc = AccuracyDrop().score(ctx, progress=False)
    base_acc = np.mean(ref.argmax(1) == labels)
    for g, out in outs.items():
        assert acc.scores[g] == pytest.approx(base_acc - np.mean(out.argmax(1) == labels))
    assert acc.scores["b"] > 0  # v moves enough argmaxes to be seen

    sq = Sqnr().score(ctx, progress=False)
    for g, out in outs.items():
        ratio = np.sum((out - ref) ** 2) / np.sum(ref ** 2)
        assert sq.scores[g] == pytest.approx(ratio, rel=1e-12)
        assert sq.extra["sqnr_db"][g] == pytest.approx(-10 * np.log10(ratio), rel=1e-9)

    def kl(p_logits, q_logits):
        return float(np.mean(np.sum(rel_entr(_softmax(p_logits), _softmax(q_logits)), axis=-1)))

    div = Divergence(ctx)
    for g, out in outs.items():
        assert div([g]) == pytest.approx(kl(ref, out), rel=1e-9)
    both = ref + 0.1 * v + v
    assert div(["a", "b"]) == pytest.approx(kl(ref, both), rel=1e-9)

    hessian = {"a": 1.0, "b": 2.0, "c": 3.0}
    from dataclasses import replace

    ctx = replace(ctx, prior={"hessian": SensitivityResult("hessian", hessian, passes=7,
                                                           seconds=0.5, samples=64)})
    deps = get_metric("hessian+deps").score(ctx, progress=False)
    d_ab = kl(ref, ref + 1.1 * v) - kl(ref, outs["a"]) - kl(ref, outs["b"])
    d_bc = kl(ref, ref + 0.5 * v) - kl(ref, outs["b"]) - kl(ref, outs["c"])
    assert deps.extra["interactions"]["a | b"] == pytest.approx(d_ab, rel=1e-9, abs=1e-12)
    assert deps.scores == pytest.approx({"a": 1.0 + d_ab / 2, "b": 2.0 + (d_ab + d_bc) / 2,
                                         "c": 3.0 + d_bc / 2}, rel=1e-9)
    assert deps.passes == 7 + 1 + 3 + 2  # the Hessian's, baseline, singles, pairs
