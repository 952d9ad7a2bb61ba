"""What clients read, made safe to send: JSON that always serializes (`clean`), and text with
the server's own paths and internal addresses replaced by placeholders (`Redactor`).

A job's log, its phase line, its failure message and its text outputs (result.json,
report.md, ...) name the files the search used: `<root>/jobs/<id>/out`, the upload it ran,
the cache, the Python it ran on. A client sees them relative to the job (`<job>/out`) and the
rest as `<uploads>`, `<cache>`, `<tasks>`, `<root>`, `<python>`, `<trt_mpq>`,
`<ray-address>`.
"""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path

#: longer text is cut in what the API shows (a stored value is never this long since the one
#: validation caps a setting's text at 200 characters; this guards rows an older server wrote)
MAX_SHOWN = 1000


def clean(value, depth: int = 0):
    """`value` as JSON can always carry it: non-finite numbers become null, other types their
    text, long text is cut, nesting is bounded."""
    if depth > 20:
        return None
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if value is None or isinstance(value, (bool, int)):
        return value
    if isinstance(value, str):
        return value if len(value) <= MAX_SHOWN else value[:MAX_SHOWN] + "..."
    if isinstance(value, dict):
        return {str(k)[:MAX_SHOWN]: clean(v, depth + 1) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [clean(v, depth + 1) for v in value]
    return clean(str(value), depth + 1)


def dumps(value) -> str:
    return json.dumps(clean(value), allow_nan=False, ensure_ascii=False)


class Redactor:
    """Replaces each of the server's paths (and their resolved forms) with its placeholder,
    longest first, so that `<root>/jobs/<id>` becomes `<job>` before `<root>` would match."""

    def __init__(self, places: dict[str, str | Path | None]) -> None:
        pairs: dict[str, str] = {}
        for name, where in places.items():
            if not where:
                continue
            forms = {str(where)}
            if isinstance(where, Path):
                try:
                    forms.add(str(where.resolve()))
                except OSError:
                    pass
            for form in forms:
                if len(form) > 1:
                    pairs.setdefault(form, name)
        self.pairs = sorted(pairs.items(), key=lambda p: -len(p[0]))

    @classmethod
    def for_server(cls, root: Path, cache: str | Path | None, tasks_dir: Path | None,
                   ray_address: str | None) -> Redactor:
        import trt_mpq

        package = Path(trt_mpq.__file__).parent
        return cls({"<uploads>": Path(root) / "uploads", "<jobs>": Path(root) / "jobs",
                    "<root>": Path(root), "<cache>": Path(cache) if cache else None,
                    "<tasks>": tasks_dir, "<trt_mpq>": package,
                    "<python>": Path(sys.prefix), "<python-base>": Path(sys.base_prefix),
                    "<ray-address>": ray_address if ray_address not in ("auto", None) else None})

    def for_job(self, job_dir: Path) -> Redactor:
        """This redactor with the job's own folder shown as `<job>`."""
        out = Redactor({})
        out.pairs = sorted([*self.pairs, *((f, "<job>") for f in {str(job_dir),
                                                                    str(job_dir.resolve())})],
                           key=lambda p: -len(p[0]))
        return out

    def __call__(self, text: str) -> str:
        for form, name in self.pairs:
            if form in text:
                text = text.replace(form, name)
        return text


__all__ = ["MAX_SHOWN", "Redactor", "clean", "dumps"]
