"""The package modules a logged model needs: those its entry point imports, directly or not (lazy imports
included), so a served model carries its own code and nothing of the CLI, the benchmark or the demo."""
from __future__ import annotations

import ast
from pathlib import Path

PACKAGE_DIR = Path(__file__).resolve().parent


def imported_modules(entry: str, package_dir: Path = PACKAGE_DIR) -> set[str]:
    """`entry` ('pyfunc_model') and every module of the package it reaches through `from .x import` /
    `from pneumo_ml.x import` / `from . import x`, as module names ('serving', 'predictor', ...)."""
    seen: set[str] = set()
    todo = [entry]
    while todo:
        name = todo.pop()
        path = package_dir / f"{name}.py"
        if name in seen or not path.is_file():
            continue
        seen.add(name)
        todo += _package_imports(ast.parse(path.read_text(encoding="utf-8")))
    return seen


def _package_imports(tree: ast.AST) -> list[str]:
    found = []
    for node in ast.walk(tree):
        if not isinstance(node, ast.ImportFrom):
            continue
        module = node.module or ""
        if node.level == 1 or module.split(".")[0] == PACKAGE_DIR.name:
            inner = module.split(".")[1:] if node.level == 0 else module.split(".")
            found += inner[:1] if inner and inner[0] else [alias.name for alias in node.names]
    return found
