"""The import graph of ``autolab``, read from the source (top-level and function-level imports
alike): no cycles, and every import goes down (or across) the layers that docs/ARCHITECTURE.md
draws. A new module must be given a layer here."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PKG = Path(__file__).resolve().parent.parent / "autolab"

# Lowest first. A module may import modules of its own layer or of lower layers only.
LAYERS: list[tuple[str, ...]] = [
    # records and the plumbing every layer may use
    ("autolab", "autolab.errors", "autolab.records", "autolab.registry", "autolab.harnesskit", "autolab.gpu_share"),
    # the log and what reads it; tasks, candidate storage, the sandbox, the LLM gateway, executors
    ("autolab.log", "autolab.ledger", "autolab.task", "autolab.store", "autolab.diffs", "autolab.sandbox",
     "autolab._sandbox_boot", "autolab.llm", "autolab._papermill_run", "autolab.executors", "autolab.executors.*"),
    # a lab: one folder, one task, one log
    ("autolab.lab", "autolab.knowledge", "autolab.archive"),
    # the steps
    ("autolab._propose", "autolab._implement", "autolab._run", "autolab._audit", "autolab._audit.*", "autolab.merge",
     "autolab.llm_propose", "autolab.llm_implement"),
    # the loop (and the ablation, which schedules runs like its final comparison; background: a loop beside the notebook)
    ("autolab._loop", "autolab.ablation", "autolab.background"),
    # the views
    ("autolab.report", "autolab.ui", "autolab.ui.*", "autolab.cli", "autolab.__main__"),
]


def modules() -> dict[str, Path]:
    out = {}
    for f in PKG.rglob("*.py"):
        rel = f.relative_to(PKG.parent).with_suffix("")
        parts = rel.parts[:-1] if rel.name == "__init__" else rel.parts
        out[".".join(parts)] = f
    return out


def imports(name: str, path: Path, known: set[str]) -> set[str]:
    """Modules of the package that ``name`` imports anywhere in its source."""
    is_pkg = path.name == "__init__.py"
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        targets: list[str] = []
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = name.split(".") if is_pkg else name.split(".")[:-1]
                base = base[: len(base) - (node.level - 1)]
                stem = ".".join(base + ([node.module] if node.module else []))
            else:
                stem = node.module or ""
            targets = [stem] + [f"{stem}.{a.name}" for a in node.names]
        for t in targets:
            while t and t not in known:
                t = t.rpartition(".")[0]
            if t and t != name and not name.startswith(t + "."):   # a parent package is not an edge
                found.add(t)
    return found


def graph() -> dict[str, set[str]]:
    mods = modules()
    return {m: imports(m, f, set(mods)) for m, f in mods.items()}


def layer_of(module: str) -> int:
    for i, names in enumerate(LAYERS):
        for n in names:
            if module == n or (n.endswith(".*") and module.startswith(n[:-1])):
                return i
    raise AssertionError(f"{module} has no layer: add it to LAYERS in {__file__} and to docs/ARCHITECTURE.md")


def cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan, iterative)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on: set[str] = set()
    out: list[list[str]] = []
    counter = 0
    for root in sorted(edges):
        if root in index:
            continue
        work = [(root, iter(sorted(edges[root])))]
        index[root] = low[root] = counter
        counter += 1
        stack.append(root)
        on.add(root)
        while work:
            v, it = work[-1]
            w = next(it, None)
            if w is not None:
                if w not in index:
                    index[w] = low[w] = counter
                    counter += 1
                    stack.append(w)
                    on.add(w)
                    work.append((w, iter(sorted(edges[w]))))
                elif w in on:
                    low[v] = min(low[v], index[w])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[v])
            if low[v] == index[v]:
                comp = []
                while True:
                    x = stack.pop()
                    on.discard(x)
                    comp.append(x)
                    if x == v:
                        break
                if len(comp) > 1:
                    out.append(sorted(comp))
    return out


def test_the_cycle_finder_finds_a_cycle():
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert cycles({"a": {"b"}, "b": set()}) == []


def test_no_import_cycles():
    found = cycles(graph())
    assert not found, "import cycles (give each question one owner, keep layers one-way): " + "; ".join(
        " -> ".join(c) for c in found)


def test_imports_go_down_the_layers():
    edges = graph()
    wrong = [f"{m} (layer {layer_of(m)}) imports {t} (layer {layer_of(t)})"
             for m in sorted(edges) for t in sorted(edges[m]) if m != "autolab" and layer_of(t) > layer_of(m)]
    assert not wrong, "imports that go up the layers of docs/ARCHITECTURE.md:\n" + "\n".join(wrong)


@pytest.mark.parametrize("module", sorted(modules()))
def test_every_module_has_a_layer(module):
    layer_of(module)
