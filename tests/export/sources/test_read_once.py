"""A segment is read once: one query, one pass over a file; max_profiles still stops before sending."""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from airflow_provider_ciexport.exceptions import ExportConfigurationError, ExportIncompleteError
from airflow_provider_ciexport.export.engine import ExportSettings, SegmentExporter
from airflow_provider_ciexport.export.sources.factory import make_source
from airflow_provider_ciexport.export.sources.files import FileSegmentSource
from airflow_provider_ciexport.export.sources.sql import SqlSegmentSource
from airflow_provider_ciexport.export.spool import RowSpool
from tests.export.fakes import FakeDestination
from tests.support import set_connection

MAPPING = {"email": "email", "first_name": "first_name"}


@pytest.fixture
def profiles_db(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    """1,000 profiles in SQLite behind the Airflow connection ``profiles_db``."""
    path = tmp_path / "profiles.db"
    conn = sqlite3.connect(path)
    conn.execute("CREATE TABLE segment (id INTEGER, email TEXT, first_name TEXT)")
    conn.executemany(
        "INSERT INTO segment VALUES (?, ?, ?)", ((i, f"user{i}@example.com", f"Name{i}") for i in range(1000))
    )
    conn.commit()
    conn.close()
    return set_connection(monkeypatch, "profiles_db", conn_type="sqlite", host=str(path))


def traced(source: SqlSegmentSource) -> list[str]:
    """Record every statement the source runs on its database."""
    statements: list[str] = []
    hook = source.get_db_hook()
    get_conn = hook.get_conn

    def tracing_conn() -> Any:
        conn = get_conn()
        conn.set_trace_callback(statements.append)
        return conn

    hook.get_conn = tracing_conn  # type: ignore[method-assign]
    return statements


@pytest.mark.parametrize("max_profiles", [1000, None])
def test_a_sql_segment_is_queried_once(profiles_db: str, max_profiles: int | None) -> None:
    source = make_source(sql="SELECT email, first_name FROM segment ORDER BY id", sql_conn_id=profiles_db)
    assert isinstance(source, SqlSegmentSource)
    statements = traced(source)
    destination = FakeDestination(batch_contacts=100)

    report = SegmentExporter(source, destination, MAPPING, ExportSettings(max_profiles=max_profiles)).run()

    assert statements == ["SELECT email, first_name FROM segment ORDER BY id"]
    assert (report.read, report.submitted, report.accepted) == (1000, 1000, 1000)
    assert sum(batch.contacts for batch in destination.submitted) == 1000


def test_every_contact_of_a_spooled_sql_segment_is_sent_with_its_own_values(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Blank values are one shared object in every chunk (the empty string): the spool must give each
    # chunk back as it was read, not only the first one.
    path = tmp_path / "blanks.db"
    conn = sqlite3.connect(path)
    conn.execute("CREATE TABLE segment (id INTEGER, email TEXT, first_name TEXT)")
    conn.executemany(
        "INSERT INTO segment VALUES (?, ?, ?)",
        ((i, f"user{i}@example.com", "" if i % 3 == 0 else f"Name{i}") for i in range(1000)),
    )
    conn.commit()
    conn.close()
    conn_id = set_connection(monkeypatch, "blanks_db", conn_type="sqlite", host=str(path))
    source = make_source(
        sql="SELECT email, first_name FROM segment ORDER BY id", sql_conn_id=conn_id, chunk_size=100
    )
    destination = FakeDestination(batch_contacts=100)

    SegmentExporter(source, destination, MAPPING, ExportSettings(max_profiles=1000)).run()

    sent = destination.contacts_sent()
    assert sent == [
        {"email": f"user{i}@example.com", **({"first_name": f"Name{i}"} if i % 3 else {})}
        for i in range(1000)
    ]


def test_a_sql_segment_over_max_profiles_sends_nothing_and_stops_reading(profiles_db: str) -> None:
    source = make_source(
        sql="SELECT email, first_name FROM segment ORDER BY id", sql_conn_id=profiles_db, chunk_size=100
    )
    assert isinstance(source, SqlSegmentSource)
    statements = traced(source)
    destination = FakeDestination(batch_contacts=100)

    with pytest.raises(ExportConfigurationError, match=r"more than max_profiles=250 rows.*Nothing was sent"):
        SegmentExporter(source, destination, MAPPING, ExportSettings(max_profiles=250)).run()

    assert destination.submitted == []
    assert statements == ["SELECT email, first_name FROM segment ORDER BY id"]


@pytest.mark.parametrize(("name", "content"), [("s.csv", "csv"), ("s.jsonl", "jsonl"), ("s.csv.gz", "csv")])
def test_a_file_segment_is_opened_once(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, name: str, content: str
) -> None:
    import gzip

    rows = [{"email": f"user{i}@example.com", "first_name": f"N{i}"} for i in range(300)]
    if content == "csv":
        text = "email,first_name\n" + "".join(f"{r['email']},{r['first_name']}\n" for r in rows)
    else:
        text = "".join(json.dumps(r) + "\n" for r in rows)
    data = text.encode()
    (tmp_path / name).write_bytes(gzip.compress(data) if name.endswith(".gz") else data)
    opened: list[str] = []
    open_binary = FileSegmentSource._open_binary

    def counting(self: FileSegmentSource) -> Any:
        opened.append(self.path)
        return open_binary(self)

    monkeypatch.setattr(FileSegmentSource, "_open_binary", counting)
    destination = FakeDestination(batch_contacts=100)

    report = SegmentExporter(
        make_source(source_path=str(tmp_path / name), chunk_size=50), destination, MAPPING
    ).run()

    assert len(opened) == 1
    assert (report.read, report.accepted) == (300, 300)


def test_a_csv_over_max_profiles_fails_before_anything_is_sent(tmp_path: Path) -> None:
    path = tmp_path / "s.csv"
    path.write_text("email\n" + "".join(f"u{i}@example.com\n" for i in range(101)))
    destination = FakeDestination(batch_contacts=100)

    with pytest.raises(ExportConfigurationError, match="more than max_profiles=100"):
        SegmentExporter(
            make_source(source_path=str(path)), destination, {"email": "email"}, ExportSettings(100)
        ).run()

    assert destination.submitted == []


def test_records_over_max_profiles_are_refused_with_their_count() -> None:
    records = [{"email": f"u{i}@example.com"} for i in range(11)]
    destination = FakeDestination(batch_contacts=100)

    with pytest.raises(ExportConfigurationError, match="has 11 rows, more than max_profiles=10"):
        SegmentExporter(
            make_source(records=records), destination, {"email": "email"}, ExportSettings(10)
        ).run()

    assert destination.submitted == []


def test_a_stop_while_counting_sends_nothing(tmp_path: Path) -> None:
    path = tmp_path / "s.csv"
    path.write_text("email\n" + "".join(f"u{i}@example.com\n" for i in range(500)))
    destination = FakeDestination(batch_contacts=100)
    exporter = SegmentExporter(
        make_source(source_path=str(path), chunk_size=10), destination, {"email": "email"}
    )
    exporter.stop()

    with pytest.raises(ExportIncompleteError, match=r"stopped while reading the segment\. Nothing was sent"):
        exporter.run()

    assert destination.submitted == []


def test_the_spool_gives_back_exactly_what_it_was_given() -> None:
    chunks: list[list[tuple[Any, ...]]] = [[(i, f"v{i}", None, 1.5) for i in range(j, j + 7)] for j in (0, 7)]

    def source() -> Iterator[list[tuple[Any, ...]]]:
        yield from chunks

    with RowSpool() as spool:
        assert spool.fill(source()) == 14
        assert list(spool) == chunks
        assert list(spool) == chunks  # replayable
