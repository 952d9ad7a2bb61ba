"""Hutchinson's trace estimator against the exact Hessian, and the Hessian-trace and Fisher
sensitivity metrics end to end on a tiny torch CNN exported with the legacy exporter."""

import warnings

import numpy as np
import onnx
import pytest

from trt_mpq.calib import CalibMethod, Ranges
from trt_mpq.errors import ConfigError
from trt_mpq.model import find_groups, prepare_model
from trt_mpq.plan import Precision as P
from trt_mpq.qdq import Dialect
from trt_mpq.sensitivity import SensitivityConfig, SensitivityContext, SensitivityResult, ordering
from trt_mpq.task import Split, Task, accuracy

torch = pytest.importorskip("torch")
from trt_mpq.sensitivity.hessian import Fisher, HessianTrace, hutchinson_trace  # noqa: E402

# -------------------------------------------------------------------------------------------
# Hutchinson


def _mlp_problem(n=40, seed=0):
    """A 2-layer tanh MLP (5 -> 12 -> 3, 111 parameters) and a cross-entropy loss per batch."""
    g = torch.Generator().manual_seed(seed)
    net = torch.nn.Sequential(torch.nn.Linear(5, 12), torch.nn.Tanh(), torch.nn.Linear(12, 3))
    with torch.no_grad():
        for p in net.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.8)
    x = torch.randn(n, 5, generator=g)
    y = torch.randint(0, 3, (n,), generator=g)
    params = list(net.parameters())
    names = [k for k, _ in net.named_parameters()]

    def loss_of(ps, sl):
        out = torch.func.functional_call(net, dict(zip(names, ps)), (x[sl],))
        return torch.nn.functional.cross_entropy(out, y[sl])

    return net, params, loss_of


def _exact_traces(params, loss_of, slices, weights):
    def total(*ps):
        return sum(w * loss_of(ps, sl) for w, sl in zip(weights, slices))

    h = torch.autograd.functional.hessian(total, tuple(p.detach() for p in params))
    return [float(h[i][i].reshape(p.numel(), p.numel()).trace()) for i, p in enumerate(params)]


def test_hutchinson_matches_the_exact_trace_over_batches():
    _, params, loss_of = _mlp_problem()
    slices = [slice(0, 16), slice(16, 32), slice(32, 40)]  # unequal batches
    weights = [16 / 40, 16 / 40, 8 / 40]
    exact = _exact_traces(params, loss_of, slices, weights)
    fns = [(lambda sl=sl: loss_of(params, sl)) for sl in slices]
    est = hutchinson_trace(fns, params, rel_tol=0.05, min_iter=8, max_iter=600, seed=1,
                           weights=weights)
    assert len(est) == len(params)
    for e, t in zip(est, exact):
        assert abs(e.mean - t) <= 4 * e.stderr + 1e-6, (e, t)
        assert e.stderr > 0
    # the whole subset's Hessian is the weighted sum of the batches'
    whole = _exact_traces(params, loss_of, [slice(0, 40)], [1.0])
    assert np.allclose(exact, whole, rtol=1e-4, atol=1e-6)


def test_hutchinson_stopping_rule():
    _, params, loss_of = _mlp_problem()
    fn = lambda: loss_of(params, slice(None))  # noqa: E731 - one closure = one batch
    est = hutchinson_trace(fn, params, rel_tol=0.3, min_iter=4, max_iter=500, seed=0)
    n = est[0].iterations
    assert all(e.iterations == n for e in est)
    assert 4 <= n < 500
    assert all(e.rel_stderr <= 0.3 for e in est)
    assert est[0].rounds >= 1 and est[0].rounds <= n
    # an unreachable tolerance runs exactly max_iter probes
    capped = hutchinson_trace(fn, params, rel_tol=1e-6, min_iter=3, max_iter=7, seed=0)
    assert all(e.iterations == 7 for e in capped)
    assert any(e.rel_stderr > 1e-6 for e in capped)
    # the same seed gives the same estimates
    again = hutchinson_trace(fn, params, rel_tol=1e-6, min_iter=3, max_iter=7, seed=0)
    assert [e.mean for e in again] == [e.mean for e in capped]


def test_hutchinson_is_exact_for_a_diagonal_hessian():
    """v^T D v = tr(D) for every Rademacher v: zero variance, stops after min_iter."""
    a = torch.tensor([1.0, 2.0, 3.0])
    theta = torch.zeros(3, requires_grad=True)
    unused = torch.zeros(2, requires_grad=True)
    est = hutchinson_trace(lambda: (a * theta ** 2).sum(), [theta, unused], rel_tol=0.01,
                           min_iter=5, max_iter=50)
    assert est[0].mean == pytest.approx(12.0) and est[0].stderr == 0
    assert est[1].mean == 0 and est[1].stderr == 0
    assert est[0].iterations == 5 and est[0].rounds == 1


def test_hutchinson_arguments():
    theta = torch.zeros(3, requires_grad=True)
    with pytest.raises(ConfigError):
        hutchinson_trace(lambda: theta.sum(), [theta], min_iter=1, max_iter=5)
    with pytest.raises(ConfigError):
        hutchinson_trace([lambda: theta.sum()], [theta], weights=[0.5, 0.5])
    assert hutchinson_trace(lambda: theta.sum(), []) == []


# -------------------------------------------------------------------------------------------
# the metrics on a tiny CNN


class TinyNet(torch.nn.Module):
    """conv1+bn (folded by prepare) -> conv_a | conv_b (one group) -> conv2 -> tokens ->
    proj (Linear on [N, 16, 16]: MatMul) -> mean -> fc (Linear on [N, 12]: Gemm)."""

    def __init__(self):
        super().__init__()
        self.conv1 = torch.nn.Conv2d(3, 8, 3, padding=1, bias=False)
        self.bn1 = torch.nn.BatchNorm2d(8)
        self.conv_a = torch.nn.Conv2d(8, 8, 3, padding=1)
        self.conv_b = torch.nn.Conv2d(8, 8, 1)
        self.conv2 = torch.nn.Conv2d(8, 16, 3, stride=2, padding=1)
        self.proj = torch.nn.Linear(16, 12)
        self.fc = torch.nn.Linear(12, 4)

    def forward(self, x):
        r = torch.relu(self.bn1(self.conv1(x)))
        s = torch.relu(self.conv_a(r) + self.conv_b(r))
        t = torch.relu(self.conv2(s)).flatten(2).transpose(1, 2)  # [N, 16 positions, 16]
        return self.fc(torch.relu(self.proj(t)).mean(dim=1))


def _tiny_net(dead_channel: bool) -> TinyNet:
    g = torch.Generator().manual_seed(0)
    net = TinyNet()
    with torch.no_grad():
        for p in net.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * (2.0 / max(p[0].numel(), 1)) ** 0.5)
        net.bn1.running_mean.copy_(torch.randn(8, generator=g) * 0.1)
        net.bn1.running_var.copy_(torch.rand(8, generator=g) + 0.5)
        if dead_channel:
            # channel 0 of conv2's input is relu(-1) = 0, and conv2 puts a huge weight on it:
            # the FP32 function does not see it, but per-channel int8 of conv2 now rounds every
            # other weight to zero
            net.conv_a.weight[0] = 0.0
            net.conv_a.bias[0] = -1.0
            net.conv_b.weight[0] = 0.0
            net.conv_b.bias[0] = 0.0
            net.conv2.weight[:, 0] = 1000 * net.conv2.weight.abs().max()
    return net.eval()


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """(factory name -> (ctx builder)) for the plain and the dead-channel nets."""
    d = tmp_path_factory.mktemp("tiny_torch")
    g = torch.Generator().manual_seed(1)
    x = torch.randn(40, 3, 8, 8, generator=g).numpy()
    labels = torch.randint(0, 4, (40,), generator=g).numpy().astype(np.int64)
    out = {}
    for dead in (False, True):
        net = _tiny_net(dead)
        path = d / f"tiny_{dead}.onnx"
        with warnings.catch_warnings(), torch.no_grad():
            warnings.simplefilter("ignore")
            torch.onnx.export(net, (torch.from_numpy(x[:2]),), str(path), dynamo=False,
                              opset_version=17, input_names=["input"], output_names=["logits"],
                              dynamic_axes={"input": {0: "batch"}, "logits": {0: "batch"}})
        prepared = prepare_model(path, d / "cache")
        model = onnx.load(str(prepared))
        out[dead] = (net, model, find_groups(model), Split({"input": x}, labels))
    return out


def _ctx(tiny, dead=False, low=P.INT8, twin="same", kind="logits", **cfg):
    net, model, groups, split = tiny[dead]
    metric = accuracy("logits")
    if kind != "logits":
        from dataclasses import replace

        metric = replace(metric, kind=kind)
    task = Task(name="tiny", model_path=None, calibration=split, search=split, holdout=split,
                metric=metric)

    def simulate(plan, s):
        raise AssertionError("second-order metrics must not simulate")

    def factory():
        import copy

        return copy.deepcopy(net)

    lows = low if isinstance(low, dict) else {g.name: low for g in groups}
    config = SensitivityConfig(**{"samples": 40, "batch_size": 16, "hutchinson_rel_tol": 0.1,
                                  "hutchinson_min_iter": 4, "hutchinson_max_iter": 40, **cfg})
    return SensitivityContext(
        model=model, groups=tuple(groups), ranges=Ranges(CalibMethod.MINMAX, {}),
        dialect=Dialect.ORT_CPU, low=lows, base=P.FP32, task=task, subset=split,
        simulate=simulate, config=config, input_names=("input",), output_names=("logits",),
        torch_model=factory if twin == "same" else twin)


def test_tiny_groups_map_to_the_twin(tiny):
    from trt_mpq.sensitivity.torch_twin import map_groups

    net, _, groups, _ = tiny[False]
    assert [g.op_type for g in groups] == ["Conv", "Conv", "Conv", "MatMul", "Gemm"]
    mods = map_groups(groups, net)
    assert mods["/conv_a/Conv"] is net.conv_a and mods["/conv_b/Conv"] is net.conv_b
    assert mods["/proj/MatMul"] is net.proj and mods["/fc/Gemm"] is net.fc
    assert len(groups[1].ops) == 2


@pytest.mark.parametrize("metric_cls", [HessianTrace, Fisher])
def test_scores_are_finite_and_rank_the_badly_quantizable_group_last(tiny, metric_cls):
    _, _, groups, _ = tiny[True]
    result = metric_cls().score(_ctx(tiny, dead=True), progress=False)
    assert set(result.scores) == {g.name for g in groups}
    assert all(np.isfinite(s) and s >= 0 for s in result.scores.values())
    order = ordering.order([g.name for g in groups], result.scores)
    assert order[-1] == "/conv2/Conv", result.scores
    assert result.scores["/conv2/Conv"] > 10 * max(v for k, v in result.scores.items()
                                                  if k != "/conv2/Conv")
    assert result.metric == metric_cls.name and result.samples == 40 and result.seconds > 0
    assert SensitivityResult.from_json_dict(result.to_json_dict()) == result


def test_hessian_scores_follow_the_estimated_traces(tiny):
    from trt_mpq.sensitivity.torch_twin import fake_quantize, map_groups

    metric = HessianTrace()
    ctx = _ctx(tiny)
    result = metric.score(ctx, progress=False)
    net, _, groups, _ = tiny[False]
    mods = map_groups(groups, net)
    n = next(iter(metric.estimates.values())).iterations
    assert 4 <= n <= 40 and result.passes == n + next(iter(metric.estimates.values())).rounds
    assert set(metric.estimates) == {op.name for g in groups for op in g.ops}
    for g in groups:
        want = 0.0
        for op in g.ops:
            w = mods[op.name].weight.detach()
            d2 = float(((fake_quantize(w, P.INT8, op.op_type) - w) ** 2).sum())
            want += 0.5 * max(metric.estimates[op.name].mean, 0) / w.numel() * d2
        assert result.scores[g.name] == pytest.approx(want, rel=1e-6)
    assert all(e.mean > 0 for e in metric.estimates.values())  # random labels: a real loss
    est = list(metric.estimates.values())
    assert result.extra["probes"] == n and result.extra["negative_traces"] == 0
    assert result.extra["not_converged"] == sum(e.rel_stderr > 0.1 for e in est)
    assert result.extra["worst_rel_stderr"] == pytest.approx(max(e.rel_stderr for e in est))
    # coarser precision, larger perturbation, larger score (same traces: same seed)
    int4 = HessianTrace().score(_ctx(tiny, low=P.INT4_WEIGHT), progress=False)
    assert all(int4.scores[g] > result.scores[g] for g in result.scores)


def test_fp32_groups_score_zero(tiny):
    _, _, groups, _ = tiny[False]
    lows = {g.name: P.INT8 for g in groups}
    lows["/proj/MatMul"] = P.FP32
    for metric in (HessianTrace(), Fisher()):
        r = metric.score(_ctx(tiny, low=lows), progress=False)
        assert r.scores["/proj/MatMul"] == 0
        assert all(v > 0 for k, v in r.scores.items() if k != "/proj/MatMul")
    all_fp32 = HessianTrace().score(_ctx(tiny, low=P.FP32), progress=False)
    assert set(all_fp32.scores.values()) == {0.0} and all_fp32.passes == 0


def test_fisher_matches_a_direct_computation(tiny):
    """Per-sample (dL/dy * dy)^2 summed over fc's outputs, by hand with autograd."""
    net, _, _, split = tiny[False]
    r = Fisher().score(_ctx(tiny, batch_size=7), progress=False)
    assert r.passes == 1
    from trt_mpq.sensitivity.torch_twin import fake_quantize

    x = torch.from_numpy(split.inputs["input"])
    y = torch.from_numpy(split.labels)
    feats = {}
    h = net.fc.register_forward_hook(lambda m, a, o: feats.update(x=a[0], y=o))
    try:
        loss = torch.nn.functional.cross_entropy(net(x), y, reduction="sum")
        (g,) = torch.autograd.grad(loss, [feats["y"]])
    finally:
        h.remove()
    w = net.fc.weight.detach()
    dy = feats["x"].detach() @ (fake_quantize(w, P.INT8, "Gemm") - w).T
    want = float(((g * dy) ** 2).sum()) / len(x)
    assert r.scores["/fc/Gemm"] == pytest.approx(want, rel=1e-5)


def test_regression_tasks(tiny):
    for metric in (HessianTrace(), Fisher()):
        r = metric.score(_ctx(tiny, kind="regression"), progress=False)
        assert all(np.isfinite(v) and v > 0 for v in r.scores.values()), (metric.name, r.scores)


def test_without_a_twin_or_with_a_mismatched_one(tiny):
    for metric in (HessianTrace(), Fisher()):
        with pytest.raises(ConfigError, match="torch twin.*--torch package.module:make_model"):
            metric.score(_ctx(tiny, twin=None), progress=False)
    other = lambda: torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3)).eval()  # noqa: E731
    with pytest.raises(ConfigError, match="/conv1/Conv.*--torch package.module:make_model"):
        Fisher().score(_ctx(tiny, twin=other), progress=False)


def test_output_change_of_a_conv_that_pads_in_its_own_forward():
    """EfficientNet's "same"-padding convs pad in forward(); the output change must come from
    the module's own forward, not a bare conv with the module's padding attribute."""
    import torch
    import torch.nn.functional as F

    from trt_mpq.sensitivity.hessian import _delta_output

    class SamePadConv(torch.nn.Conv2d):
        def forward(self, x):
            return super().forward(F.pad(x, [0, 1, 0, 1]))

    torch.manual_seed(0)
    x = torch.randn(2, 3, 8, 8)
    delta = 0.1 * torch.randn(4, 3, 3, 3)
    for module in (SamePadConv(3, 4, 3, stride=2), torch.nn.Conv2d(3, 4, 3, stride=2, padding=1)):
        with torch.no_grad():
            dy = _delta_output(module, (x,), {}, delta)
            moved = module.weight + delta
            expect = (torch.func.functional_call(module, {"weight": moved, "bias": module.bias},
                                                 (x,)) - module(x))
        assert dy.shape == expect.shape
        torch.testing.assert_close(dy, expect, atol=1e-5, rtol=1e-4)
