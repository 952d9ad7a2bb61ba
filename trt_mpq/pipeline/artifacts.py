"""Artifacts leaving the work folder: move a built artifact's files into an output folder and
add what was measured to the sidecar its backend wrote beside it ("<artifact>.json")."""

from __future__ import annotations

import json
import shutil
from collections.abc import Mapping
from pathlib import Path

from trt_mpq.backends.base import Artifact


def update_sidecar(artifact_path: Path, facts: Mapping) -> bool:
    """Add `facts` to the artifact's sidecar, if its backend wrote one; True if it did."""
    from trt_mpq.report import write_json

    sidecar = artifact_path.with_name(artifact_path.name + ".json")
    if not sidecar.exists():
        return False
    data = json.loads(sidecar.read_text())
    data.update(facts)
    write_json(sidecar, data)
    return True


def install_artifact(artifact: Artifact, out_dir: Path, facts: Mapping) -> str:
    """Move the artifact's files into `out_dir`, add `facts` to its sidecar; its file name."""
    for f in (artifact.path, *artifact.files):
        shutil.move(str(f), str(out_dir / f.name))
    update_sidecar(out_dir / artifact.path.name, facts)
    return artifact.path.name


__all__ = ["install_artifact", "update_sidecar"]
