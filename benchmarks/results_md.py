"""benchmarks/RESULTS.md holds one section per benchmark script, between its own markers; a
script rewrites only its section."""

from __future__ import annotations

from pathlib import Path

RESULTS = Path(__file__).parent / "RESULTS.md"


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
