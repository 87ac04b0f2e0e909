"""Imports flow one way (data → model → train → launch; body, config, metrics at the ground).

Every `import` in `meshrec/` counts, at module level or inside a function: a lazy import still
makes one module depend on the other, and a cycle through one is a cycle in the design. The graph
has an edge A → B when A names B: `import a.b.c` → a.b.c; `from a.b import c` → a.b.c when that
is a module, else a.b (c is an attribute). Parent packages a name passes through are not edges
(Python runs their `__init__` first, which is how packages work, not a dependency of A's).
"""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
LOOP = "meshrec.train.loop"
# Modules allowed to import the training loop: its command, and the launchers that run it.
LOOP_USERS = ("meshrec.train.commands", "meshrec.launch", "meshrec.launch.*")


def module_names(root: Path, package: str) -> dict[str, Path]:
    """Dotted name → file of every module under `root`, the directory of `package`."""
    out = {}
    for path in sorted(root.rglob("*.py")):
        parts = [package, *path.relative_to(root).with_suffix("").parts]
        if parts[-1] == "__init__":
            parts.pop()
        out[".".join(parts)] = path
    return out


def _imported(node: ast.AST, module: str, is_package: bool, known: set[str]) -> list[str]:
    """The known modules one import statement names (see the module docstring)."""
    if isinstance(node, ast.Import):
        names = [alias.name for alias in node.names]
    else:
        assert isinstance(node, ast.ImportFrom)
        base = node.module or ""
        if node.level:  # relative: from the module's own package, up level - 1 more
            here = module.split(".") if is_package else module.split(".")[:-1]
            here = here[: len(here) - (node.level - 1)]
            base = ".".join(here + ([base] if base else []))
        names = [f"{base}.{alias.name}" if f"{base}.{alias.name}" in known else base
                 for alias in node.names]
    out = []
    for name in names:
        while name and name not in known:  # `import a.b.attr`-style names: the module part
            name = name.rpartition(".")[0]
        if name:
            out.append(name)
    return out


def import_graph(root: Path, package: str) -> dict[str, dict[str, int]]:
    """Module → {module it imports: line of the first such import}, for modules of `package`."""
    files = module_names(root, package)
    known = set(files)
    graph: dict[str, dict[str, int]] = {}
    for module, path in files.items():
        edges: dict[str, int] = {}
        tree = ast.parse(path.read_text(encoding="utf-8"), str(path))
        for node in ast.walk(tree):
            if isinstance(node, (ast.Import, ast.ImportFrom)):
                for target in _imported(node, module, path.name == "__init__.py", known):
                    if target != module or isinstance(node, ast.Import):
                        edges.setdefault(target, node.lineno)
        graph[module] = edges
    return graph


def strongly_connected(graph: dict[str, dict[str, int]]) -> list[list[str]]:
    """Tarjan's strongly connected components (iterative), each sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    out: list[list[str]] = []
    for start in sorted(graph):
        if start in index:
            continue
        work = [(start, iter(sorted(graph[start])))]
        index[start] = low[start] = len(index)
        stack.append(start)
        on_stack.add(start)
        while work:
            node, targets = work[-1]
            for target in targets:
                if target not in index:
                    index[target] = low[target] = len(index)
                    stack.append(target)
                    on_stack.add(target)
                    work.append((target, iter(sorted(graph.get(target, {})))))
                    break
                if target in on_stack:
                    low[node] = min(low[node], index[target])
            else:
                work.pop()
                if work:
                    low[work[-1][0]] = min(low[work[-1][0]], low[node])
                if low[node] == index[node]:
                    component = []
                    while True:
                        member = stack.pop()
                        on_stack.discard(member)
                        component.append(member)
                        if member == node:
                            break
                    out.append(sorted(component))
    return out


def one_cycle(graph: dict[str, dict[str, int]], component: list[str]) -> list[str]:
    """A shortest import cycle through the first module of a strongly connected component."""
    inside = set(component)
    start = component[0]
    previous: dict[str, str] = {}
    frontier = [start]
    while frontier:
        nxt = []
        for node in frontier:
            for target in sorted(graph[node]):
                if target not in inside:
                    continue
                if target == start:
                    path = [node]
                    while path[-1] != start:
                        path.append(previous[path[-1]])
                    return [start, *reversed(path[:-1]), start]
                if target not in previous:
                    previous[target] = node
                    nxt.append(target)
        frontier = nxt
    raise AssertionError(f"{component} holds no cycle")


def cycles(graph: dict[str, dict[str, int]]) -> list[str]:
    """One line per import cycle: `a (line 3) → b (line 12) → a`."""
    lines = []
    for component in strongly_connected(graph):
        if len(component) == 1 and component[0] not in graph[component[0]]:
            continue
        path = one_cycle(graph, component)
        steps = [f"{a} (line {graph[a][b]})" for a, b in zip(path, path[1:])]
        others = sorted(set(component) - set(path))
        lines.append(" → ".join(steps + [path[-1]])
                     + (f"   [also in the tangle: {', '.join(others)}]" if others else ""))
    return lines


# ------------------------------------------------------------------ meshrec itself

def test_meshrec_has_no_import_cycle():
    found = cycles(import_graph(ROOT / "meshrec", "meshrec"))
    for line in found:
        print("import cycle:", line)
    assert not found, "import cycles in meshrec/:\n" + "\n".join(found)


def test_only_its_commands_import_the_training_loop():
    graph = import_graph(ROOT / "meshrec", "meshrec")
    assert LOOP in graph
    allowed = lambda m: any(m == u or (u.endswith("*") and m.startswith(u[:-1]))  # noqa: E731
                            for u in LOOP_USERS)
    users = sorted(f"{m} (line {edges[LOOP]})" for m, edges in graph.items()
                   if LOOP in edges and not allowed(m))
    for user in users:
        print("imports the training loop:", user)
    assert not users, f"only {', '.join(LOOP_USERS)} may import {LOOP}; also: {users}"


# ------------------------------------------------------------------ the checker, by hand

def _package(tmp_path: Path, files: dict[str, str]) -> Path:
    root = tmp_path / "pkg"
    for name, text in {"__init__.py": "", **files}.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    return root


def test_checker_finds_a_cycle_through_a_lazy_import(tmp_path):
    root = _package(tmp_path, {
        "a.py": "from pkg import b\n",
        "b.py": "import os\n\ndef f():\n    from pkg.sub.c import g\n    return g\n",
        "sub/__init__.py": "",
        "sub/c.py": "from .. import a\nfrom ..d import VALUE\n",
        "d.py": "VALUE = 1\n",
        "e.py": "import pkg.d\n",
    })
    graph = import_graph(root, "pkg")
    assert graph["pkg.a"] == {"pkg.b": 1}
    assert graph["pkg.b"] == {"pkg.sub.c": 4}  # the function-level import counts
    assert graph["pkg.sub.c"] == {"pkg.a": 1, "pkg.d": 2}  # relative imports resolved
    assert graph["pkg.e"] == {"pkg.d": 1}
    assert strongly_connected(graph).count(["pkg.a", "pkg.b", "pkg.sub.c"]) == 1
    assert cycles(graph) == ["pkg.a (line 1) → pkg.b (line 4) → pkg.sub.c (line 1) → pkg.a"]
    (root / "d.py").write_text("from pkg.a import x\n")  # a second loop through c: one tangle
    assert cycles(import_graph(root, "pkg")) == [
        "pkg.a (line 1) → pkg.b (line 4) → pkg.sub.c (line 1) → pkg.a"
        "   [also in the tangle: pkg.d]"]


def test_checker_finds_two_modules_importing_each_other_and_passes_a_tree(tmp_path):
    root = _package(tmp_path, {
        "x.py": "def f():\n    import pkg.y\n",
        "y.py": "from pkg.x import f\n",
        "z.py": "from pkg import x, y\n",
    })
    assert cycles(import_graph(root, "pkg")) == ["pkg.x (line 2) → pkg.y (line 1) → pkg.x"]
    (root / "x.py").write_text("def f():\n    return 1\n")
    graph = import_graph(root, "pkg")
    assert cycles(graph) == []
    assert graph["pkg.z"] == {"pkg.x": 1, "pkg.y": 1}
    assert all(len(c) == 1 for c in strongly_connected(graph))


def test_checker_sees_a_package_init_that_imports_its_importer(tmp_path):
    """features/__init__ → features.build → `from features import X` (the package): a cycle."""
    root = _package(tmp_path, {
        "feat/__init__.py": "from pkg.feat.build import make\nNAME = 1\n",
        "feat/build.py": "from pkg.feat import NAME\n\ndef make():\n    return NAME\n",
    })
    assert cycles(import_graph(root, "pkg")) == [
        "pkg.feat (line 1) → pkg.feat.build (line 1) → pkg.feat"]
