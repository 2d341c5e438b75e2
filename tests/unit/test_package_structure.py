"""The package's shape, read from its source with ast: no module imports another module's private name, and the
import graph (lazy imports inside functions included) has no cycle."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PKG = Path(__file__).resolve().parents[2] / "rltune"


def _modules() -> dict[str, ast.Module]:
    out = {}
    for p in sorted(PKG.rglob("*.py")):
        name = ".".join(p.relative_to(PKG.parent).with_suffix("").parts).removesuffix(".__init__")
        out[name] = ast.parse(p.read_text(), filename=str(p))
    return out


MODULES = _modules()


def _imports(tree: ast.Module):
    """(target module, imported name or None) for every rltune import anywhere in the module."""
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] == "rltune":
            for a in node.names:
                sub = f"{node.module}.{a.name}"
                yield (sub, None) if sub in MODULES else (node.module, a.name)
        elif isinstance(node, ast.Import):
            for a in node.names:
                if a.name.split(".")[0] == "rltune":
                    yield a.name, None


def test_no_module_imports_a_private_name():
    bad = [f"{m} imports {tgt}.{name}" for m, tree in MODULES.items() for tgt, name in _imports(tree)
           if name is not None and name.startswith("_")]
    assert not bad, bad


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index, low, stack, on, out = {}, {}, [], set(), []

    def visit(v):
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    for v in graph:
        if v not in index:
            visit(v)
    return out


def test_import_graph_has_no_cycle():
    graph = {m: {t for t, _ in _imports(tree) if t in MODULES and t != m} for m, tree in MODULES.items()}
    assert not _cycles(graph), _cycles(graph)


@pytest.mark.parametrize("graph,expect", [({"a": {"b"}, "b": {"a"}, "c": set()}, [["a", "b"]]),
                                          ({"a": {"b"}, "b": set()}, [])])
def test_cycle_finder_finds_cycles(graph, expect):
    assert _cycles(graph) == expect


def test_comments_cite_documents_in_this_repository():
    """Citations must be followable: docs/ here or a paper by arXiv id, never an outside spec or line number."""
    import re

    pat = re.compile(r"spec §|specs/[a-z_]+\.md|ARCHITECTURE rule|VCA:[0-9]+|\.\./shared")
    root = PKG.parent
    bad = [f"{p.relative_to(root)}:{i}" for d in ("rltune", "rewards") for p in sorted((root / d).rglob("*.py"))
           for i, line in enumerate(p.read_text().splitlines(), 1) if pat.search(line)]
    assert not bad, bad


def test_size_budgets():
    """No function over 80 lines, no file over 600, the text trainer's step file at most 400."""
    long_fns = [f"{m}.{n.name} ({n.end_lineno - n.lineno + 1} lines)" for m, tree in MODULES.items()
                for n in ast.walk(tree) if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef))
                and n.end_lineno - n.lineno + 1 > 80]
    assert not long_fns, long_fns
    sizes = {p.relative_to(PKG).as_posix(): len(p.read_text().splitlines()) for p in PKG.rglob("*.py")}
    over = {p: n for p, n in sizes.items() if n > 600}
    assert not over, over
    assert sizes["trainer.py"] <= 400


def test_trainer_does_not_probe_its_engines():
    """The trainer talks to its engines through their protocols (rltune/train/engines.py), not hasattr/getattr."""
    cls = next(n for n in MODULES["rltune.trainer"].body if isinstance(n, ast.ClassDef) and n.name == "Trainer")
    probes = [n.lineno for n in ast.walk(cls) if isinstance(n, ast.Call) and isinstance(n.func, ast.Name)
              and n.func.id in ("hasattr", "getattr")]
    assert not probes, probes
