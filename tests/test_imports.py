"""The package's import graph has no cycles, and its leaves import nothing above them (DESIGN: Conventions).

Every `import homegrown…` counts, including those inside functions: a deferred import hides a cycle from
Python, not from the design. Read with `ast`, so nothing is imported to check it.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import homegrown

PACKAGE = Path(homegrown.__file__).parent
LEAVES = {"homegrown.config", "homegrown.errors", "homegrown.io", "homegrown.layout", "homegrown.tokenizer",
          "homegrown.model", "homegrown.chat_template"}


def _module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def import_graph(package: Path = PACKAGE) -> dict[str, set[str]]:
    """Module → the modules of the package it imports (`from pkg import mod` counts as importing `pkg.mod`)."""
    files = {_module_name(p): p for p in package.rglob("*.py")}
    graph: dict[str, set[str]] = {}
    for name, path in files.items():
        deps: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Import):
                deps |= {alias.name for alias in node.names}
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                deps |= {f"{node.module}.{a.name}" if f"{node.module}.{a.name}" in files else node.module
                         for a in node.names}
        graph[name] = {d for d in deps if d in files and d != name}
    return graph


def find_cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan), each sorted; a cycle lies in each."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    cycles: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        for dep in sorted(graph.get(node, ())):
            if dep not in index:
                visit(dep)
                low[node] = min(low[node], low[dep])
            elif dep in stack:
                low[node] = min(low[node], index[dep])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                cycles.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return cycles


def test_the_cycle_finder_finds_cycles() -> None:
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a", "d"}, "d": set(), "e": {"e2"}, "e2": {"e"}}
    assert sorted(find_cycles(graph)) == [["a", "b", "c"], ["e", "e2"]]
    assert find_cycles({"a": {"b"}, "b": set()}) == []


def test_the_graph_sees_deferred_and_from_imports() -> None:
    graph = import_graph()
    assert "homegrown.train.checkpoint" in graph["homegrown.train.loop"]  # `from homegrown.train import checkpoint`
    assert "homegrown.eval.suite" in graph["homegrown.cli"]  # imported inside a command function


def test_no_import_cycles() -> None:
    assert find_cycles(import_graph()) == []


def test_leaves_import_only_leaves() -> None:
    graph = import_graph()
    assert set(graph) >= LEAVES
    above = {leaf: sorted(graph[leaf] - LEAVES) for leaf in sorted(LEAVES) if graph[leaf] - LEAVES}
    assert above == {}


def test_pretraining_needs_no_corpus_building_stack() -> None:
    """`homegrown pretrain` on a GPU node whose image holds torch's stack only must not import the HTML/dedup
    stack (a GPU check once died at `import datasketch` before a single step): loaded in a fresh interpreter,
    exactly as the CLI's pretrain command loads it."""
    corpus_stack = ("datasketch", "resiliparse", "trafilatura", "py3langid")
    code = ("import sys\nimport homegrown.cli\nfrom homegrown.pipeline import pretrain\nimport homegrown.train.loop\n"
            f"print(','.join(m for m in {corpus_stack!r} if m in sys.modules))")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert done.stdout.strip() == ""
