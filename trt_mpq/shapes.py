"""Deployment shapes: the input shapes a model is timed at, their weights, and the objective
that combines a plan's per-shape latency ratios into the one number the search minimizes.

A task (`Task.shapes`) or the user (`--shapes`, `--shape-weights`) declares shapes as text:

- `batch=1,8,32`: three shapes, every input at batch 1, 8 and 32 and its own other dims;
- `input_ids=1x64,8x128`: two shapes given by one input's full dims; an input not named follows
  a named one of the same shape (attention_mask follows input_ids), else takes its batch size;
  several inputs: `a=1x64,8x64;b=1x3,8x3` (clauses separated by `;`, as many shapes each).

Every plan is timed at each shape, interleaved with the baseline at the same shape, and judged
by the **weighted mean of its per-shape latency ratios** (`OBJECTIVE`):

    R(plan) = sum_s w_s * r_s(plan),   r_s = median latency of the plan at shape s
                                             / median latency of the baseline at shape s,

with the weights normalized to sum to 1 (equal by default). A ratio is scale-free, so a shape
that takes 30x longer (batch 32) does not drown the others: each shape counts as its weight
says. Nothing declared: one shape, the task's own (`Task.latency_feed`), as before.

The feed of a shape comes from the task's search split: its first samples (repeated along the
batch axis when it has fewer) with every other axis cut to the declared size or, when larger,
wrapped around (`fit`). A shape must fit the model's static input dims, except the axes the
task declares free (`Task.free_axes`: an export that fixed an axis its graph computes for any
size); `resolve` refuses anything else with a ConfigError (exit 2).

numpy only: imported by the options, the task, the measurement and the TensorRT profile.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np

from trt_mpq.errors import ConfigError

OBJECTIVE = ("weighted mean of the per-shape latency ratios (plan median / baseline median at "
             "each shape, timed interleaved), weights normalized to sum to 1")
MAX_SHAPES = 16
MAX_BATCH = 65_536
MAX_DIM = 1_000_000
MAX_ELEMENTS = 1 << 28  # per input and shape: 1 GiB of float32
MAX_WEIGHT = 1e6
_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_.:/\-]*")


def _dims(text: str, where: str) -> tuple[int, ...]:
    parts = text.strip().lower().split("x")
    if not all(p.strip().isdigit() for p in parts):
        raise ConfigError(f"{where}: {text.strip()!r} is not a size like 8 or dims like 8x128")
    dims = tuple(int(p) for p in parts)
    bad = [d for d in dims if not 1 <= d <= MAX_DIM]
    if bad:
        raise ConfigError(f"{where}: every size must be in 1..{MAX_DIM:,}, got {bad[0]}")
    if math.prod(dims) > MAX_ELEMENTS:
        raise ConfigError(f"{where}: {text.strip()} has {math.prod(dims):,} elements, more "
                          f"than the {MAX_ELEMENTS:,} one input may have")
    return dims


@dataclass(frozen=True)
class ShapeSpec:
    """Shapes as declared, before the model is known: batch sizes (`batch`), or the full dims of
    named inputs, per shape (`inputs`: (name, (dims of shape 1, dims of shape 2, ...)))."""

    batch: tuple[int, ...] = ()
    inputs: tuple[tuple[str, tuple[tuple[int, ...], ...]], ...] = ()

    def __post_init__(self) -> None:
        if bool(self.batch) == bool(self.inputs):
            raise ConfigError("declare shapes by batch (batch=1,8) or by input (name=1x64,8x128)")
        counts = {len(sizes) for _, sizes in self.inputs} | ({len(self.batch)} if self.batch
                                                            else set())
        if len(counts) != 1:
            raise ConfigError("every input clause must give as many shapes (separated by ,)")
        if not 1 <= len(self) <= MAX_SHAPES:
            raise ConfigError(f"declare 1 to {MAX_SHAPES} shapes, not {len(self)}")
        if any(not 1 <= b <= MAX_BATCH for b in self.batch):
            raise ConfigError(f"a batch size must be in 1..{MAX_BATCH:,}")
        names = [n for n, _ in self.inputs]
        if len(set(names)) != len(names):
            raise ConfigError("an input is named twice; give each input one clause")
        for name, sizes in self.inputs:
            if len({len(d) for d in sizes}) != 1:
                raise ConfigError(f"the shapes of input {name!r} differ in rank")
            if any(not 1 <= d[0] <= MAX_BATCH for d in sizes):
                raise ConfigError(f"a batch size must be in 1..{MAX_BATCH:,}")
        keys = [self.key(i) for i in range(len(self))]
        twice = sorted({k for k in keys if keys.count(k) > 1})
        if twice:
            raise ConfigError(f"shape {twice[0]} is declared twice")

    def __len__(self) -> int:
        return len(self.batch) if self.batch else len(self.inputs[0][1])

    def key(self, i: int) -> str:
        """Shape i's label: batch=8, or input_ids=8x128 (clauses joined by ;)."""
        if self.batch:
            return f"batch={self.batch[i]}"
        return ";".join(f"{n}={'x'.join(map(str, sizes[i]))}" for n, sizes in self.inputs)

    def __str__(self) -> str:
        if self.batch:
            return "batch=" + ",".join(map(str, self.batch))
        return ";".join(f"{n}=" + ",".join("x".join(map(str, d)) for d in sizes)
                        for n, sizes in self.inputs)

    @classmethod
    def parse(cls, text: str) -> ShapeSpec:
        """`batch=1,8,32` or `input_ids=1x64,8x128` (several inputs: `a=...;b=...`)."""
        text = str(text).strip()
        if not text:
            raise ConfigError("give shapes like batch=1,8,32 or input_ids=1x64,8x128")
        batch: tuple[int, ...] = ()
        inputs = []
        for clause in text.split(";"):
            key, eq, values = clause.partition("=")
            key = key.strip()
            if not eq or not values.strip():
                raise ConfigError(f"{clause.strip()!r} is not NAME=SIZES (batch=1,8 or "
                                  "input_ids=1x64,8x128)")
            sizes = tuple(_dims(v, key) for v in values.split(","))
            if key == "batch":
                if any(len(d) != 1 for d in sizes):
                    raise ConfigError("batch= takes sizes like 1,8,32; give full dims per "
                                      "input instead (input_ids=1x64,8x128)")
                batch = tuple(d[0] for d in sizes)
            elif _NAME.fullmatch(key):
                inputs.append((key, sizes))
            else:
                raise ConfigError(f"{key!r} is not an input name")
        if batch and inputs:
            raise ConfigError("batch= cannot be combined with input shapes; give every input "
                              "clause its full dims, the batch first")
        return cls(batch=batch, inputs=tuple(inputs))


def parse_shapes(text: str) -> ShapeSpec | None:
    """--shapes: 'auto' (or nothing) -> None (the task's own shapes), else a `ShapeSpec`."""
    if str(text).strip().lower() in ("", "auto"):
        return None
    return ShapeSpec.parse(text)


def parse_weights(text: str) -> tuple[float, ...] | None:
    """--shape-weights: 'auto' -> None (equal weights), else positive numbers '1,1,2'."""
    if str(text).strip().lower() in ("", "auto"):
        return None
    out = []
    for part in str(text).split(","):
        try:
            w = float(part.strip())
        except ValueError:
            raise ConfigError(f"{part.strip()!r} is not a number; give weights like 1,1,2") \
                from None
        if not math.isfinite(w) or not 0 < w <= MAX_WEIGHT:
            raise ConfigError(f"a weight must be a number > 0 and <= {MAX_WEIGHT:g}, got "
                              f"{part.strip()}")
        out.append(w)
    if len(out) > MAX_SHAPES:
        raise ConfigError(f"give at most {MAX_SHAPES} weights, one per shape")
    return tuple(out)


def weights_text(weights: tuple[float, ...]) -> str:
    return ",".join(f"{w:g}" for w in weights)


# -- resolved shapes ---------------------------------------------------------------------------
@dataclass(frozen=True)
class Shape:
    """One deployment shape: its label, weight (the weights of a set sum to 1), every input's
    dims, and the feed timed at it."""

    label: str
    weight: float
    dims: Mapping[str, tuple[int, ...]]
    feed: Mapping[str, np.ndarray] = field(repr=False, compare=False)

    def to_json_dict(self) -> dict:
        return {"shape": self.label, "weight": self.weight,
                "dims": {k: list(v) for k, v in self.dims.items()}}


@dataclass(frozen=True)
class ShapeSet:
    """The shapes a search times every plan at; `declared` is False for the task's own single
    shape (a search as before shapes existed)."""

    shapes: tuple[Shape, ...]
    declared: bool = True

    def __len__(self) -> int:
        return len(self.shapes)

    def __iter__(self):
        return iter(self.shapes)

    @property
    def weights(self) -> tuple[float, ...]:
        return tuple(s.weight for s in self.shapes)

    @property
    def primary(self) -> Shape:
        """The most-weighted shape (the first of equals): the shape single numbers are quoted
        at (latency in ms, the per-group profile), and TensorRT's `opt` dims."""
        return max(self.shapes, key=lambda s: s.weight)

    @property
    def several(self) -> bool:
        return len(self.shapes) > 1

    def to_json_dict(self) -> dict:
        return {"objective": OBJECTIVE, "primary": self.primary.label,
                "shapes": [s.to_json_dict() for s in self.shapes]}

    @classmethod
    def single(cls, feed: Mapping[str, np.ndarray]) -> ShapeSet:
        """The task's own shape (its latency feed), undeclared."""
        first = next(iter(feed.values()), None)
        label = f"batch={len(first)}" if first is not None and np.ndim(first) else "default"
        dims = {k: tuple(np.shape(v)) for k, v in feed.items()}
        return cls((Shape(label, 1.0, dims, feed),), declared=False)


def fit(arr: np.ndarray, dims: Sequence[int]) -> np.ndarray:
    """`arr` at `dims`: every axis cut to its size or, when shorter, wrapped around (sample i
    of a batch of 32 from 16 samples is sample i % 16; token j of 128 from 64 is token j % 64)."""
    for axis, size in enumerate(dims):
        have = arr.shape[axis]
        if have != size:
            arr = np.take(arr, np.arange(size) % have, axis=axis)
    return np.ascontiguousarray(arr)


def _input_dims(spec: ShapeSpec, i: int, base: Mapping[str, tuple[int, ...]]
                ) -> dict[str, tuple[int, ...]]:
    """Every input's dims in shape i of `spec` (`base`: the task's own dims per input)."""
    if spec.batch:
        return {k: (spec.batch[i], *d[1:]) for k, d in base.items()}
    named = {n: sizes[i] for n, sizes in spec.inputs}
    batch = next(iter(named.values()))[0]
    out = {}
    for k, d in base.items():
        if k in named:
            out[k] = named[k]
            continue
        twin = next((n for n in named if n in base and base[n] == d), None)
        out[k] = named[twin] if twin is not None else (batch, *d[1:])
    return out


def resolve(spec: ShapeSpec | None, weights: Sequence[float] | None,
            model_inputs: Mapping[str, tuple[str, tuple]], split,
            base_feed: Mapping[str, np.ndarray],
            free_axes: Mapping[str, Sequence[int]] | None = None) -> ShapeSet:
    """The shapes of `spec` for a model with `model_inputs` (name -> (dtype, dims with
    str/None for dynamic ones)), their feeds from `split` (the task's search split) and
    `base_feed` (its latency feed); `spec` None: the task's own single shape. ConfigError for
    an unknown input, a wrong rank, a size on a static axis not in `free_axes`, or weights
    that do not match the shapes."""
    if spec is None:
        if weights:
            raise ConfigError("--shape-weights needs --shapes (or a task that declares shapes)")
        return ShapeSet.single(base_feed)
    if weights is not None and len(weights) != len(spec):
        raise ConfigError(f"--shape-weights gives {len(weights)} weight(s) for {len(spec)} "
                          f"shape(s) ({spec}); give one per shape, in their order")
    free = {k: set(v) for k, v in (free_axes or {}).items()}
    base = {k: tuple(np.shape(v)) for k, v in base_feed.items()}
    unknown = [n for n, _ in spec.inputs if n not in model_inputs]
    if unknown:
        raise ConfigError(f"--shapes names input {unknown[0]!r}; the model's inputs are "
                          f"{', '.join(model_inputs)}")
    raw = [1.0] * len(spec) if weights is None else [float(w) for w in weights]
    total = sum(raw)
    shapes = []
    for i in range(len(spec)):
        label = spec.key(i)
        dims = _input_dims(spec, i, base)
        if len({d[0] for d in dims.values() if d}) > 1:
            raise ConfigError(f"shape {label}: every input must have the same batch size "
                              "(the first dim)")
        for name, d in dims.items():
            declared = tuple(model_inputs[name][1])
            if len(d) != len(declared):
                raise ConfigError(f"shape {label}: input {name!r} has rank {len(declared)} "
                                  f"{_show(declared)}, not {len(d)} ({'x'.join(map(str, d))})")
            for axis, (got, want) in enumerate(zip(d, declared)):
                if isinstance(want, int) and want > 0 and got != want \
                        and axis not in free.get(name, ()):
                    dynamic = [str(a) for a, w in enumerate(declared)
                               if not (isinstance(w, int) and w > 0) or a in free.get(name, ())]
                    raise ConfigError(
                        f"shape {label}: input {name!r} is fixed at {want} on axis {axis} (the "
                        f"model declares {_show(declared)}); a shape may change only its "
                        f"dynamic axes ({', '.join(dynamic) or 'none'}). Export the model with "
                        f"that axis dynamic, or declare shapes that keep it at {want}")
        feed = dict(base_feed) if dims == base else \
            {k: fit(v, dims[k]) for k, v in split.head(min(dims[next(iter(dims))][0],
                                                           len(split))).inputs.items()}
        shapes.append(Shape(label, raw[i] / total, dims, feed))
    return ShapeSet(tuple(shapes))


def _show(dims: Sequence) -> str:
    return "[" + ", ".join(str(d) if d not in (None, "") else "?" for d in dims) + "]"


def changed_static_axes(shapes: ShapeSet, model_inputs: Mapping[str, tuple[str, tuple]]
                        ) -> dict[str, tuple[int, ...]]:
    """Input -> the static axes (as the model declares them) some shape gives another size:
    the free axes a model must have relaxed to run these shapes."""
    out: dict[str, set[int]] = {}
    for shape in shapes:
        for name, d in shape.dims.items():
            for axis, (got, want) in enumerate(zip(d, model_inputs[name][1])):
                if isinstance(want, int) and want > 0 and got != want:
                    out.setdefault(name, set()).add(axis)
    return {k: tuple(sorted(v)) for k, v in out.items()}


def profile_dims(declared: Sequence[int], opt: Sequence[int],
                 others: Sequence[Sequence[int]] = (), max_batch: int | None = None
                 ) -> tuple[tuple[int, ...], tuple[int, ...], tuple[int, ...]]:
    """(min, opt, max) of one engine input for a TensorRT optimization profile: `declared` its
    network dims (-1 dynamic), `opt` the shape it is tuned for (the most-weighted shape's),
    `others` every other shape it must accept (the other declared shapes, the accuracy
    batches' shape). A dynamic axis spans every shape's size; a dynamic batch axis starts at 1
    and reaches `max_batch` (the accuracy batches); a static axis is its declared size."""
    lo = [s if d < 0 else d for d, s in zip(declared, opt)]
    best, hi = list(lo), list(lo)
    for shape in others:
        for k, (d, s) in enumerate(zip(declared, shape)):
            if d < 0:
                lo[k], hi[k] = min(lo[k], s), max(hi[k], s)
    if declared and declared[0] < 0:
        lo[0] = 1
        hi[0] = max(hi[0], max_batch or hi[0])
    return tuple(lo), tuple(best), tuple(hi)


__all__ = ["MAX_SHAPES", "OBJECTIVE", "Shape", "ShapeSet", "ShapeSpec", "changed_static_axes",
           "fit", "parse_shapes", "parse_weights", "profile_dims", "resolve", "weights_text"]
