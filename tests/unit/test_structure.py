"""The house rules of the package, checked on its source: no import cycle (imports inside
functions included), the library never imports the CLI, no module grows past what one reader
holds in their head, and docs/options.md is what the config classes say."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).parents[2]
PACKAGE = ROOT / "trt_mpq"
MAX_LINES = 400


def _modules() -> dict[str, Path]:
    out = {}
    for path in PACKAGE.rglob("*.py"):
        parts = list(path.relative_to(ROOT).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        out[".".join(parts)] = path
    return out


def import_graph(modules: dict[str, Path]) -> dict[str, set[str]]:
    """module -> the package modules it imports anywhere in its source (function bodies
    included: a lazy import is still a dependency)."""
    def resolve(name: str) -> str | None:
        while name and name not in modules:
            name = name.rpartition(".")[0]
        return name or None

    graph: dict[str, set[str]] = {m: set() for m in modules}
    for module, path in modules.items():
        package = module if path.name == "__init__.py" else module.rpartition(".")[0]
        for node in ast.walk(ast.parse(path.read_text())):
            names: list[str] = []
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    parts = package.split(".")[:len(package.split(".")) - node.level + 1]
                    base = ".".join([*parts, *([node.module] if node.module else [])])
                names = [f"{base}.{a.name}" if f"{base}.{a.name}" in modules else base
                         for a in node.names]
            for name in names:
                if name.split(".")[0] == "trt_mpq":
                    target = resolve(name)
                    if target and target != module:
                        graph[module].add(target)
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components with more than one module (Tarjan, iterative)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found = []
    for root in graph:
        if root in index:
            continue
        work = [(root, iter(sorted(graph[root])))]
        index[root] = low[root] = len(index)
        stack.append(root)
        on_stack.add(root)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = len(index)
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(graph[child]))))
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[node])
            if low[node] == index[node]:
                component = []
                while True:
                    m = stack.pop()
                    on_stack.discard(m)
                    component.append(m)
                    if m == node:
                        break
                if len(component) > 1:
                    found.append(sorted(component))
    return found


def test_the_cycle_finder_finds_cycles():
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert cycles({"a": {"b"}, "b": set()}) == []


def test_the_import_graph_has_no_cycle():
    graph = import_graph(_modules())
    assert sum(len(v) for v in graph.values()) > 200  # the graph is really read
    assert "trt_mpq.pipeline.request" in graph["trt_mpq.pipeline.job"]
    assert cycles(graph) == []


@pytest.mark.parametrize("area", ["pipeline", "serve", "search", "backends", "qdq", "measure",
                                  "sensitivity", "store", "report", "task", "zoo"])
def test_the_library_never_imports_the_cli(area):
    graph = import_graph(_modules())
    offenders = {m: sorted(t for t in targets if t.startswith("trt_mpq.cli"))
                 for m, targets in graph.items() if m.startswith(f"trt_mpq.{area}")}
    assert {m: t for m, t in offenders.items() if t} == {}


def test_no_module_is_longer_than_a_reader_holds():
    long = {str(p.relative_to(ROOT)): n for p in PACKAGE.rglob("*.py")
            if (n := len(p.read_text().splitlines())) > MAX_LINES}
    assert long == {}


def test_the_options_reference_is_generated_from_the_config_classes():
    from trt_mpq.cli.reference import render

    committed = (ROOT / "docs" / "options.md").read_text()
    assert committed == render(), ("docs/options.md is out of date: python -m "
                                   "trt_mpq.cli.reference > docs/options.md")
    for flag in ("--max-drop", "--threads", "--repeats", "--strategy", "--prune", "--executor"):
        assert f"`{flag}`" in committed


def test_every_mutant_still_names_code_that_exists():
    """tests/mutants.py breaks the search's guarantees by replacing exact source text; a
    refactor that moves that text would silently retire its mutant."""
    import importlib.util
    import sys

    spec = importlib.util.spec_from_file_location("mutants", ROOT / "tests" / "mutants.py")
    mutants = importlib.util.module_from_spec(spec)
    sys.modules["mutants"] = mutants  # its dataclass looks its module up
    try:
        spec.loader.exec_module(mutants)
    finally:
        del sys.modules["mutants"]
    counts = {m.name: (ROOT / m.path).read_text().count(m.old) for m in mutants.MUTANTS}
    assert {name: n for name, n in counts.items() if n != 1} == {}
    for m in mutants.MUTANTS:
        assert all((ROOT / t).is_file() for t in m.tests), m.name
