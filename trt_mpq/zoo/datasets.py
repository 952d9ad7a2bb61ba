"""The zoo's data sources: VADER's human-rated sentences (fetched once from the vaderSentiment
sdist: the movie-review snippets, and all four domains for fidelity splits) and the photos
bundled with scikit-image (no network).
"""

from __future__ import annotations

import hashlib
import io
import logging
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
import warnings
from pathlib import Path

import numpy as np

from trt_mpq.errors import TaskError

logger = logging.getLogger(__name__)


# --------------------------------------------------------------------------------------------
# VADER (Hutto & Gilbert, 2014; MIT licence): movie-review snippets with mean human ratings

VADER_VERSION = "3.3.2"
VADER_SDIST = f"vaderSentiment-{VADER_VERSION}.tar.gz"
VADER_SHA256 = "5d7c06e027fc8b99238edb0d53d970cf97066ef97654009890b83703849632f9"
VADER_INNER = f"vaderSentiment-{VADER_VERSION}/additional_resources/hutto_ICWSM_2014.tar.gz"
VADER_DOMAINS = ("tweets", "nytEditorialSnippets", "amazonReviewSnippets", "movieReviewSnippets")
VADER_MEMBER = "hutto_ICWSM_2014/movieReviewSnippets_GroundTruth.txt"
VADER_CITATION = ("VADER data: C.J. Hutto and E. Gilbert, 'VADER: A Parsimonious Rule-based Model "
                  "for Sentiment Analysis of Social Media Text', ICWSM 2014 (MIT licence); "
                  "movie-review snippets with mean human ratings -4..+4")


def vader_member(domain: str) -> str:
    """The ground-truth file of one of `VADER_DOMAINS` inside the nested tarball."""
    return f"hutto_ICWSM_2014/{domain}_GroundTruth.txt"


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


def parse_vader_ground_truth(text: str, *, keep_neutral: bool = False
                             ) -> tuple[list[str], np.ndarray, np.ndarray]:
    """Parse a VADER *_GroundTruth.txt (id TAB mean-rating TAB sentence, CRLF lines).

    Returns (sentences, labels int64 = rating > 0, ratings float64); ratings of exactly 0 are
    dropped (no polarity) unless `keep_neutral` (for uses that need no labels).
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
        if rating == 0.0 and not keep_neutral:
            continue
        sentences.append(parts[2].strip())
        ratings.append(rating)
    r = np.asarray(ratings, dtype=np.float64)
    return sentences, (r > 0).astype(np.int64), r


def _read_vader_members(sdist: Path, members: list[str]) -> dict[str, str]:
    """{member: text} of ground-truth files inside the nested tarball of the VADER sdist."""
    try:
        with tarfile.open(sdist, "r:gz") as outer:
            f = outer.extractfile(VADER_INNER)
            if f is None:
                raise KeyError(VADER_INNER)
            inner_bytes = f.read()
        out = {}
        with tarfile.open(fileobj=io.BytesIO(inner_bytes), mode="r:gz") as inner:
            for member in members:
                g = inner.extractfile(member)
                if g is None:
                    raise KeyError(member)
                out[member] = g.read().decode("utf-8")
    except (OSError, tarfile.TarError, KeyError, EOFError, UnicodeDecodeError) as e:
        raise TaskError(f"cannot read {', '.join(members)} inside {VADER_INNER} of {sdist} "
                        f"({e}); delete the file and build again to re-fetch it") from None
    return out


def read_vader_movie_reviews(sdist: Path) -> tuple[list[str], np.ndarray, np.ndarray]:
    """Sentences, labels and ratings of the movie-review snippets inside the VADER sdist."""
    return parse_vader_ground_truth(_read_vader_members(sdist, [VADER_MEMBER])[VADER_MEMBER])


def read_vader_domains(sdist: Path, *, keep_neutral: bool = True) -> dict[str, list[str]]:
    """{domain: sentences} of all four `VADER_DOMAINS` inside the VADER sdist (23,703
    sentences; with `keep_neutral` False, 23,320 without those rated exactly 0)."""
    texts = _read_vader_members(sdist, [vader_member(d) for d in VADER_DOMAINS])
    return {d: parse_vader_ground_truth(texts[vader_member(d)], keep_neutral=keep_neutral)[0]
            for d in VADER_DOMAINS}


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
