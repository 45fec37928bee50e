"""The outcome log appended to a SQL table (``outcomes_table``), on SQLite and on a real PostgreSQL.

The PostgreSQL cases start a server as :mod:`tests.export.sources.test_postgres` does, and are
skipped where PostgreSQL is not installed.
"""

from __future__ import annotations

import logging
import sqlite3
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from airflow_provider_ciexport.exceptions import ExportConfigurationError
from airflow_provider_ciexport.export.engine import SegmentExporter
from airflow_provider_ciexport.export.outcome_files import OUTCOME_COLUMNS
from airflow_provider_ciexport.export.outcome_tables import outcome_table_hook
from airflow_provider_ciexport.export.outcomes import OutcomeSettings
from airflow_provider_ciexport.export.sources.records import RecordsSegmentSource
from airflow_provider_ciexport.export.state import StateKeys
from tests.export.fakes import FakeDestination, MemoryListDestination
from tests.export.outcome_checks import check_counts, messy
from tests.export.sources.postgres_server import PostgresServer, find_binaries, missing_user, postgres_server
from tests.support import set_connection

KEYS = StateKeys(["the workers' secret, long enough to be a key"], "a test")
MAPPING = {"email": "email", "first_name": "first"}
INTEGERS = {"map_index", "try_number", "row_number", "batch"}


@pytest.fixture(scope="module")
def pg_server() -> Iterator[PostgresServer]:
    """A PostgreSQL server for this module's tests; skipped without the binaries."""
    binaries = find_binaries()
    if binaries is None:
        pytest.skip("PostgreSQL's binaries are not installed (Debian: apt-get install postgresql)")
    reason = missing_user()
    if reason is not None:
        pytest.skip(reason)
    with postgres_server(binaries, database="outcomes") as server:
        server.execute("CREATE SCHEMA marketing")
        yield server


def _sqlite(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> tuple[str, str]:
    return set_connection(monkeypatch, "out_db", conn_type="sqlite", host=str(tmp_path / "o.db")), "outcomes"


def _postgres(monkeypatch: pytest.MonkeyPatch, request: pytest.FixtureRequest) -> tuple[str, str]:
    pytest.importorskip("airflow.providers.postgres", reason="needs apache-airflow-providers-postgres")
    server: PostgresServer = request.getfixturevalue("pg_server")
    table = f"marketing.{request.node.name.split('[')[0][-40:]}"  # one table per test
    return set_connection(monkeypatch, "out_pg", **server.connection()), table


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def database(
    request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> tuple[str, str]:
    """``(conn_id, table)`` on SQLite or PostgreSQL (a schema-qualified name there)."""
    if request.param == "sqlite":
        return _sqlite(monkeypatch, tmp_path)
    return _postgres(monkeypatch, request)


def export(
    conn_id: str, table: str, run_id: str = "r1", destination: Any = None, include_values: bool = False
) -> dict[str, Any]:
    identity = {"dag_id": "d", "task_id": "t", "run_id": run_id, "map_index": -1, "try_number": 1}
    outcomes = OutcomeSettings(
        key_columns=("id",),
        keys=KEYS,
        identity=identity,
        table=table,
        conn_id=conn_id,
        include_values=include_values,
    )
    exporter = SegmentExporter(
        RecordsSegmentSource(messy()),
        destination or MemoryListDestination(refuse=["refused@example.com"]),
        MAPPING,
        outcomes=outcomes,
    )
    return exporter.run().as_dict()


def read_table(conn_id: str, table: str, run_id: str | None = None) -> list[dict[str, str]]:
    """The table's rows as text (empty for none), as the file tests read a CSV log."""
    where = f" WHERE run_id = '{run_id}'" if run_id else ""
    records = outcome_table_hook(conn_id).get_records(
        f"SELECT {', '.join(OUTCOME_COLUMNS)} FROM {table}{where}"
    )
    return [
        {
            name: "" if value is None else str(value)
            for name, value in zip(OUTCOME_COLUMNS, record, strict=True)
        }
        for record in records
    ]


def column_types(conn_id: str, table: str) -> list[tuple[str, str]]:
    hook = outcome_table_hook(conn_id)
    if "." not in table:
        return [(row[1], row[2].lower()) for row in hook.get_records(f"PRAGMA table_info({table})")]
    schema, name = table.split(".")
    return [
        (column, kind.lower())
        for column, kind in hook.get_records(
            "SELECT column_name, data_type FROM information_schema.columns "
            "WHERE table_schema = %s AND table_name = %s ORDER BY ordinal_position",
            parameters=(schema, name),
        )
    ]


def test_the_table_is_created_and_its_counts_are_the_reports(database: tuple[str, str]) -> None:
    conn_id, table = database
    report = export(conn_id, table)
    rows = read_table(conn_id, table)
    check_counts(rows, report, named=True)
    by_id = {row["row_id"]: row for row in rows}
    assert by_id["108"]["status"] == "refused"
    assert by_id["101"]["reason"] == "duplicate_of=1"
    assert by_id["1"]["batch"] == "1" and by_id["1"]["job_id"]
    assert [name for name, _ in column_types(conn_id, table)] == list(OUTCOME_COLUMNS)
    assert {kind for name, kind in column_types(conn_id, table) if name in INTEGERS} == {"bigint"}
    assert {kind for name, kind in column_types(conn_id, table) if name not in INTEGERS} == {"text"}


def test_with_values_the_table_gets_the_email_and_mapped_values_columns(database: tuple[str, str]) -> None:
    conn_id, table = database
    export(conn_id, table, include_values=True)
    assert [name for name, _ in column_types(conn_id, table)] == [*OUTCOME_COLUMNS, "email", "mapped_values"]
    records = outcome_table_hook(conn_id).get_records(f"SELECT row_id, email, mapped_values FROM {table}")
    by_id = {row_id: (email, values) for row_id, email, values in records}
    assert by_id["2"] == ("person.2@example.com", '{"first_name":"P2"}')


def test_a_second_run_appends_its_rows(database: tuple[str, str]) -> None:
    conn_id, table = database
    first = export(conn_id, table, "r1")
    second = export(conn_id, table, "r2", FakeDestination(rejected={2: 1}))
    check_counts(read_table(conn_id, table, "r1"), first, named=True)
    check_counts(read_table(conn_id, table, "r2"), second, named=False)
    assert Counter(row["run_id"] for row in read_table(conn_id, table)) == {
        "r1": len(messy()),
        "r2": len(messy()),
    }


def test_the_task_log_names_only_the_table_and_the_count(
    database: tuple[str, str], caplog: pytest.LogCaptureFixture
) -> None:
    conn_id, table = database
    caplog.set_level(logging.DEBUG)
    export(conn_id, table)
    assert "person" not in caplog.text.lower() and "@" not in caplog.text
    assert f"Outcome log: {len(messy())} rows written to table {table}." in caplog.text


@pytest.mark.parametrize(
    "name",
    [
        "log; DROP TABLE segment",
        'log" (x int); --',
        "a.b.c",
        "1log",
        "",
        "log table",
        "marketing.",
        "x" * 64,
        "lög",
    ],
)
def test_a_table_name_that_is_not_a_plain_identifier_is_refused_before_anything_is_sent(
    name: str, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    conn_id, _ = _sqlite(monkeypatch, tmp_path)
    with pytest.raises(ExportConfigurationError, match="outcomes_table must be a table name"):
        OutcomeSettings(key_columns=("id",), table=name or " ", conn_id=conn_id)
    assert not (tmp_path / "o.db").exists()  # refused before the database was even opened


@pytest.mark.parametrize(
    ("connection", "match"),
    [
        (lambda mp: "", "outcomes_table needs outcomes_conn_id"),
        (lambda mp: "no_such_conn", "'no_such_conn' given as outcomes_conn_id could not be loaded"),
        (
            lambda mp: set_connection(mp, "ac_api", conn_type="activecampaign", host="https://x.api-us1.com"),
            "outcomes_conn_id 'ac_api' has type 'activecampaign', whose hook .* cannot run SQL",
        ),
    ],
    ids=["none", "missing", "not_sql"],
)
def test_a_missing_or_wrong_connection_is_refused_naming_outcomes_conn_id(
    connection: Callable[[pytest.MonkeyPatch], str], match: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    with pytest.raises(ExportConfigurationError, match=match):
        OutcomeSettings(key_columns=("id",), table="outcomes", conn_id=connection(monkeypatch))


def test_a_file_and_a_table_together_are_refused(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    conn_id, table = _sqlite(monkeypatch, tmp_path)
    with pytest.raises(ExportConfigurationError, match="outcomes_path and outcomes_table are both set"):
        OutcomeSettings(f"file://{tmp_path}/log.csv", ("id",), table=table, conn_id=conn_id)


def test_a_reserved_word_is_a_valid_table_name_once_quoted(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    conn_id, _ = _sqlite(monkeypatch, tmp_path)
    report = export(conn_id, "select")
    with sqlite3.connect(tmp_path / "o.db") as conn:
        assert conn.execute('SELECT count(*) FROM "select"').fetchone() == (report["read"],)
