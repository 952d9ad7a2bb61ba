"""resnet50 / mobilenet_v2: torchvision ImageNet classifiers at 224x224.

Weights: the torchvision ImageNet checkpoint when its file is already in the local torch hub
cache (`<torch.hub.get_dir()>/checkpoints/`; nothing is downloaded). Otherwise random weights
(seeded) whose BatchNorm statistics are re-estimated on 64 photo crops so that activations are
well scaled: such a model is for latency studies only, and its metric is top-1 agreement with
the FP32 model.

Data:
- default: random-resized crops (seeded, with flips) of the photos bundled with scikit-image;
  the photos themselves are divided between the BatchNorm-fit set and the calibration / search /
  holdout splits, so no photo feeds two of them. Labels = argmax of the FP32 torch model, i.e.
  the metric is top-1 agreement with FP32.
- with TRT_MPQ_IMAGENET=<folder with one sub-folder per class> (e.g. ImageNet val sorted into
  the 1000 synset folders): real images (shorter side resized, centre 224 crop) with real labels
  (sorted sub-folder index), and the photo agreement as an extra check.
Input "input" float32 [batch, 3, 224, 224], standard ImageNet mean/std; output "logits".

Reading both kinds of data and the input format are `imagenet_data`; this module holds the
weights (checkpoint or random with re-estimated BatchNorm), the build, the task and the twin.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

import numpy as np

from trt_mpq.errors import TaskError
from trt_mpq.task import ExtraCheck, Split, Task, accuracy
from trt_mpq.zoo.cache import cached_build, json_safe, require_built
from trt_mpq.zoo.datasets import load_photos
from trt_mpq.zoo.export import (
    check_export,
    check_fingerprint,
    export_onnx,
    progress_bar,
    state_fingerprint,
    torch_outputs,
    torch_seeded,
)
from trt_mpq.zoo.imagenet_data import (
    IMAGE_EXTS,
    IMAGENET_ENV,
    IMAGENET_SIZES,
    MEAN,
    PHOTO_MAX_SHORT,
    PHOTO_SHARES,
    PHOTO_SIZES,
    SEED,
    SIZE,
    STD,
    _imagenet_data,
    _imagenet_dir,
    _photo_data,
    to_input,
)
from trt_mpq.zoo.imagenet_data import _list_imagenet as _list_imagenet
from trt_mpq.zoo.imagenet_data import _read_image as _read_image
from trt_mpq.zoo.images import photo_views, top1_agreement
from trt_mpq.zoo.splits import SPLIT_NAMES, load_splits, save_splits

logger = logging.getLogger(__name__)

BATCH = 32

ARCHS = {
    "resnet50": ("resnet50", "ResNet50_Weights", "ResNet-50"),
    "mobilenet_v2": ("mobilenet_v2", "MobileNet_V2_Weights", "MobileNetV2"),
}
RANDOM_NOTE = ("random weights: latency studies only; the metric is top-1 agreement with the "
               "FP32 model")


def _transform(stored: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    return {"input": to_input(stored["views"])}


def _checkpoints(arch: str) -> list[tuple[str, str]]:
    """[(weights enum member, checkpoint file name)], preferred (DEFAULT) first."""
    import torchvision.models as tvm

    enum = getattr(tvm, ARCHS[arch][1])
    members = [enum.DEFAULT] + [w for w in enum if w is not enum.DEFAULT]
    return [(w.name, w.url.rsplit("/", 1)[-1]) for w in members]


def _hub_checkpoint_dir() -> Path:
    """torch.hub's checkpoint directory, computed without importing torch."""
    torch_home = os.path.expanduser(os.getenv(
        "TORCH_HOME", os.path.join(os.getenv("XDG_CACHE_HOME", "~/.cache"), "torch")))
    return Path(torch_home) / "hub" / "checkpoints"


def _find_checkpoint(arch: str) -> tuple[str, Path] | None:
    import torch.hub

    ckpt_dir = Path(torch.hub.get_dir()) / "checkpoints"
    for member, fname in _checkpoints(arch):
        if (ckpt_dir / fname).is_file():
            return member, ckpt_dir / fname
    return None


def _stale(meta: dict) -> str | None:
    imagenet = _imagenet_dir()
    if meta.get("imagenet") != (str(imagenet) if imagenet else None):
        return f"{IMAGENET_ENV} changed"
    if meta.get("weights") == "random":
        for fname in meta.get("checkpoint_candidates", []):
            if (_hub_checkpoint_dir() / fname).is_file():
                return f"a pretrained checkpoint ({fname}) is now in the torch hub cache"
    return None


def _new_model(arch: str):
    import torchvision.models as tvm

    return getattr(tvm, ARCHS[arch][0])(weights=None)


def _load_checkpoint(model, path: Path) -> None:
    import torch

    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
        model.load_state_dict(state)
    except Exception as e:
        raise TaskError(f"cannot load the torchvision checkpoint {path} ({e}); delete it (the "
                        "zoo then uses random weights) or replace it with an intact copy") from None


def _reestimate_bn(model, x: np.ndarray, progress: bool | None) -> None:
    """Reset BatchNorm running statistics and re-estimate them (cumulative average) on `x`."""
    import torch
    from torch import nn

    bns = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    old = [m.momentum for m in bns]
    for m in bns:
        m.reset_running_stats()
        m.momentum = None
    model.train()
    with torch.no_grad():
        for s in progress_bar(range(0, len(x), BATCH), progress=progress,
                                desc="re-estimating BatchNorm", unit="batch"):
            model(torch.from_numpy(x[s:s + BATCH]))
    for m, mom in zip(bns, old):
        m.momentum = mom
    model.eval()


def _bn_buffers(model) -> dict:
    from torch import nn

    return {f"{name}.{b}": getattr(m, b).clone()
            for name, m in model.named_modules()
            if isinstance(m, nn.modules.batchnorm._BatchNorm)
            for b in ("running_mean", "running_var", "num_batches_tracked")}


# --- build


def _build(name: str, tmp: Path, progress: bool | None) -> dict:
    import torch

    imagenet = _imagenet_dir()
    found = _find_checkpoint(name)
    candidates = [f for _, f in _checkpoints(name)]
    with torch_seeded(SEED):
        model = _new_model(name)
    if found:
        member, ckpt = found
        _load_checkpoint(model, ckpt)
        weights = "pretrained"
        logger.info("zoo %s: ImageNet weights %s from %s", name, member, ckpt)
    else:
        weights, member, ckpt = "random", None, None
        logger.info("zoo %s: no torchvision checkpoint (%s) in %s; using random weights "
                    "(latency studies only)", name, " or ".join(candidates),
                    _hub_checkpoint_dir())
    model.eval()

    photos = load_photos()
    if imagenet is None:
        views, indices, info = _photo_data(photos)
        labels = None
    else:
        resize = 256
        if found:
            import torchvision.models as tvm

            resize = int(getattr(getattr(tvm, ARCHS[name][1]), member).transforms().resize_size[0])
        views, labels, indices, info = _imagenet_data(imagenet, resize, weights == "random",
                                                      progress)
        info["resize"] = resize

    if weights == "random":
        _reestimate_bn(model, to_input(views["bn_fit"]), progress)
        torch.save(_bn_buffers(model), tmp / "bn_stats.pt")

    fp32 = {}
    for g in SPLIT_NAMES:
        (fp32[g],) = torch_outputs(model, {"input": to_input(views[g])}, BATCH,
                                     progress=progress, desc=f"FP32 outputs, {g}")
    if labels is None:
        labels = {g: fp32[g].argmax(-1).astype(np.int64) for g in SPLIT_NAMES}
    search_metric = float(np.mean(fp32["search"].argmax(-1) == labels["search"]))

    example = torch.from_numpy(to_input(views["search"][:2]))
    export_onnx(model, (example,), tmp / "model.onnx", ["input"], ["logits"])
    diff = check_export(tmp / "model.onnx", {"input": to_input(views["search"][:8])},
                          {"logits": fp32["search"][:8]}, name)
    save_splits(tmp / "splits.npz", {g: ({"views": views[g]}, labels[g])
                                       for g in SPLIT_NAMES}, indices)
    files = ["model.onnx", "splits.npz"] + (["bn_stats.pt"] if weights == "random" else [])
    if imagenet is not None:
        pviews, pnames = photo_views(photos, SIZE)
        with open(tmp / "photos.npz", "wb") as f:
            np.savez(f, views=pviews, names=np.array(pnames))
        files.append("photos.npz")
    metric_name = "top1_agreement_with_fp32" if imagenet is None else "top1_accuracy"
    logger.info("zoo %s: weights %s, FP32 search %s %.4f", name, weights, metric_name,
                search_metric)
    return json_safe({
        "weights": weights,
        "files": files,
        "arch": f"torchvision.models.{ARCHS[name][0]}",
        "checkpoint": str(ckpt) if ckpt else None,
        "checkpoint_member": member,
        "checkpoint_candidates": candidates,
        "imagenet": str(imagenet) if imagenet else None,
        "seed": SEED,
        "data": info,
        "split_sizes": {g: len(v) for g, v in views.items()},
        "distinct_labels": {g: int(len(np.unique(labels[g]))) for g in SPLIT_NAMES},
        "baseline": {"metric": metric_name, "split": "search", "fp32_torch": search_metric},
        "onnx_max_abs_diff": diff,
        "fingerprint": state_fingerprint(model),
    })


def _build_task(name: str, cache_dir: Path, progress: bool | None) -> Task:
    d, meta = cached_build(cache_dir, name, lambda tmp: _build(name, tmp, progress),
                             stale=_stale)
    splits = load_splits(d / "splits.npz", _transform)
    random = meta["weights"] == "random"
    extra: tuple[ExtraCheck, ...] = ()
    notes = []
    if random:
        notes.append(RANDOM_NOTE if meta["imagenet"] is None else
                     "random weights: latency studies only (accuracy on the real labels is at "
                     "chance level)")
        notes.append("BatchNorm statistics re-estimated on 64 photo crops outside every split"
                     if meta["imagenet"] is None else
                     "BatchNorm statistics re-estimated on 64 images outside every split")
    else:
        notes.append(f"torchvision ImageNet weights {meta['checkpoint_member']}")
    if meta["imagenet"] is None:
        notes.append("data: random crops of scikit-image photos (each photo feeds one split "
                     "only); labels = FP32 top-1, so accuracy = top-1 agreement with FP32")
    else:
        notes.append(f"data: {meta['data']['source']}; labels = sorted class sub-folder index "
                     "(the standard ImageNet order when the folder holds the 1000 synsets)")
        with np.load(d / "photos.npz", allow_pickle=False) as z:
            photos = Split({"input": to_input(z["views"])}, None)
        extra = (ExtraCheck(name="photo_top1_agreement", split=photos,
                            fn=top1_agreement("logits")),)
    label = ARCHS[name][2]
    return Task(
        name=name, model_path=d / "model.onnx",
        calibration=splits["calibration"], search=splits["search"], holdout=splits["holdout"],
        metric=accuracy("logits"), weights=meta["weights"],
        description=(f"torchvision {label}, 224x224, "
                     + ("random weights with re-estimated BatchNorm (latency studies only)"
                        if random else "ImageNet weights")),
        latency_batch=1, eval_batch=BATCH, extra_checks=extra, notes=tuple(notes),
        torch_model=f"{__name__}:make_{name}_torch_model")


def build_resnet50(cache_dir: Path, progress: bool | None = None) -> Task:
    return _build_task("resnet50", cache_dir, progress)


def build_mobilenet_v2(cache_dir: Path, progress: bool | None = None) -> Task:
    return _build_task("mobilenet_v2", cache_dir, progress)


def _make_torch_model(name: str, cache_dir: Path):
    import torch

    d, meta = require_built(cache_dir, name)
    with torch_seeded(SEED):
        model = _new_model(name)
    if meta["weights"] == "pretrained":
        ckpt = Path(meta["checkpoint"])
        if not ckpt.is_file():
            raise TaskError(f"the checkpoint {ckpt} that zoo model {name!r} was built from is "
                            f"gone; put it back, or delete the zoo cache of {name} to rebuild")
        _load_checkpoint(model, ckpt)
    else:
        bn = torch.load(d / "bn_stats.pt", map_location="cpu", weights_only=True)
        model.load_state_dict(bn, strict=False)
    model.eval()
    check_fingerprint(model, meta, name)
    return model


def make_resnet50_torch_model(cache_dir: Path):
    """The eval-mode torchvision ResNet-50 exported as the resnet50 zoo model."""
    return _make_torch_model("resnet50", cache_dir)


def make_mobilenet_v2_torch_model(cache_dir: Path):
    """The eval-mode torchvision MobileNetV2 exported as the mobilenet_v2 zoo model."""
    return _make_torch_model("mobilenet_v2", cache_dir)


# the data side lives in imagenet_data; its names are also importable from here (the private
# _list_imagenet and _read_image too, by their redundant aliases above)
__all__ = ["ARCHS", "BATCH", "IMAGENET_ENV", "IMAGENET_SIZES", "IMAGE_EXTS", "MEAN",
           "PHOTO_MAX_SHORT", "PHOTO_SHARES", "PHOTO_SIZES", "RANDOM_NOTE", "SEED", "SIZE", "STD",
           "build_mobilenet_v2", "build_resnet50", "make_mobilenet_v2_torch_model",
           "make_resnet50_torch_model", "to_input"]
