"""The splits of a zoo entry: disjoint seeded index sets and the `splits.npz` that holds them.

`splits.npz` (uncompressed) keys: "<split>/<input>" for each model input, "<split>/#labels" for
the labels, and "<group>/#index" for the source row numbers of every group (fit groups included).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

import numpy as np

from trt_mpq.errors import TaskError
from trt_mpq.task import Split

SPLIT_NAMES = ("calibration", "search", "holdout")
LABELS_KEY = "#labels"
INDEX_KEY = "#index"

SplitArrays = tuple[dict[str, np.ndarray], np.ndarray | None]  # (inputs, labels)


def split_indices(n: int, sizes: Sequence[tuple[str, int | None]],
                  seed: int) -> dict[str, np.ndarray]:
    """Disjoint index sets from one seeded permutation of `range(n)`.

    `sizes` is an ordered list of (name, count); a count of None (allowed once, last) takes
    the rest. Indices keep the permutation's order, so a split's head is a random subset.
    """
    fixed = sum(c for _, c in sizes if c is not None)
    rest = [name for name, c in sizes if c is None]
    if len(rest) > 1 or (rest and sizes[-1][1] is not None):
        raise ValueError("only the last split may take the rest (count None)")
    if fixed > n or (rest and fixed == n):
        raise TaskError(f"cannot take splits {dict(sizes)} from {n} samples; the data set is "
                        "smaller than expected")
    perm = np.random.default_rng(seed).permutation(n)
    out, start = {}, 0
    for name, count in sizes:
        stop = n if count is None else start + count
        out[name] = perm[start:stop].astype(np.int64)
        start = stop
    return out


def save_splits(path: Path, splits: Mapping[str, SplitArrays],
                indices: Mapping[str, np.ndarray] | None = None) -> None:
    """Save {split: (inputs, labels)} into one uncompressed .npz (keys "split/input",
    "split/#labels"). `indices` ({group: source row numbers}, fit groups included) are kept as
    "group/#index" for provenance and disjointness checks."""
    arrays = {}
    for s, (inputs, labels) in splits.items():
        for k, v in inputs.items():
            arrays[f"{s}/{k}"] = np.ascontiguousarray(v)
        if labels is not None:
            arrays[f"{s}/{LABELS_KEY}"] = np.ascontiguousarray(labels)
    for g, ii in (indices or {}).items():
        arrays[f"{g}/{INDEX_KEY}"] = np.asarray(ii, dtype=np.int64)
    with open(path, "wb") as f:
        np.savez(f, **arrays)


def load_split_indices(path: Path) -> dict[str, np.ndarray]:
    """{group: source row numbers} saved beside the splits (empty when none were saved)."""
    with np.load(path, allow_pickle=False) as z:
        return {k.split("/", 1)[0]: z[k] for k in z.files if k.endswith("/" + INDEX_KEY)}


def load_split_arrays(path: Path) -> dict[str, SplitArrays]:
    out: dict[str, SplitArrays] = {}
    try:
        with np.load(path, allow_pickle=False) as z:
            for key in z.files:
                s, k = key.split("/", 1)
                if k == INDEX_KEY:
                    continue
                inputs, labels = out.setdefault(s, ({}, None))
                if k == LABELS_KEY:
                    out[s] = (inputs, z[key])
                else:
                    inputs[k] = z[key]
    except (OSError, ValueError, KeyError) as e:
        raise TaskError(f"cannot read the cached splits {path} ({e}); delete {path.parent} "
                        "and build again") from None
    return out


def load_splits(path: Path, transform: Callable[[dict[str, np.ndarray]], dict[str, np.ndarray]]
                | None = None) -> dict[str, Split]:
    """Load a splits .npz into `Split`s; `transform` maps stored arrays to model inputs."""
    out = {}
    for s, (inputs, labels) in load_split_arrays(path).items():
        out[s] = Split(transform(inputs) if transform else inputs, labels)
    return out
