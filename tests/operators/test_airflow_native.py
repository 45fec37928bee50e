"""A real task run (``dag.test()``): no segment rows in Airflow's metadata; link, Asset event, lineage.

The DAG hands the segment from an upstream ``@task`` to the export through ``records``, as a user would.
Afterwards the metadata database must hold nothing of those rows for the export task (rendered fields,
XCom), the task's log must not show them, the extra link and the Asset event's counts must be there,
and the OpenLineage facets must name the upstream task and the list.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from airflow import settings
from airflow.dag_processing.dagbag import DagBag
from sqlalchemy import text

from airflow_provider_ciexport.operators.activecampaign import ActiveCampaignSegmentExportOperator
from airflow_provider_ciexport.operators.constantcontact import ConstantContactSegmentExportOperator
from airflow_provider_ciexport.tools.sandbox import SandboxServer, seed
from tests.support import set_connection

# dag.test() and the task runner write runs, XCom and assets to the metadata database.
pytestmark = [pytest.mark.integration, pytest.mark.usefixtures("airflow_db")]

DAG_ID = "ciexport_native_test"
PEOPLE = [
    {"email": f"native.person{i}@example.com", "first": f"Zebulon{i}", "phone": f"+1415555{i:04d}"}
    for i in range(12)
]
DAG_FILE = f"""
from __future__ import annotations
import pendulum
from airflow.sdk import DAG, Asset, task
from airflow_provider_ciexport.operators.activecampaign import ActiveCampaignSegmentExportOperator

with DAG("{DAG_ID}", schedule=None, start_date=pendulum.datetime(2026, 1, 1, tz="UTC")) as dag:
    # Its return value is stored as its own XCom (that is how records travel); it is not logged.
    @task(show_return_value_in_logs=False)
    def pick_segment():
        return {PEOPLE!r}

    ActiveCampaignSegmentExportOperator(
        task_id="export",
        list_id={seed.AC_LIST_VIP},
        records=pick_segment(),
        field_mapping={{"email": "email", "first_name": "first", "phone": "phone"}},
        outlets=[Asset("ciexport://tests/vip-exported")],
    )
"""


@pytest.fixture
def dag_folder(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    folder = tmp_path / "dags"
    folder.mkdir()
    (folder / "native_dag.py").write_text(DAG_FILE)
    monkeypatch.setenv("AIRFLOW__CORE__DAGS_FOLDER", str(folder))
    monkeypatch.setattr(settings, "DAGS_FOLDER", str(folder))
    return folder


@pytest.fixture
def server() -> Iterator[SandboxServer]:
    with SandboxServer() as sandbox:
        yield sandbox


def _rows(sql: str, **params: Any) -> list[Any]:
    from airflow.utils.session import create_session

    with create_session() as session:
        return list(session.execute(text(sql), params).fetchall())


def test_a_records_export_leaves_no_rows_in_airflows_metadata(
    dag_folder: Path,
    server: SandboxServer,
    monkeypatch: pytest.MonkeyPatch,
    capfd: pytest.CaptureFixture[str],
    caplog: pytest.LogCaptureFixture,
) -> None:
    set_connection(monkeypatch, "activecampaign_default", **server.ac_connection())
    bag = DagBag(dag_folder=str(dag_folder))
    assert bag.import_errors == {}

    run = bag.dags[DAG_ID].test()

    assert run.state == "success"
    # The export happened: the list holds exactly these people.
    listed = {c["email"].lower() for c in server.client.ac_list_contacts(seed.AC_LIST_VIP)}
    assert listed == {p["email"] for p in PEOPLE}

    rendered = _rows(
        "SELECT rendered_fields FROM rendered_task_instance_fields WHERE dag_id = :d AND task_id = 'export'",
        d=DAG_ID,
    )
    assert rendered, "the export task's rendered fields were stored"
    xcoms = _rows(
        "SELECT key, value FROM xcom WHERE dag_id = :d AND task_id = 'export' AND run_id = :r",
        d=DAG_ID,
        r=run.run_id,
    )
    stored = json.dumps([str(row) for row in rendered + xcoms])
    out, err = capfd.readouterr()
    logged = "\n".join([caplog.text, out, err])
    assert "ActiveCampaign export report" in logged  # the task's log was captured
    for person in PEOPLE:
        for value in person.values():
            assert value not in stored, f"{value} is in the metadata database"
            assert value not in logged, f"{value} is in the log"

    # The extra link, as the UI reads it: the XCom Airflow stores when the task ends.
    links = {key: value for key, value in xcoms if key.startswith("_link_")}
    assert json.loads(links["_link_ActiveCampaignListLink"]) == (
        f"{server.url}/_sandbox/ac/lists/{seed.AC_LIST_VIP}/contacts"
    )

    # The Asset event carries the report's counts (and no job ids).
    (extra,) = [
        json.loads(row[0]) if isinstance(row[0], str) else row[0]
        for row in _rows(
            "SELECT e.extra FROM asset_event e JOIN asset a ON a.id = e.asset_id WHERE a.uri = :u",
            u="ciexport://tests/vip-exported",
        )
    ]
    assert (extra["read"], extra["accepted"], extra["rejected"]) == (12, 12, 0)
    assert extra["lists"] == [str(seed.AC_LIST_VIP)] and "jobs" not in extra


def test_records_are_not_a_templated_field() -> None:
    for operator in (ActiveCampaignSegmentExportOperator, ConstantContactSegmentExportOperator):
        assert "records" not in operator.template_fields
        assert {"list_id", "sql", "source_path", "field_mapping", "dry_run"} <= set(operator.template_fields)


def test_lineage_names_the_upstream_task_and_each_list(
    monkeypatch: pytest.MonkeyPatch, server: SandboxServer
) -> None:
    pytest.importorskip("airflow.providers.openlineage")
    from airflow.sdk import DAG, task

    set_connection(monkeypatch, "cc", **server.cc_connection())
    with DAG("lineage_test", schedule=None):

        @task
        def pick_segment() -> list[dict[str, str]]:
            return PEOPLE

        export = ConstantContactSegmentExportOperator(
            task_id="export",
            list_id=[seed.CC_LIST_VIP, seed.CC_LIST_LAPSED],
            records=pick_segment(),
            field_mapping={"email": "email"},
            constantcontact_conn_id="cc",
        )
    assert export.upstream_task_ids == {"pick_segment"}
    assert export.get_openlineage_facets_on_complete(None) is None  # never ran: no lineage
    export.records = PEOPLE  # what the XComArg resolves to at run time

    export.execute(context={})  # type: ignore[arg-type]
    lineage = export.get_openlineage_facets_on_complete(None)

    assert lineage is not None
    assert [(i.namespace, i.name) for i in lineage.inputs] == [
        ("airflow://lineage_test", "task/pick_segment")
    ]
    host = server.url.removeprefix("http://")
    assert [(o.namespace, o.name) for o in lineage.outputs] == [
        (f"constantcontact://{host}", f"list/{seed.CC_LIST_VIP}"),
        (f"constantcontact://{host}", f"list/{seed.CC_LIST_LAPSED}"),
    ]
    assert {o.outputFacets["outputStatistics"].rowCount for o in lineage.outputs} == {12}
    assert export.list_url == f"{server.url}/_sandbox/cc/lists/{seed.CC_LIST_VIP}/contacts"
