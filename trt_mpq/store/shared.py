"""Results that belong to the model rather than to one search, kept across searches in the cache
directory (as calibration ranges are): the baseline's outputs on each split and sensitivity
scores. A second search of the same model -- another budget, strategy or `--out` -- reuses them
instead of recomputing the most expensive passes that cannot change.

One folder per context, `<cache>/results/<digest>/`: the digest covers the prepared model, the
task's data, the backend and every setting it reports (`Backend.describe()`: versions, threads,
GPU), the batch size accuracy runs at and trt-mpq's version, so a change to any of them finds
nothing and recomputes. Entries are written atomically (a temporary file, then a rename); an
unreadable entry is recomputed and replaced. Deleting `<cache>/results` forgets them all.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import os
import tempfile
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import numpy as np

log = logging.getLogger(__name__)

FORMAT = 1  # bump when what an entry holds changes meaning
MAX_ARRAY_BYTES = 256 << 20  # outputs bigger than this are recomputed rather than kept


def _digest(value: Any) -> str:
    return hashlib.sha256(json.dumps(value, sort_keys=True, default=str).encode()).hexdigest()


def _what(name: str) -> str:
    """'outputs-holdout-<digest>' -> 'outputs-holdout'; 'sensitivity:noise:...' -> likewise."""
    parts = name.replace(":", "-").split("-")
    return "-".join(parts[:2])


def _safe(name: str) -> str:
    """A file name for an entry name (which may hold ':' or '/'): readable prefix + digest."""
    keep = "".join(c if c.isalnum() or c in "-_." else "-" for c in name)[:48]
    return f"{keep}-{_digest(name)[:12]}"


class SharedCache:
    """Get-or-compute of arrays and JSON values in one context's folder. With `root=None` it
    computes every time (and keeps nothing)."""

    def __init__(self, root: Path | None, context: Mapping[str, Any]) -> None:
        from trt_mpq import __version__

        self.context = {**context, "trt_mpq": __version__, "format": FORMAT}
        self.dir = Path(root) / "results" / _digest(self.context)[:20] if root else None
        self.hits = 0
        self.misses = 0

    def arrays(self, name: str, compute: Callable[[], dict[str, np.ndarray]]
               ) -> dict[str, np.ndarray]:
        def load(path: Path) -> dict[str, np.ndarray]:
            with np.load(path, allow_pickle=False) as data:
                return {k: data[k] for k in data.files}

        def dump(arrays: dict[str, np.ndarray]) -> bytes | None:
            if sum(np.asarray(v).nbytes for v in arrays.values()) > MAX_ARRAY_BYTES:
                return None
            buf = io.BytesIO()
            np.savez(buf, **{k: np.asarray(v) for k, v in arrays.items()})
            return buf.getvalue()

        return self._get_or_compute(name, ".npz", load, dump, compute)

    def json(self, name: str, compute: Callable[[], Any]) -> Any:
        return self._get_or_compute(name, ".json", lambda p: json.loads(p.read_text()),
                                    lambda v: json.dumps(v, sort_keys=True).encode(), compute)

    def _get_or_compute(self, name: str, suffix: str, load: Callable[[Path], Any],
                        dump: Callable[[Any], bytes | None], compute: Callable[[], Any]) -> Any:
        path = self._path(name, suffix)
        if path is not None and path.exists():
            try:
                found = load(path)
                self.hits += 1
                log.info("reusing %s from an earlier run on this model (%s)", _what(name),
                         path.parent)
                return found
            except (OSError, ValueError) as e:
                log.warning("shared cache: %s is unreadable (%s); recomputing it", path, e)
        self.misses += 1
        value = compute()
        data = dump(value) if path is not None else None
        if data is not None:
            self._write(path, data)
        return value

    def _path(self, name: str, suffix: str) -> Path | None:
        return self.dir / f"{_safe(name)}{suffix}" if self.dir is not None else None

    def _write(self, path: Path, data: bytes) -> None:
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            if not (path.parent / "context.json").exists():
                self._atomic(path.parent / "context.json",
                             json.dumps(self.context, sort_keys=True, indent=1,
                                        default=str).encode())
            self._atomic(path, data)
        except OSError as e:  # a read-only or full cache must not fail the search
            log.warning("shared cache: cannot write %s (%s); continuing without it", path, e)

    @staticmethod
    def _atomic(path: Path, data: bytes) -> None:
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(data)
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise


__all__ = ["SharedCache"]
