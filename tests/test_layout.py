"""The package layout rules of the foundation: no import circle among modules (counting imports inside
functions too, which hide circles rather than remove them), and inference code imports nothing from
versadiff.train."""

from __future__ import annotations

import ast
from pathlib import Path

SRC = Path(__file__).resolve().parent.parent / "src" / "versadiff"
MODULES = {}
for _p in SRC.rglob("*.py"):
    _parts = _p.relative_to(SRC.parent).with_suffix("").parts
    MODULES[".".join(_parts[:-1] if _parts[-1] == "__init__" else _parts)] = _p


def _owner(name: str) -> str:
    """The module a dotted import name lives in (a name imported from a module belongs to that module)."""
    while name and name not in MODULES:
        name = name.rsplit(".", 1)[0] if "." in name else ""
    return name


def _imports(module: str) -> set[str]:
    path = MODULES[module]
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {_owner(a.name) for a in node.names if a.name.startswith("versadiff")}
        elif isinstance(node, ast.ImportFrom):
            if node.level:  # relative: resolve against this module's package
                pkg = module.split(".") if path.name == "__init__.py" else module.split(".")[:-1]
                base = ".".join(pkg[: len(pkg) - node.level + 1] + ([node.module] if node.module else []))
            elif node.module and node.module.startswith("versadiff"):
                base = node.module
            else:
                continue
            found |= {_owner(f"{base}.{a.name}") for a in node.names}
    # a package re-exporting its own submodules is how packages work, not a circle
    return {m for m in found if m and m != module and not m.startswith(module + ".")}


def test_no_import_circle():
    graph = {m: _imports(m) for m in MODULES}
    # Tarjan's strongly connected components: any component of more than one module is a circle
    index, low, stack, on, circles, counter = {}, {}, [], set(), [], [0]

    def visit(v: str) -> None:
        index[v] = low[v] = counter[0]
        counter[0] += 1
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
                circles.append(sorted(comp))

    for m in sorted(graph):
        if m not in index:
            visit(m)
    assert not circles, f"import circles: {circles}"


def test_inference_imports_nothing_from_train():
    """Everything but the trainer and the CLI (which runs it) loads and samples without versadiff.train."""
    for module in MODULES:
        if module.startswith("versadiff.train") or module == "versadiff.cli":
            continue
        bad = sorted(m for m in _imports(module) if m.startswith("versadiff.train"))
        assert not bad, f"{module} imports {bad}"
