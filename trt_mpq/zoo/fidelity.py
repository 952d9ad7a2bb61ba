"""Fidelity splits of the zoo tasks: large splits made from real data that ships offline, for the
fidelity metrics (`--metric agreement` / `kl`: they compare with the FP32 model's own outputs, so
they need no labels and can use far more samples than the labelled splits hold).

Certifying a small agreement drop takes many samples (about 30,000 in the holdout part, 60 % of
the split, for 0.01 % at 95 % confidence), more than the zoo's real data sets hold, so the
splits are seeded variations of that data, all of it outside the task's calibration split:

- digits: affine views (sub-pixel shift, small rotation and scale) of the scikit-learn digits
  plus Gaussian noise. The split is lazy: it stores each sample's 8x8 digit and view parameters
  (and noise seed), and the task's transform draws the model input batch by batch.
- photos: random resized crops (with flips) of the scikit-image photos, stored as crop boxes.
- sentences: VADER's four ground-truth domains plus seeded perturbations of them (word
  dropout, adjacent-word swaps, punctuation changes, prefixes, sentence pairs).

Each sample's view depends on its stored row alone (its noise comes from its own seed), so a
sample gives the same input whatever batch it falls in.
"""

from __future__ import annotations

import functools
import hashlib
import math
import string
from collections.abc import Iterable, Sequence

import numpy as np

# ---------------------------------------------------------------------------------------------
# Digits: affine views plus noise

#: ranges of the digit views: shift (in pixels of the 8x8 digit: 0.5 = 2 px at 32x32, the
#: shifts the digit models were trained with), rotation (degrees), scale, and the largest noise
#: standard deviation (in model-input units, where a digit spans -1..1 at 32x32)
DIGIT_SHIFT = 0.5
DIGIT_ANGLE = 12.0
DIGIT_SCALE = (0.9, 1.1)
DIGIT_NOISE = 0.1
#: columns of the stored "view" array of a digit sample
VIEW_COLUMNS = ("dy", "dx", "angle", "scale", "noise")


def digit_sources(n: int, exclude: Iterable[int], count: int,
                  rng: np.random.Generator) -> np.ndarray:
    """`count` digit indices drawn from `range(n)` minus `exclude`, balanced (each digit is used
    equally often, give or take one) and in random order."""
    pool = np.setdiff1d(np.arange(n), np.asarray(list(exclude), dtype=np.int64))
    if len(pool) == 0:
        raise ValueError("no digits left once the excluded ones are taken out")
    rounds = -(-count // len(pool))
    return np.concatenate([rng.permutation(pool) for _ in range(rounds)])[:count]


def digit_views(images8: np.ndarray, labels: np.ndarray | None, exclude: Iterable[int],
                count: int, rng: np.random.Generator) -> dict[str, np.ndarray]:
    """The stored form of `count` random views of the digits `images8` ((N, 8, 8), 0..16) that
    are not in `exclude`: "digits8" uint8 (count, 8, 8), "source" int32 (the digit's row in
    `images8`), "view" float32 (count, 5) = `VIEW_COLUMNS` and "noise_seed" int64, plus
    "labels" (the source digit's label) when `labels` is given."""
    src = digit_sources(len(images8), exclude, count, rng)
    view = np.stack([rng.uniform(-DIGIT_SHIFT, DIGIT_SHIFT, count),
                     rng.uniform(-DIGIT_SHIFT, DIGIT_SHIFT, count),
                     rng.uniform(-DIGIT_ANGLE, DIGIT_ANGLE, count),
                     rng.uniform(*DIGIT_SCALE, count),
                     rng.uniform(0.0, DIGIT_NOISE, count)], axis=1).astype(np.float32)
    out = {"digits8": np.rint(np.asarray(images8)[src]).astype(np.uint8),
           "source": src.astype(np.int32), "view": view,
           "noise_seed": rng.integers(0, 2**62, count, dtype=np.int64)}
    if labels is not None:
        out["labels"] = np.asarray(labels, dtype=np.int64)[src]
    return out


def warp_views(images: np.ndarray, view: np.ndarray, unit: float) -> np.ndarray:
    """Each image of `images` (N, S, S; background 0) rotated by its view's angle (degrees)
    about its centre, scaled by its scale and shifted by (dy, dx) * `unit` pixels, sampled
    bilinearly with 0 outside the image (so a part that comes in from outside fades in over
    one pixel); float32 (N, S, S). A zero view (0, 0, 0, 1) returns the images unchanged.

    Pillow's affine transform (in C) does the sampling, one image at a time: a tenth of the
    time numpy takes for the same gathers."""
    from PIL import Image

    n, s = images.shape[0], images.shape[1]
    out = np.empty((n, s, s), dtype=np.float32)
    padded = np.zeros((s + 2, s + 2), dtype=np.float32)  # a zero border: 0 outside the image
    half = s / 2.0
    for i in range(n):
        dy, dx, angle, scale = (float(v) for v in view[i, :4])
        cos = math.cos(math.radians(angle)) / scale
        sin = math.sin(math.radians(angle)) / scale
        cy, cx = half + dy * unit, half + dx * unit  # where the source centre lands
        # Pillow samples the input at (a x + b y + c, d x + e y + f) for the output point
        # (x, y), in coordinates where pixel edges are integers: the input point is the
        # centre (+1 for the border) + R(-angle) (output point - shifted centre) / scale
        coeffs = (cos, -sin, half + 1.0 - cos * cx + sin * cy,
                  sin, cos, half + 1.0 - sin * cx - cos * cy)
        padded[1:-1, 1:-1] = images[i]
        out[i] = np.asarray(Image.fromarray(padded).transform(
            (s, s), Image.Transform.AFFINE, coeffs, resample=Image.Resampling.BILINEAR))
    return out


#: the noise bank: about this many seeded standard normal values, as fields of the image size
NOISE_BANK_VALUES = 1 << 22
NOISE_BANK_SEED = 20_240_513


@functools.lru_cache(maxsize=4)
def _noise_bank(size: int) -> np.ndarray:
    fields = max(16, NOISE_BANK_VALUES // (size * size))
    rng = np.random.default_rng(NOISE_BANK_SEED)
    return rng.standard_normal((fields, size, size), dtype=np.float32)


def seeded_noise(seeds: np.ndarray, size: int, sigma: np.ndarray) -> np.ndarray:
    """Gaussian noise float32 (N, size, size): row i is field `seeds[i] % F` of a fixed bank of
    F seeded standard normal fields (about 4M values in all, drawn once), shifted cyclically
    by an offset the rest of the seed picks, times `sigma[i]`. A sample's noise thus depends
    on its seed alone, not on its batch, and a batch is drawn with one gather (a generator per
    sample would cost as much as a small model's inference)."""
    bank = _noise_bank(size)
    seeds = np.asarray(seeds, dtype=np.int64)
    k = seeds % len(bank)
    rest = seeds // len(bank)
    ry, rx = (rest % size)[:, None, None], ((rest // size) % size)[:, None, None]
    ar = np.arange(size)
    noise = bank[k[:, None, None], (ar[None, :, None] + ry) % size,
                 (ar[None, None, :] + rx) % size]
    noise *= np.asarray(sigma, dtype=np.float32)[:, None, None]
    return noise


# ---------------------------------------------------------------------------------------------
# Photos: random resized crops

def photo_boxes(shapes: Sequence[tuple[int, int]], count: int,
                rng: np.random.Generator) -> dict[str, np.ndarray]:
    """The stored form of `count` random resized crops of photos with the given (H, W) shapes,
    as `images.random_views` draws them (area 20-100 %, aspect 3/4-4/3, a flip half of the
    time), cycling through the photos: "source" int32 (the photo), "box" int32 (count, 4) =
    (top, left, height, width) and "flip" uint8."""
    source = np.arange(count) % len(shapes)
    box = np.empty((count, 4), dtype=np.int32)
    for i, p in enumerate(source):
        h, w = shapes[p]
        for _ in range(20):
            area = h * w * rng.uniform(0.2, 1.0)
            aspect = np.exp(rng.uniform(np.log(3 / 4), np.log(4 / 3)))
            ch, cw = round(np.sqrt(area / aspect)), round(np.sqrt(area * aspect))
            if 0 < ch <= h and 0 < cw <= w:
                break
        else:
            ch = cw = min(h, w)
        box[i] = (rng.integers(0, h - ch + 1), rng.integers(0, w - cw + 1), ch, cw)
    flip = (rng.random(count) < 0.5).astype(np.uint8)
    return {"source": source.astype(np.int32), "box": box, "flip": flip}


def crop_resize(photo: np.ndarray, box: Sequence[int], flip: bool, size: int) -> np.ndarray:
    """The crop `box` = (top, left, height, width) of `photo` (uint8 H x W x 3) resized to
    size x size (Pillow's bilinear filter, which widens to anti-alias when it shrinks), flipped
    left-right when `flip`; uint8 (size, size, 3)."""
    from PIL import Image

    top, left, h, w = (int(v) for v in box)
    out = np.asarray(Image.fromarray(photo).resize(
        (size, size), Image.Resampling.BILINEAR, box=(left, top, left + w, top + h)))
    return out[:, ::-1] if flip else out


def arrays_digest(arrays: Iterable[np.ndarray]) -> str:
    """A short hash of arrays (shapes, dtypes, contents): for a cache key (e.g. the calibration
    indices a fidelity split excludes) or a transform id (the photos the crop boxes refer to)."""
    h = hashlib.sha256()
    for a in arrays:
        a = np.ascontiguousarray(a)
        h.update(f"{a.dtype}{a.shape}".encode())
        h.update(a.tobytes())
    return h.hexdigest()[:12]


# ---------------------------------------------------------------------------------------------
# Sentences: perturbations

PERTURBATIONS = ("drop", "swap", "punctuation", "prefix", "pair")
#: perturbations change the first words only: a 64-token model sees little more
REACH = 40
_PUNCTUATION = str.maketrans("", "", string.punctuation)


def text_key(text: str) -> str:
    """What tells sentences apart for an uncased tokenizer: lower case, single spaces."""
    return " ".join(text.lower().split())


def perturb(text: str, partner: str, rng: np.random.Generator) -> str:
    """One seeded perturbation of `text`, chosen at random from `PERTURBATIONS`: drop ~15 % of
    its words (at least one), swap one or two pairs of adjacent words, strip its punctuation
    (or end it with " !" if it has none), keep a 50-90 % prefix of its (first `REACH`) words,
    or follow it with `partner`. Changes fall in its first `REACH` words, which a 64-token
    model sees; one that does not apply (too few words, a long sentence to pair) falls back to
    a swap, or to a pair when even that changes nothing."""
    words = text.split()
    near = min(len(words), REACH)
    kind = PERTURBATIONS[int(rng.integers(len(PERTURBATIONS)))]
    if kind == "drop" and near >= 4:
        keep = rng.random(near) >= 0.15
        if keep.all():
            keep[int(rng.integers(near))] = False
        if keep.sum() >= 2:
            return " ".join([w for w, k in zip(words, keep) if k] + words[near:])
    elif kind == "punctuation":
        stripped = " ".join(" ".join(words[:near]).translate(_PUNCTUATION).split()
                            + words[near:])
        if stripped and text_key(stripped) != text_key(text):
            return stripped
        if len(words) < REACH:
            return text.rstrip() + " !"
    elif kind == "prefix" and near >= 5:
        k = math.ceil(near * rng.uniform(0.5, 0.9))
        if 3 <= k < near:
            return " ".join(words[:k])
    elif kind == "pair" and len(words) < REACH:
        return f"{text} {partner}"
    if near >= 2:  # a swap, also when the chosen perturbation does not apply
        swapped = list(words)
        for _ in range(1 + int(rng.integers(2))):
            i = int(rng.integers(near - 1))
            swapped[i], swapped[i + 1] = swapped[i + 1], swapped[i]
        if text_key(" ".join(swapped)) != text_key(text):
            return " ".join(swapped)
    return f"{text} {partner}"


def perturbed_sentences(texts: Sequence[str], exclude: Iterable[str], count: int,
                        rng: np.random.Generator) -> list[str]:
    """`count` distinct sentences (by `text_key`), none of them in `exclude`: first `texts`
    less repeats and the excluded ones, in order, then seeded perturbations of them (each
    source sentence in turn, in a fresh random order every round, pairs with a random other
    one). Only the first `count` of `texts` when it holds more. Not shuffled: the caller may
    still drop some (e.g. repeats after tokenising) before it shuffles them."""
    banned = {text_key(t) for t in exclude}
    seen: set[str] = set()
    pool = []
    for t in texts:
        k = text_key(t)
        if k and k not in banned and k not in seen:
            seen.add(k)
            pool.append(t)
    if not pool:
        raise ValueError("no sentences left once the excluded ones are taken out")
    out = pool[:count]
    tries, max_tries = 0, 20 * max(count, 1)
    while len(out) < count:
        for i in rng.permutation(len(pool)):
            if len(out) >= count:
                break
            tries += 1
            new = perturb(pool[i], pool[int(rng.integers(len(pool)))], rng)
            k = text_key(new)
            if k not in seen and k not in banned:
                seen.add(k)
                out.append(new)
        if tries > max_tries:
            raise ValueError(f"only {len(out)} distinct sentences after {tries} perturbations")
    return out
