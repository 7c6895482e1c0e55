"""Sizes a reader can hold in their head: no module over 400 lines, no function over 60 lines,
except declarative ones (the argument parser, the SQL text of the views)."""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "traintape"
MAX_MODULE_LINES = 400
MAX_FUNCTION_LINES = 60
DECLARATIVE = {("cli/main.py", "build_parser"), ("read/store.py", "view_sql")}
"""(module, function) pairs that are tables written as code: long, and read top to bottom."""


def _modules() -> list[Path]:
    return sorted(PACKAGE.rglob("*.py"))


def test_no_module_over_the_limit() -> None:
    """Every module of the package has at most MAX_MODULE_LINES lines."""
    long = {
        str(p.relative_to(PACKAGE)): n
        for p in _modules()
        if (n := len(p.read_text().splitlines())) > MAX_MODULE_LINES
    }
    assert long == {}


def test_no_function_over_the_limit() -> None:
    """Every function or method has at most MAX_FUNCTION_LINES lines, the declarative ones
    aside."""
    long = {}
    for path in _modules():
        name = str(path.relative_to(PACKAGE))
        for node in ast.walk(ast.parse(path.read_text())):
            if not isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                continue
            lines = node.end_lineno - node.lineno + 1 if node.end_lineno else 0
            if lines > MAX_FUNCTION_LINES and (name, node.name) not in DECLARATIVE:
                long[f"{name}:{node.name}"] = lines
    assert long == {}


def test_declared_exceptions_still_exist() -> None:
    """The allowance for a declarative function goes when the function does."""
    for module, function in DECLARATIVE:
        tree = ast.parse((PACKAGE / module).read_text())
        assert any(isinstance(n, ast.FunctionDef) and n.name == function for n in ast.walk(tree)), (
            f"{module}:{function}"
        )
