"""The package's layering: the wings (docs/development.md) import only down,
and there is no import cycle.  Every ``import`` of a package module, at
module level or inside a function (a lazy import hides a dependency, it does
not remove it), is an edge."""
from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path

import pytest

PKG = Path(__file__).resolve().parents[1] / "iqa_cache"


def _module_name(path: Path) -> str:
    rel = path.relative_to(PKG.parent).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _resolve(current: str, is_pkg: bool, node: ast.ImportFrom) -> str:
    if node.level == 0:
        return node.module or ""
    base = current.split(".") if is_pkg else current.split(".")[:-1]
    base = base[: len(base) - (node.level - 1)]
    return ".".join(base + ([node.module] if node.module else []))


def import_graph() -> dict[str, set[str]]:
    modules = {_module_name(p): p for p in PKG.rglob("*.py")}
    graph: dict[str, set[str]] = {m: set() for m in modules}
    for name, path in modules.items():
        is_pkg = path.name == "__init__.py"
        for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
            targets: list[str] = []
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = _resolve(name, is_pkg, node)
                targets = [f"{base}.{a.name}" for a in node.names] + [base]
            for t in targets:
                # the longest package module that the target names
                while t and t not in modules:
                    t = t.rpartition(".")[0]
                if t and t != name and not name.startswith(t + "."):
                    graph[name].add(t)
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(n: str) -> list[str] | None:
        state[n] = 1
        stack.append(n)
        for m in sorted(graph[n]):
            if state.get(m) == 1:
                return stack[stack.index(m):] + [m]
            if m not in state and (c := visit(m)):
                return c
        stack.pop()
        state[n] = 2
        return None

    for n in sorted(graph):
        if n not in state and (c := visit(n)):
            return c
    return None


def test_the_cycle_finder_finds_a_cycle():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) is None


def test_no_import_cycle_inside_the_package():
    graph = import_graph()
    assert len(graph) > 10
    cycle = find_cycle(graph)
    assert cycle is None, "import cycle: " + " -> ".join(cycle)


# ------------------------------------------------------------------ wings

SHARED = "shared"
TOP = "top"
# a wing -> the wings its modules may import (besides their own); the shared
# modules at the package's top import only each other
MAY_IMPORT: dict[str, set[str]] = {
    SHARED: set(),
    "sources": {SHARED},
    "cache": {SHARED, "sources"},  # `iqa import` reads labels as a manifest
    "embed": {SHARED, "sources", "cache"},  # never train/
    "train": {SHARED, "cache"},  # never embed/ nor report/
    "report": {SHARED, "train"},  # reads runs (torch-free modules of train/), never a cache
    TOP: {SHARED, "sources", "cache", "embed", "train", "report"},  # demo, predict, evaluate, cli/
}
TOP_MODULES = {"demo", "predict", "evaluate", "cli", "__main__"}
WINGS = {"sources", "cache", "embed", "train", "report"}


def wing_of(module: str) -> str:
    parts = module.split(".")
    if len(parts) == 1:  # iqa_cache itself
        return SHARED
    if parts[1] in WINGS:
        return parts[1]
    return TOP if parts[1] in TOP_MODULES else SHARED


def layering_violations(graph: dict[str, set[str]]) -> list[str]:
    bad = []
    for mod, targets in sorted(graph.items()):
        w = wing_of(mod)
        for t in sorted(targets):
            tw = wing_of(t)
            if tw != w and tw not in MAY_IMPORT[w]:
                bad.append(f"{mod} ({w}) imports {t} ({tw})")
    return bad


def test_every_module_sits_in_a_wing_or_is_shared():
    graph = import_graph()
    top_level = {m.split(".")[1] for m in graph if m.count(".") >= 1}
    shared = sorted(m for m in top_level if wing_of("iqa_cache." + m) == SHARED)
    # the top keeps only what every wing uses; a new module belongs in a wing
    assert shared == ["binning", "device", "errors", "metrics", "schema", "seeds", "settings"], shared
    assert WINGS | TOP_MODULES - {"__main__"} <= top_level


def test_the_layering_check_finds_an_upward_import():
    assert layering_violations({"iqa_cache.cache.read": {"iqa_cache.train.runs"}}) == [
        "iqa_cache.cache.read (cache) imports iqa_cache.train.runs (train)"]
    assert layering_violations({"iqa_cache.embed.loop": {"iqa_cache.train.config"}})
    assert layering_violations({"iqa_cache.train.fit": {"iqa_cache.embed.encoder"}})
    assert layering_violations({"iqa_cache.train.results": {"iqa_cache.report.loading"}})
    assert layering_violations({"iqa_cache.metrics": {"iqa_cache.sources.datasets"}})
    assert not layering_violations({"iqa_cache.report.loading": {"iqa_cache.train.runs", "iqa_cache.metrics"}})


def test_imports_run_down_the_wings():
    bad = layering_violations(import_graph())
    assert not bad, "imports against the layering (docs/development.md):\n" + "\n".join(bad)


def _heavy_after(code: str) -> set[str]:
    probe = f"{code}\nimport sys, json\nprint(json.dumps(sorted({{m.split('.')[0] for m in sys.modules}})))"
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True).stdout
    return set(json.loads(out.strip().splitlines()[-1])) & {"torch", "h5py", "open_clip", "timm", "scipy"}


@pytest.mark.parametrize("code", [
    "import iqa_cache.report, iqa_cache.train.runs, iqa_cache.train.provenance",  # `iqa report` reads runs
    "import iqa_cache.embed, iqa_cache.train, iqa_cache.sources",  # a wing's __init__ costs nothing
])
def test_reading_runs_and_opening_wings_load_no_torch(code):
    assert "torch" not in _heavy_after(code)
