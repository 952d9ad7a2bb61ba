"""benchmarks/RESULTS.md holds one section per benchmark script, between its own markers; a
script rewrites only its section."""

from __future__ import annotations

import subprocess
from pathlib import Path

RESULTS = Path(__file__).parent / "RESULTS.md"


def commit() -> str:
    """The checked-out commit's short hash, for a table's provenance ("+ local changes" when
    tracked files other than RESULTS.md and the plots differ from it)."""
    git = ["git", "-C", str(RESULTS.parent)]
    try:
        head = subprocess.run([*git, "rev-parse", "--short", "HEAD"], capture_output=True,
                              text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown commit"
    dirty = subprocess.run([*git, "diff", "--quiet", "HEAD", "--", ":/",
                            ":(exclude,top)benchmarks/RESULTS.md",
                            ":(exclude,top,glob)benchmarks/*.png"]).returncode != 0
    return head + (" + local changes" if dirty else "")


def write_section(name: str, heading: str, text: str, path: Path = RESULTS) -> Path:
    """Replace the text between `<!-- NAME:begin -->` and `<!-- NAME:end -->`, or append the
    section under `## HEADING` if the file has none yet."""
    begin, end = f"<!-- {name}:begin -->", f"<!-- {name}:end -->"
    old = path.read_text() if path.exists() else "# Benchmark results\n"
    section = f"{begin}\n{text}\n{end}"
    if begin in old:
        new = old[: old.index(begin)] + section + old[old.index(end) + len(end):]
    else:
        new = old.rstrip() + f"\n\n## {heading}\n\n" + section + "\n"
    path.write_text(new)
    return path
