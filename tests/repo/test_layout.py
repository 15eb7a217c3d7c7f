"""The package's import structure: no import cycles, every import stays in its layer or goes down
(the layers of docs/architecture.md), and the rules below.

Every module of udd_fast/ is parsed (nothing is imported); an edge A -> B is any import of B inside
A, at the top or inside a function, absolute or relative (`from . import x` names module x).
"""
import ast
from pathlib import Path

from helpers import REPO

PACKAGE = REPO / "udd_fast"

# docs/architecture.md's layers, from the bottom up: a module may import its own layer and those below.
# A module belongs to the longest prefix that names it.
LAYERS = [
    ("foundations", ["udd_fast.version", "udd_fast.fields", "udd_fast.logs", "udd_fast.rng", "udd_fast.models",
                     "udd_fast.distributed", "udd_fast.matching", "udd_fast.report", "udd_fast.scores"]),
    ("data", ["udd_fast.data"]),
    ("ops", ["udd_fast.augment", "udd_fast.augment_imagenet", "udd_fast.sampling", "udd_fast.ops"]),
    ("method pieces", ["udd_fast.decode", "udd_fast.region_search", "udd_fast.train", "udd_fast.compat",
                       "udd_fast.coreset"]),
    ("configuration", ["udd_fast.config"]),
    ("engine", ["udd_fast.engine"]),
    ("artifacts and caches", ["udd_fast.artifacts", "udd_fast.checkpoint", "udd_fast.pictures", "udd_fast.result",
                              "udd_fast.protocol", "udd_fast.proxy", "udd_fast.foreign",
                              "udd_fast.reference"]),
    ("pipeline", ["udd_fast.pipeline"]),
    ("front doors", ["udd_fast.distill", "udd_fast.evaluate", "udd_fast.export", "udd_fast.compare", "udd_fast.api",
                     "udd_fast"]),
]

# A must not depend on B, directly or through other modules, because ...
FORBIDDEN = [
    ("udd_fast.checkpoint", "udd_fast.proxy", "the data fingerprint belongs to the data (udd_fast.data)"),
    ("udd_fast.compat", "udd_fast.engine", "the drop-in needs the matching distance (udd_fast.matching), not the loop"),
]


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def import_graph() -> dict:
    """{module: set of the package's modules it imports}."""
    files = {_module_name(p): p for p in PACKAGE.rglob("*.py")}
    graph = {}
    for name, path in files.items():
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        edges = set()
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = package.rsplit(".", node.level - 1)[0] if node.level else ""
                module = ".".join(p for p in (base, node.module) if p)
                # `from M import x` imports module M.x when there is one, else names from M
                targets = [f"{module}.{a.name}" if f"{module}.{a.name}" in files else module for a in node.names]
            else:
                continue
            edges.update(t for t in targets if t in files and t != name)
        graph[name] = edges
    return graph


def cycles(graph: dict) -> list:
    """The strongly connected components of more than one module (Tarjan), each as a sorted list."""
    index, low, stack, on_stack, found = {}, {}, [], set(), []

    def visit(v):
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = set()
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.add(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def path_between(graph: dict, a: str, b: str):
    """An import path a -> ... -> b, or None."""
    seen, todo = {a: None}, [a]
    while todo:
        v = todo.pop(0)
        if v == b:
            path = []
            while v is not None:
                path.append(v)
                v = seen[v]
            return path[::-1]
        for w in sorted(graph[v]):
            if w not in seen:
                seen[w] = v
                todo.append(w)
    return None


def test_the_graph_sees_every_kind_of_import():
    graph = import_graph()
    assert "udd_fast.data" in graph and "udd_fast.data.registry" in graph["udd_fast.data"]  # a package's face
    assert "udd_fast.rng" in graph["udd_fast.sampling"]  # from . import rng
    assert "udd_fast.data.dataset" in graph["udd_fast.data.registry"]  # relative inside a subpackage
    assert "udd_fast.artifacts" in graph["udd_fast.evaluate"]  # inside a function


def test_no_import_cycles():
    found = cycles(import_graph())
    assert not found, "import cycles: " + "; ".join(" <-> ".join(c) for c in found)


def test_layering_rules():
    graph = import_graph()
    for a, b, why in FORBIDDEN:
        path = path_between(graph, a, b)
        assert path is None, f"{' -> '.join(path)}: {a} must not import {b}: {why}"


def layer_of(module: str):
    """(index, name) of the layer that holds `module`, or None."""
    best = None
    for i, (name, prefixes) in enumerate(LAYERS):
        for p in prefixes:
            if (module == p or module.startswith(p + ".")) and (best is None or len(p) > best[2]):
                best = (i, name, len(p))
    return None if best is None else best[:2]


def test_every_module_has_a_layer_and_no_import_runs_back_up():
    graph = import_graph()
    unplaced = sorted(m for m in graph if layer_of(m) is None)
    assert not unplaced, f"modules in no layer of docs/architecture.md: {unplaced}"
    up = [f"{a} ({layer_of(a)[1]}) -> {b} ({layer_of(b)[1]})" for a in sorted(graph) for b in sorted(graph[a])
          if layer_of(b)[0] > layer_of(a)[0]]
    assert not up, "imports that run back up a layer: " + "; ".join(up)
    # positive control: an import from the engine into the pipeline would be caught
    assert layer_of("udd_fast.pipeline.driver")[0] > layer_of("udd_fast.engine.loop")[0]
