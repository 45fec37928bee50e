"""OpenLineage of an export: inputs from the segment, one output per list with the report's counts."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import pytest

from airflow_provider_ciexport.export.sources.factory import make_source
from airflow_provider_ciexport.lineage import (
    export_lineage,
    file_dataset_name,
    lineage_or_none,
    segment_inputs,
)
from tests.support import set_connection

pytest.importorskip("airflow.providers.openlineage")

REPORT = {"read": 120, "invalid": 5, "duplicates": 5, "submitted": 110, "accepted": 108, "rejected": 2}


def test_each_list_is_an_output_with_the_accepted_contacts_as_its_row_count() -> None:
    lineage = export_lineage(
        inputs=[("file", "/data/vip.csv")],
        namespace="activecampaign://youraccount.api-us1.com",
        list_ids=["2", "3"],
        report=REPORT,
    )

    assert [(o.namespace, o.name) for o in lineage.outputs] == [
        ("activecampaign://youraccount.api-us1.com", "list/2"),
        ("activecampaign://youraccount.api-us1.com", "list/3"),
    ]
    assert {o.outputFacets["outputStatistics"].rowCount for o in lineage.outputs} == {108}
    (source,) = lineage.inputs
    assert (source.namespace, source.name) == ("file", "/data/vip.csv")
    assert source.inputFacets["inputStatistics"].rowCount == 120


def test_a_dry_run_claims_no_rows_written() -> None:
    lineage = export_lineage(
        inputs=[],
        namespace="constantcontact://api.cc.email",
        list_ids=["22222222-2222-4222-8222-222222222222"],
        report={"read": 10, "submitted": 0, "accepted": 0, "dry_run": True},
    )
    (output,) = lineage.outputs
    assert output.name == "list/22222222-2222-4222-8222-222222222222"
    assert "outputStatistics" not in output.outputFacets


def test_an_export_not_waited_for_counts_what_it_sent() -> None:
    lineage = export_lineage(
        inputs=[], namespace="x://y", list_ids=["1"], report={"read": 3, "submitted": 3, "accepted": None}
    )
    assert lineage.outputs[0].outputFacets["outputStatistics"].rowCount == 3


@pytest.mark.parametrize(
    ("path", "expected"),
    [
        ("s3://bucket/segments/vip.parquet", ("s3://bucket", "segments/vip.parquet")),
        ("gs://user:secret@bucket/vip.csv", ("gs://bucket", "vip.csv")),
        ("file:///data/vip.csv", ("file", "/data/vip.csv")),
        ("/data/vip.csv", ("file", "/data/vip.csv")),
    ],
)
def test_file_datasets_follow_openlineage_naming_without_credentials(
    path: str, expected: tuple[str, str]
) -> None:
    assert file_dataset_name(path) == expected


def test_a_sql_segment_names_the_tables_it_reads(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    db = str(tmp_path / "profiles.db")
    set_connection(monkeypatch, "profiles_db", conn_type="sqlite", host=db)
    source = make_source(
        sql="SELECT p.email FROM segment_vip p JOIN main.consent c ON c.id = p.id", sql_conn_id="profiles_db"
    )

    assert sorted(segment_inputs(source)) == [
        (f"sqlite://{db}", "main.consent"),
        (f"sqlite://{db}", "segment_vip"),
    ]


def test_a_sql_segment_uses_common_sql_lineage_where_the_hook_has_it(monkeypatch: pytest.MonkeyPatch) -> None:
    from airflow.providers.common.sql.hooks.sql import DbApiHook
    from airflow.providers.openlineage.sqlparser import DatabaseInfo

    class WarehouseHook(DbApiHook):
        conn_name_attr = "warehouse_conn_id"

        def get_openlineage_database_info(self, connection: Any) -> DatabaseInfo:
            return DatabaseInfo(scheme="postgres", authority="db.example.com:5432", database="analytics")

        def get_openlineage_database_dialect(self, connection: Any) -> str:
            return "postgres"

        def get_openlineage_default_schema(self) -> str:
            return "public"

        def get_conn(self) -> Any:
            raise AssertionError("lineage must not connect to the database")

    set_connection(monkeypatch, "warehouse", conn_type="postgres", host="db.example.com", port=5432)
    source = make_source(sql="SELECT email FROM segments.vip", sql_conn_id="warehouse")
    hook = WarehouseHook(warehouse_conn_id="warehouse")
    monkeypatch.setattr(type(source), "get_db_hook", lambda self: hook)

    assert segment_inputs(source) == [("postgres://db.example.com:5432", "analytics.segments.vip")]


def test_records_from_an_upstream_task_name_that_task() -> None:
    source = make_source(records=[{"email": "a@example.com"}])
    assert segment_inputs(source, [("segments", "pick_vips")]) == [("airflow://segments", "task/pick_vips")]


def test_without_the_openlineage_provider_there_is_simply_no_lineage(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "airflow.providers.openlineage.extractors", None)
    assert (
        lineage_or_none(export_lineage, inputs=[], namespace="x://y", list_ids=["1"], report=REPORT) is None
    )


def test_a_failing_lineage_builder_never_fails_the_task(caplog: pytest.LogCaptureFixture) -> None:
    def broken() -> None:
        raise RuntimeError("boom")

    assert lineage_or_none(broken) is None
    assert "Could not build the OpenLineage lineage" in caplog.text


def test_full_task_info_carries_no_row_of_a_literal_records_list() -> None:
    # [openlineage] include_full_task_info writes every attribute of the operator into the event.
    from airflow.providers.openlineage.utils.utils import TaskInfoComplete
    from openlineage.client.serde import Serde

    from airflow_provider_ciexport.operators.activecampaign import ActiveCampaignSegmentExportOperator

    rows = [{"email": "zebulon@example.com", "first_name": "Zebulon"}]
    op = ActiveCampaignSegmentExportOperator(
        task_id="export", list_id=2, records=rows, field_mapping={"email": "email"}
    )
    assert op.records is rows
    assert "zebulon" not in repr(vars(op)).lower()  # nor in what Airflow keeps of the arguments
    text = Serde.to_json(TaskInfoComplete(op))
    assert "task_id" in text and "export" in text
    assert "zebulon" not in text.lower()
