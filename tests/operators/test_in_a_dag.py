"""The operators as real Airflow tasks (``dag.test()``): templates, a .sql file, Params, the task context."""

from __future__ import annotations

import textwrap
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from airflow import settings
from airflow.dag_processing.dagbag import DagBag
from airflow.models.xcom import XComModel
from airflow.utils.session import create_session
from airflow.utils.state import DagRunState

from airflow_provider_ciexport.hooks.constantcontact import ConstantContactHook
from airflow_provider_ciexport.tools.sandbox import seed
from airflow_provider_ciexport.tools.sandbox.client import SandboxClient
from tests.operators import segment_data as data
from tests.support import posts, set_connection

DAG_ID = "ciexport_templated_export"
DAG_FILE = """
from __future__ import annotations

import pendulum
from airflow.sdk import DAG, Param

from airflow_provider_ciexport.operators.constantcontact import ConstantContactSegmentExportOperator

with DAG(
    "ciexport_templated_export",
    schedule=None,
    start_date=pendulum.datetime(2026, 1, 1, tz="UTC"),
    params={
        "lists": Param(["22222222-2222-4222-8222-222222222222"], type="array"),
        "table": Param("segment", type="string"),
        "dry_run": Param(False, type="boolean"),
    },
):
    ConstantContactSegmentExportOperator(
        task_id="export",
        list_id="{{ params.lists | join(',') }}",
        sql="segment.sql",
        sql_conn_id="segment_db",
        field_mapping={"email": "email", "first_name": "first", "cf:loyalty_tier": "tier"},
        dry_run="{{ params.dry_run }}",
    )
"""


@pytest.fixture
def dag_folder(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, airflow_db: str, cc_conn: str
) -> Iterator[Path]:
    """A dags folder with the DAG, its .sql file and the segment's database; the sandbox connection."""
    folder = tmp_path / "dags"
    folder.mkdir()
    (folder / "templated_export.py").write_text(textwrap.dedent(DAG_FILE))
    (folder / "segment.sql").write_text("SELECT * FROM {{ params.table }} ORDER BY email\n")
    db = data.write_sqlite(tmp_path / "segment.db")
    set_connection(monkeypatch, "segment_db", conn_type="sqlite", host=str(db))
    monkeypatch.setenv("AIRFLOW__CORE__DAGS_FOLDER", str(folder))
    # airflow.settings read the option when Airflow was first imported.
    monkeypatch.setattr(settings, "DAGS_FOLDER", str(folder))
    yield folder


def run_dag(folder: Path, conf: dict[str, Any] | None = None) -> dict[str, Any] | None:
    """Run the DAG once as a real DAG run; return the export task's report (its XCom), if any."""
    bag = DagBag(dag_folder=str(folder))
    assert bag.import_errors == {}
    run = bag.dags[DAG_ID].test(run_conf=conf)
    assert run.state == DagRunState.SUCCESS
    with create_session() as session:
        row = session.execute(
            XComModel.get_many(key="return_value", run_id=run.run_id, dag_ids=DAG_ID, task_ids="export")
            .with_only_columns(XComModel.value)
            .limit(1)
        ).first()
    return None if row is None else XComModel.deserialize_value(row)


def test_templates_params_and_a_sql_file_render_into_the_export(
    dag_folder: Path, sandbox: SandboxClient
) -> None:
    lists = [seed.CC_LIST_NEWSLETTER, seed.CC_LIST_LAPSED]
    report = run_dag(dag_folder, {"lists": lists})

    assert report is not None and report["lists"] == lists and report["dry_run"] is False
    assert report["accepted"] == len(data.EXPECTED)
    for list_id in lists:
        contacts = {c["email"]: c for c in sandbox.cc_list_contacts(list_id)}
        assert set(contacts) == set(data.EXPECTED)
    assert sandbox.cc_list_contacts(seed.CC_LIST_VIP) == []


def test_a_dry_run_from_the_trigger_form_sends_nothing(dag_folder: Path, sandbox: SandboxClient) -> None:
    report = run_dag(dag_folder, {"dry_run": True})

    assert report is not None and report["dry_run"] is True
    assert report["would_submit"] == len(data.EXPECTED) and report["submitted"] == 0
    assert posts(sandbox.stats(), "cc") == []


def test_a_rotated_refresh_token_carries_over_to_the_next_task_run(
    dag_folder: Path, sandbox: SandboxClient, cc_conn: str
) -> None:
    from airflow.models import Variable

    sandbox.configure(cc_rotating_refresh_tokens=True)
    variable = ConstantContactHook(cc_conn).refresh_token_variable
    Variable.delete(variable)

    first = run_dag(dag_folder)
    rotated = Variable.get(variable)
    second = run_dag(dag_folder)  # a new task run: its connection still holds the used-up token

    assert first is not None and second is not None
    assert first["accepted"] == second["accepted"] == len(data.EXPECTED)
    assert rotated != seed.CC_REFRESH_TOKEN
    assert Variable.get(variable) == sandbox.cc_refresh_tokens()[0] != rotated
    Variable.delete(variable)
