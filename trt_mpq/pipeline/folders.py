"""Output folders, checked before any long work: a mistake costs seconds and leaves nothing."""

from __future__ import annotations

import os
import time
from pathlib import Path

from trt_mpq.errors import ConfigError

STORE_FILE = "evaluations.sqlite"
ENGINES = Path("engines")


def check_writable(path: Path, flag: str, folder: bool) -> None:
    """`path` (an output folder, or a file when not `folder`) can be created and written by
    this user."""
    if folder and path.exists() and not path.is_dir():
        raise ConfigError(f"{flag} {path} is a file, not a folder; choose a folder path (it is "
                          "created if missing)")
    if not folder and path.is_dir():
        raise ConfigError(f"{flag} {path} is a folder; give a file path")
    existing = path if folder and path.exists() else path.parent
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if not existing.is_dir():
        raise ConfigError(f"{flag} {path}: {existing} is a file, so {path} cannot be created; "
                          f"choose another {flag}")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise ConfigError(f"{flag} {path}: {existing} is not writable by this user; choose "
                          f"another {flag}")


def new_folder(out: Path | None, default_name: str) -> Path:
    """An empty output folder: `out`, or engines/<default_name>-<time>/."""
    stamp = time.strftime("%Y%m%d-%H%M%S")
    out = Path(out) if out is not None else ENGINES / f"{default_name}-{stamp}"
    check_writable(out, "--out", folder=True)
    if out.exists() and any(out.iterdir()):
        raise ConfigError(f"output folder {out} is not empty; choose another --out")
    return out


def search_folder(out: Path | None, resume: bool, model_name: str, backend_name: str) -> Path:
    """A search's output folder: `out`; with `resume` and no `out`, the latest search of this
    model and backend under engines/; else a new engines/<model>-<backend>-<time>/. A folder
    that holds an earlier search is continued only with `resume`."""
    if out is not None:
        out = Path(out)
    elif resume:
        candidates = sorted(ENGINES.glob(f"{model_name}-{backend_name}-*/{STORE_FILE}"),
                            key=lambda p: p.stat().st_mtime)
        if not candidates:
            raise ConfigError(f"--resume found no earlier search of {model_name} on "
                              f"{backend_name} under {ENGINES}/; pass --out DIR")
        out = candidates[-1].parent
    else:
        out = ENGINES / f"{model_name}-{backend_name}-{time.strftime('%Y%m%d-%H%M%S')}"
    check_writable(out, "--out", folder=True)
    store = out / STORE_FILE
    if resume:
        if not store.exists():
            raise ConfigError(f"--resume: {out} holds no earlier search (no {STORE_FILE})")
    elif out.exists() and any(out.iterdir()):
        hint = ("it holds an earlier search: add --resume to continue it, or "
                if store.exists() else "")
        raise ConfigError(f"output folder {out} is not empty; {hint}choose another --out")
    return out


__all__ = ["ENGINES", "STORE_FILE", "check_writable", "new_folder", "search_folder"]
