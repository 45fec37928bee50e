"""Hostile segment files fail small, in flat memory: only the mapped columns are held, the number of
columns or keys is capped, and a chunk is bounded by bytes as well as rows (issue 30)."""

from __future__ import annotations

import gzip
import json
from pathlib import Path
from typing import Any

import pytest

from airflow_provider_ciexport.exceptions import ExportConfigurationError, SegmentSourceError
from airflow_provider_ciexport.export.engine import SegmentExporter
from airflow_provider_ciexport.export.sources import csv_file, json_lines, parquet
from airflow_provider_ciexport.export.sources.factory import make_source
from airflow_provider_ciexport.export.sources.files import DEFAULT_MAX_COLUMNS
from tests.export.fakes import FakeDestination

MAPPING = {"email": "email", "first_name": "first"}


def gz(path: Path, text: str) -> str:
    path.write_bytes(gzip.compress(text.encode()))
    return str(path)


def chunks(path: str, wanted: list[str] | None = None, **options: Any) -> tuple[list[str], list[list[Any]]]:
    with make_source(source_path=path, **options).read(wanted) as rows:
        return rows.columns, list(rows)


# -- a cap on the columns or keys -------------------------------------------------------------------


def test_a_csv_header_of_a_million_commas_fails_naming_the_line_and_the_limit(tmp_path: Path) -> None:
    # 14 KB of gzip: every short row would be padded to a million columns.
    path = gz(tmp_path / "wide.csv.gz", "," * 1_000_000 + "\n" + "a@example.com\n" * 3)
    with pytest.raises(SegmentSourceError) as err:
        chunks(path, list(MAPPING.values()))
    message = str(err.value)
    assert "Line 1 (the header) of the CSV file wide.csv.gz" in message
    assert f"more than {DEFAULT_MAX_COLUMNS:,} columns (max_columns)" in message
    assert "raise the operator's max_columns" in message


def test_a_csv_data_row_over_the_cap_fails_naming_its_line(tmp_path: Path) -> None:
    path = gz(tmp_path / "s.csv.gz", "email,first\na@example.com,Ann\n" + "x," * 50 + "\n")
    with pytest.raises(
        SegmentSourceError, match=r"Line 3 of the CSV file s\.csv\.gz has more than 20 columns"
    ):
        chunks(path, max_columns=20)


def test_a_json_object_over_the_cap_fails_naming_its_line(tmp_path: Path) -> None:
    wide = json.dumps({f"k{i}": 0 for i in range(30)})
    path = gz(tmp_path / "s.jsonl.gz", '{"email": "a@example.com"}\n' + wide + "\n")
    with pytest.raises(
        SegmentSourceError, match=r"Line 2 of the JSON Lines file s\.jsonl\.gz has more than 20 keys"
    ):
        chunks(path, ["email"], max_columns=20)


def test_the_union_of_json_keys_is_capped_too(tmp_path: Path) -> None:
    # Each object is under the cap; together the first rows have 3 x 15 different keys.
    lines = [
        json.dumps({"email": f"p{n}@example.com", **{f"k{n}_{i}": 0 for i in range(15)}}) for n in range(3)
    ]
    path = gz(tmp_path / "s.jsonl.gz", "\n".join(lines) + "\n")
    with pytest.raises(SegmentSourceError, match=r"Line 2 \(with the lines before it\) .* more than 20 keys"):
        chunks(path, ["email"], max_columns=20)


def test_a_parquet_schema_over_the_cap_fails(tmp_path: Path) -> None:
    pa = pytest.importorskip("pyarrow")
    pq = pytest.importorskip("pyarrow.parquet")
    path = tmp_path / "s.parquet"
    pq.write_table(pa.table({f"c{i}": [1] for i in range(30)}), path)
    with pytest.raises(
        SegmentSourceError, match=r"The schema of the Parquet file s\.parquet has more than 20"
    ):
        chunks(str(path), max_columns=20)


def test_max_columns_must_be_a_positive_whole_number() -> None:
    for bad in (0, -1, 1.5, True, "10"):
        with pytest.raises(ExportConfigurationError, match="max_columns must be a positive whole number"):
            make_source(source_path="s.csv", max_columns=bad)  # type: ignore[arg-type]


# -- only the mapped columns are held ---------------------------------------------------------------


def test_csv_rows_keep_only_the_mapped_columns_however_wide_the_header(tmp_path: Path) -> None:
    header = "email,first," + ",".join(f"c{i}" for i in range(5000))
    path = gz(tmp_path / "s.csv.gz", header + "\n" + "a@example.com,Ann\n" * 300 + "b@example.com\n")
    columns, read = chunks(path, ["email", "First "])
    assert columns == ["email", "first"]
    rows = [row for chunk in read for row in chunk]
    assert len(rows) == 301 and {len(row) for row in rows} == {2}
    assert rows[0] == ("a@example.com", "Ann") and rows[-1] == ("b@example.com", None)


def test_json_objects_keep_only_the_mapped_keys(tmp_path: Path) -> None:
    lines = [
        json.dumps({"email": f"p{n}@example.com", "first": "Ann", **{f"k{i}": n for i in range(500)}})
        for n in range(300)
    ]
    path = gz(tmp_path / "s.jsonl.gz", "\n".join(lines) + "\n")
    with make_source(source_path=path).read(["email", "first"]) as rows:
        assert rows.columns == ["email", "first"]
        read = [row for chunk in rows for row in chunk]
    assert len(read) == 300 and {len(row) for row in read} == {2}


def test_parquet_reads_only_the_mapped_columns(tmp_path: Path) -> None:
    pa = pytest.importorskip("pyarrow")
    pq = pytest.importorskip("pyarrow.parquet")
    path = tmp_path / "s.parquet"
    pq.write_table(pa.table({"email": ["a@example.com"], "first": ["Ann"], "secret": ["x"]}), path)
    columns, read = chunks(str(path), ["email", "first"])
    assert columns == ["email", "first"] and read == [[("a@example.com", "Ann")]]


def test_an_export_of_a_wide_csv_holds_only_the_mapped_columns(tmp_path: Path) -> None:
    header = "email,first," + ",".join(f"c{i}" for i in range(3000))
    path = gz(tmp_path / "s.csv.gz", header + "\n" + "".join(f"p{i}@example.com,P{i}\n" for i in range(50)))
    source = make_source(source_path=path)
    held: list[int] = []
    read = source.read

    def spy(wanted: Any = None) -> Any:
        rows = read(wanted)
        inner = iter(rows)
        rows._chunks = (held.extend(map(len, chunk)) or chunk for chunk in inner)  # type: ignore[assignment]
        return rows

    source.read = spy  # type: ignore[method-assign]
    report = SegmentExporter(source, FakeDestination(batch_contacts=100), MAPPING).run()
    assert report.accepted == 50
    assert set(held) == {2}


# -- a chunk is bounded by bytes as well as rows ----------------------------------------------------


@pytest.mark.parametrize("name", ["s.csv.gz", "s.jsonl.gz"])
def test_a_chunk_ends_at_the_byte_budget(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, name: str) -> None:
    # The module that reads the budget: each file source imports CHUNK_BYTES by name.
    monkeypatch.setattr(csv_file if name.endswith(".csv.gz") else json_lines, "CHUNK_BYTES", 10_000)
    long = "x" * 990
    if name.endswith(".csv.gz"):
        text = "email,note\n" + "".join(f"p{i}@example.com,{long}\n" for i in range(200))
    else:
        text = "".join(json.dumps({"email": f"p{i}@example.com", "note": long}) + "\n" for i in range(200))
    columns, read = chunks(gz(tmp_path / name, text), ["email", "note"], chunk_size=5000)
    assert columns == ["email", "note"]
    assert sum(map(len, read)) == 200
    # About 1 KB a row: a chunk holds about 10 rows, never the 200 that chunk_size allows.
    assert max(map(len, read)) <= 11
    assert all(sum(len(row[1]) for row in chunk) <= 10_000 + 1000 for chunk in read)


def test_parquet_chunks_end_at_the_byte_budget(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    pa = pytest.importorskip("pyarrow")
    pq = pytest.importorskip("pyarrow.parquet")
    monkeypatch.setattr(parquet, "CHUNK_BYTES", 10_000)
    path = tmp_path / "s.parquet"
    emails = [f"p{i}@example.com" for i in range(200)]
    pq.write_table(pa.table({"email": emails, "note": ["x" * 990] * 200}), path)
    _, read = chunks(str(path), ["email", "note"], chunk_size=5000)
    assert sum(map(len, read)) == 200
    assert max(map(len, read)) <= 11


# -- a Parquet row group too large to decode is refused from its metadata ----------------------------


def _write_parquet(path: Path, values: list[str], **options: Any) -> None:
    pa = pytest.importorskip("pyarrow")
    pq = pytest.importorskip("pyarrow.parquet")
    table = pa.table({"email": values, "first": ["Ann"] * len(values)})
    pq.write_table(table, path, row_group_size=len(values), **options)


def _no_decoding(monkeypatch: pytest.MonkeyPatch) -> None:
    pq = pytest.importorskip("pyarrow.parquet")

    def decoded(*args: Any, **kwargs: Any) -> Any:
        raise AssertionError("the file was decoded")

    for name in ("iter_batches", "read", "read_row_group", "read_row_groups"):
        monkeypatch.setattr(pq.ParquetFile, name, decoded)


def test_a_parquet_row_group_of_large_repeated_values_is_refused_before_decoding(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The hostile file of issue 30 (zstd, no dictionary, one row group of a large value repeated) at a
    # 16th of the scale, with max_line_length scaled alike: a row group may then hold 16 MiB.
    path = tmp_path / "big.parquet"
    _write_parquet(path, ["x" * 64_000] * 300, compression="zstd", use_dictionary=False)
    assert path.stat().st_size < 100_000
    _no_decoding(monkeypatch)
    with pytest.raises(SegmentSourceError) as err:
        chunks(str(path), list(MAPPING.values()), max_line_length=65_536)
    message = str(err.value)
    assert "Row group 0 of the Parquet file big.parquet" in message
    assert "16,777,216 bytes a row group" in message
    assert "row_group_size" in message and "max_line_length" in message
    assert "xxxx" not in message and "Ann" not in message


def test_a_parquet_row_group_of_rows_over_max_line_length_is_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "wide.parquet"
    _write_parquet(path, ["x" * 100_000] * 5, compression="zstd", use_dictionary=False)
    _no_decoding(monkeypatch)
    with pytest.raises(SegmentSourceError, match=r"Row group 0 .* 65,536 bytes a row \(max_line_length\)"):
        chunks(str(path), list(MAPPING.values()), max_line_length=65_536)


def test_only_the_mapped_columns_count_toward_the_row_group_limit(tmp_path: Path) -> None:
    path = tmp_path / "s.parquet"
    _write_parquet(path, ["x" * 64_000] * 300, compression="zstd", use_dictionary=False)
    columns, read = chunks(str(path), ["first"], max_line_length=65_536)
    assert columns == ["first"] and sum(map(len, read)) == 300


def test_a_parquet_row_group_under_the_limits_is_read_in_small_batches(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    pq = pytest.importorskip("pyarrow.parquet")
    path = tmp_path / "s.parquet"
    _write_parquet(path, [f"{i:05d}" + "x" * 59_995 for i in range(200)], use_dictionary=False)
    sizes: list[int] = []
    iter_batches = pq.ParquetFile.iter_batches

    def spy(self: Any, *args: Any, **kwargs: Any) -> Any:
        sizes.append(kwargs["batch_size"])
        return iter_batches(self, *args, **kwargs)

    monkeypatch.setattr(pq.ParquetFile, "iter_batches", spy)
    monkeypatch.setattr(parquet, "CHUNK_BYTES", 1_000_000)
    _, read = chunks(str(path), list(MAPPING.values()), max_line_length=65_536)
    assert [row[0][:5] for chunk in read for row in chunk] == [f"{i:05d}" for i in range(200)]
    assert sizes == [16]  # about CHUNK_BYTES of these 60 KB rows a batch, not 1,024 rows


# -- nested Parquet columns: dictionary-encoded values repeated in lists and structs ------------------


def _nested(kind: str, value: str, rows: int, repeat: int = 1) -> Any:
    """A list or struct column repeating ``value`` on every row (dictionary-encoded when written)."""
    pa = pytest.importorskip("pyarrow")
    if kind == "list":
        return pa.array([[value] * repeat] * rows, pa.list_(pa.string()))
    return pa.array([{"note": value}] * rows, pa.struct([("note", pa.string())]))


@pytest.mark.parametrize("kind", ["list", "struct"])
def test_nested_parquet_text_counts_toward_the_chunk_budget(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, kind: str
) -> None:
    pa = pytest.importorskip("pyarrow")
    pq = pytest.importorskip("pyarrow.parquet")
    monkeypatch.setattr(parquet, "CHUNK_BYTES", 10_000)
    path = tmp_path / "s.parquet"
    emails = [f"p{i}@example.com" for i in range(200)]
    pq.write_table(pa.table({"email": emails, "traits": _nested(kind, "x" * 990, 200)}), path)
    _, read = chunks(str(path), ["email", "traits"], chunk_size=5000)
    rows = [row for chunk in read for row in chunk]
    assert [row[0] for row in rows] == emails
    assert rows[-1][1] == (["x" * 990] if kind == "list" else {"note": "x" * 990})
    # About 1 KB a row: a chunk holds about 10 rows, never the 200 that chunk_size allows.
    assert max(map(len, read)) <= 11


def test_a_parquet_row_of_a_long_value_repeated_in_a_list_is_refused(tmp_path: Path) -> None:
    # Stored once in the dictionary, the 30,000 characters are three times as many on each row.
    pa = pytest.importorskip("pyarrow")
    pq = pytest.importorskip("pyarrow.parquet")
    path = tmp_path / "s.parquet"
    table = pa.table({"email": ["a@example.com"] * 5, "tags": _nested("list", "x" * 30_000, 5, repeat=3)})
    pq.write_table(table, path, compression="zstd")
    assert path.stat().st_size < 5_000
    with pytest.raises(SegmentSourceError) as err:
        chunks(str(path), ["email", "tags"], max_line_length=65_536)
    message = str(err.value)
    assert "Row 1 of the Parquet file s.parquet holds 90,013 bytes of text" in message
    assert "65,536 bytes (max_line_length)" in message and "xxxx" not in message


def test_a_list_of_millions_of_tiny_values_is_refused_before_decoding(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Run-length encoding stores 3,000,000 copies of one dictionary value in a few bytes; decoded, each
    # takes at least its Arrow index.
    pa = pytest.importorskip("pyarrow")
    pq = pytest.importorskip("pyarrow.parquet")
    path = tmp_path / "many.parquet"
    table = pa.table({"email": ["a@example.com"] * 10, "tags": _nested("list", "a", 10, repeat=300_000)})
    pq.write_table(table, path, compression="zstd")
    assert path.stat().st_size < 5_000
    _no_decoding(monkeypatch)
    with pytest.raises(
        SegmentSourceError, match=r"Row group 0 of the Parquet file many\.parquet holds about"
    ):
        chunks(str(path), ["email", "tags"], max_line_length=65_536)


# -- a header-less CSV shows none of its first record in the mapping error (item 8) -------------------


def test_a_header_less_csv_shows_no_value_in_the_mapping_error(tmp_path: Path) -> None:
    # The first record has no e-mail and no long number: it looks like a header, but is a contact.
    path = tmp_path / "s.csv"
    path.write_text("Annabel,Smithson,Paris\nBob,Brown,Rome\n")
    with pytest.raises(ExportConfigurationError) as err:
        SegmentExporter(make_source(source_path=str(path)), FakeDestination(), MAPPING).run()
    message = str(err.value)
    for value in ("Annabel", "Smithson", "Paris"):
        assert value not in message
    assert "'email', 'first'" in message  # the mapped names are shown
    assert "Its 3 column names come from the file's first line" in message
    assert "Of the mapped columns it has: none." in message


def test_known_column_names_are_still_listed_in_the_mapping_error(tmp_path: Path) -> None:
    path = tmp_path / "s.jsonl"
    path.write_text(json.dumps({"mail": "a@example.com", "first": "Ann"}) + "\n")
    with pytest.raises(ExportConfigurationError, match=r"Its columns are: 'mail', 'first'\."):
        SegmentExporter(make_source(source_path=str(path)), FakeDestination(), MAPPING).run()
