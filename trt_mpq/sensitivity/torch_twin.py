"""The model's torch twin: map ONNX ops back to torch modules and fake-quantize their weights.

Gradient-based sensitivity metrics (Hessian trace, Fisher) run on a torch module that computes
the same function as the ONNX graph (the zoo's `make_torch_model(cache_dir)`, or a user's
`--torch package.module:make_model`). The legacy torch.onnx exporter (`dynamo=False`) names
every node after the module call stack that produced it ("/layer1/layer1.0/conv1/Conv"), which
`module_for_node` inverts; `map_groups` checks each op's module owns a weight of the ONNX
weight's shape.

`fake_quantize` reproduces, in torch, the weight each precision puts into the real graph (the
passes in `trt_mpq.qdq.passes`): what these metrics measure is the *weight* perturbation
Q(W) - W, as HAWQ does; activation quantization is not modelled.

Everything here imports torch lazily: `import trt_mpq.sensitivity.torch_twin` works without it.
"""

from __future__ import annotations

import importlib
import importlib.util
import inspect
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from trt_mpq.errors import ConfigError, TaskError, user_code
from trt_mpq.model.groups import Group, GroupOp
from trt_mpq.plan import Precision

if TYPE_CHECKING:  # pragma: no cover
    import torch

INT8_MAX = 127.0
FP8_E4M3_MAX = 448.0  # the largest finite float8 e4m3fn value (passes.FP8_MAX)
INT4_BLOCK = 32  # passes.int4_weight_only's block size along K
# onnxruntime.transformers.float16 (passes.to_fp16) keeps weights nonzero and finite
FP16_MIN_POSITIVE = 5.96e-08
FP16_MAX = 65504.0

TORCH_HINT = ("pass a twin whose module names match the exported node names "
              "(--torch package.module:make_model)")


# -------------------------------------------------------------------------------------------
# node name -> module name


def _unqualified(name: str) -> str:
    """The scope name the legacy exporter gives a module: its qualified name from the last
    non-numeric atom on ("layer1.0.conv1" -> "conv1", "layer1.0" -> "layer1.0",
    "encoder.layer.0" -> "layer.0"); torch.onnx.utils._unqualified_variable_name."""
    atoms = name.split(".")
    for i in range(len(atoms) - 1, -1, -1):
        if not atoms[i].isnumeric():
            return ".".join(atoms[i:])
    return name


def module_for_node(node_name: str, module_names: Iterable[str]) -> str | None:
    """The qualified torch module name of the module that produced a legacy-exported ONNX node.

    The legacy exporter names a node "/<scope>/<scope>/.../<OpType>[_<n>]", one scope per module
    call on the stack, each scope being the module's unqualified name (`_unqualified`):
    "/layer1/layer1.0/conv1/Conv" -> "layer1.0.conv1",
    "/encoder/encoder/layer.0/attention/self/query/MatMul" ->
    "encoder.encoder.layer.0.attention.self.query", "/_blocks.3/_depthwise_conv/Conv" ->
    "_blocks.3._depthwise_conv", "/fc/Gemm" -> "fc".

    The scopes are walked from the root: each one resolves to the shallowest module below the
    previous one whose unqualified name it is (a direct child when there is one; a deeper
    descendant when a module calls a grandchild directly). If that walk fails (a module
    calling a module it does not own), a last scope that names exactly one module still
    resolves. Returns None for nodes outside any module scope ("/Conv") or that no module
    matches.
    """
    modules = [m for m in module_names if m]
    scopes = [s for s in node_name.split("/") if s][:-1]
    if not scopes:
        return None
    by_unq: dict[str, list[str]] = {}
    for m in modules:
        by_unq.setdefault(_unqualified(m), []).append(m)
    full = ""
    for seg in scopes:
        prefix = full + "." if full else ""
        cands = [m for m in by_unq.get(seg, ()) if m.startswith(prefix)]
        if not cands:
            full = ""
            break
        full = min(cands, key=lambda m: (m.count("."), len(m), m))
    if full:
        return full
    last = by_unq.get(scopes[-1], [])
    return last[0] if len(last) == 1 else None


# -------------------------------------------------------------------------------------------
# ops -> modules


def weight_layout(module: Any, op: GroupOp) -> str | None:
    """How `module.weight` stores the ONNX op's weight: "out_in" (output channels on dim 0:
    Conv, Linear -> Gemm transB=1 keeps [out, in], Linear -> MatMul is its transpose [in, out]),
    "in_out" (a module that stores the MatMul layout itself, e.g. transformers' Conv1D), or None
    when the shapes do not correspond. A square weight is [out, in] on an `nn.Linear` and taken
    as [in, out] on any other module exported as MatMul."""
    import torch

    w = getattr(module, "weight", None)
    if not isinstance(w, torch.Tensor):
        return None
    shape, onnx_shape = tuple(w.shape), tuple(int(d) for d in op.weight_shape)
    if op.op_type == "Conv" or len(onnx_shape) != 2:
        return "out_in" if shape == onnx_shape else None
    is_linear = isinstance(module, torch.nn.Linear)
    if op.op_type == "MatMul":  # ONNX [in, out]
        if shape == onnx_shape[::-1] and (is_linear or shape != onnx_shape):
            return "out_in"
        if shape == onnx_shape and not is_linear:
            return "in_out"
        return None
    # Gemm: [out, in] with transB=1 (what Linear exports), [in, out] otherwise
    if is_linear and shape in (onnx_shape, onnx_shape[::-1]):
        return "out_in"
    if shape == onnx_shape:
        return "out_in"
    return "in_out" if shape == onnx_shape[::-1] else None


def map_groups(groups: Iterable[Group], model: Any) -> dict[str, Any]:
    """ONNX op name -> the torch module owning its weight, for every op of `groups`.

    Raises `ConfigError` naming the first ops that map to no module (or to one whose `.weight`
    does not have the ONNX weight's shape, up to the transpose the Linear -> MatMul export
    applies)."""
    named = dict(model.named_modules())
    names = set(named) - {""}
    out: dict[str, Any] = {}
    bad: list[str] = []
    for g in groups:
        for op in g.ops:
            name = module_for_node(op.name, names)
            module = named.get(name) if name else None
            if module is None:
                bad.append(f"{op.name!r} (no module)")
            elif weight_layout(module, op) is None:
                w = getattr(module, "weight", None)
                got = tuple(w.shape) if hasattr(w, "shape") else None
                bad.append(f"{op.name!r} (module {name!r} has weight {got}, the ONNX weight is "
                           f"{tuple(op.weight_shape)})")
            else:
                out[op.name] = module
    if bad:
        raise ConfigError(
            f"the torch twin does not match the ONNX model: {len(bad)} op(s) map to no module "
            f"with the right weight, e.g. {'; '.join(bad[:3])}; {TORCH_HINT}")
    return out


# -------------------------------------------------------------------------------------------
# fake quantization


def fake_quantize(w: torch.Tensor, precision: Precision, op_type: str = "Conv") -> torch.Tensor:
    """The weight `w` as the real graph would compute with it at `precision`, in torch: the
    function its `PrecisionSpec.fake_quant` names.

    `w` is in torch's [out, in, *kernel] layout (Conv, and Linear whether it was exported as
    Gemm or as MatMul; for a module storing [in, out], pass the transpose). `op_type` is the
    ONNX op; INT8_DYNAMIC and INT4_WEIGHT only exist for MatMul in the real graphs but are
    computed the same way for any op.

    - INT8, INT8_DYNAMIC: symmetric per output channel, scale = amax/127, round half to even,
      clip [-127, 127] (ONNX Runtime's QDQ quantizer; `passes.dynamic_int8`).
    - INT4_WEIGHT: blocks of 32 along the input (K) dimension of each output channel (the
      flattened in*kernel dims for a conv), as ONNX Runtime's MatMulNBits quantizer (MLAS)
      does for both the MatMulNBits and the block-wise DequantizeLinear forms: the block's
      element of largest magnitude m gives scale = m / -8, q = clip(floor(w/scale + 1/2), -8, 7),
      so that element is exactly -8 (16 levels, not a [-7, 7] grid with amax/7).
    - FP8: per output channel scale = amax/448, w/scale rounded to float8_e4m3fn.
    - FP16: cast to half and back, after the clamp ONNX Runtime's float16 converter applies
      (nonzero magnitudes into [5.96e-8, 65504], sign kept). FP32: `w` itself.

    Activations are not modelled: these metrics measure the weight perturbation only.
    """
    p = Precision(precision)
    fn = _fake_quantizer(p.spec.fake_quant)
    if fn is None:
        raise ConfigError(f"no fake quantization for {p.value}")
    return fn(w)


def _fake_quantizer(spec: str) -> Callable[[Any], Any] | None:
    """The function a `PrecisionSpec.fake_quant` names ("module:function")."""
    if not spec:
        return None
    module, name = spec.split(":")
    return getattr(importlib.import_module(module), name)


def _per_row(w: torch.Tensor) -> torch.Tensor:
    """`w` as float32 [out, everything else]."""
    import torch

    x = w.detach().to(torch.float32)
    return x.reshape(x.shape[0], -1) if x.dim() > 1 else x.reshape(1, -1)


def fq_identity(w: torch.Tensor) -> torch.Tensor:
    """FP32: the weight itself."""
    return w


def fq_fp16(w: torch.Tensor) -> torch.Tensor:
    """Cast to half and back, after ONNX Runtime's float16 converter's clamp."""
    import torch

    a = w.detach().to(torch.float32)
    mag = a.abs()
    a = torch.where((mag > 0) & (mag < FP16_MIN_POSITIVE), a.sign() * FP16_MIN_POSITIVE, a)
    a = torch.where(mag > FP16_MAX, a.sign() * FP16_MAX, a)
    return a.to(torch.float16).to(w.dtype)


def fq_int8(w: torch.Tensor) -> torch.Tensor:
    """Symmetric per output channel, scale = amax/127, round half to even, clip [-127, 127]."""
    import torch

    flat = _per_row(w)
    scale = flat.abs().amax(dim=1, keepdim=True).clamp_min(1e-12) / INT8_MAX
    q = torch.clamp(torch.round(flat / scale), -INT8_MAX, INT8_MAX) * scale
    return q.reshape(w.shape).to(w.dtype)


def fq_fp8(w: torch.Tensor) -> torch.Tensor:
    """Per output channel scale = amax/448, w/scale rounded to float8_e4m3fn."""
    import torch

    flat = _per_row(w)
    scale = flat.abs().amax(dim=1, keepdim=True).clamp_min(1e-12) / FP8_E4M3_MAX
    q = (flat / scale).to(torch.float8_e4m3fn).to(torch.float32) * scale
    return q.reshape(w.shape).to(w.dtype)


def fq_int4_blocks(w: torch.Tensor) -> torch.Tensor:
    """Blocks of 32 along K; the block's largest-magnitude element m gives scale = m / -8."""
    import torch

    flat = _per_row(w)
    rows, k = flat.shape
    blocks = -(-k // INT4_BLOCK)
    padded = torch.zeros(rows, blocks * INT4_BLOCK, dtype=flat.dtype, device=flat.device)
    padded[:, :k] = flat
    b = padded.reshape(rows, blocks, INT4_BLOCK)
    hi, lo = b.amax(dim=2, keepdim=True), b.amin(dim=2, keepdim=True)
    m = torch.where(hi.abs() > lo.abs(), hi, lo)
    scale = m / -8.0
    inv = torch.where(scale != 0, 1.0 / scale, torch.zeros_like(scale))
    qb = torch.clamp(torch.floor(b * inv + 0.5), -8.0, 7.0) * scale
    return qb.reshape(rows, -1)[:, :k].reshape(w.shape).to(w.dtype)


def module_weight(module: Any, op: GroupOp) -> torch.Tensor:
    """The module's weight in [out, in, ...] layout (a view)."""
    w = module.weight
    return w.t() if weight_layout(module, op) == "in_out" else w


def weight_delta(module: Any, op: GroupOp, precision: Precision) -> torch.Tensor:
    """Q(W) - W for the module's weight, in the module's own layout (detached, float32)."""
    import torch

    with torch.no_grad():
        w = module_weight(module, op).detach()
        d = fake_quantize(w, precision, op.op_type).to(torch.float32) - w.to(torch.float32)
        return d.t() if weight_layout(module, op) == "in_out" else d


# -------------------------------------------------------------------------------------------
# loading


def load_twin(spec: str, cache_dir: Path | None = None) -> Callable[[], Any]:
    """Resolve "package.module:function" into a factory of the eval-mode torch twin.

    A zoo task's `torch_model` function takes the zoo cache directory (pass `cache_dir`); a
    user's `--torch package.module:make_model` takes no argument. The function gets `cache_dir`
    when it is given and the function has a required positional parameter, else nothing.
    The returned factory builds a fresh module on each call (metrics set `requires_grad` on
    it), switches it to eval mode and checks it is a `torch.nn.Module`.
    """
    if not isinstance(spec, str) or spec.count(":") != 1 or not all(spec.split(":")):
        raise ConfigError(f"--torch must look like package.module:make_model, got {spec!r}")
    mod_name, func_name = spec.split(":")
    try:
        found = importlib.util.find_spec(mod_name) is not None
    except (ImportError, ValueError):
        found = False
    if not found:
        raise TaskError(f"cannot find module {mod_name!r} for the torch twin; make sure its "
                        "folder is on PYTHONPATH")
    with user_code(f"importing the torch-twin module {mod_name!r}"):
        mod = importlib.import_module(mod_name)
    func = getattr(mod, func_name, None)
    if not callable(func):
        raise TaskError(f"{mod_name!r} has no function {func_name!r} for the torch twin")
    pass_cache = cache_dir is not None and _needs_argument(func)

    def factory() -> Any:
        import torch

        with user_code(f"the torch-twin factory {spec}"):
            model = func(Path(cache_dir)) if pass_cache else func()
        if not isinstance(model, torch.nn.Module):
            raise TaskError(f"{spec} returned {type(model).__name__}, not a torch.nn.Module")
        return model.eval()

    return factory


def _needs_argument(func: Callable) -> bool:
    try:
        params = inspect.signature(func).parameters.values()
    except (TypeError, ValueError):
        return False
    return any(p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD) and p.default is p.empty
               for p in params)


def modules_by_op(groups: Iterable[Group], model: Any) -> Mapping[str, tuple[GroupOp, Any]]:
    """op name -> (GroupOp, module), via `map_groups`."""
    groups = list(groups)
    mods = map_groups(groups, model)
    return {op.name: (op, mods[op.name]) for g in groups for op in g.ops}
