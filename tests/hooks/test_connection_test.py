"""A connection "Test" through Airflow's own API server endpoint, as the UI does it, never breaks the connection.

Airflow's API server tests a transient copy of the connection under a random id. With an app whose
refresh tokens rotate, the test uses up the connection's token; the successor must land where the
real connection's tasks read it, and a task run on the real connection afterwards must still work.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from airflow_provider_ciexport.hooks.constantcontact import rotated_token_variable
from airflow_provider_ciexport.tools.sandbox.client import SandboxClient
from airflow_provider_ciexport.tools.sandbox.seed import CC_LIST_VIP, SEED
from airflow_provider_ciexport.tools.sandbox.server import SandboxServer
from tests.support import set_connection

pytestmark = [
    pytest.mark.integration,
    # Airflow's own Connection.test_connection() still calls ProvidersManager.hooks (Airflow 3.3.2).
    pytest.mark.filterwarnings("ignore:ProvidersManager.hooks is deprecated"),
]

CONN_ID = "cc_rotating"

TASK_DAG = """
from __future__ import annotations
import pendulum
from airflow.sdk import DAG
from airflow_provider_ciexport.operators.constantcontact import ConstantContactSegmentExportOperator

with DAG("ciexport_after_connection_test", schedule=None, start_date=pendulum.datetime(2026, 1, 1, tz="UTC")) as dag:
    ConstantContactSegmentExportOperator(
        task_id="export",
        list_id="{list_id}",
        records=[{{"email": "after.test@example.com"}}, {{"email": "second@example.com"}}],
        field_mapping={{"email": "email"}},
        constantcontact_conn_id="{conn_id}",
    )

if __name__ == "__main__":
    dag.test()
"""


@pytest.fixture
def api(monkeypatch: pytest.MonkeyPatch) -> Iterator[Any]:
    """Airflow's REST API app in this process, with connection tests enabled and no login needed."""
    from airflow.api_fastapi.app import create_app
    from fastapi.testclient import TestClient

    monkeypatch.setenv("AIRFLOW__CORE__TEST_CONNECTION", "Enabled")
    monkeypatch.setenv("AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_ALL_ADMINS", "True")
    monkeypatch.setenv("AIRFLOW__API_AUTH__JWT_SECRET", "test-" * 16)
    with TestClient(create_app("core")) as client:
        yield client


def _ui_test_request(api: Any, fields: dict[str, Any]) -> dict[str, Any]:
    """What the UI's "Test" button sends: the form, secrets masked as the edit form shows them."""
    extra = {**fields["extra"], "refresh_token": "***"}
    body = {
        "connection_id": CONN_ID,
        "conn_type": "constantcontact",
        "login": fields["login"],
        "password": "***",
        "extra": json.dumps(extra),
    }
    response = api.post("/api/v2/connections/test", json=body)
    assert response.status_code == 200, response.text
    return dict(response.json())


@pytest.fixture
def rotating(sandbox: SandboxClient, airflow_db: str) -> Iterator[SandboxClient]:
    from airflow.models import Variable

    sandbox.configure(cc_rotating_refresh_tokens=True)
    yield sandbox
    for key in [v.key for v in _variables()]:
        if "refresh_token" in key:
            Variable.delete(key)


def _variables() -> list[Any]:
    from airflow.models import Variable
    from airflow.utils.session import create_session

    with create_session() as session:
        rows = session.query(Variable).all()
        session.expunge_all()
        return rows


def _store(where: str, fields: dict[str, Any], monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    from airflow.models import Connection
    from airflow.utils.session import create_session

    if where == "environment":
        set_connection(monkeypatch, CONN_ID, **fields)
        yield
        return
    with create_session() as session:
        session.add(
            Connection(
                conn_id=CONN_ID,
                conn_type=fields["conn_type"],
                login=fields["login"],
                password=fields["password"],
                extra=json.dumps(fields["extra"]),
            )
        )
    yield
    with create_session() as session:
        session.query(Connection).filter(Connection.conn_id == CONN_ID).delete()


def _run_task(tmp_path: Path, sandbox_server: SandboxServer, where: str) -> subprocess.CompletedProcess[str]:
    """A real task run (its own process, Variables through the execution API) on the real connection."""
    dags = tmp_path / "dags"
    dags.mkdir()
    dag_file = dags / "after_test.py"
    dag_file.write_text(textwrap.dedent(TASK_DAG.format(list_id=CC_LIST_VIP, conn_id=CONN_ID)))
    env = {**os.environ, "AIRFLOW__CORE__DAGS_FOLDER": str(dags)}
    if where != "environment":
        env.pop(f"AIRFLOW_CONN_{CONN_ID.upper()}", None)
    # Fixed arguments: this interpreter and a DAG file written above.
    return subprocess.run(
        [sys.executable, str(dag_file)], env=env, capture_output=True, text=True, timeout=240, check=False
    )


@pytest.mark.slow
@pytest.mark.parametrize("where", ["metadata database", "environment"])
def test_testing_a_rotating_connection_leaves_it_working_for_its_tasks(
    where: str,
    api: Any,
    rotating: SandboxClient,
    sandbox_server: SandboxServer,
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
) -> None:
    fields = sandbox_server.cc_connection()
    stored = _store(where, fields, monkeypatch)
    next(stored)
    try:
        answer = _ui_test_request(api, fields)
        assert answer == {"status": True, "message": "Connected to Constant Contact."}
        # The test used the connection's own token up: the server now only honours its successor ...
        assert rotating.cc_refresh_tokens() != [SEED.cc_refresh_token]
        # ... which the API server process stored where the real connection's tasks look.
        key = rotated_token_variable(
            fields["extra"]["oauth_url"], fields["login"], fields["extra"]["refresh_token"]
        )
        assert {v.key: v.val for v in _variables()}.get(key) == rotating.cc_refresh_tokens()[0]

        # A second test (another random id) still works, and so does a task on the real connection.
        assert _ui_test_request(api, fields)["status"] is True
        run = _run_task(tmp_path, sandbox_server, where)
        assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
        emails = {c["email"] for c in rotating.cc_list_contacts(CC_LIST_VIP)}
        assert emails == {"after.test@example.com", "second@example.com"}
    finally:
        next(stored, None)


def test_a_refused_token_is_reported_for_this_connection_with_advice_that_applies(
    api: Any, rotating: SandboxClient, sandbox_server: SandboxServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    fields = sandbox_server.cc_connection(refresh_token="revoked-long-ago")
    stored = _store("environment", fields, monkeypatch)
    next(stored)
    answer = _ui_test_request(api, fields)
    assert answer["status"] is False
    message = answer["message"]
    assert "this connection" in message and "invalid_grant" in message
    assert "constantcontact_auth" in message and "Refresh token" in message
    # Nothing about the temporary id Airflow tested under, nor a Variable to delete.
    assert "'" + CONN_ID + "'" not in message and "Variable" not in message and "`" not in message
