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
from trt_mpq.zoo.images import photo_views, random_views, resize_shorter_side, top1_agreement
from trt_mpq.zoo.splits import SPLIT_NAMES, load_splits, save_splits, split_indices

logger = logging.getLogger(__name__)

SEED = 0
SIZE = 224
BATCH = 32
MEAN = np.array([0.485, 0.456, 0.406], dtype=np.float32)
STD = np.array([0.229, 0.224, 0.225], dtype=np.float32)
IMAGENET_ENV = "TRT_MPQ_IMAGENET"
IMAGE_EXTS = (".jpeg", ".jpg", ".png", ".bmp", ".webp")
# (name, count) for the photo crops; the photos are divided between these groups
PHOTO_SIZES = (("bn_fit", 64), ("calibration", 64), ("search", 128), ("holdout", 128))
PHOTO_SHARES = {"bn_fit": 1, "calibration": 1, "search": 2, "holdout": 2}
IMAGENET_SIZES = (("bn_fit", 64), ("calibration", 128), ("search", 500), ("holdout", 500))
PHOTO_MAX_SHORT = 384  # photos are shrunk to this shorter side before random crops

ARCHS = {
    "resnet50": ("resnet50", "ResNet50_Weights", "ResNet-50"),
    "mobilenet_v2": ("mobilenet_v2", "MobileNet_V2_Weights", "MobileNetV2"),
}
RANDOM_NOTE = ("random weights: latency studies only; the metric is top-1 agreement with the "
               "FP32 model")


def to_input(views: np.ndarray) -> np.ndarray:
    """uint8 (N, 224, 224, 3) RGB -> float32 (N, 3, 224, 224), ImageNet mean/std."""
    x = (views.astype(np.float32) / 255.0 - MEAN) / STD
    return np.ascontiguousarray(x.transpose(0, 3, 1, 2).astype(np.float32))


def _transform(stored: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    return {"input": to_input(stored["views"])}


def _imagenet_dir() -> Path | None:
    env = os.environ.get(IMAGENET_ENV)
    return Path(env).expanduser().resolve() if env else None


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


# --- data


def _photo_groups(photos: dict[str, np.ndarray]) -> dict[str, list[str]]:
    names = list(photos)
    order = [names[i] for i in np.random.default_rng(SEED).permutation(len(names))]
    total = sum(PHOTO_SHARES.values())
    counts = {g: max(1, len(names) * s // total) for g, s in PHOTO_SHARES.items()}
    counts["holdout"] = len(names) - sum(v for g, v in counts.items() if g != "holdout")
    if counts["holdout"] < 1:
        raise TaskError(f"only {len(names)} scikit-image photos load offline; need at least "
                        f"{len(PHOTO_SHARES)}")
    groups, start = {}, 0
    for g, _ in PHOTO_SIZES:
        groups[g] = order[start:start + counts[g]]
        start += counts[g]
    return groups


def _photo_data(photos: dict[str, np.ndarray]
                ) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray], dict]:
    small = {}
    for n, img in photos.items():
        h, w = img.shape[:2]
        small[n] = (resize_shorter_side(img, PHOTO_MAX_SHORT) if min(h, w) > PHOTO_MAX_SHORT
                    else img)
    groups = _photo_groups(small)
    number = {n: i for i, n in enumerate(small)}
    views, indices = {}, {}
    for i, (g, count) in enumerate(PHOTO_SIZES):
        rng = np.random.default_rng([SEED, i])
        views[g] = random_views([small[n] for n in groups[g]], count, rng, SIZE)
        # random_views cycles through the photos: crop j comes from photo j % len(group)
        indices[g] = np.array([number[groups[g][j % len(groups[g])]] for j in range(count)])
    return views, indices, {"source": "scikit-image photos (random-resized crops, flips)",
                            "photo_groups": groups,
                            "index": "split indices are photo numbers in photo_names order",
                            "photo_names": list(small)}


def _list_imagenet(root: Path) -> tuple[list[tuple[Path, int]], list[str]]:
    if not root.is_dir():
        raise TaskError(f"{IMAGENET_ENV}={root} is not a directory; point it at an "
                        "ImageNet-style folder (one sub-folder of images per class) or unset it")
    classes = sorted(p.name for p in root.iterdir() if p.is_dir())
    items = [(f, label) for label, c in enumerate(classes)
             for f in sorted((root / c).iterdir())
             if f.is_file() and f.suffix.lower() in IMAGE_EXTS]
    if not items:
        raise TaskError(f"{IMAGENET_ENV}={root} holds no class sub-folders with images "
                        f"({', '.join(IMAGE_EXTS)})")
    return items, classes


def _read_image(path: Path, resize: int) -> np.ndarray:
    try:
        from PIL import Image
    except ImportError:
        raise TaskError("reading ImageNet images needs Pillow: pip install pillow") from None
    try:
        with Image.open(path) as im:
            im = im.convert("RGB")
            w, h = im.size
            s = resize / min(w, h)
            im = im.resize((max(resize, round(w * s)), max(resize, round(h * s))),
                           Image.BILINEAR)
            w, h = im.size
            left, top = (w - SIZE) // 2, (h - SIZE) // 2
            return np.asarray(im.crop((left, top, left + SIZE, top + SIZE)), dtype=np.uint8)
    except OSError as e:
        raise TaskError(f"cannot read the image {path} ({e}); remove it from "
                        f"{IMAGENET_ENV}") from None


def _imagenet_data(root: Path, resize: int, need_bn: bool, progress: bool | None
                   ) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray],
                              dict[str, np.ndarray], dict]:
    items, classes = _list_imagenet(root)
    sizes = [(g, c) for g, c in IMAGENET_SIZES if need_bn or g != "bn_fit"]
    want = sum(c for _, c in sizes)
    if len(items) < want:  # a small folder: shrink every split proportionally
        if len(items) < 2 * len(sizes):
            raise TaskError(f"{IMAGENET_ENV}={root} holds {len(items)} images; need at least "
                            f"{2 * len(sizes)}")
        sizes = [(g, max(1, c * len(items) // want)) for g, c in sizes]
    idx = split_indices(len(items), sizes, SEED)
    views, labels = {}, {}
    for g, ii in idx.items():
        views[g] = np.stack([_read_image(items[i][0], resize)
                             for i in progress_bar(ii, progress=progress,
                                                     desc=f"reading {g} images", unit="img")])
        labels[g] = np.array([items[i][1] for i in ii], dtype=np.int64)
    return views, labels, idx, {"source": f"image folder {root} ({len(classes)} classes, "
                                     f"{len(items)} images)",
                           "classes": len(classes)}


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
