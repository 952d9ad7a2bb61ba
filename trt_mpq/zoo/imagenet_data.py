"""The images of the resnet50 / mobilenet_v2 zoo models (`imagenet`), and their input format.

- default: random-resized crops (seeded, with flips) of the photos bundled with scikit-image;
  the photos themselves are divided between the BatchNorm-fit set and the calibration / search /
  holdout splits, so no photo feeds two of them (`_photo_data`).
- with TRT_MPQ_IMAGENET=<folder with one sub-folder per class> (e.g. ImageNet val sorted into
  the 1000 synset folders): real images (shorter side resized, centre 224 crop) with real labels
  (sorted sub-folder index) (`_imagenet_data`).
`to_input` turns uint8 RGB crops into the model's input: float32 [batch, 3, 224, 224],
standard ImageNet mean/std.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from trt_mpq.errors import TaskError
from trt_mpq.zoo.export import progress_bar
from trt_mpq.zoo.images import random_views, resize_shorter_side
from trt_mpq.zoo.splits import split_indices

SEED = 0  # the crops, the split draws and (imagenet.py) the random weights
SIZE = 224
MEAN = np.array([0.485, 0.456, 0.406], dtype=np.float32)
STD = np.array([0.229, 0.224, 0.225], dtype=np.float32)
IMAGENET_ENV = "TRT_MPQ_IMAGENET"
IMAGE_EXTS = (".jpeg", ".jpg", ".png", ".bmp", ".webp")
# (name, count) for the photo crops; the photos are divided between these groups
PHOTO_SIZES = (("bn_fit", 64), ("calibration", 64), ("search", 128), ("holdout", 128))
PHOTO_SHARES = {"bn_fit": 1, "calibration": 1, "search": 2, "holdout": 2}
IMAGENET_SIZES = (("bn_fit", 64), ("calibration", 128), ("search", 500), ("holdout", 500))
PHOTO_MAX_SHORT = 384  # photos are shrunk to this shorter side before random crops


def to_input(views: np.ndarray) -> np.ndarray:
    """uint8 (N, 224, 224, 3) RGB -> float32 (N, 3, 224, 224), ImageNet mean/std."""
    x = (views.astype(np.float32) / 255.0 - MEAN) / STD
    return np.ascontiguousarray(x.transpose(0, 3, 1, 2).astype(np.float32))


def _imagenet_dir() -> Path | None:
    env = os.environ.get(IMAGENET_ENV)
    return Path(env).expanduser().resolve() if env else None


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
