"""Text models: tokenising, the sentence classifier of MiniLM and BERT (encoder -> masked mean
pooling [-> L2 norm] -> Linear), and keeping transformers quiet. torch and transformers are
imported on call.
"""

from __future__ import annotations

import contextlib
from collections.abc import Sequence

import numpy as np

from trt_mpq.zoo.export import torch_seeded


def tokenize(tokenizer, texts: Sequence[str], seq: int) -> dict[str, np.ndarray]:
    enc = tokenizer(list(texts), padding="max_length", truncation=True, max_length=seq,
                    return_tensors="np")
    return {k: np.ascontiguousarray(enc[k].astype(np.int64))
            for k in ("input_ids", "attention_mask")}


@contextlib.contextmanager
def hf_quiet(progress: bool | None):
    """Silence transformers' load reports (and its progress bars unless progress is True)
    inside the block; the caller's settings come back after it."""
    from transformers.utils import logging as hf_logging

    verbosity = hf_logging.get_verbosity()
    bars = hf_logging.is_progress_bar_enabled()
    hf_logging.set_verbosity_error()
    if not progress:
        hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        hf_logging.set_verbosity(verbosity)
        if bars:
            hf_logging.enable_progress_bar()
        else:
            hf_logging.disable_progress_bar()


_SENTENCE_CLASSIFIER = None


def sentence_classifier(encoder, dim: int, n_classes: int = 2, *, normalize: bool):
    """Wrap a transformers encoder as `forward(input_ids, attention_mask) -> logits`.

    Pooling is the attention-masked mean of the last hidden states (what sentence-transformers
    does for all-MiniLM-L6-v2), L2-normalised when `normalize`; `embed()` returns the pooled
    vector, `head` is the Linear(dim, n_classes) classifier. Module names: `encoder.*`, `head`.
    """
    global _SENTENCE_CLASSIFIER
    if _SENTENCE_CLASSIFIER is None:
        from torch import nn

        class SentenceClassifier(nn.Module):
            def __init__(self, encoder, dim: int, n_classes: int, normalize: bool):
                super().__init__()
                self.encoder = encoder
                self.normalize = normalize
                self.head = nn.Linear(dim, n_classes)

            def embed(self, input_ids, attention_mask):
                hidden = self.encoder(input_ids=input_ids,
                                      attention_mask=attention_mask).last_hidden_state
                mask = attention_mask.unsqueeze(-1).to(hidden.dtype)
                pooled = (hidden * mask).sum(dim=1) / mask.sum(dim=1).clamp(min=1e-9)
                if self.normalize:
                    pooled = nn.functional.normalize(pooled, p=2.0, dim=1)
                return pooled

            def forward(self, input_ids, attention_mask):
                return self.head(self.embed(input_ids, attention_mask))

        _SENTENCE_CLASSIFIER = SentenceClassifier
    with torch_seeded(0):  # the head's init is overwritten; keep the caller's RNG untouched
        return _SENTENCE_CLASSIFIER(encoder, dim, n_classes, normalize)
