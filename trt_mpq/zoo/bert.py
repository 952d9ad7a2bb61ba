"""bert-base: a transformers BertModel with the bert-base configuration (`BertConfig()`: 12
layers, 768 hidden, 12 heads, eager attention) as a binary sentence classifier, seq 64.

Weights: bert-base-uncased when `BertModel.from_pretrained("bert-base-uncased",
local_files_only=True)` works (the Hugging Face cache holds it; nothing is downloaded); otherwise
random weights (seeded), for latency studies only.

Graph: encoder -> attention-masked mean pooling -> Linear(768, 2) "head". With pretrained weights
the head is a scikit-learn LogisticRegression fitted on FP32 embeddings of 1000 sentences outside
every split, and the labels are VADER's real sentiment labels. With random weights the head is a
seeded random Linear whose bias is shifted so that the two classes split a 128-sentence fit set
(outside every split) evenly, and the labels are the FP32 model's argmax (the metric is top-1
agreement with FP32).

Data: VADER movie-review snippets (Hutto & Gilbert, 2014; MIT licence), tokenised with the
all-MiniLM-L6-v2 tokenizer (the same uncased WordPiece vocabulary as bert-base-uncased).
Inputs "input_ids" / "attention_mask" int64 [batch, 64]; output "logits" [batch, 2].
Splits (kept small: bert-base is slow on CPUs): calibration 128, search 256, holdout 256.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

import numpy as np

from trt_mpq.task import Task, accuracy
from trt_mpq.zoo.cache import cached_build, json_safe, require_built
from trt_mpq.zoo.datasets import VADER_CITATION, load_vader
from trt_mpq.zoo.export import (
    check_export,
    check_fingerprint,
    export_onnx,
    state_fingerprint,
    torch_outputs,
    torch_seeded,
)
from trt_mpq.zoo.heads import lr_head_weights
from trt_mpq.zoo.splits import SPLIT_NAMES, load_splits, save_splits, split_indices
from trt_mpq.zoo.text import hf_quiet, sentence_classifier, tokenize

logger = logging.getLogger(__name__)

NAME = "bert-base"
SEED = 0
SEQ = 64
DIM = 768
BATCH = 32
HF_ID = "bert-base-uncased"
SPLITS_PRETRAINED = (("head_train", 1000), ("calibration", 128), ("search", 256),
                     ("holdout", 256))
SPLITS_RANDOM = (("head_fit", 128), ("calibration", 128), ("search", 256), ("holdout", 256))
RANDOM_NOTE = ("random weights: latency studies only; the metric is top-1 agreement with the "
               "FP32 model")
TOKENIZER_NOTE = ("tokenizer: all-MiniLM-L6-v2's (uncased WordPiece, the bert-base-uncased "
                  "vocabulary of 30,522 tokens), seq 64")


def _hf_hub_dirs() -> list[Path]:
    """Where the Hugging Face cache would keep bert-base-uncased (checked without imports)."""
    hub = os.environ.get("HF_HUB_CACHE") or os.path.join(
        os.environ.get("HF_HOME") or os.path.join(
            os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "huggingface"),
        "hub")
    return [Path(hub) / "models--bert-base-uncased",
            Path(hub) / "models--google-bert--bert-base-uncased"]


def _hf_seen() -> bool:
    return any(p.is_dir() for p in _hf_hub_dirs())


def _stale(meta: dict) -> str | None:
    if meta.get("weights") == "random" and not meta.get("hf_cache_seen") and _hf_seen():
        return f"{HF_ID} is now in the Hugging Face cache"
    return None


def _pretrained_encoder(progress: bool | None):
    from transformers import BertModel

    with hf_quiet(progress):
        return BertModel.from_pretrained(HF_ID, local_files_only=True,
                                         attn_implementation="eager", add_pooling_layer=False)


def _random_encoder():
    from transformers import BertConfig, BertModel

    with torch_seeded(SEED):
        return BertModel(BertConfig(attn_implementation="eager"), add_pooling_layer=False)


def _random_head_init(model) -> None:
    from torch import nn

    with torch_seeded(SEED + 1):
        fresh = nn.Linear(DIM, 2)
    model.head.load_state_dict(fresh.state_dict())


def _build(cache_dir: Path, tmp: Path, progress: bool | None) -> dict:
    import torch

    from trt_mpq.zoo import minilm

    hf_seen = _hf_seen()
    try:
        encoder = _pretrained_encoder(progress)
        weights = "pretrained"
    except Exception as e:  # noqa: BLE001 - anything: not in the local cache, corrupt, ...
        logger.info("zoo %s: %s is not loadable offline (%s: %s); using random weights "
                    "(latency studies only)", NAME, HF_ID, type(e).__name__,
                    str(e).splitlines()[0][:120] if str(e) else "")
        encoder = _random_encoder()
        weights = "random"
    encoder.eval()

    texts, real_labels, _ = load_vader(cache_dir)
    sizes = SPLITS_PRETRAINED if weights == "pretrained" else SPLITS_RANDOM
    fit = sizes[0][0]
    idx = split_indices(len(texts), sizes, SEED)
    tok = minilm.tokenizer()
    data = {s: tokenize(tok, [texts[j] for j in i], SEQ) for s, i in idx.items()}

    model = sentence_classifier(encoder, DIM, 2, normalize=False).eval()
    (emb,) = torch_outputs(model, data[fit], BATCH, progress=progress,
                             desc=f"embedding {fit} sentences", fn=model.embed)
    if weights == "pretrained":
        W, b, fit_acc = lr_head_weights(emb, real_labels[idx[fit]], 2, seed=SEED)
        with torch.no_grad():
            model.head.weight.copy_(torch.from_numpy(W))
            model.head.bias.copy_(torch.from_numpy(b))
        head_info = {"head": "LogisticRegression(C=1, max_iter=2000) on mean-pooled FP32 "
                             "embeddings of head_train", "head_train_accuracy": fit_acc}
    else:
        _random_head_init(model)
        w = model.head.weight.detach().numpy().astype(np.float64)
        bias = model.head.bias.detach().numpy().astype(np.float64)
        margin = emb.astype(np.float64) @ (w[1] - w[0]) + (bias[1] - bias[0])
        shift = float(np.median(margin))
        with torch.no_grad():
            model.head.bias += torch.tensor([shift / 2, -shift / 2], dtype=torch.float32)
        head_info = {"head": "seeded random Linear(768, 2), bias shifted by the median margin "
                             "over head_fit so the classes split evenly",
                     "head_bias_shift": shift}
    torch.save(model.head.state_dict(), tmp / "head.pt")

    fp32 = {}
    for s in SPLIT_NAMES:
        (fp32[s],) = torch_outputs(model, data[s], BATCH, progress=progress,
                                     desc=f"FP32 outputs, {s}")
    labels = ({s: real_labels[idx[s]] for s in SPLIT_NAMES} if weights == "pretrained"
              else {s: fp32[s].argmax(-1).astype(np.int64) for s in SPLIT_NAMES})
    search_metric = float(np.mean(fp32["search"].argmax(-1) == labels["search"]))

    example = tuple(torch.from_numpy(data["search"][k][:2])
                    for k in ("input_ids", "attention_mask"))
    export_onnx(model, example, tmp / "model.onnx", ["input_ids", "attention_mask"], ["logits"])
    diff = check_export(tmp / "model.onnx", {k: v[:8] for k, v in data["search"].items()},
                          {"logits": fp32["search"][:8]}, NAME)
    save_splits(tmp / "splits.npz", {s: (data[s], labels[s]) for s in SPLIT_NAMES}, idx)
    metric_name = "accuracy" if weights == "pretrained" else "top1_agreement_with_fp32"
    logger.info("zoo %s: weights %s, FP32 search %s %.4f", NAME, weights, metric_name,
                search_metric)
    return json_safe({
        "weights": weights,
        "files": ["model.onnx", "head.pt", "splits.npz"],
        "encoder": (f"transformers BertModel.from_pretrained({HF_ID!r}) (local cache)"
                    if weights == "pretrained" else
                    f"transformers BertModel(BertConfig()) random init, seed {SEED}"),
        **head_info,
        "hf_cache_seen": hf_seen,
        "seed": SEED,
        "seq": SEQ,
        "data": VADER_CITATION,
        "tokenizer": TOKENIZER_NOTE,
        "split_sizes": {s: len(i) for s, i in idx.items()},
        "positive_rate": {s: float(np.mean(labels[s])) for s in SPLIT_NAMES},
        "baseline": {"metric": metric_name, "split": "search", "fp32_torch": search_metric},
        "onnx_max_abs_diff": diff,
        "fingerprint": state_fingerprint(model),
    })


def build(cache_dir: Path, progress: bool | None = None) -> Task:
    cache_dir = Path(cache_dir)
    d, meta = cached_build(cache_dir, NAME, lambda tmp: _build(cache_dir, tmp, progress),
                             stale=_stale)
    splits = load_splits(d / "splits.npz")
    random = meta["weights"] == "random"
    notes = ([RANDOM_NOTE, "labels = the FP32 model's argmax; the head is seeded random with "
                           "its bias centred on 128 sentences outside every split"]
             if random else
             [f"pretrained {HF_ID}; the head is a logistic regression fitted on 1000 sentences "
              "outside every split; labels are the real VADER sentiment labels"])
    notes += [TOKENIZER_NOTE, VADER_CITATION]
    return Task(
        name=NAME, model_path=d / "model.onnx",
        calibration=splits["calibration"], search=splits["search"], holdout=splits["holdout"],
        metric=accuracy("logits"), weights=meta["weights"],
        description=("BERT-base (transformers), seq 64, VADER sentences; "
                     + ("random weights (latency studies only)" if random
                        else "pretrained bert-base-uncased")),
        latency_batch=1, eval_batch=BATCH, notes=tuple(notes),
        torch_model=f"{__name__}:make_torch_model")


def make_torch_model(cache_dir: Path):
    """The eval-mode torch module exported as bert-base (encoder.*, head)."""
    import torch

    d, meta = require_built(cache_dir, NAME)
    encoder = _pretrained_encoder(False) if meta["weights"] == "pretrained" else _random_encoder()
    model = sentence_classifier(encoder, DIM, 2, normalize=False)
    model.head.load_state_dict(torch.load(d / "head.pt", map_location="cpu", weights_only=True))
    model.eval()
    check_fingerprint(model, meta, NAME)
    return model
