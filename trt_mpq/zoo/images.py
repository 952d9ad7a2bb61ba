"""Image helpers on numpy arrays: resizing, fixed and random views of photos, bilinear upsampling
(as PyTorch's), and the top-1 agreement check that the photo views feed. scikit-image is imported
on call.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence

import numpy as np

from trt_mpq.task import Outputs


def _resize(img: np.ndarray, h: int, w: int) -> np.ndarray:
    from skimage.transform import resize

    out = resize(img, (h, w), order=1, anti_aliasing=True, preserve_range=True)
    return np.clip(np.rint(out), 0, 255).astype(np.uint8)


def resize_shorter_side(img: np.ndarray, short: int) -> np.ndarray:
    h, w = img.shape[:2]
    s = short / min(h, w)
    return _resize(img, max(short, round(h * s)), max(short, round(w * s)))


def photo_views(photos: Mapping[str, np.ndarray], size: int = 224, resize_to: int = 256
                ) -> tuple[np.ndarray, list[str]]:
    """Fixed views of each photo: shorter side resized to `resize_to`, then the centre crop,
    the top-left and bottom-right corner crops, and the flipped centre crop.
    Returns (uint8 [N, size, size, 3], names)."""
    views, names = [], []
    for name, img in photos.items():
        r = resize_shorter_side(img, resize_to)
        h, w = r.shape[:2]
        top, left = (h - size) // 2, (w - size) // 2
        centre = r[top:top + size, left:left + size]
        for tag, v in (("centre", centre), ("top-left", r[:size, :size]),
                       ("bottom-right", r[h - size:, w - size:]), ("centre-flip", centre[:, ::-1])):
            views.append(v)
            names.append(f"{name}:{tag}")
    return np.ascontiguousarray(np.stack(views)), names


def random_views(photos: Sequence[np.ndarray], count: int, rng: np.random.Generator,
                 size: int = 224) -> np.ndarray:
    """`count` random-resized crops (area 20-100 %, aspect 3/4-4/3) with random horizontal
    flips, cycling through `photos`. Returns uint8 [count, size, size, 3]."""
    out = np.empty((count, size, size, 3), dtype=np.uint8)
    for i in range(count):
        img = photos[i % len(photos)]
        h, w = img.shape[:2]
        for _ in range(20):
            area = h * w * rng.uniform(0.2, 1.0)
            aspect = np.exp(rng.uniform(np.log(3 / 4), np.log(4 / 3)))
            ch, cw = int(round(np.sqrt(area / aspect))), int(round(np.sqrt(area * aspect)))
            if 0 < ch <= h and 0 < cw <= w:
                break
        else:
            ch = cw = min(h, w)
        y, x = int(rng.integers(0, h - ch + 1)), int(rng.integers(0, w - cw + 1))
        crop = _resize(img[y:y + ch, x:x + cw], size, size)
        out[i] = crop[:, ::-1] if rng.random() < 0.5 else crop
    return out


def bilinear_taps(n_in: int, n_out: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """1-D bilinear resampling, half-pixel centres (PyTorch's `interpolate(mode="bilinear",
    align_corners=False, antialias=False)`): output i = (1 - w[i]) in[i0[i]] + w[i] in[i1[i]]."""
    src = (np.arange(n_out, dtype=np.float64) + 0.5) * (n_in / n_out) - 0.5
    src = np.clip(src, 0.0, None)
    i0 = np.minimum(np.floor(src).astype(np.int64), n_in - 1)
    i1 = np.minimum(i0 + 1, n_in - 1)
    return i0, i1, src - i0


def bilinear_matrix(n_in: int, n_out: int) -> np.ndarray:
    """(n_out, n_in) weights of `bilinear_taps` as a matrix."""
    i0, i1, w1 = bilinear_taps(n_in, n_out)
    m = np.zeros((n_out, n_in), dtype=np.float64)
    np.add.at(m, (np.arange(n_out), i0), 1.0 - w1)
    np.add.at(m, (np.arange(n_out), i1), w1)
    return m


#: recorded in the meta of a zoo build whose inputs it makes: a build made by an older method
#: (a BLAS product, thread-dependent) is rebuilt
UPSAMPLING = "bilinear-taps-v1"


def upsampling_stale(meta: dict) -> str | None:
    """`cached_build`'s stale check for a build whose inputs `upsample_bilinear` makes."""
    if meta.get("upsampling") == UPSAMPLING:
        return None
    return "its inputs were upsampled by an older method whose result followed the thread count"


def upsample_bilinear(images: np.ndarray, size: int) -> np.ndarray:
    """Bilinear upsampling of (N, h, w) images to (N, size, size), float32.

    Two taps per output pixel along each axis, blended elementwise in a fixed order, so the
    result is bit-identical in every process: a matrix product (BLAS) sums in an order that
    depends on its thread count, and a Ray worker runs with OMP_NUM_THREADS=1 where the driver
    uses every core, which made their data (and the plans' accuracies) differ in the last bit."""
    x = np.asarray(images, dtype=np.float32)
    i0, i1, w = bilinear_taps(x.shape[1], size)
    w = w.astype(np.float32)[:, None]
    rows = x[:, i0, :] * (1 - w) + x[:, i1, :] * w
    j0, j1, v = bilinear_taps(x.shape[2], size)
    v = v.astype(np.float32)
    return np.ascontiguousarray(rows[:, :, j0] * (1 - v) + rows[:, :, j1] * v)


def top1_agreement(output: str) -> Callable[[Outputs, Outputs], float]:
    """ExtraCheck fn: share of samples whose argmax of `output` matches the reference's."""

    def fn(outputs: Outputs, reference: Outputs) -> float:
        return float(np.mean(np.argmax(outputs[output], axis=-1)
                             == np.argmax(reference[output], axis=-1)))

    return fn
