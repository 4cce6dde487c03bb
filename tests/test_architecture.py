"""The import graph points down: no cycles, and the low layers never import the high ones."""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parent.parent / "braintumor_tf"
# Layer of each top-level part; a module may import its own layer or any lower one.
LAYERS = {
    "log": 0, "import_hooks": 0, "writes": 0, "config": 0, "faults": 0, "machine": 0,
    "custom_objects": 2, "overlays": 1,
    "data": 1, "models": 1, "training": 1, "plots": 1, "spec": 1,
    "evaluation": 2, "export": 2, "inference": 2, "serving": 2,
    "tasks": 3,
    "commands": 4,
    "cli": 5, "train": 5, "__main__": 5, "__init__": 5, "api": 5, "demo": 5,
}
# Within layer 1 these must stay apart (DESIGN.md): data and models never import each other.
FORBIDDEN = {("data", "models"), ("models", "data"), ("data", "training"), ("models", "training")}


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports_of(path: Path) -> set[str]:
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module)
            found.update(f"{node.module}.{alias.name}" for alias in node.names)
        elif isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
    return {name for name in found if name.startswith("braintumor_tf.")}


def graph() -> dict[str, set[str]]:
    modules = {module_name(p): p for p in PACKAGE.rglob("*.py")}
    return {name: {i for i in imports_of(path) if i in modules and i != name}
            for name, path in modules.items()}


def part(module: str) -> str:
    return module.split(".")[1] if "." in module else "__init__"


def test_every_part_has_a_layer():
    assert {part(m) for m in graph()} <= set(LAYERS)


def test_imports_only_point_down():
    wrong = [(m, i) for m, targets in graph().items() for i in targets
             if LAYERS[part(i)] > LAYERS[part(m)] or (part(m), part(i)) in FORBIDDEN]
    assert wrong == []


def test_no_import_cycles():
    edges = graph()
    state: dict[str, int] = {}
    cycles = []

    def visit(node, stack):
        state[node] = 1
        for target in sorted(edges[node]):
            if state.get(target) == 1:
                cycles.append(stack[stack.index(target):] + [target])
            elif target not in state:
                visit(target, stack + [target])
        state[node] = 2

    for node in sorted(edges):
        if node not in state:
            visit(node, [node])
    assert cycles == []
