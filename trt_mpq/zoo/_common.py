"""Shared helpers for the zoo builders.

Nothing here imports torch at module level: a zoo entry whose cache is built loads it with numpy
alone. Helpers that need torch (export, batched inference, fingerprints) import it when called.

Cache layout of one entry: `<cache>/zoo/<name>/v1/` holding `model.onnx`, `splits.npz` and
`meta.json` (plus whatever the entry needs to rebuild its torch twin). `cached_build` builds into
a temporary directory beside it and renames it into place at the end, so an interrupted build
leaves no half-written cache (only a `.v1.building-*` directory, swept by a later build).
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import io
import json
import logging
import os
import platform
import secrets
import shutil
import subprocess
import sys
import tarfile
import tempfile
import time
import warnings
from collections.abc import Callable, Iterable, Mapping, Sequence
from importlib import metadata
from pathlib import Path
from typing import Any

import numpy as np

from trt_mpq.errors import TaskError
from trt_mpq.task import Outputs, Split

logger = logging.getLogger(__name__)

CACHE_VERSION = "v1"
SPLIT_NAMES = ("calibration", "search", "holdout")
LABELS_KEY = "#labels"
INDEX_KEY = "#index"
_STALE_BUILD_SECONDS = 6 * 3600

SplitArrays = tuple[dict[str, np.ndarray], np.ndarray | None]  # (inputs, labels)

# --------------------------------------------------------------------------------------------
# Cache directories


def entry_dir(cache_dir: Path, name: str, version: str = CACHE_VERSION) -> Path:
    """`<cache>/zoo/<name>/<version>`; also accepts that directory itself (it holds meta.json)."""
    cache_dir = Path(cache_dir)
    if (cache_dir / "meta.json").is_file() and cache_dir.parent.name == name:
        return cache_dir
    return cache_dir / "zoo" / name / version


def read_meta(directory: Path) -> dict | None:
    """The meta.json of a complete cache directory, or None when absent or incomplete."""
    try:
        meta = json.loads((Path(directory) / "meta.json").read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(meta, dict):
        return None
    for f in meta.get("files", []):
        if not (Path(directory) / f).exists():
            return None
    return meta


def package_versions(names: Iterable[str] = ()) -> dict[str, str]:
    out = {"python": platform.python_version()}
    for n in ("numpy", "torch", "torchvision", "transformers", "onnx", "onnxruntime",
              "scikit-learn", "scikit-image", *names):
        try:
            out[n] = metadata.version(n)
        except metadata.PackageNotFoundError:
            pass
    return out


def _sweep_stale_builds(parent: Path, version: str) -> None:
    now = time.time()
    for p in parent.glob(f".{version}.*"):
        try:
            if now - p.stat().st_mtime > _STALE_BUILD_SECONDS:
                shutil.rmtree(p, ignore_errors=True)
        except OSError:
            pass


def _install(tmp: Path, final: Path) -> None:
    """Move the finished `tmp` onto `final`, replacing an older (stale) cache if any."""
    trash = None
    if final.exists():
        trash = Path(tempfile.mkdtemp(prefix=f".{final.name}.old-", dir=final.parent))
        os.replace(final, trash / "old")
    try:
        os.replace(tmp, final)
    except OSError as e:
        # Another process installed the same entry in between: keep theirs.
        if e.errno in (errno.ENOTEMPTY, errno.EEXIST) and read_meta(final) is not None:
            shutil.rmtree(tmp, ignore_errors=True)
        else:
            raise
    finally:
        if trash is not None:
            shutil.rmtree(trash, ignore_errors=True)


def cached_build(cache_dir: Path, name: str, build: Callable[[Path], dict], *,
                 stale: Callable[[dict], str | None] | None = None,
                 version: str = CACHE_VERSION) -> tuple[Path, dict]:
    """Return `(directory, meta)` of the cached entry, building it first if needed.

    `build(tmp_dir)` writes the entry's files into `tmp_dir` and returns its meta dict (which
    must list the files in `meta["files"]`); meta.json is written last and the directory is
    renamed into place. `stale(meta)` may return a reason to rebuild an existing cache (e.g.
    the environment now offers pretrained weights), or None to keep it.
    """
    final = Path(cache_dir) / "zoo" / name / version
    meta = read_meta(final)
    if meta is not None:
        reason = stale(meta) if stale else None
        if reason is None:
            logger.debug("zoo %s: loading the cache at %s", name, final)
            return final, meta
        logger.info("zoo %s: rebuilding the cache at %s (%s)", name, final, reason)
    try:
        final.parent.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise TaskError(f"cannot create the zoo cache directory {final.parent} ({e}); set "
                        "TRT_MPQ_CACHE (or --cache-dir) to a writable directory") from None
    _sweep_stale_builds(final.parent, version)
    # os.mkdir (not mkdtemp, which makes it 0700) so that the cache follows the umask
    tmp = final.parent / f".{version}.building-{os.getpid()}-{secrets.token_hex(4)}"
    tmp.mkdir()
    logger.info("zoo %s: building into %s (first use; later uses load the cache)", name, final)
    t0 = time.perf_counter()
    try:
        meta = build(tmp)
        meta["name"] = name
        meta["cache_version"] = version
        meta["build_seconds"] = round(time.perf_counter() - t0, 2)
        meta["built_at"] = time.strftime("%Y-%m-%dT%H:%M:%S%z")
        meta.setdefault("versions", package_versions())
        missing = [f for f in meta.get("files", []) if not (tmp / f).exists()]
        if missing:
            raise RuntimeError(f"zoo builder for {name} did not write {missing}")
        (tmp / "meta.json").write_text(json.dumps(meta, indent=2, sort_keys=True))
        _install(tmp, final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    logger.info("zoo %s: built in %.1f s", name, meta["build_seconds"])
    return final, read_meta(final) or meta


def require_built(cache_dir: Path, name: str) -> tuple[Path, dict]:
    """For `make_torch_model`: the entry's cache, which must exist."""
    d = entry_dir(cache_dir, name)
    meta = read_meta(d)
    if meta is None:
        raise TaskError(f"zoo model {name!r} is not built under {d}; build it first "
                        f"(`trt-mpq zoo {name}` or trt_mpq.zoo.load_task({name!r}, cache_dir))")
    return d, meta


# --------------------------------------------------------------------------------------------
# Splits


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


# --------------------------------------------------------------------------------------------
# Progress and small numerics


def progress_bar(iterable: Iterable | None = None, *, progress: bool | None, desc: str,
                 total: int | None = None, unit: str = "it"):
    from tqdm.auto import tqdm

    return tqdm(iterable, desc=desc, total=total, unit=unit, leave=False,
                disable=None if progress is None else not progress)


def bilinear_matrix(n_in: int, n_out: int) -> np.ndarray:
    """(n_out, n_in) weights of 1-D bilinear resampling, half-pixel centres (PyTorch's
    `interpolate(mode="bilinear", align_corners=False, antialias=False)`)."""
    src = (np.arange(n_out, dtype=np.float64) + 0.5) * (n_in / n_out) - 0.5
    src = np.clip(src, 0.0, None)
    i0 = np.minimum(np.floor(src).astype(np.int64), n_in - 1)
    i1 = np.minimum(i0 + 1, n_in - 1)
    w1 = src - i0
    m = np.zeros((n_out, n_in), dtype=np.float64)
    np.add.at(m, (np.arange(n_out), i0), 1.0 - w1)
    np.add.at(m, (np.arange(n_out), i1), w1)
    return m


def upsample_bilinear(images: np.ndarray, size: int) -> np.ndarray:
    """Bilinear upsampling of (N, h, w) images to (N, size, size), float32."""
    a = bilinear_matrix(images.shape[1], size).astype(np.float32)
    b = bilinear_matrix(images.shape[2], size).astype(np.float32)
    return np.einsum("oh,nhw,pw->nop", a, images.astype(np.float32), b, optimize=True)


def top1_agreement(output: str) -> Callable[[Outputs, Outputs], float]:
    """ExtraCheck fn: share of samples whose argmax of `output` matches the reference's."""

    def fn(outputs: Outputs, reference: Outputs) -> float:
        return float(np.mean(np.argmax(outputs[output], axis=-1)
                             == np.argmax(reference[output], axis=-1)))

    return fn


def lr_head_weights(features: np.ndarray, labels: np.ndarray, n_classes: int, *, seed: int,
                    C: float = 1.0, max_iter: int = 2000) -> tuple[np.ndarray, np.ndarray, float]:
    """Fit a scikit-learn LogisticRegression and return (W [n_classes, d], b [n_classes],
    training accuracy) of an equivalent linear layer (argmax of W x + b = LR's prediction)."""
    from sklearn.linear_model import LogisticRegression

    lr = LogisticRegression(C=C, max_iter=max_iter, random_state=seed)
    lr.fit(features.astype(np.float64), labels)
    if list(lr.classes_) != list(range(n_classes)):
        raise TaskError(f"the head's training data holds classes {list(lr.classes_)}, expected "
                        f"0..{n_classes - 1}")
    if n_classes == 2:
        w = lr.coef_[0]
        W = np.stack([-w / 2, w / 2])
        b = np.array([-lr.intercept_[0] / 2, lr.intercept_[0] / 2])
    else:
        W, b = lr.coef_, lr.intercept_
    acc = float(lr.score(features.astype(np.float64), labels))
    return W.astype(np.float32), b.astype(np.float32), acc


# --------------------------------------------------------------------------------------------
# VADER (Hutto & Gilbert, 2014; MIT licence): movie-review snippets with mean human ratings

VADER_VERSION = "3.3.2"
VADER_SDIST = f"vaderSentiment-{VADER_VERSION}.tar.gz"
VADER_SHA256 = "5d7c06e027fc8b99238edb0d53d970cf97066ef97654009890b83703849632f9"
VADER_INNER = f"vaderSentiment-{VADER_VERSION}/additional_resources/hutto_ICWSM_2014.tar.gz"
VADER_MEMBER = "hutto_ICWSM_2014/movieReviewSnippets_GroundTruth.txt"
VADER_CITATION = ("VADER data: C.J. Hutto and E. Gilbert, 'VADER: A Parsimonious Rule-based Model "
                  "for Sentiment Analysis of Social Media Text', ICWSM 2014 (MIT licence); "
                  "movie-review snippets with mean human ratings -4..+4")


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def fetch_vader_sdist(cache_dir: Path, *, timeout_s: float = 600) -> Path:
    """`<cache>/downloads/vaderSentiment-3.3.2.tar.gz`, fetched once with `pip download`.

    The sentence data ships only in the sdist (the wheel lacks it). A file put there by hand
    is used as is (after its checksum is checked).
    """
    dest_dir = Path(cache_dir) / "downloads"
    dest = dest_dir / VADER_SDIST
    by_hand = (f"download {VADER_SDIST} from https://pypi.org/project/vaderSentiment/"
               f"{VADER_VERSION}/#files by hand and put it at {dest}")
    if not dest.is_file():
        dest_dir.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=".pip-download-", dir=dest_dir))
        cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary", ":all:",
               f"vaderSentiment=={VADER_VERSION}", "-d", str(tmp)]
        logger.info("fetching the VADER sentences (the vaderSentiment sdist, 2.5 MB) with pip")
        try:
            r = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout_s)
            got = tmp / VADER_SDIST
            if r.returncode != 0 or not got.is_file():
                tail = (r.stderr or r.stdout).strip().splitlines()[-3:]
                raise TaskError(
                    f"`pip download vaderSentiment=={VADER_VERSION}` failed ({' | '.join(tail)}); "
                    f"this machine must reach PyPI once to fetch the VADER data, or {by_hand}")
            os.replace(got, dest)
        except subprocess.TimeoutExpired:
            raise TaskError(f"`pip download vaderSentiment=={VADER_VERSION}` did not finish in "
                            f"{timeout_s:.0f} s; check the network to PyPI, or {by_hand}") from None
        except OSError as e:
            raise TaskError(f"cannot run pip to fetch the VADER data ({e}); {by_hand}") from None
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    digest = _sha256(dest)
    if digest != VADER_SHA256:
        raise TaskError(f"{dest} is not the vaderSentiment {VADER_VERSION} sdist (sha256 "
                        f"{digest[:12]}..., expected {VADER_SHA256[:12]}...); delete it and "
                        f"build again, or {by_hand}")
    return dest


def parse_vader_ground_truth(text: str) -> tuple[list[str], np.ndarray, np.ndarray]:
    """Parse a VADER *_GroundTruth.txt (id TAB mean-rating TAB sentence, CRLF lines).

    Returns (sentences, labels int64 = rating > 0, ratings float64); ratings of exactly 0 are
    dropped (no polarity).
    """
    sentences, ratings = [], []
    for line_no, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        parts = line.split("\t", 2)
        if len(parts) != 3:
            raise TaskError(f"VADER ground truth line {line_no} is not 'id<TAB>rating<TAB>text': "
                            f"{line[:60]!r}; the file may be corrupt, delete it and fetch again")
        try:
            rating = float(parts[1])
        except ValueError:
            raise TaskError(f"VADER ground truth line {line_no} has a non-numeric rating "
                            f"{parts[1]!r}") from None
        if rating == 0.0:
            continue
        sentences.append(parts[2].strip())
        ratings.append(rating)
    r = np.asarray(ratings, dtype=np.float64)
    return sentences, (r > 0).astype(np.int64), r


def read_vader_movie_reviews(sdist: Path) -> tuple[list[str], np.ndarray, np.ndarray]:
    """Sentences, labels and ratings of the movie-review snippets inside the VADER sdist."""
    try:
        with tarfile.open(sdist, "r:gz") as outer:
            f = outer.extractfile(VADER_INNER)
            if f is None:
                raise KeyError(VADER_INNER)
            inner_bytes = f.read()
        with tarfile.open(fileobj=io.BytesIO(inner_bytes), mode="r:gz") as inner:
            g = inner.extractfile(VADER_MEMBER)
            if g is None:
                raise KeyError(VADER_MEMBER)
            raw = g.read()
    except (OSError, tarfile.TarError, KeyError, EOFError) as e:
        raise TaskError(f"cannot read {VADER_MEMBER} inside {VADER_INNER} of {sdist} ({e}); "
                        "delete the file and build again to re-fetch it") from None
    return parse_vader_ground_truth(raw.decode("utf-8"))


def load_vader(cache_dir: Path) -> tuple[list[str], np.ndarray, np.ndarray]:
    return read_vader_movie_reviews(fetch_vader_sdist(cache_dir))


# --------------------------------------------------------------------------------------------
# scikit-image photos (bundled in its wheel; no network)

# Natural photos that ship inside scikit-image's wheel. Others (brain, eagle, lily, ...) need
# pooch downloads and are skipped; synthetic images (colorwheel, checkerboard, logo) are left out.
PHOTO_NAMES = ("astronaut", "coffee", "chelsea", "rocket", "hubble_deep_field",
               "immunohistochemistry", "retina", "stereo_motorcycle", "camera", "coins", "clock",
               "moon", "grass", "gravel", "brick", "text", "page", "cell")


def load_photos() -> dict[str, np.ndarray]:
    """{name: uint8 RGB HxWx3} of the scikit-image photos that load offline."""
    try:
        import skimage.data as skdata
    except ImportError:
        raise TaskError("the photos come from scikit-image; install the zoo extra: "
                        "pip install 'trt-mpq[zoo]'") from None
    photos = {}
    for name in PHOTO_NAMES:
        loader = getattr(skdata, name, None)
        if loader is None:
            continue
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                img = loader()
        except Exception as e:  # noqa: BLE001 - a photo that needs a download is skipped
            logger.debug("skimage.data.%s does not load offline (%s); skipped", name, e)
            continue
        if isinstance(img, tuple):  # stereo_motorcycle: (left, right, disparity)
            img = img[0]
        img = np.asarray(img)
        if img.dtype != np.uint8:
            continue
        if img.ndim == 2:
            img = np.repeat(img[:, :, None], 3, axis=2)
        if img.ndim != 3 or img.shape[2] < 3:
            continue
        photos[name] = np.ascontiguousarray(img[:, :, :3])
    if len(photos) < 4:
        raise TaskError(f"only {len(photos)} scikit-image photos load offline (need 4); "
                        "reinstall scikit-image (pip install 'trt-mpq[zoo]')")
    return photos


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


# --------------------------------------------------------------------------------------------
# torch helpers (torch imported on call)


@contextlib.contextmanager
def torch_seeded(seed: int):
    """Seed torch's CPU RNG inside the block and restore the caller's RNG state after it."""
    import torch

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        yield


def export_onnx(model, args: tuple, path: Path, input_names: Sequence[str],
                output_names: Sequence[str]) -> None:
    """Legacy (TorchScript) ONNX export, opset 17, batch axis dynamic, eval mode.

    The legacy exporter names nodes after the torch modules ("/layer1/layer1.0/conv1/Conv"),
    which the sensitivity code maps back to module names.
    """
    import torch

    model.eval()
    dynamic_axes = {n: {0: "batch"} for n in (*input_names, *output_names)}
    try:
        with warnings.catch_warnings(), torch.no_grad():
            warnings.simplefilter("ignore")
            torch.onnx.export(model, args, str(path), dynamo=False, opset_version=17,
                              input_names=list(input_names), output_names=list(output_names),
                              dynamic_axes=dynamic_axes)
    except Exception as e:
        raise TaskError(f"exporting the zoo model to ONNX failed ({type(e).__name__}: {e}); "
                        "check that the installed torch matches the zoo extra "
                        "(pip install 'trt-mpq[zoo]')") from e


def torch_outputs(model, inputs: Mapping[str, np.ndarray], batch: int, *, progress: bool | None,
                  desc: str, fn: Callable | None = None) -> list[np.ndarray]:
    """Run `fn(*batch)` (default: the model; arguments in the order of `inputs`) over `inputs`
    in batches under no_grad; returns one concatenated array per output (a tuple output gives
    several)."""
    import torch

    call = fn or model
    n = len(next(iter(inputs.values())))
    chunks: list[list[np.ndarray]] = []
    with torch.no_grad():
        for start in progress_bar(range(0, n, batch), progress=progress, desc=desc,
                                  total=(n + batch - 1) // batch, unit="batch"):
            feed = {k: torch.from_numpy(np.ascontiguousarray(v[start:start + batch]))
                    for k, v in inputs.items()}
            out = call(*feed.values())
            outs = out if isinstance(out, (tuple, list)) else (out,)
            chunks.append([o.detach().cpu().numpy() for o in outs])
    return [np.concatenate([c[i] for c in chunks]) for i in range(len(chunks[0]))]


def ort_outputs(model_path: Path, inputs: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    import onnxruntime as ort

    sess = ort.InferenceSession(str(model_path), providers=["CPUExecutionProvider"])
    names = [o.name for o in sess.get_outputs()]
    return dict(zip(names, sess.run(names, dict(inputs))))


def check_export(model_path: Path, inputs: Mapping[str, np.ndarray],
                 reference: Mapping[str, np.ndarray], name: str) -> float:
    """Max |ONNX Runtime - torch| over `reference`'s outputs; warns when it is large."""
    got = ort_outputs(model_path, inputs)
    diff = max(float(np.max(np.abs(got[k] - v))) for k, v in reference.items())
    scale = max(float(np.max(np.abs(v))) for v in reference.values())
    if not np.isfinite(diff) or diff > 1e-3 * max(1.0, scale):
        logger.warning("zoo %s: ONNX Runtime outputs differ from torch by up to %.3g "
                       "(output scale %.3g)", name, diff, scale)
    return diff


def state_fingerprint(module) -> str:
    """sha256 (16 hex digits) over a module's state_dict (names, dtypes, shapes, values)."""
    h = hashlib.sha256()
    for k, v in module.state_dict().items():
        a = v.detach().cpu().contiguous().numpy()
        h.update(k.encode())
        h.update(str(a.dtype).encode())
        h.update(str(a.shape).encode())
        h.update(a.tobytes())
    return h.hexdigest()[:16]


def check_fingerprint(module, meta: dict, name: str) -> None:
    want = meta.get("fingerprint")
    if want and state_fingerprint(module) != want:
        raise TaskError(f"the rebuilt torch model of zoo entry {name!r} differs from the one "
                        f"exported to ONNX (different torch/package versions than at build "
                        f"time: {meta.get('versions')}); delete the cache directory of {name} "
                        "and build it again")


def hub_checkpoint_dir() -> Path:
    """torch.hub's checkpoint directory, computed without importing torch."""
    torch_home = os.path.expanduser(os.getenv(
        "TORCH_HOME", os.path.join(os.getenv("XDG_CACHE_HOME", "~/.cache"), "torch")))
    return Path(torch_home) / "hub" / "checkpoints"


def json_safe(obj: Any) -> Any:
    if isinstance(obj, dict):
        return {str(k): json_safe(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [json_safe(v) for v in obj]
    if isinstance(obj, (np.integer,)):
        return int(obj)
    if isinstance(obj, (np.floating,)):
        return float(obj)
    return obj


# --------------------------------------------------------------------------------------------
# Sentence classifier (MiniLM, BERT): encoder -> masked mean pooling [-> L2 norm] -> Linear

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


def tokenize(tokenizer, texts: Sequence[str], seq: int) -> dict[str, np.ndarray]:
    enc = tokenizer(list(texts), padding="max_length", truncation=True, max_length=seq,
                    return_tensors="np")
    return {k: np.ascontiguousarray(enc[k].astype(np.int64))
            for k in ("input_ids", "attention_mask")}
