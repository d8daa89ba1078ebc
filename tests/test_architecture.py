"""The package's import graph, read from the installed sources: dependencies run one way,
kernels <- proto (the wire codec) <- {service, client}, and no module imports itself back.

Every ``import`` counts, at module level or inside a function (a lazy import is still a dependency),
with one exception the design allows: the CLI (``l1pca.client.cli``) starts the service inside its
``serve`` branch only.
"""
from __future__ import annotations

import ast
import importlib
import pkgutil
from pathlib import Path

import pytest

PACKAGES = ("l1pca.kernels", "l1pca.proto", "l1pca.service", "l1pca.client")
# The generated stubs (l1pca.v1) import nothing of ours: the codec may build on them as on the kernels.
LAYER = {"l1pca.kernels": 0, "l1pca.v1": 0, "l1pca.proto": 1, "l1pca.service": 2, "l1pca.client": 2}
ALLOWED_LAZY = {("l1pca.client.cli", "l1pca.service.server")}


def _modules():
    """``{module name: source path}`` of every module of the installed packages."""
    found = {}
    for name in PACKAGES:
        pkg = importlib.import_module(name)
        found[name] = Path(pkg.__file__)
        for info in pkgutil.iter_modules(pkg.__path__, prefix=name + "."):
            spec = importlib.util.find_spec(info.name)
            found[info.name] = Path(spec.origin)
    return found


def _imports(name, path):
    """``[(imported module, lazy)]``: l1pca modules this module imports (``lazy``: inside a def)."""
    tree = ast.parse(path.read_text(), filename=str(path))
    package = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
    out = []

    def visit(node, lazy):
        for child in ast.iter_child_nodes(node):
            inner = lazy or isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef))
            if isinstance(child, ast.Import):
                out.extend((alias.name, inner) for alias in child.names)
            elif isinstance(child, ast.ImportFrom):
                base = child.module or ""
                if child.level:
                    parts = package.split(".")
                    parts = parts[:len(parts) - child.level + 1]
                    base = ".".join(parts + ([base] if base else []))
                # `from pkg import module` names a module; `from module import name` the module.
                for alias in child.names:
                    full = f"{base}.{alias.name}"
                    out.append((full if importlib.util.find_spec(base) and _is_module(full) else base,
                                inner))
            visit(child, inner)

    visit(tree, False)
    return [(mod, lazy) for mod, lazy in out if mod.startswith("l1pca.")]


def _is_module(name):
    try:
        return importlib.util.find_spec(name) is not None
    except (ImportError, ValueError):
        return False


def _layer(module):
    for prefix, level in LAYER.items():
        if module == prefix or module.startswith(prefix + "."):
            return prefix, level
    raise AssertionError(f"{module} belongs to no known package")


@pytest.fixture(scope="module")
def graph():
    return {name: _imports(name, path) for name, path in _modules().items()}


def test_dependencies_run_one_way(graph):
    wrong = []
    for name, imports in graph.items():
        pkg, level = _layer(name)
        for mod, lazy in imports:
            other, other_level = _layer(mod)
            if other == pkg:
                continue
            if (name, mod) in ALLOWED_LAZY and lazy:
                continue
            if other_level >= level:  # same layer (service <-> client) or upwards
                wrong.append(f"{name} imports {mod}{' (lazily)' if lazy else ''}")
    assert not wrong, "imports against the layering kernels <- proto <- {service, client}:\n" + \
        "\n".join(wrong)


def test_no_import_circles(graph):
    edges = {name: {mod for mod, _ in imports if mod in graph and mod != name}
             for name, imports in graph.items()}
    # A package's __init__ importing its own modules is how it hands names on, not a circle.
    for name in PACKAGES:
        edges[name] = set()
    index, low, stack, on_stack, circles = {}, {}, [], set(), []

    def strongconnect(v):  # Tarjan's strongly connected components
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in edges[v]:
            if w not in index:
                strongconnect(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                circles.append(sorted(comp))

    for v in edges:
        if v not in index:
            strongconnect(v)
    assert not circles, f"modules that import each other: {circles}"


def test_the_graph_was_read(graph):
    """The walk found the modules and their imports (so the two tests above can fail)."""
    assert {"l1pca.kernels.solve", "l1pca.proto.wire", "l1pca.service.handlers",
            "l1pca.client.cli"} <= set(graph)
    assert ("l1pca.proto.wire", False) in graph["l1pca.service.handlers"]
    assert ("l1pca.service.server", True) in graph["l1pca.client.cli"]
