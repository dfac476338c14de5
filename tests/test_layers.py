"""The import rule of docs/architecture.md, read from the code itself (ast), so it stays true.

Layers, lowest first: relay.settings, relay.logs (what every command shares) < relay.protocol <
relay.client, relay.server < relay.agent < relay.host <
relay.control < the command line, embedding API and settings docs at the top (relay.cli,
relay.embedded, relay.docs) <
loadtest. A module may import its own layer or any below it, never one above; client and
server share a layer but never import each other. No two modules import each other, directly
or through others (every import counts: inside functions and under TYPE_CHECKING too).
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("relay", "loadtest")

LAYERS: tuple[tuple[str, ...], ...] = (
    ("relay.settings", "relay.logs"),
    ("relay.protocol",),
    ("relay.client", "relay.server"),
    ("relay.agent",),
    ("relay.host",),
    ("relay.control",),
    ("relay.cli", "relay.embedded", "relay.docs"),
    ("loadtest",),
)
BASE = ("relay",)  # the root package itself (its version string): importable from anywhere


def _modules() -> dict[str, Path]:
    found: dict[str, Path] = {}
    for package in PACKAGES:
        for path in sorted((ROOT / package).rglob("*.py")):
            parts = list(path.relative_to(ROOT).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts.pop()
            found[".".join(parts)] = path
    return found


MODULES = _modules()


def _resolve(name: str) -> str | None:
    """The longest known module that `name` (a module or a name inside one) lives in."""
    while name:
        if name in MODULES:
            return name
        name = name.rpartition(".")[0]
    return None


def _imports(module: str, path: Path) -> Iterator[tuple[str, int]]:
    """(imported module of ours, line) for every import statement in the file."""
    tree = ast.parse(path.read_text(), str(path))
    is_package = path.name == "__init__.py"
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                target = _resolve(alias.name)
                if target is not None:
                    yield target, node.lineno
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = module.split(".")
                if not is_package:
                    anchor = anchor[:-1]
                anchor = anchor[: len(anchor) - (node.level - 1)]
                base = ".".join([*anchor, base] if base else anchor)
            for alias in node.names:
                target = _resolve(f"{base}.{alias.name}") if alias.name != "*" else _resolve(base)
                if target is not None:
                    yield target, node.lineno


GRAPH: dict[str, set[str]] = {}
LINES: dict[tuple[str, str], int] = {}
for _module, _path in MODULES.items():
    GRAPH[_module] = set()
    for _target, _line in _imports(_module, _path):
        if _target != _module:
            GRAPH[_module].add(_target)
            LINES.setdefault((_module, _target), _line)


def layer_of(module: str) -> tuple[int, str] | None:
    """(layer index, the package that places it there); None for the root package."""
    if module in BASE:
        return None
    for index, prefixes in enumerate(LAYERS):
        for prefix in prefixes:
            if module == prefix or module.startswith(prefix + "."):
                return index, prefix
    raise AssertionError(f"{module} is in no layer: add it to LAYERS in tests/test_layers.py")


def test_every_module_has_a_layer() -> None:
    for module in MODULES:
        layer_of(module)


def test_imports_only_run_downward() -> None:
    wrong: list[str] = []
    for module, targets in GRAPH.items():
        mine = layer_of(module)
        for target in targets:
            theirs = layer_of(target)
            if mine is None or theirs is None:
                if mine is None and theirs is not None:
                    wrong.append(f"{module} (the root package) imports {target}")
                continue
            upward = theirs[0] > mine[0]
            sideways = theirs[0] == mine[0] and theirs[1] != mine[1]
            if upward or sideways:
                line = LINES[(module, target)]
                wrong.append(f"{MODULES[module].relative_to(ROOT)}:{line}: {module} imports {target}")
    assert not wrong, "imports against the layering:\n" + "\n".join(sorted(wrong))


def _cycles() -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan's algorithm)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []
    counter = 0

    def visit(node: str) -> None:
        nonlocal counter
        index[node] = low[node] = counter
        counter += 1
        stack.append(node)
        on_stack.add(node)
        for nxt in sorted(GRAPH.get(node, ())):
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in on_stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            component: list[str] = []
            while True:
                top = stack.pop()
                on_stack.discard(top)
                component.append(top)
                if top == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for module in sorted(GRAPH):
        if module not in index:
            visit(module)
    return found


def test_no_import_cycles() -> None:
    cycles = _cycles()
    assert not cycles, "modules that import each other (directly or through others):\n" + "\n".join(
        " <-> ".join(c) for c in cycles
    )


def test_the_checker_sees_an_upward_import(tmp_path: Path) -> None:
    """The rule is not vacuous: the resolver finds a known downward import, and an upward one
    planted in a parsed file would be reported."""
    assert "relay.protocol.keys" in GRAPH["relay.server.room"] or any(
        t.startswith("relay.protocol") for t in GRAPH["relay.server.room"]
    )
    planted = tmp_path / "planted.py"
    planted.write_text("from relay.control.app import ControlPlane\n")
    targets = [t for t, _ in _imports("relay.protocol.planted", planted)]
    assert targets == ["relay.control.app"]
    assert layer_of(targets[0])[0] > layer_of("relay.protocol.planted")[0]  # type: ignore[index]
