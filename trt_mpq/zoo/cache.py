"""The zoo's cache: one directory per entry, built atomically.

Cache layout of one entry: `<cache>/zoo/<name>/v1/` holding `model.onnx`, `splits.npz` and
`meta.json` (plus whatever the entry needs to rebuild its torch twin). `cached_build` builds into
a temporary directory beside it and renames it into place at the end, so an interrupted build
leaves no half-written cache (only a `.v1.building-*` directory, swept by a later build).
Data derived from a build at load time (the fidelity splits) may be kept beside it in files
written by `cached_arrays`; a rebuild replaces the directory and so drops them.
"""

from __future__ import annotations

import contextlib
import errno
import json
import logging
import os
import platform
import secrets
import shutil
import tempfile
import time
import zipfile
from collections.abc import Callable, Iterable
from importlib import metadata
from pathlib import Path
from typing import Any

import numpy as np

from trt_mpq.errors import TaskError

logger = logging.getLogger(__name__)

CACHE_VERSION = "v1"
_STALE_BUILD_SECONDS = 6 * 3600


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


def json_safe(obj: Any) -> Any:
    """`obj` for meta.json: numpy scalars as Python numbers, tuples as lists, keys as str."""
    if isinstance(obj, dict):
        return {str(k): json_safe(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [json_safe(v) for v in obj]
    if isinstance(obj, (np.integer,)):
        return int(obj)
    if isinstance(obj, (np.floating,)):
        return float(obj)
    return obj


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


KEY_ARRAY = "#key"


def cached_arrays(path: Path, key: str,
                  make: Callable[[], dict[str, np.ndarray]]) -> dict[str, np.ndarray]:
    """Arrays kept in `path` (an uncompressed .npz beside a build) under `key`.

    For data derived from a build at load time that is too slow to remake on every load (e.g.
    a tokenised fidelity split): `make()` runs, and its arrays are saved, when the file is
    missing, unreadable or was saved under another key (put a version in `key`, and whatever
    the arrays depend on). The file is written to a temporary name and renamed into place, so a
    reader never sees half of it; a directory that cannot be written only costs the saving.
    """
    path = Path(path)
    try:
        with np.load(path, allow_pickle=False) as z:
            if KEY_ARRAY in z.files and str(z[KEY_ARRAY]) == key:
                return {k: z[k] for k in z.files if k != KEY_ARRAY}
            logger.info("remaking %s (it was made for another version)", path)
    except FileNotFoundError:
        pass
    except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile) as e:
        logger.info("remaking %s (cannot read it: %s)", path, e)
    arrays = make()
    if KEY_ARRAY in arrays:
        raise ValueError(f"{KEY_ARRAY!r} is reserved for the key")
    # a unique name in the same directory (opened like any file, so it follows the umask)
    tmp = path.parent / f".{path.name}.{os.getpid()}-{secrets.token_hex(4)}.tmp"
    try:
        with open(tmp, "xb") as f:
            np.savez(f, **arrays, **{KEY_ARRAY: np.array(key)})
        os.replace(tmp, path)
    except OSError as e:
        logger.warning("cannot save %s (%s); it is remade on every load", path, e)
        with contextlib.suppress(OSError):
            tmp.unlink()
    return arrays
