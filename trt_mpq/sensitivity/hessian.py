"""Second-order sensitivity on the model's torch twin: HAWQ-V2's Hessian trace and a Fisher
(squared first-order Taylor) metric.

Both metrics quantize the *weights* of one group at a time with `torch_twin.fake_quantize` (the
weight the real graph would use at the group's low precision) and score how much that
perturbation costs the task loss; activation quantization is not modelled (as in HAWQ).

The task loss on `ctx.subset`, in batches of `ctx.config.batch_size`:
- metric kind "logits": cross-entropy of the output the task metric reads against the split's
  integer labels (without labels: against the twin's own argmax predictions);
- otherwise ("regression"): mean squared error against the twin's own (detached) output, so the
  loss is 0 at the FP32 weights and its Hessian is the Gauss-Newton matrix.

Neither metric calls `ctx.simulate`. Both import torch lazily: importing this module works
without torch; `score()` needs it.

Costs (N samples, B batches): Fisher is one forward + backward pass over the subset. The Hessian
trace is `iterations` Hessian-vector passes (a double backward per batch) plus one forward and
gradient pass with `create_graph=True` per batch for each *round* of probes that reuses it; the
result's `passes` counts both (rounds + iterations), each a pass over the whole subset.

The trace estimator itself is `hutchinson.hutchinson_trace`; this module holds the task loss on
the twin and the two metrics.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import numpy as np

from trt_mpq.errors import ConfigError
from trt_mpq.model.groups import GroupOp
from trt_mpq.plan import Precision
from trt_mpq.sensitivity import SensitivityContext, SensitivityMetric, SensitivityResult
from trt_mpq.sensitivity.hutchinson import TraceEstimate, hutchinson_trace

if TYPE_CHECKING:  # pragma: no cover
    import torch

log = logging.getLogger(__name__)

NO_TWIN = ("{metric} needs the model's torch twin: zoo models have one; pass "
           "--torch package.module:make_model")


# -------------------------------------------------------------------------------------------
# the task loss on the twin


class _Twin:
    """The twin, the subset as torch batches, and the task loss."""

    def __init__(self, ctx: SensitivityContext, metric: str, *,
                 fisher_noise_seed: int | None = None):
        import torch

        if ctx.torch_model is None:
            raise ConfigError(NO_TWIN.format(metric=metric))
        self.ctx = ctx
        self.model = ctx.torch_model()
        if not isinstance(self.model, torch.nn.Module):
            raise ConfigError(f"the torch twin factory returned {type(self.model).__name__}, "
                              "not a torch.nn.Module")
        self.model.eval()
        names = list(ctx.input_names) or _graph_inputs(ctx) or list(ctx.subset.inputs)
        missing = [n for n in names if n not in ctx.subset.inputs]
        if missing:
            raise ConfigError(f"the sensitivity subset has no input {missing[0]!r}")
        self.input_names = names
        self.output_names = list(ctx.output_names) or [o.name for o in ctx.model.graph.output]
        self.kind = ctx.task.metric.kind
        self.want = ctx.task.metric.output
        self.batches: list[tuple[tuple[torch.Tensor, ...], torch.Tensor | None]] = []
        labels = ctx.subset.labels
        for feed, sl in ctx.subset.batches(ctx.config.batch_size):
            xs = tuple(torch.from_numpy(np.ascontiguousarray(feed[n])) for n in names)
            y = None
            if labels is not None and self.kind == "logits":
                y = torch.from_numpy(np.ascontiguousarray(labels[sl]).astype(np.int64))
            self.batches.append((xs, y))
        self.samples = len(ctx.subset)
        self.noise_gen = None
        if fisher_noise_seed is not None:
            self.noise_gen = torch.Generator().manual_seed(int(fisher_noise_seed))

    def output(self, out: Any) -> torch.Tensor:
        import torch

        if isinstance(out, torch.Tensor):
            return out
        if isinstance(out, Mapping):
            if self.want and self.want in out:
                return out[self.want]
            return next(iter(out.values()))
        if isinstance(out, (tuple, list)):
            if self.want and self.want in self.output_names:
                return out[self.output_names.index(self.want)]
            return out[0]
        raise ConfigError(f"the torch twin returned {type(out).__name__}; expected a tensor or a "
                          "tuple of tensors in the ONNX model's output order")

    def loss(self, b: int, reduction: str = "mean") -> torch.Tensor:
        """The task loss on batch `b` (mean over its samples, or the sum for per-sample
        gradients)."""
        import torch
        import torch.nn.functional as F

        xs, y = self.batches[b]
        out = self.output(self.model(*xs)).float()
        if self.kind == "logits":
            logits = out.reshape(-1, out.shape[-1])
            target = y.reshape(-1) if y is not None else logits.detach().argmax(-1)
            return F.cross_entropy(logits, target, reduction=reduction)
        target = out.detach()
        if self.noise_gen is not None:  # Monte-Carlo Fisher: a target drawn around the output
            target = target + torch.randn(out.shape, generator=self.noise_gen)
        per = ((out - target) ** 2).reshape(out.shape[0], -1).mean(dim=1)
        return per.mean() if reduction == "mean" else per.sum()

    def batch_weights(self) -> list[float]:
        return [len(xs[0]) / self.samples for xs, _ in self.batches]


def _graph_inputs(ctx: SensitivityContext) -> list[str]:
    inits = {i.name for i in ctx.model.graph.initializer}
    return [i.name for i in ctx.model.graph.input if i.name not in inits]


def _targets(ctx: SensitivityContext, model: Any) -> list[tuple[str, GroupOp, Any, Precision]]:
    """(group, op, module, low precision) for every op of every group."""
    from trt_mpq.sensitivity.torch_twin import map_groups

    modules = map_groups(ctx.groups, model)
    out = []
    for g in ctx.groups:
        if g.name not in ctx.low:
            raise ConfigError(f"no low precision for group {g.name!r}")
        for op in g.ops:
            out.append((g.name, op, modules[op.name], ctx.low[g.name]))
    return out


def _progress_bar(total: int, desc: str, progress: bool | None, unit: str):
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=desc, unit=unit, leave=False,
                disable=None if progress is None else not progress)


# -------------------------------------------------------------------------------------------
# metrics


class HessianTrace(SensitivityMetric):
    """HAWQ-V2: per group, sum over its ops of 0.5 * Tr(H_W)/numel(W) * ||Q(W) - W||^2.

    Tr(H_W) is the Hutchinson trace of the task loss's Hessian block of the op's torch weight
    (`hutchinson_trace`, tolerances from `ctx.config`), Q the fake quantization at the group's
    low precision. The average trace times the squared perturbation is the expected second-order
    loss increase under a perturbation of that size spread evenly over the weight. A negative
    trace estimate (a saddle, or noise around 0) counts as 0. Weights that stay FP32 get 0 and no
    probes. BatchNorm folded into the ONNX conv does not change the perturbation: per-channel
    quantization commutes with the per-channel BN scale, so Q is taken on the twin's unfolded
    weight.

    After `score`, `estimates` maps each op name to its `TraceEstimate`.
    """

    name = "hessian"
    description = ("HAWQ-V2 on the torch twin: per group, 0.5 * average Hessian trace (Hutchinson) "
                   "x squared weight-quantization error, summed over the group's ops")

    def __init__(self) -> None:
        self.estimates: dict[str, TraceEstimate] = {}

    def score(self, ctx: SensitivityContext, progress: bool | None = None) -> SensitivityResult:
        import torch

        from trt_mpq.sensitivity.torch_twin import weight_delta

        t0 = time.perf_counter()
        twin = _Twin(ctx, self.name)
        targets = _targets(ctx, twin.model)
        cfg = ctx.config
        params: list[torch.Tensor] = []
        index: dict[int, int] = {}
        for _, _op, module, low in targets:
            if low is Precision.FP32:
                continue
            w = module.weight
            if id(w) not in index:
                index[id(w)] = len(params)
                params.append(w)
        for p in twin.model.parameters():
            p.requires_grad_(id(p) in index)

        self.estimates = {}
        est: list[TraceEstimate] = []
        if params:
            bar = _progress_bar(cfg.hutchinson_max_iter, "sensitivity (hessian)", progress,
                                "probe")

            def tick(n: int) -> None:
                bar.update(n - bar.n)

            fns = [(lambda b=b: twin.loss(b)) for b in range(len(twin.batches))]
            try:
                est = hutchinson_trace(fns, params, rel_tol=cfg.hutchinson_rel_tol,
                                       min_iter=cfg.hutchinson_min_iter,
                                       max_iter=cfg.hutchinson_max_iter, seed=cfg.seed,
                                       weights=twin.batch_weights(), progress=tick)
            finally:
                bar.close()
        scores = {g.name: 0.0 for g in ctx.groups}
        for group, op, module, low in targets:
            if low is Precision.FP32:
                continue
            e = est[index[id(module.weight)]]
            self.estimates[op.name] = e
            d = weight_delta(module, op, low)
            avg_trace = max(e.mean, 0.0) / module.weight.numel()
            scores[group] += 0.5 * avg_trace * float(torch.sum(d.double() ** 2))
        iterations = est[0].iterations if est else 0
        rounds = est[0].rounds if est else 0
        log.info("hessian: %d parameter tensors, %d probes in %d rounds over %d samples",
                 len(params), iterations, rounds, twin.samples)
        # how far to trust the traces: probes used, how many tensors stopped short of the
        # tolerance (at the probe cap) and how many estimates came out negative (counted as 0)
        extra = {"probes": iterations, "rel_tol": cfg.hutchinson_rel_tol,
                 "not_converged": sum(e.rel_stderr > cfg.hutchinson_rel_tol for e in est),
                 "negative_traces": sum(e.mean < 0 for e in est),
                 "worst_rel_stderr": max((e.rel_stderr for e in est), default=0.0)}
        return SensitivityResult(metric=self.name, scores=scores, passes=rounds + iterations,
                                 seconds=time.perf_counter() - t0, samples=twin.samples,
                                 extra=extra)


class Fisher(SensitivityMetric):
    """Squared first-order Taylor term on each op's output activation (an empirical-Fisher
    diagonal in activation space):

        score(group) = sum over its ops of  1/N * sum_samples sum_elements (dL/dy)^2 (dy)^2

    y is the op's output on the FP32 twin (a forward hook on its module), dL/dy the gradient of
    the per-sample task loss (one backward pass per batch, loss summed over the batch so each
    sample gets its own gradient), dy = op(x, Q(W)) - op(x, W) = op(x, Q(W) - W) with the same
    input x (conv: `F.conv{1,2,3}d` with the module's stride, padding, dilation and groups;
    linear: `F.linear`; other modules: the module re-run with the quantized weight). The product
    (dL/dy * dy) is invariant to a per-channel affine map after the op, so BatchNorm folding
    does not change it.

    For a "regression" task the MSE-to-own-output loss has zero gradient at the FP32 weights,
    so there the target is the output plus unit Gaussian noise (seeded): the Monte-Carlo Fisher,
    whose expectation is the Gauss-Newton diagonal; scores scale with that unit variance, not
    the ranking. A module called several times in one forward sums its calls.
    """

    name = "fisher"
    description = ("per group: mean over samples of sum (dL/dy)^2 (dy)^2 over the group's op "
                   "outputs, dy the output change from quantizing the op's weight (torch twin, "
                   "one forward+backward pass)")

    def score(self, ctx: SensitivityContext, progress: bool | None = None) -> SensitivityResult:
        import torch

        from trt_mpq.sensitivity.torch_twin import weight_delta

        t0 = time.perf_counter()
        noise_seed = ctx.config.seed if ctx.task.metric.kind != "logits" else None
        twin = _Twin(ctx, self.name, fisher_noise_seed=noise_seed)
        targets = [t for t in _targets(ctx, twin.model) if t[3] is not Precision.FP32]
        scores = {g.name: 0.0 for g in ctx.groups}
        # only the hooked weights need grad: it gives their outputs a graph to differentiate
        hooked = {id(t[2].weight) for t in targets}
        for p in twin.model.parameters():
            p.requires_grad_(id(p) in hooked)
        by_module: dict[int, list[tuple[str, GroupOp, Any, torch.Tensor]]] = {}
        for group, op, module, low in targets:
            by_module.setdefault(id(module), []).append(
                (group, op, module, weight_delta(module, op, low)))
        stash: list[tuple[torch.Tensor, list[torch.Tensor], int]] = []  # (y, [dy], module id)

        def hook(module, args, kwargs, output):
            if not isinstance(output, torch.Tensor) or not output.requires_grad:
                return
            with torch.no_grad():
                dys = [_delta_output(module, args, kwargs, d) for _, _, _, d in
                       by_module[id(module)]]
            stash.append((output, dys, id(module)))

        handles = []
        seen: set[int] = set()
        for _, _, module, _ in targets:
            if id(module) not in seen:
                seen.add(id(module))
                handles.append(module.register_forward_hook(hook, with_kwargs=True))
        sums: dict[tuple[int, int], float] = {}
        try:
            with torch.enable_grad():
                for b in _iter_progress(len(twin.batches), "sensitivity (fisher)", progress):
                    stash.clear()
                    loss = twin.loss(b, reduction="sum")
                    if not stash:
                        continue
                    grads = torch.autograd.grad(loss, [s[0] for s in stash], allow_unused=True)
                    for (_y, dys, mid), g in zip(stash, grads):
                        if g is None:
                            continue
                        g2 = g.detach().double() ** 2
                        for k, dy in enumerate(dys):
                            key = (mid, k)
                            sums[key] = sums.get(key, 0.0) + float(torch.sum(g2 * dy.double() ** 2))
                    stash.clear()
        finally:
            for h in handles:
                h.remove()
        for mid, entries in by_module.items():
            for k, (group, _, _, _) in enumerate(entries):
                scores[group] += sums.get((mid, k), 0.0) / max(twin.samples, 1)
        return SensitivityResult(metric=self.name, scores=scores, passes=1,
                                 seconds=time.perf_counter() - t0, samples=twin.samples)


def _iter_progress(n: int, desc: str, progress: bool | None):
    bar = _progress_bar(n, desc, progress, "batch")
    try:
        for i in range(n):
            yield i
            bar.update(1)
    finally:
        bar.close()


def _delta_output(module: Any, args: tuple, kwargs: dict, delta: torch.Tensor) -> torch.Tensor:
    """op(x, delta) - the output change of a linear op whose weight moves by `delta`."""
    import torch
    import torch.nn.functional as F

    x = args[0] if args else next(iter(kwargs.values()))
    # the shortcuts only where the module runs the stock forward: subclasses that pad first
    # (EfficientNet's "same"-padding convs) or reshape would not line up
    stock = type(module) in (torch.nn.Linear, torch.nn.Conv1d, torch.nn.Conv2d, torch.nn.Conv3d)
    if stock and isinstance(module, torch.nn.Linear):
        return F.linear(x, delta.to(x.dtype))
    if stock and not module.transposed:
        d = delta.to(x.dtype)
        if module.padding_mode != "zeros":
            return module._conv_forward(x, d, None)
        conv = {1: F.conv1d, 2: F.conv2d, 3: F.conv3d}[d.dim() - 2]
        return conv(x, d, None, module.stride, module.padding, module.dilation, module.groups)
    # any other module with a weight: re-run it with W + delta and subtract
    from torch.func import functional_call

    state = {k: v for k, v in module.named_parameters(recurse=False)}
    base = functional_call(module, state, args, kwargs)
    state["weight"] = state["weight"] + delta.to(state["weight"].dtype)
    return functional_call(module, state, args, kwargs) - base


# the estimator lives in hutchinson.py; its names are also importable from here
__all__ = ["Fisher", "HessianTrace", "NO_TWIN", "TraceEstimate", "hutchinson_trace"]
