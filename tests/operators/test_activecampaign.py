"""ActiveCampaignSegmentExportOperator end to end against the sandbox: list contents and reports."""

from __future__ import annotations

import csv
import json
import sqlite3
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from airflow_provider_ciexport.exceptions import ExportConfigurationError, ExportIncompleteError
from airflow_provider_ciexport.operators.activecampaign import ActiveCampaignSegmentExportOperator
from airflow_provider_ciexport.tools.sandbox import seed
from airflow_provider_ciexport.tools.sandbox.client import SandboxClient
from tests.operators import segment_data as data
from tests.support import calls, logged_report, posts, set_connection

MAPPING = {
    "email": "email",
    "first_name": "first",
    "last_name": "last",
    "phone": "phone",
    "field:LOYALTY_TIER": "tier",
    "field:3": "city",
}
LISTS = [seed.AC_LIST_VIP, seed.AC_LIST_LAPSED]


def _export(conn_id: str, **kwargs: Any) -> dict[str, Any]:
    params: dict[str, Any] = {
        "task_id": "export",
        "list_id": LISTS,
        "field_mapping": MAPPING,
        "activecampaign_conn_id": conn_id,
    }
    params.update(kwargs)
    return ActiveCampaignSegmentExportOperator(**params).execute(context={})  # type: ignore[arg-type]


def _expected() -> dict[str, dict[str, str]]:
    expected = {email: dict(attrs) for email, attrs in data.EXPECTED.items()}
    expected["carol_d-e=f@example.travel"]["last_name"] = data.LONG  # ActiveCampaign sets no length limit
    return expected


def _assert_lists_hold_the_segment(sandbox: SandboxClient, tags: list[str] | None = None) -> None:
    expected = _expected()
    for list_id in LISTS:
        contacts = {c["email"]: c for c in sandbox.ac_list_contacts(list_id)}
        assert set(contacts) == set(expected), f"list {list_id}"
        for email, attrs in expected.items():
            got = contacts[email]
            for attr in ("first_name", "last_name", "phone"):
                assert got.get(attr) == attrs.get(attr), (email, attr)
            assert got["fields_by_perstag"].get("LOYALTY_TIER") == attrs.get("tier")
            assert got["fields_by_perstag"].get("CITY") == attrs.get("city")
            if tags is not None:
                assert sorted(got["tags"]) == sorted(tags)
    assert sandbox.stats()["counters"].get("ac.blank_values_sent", 0) == 0


def _assert_report(report: dict[str, Any], *, accepted: int = len(data.EXPECTED)) -> None:
    assert report["read"] == data.READ
    assert report["invalid"] == data.INVALID
    assert report["duplicates"] == data.DUPLICATES
    assert report["submitted"] == len(data.EXPECTED)
    assert report["accepted"] == accepted
    assert report["read"] == report["invalid"] + report["duplicates"] + report["submitted"]
    assert report["submitted"] == report["accepted"] + report["rejected"]
    assert report["requests"] > 0
    json.dumps(report)  # XCom-safe


@pytest.mark.scaled_limits
@pytest.mark.parametrize("source", data.SOURCE_KINDS)
def test_every_source_kind_exports_exactly_the_valid_contacts(
    source: str, ac_conn: str, sandbox: SandboxClient, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    report = _export(
        ac_conn, tags=["vip", "spring-2026"], **data.source_kwargs(source, tmp_path, monkeypatch)
    )
    _assert_lists_hold_the_segment(sandbox, tags=["vip", "spring-2026"])
    _assert_report(report)
    assert (
        report["invalid.malformed"] == 2
        and report["invalid.missing"] == 2
        and report["invalid.non_ascii"] == 1
    )
    assert report["batches"] == 1 and len(report["jobs"]) == 1


@pytest.mark.scaled_limits
def test_small_segment_without_tags_uses_contact_sync(ac_conn: str, sandbox: SandboxClient) -> None:
    report = _export(ac_conn, records=data.ROWS)
    _assert_lists_hold_the_segment(sandbox)
    _assert_report(report)
    assert report["jobs"] == [] and report["batches"] == 0
    stats = sandbox.stats()
    assert calls(stats, "ac", "POST /api/3/contact/sync") == len(data.EXPECTED)
    assert calls(stats, "ac", "POST /api/3/import/bulk_import") == 0


def _many(n: int, start: int = 0) -> list[dict[str, Any]]:
    return [
        {"email": f"Person.{i}@Example.com ", "first": f"P{i}", "tier": "gold"}
        for i in range(start, start + n)
    ]


def test_a_few_thousand_contacts_trip_no_limit(ac_conn: str, sandbox: SandboxClient) -> None:
    rows = _many(3000) + _many(200)  # the last 200 repeat the first ones
    report = _export(
        ac_conn,
        records=rows,
        field_mapping={"email": "email", "first_name": "first", "field:LOYALTY_TIER": "tier"},
    )
    assert report["read"] == 3200 and report["duplicates"] == 200 and report["accepted"] == 3000
    assert report["batches"] == 12
    for list_id in LISTS:
        assert len(sandbox.ac_list_contacts(list_id)) == 3000
    stats = sandbox.stats()
    assert stats["rate_limit_rejections_total"] == 0
    assert stats["limit_violations"] == []
    assert stats["imports"]["ac"]["largest_batch"] <= 250
    assert stats["imports"]["ac"]["largest_body_bytes"] < 400_000


@pytest.mark.scaled_limits
def test_batches_respect_the_byte_limit(ac_conn: str, sandbox: SandboxClient) -> None:
    rows = [{"email": f"big{i}@example.com", "first": "F" * 3000} for i in range(300)]
    report = _export(ac_conn, records=rows, field_mapping={"email": "email", "first_name": "first"})
    assert report["accepted"] == 300
    assert report["batches"] >= 3  # 300 contacts of ~3 KB cannot go in two requests under 400,000 bytes
    stats = sandbox.stats()
    assert stats["limit_violations"] == [] and stats["imports"]["ac"]["largest_body_bytes"] < 400_000
    assert len(sandbox.ac_list_contacts(seed.AC_LIST_VIP)) == 300


@pytest.mark.scaled_limits
def test_rejected_contacts_are_counted(ac_conn: str, sandbox: SandboxClient) -> None:
    sandbox.configure(ac_exclusion_list=["person.3@example.com", "person.7@example.com"])
    report = _export(ac_conn, records=_many(20), field_mapping={"email": "email"})
    assert report["accepted"] == 18 and report["rejected"] == 2
    assert len(sandbox.ac_list_contacts(seed.AC_LIST_VIP)) == 18


@pytest.mark.scaled_limits
def test_the_outcome_log_names_each_row_and_the_contacts_activecampaign_refused(
    ac_conn: str, sandbox: SandboxClient, tmp_path: Path
) -> None:
    sandbox.configure(ac_exclusion_list=["ann.lee@example.com"])
    records = [{**row, "customer_id": f"c{i}"} for i, row in enumerate(data.ROWS, 1)]
    path = tmp_path / "outcomes.csv"
    report = _export(
        ac_conn, records=records, tags=["vip"], outcomes_path=f"file://{path}", outcome_key="customer_id"
    )
    with path.open(newline="") as f:
        rows = {row["row_id"]: row for row in csv.DictReader(f)}
    assert len(rows) == report["read"] == data.READ
    statuses = Counter(row["status"] for row in rows.values())
    assert statuses == {
        "accepted": report["accepted"],
        "refused": report["rejected"],
        "invalid": report["invalid"],
        "duplicate": report["duplicates"],
    }
    assert rows["c1"]["status"] == "refused" and rows["c1"]["job_id"] in report["jobs"]
    # c3 repeats c2's address: its reason points to c2's row (row numbers count from 1).
    assert rows["c3"]["reason"] == f"duplicate_of={rows['c2']['row_number']}" == "duplicate_of=2"
    assert rows["c5"]["reason"] == "invalid.malformed"
    assert "@" not in path.read_text()  # keys and codes, never an address
    assert "outcomes" not in json.dumps(report)  # nothing of the log in the XCom


@pytest.mark.scaled_limits
def test_the_outcome_log_can_be_appended_to_a_sql_table(
    ac_conn: str, sandbox: SandboxClient, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    sandbox.configure(ac_exclusion_list=["ann.lee@example.com"])
    set_connection(monkeypatch, "outcomes_db", conn_type="sqlite", host=str(tmp_path / "o.db"))
    records = [{**row, "customer_id": f"c{i}"} for i, row in enumerate(data.ROWS, 1)]
    report = _export(
        ac_conn,
        records=records,
        tags=["vip"],
        outcomes_table="ciexport_outcomes",
        outcomes_conn_id="outcomes_db",
        outcome_key="customer_id",
    )
    with sqlite3.connect(tmp_path / "o.db") as db:
        statuses = dict(
            db.execute("SELECT status, count(*) FROM ciexport_outcomes GROUP BY status").fetchall()
        )
        refused = db.execute("SELECT row_id FROM ciexport_outcomes WHERE status = 'refused'").fetchall()
    assert statuses == {
        "accepted": report["accepted"],
        "refused": report["rejected"],
        "invalid": report["invalid"],
        "duplicate": report["duplicates"],
    }
    assert refused == [("c1",)]


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"outcomes_table": "marketing.log; DROP TABLE x", "outcomes_conn_id": "db"}, "must be a table name"),
        ({"outcomes_table": "log"}, "outcomes_table needs outcomes_conn_id"),
        (
            {"outcomes_table": "log", "outcomes_conn_id": "db", "outcomes_path": "s3://b/log.csv"},
            "outcomes_path and outcomes_table are both set",
        ),
    ],
    ids=["bad_name", "no_conn", "both"],
)
def test_an_outcomes_table_it_cannot_write_fails_when_the_dag_is_parsed(
    kwargs: dict[str, str], message: str
) -> None:
    with pytest.raises(ExportConfigurationError, match=message):
        ActiveCampaignSegmentExportOperator(task_id="export", list_id=LISTS, field_mapping=MAPPING, **kwargs)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"outcomes_table": "{{ params.table }}", "outcomes_conn_id": "db"}, "must be a table name"),
        (
            {"outcomes_table": "log", "outcomes_conn_id": "no_such_db"},
            "'no_such_db' given as outcomes_conn_id",
        ),
        (
            {
                "outcomes_table": "log",
                "outcomes_conn_id": "{{ params.conn }}",
                "outcomes_path": "{{ params.p }}",
            },
            "outcomes_path and outcomes_table are both set",
        ),
    ],
    ids=["bad_rendered_name", "missing_conn", "both_rendered"],
)
def test_an_outcomes_table_it_cannot_write_is_refused_before_anything_is_sent(
    ac_conn: str, sandbox: SandboxClient, kwargs: dict[str, str], message: str
) -> None:
    with pytest.raises(ExportConfigurationError, match=message):
        _export(ac_conn, records=_many(20), field_mapping={"email": "email"}, outcome_key="first", **kwargs)
    _assert_nothing_sent(sandbox)


@pytest.mark.scaled_limits
@pytest.mark.parametrize("kind", ["job_failed", "job_interrupted"])
def test_failed_jobs_are_sent_again(ac_conn: str, sandbox: SandboxClient, kind: str) -> None:
    sandbox.add_fault(api="ac", kind=kind, times=1)
    report = _export(ac_conn, records=_many(600), field_mapping={"email": "email"})
    assert report["accepted"] == 600 and report["resubmitted_batches"] == 1
    assert len(report["jobs"]) == report["batches"] + 1
    assert len(sandbox.ac_list_contacts(seed.AC_LIST_VIP)) == 600


@pytest.mark.scaled_limits
def test_jobs_that_keep_failing_fail_the_task_saying_what_was_exported(
    ac_conn: str, sandbox: SandboxClient
) -> None:
    sandbox.add_fault(api="ac", kind="job_failed", times=3)
    with pytest.raises(
        ExportIncompleteError, match=r"200 contacts in 1 batch\(es\) were NOT exported"
    ) as err:
        _export(ac_conn, records=_many(200), field_mapping={"email": "email"})
    assert "0 of 200 contacts" in str(err.value)
    assert sandbox.ac_list_contacts(seed.AC_LIST_VIP) == []


def test_dry_run_sends_nothing_but_reports_what_would_go(
    ac_conn: str, sandbox: SandboxClient, caplog: pytest.LogCaptureFixture
) -> None:
    rows = [*_many(600), {"email": "not an address"}]
    with caplog.at_level("INFO", logger="airflow_provider_ciexport"):
        report = _export(ac_conn, records=rows, dry_run=True, field_mapping={"email": "email"})
    assert report["would_submit"] == 600 and report["would_batches"] == 3 and report["accepted"] is None
    assert report["submitted"] == 0 and report["batches"] == 0 and report["jobs"] == []
    figures = logged_report([r.getMessage() for r in caplog.records])
    assert (figures["dry_run"], figures["would_submit"], figures["invalid.malformed"]) == ("True", "600", "1")
    assert calls(sandbox.stats(), "ac", "POST /api/3/import/bulk_import") == 0


def test_without_waiting_jobs_are_started_but_not_followed(ac_conn: str, sandbox: SandboxClient) -> None:
    report = _export(ac_conn, records=_many(600), wait_for_completion=False, field_mapping={"email": "email"})
    assert report["submitted"] == 600 and len(report["jobs"]) == 3 and report["accepted"] is None
    assert calls(sandbox.stats(), "ac", "GET /api/3/import/info") == 0


def _assert_nothing_sent(sandbox: SandboxClient) -> None:
    assert posts(sandbox.stats(), "ac") == []


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"list_id": 0}, "not a positive whole number"),
        ({"list_id": -3}, "not a positive whole number"),
        ({"list_id": "vip"}, "not a positive whole number"),
        ({"list_id": [2, 99]}, "no list with id 99"),
        ({"list_id": []}, "list_id is empty"),
        ({"field_mapping": {}}, "email"),
        ({"field_mapping": {"first_name": "first"}}, "email"),
        ({"field_mapping": {"email": "e_mail"}}, "e_mail"),
        ({"field_mapping": {"email": "email", "nickname": "first"}}, "nickname"),
        ({"field_mapping": {"email": "email", "field:SHOE_SIZE": "first"}}, "SHOE_SIZE"),
        ({"max_profiles": 5}, "max_profiles"),
        ({"records": None}, "source"),
        ({"sql": "SELECT 1", "records": None}, "sql_conn_id"),
    ],
)
def test_bad_input_is_a_clear_error_before_anything_is_sent(
    ac_conn: str, sandbox: SandboxClient, kwargs: dict[str, Any], message: str
) -> None:
    params: dict[str, Any] = {"records": data.ROWS, **kwargs}
    with pytest.raises(ExportConfigurationError, match=message):
        _export(ac_conn, **params)
    _assert_nothing_sent(sandbox)


def test_missing_column_names_the_columns_that_exist(ac_conn: str, sandbox: SandboxClient) -> None:
    with pytest.raises(ExportConfigurationError) as err:
        _export(ac_conn, records=data.ROWS, field_mapping={"email": "mail"})
    assert "mail" in str(err.value) and "first" in str(err.value)
    _assert_nothing_sent(sandbox)


def test_templated_fields_are_declared() -> None:
    assert set(ActiveCampaignSegmentExportOperator.template_fields) >= {
        "list_id",
        "sql",
        "source_path",
        "field_mapping",
        "tags",
        "outcomes_path",
        "outcomes_table",
    }
    assert ".sql" in ActiveCampaignSegmentExportOperator.template_ext


def test_a_semicolon_csv_from_a_european_spreadsheet_is_exported(
    ac_conn: str, sandbox: SandboxClient, tmp_path: Path
) -> None:
    # Excel in a European locale: ';' between fields, ',' in numbers, a BOM, a quoted ';'.
    path = tmp_path / "segment.csv"
    lines = [
        "E-mail;First Name;Last Name",
        'anna@example.com;Anna;"Rossi; Bianchi"',
        "lukas@example.com;Lukas;Müller",
    ]
    path.write_bytes("\r\n".join(lines).encode("utf-8-sig") + b"\r\n")
    mapping = {"email": "E-mail", "first_name": "First Name", "last_name": "Last Name"}
    report = _export(ac_conn, source_path=str(path), field_mapping=mapping, list_id=seed.AC_LIST_VIP)
    assert report["accepted"] == 2
    contacts = {c["email"]: c for c in sandbox.ac_list_contacts(seed.AC_LIST_VIP)}
    assert contacts["anna@example.com"]["last_name"] == "Rossi; Bianchi"
    assert contacts["lukas@example.com"]["last_name"] == "Müller"
    # The same file with a cp1252 encoding, named in csv_options.
    path.write_bytes("\r\n".join(lines).encode("cp1252") + b"\r\n")
    sandbox.reset()
    report = _export(
        ac_conn,
        source_path=str(path),
        field_mapping=mapping,
        list_id=seed.AC_LIST_VIP,
        csv_options={"delimiter": ";", "encoding": "cp1252"},
    )
    assert {c["email"]: c["last_name"] for c in sandbox.ac_list_contacts(seed.AC_LIST_VIP)} == {
        "anna@example.com": "Rossi; Bianchi",
        "lukas@example.com": "Müller",
    }


@pytest.mark.parametrize("interval", [1.0, 45.0])
def test_the_throttling_line_follows_the_progress_interval(
    interval: float, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The hook's one throttling line an interval comes as often as the export's progress lines."""
    from airflow_provider_ciexport.hooks.retry import THROTTLE_LOG_INTERVAL_S
    from airflow_provider_ciexport.operators import base
    from tests.support import set_connection

    conn = set_connection(
        monkeypatch, "ac_interval", conn_type="activecampaign", host="https://acct.api-us1.com", password="k"
    )
    seen: list[float] = []

    class Exporter:
        """Stands in for the export: notes the interval its destination's hook was given."""

        report = None

        def __init__(self, source: Any, destination: Any, *args: Any, **kwargs: Any) -> None:
            seen.append(destination.hook.throttle_summary.interval_s)

        def run(self) -> Any:
            raise ExportIncompleteError("stopped here: only the wiring is tested")

    monkeypatch.setattr(base, "SegmentExporter", Exporter)
    operator = ActiveCampaignSegmentExportOperator(
        task_id="export",
        list_id=2,
        records=[{"email": "a@example.com"}],
        field_mapping={"email": "email"},
        activecampaign_conn_id=conn,
        progress_interval=interval,
    )
    assert operator.hook.throttle_summary.interval_s == THROTTLE_LOG_INTERVAL_S
    with pytest.raises(ExportIncompleteError):
        operator.execute(context={})  # type: ignore[arg-type]
    assert seen == [interval]


def test_an_outcomes_path_it_cannot_write_fails_when_the_dag_is_parsed() -> None:
    base = {"task_id": "export", "list_id": LISTS, "field_mapping": MAPPING}
    with pytest.raises(ExportConfigurationError, match=r"outcomes_path must end with \.csv"):
        ActiveCampaignSegmentExportOperator(**base, outcomes_path="s3://bucket/log.txt")
    with pytest.raises(ExportConfigurationError, match="outcome_key must be a source column"):
        ActiveCampaignSegmentExportOperator(**base, outcomes_path="s3://b/log.csv", outcome_key=[""])
    # A templated path is checked once rendered.
    ActiveCampaignSegmentExportOperator(**base, outcomes_path="s3://b/{{ run_id }}.jsonl")
    # "yes" would read as true and write addresses nobody asked for: refused, with what it does.
    with pytest.raises(ExportConfigurationError, match="outcome_include_values must be True or False"):
        ActiveCampaignSegmentExportOperator(**base, outcomes_path="s3://b/l.csv", outcome_include_values="no")  # type: ignore[arg-type]
