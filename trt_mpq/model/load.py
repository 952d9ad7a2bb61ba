"""Load, validate and prepare ONNX models.

`prepare_model` runs once per source model (cached by content): ONNX Runtime's quantization
pre-processing (shape inference and constant folding, which also folds BatchNorm into Conv and
drops Identity nodes), then gives every node a unique, stable name. Every later stage works on
the prepared graph, so group names, calibration tensors and plans all refer to the same names.
"""

from __future__ import annotations

import hashlib
import logging
import os
import tempfile
from pathlib import Path

import onnx

from trt_mpq.errors import ModelError

log = logging.getLogger(__name__)

PREPARE_VERSION = "1"  # bump when the preparation changes, to invalidate caches

#: operator domains ONNX Runtime's CPU provider implements (the standard ones and Microsoft's
#: contrib ops); a node of any other domain needs a custom-op library
RUNNABLE_DOMAINS = frozenset({"", "ai.onnx", "ai.onnx.ml", "com.microsoft",
                              "com.microsoft.nchwc", "com.microsoft.experimental",
                              "ai.onnx.preview.training"})


def file_digest(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()[:16]


def model_digest(model: onnx.ModelProto) -> str:
    return hashlib.sha256(model.SerializeToString(deterministic=True)).hexdigest()[:16]


def load_model(path: str | os.PathLike) -> onnx.ModelProto:
    """Load and check an ONNX file; raise `ModelError` with a fix for anything unusable."""
    p = Path(path)
    if not p.exists():
        raise ModelError(f"model file {p} does not exist; pass an .onnx file or a zoo name "
                         "(`trt-mpq zoo` lists them)")
    if not p.is_file():
        raise ModelError(f"{p} is not a file; pass an .onnx file")
    if p.stat().st_size == 0:
        raise ModelError(f"{p} is empty; re-export the model")
    try:
        model = onnx.load(str(p))
    except Exception as e:  # protobuf DecodeError and friends
        raise ModelError(f"{p} is not a readable ONNX model ({type(e).__name__}: {e}); "
                         "check that it is an .onnx file and was not truncated") from None
    if not model.graph.node:
        raise ModelError(f"{p} has an empty graph (not an ONNX model, or a corrupt one); "
                         "re-export the model")
    try:
        onnx.checker.check_model(model)
    except Exception as e:
        raise ModelError(f"{p} fails the ONNX checker: {str(e).splitlines()[0]}; "
                         "re-export the model with a supported opset") from None
    local = {f.domain for f in model.functions}  # the model's own functions run anywhere
    custom = [n for n in model.graph.node
              if n.domain not in RUNNABLE_DOMAINS and n.domain not in local]
    if custom:
        first = custom[0]
        more = f" (and {len(custom) - 1} more custom node(s))" if len(custom) > 1 else ""
        raise ModelError(f"{p}: node {first.name or first.output[0]!r} is the custom op "
                         f"{first.domain}:{first.op_type}{more}, which ONNX Runtime cannot run "
                         "without its custom-op library; trt-mpq prepares and calibrates every "
                         "model with ONNX Runtime. Export the model with standard ONNX ops "
                         "(or replace the custom op) and retry")
    return model


def name_nodes(model: onnx.ModelProto) -> onnx.ModelProto:
    """Give every unnamed or duplicate-named node a unique name derived from its op type and its
    first output (stable for a given graph). Returns a new model; the argument is not changed."""
    out = onnx.ModelProto()
    out.CopyFrom(model)
    seen: set[str] = set()
    for i, node in enumerate(out.graph.node):
        name = node.name
        if not name or name in seen:
            base = f"{node.op_type}:{node.output[0]}" if node.output else f"{node.op_type}_{i}"
            name = base
            k = 1
            while name in seen:
                name = f"{base}#{k}"
                k += 1
            node.name = name
        seen.add(name)
    return out


def prepare_model(path: str | os.PathLike, cache_dir: Path) -> Path:
    """Return the path of the prepared copy of `path`, building it on first use."""
    src = Path(path)
    load_model(src)  # validate before spending time
    digest = file_digest(src)
    import onnxruntime

    name = f"{digest}-ort{onnxruntime.__version__}-p{PREPARE_VERSION}.onnx"
    target = cache_dir / "prepared" / name
    if target.exists():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    from onnxruntime.quantization.shape_inference import quant_pre_process

    with tempfile.TemporaryDirectory(dir=target.parent) as tmp:
        pre = Path(tmp) / "pre.onnx"
        onnxruntime.set_default_logger_severity(3)  # its errors come back as one line below
        try:
            try:
                quant_pre_process(str(src), str(pre))
            except Exception as e:  # symbolic shape inference fails on some exporters' graphs
                log.warning("symbolic shape inference failed (%s); preparing without it",
                            str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__)
                quant_pre_process(str(src), str(pre), skip_symbolic_shape=True)
        except Exception as e:  # noqa: BLE001 - ONNX Runtime refused the user's model
            text = str(e).strip().replace(str(pre), str(src)).splitlines()
            raise ModelError(f"ONNX Runtime {onnxruntime.__version__} cannot load {src}: "
                             f"{type(e).__name__}" + (f": {text[0][:400]}" if text else "")
                             + "; check that onnxruntime.InferenceSession(PATH) runs the model "
                             "(supported opset and ops), re-export it and retry") from None
        finally:
            onnxruntime.set_default_logger_severity(2)
        model = name_nodes(onnx.load(str(pre)))
        tmp_out = Path(tmp) / "named.onnx"
        onnx.save(model, str(tmp_out))
        os.replace(tmp_out, target)
    log.debug("prepared %s -> %s", src, target)
    return target
