"""The TensorRT API surface this backend uses, checked against TensorRT's bindings without
loading them (no GPU, no TensorRT libraries needed).

`used_names()` reads the backend's own source: every attribute taken, directly or through calls,
from a variable that holds a TensorRT object (`TRT_ROOTS`; the backend names its variables so).
`binding_names(wheel_or_dir)` reads the identifiers a bindings build defines: the strings of its
compiled module (pybind11 keeps every Python-visible name as a C string; the linker may store a
name as the tail of a longer one, so every suffix counts) and the names its Python files define.
`missing(...)` is what the backend uses that a TensorRT version lacks:

    python -m trt_mpq.backends.tensorrt.surface tensorrt_cu13_bindings-11.4.0.106-...whl

The Python bindings of TensorRT 10.x/11.x are on PyPI (`tensorrt-cu13-bindings`); CI downloads
the supported versions and `tests/unit/test_tensorrt_surface.py` checks each, so a removal in a
new TensorRT is caught here, not on a user's GPU.
"""

from __future__ import annotations

import ast
import re
import sys
import zipfile
from collections.abc import Iterable
from pathlib import Path

HERE = Path(__file__).parent

#: variable names (dotted) that hold TensorRT modules or objects in the backend's source
TRT_ROOTS = frozenset({
    "trt", "self.trt", "builder", "network", "cfg", "parser", "profile", "layer", "tensor",
    "source", "runtime", "self._runtime", "engine", "self.engine", "context", "self.context",
    "inspector", "timing_cache",
})
#: the backend's modules that talk to TensorRT, and the flavours / versions each applies to
MODULES = {
    "__init__.py": "all",  # build, census (TensorRT 10, 11, TensorRT-RTX)
    "runner.py": "all",  # run and time
    "weak.py": "weak",  # TensorRT 10 weak typing only (gone in 11, absent in TensorRT-RTX)
}
#: names only the TensorRT-RTX code paths use (ahead-of-time compute capability targets)
RTX_ONLY = frozenset({"ComputeCapability", "num_compute_capabilities",
                      "set_compute_capability"})

_IDENT = re.compile(rb"[A-Za-z_][A-Za-z0-9_]*")


def _path(node: ast.AST) -> list[str] | None:
    """[variable, attr, attr, ...] of an attribute chain, looking through calls
    (`self.trt.Runtime(x).deserialize_cuda_engine` -> self, trt, Runtime, deserialize...)."""
    parts: list[str] = []
    while True:
        if isinstance(node, ast.Attribute):
            parts.append(node.attr)
            node = node.value
        elif isinstance(node, ast.Call):
            node = node.func
        elif isinstance(node, ast.Name):
            return [node.id, *reversed(parts)]
        else:
            return None


def used_in_source(source: str, roots: Iterable[str] = TRT_ROOTS) -> dict[str, int]:
    """name -> first line, for every attribute read from a TensorRT object in `source`: an
    attribute whose chain starts at one of `roots` (a dotted variable name)."""
    roots = set(roots)
    out: dict[str, int] = {}
    for node in ast.walk(ast.parse(source)):
        if not isinstance(node, ast.Attribute):
            continue
        path = _path(node)
        if path is None or node.attr.startswith("__"):
            continue
        if any(".".join(path[:k]) in roots for k in range(1, len(path))):
            out.setdefault(node.attr, node.lineno)
    return out


def used_names(flavour: str = "tensorrt", major: int = 10) -> dict[str, str]:
    """name -> "file:line" of every TensorRT attribute the backend uses with `flavour`
    ("tensorrt" or "tensorrt-rtx") at TensorRT major version `major`."""
    out: dict[str, str] = {}
    for file, scope in MODULES.items():
        if scope == "weak" and (flavour != "tensorrt" or major >= 11):
            continue
        for name, line in used_in_source((HERE / file).read_text()).items():
            if name in RTX_ONLY and flavour != "tensorrt-rtx":
                continue
            out.setdefault(name, f"{file}:{line}")
    return out


def _names_from_binary(data: bytes) -> set[str]:
    names = set()
    for piece in data.split(b"\0"):
        if 1 < len(piece) < 100 and _IDENT.fullmatch(piece):
            word = piece.decode()
            names.update(word[i:] for i in range(len(word)))
    return names


def _names_from_python(text: str) -> set[str]:
    names = set(re.findall(r"^\s*(?:def|class)\s+(\w+)", text, re.M))
    names.update(re.findall(r"^(\w+)\s*=", text, re.M))
    return names


def binding_names(path: Path) -> set[str]:
    """Identifiers a TensorRT bindings build defines: a wheel (`tensorrt-cu13-bindings`) or an
    installed package directory (e.g. `tensorrt_rtx_bindings`)."""
    path = Path(path)
    names: set[str] = set()
    if path.is_file() and path.suffix == ".whl":
        with zipfile.ZipFile(path) as z:
            for member in z.namelist():
                if member.endswith(".so") or ".so." in member or member.endswith(".pyd"):
                    names |= _names_from_binary(z.read(member))
                elif member.endswith(".py"):
                    names |= _names_from_python(z.read(member).decode("utf-8", "replace"))
        return names
    for file in path.rglob("*"):
        if file.suffix in (".so", ".pyd"):
            names |= _names_from_binary(file.read_bytes())
        elif file.suffix == ".py":
            names |= _names_from_python(file.read_text("utf-8", "replace"))
    return names


def wheel_version(path: Path) -> tuple[int, ...]:
    """(major, minor, ...) from a wheel's file name."""
    m = re.search(r"-(\d+(?:\.\d+)+)", Path(path).name)
    return tuple(int(x) for x in m.group(1).split(".")) if m else ()


def missing(used: dict[str, str], available: set[str]) -> dict[str, str]:
    return {name: where for name, where in sorted(used.items()) if name not in available}


def main(argv: list[str]) -> int:
    if not argv:
        print(__doc__)
        return 2
    bad = 0
    for arg in argv:
        version = wheel_version(Path(arg))
        flavour = "tensorrt-rtx" if "rtx" in Path(arg).name else "tensorrt"
        gone = missing(used_names(flavour, version[0] if version else 10), binding_names(arg))
        print(f"{arg}: {'ok' if not gone else f'{len(gone)} name(s) missing'}")
        for name, where in gone.items():
            print(f"  {name}  (used at {where})")
        bad += bool(gone)
    return 1 if bad else 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main(sys.argv[1:]))
