"""Architecture-only exports of the zoo models: the same ONNX graphs (same ops, shapes and node
names) as the full builds, without the training, fitting or data those need.

For checks that depend on the graph and not on the weights' values, such as whether an engine
builder runs each layer in the precision a plan asks for. Seconds instead of minutes; the weights
are pretrained where a package ships them and untrained otherwise (no training, no probe/head
fitting, no BatchNorm re-estimation), so these graphs are not for accuracy.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np

from trt_mpq.zoo.export import export_onnx, torch_seeded
from trt_mpq.zoo.text import sentence_classifier

SEQ = 64


def _digits(arch: str):
    from trt_mpq.zoo import digits

    return digits._new_model(arch), {"input": np.zeros((1, 3, 32, 32), np.float32)}


def _imagenet(arch: str):
    from trt_mpq.zoo import imagenet

    return imagenet._new_model(arch), {"input": np.zeros((1, 3, 224, 224), np.float32)}


def _text_feed() -> dict[str, np.ndarray]:
    ids = np.zeros((1, SEQ), np.int64)
    ids[0, :8] = [101, 2023, 3185, 2001, 2307, 999, 102, 0]
    mask = (np.arange(SEQ) < 7).astype(np.int64)[None]
    return {"input_ids": ids, "attention_mask": mask}


def _minilm():
    from trt_mpq.zoo import minilm

    return sentence_classifier(minilm._encoder(False), minilm.DIM, 2, normalize=True), _text_feed()


def _bert():
    from trt_mpq.zoo import bert

    return sentence_classifier(bert._random_encoder(), bert.DIM, 2, normalize=False), _text_feed()


def _efficientnet():
    from trt_mpq.zoo import efficientnet

    return efficientnet._pretrained_model(10), {"input": np.zeros((1, 3, 224, 224), np.float32)}


GRAPHS: dict[str, tuple[Callable, tuple[str, ...]]] = {
    "resnet-digits": (lambda: _digits("resnet18"), ("logits",)),
    "mobilenetv2-digits": (lambda: _digits("mobilenet_v2"), ("logits",)),
    "minilm-sentiment": (_minilm, ("logits",)),
    "efficientnet-lite0": (_efficientnet, ("probe_logits", "imagenet_logits")),
    "resnet50": (lambda: _imagenet("resnet50"), ("logits",)),
    "mobilenet_v2": (lambda: _imagenet("mobilenet_v2"), ("logits",)),
    "bert-base": (_bert, ("logits",)),
}


def export_graph(name: str, path: Path) -> dict[str, np.ndarray]:
    """Write zoo model `name`'s graph to `path`; return a one-sample input for it."""
    import torch

    make, outputs = GRAPHS[name]
    with torch_seeded(0):
        model, feed = make()
    args = tuple(torch.from_numpy(v) for v in feed.values())
    path.parent.mkdir(parents=True, exist_ok=True)
    export_onnx(model.eval(), args, path, list(feed), list(outputs))
    return feed
