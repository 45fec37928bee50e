"""`airflow dags test` of a DAG that uses the provider logs no warning about packages it never uses."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

STARLETTE_WARNING = "install `httpx2` instead"

DAG = """
from __future__ import annotations

import pendulum
from airflow.sdk import dag, task

from airflow_provider_ciexport.operators.activecampaign import ActiveCampaignSegmentExportOperator  # noqa: F401


@dag(schedule=None, start_date=pendulum.datetime(2026, 1, 1), catchup=False)
def ciexport_quiet():
    @task
    def hello() -> int:
        return 1

    hello()


ciexport_quiet()
"""


def _without_httpx2(tmp_path: Path) -> dict[str, str]:
    """The environment of an install without httpx2 (a plain wheel install), whatever this venv has."""
    site = tmp_path / "site"
    site.mkdir()
    (site / "sitecustomize.py").write_text('import sys\nsys.modules["httpx2"] = None\n')
    return {**os.environ, "PYTHONPATH": str(site)}


@pytest.mark.slow
def test_dags_test_logs_no_starlette_test_client_warning(tmp_path: Path, airflow_db: str) -> None:
    env = _without_httpx2(tmp_path)
    # Where Starlette does not warn (before 1.2, or once it drops httpx), there is nothing to check.
    control = subprocess.run(
        [sys.executable, "-W", "always", "-c", "import fastapi.testclient"],
        env=env,
        capture_output=True,
        text=True,
        check=True,
    )
    if STARLETTE_WARNING not in control.stderr:
        pytest.skip("this Starlette's test client does not warn without httpx2")

    dags = tmp_path / "dags"
    dags.mkdir()
    (dags / "ciexport_quiet.py").write_text(textwrap.dedent(DAG))
    result = subprocess.run(
        [str(Path(sys.executable).parent / "airflow"), "dags", "test", "ciexport_quiet"],
        env={**env, "AIRFLOW__CORE__DAGS_FOLDER": str(dags)},
        capture_output=True,
        text=True,
        check=False,
        timeout=240,
    )
    output = result.stdout + result.stderr
    assert result.returncode == 0, output[-3000:]
    assert "state=success" in output, output[-3000:]
    assert STARLETTE_WARNING not in output
