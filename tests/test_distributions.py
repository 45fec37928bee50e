"""The sdist and the wheel carry what a user, a packager and a license review need, and nothing broken.

Both are built from this tree as a release would build them (``uv build``: the sdist, then the wheel
from the sdist), then opened and checked with ``twine check --strict``.
"""

from __future__ import annotations

import subprocess
import sys
import tarfile
import zipfile
from email.parser import Parser
from email.policy import compat32
from pathlib import Path

import pytest

import airflow_provider_ciexport

# The sdist and the pure-Python wheel are built in an isolated environment, whatever Airflow is
# installed: not again in make test-oldest.
pytestmark = pytest.mark.version_independent

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
NAME = "airflow_provider_ciexport"
VERSION = airflow_provider_ciexport.__version__


def _files(folder: str) -> set[str]:
    """The repository's files under ``folder``, as paths relative to the repository."""
    return {
        p.relative_to(ROOT).as_posix()
        for p in (ROOT / folder).rglob("*")
        if p.is_file() and "__pycache__" not in p.parts and p.suffix != ".pyc"
    }


@pytest.fixture(scope="module")
def dist(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("dist")
    result = subprocess.run(
        [str(BIN / "uv"), "build", "--quiet", "--out-dir", str(out), str(ROOT)],
        capture_output=True,
        text=True,
        check=False,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    return out


@pytest.fixture(scope="module")
def wheel(dist: Path) -> zipfile.ZipFile:
    return zipfile.ZipFile(dist / f"{NAME}-{VERSION}-py3-none-any.whl")


@pytest.fixture(scope="module")
def sdist(dist: Path) -> dict[str, bytes]:
    prefix = f"{NAME}-{VERSION}/"
    with tarfile.open(dist / f"{NAME}-{VERSION}.tar.gz") as tar:
        return {
            m.name.removeprefix(prefix): tar.extractfile(m).read()  # type: ignore[union-attr]
            for m in tar.getmembers()
            if m.isfile()
        }


def test_both_pass_twine_check(dist: Path) -> None:
    result = subprocess.run(
        [str(BIN / "twine"), "check", "--strict", *sorted(map(str, dist.glob(f"{NAME}-*")))],
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_the_license_text_is_in_the_repository_and_both_distributions(
    wheel: zipfile.ZipFile, sdist: dict[str, bytes]
) -> None:
    text = (ROOT / "LICENSE").read_bytes()
    assert b"Apache License" in text[:200] and b"Version 2.0, January 2004" in text[:200]
    assert b"END OF TERMS AND CONDITIONS" in text
    assert wheel.read(f"{NAME}-{VERSION}.dist-info/licenses/LICENSE") == text
    assert sdist["LICENSE"] == text


def test_the_wheel_metadata_says_license_status_typing_and_shows_the_changelog(
    wheel: zipfile.ZipFile,
) -> None:
    meta = Parser(policy=compat32).parsestr(wheel.read(f"{NAME}-{VERSION}.dist-info/METADATA").decode())
    assert meta["License-Expression"] == "Apache-2.0"
    assert meta.get_all("License-File") == ["LICENSE"]
    classifiers = meta.get_all("Classifier")
    assert "Development Status :: 3 - Alpha" in classifiers
    assert "Typing :: Typed" in classifiers
    # No public URL exists yet to point a Project-URL at: the changelog follows the README instead.
    body = meta.get_payload()
    assert "# Changelog" in body and "Advisory:" in body


def test_the_wheel_is_the_package_typed_and_nothing_else(wheel: zipfile.ZipFile) -> None:
    names = set(wheel.namelist())
    assert f"{NAME}/py.typed" in names
    modules = {n for n in names if n.endswith(".py")}
    assert modules == {f for f in _files(NAME) if f.endswith(".py")}
    assert not [n for n in names if not (n.startswith((f"{NAME}/", f"{NAME}-{VERSION}.dist-info/")))]
    entry_points = wheel.read(f"{NAME}-{VERSION}.dist-info/entry_points.txt").decode()
    assert f"provider_info = {NAME}.get_provider_info:get_provider_info" in entry_points


def test_the_sdist_has_docs_examples_changelog_and_locks_but_no_partial_tests(
    sdist: dict[str, bytes],
) -> None:
    names = set(sdist)
    for folder in ("docs", "example_dags", NAME):
        missing = _files(folder) - names
        assert not missing, f"not in the sdist: {sorted(missing)}"
    expected = {"README.md", "CHANGELOG.md", "LICENSE", "setup.cfg", "pyproject.toml"}
    expected |= {f for f in _files("constraints") if f.endswith(".txt")}
    assert expected <= names
    # The tests need the repository (conftest, fixtures, make targets): none ship rather than some.
    assert not [n for n in names if n.startswith("tests/") or "__pycache__" in n]
