"""The package's layers, read from the imports in its source: the data flows schemas -> emitter ->
collector -> sinks, with the read side and the CLI apart, and no module imports itself back."""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "traintape"

LEAVES = {
    "errors",
    "layout",
    "paths",
    "durable",
    "globs",
    "placement",
    "probe",
    "procinfo",
    "security",
}
"""Top-level modules any layer may import (each imports only schemas, errors or other leaves)."""

FORBIDDEN = {
    "schemas": {"emitter", "collector", "sinks", "read", "cli", "checkpoint"} | LEAVES - {"errors"},
    "emitter": {"collector", "sinks", "read", "cli", "checkpoint.load"},
    "collector": {"emitter", "read", "cli", "checkpoint"},
    "sinks": {"emitter", "read", "cli", "checkpoint"},
    "read": {"emitter", "collector", "sinks", "cli", "ui"},
    "checkpoint": {"emitter", "collector", "sinks", "cli"},
    "wandb": {"collector", "sinks", "read", "cli", "checkpoint"},  # W&B's API: a training side
    "integrations": {"collector", "sinks", "read", "cli", "checkpoint.load"},  # training side too
    # The dashboard: a reader of the store, served apart from every writer.
    "ui": {"emitter", "collector", "sinks", "cli", "checkpoint", "wandb", "integrations"},
    **{leaf: {"emitter", "collector", "sinks", "read", "cli", "checkpoint"} for leaf in LEAVES},
}
"""Layer -> the parts of traintape (dotted, below `traintape.`) it must never import, at any
depth of a module. The data flows schemas -> emitter -> collector -> sinks; the read side and the
checkpoint policy stand apart; only the CLI (and `__main__` entry points) import everything."""


def _module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _resolve(module: str, name: str) -> str:
    """`from module import name`: the submodule when there is one, else the module."""
    sub = f"{module}.{name}"
    relative = Path(*sub.split("."))
    if (PACKAGE.parent / relative).with_suffix(".py").exists() or (
        PACKAGE.parent / relative
    ).is_dir():
        return sub
    return module


def _imports(path: Path) -> tuple[set[str], set[str]]:
    """(imported at module level, imported anywhere) traintape modules of one file."""
    tree = ast.parse(path.read_text())
    top: set[str] = set()
    everywhere: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found = {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found = {_resolve(node.module, a.name) for a in node.names}
        else:
            continue
        found = {m for m in found if m == "traintape" or m.startswith("traintape.")}
        everywhere |= found
        if node in tree.body:
            top |= found
    return top, everywhere


def _graph() -> dict[str, tuple[set[str], set[str]]]:
    return {_module_name(p): _imports(p) for p in PACKAGE.rglob("*.py")}


def _layer(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else ""


def _forbidden(module: str, target: str) -> bool:
    inner = target.removeprefix("traintape.")
    return any(
        inner == part or inner.startswith(f"{part}.") for part in FORBIDDEN.get(_layer(module), ())
    )


def test_each_layer_imports_only_what_lies_before_it() -> None:
    """schemas import nothing but the leaf errors module; the emitter never imports the
    collector, the sinks or the read side; the collector and the sinks never import the emitter
    (they never load torch) nor the read side; the read side never imports the writers."""
    bad = [
        f"{module} -> {target}"
        for module, (_, everywhere) in sorted(_graph().items())
        if not module.endswith("__main__")
        for target in sorted(everywhere)
        if _forbidden(module, target)
    ]
    assert bad == []


def test_no_module_level_import_cycle() -> None:
    """No chain of module-level imports leads from a module back to itself."""
    graph = {m: {t for t in top} for m, (top, _) in _graph().items()}
    cycles: list[list[str]] = []
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def visit(module: str) -> None:
        state[module] = 1
        path.append(module)
        for target in sorted(graph.get(module, ())):
            if state.get(target) == 1:
                cycles.append(path[path.index(target) :] + [target])
            elif target in graph and target not in state:
                visit(target)
        path.pop()
        state[module] = 2

    for module in sorted(graph):
        if module not in state:
            visit(module)
    assert cycles == []
