"""The torch twin of a zoo model: seeded construction, batched inference (and the progress bar it
and the builders' loops show), legacy ONNX export, and the checks that tie the ONNX file to it
(ONNX Runtime vs torch outputs, state fingerprints).

torch (and onnxruntime, tqdm) are imported when a helper is called, never at module level.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import warnings
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path

import numpy as np

from trt_mpq.errors import TaskError

logger = logging.getLogger(__name__)


@contextlib.contextmanager
def torch_seeded(seed: int):
    """Seed torch's CPU RNG inside the block and restore the caller's RNG state after it."""
    import torch

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        yield


def progress_bar(iterable: Iterable | None = None, *, progress: bool | None, desc: str,
                 total: int | None = None, unit: str = "it"):
    from tqdm.auto import tqdm

    return tqdm(iterable, desc=desc, total=total, unit=unit, leave=False,
                disable=None if progress is None else not progress)


def torch_outputs(model, inputs: Mapping[str, np.ndarray], batch: int, *, progress: bool | None,
                  desc: str, fn: Callable | None = None) -> list[np.ndarray]:
    """Run `fn(*batch)` (default: the model; arguments in the order of `inputs`) over `inputs`
    in batches under no_grad; returns one concatenated array per output (a tuple output gives
    several)."""
    import torch

    call = fn or model
    n = len(next(iter(inputs.values())))
    chunks: list[list[np.ndarray]] = []
    with torch.no_grad():
        for start in progress_bar(range(0, n, batch), progress=progress, desc=desc,
                                  total=(n + batch - 1) // batch, unit="batch"):
            feed = {k: torch.from_numpy(np.ascontiguousarray(v[start:start + batch]))
                    for k, v in inputs.items()}
            out = call(*feed.values())
            outs = out if isinstance(out, (tuple, list)) else (out,)
            chunks.append([o.detach().cpu().numpy() for o in outs])
    return [np.concatenate([c[i] for c in chunks]) for i in range(len(chunks[0]))]


def export_onnx(model, args: tuple, path: Path, input_names: Sequence[str],
                output_names: Sequence[str]) -> None:
    """Legacy (TorchScript) ONNX export, opset 17, batch axis dynamic, eval mode.

    The legacy exporter names nodes after the torch modules ("/layer1/layer1.0/conv1/Conv"),
    which the sensitivity code maps back to module names.
    """
    import torch

    model.eval()
    dynamic_axes = {n: {0: "batch"} for n in (*input_names, *output_names)}
    try:
        with warnings.catch_warnings(), torch.no_grad():
            warnings.simplefilter("ignore")
            torch.onnx.export(model, args, str(path), dynamo=False, opset_version=17,
                              input_names=list(input_names), output_names=list(output_names),
                              dynamic_axes=dynamic_axes)
    except Exception as e:
        raise TaskError(f"exporting the zoo model to ONNX failed ({type(e).__name__}: {e}); "
                        "check that the installed torch matches the zoo extra "
                        "(pip install 'trt-mpq[zoo]')") from e


def ort_outputs(model_path: Path, inputs: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    import onnxruntime as ort

    sess = ort.InferenceSession(str(model_path), providers=["CPUExecutionProvider"])
    names = [o.name for o in sess.get_outputs()]
    return dict(zip(names, sess.run(names, dict(inputs))))


def check_export(model_path: Path, inputs: Mapping[str, np.ndarray],
                 reference: Mapping[str, np.ndarray], name: str) -> float:
    """Max |ONNX Runtime - torch| over `reference`'s outputs; warns when it is large."""
    got = ort_outputs(model_path, inputs)
    diff = max(float(np.max(np.abs(got[k] - v))) for k, v in reference.items())
    scale = max(float(np.max(np.abs(v))) for v in reference.values())
    if not np.isfinite(diff) or diff > 1e-3 * max(1.0, scale):
        logger.warning("zoo %s: ONNX Runtime outputs differ from torch by up to %.3g "
                       "(output scale %.3g)", name, diff, scale)
    return diff


def state_fingerprint(module) -> str:
    """sha256 (16 hex digits) over a module's state_dict (names, dtypes, shapes, values)."""
    h = hashlib.sha256()
    for k, v in module.state_dict().items():
        a = v.detach().cpu().contiguous().numpy()
        h.update(k.encode())
        h.update(str(a.dtype).encode())
        h.update(str(a.shape).encode())
        h.update(a.tobytes())
    return h.hexdigest()[:16]


def check_fingerprint(module, meta: dict, name: str) -> None:
    want = meta.get("fingerprint")
    if want and state_fingerprint(module) != want:
        raise TaskError(f"the rebuilt torch model of zoo entry {name!r} differs from the one "
                        f"exported to ONNX (different torch/package versions than at build "
                        f"time: {meta.get('versions')}); delete the cache directory of {name} "
                        "and build it again")
