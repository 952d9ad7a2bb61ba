"""resnet-digits / mobilenetv2-digits: torchvision ResNet-18 and MobileNetV2 (unmodified
architectures, 10 classes) trained from scratch, seeded, on scikit-learn's 1,797 real 8x8
handwritten digits, bilinear-upsampled to 32x32, grey repeated to 3 channels and normalised as
((x / 16) - 0.5) / 0.5. Input "input" [batch, 3, 32, 32] float32, output "logits" [batch, 10].

Split of the digits (one seeded permutation): train 1000, calibration 128, search 300,
holdout 369 (disjoint; only the train part is trained on).

Fidelity split (for `--metric agreement` / `kl`): 80,000 seeded views of the 1,669 digits
outside the calibration split (every digit 47-48 times): a sub-pixel shift of up to 2 px, a
rotation of up to 12 degrees, a scale of 0.9-1.1 and Gaussian noise of standard deviation up to
0.1, clipped to the input range. It is lazy: `fidelity-digits.npz` beside the build keeps each
view's 8x8 digit and parameters (made on first load), and `fidelity_inputs` draws the inputs of
each batch. Its labels are the source digits' labels.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from trt_mpq.task import Split, Task, accuracy
from trt_mpq.zoo.cache import cached_arrays, cached_build, json_safe, require_built
from trt_mpq.zoo.export import check_export, export_onnx, progress_bar, torch_outputs, torch_seeded
from trt_mpq.zoo.fidelity import arrays_digest, digit_views, seeded_noise, warp_views
from trt_mpq.zoo.images import UPSAMPLING, upsample_bilinear, upsampling_stale
from trt_mpq.zoo.splits import (
    SPLIT_NAMES,
    load_split_indices,
    load_splits,
    save_splits,
    split_indices,
)

logger = logging.getLogger(__name__)

SEED = 0
SIZE = 32
SPLIT_SIZES = (("train", 1000), ("calibration", 128), ("search", 300), ("holdout", None))
FIDELITY_SIZE = 80_000  # a 48,000-sample holdout part: enough to certify a 0.01 % drop
FIDELITY_SEED = 1
FIDELITY_VERSION = "digits-views-v2"  # the transform and the stored form; change with either
FIDELITY_FILE = "fidelity-digits.npz"


@dataclass(frozen=True)
class Recipe:
    arch: str  # torchvision constructor
    epochs: int
    lr: float
    max_lr: float
    weight_decay: float = 1e-4
    batch: int = 64
    max_shift: int = 2  # random integer roll of -max_shift..max_shift pixels per batch


RECIPES = {
    "resnet-digits": Recipe("resnet18", epochs=15, lr=2e-3, max_lr=3e-3),
    "mobilenetv2-digits": Recipe("mobilenet_v2", epochs=15, lr=2e-3, max_lr=1e-2),
}
DESCRIPTIONS = {
    "resnet-digits": "torchvision ResNet-18 trained from scratch on scikit-learn digits "
                     "(8x8 upsampled to 32x32), seeded",
    "mobilenetv2-digits": "torchvision MobileNetV2 trained from scratch on scikit-learn digits "
                          "(8x8 upsampled to 32x32), seeded",
}


def digits_to_input(images: np.ndarray) -> np.ndarray:
    """(N, 8, 8) digits with values 0..16 -> float32 (N, 3, 32, 32) model input."""
    up = upsample_bilinear(np.asarray(images, dtype=np.float32), SIZE)
    x = ((up / 16.0) - 0.5) / 0.5
    return np.ascontiguousarray(np.repeat(x[:, None], 3, axis=1).astype(np.float32))


def fidelity_inputs(stored: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Model inputs of a batch of the fidelity split's stored views: `digits_to_input`'s
    upsampling and normalisation, warped by each sample's view (shifts in 8x8-digit pixels, 4
    input pixels each), plus its seeded noise, clipped to the input range -1..1."""
    x = warp_views(upsample_bilinear(stored["digits8"], SIZE), stored["view"], SIZE / 8)
    x = ((x / 16.0) - 0.5) / 0.5
    x += seeded_noise(stored["noise_seed"], SIZE, stored["view"][:, 4])
    np.clip(x, -1.0, 1.0, out=x)
    return {"input": np.ascontiguousarray(np.repeat(x[:, None], 3, axis=1))}


def fidelity_split(d: Path) -> Split:
    """The fidelity split of the digit build in `d` (made from a fixed seed and kept in
    `FIDELITY_FILE` beside it: making it imports scikit-learn, which costs about a second)."""
    calibration = load_split_indices(d / "splits.npz")["calibration"]
    key = (f"{FIDELITY_VERSION} n={FIDELITY_SIZE} seed={FIDELITY_SEED} "
           f"calibration={arrays_digest([calibration])}")

    def make() -> dict[str, np.ndarray]:
        from sklearn.datasets import load_digits

        digits = load_digits()
        return digit_views(digits.images, digits.target, calibration, FIDELITY_SIZE,
                           np.random.default_rng(FIDELITY_SEED))

    stored = cached_arrays(d / FIDELITY_FILE, key, make)
    labels = stored.pop("labels")
    return Split(stored, labels, transform=fidelity_inputs, transform_id=FIDELITY_VERSION)


def _new_model(arch: str):
    import torchvision

    return getattr(torchvision.models, arch)(num_classes=10)


def _train(model, x: np.ndarray, y: np.ndarray, recipe: Recipe, progress: bool | None,
           desc: str) -> float:
    import torch
    import torch.nn.functional as F

    rng = np.random.default_rng(SEED)
    xt, yt = torch.from_numpy(x), torch.from_numpy(y)
    steps = (len(x) + recipe.batch - 1) // recipe.batch
    opt = torch.optim.AdamW(model.parameters(), lr=recipe.lr, weight_decay=recipe.weight_decay)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=recipe.max_lr,
                                                epochs=recipe.epochs, steps_per_epoch=steps)
    model.train()
    loss_value = float("nan")
    bar = progress_bar(range(recipe.epochs), progress=progress, desc=desc, unit="epoch")
    for _ in bar:
        perm = torch.from_numpy(rng.permutation(len(x)))
        total = 0.0
        for s in range(steps):
            idx = perm[s * recipe.batch:(s + 1) * recipe.batch]
            dy, dx = (int(v) for v in rng.integers(-recipe.max_shift, recipe.max_shift + 1, 2))
            xb = torch.roll(xt[idx], shifts=(dy, dx), dims=(2, 3))
            loss = F.cross_entropy(model(xb), yt[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            total += float(loss.detach()) * len(idx)
        loss_value = total / len(x)
        bar.set_postfix(loss=f"{loss_value:.3f}")
    model.eval()
    return loss_value


def _build(name: str, tmp: Path, progress: bool | None) -> dict:
    import torch
    from sklearn.datasets import load_digits

    recipe = RECIPES[name]
    digits = load_digits()
    images, labels = digits.images, digits.target.astype(np.int64)
    idx = split_indices(len(images), SPLIT_SIZES, SEED)
    data = {s: (digits_to_input(images[i]), labels[i]) for s, i in idx.items()}

    t0 = time.perf_counter()
    with torch_seeded(SEED):
        model = _new_model(recipe.arch)
        final_loss = _train(model, *data["train"], recipe, progress, f"training {name}")
    train_s = time.perf_counter() - t0
    model.eval()

    torch.save(model.state_dict(), tmp / "model.pt")
    example = torch.from_numpy(data["search"][0][:2])
    export_onnx(model, (example,), tmp / "model.onnx", ["input"], ["logits"])

    (logits,) = torch_outputs(model, {"input": data["search"][0]}, 128, progress=False,
                                desc="evaluating")
    search_acc = float(np.mean(logits.argmax(-1) == data["search"][1]))
    diff = check_export(tmp / "model.onnx", {"input": data["search"][0][:16]},
                          {"logits": logits[:16]}, name)
    save_splits(tmp / "splits.npz", {s: ({"input": x}, y) for s, (x, y) in data.items()
                                       if s in SPLIT_NAMES}, idx)
    logger.info("zoo %s: trained in %.0f s, FP32 search accuracy %.4f", name, train_s,
                search_acc)
    return json_safe({
        "weights": "trained",
        "upsampling": UPSAMPLING,
        "files": ["model.onnx", "model.pt", "splits.npz"],
        "arch": f"torchvision.models.{recipe.arch}(num_classes=10)",
        "seed": SEED,
        "split_sizes": {s: len(i) for s, i in idx.items()},
        "data": "sklearn.datasets.load_digits (1,797 8x8 digits), bilinear 32x32, "
                "3 channels, ((x/16)-0.5)/0.5",
        "recipe": recipe.__dict__,
        "train_seconds": round(train_s, 1),
        "final_train_loss": final_loss,
        "baseline": {"metric": "accuracy", "split": "search", "fp32_torch": search_acc},
        "onnx_max_abs_diff": diff,
    })


def _task(name: str, d: Path, meta: dict, make_fn: str) -> Task:
    splits = load_splits(d / "splits.npz")
    fidelity = fidelity_split(d)
    base = meta.get("baseline", {}).get("fp32_torch")
    return Task(
        name=name, model_path=d / "model.onnx",
        calibration=splits["calibration"], search=splits["search"], holdout=splits["holdout"],
        metric=accuracy("logits"), weights="trained", description=DESCRIPTIONS[name],
        latency_batch=1, eval_batch=64,
        notes=(f"trained here from scratch (seed {SEED}) on 1000 scikit-learn digits; "
               f"FP32 search accuracy {base:.4f}" if base is not None else
               "trained here from scratch on 1000 scikit-learn digits",
               (f"fidelity split: {len(fidelity):,} seeded views of the scikit-learn digits "
                "outside the calibration split (shift <= 2 px, rotation <= 12 degrees, scale "
                "0.9-1.1, Gaussian noise sd <= 0.1)")),
        torch_model=f"{__name__}:{make_fn}", fidelity=fidelity, fallback_metric="agreement")


def build_resnet(cache_dir: Path, progress: bool | None = None) -> Task:
    name = "resnet-digits"
    d, meta = cached_build(cache_dir, name, lambda tmp: _build(name, tmp, progress),
                           stale=upsampling_stale)
    return _task(name, d, meta, "make_resnet_torch_model")


def build_mobilenetv2(cache_dir: Path, progress: bool | None = None) -> Task:
    name = "mobilenetv2-digits"
    d, meta = cached_build(cache_dir, name, lambda tmp: _build(name, tmp, progress),
                           stale=upsampling_stale)
    return _task(name, d, meta, "make_mobilenetv2_torch_model")


def _make_torch_model(name: str, cache_dir: Path):
    import torch

    d, _ = require_built(cache_dir, name)
    model = _new_model(RECIPES[name].arch)
    model.load_state_dict(torch.load(d / "model.pt", map_location="cpu", weights_only=True))
    return model.eval()


def make_resnet_torch_model(cache_dir: Path):
    """The eval-mode torch ResNet-18 exported as resnet-digits (module names = ONNX names)."""
    return _make_torch_model("resnet-digits", cache_dir)


def make_mobilenetv2_torch_model(cache_dir: Path):
    """The eval-mode torch MobileNetV2 exported as mobilenetv2-digits."""
    return _make_torch_model("mobilenetv2-digits", cache_dir)
