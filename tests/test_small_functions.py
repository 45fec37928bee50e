"""Every function in the package is small: cyclomatic complexity at most 15 (radon's grade C) and a
body of at most 60 lines, so that a newcomer can hold each one in mind; no class of the export engine
is over 300 lines."""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

import airflow_provider_ciexport

# The source's shape is the same whichever Airflow and Python run it: not again in make test-oldest.
pytestmark = pytest.mark.version_independent

radon_complexity = pytest.importorskip("radon.complexity")
radon_visitors = pytest.importorskip("radon.visitors")

PACKAGE = Path(airflow_provider_ciexport.__file__).parent
MAX_COMPLEXITY = 15
MAX_BODY_LINES = 60
#: The export engine's classes (export/): each one job a newcomer can read through.
MAX_ENGINE_CLASS_LINES = 300
#: Functions that are data, not logic: the provider's metadata is one literal, as in Airflow's own
#: providers (their ``get_provider_info`` is generated that way).
DATA = {"get_provider_info.py:get_provider_info"}


def _modules() -> list[Path]:
    return sorted(PACKAGE.rglob("*.py"))


def _name(path: Path, function: str) -> str:
    return f"{path.relative_to(PACKAGE)}:{function}"


def _body_lines(node: ast.FunctionDef | ast.AsyncFunctionDef) -> int:
    """Lines from the first statement after the docstring to the end (the signature and docstring are
    not logic)."""
    body = node.body
    if body and isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant) and len(body) > 1:
        body = body[1:]
    return (node.end_lineno or node.lineno) - body[0].lineno + 1


def _functions(blocks: list[Any]) -> Iterator[Any]:
    """radon's functions and methods, with the functions defined inside them (closures)."""
    for block in blocks:
        if isinstance(block, radon_visitors.Function):
            yield block
            yield from _functions(block.closures)


def test_no_function_is_more_complex_than_grade_c() -> None:
    complex_ = []
    for path in _modules():
        for function in _functions(radon_complexity.cc_visit(path.read_text())):
            if function.complexity > MAX_COMPLEXITY:
                complex_.append(f"{_name(path, function.fullname)} ({function.complexity})")
    assert complex_ == []


def test_no_function_is_longer_than_sixty_lines() -> None:
    long_ = []
    for path in _modules():
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                name = _name(path, node.name)
                if name not in DATA and _body_lines(node) > MAX_BODY_LINES:
                    long_.append(f"{name} ({_body_lines(node)} lines)")
    assert long_ == []


def test_no_engine_class_is_longer_than_three_hundred_lines() -> None:
    long_ = []
    for path in sorted((PACKAGE / "export").rglob("*.py")):
        for node in ast.parse(path.read_text()).body:
            if isinstance(node, ast.ClassDef):
                lines = (node.end_lineno or node.lineno) - node.lineno + 1
                if lines > MAX_ENGINE_CLASS_LINES:
                    long_.append(f"{_name(path, node.name)} ({lines} lines)")
    assert long_ == []
