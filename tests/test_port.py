"""The Emitter's helpers reach a run only through its port (traintape.emitter.port), read from
the source: no private state of the Emitter used across modules, no helper importing the
Emitter's module, and `log()`'s public signature free of its hot path's bindings."""

from __future__ import annotations

import ast
import inspect
from pathlib import Path

from traintape.emitter import Emitter

EMITTER = Path(__file__).resolve().parents[1] / "traintape" / "emitter"


def _private_names_of_the_emitter() -> set[str]:
    """`_name`s the Emitter defines: its private methods and the attributes it sets on self."""
    tree = ast.parse((EMITTER / "emitter.py").read_text())
    cls = next(n for n in tree.body if isinstance(n, ast.ClassDef) and n.name == "Emitter")
    names = set()
    for node in ast.walk(cls):
        if isinstance(node, ast.FunctionDef):
            names.add(node.name)
        elif (
            isinstance(node, ast.Attribute)
            and isinstance(node.value, ast.Name)
            and node.value.id == "self"
            and isinstance(node.ctx, ast.Store)
        ):
            names.add(node.attr)
    return {n for n in names if n.startswith("_") and not n.startswith("__")}


def _other_modules() -> list[Path]:
    """Every module of the package but the Emitter's own: its helpers, and the layers built on
    it (traintape.wandb, the framework integrations)."""
    return [p for p in sorted(EMITTER.parent.rglob("*.py")) if p != EMITTER / "emitter.py"]


def test_no_module_touches_private_state_of_the_emitter() -> None:
    """The checkpoint writer, the gradient watcher, visibility, signals and the package's
    excepthook use none of the Emitter's private attributes (`_emit`, `_report`, `_step`, ...)."""
    private = _private_names_of_the_emitter()
    assert {"_emit", "_report", "_step", "_deferred"} <= private  # the check checks
    used = []
    for path in _other_modules():
        for node in ast.walk(ast.parse(path.read_text())):
            on_self = isinstance(node, ast.Attribute) and (
                isinstance(node.value, ast.Name) and node.value.id == "self"
            )
            if isinstance(node, ast.Attribute) and node.attr in private and not on_self:
                used.append(f"{path.relative_to(EMITTER.parent)}:{node.lineno} .{node.attr}")
    assert used == []


def test_no_helper_imports_the_emitter_module() -> None:
    """Only the package's own entry point imports `traintape.emitter.emitter`: a helper that
    did would make an import cycle with the Emitter that makes it."""
    importers = []
    for path in _other_modules():
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module == "traintape.emitter.emitter":
                importers.append(str(path.relative_to(EMITTER.parent)))
    assert importers == ["emitter/__init__.py"]


def test_spool_moves_are_made_by_the_spooler_alone() -> None:
    """Spooling, unspooling and replaying batches are written once, in spooler.py."""
    moves = {"unspool", "replay_step", "spooling_bytes"}
    callers = set()
    for path in sorted(EMITTER.rglob("*.py")):
        if path.name in ("spooler.py", "transport.py"):  # the one user, and the bookkeeping
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Attribute) and node.attr in moves:
                callers.add(f"{path.relative_to(EMITTER.parent)}.{node.attr}")
    assert callers == set()


def test_log_signature_is_only_its_public_parameters() -> None:
    """`log(metrics, step=None)`: the hot path's bindings are not parameters a caller sees."""
    assert list(inspect.signature(Emitter.log).parameters) == ["self", "metrics", "step"]
