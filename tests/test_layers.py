"""The package's layers, as the contributor page draws them: no import goes up.

    operators (+ links, lineage, asset_events, metrics, get_provider_info)
        -> destinations (one adapter per vendor)
            -> hooks (the API clients)        export (the engine)
                -> core (rate limiting, the account's share, contact schema) and exceptions

The engine knows vendors only through ``export.destination.Destination``; the tools (sandbox,
authorization command, demo) may use anything, and nothing else may import them.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

import airflow_provider_ciexport

PACKAGE = Path(airflow_provider_ciexport.__file__).parent
NAME = "airflow_provider_ciexport"

OPERATOR_LAYER = {"operators", "links", "lineage", "asset_events", "metrics", "get_provider_info"}
CORE = {"core", "exceptions"}
#: What each layer may import, by the first part of the module's name inside the package.
ALLOWED: dict[str, set[str]] = {
    "operators": OPERATOR_LAYER | {"destinations", "export", "hooks"} | CORE,
    "destinations": {"destinations", "hooks", "export"} | CORE,
    "hooks": {"hooks"} | CORE,
    "export": {"export"} | CORE,
    "core": CORE,
    "exceptions": set(),
}


def layer_of(part: str) -> str:
    return "operators" if part in OPERATOR_LAYER else part


def package_imports(path: Path) -> set[str]:
    """The package's modules that ``path`` imports, at any depth (imports inside functions count)."""
    tree = ast.parse(path.read_text(encoding="utf-8"), str(path))
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names if alias.name.startswith(NAME + "."))
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            if node.module == NAME:
                found.update(f"{NAME}.{alias.name}" for alias in node.names if alias.name != "__version__")
            elif node.module.startswith(NAME + "."):
                found.add(node.module)
        elif isinstance(node, ast.ImportFrom) and node.level:
            raise AssertionError(f"{path}: use absolute imports (a relative import hides its layer)")
    return found


def runtime_modules() -> list[Path]:
    return sorted(p for p in PACKAGE.rglob("*.py") if p.relative_to(PACKAGE).parts[0] != "tools")


@pytest.mark.parametrize("path", runtime_modules(), ids=lambda p: str(p.relative_to(PACKAGE)))
def test_no_import_goes_up_a_layer(path: Path) -> None:
    own = path.relative_to(PACKAGE).with_suffix("").parts
    if own == ("__init__",):
        assert package_imports(path) == set()
        return
    layer = layer_of(own[0])
    assert layer in ALLOWED, f"{own[0]} is in no layer: add it to the contributor page's diagram and here"
    wrong = {
        module
        for module in package_imports(path)
        if layer_of(module.split(".")[1]) not in ALLOWED[layer] and module.split(".")[1] != own[0]
    }
    assert not wrong, f"{'/'.join(own)} ({layer}) imports {sorted(wrong)}"


def test_the_engine_knows_no_vendor_and_the_clients_no_engine() -> None:
    # The two rules the diagram exists for, spelled out (the table above implies them).
    for path in runtime_modules():
        parts = path.relative_to(PACKAGE).parts
        imports = package_imports(path)
        if parts[0] == "export":
            assert not {m for m in imports if m.split(".")[1] in {"hooks", "destinations"}}, path
        if parts[0] == "hooks":
            assert not {m for m in imports if m.split(".")[1] in {"export", "destinations"}}, path


def test_what_a_task_imports_pulls_in_no_tool() -> None:
    # What the operators and hooks import, in a fresh interpreter: none of the tools, nor the
    # sandbox's web stack.
    code = (
        "import sys\n"
        "import airflow_provider_ciexport.operators.activecampaign\n"
        "import airflow_provider_ciexport.operators.constantcontact\n"
        "import airflow_provider_ciexport.get_provider_info\n"
        "print('\\n'.join(sorted(sys.modules)))\n"
    )
    loaded = subprocess.run(
        [sys.executable, "-c", code], check=True, capture_output=True, text=True
    ).stdout.split()
    pulled = [m for m in loaded if m.startswith(f"{NAME}.tools") or m.split(".")[0] in {"fastapi", "uvicorn"}]
    assert pulled == []
