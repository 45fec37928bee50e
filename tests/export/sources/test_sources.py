"""Reading segments from SQL, CSV, JSON Lines, Parquet and in-memory records, in chunks."""

from __future__ import annotations

import gzip
import json
import sqlite3
import sys
import traceback
import tracemalloc
from pathlib import Path
from typing import Any

import pytest

from airflow_provider_ciexport.core.contacts import ContactBuilder, ContactSchema
from airflow_provider_ciexport.exceptions import ExportConfigurationError, SegmentSourceError
from airflow_provider_ciexport.export.sources.base import SegmentSource
from airflow_provider_ciexport.export.sources.csv_file import CsvSegmentSource
from airflow_provider_ciexport.export.sources.factory import make_source
from airflow_provider_ciexport.export.sources.json_lines import JsonLinesSegmentSource
from airflow_provider_ciexport.export.sources.parquet import ParquetSegmentSource
from airflow_provider_ciexport.export.sources.sql import SqlSegmentSource, _server_side_cursor
from tests.support import set_connection


def chunks_of(source: SegmentSource) -> list[list[tuple[Any, ...]]]:
    with source.read() as rows:
        return list(rows)


def rows_of(source: SegmentSource) -> list[tuple[Any, ...]]:
    return [row for chunk in chunks_of(source) for row in chunk]


def columns_of(source: SegmentSource) -> list[str]:
    with source.read() as rows:
        return rows.columns


def write(path: Path, text: str, encoding: str = "utf-8") -> str:
    path.write_bytes(text.encode(encoding))
    return str(path)


# -- choosing the source ---------------------------------------------------------------------------


def test_no_source_is_a_configuration_error() -> None:
    with pytest.raises(ExportConfigurationError, match="No segment source given"):
        make_source()


def test_two_sources_at_once_are_refused() -> None:
    with pytest.raises(ExportConfigurationError, match=r"sql, records.*exactly one"):
        make_source(sql="SELECT 1", sql_conn_id="db", records=[{"email": "a@example.com"}])


def test_sql_needs_a_connection_id() -> None:
    with pytest.raises(ExportConfigurationError, match="without sql_conn_id"):
        make_source(sql="SELECT * FROM profiles")


def test_an_unknown_extension_asks_for_file_format() -> None:
    with pytest.raises(ExportConfigurationError, match=r"segment\.txt.*file_format="):
        make_source(source_path="/data/segment.txt")


def test_an_unknown_file_format_is_refused() -> None:
    with pytest.raises(ExportConfigurationError, match="file_format='xlsx'"):
        make_source(source_path="/data/segment.xlsx", file_format="xlsx")


def test_a_non_positive_chunk_size_is_refused() -> None:
    with pytest.raises(ExportConfigurationError, match="chunk_size"):
        make_source(records=[], chunk_size=0)


@pytest.mark.parametrize(
    ("path", "file_format", "kind"),
    [
        ("s.csv", None, CsvSegmentSource),
        ("S.CSV.GZ", None, CsvSegmentSource),
        ("s.jsonl", None, JsonLinesSegmentSource),
        ("s.ndjson.gz", None, JsonLinesSegmentSource),
        ("s.json", None, JsonLinesSegmentSource),
        ("s.parquet", None, ParquetSegmentSource),
        ("s.pq", None, ParquetSegmentSource),
        ("s3://bucket/exports/vip", "csv", CsvSegmentSource),
        ("export.dat", "jsonl", JsonLinesSegmentSource),
    ],
)
def test_the_format_comes_from_the_extension_or_file_format(
    path: str, file_format: str | None, kind: type[SegmentSource]
) -> None:
    assert type(make_source(source_path=path, file_format=file_format)) is kind


def test_descriptions_name_the_source_without_its_content(tmp_path: Path) -> None:
    assert make_source(sql="SELECT email FROM t", sql_conn_id="profiles_db").description == (
        "SQL query on conn 'profiles_db'"
    )
    assert make_source(source_path=str(tmp_path / "vip.csv")).description == "CSV file vip.csv"
    assert make_source(records=[{"email": "a@example.com"}]).description == "1 in-memory records"


def test_missing_pyarrow_explains_how_to_install_it(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "pyarrow", None)
    monkeypatch.setitem(sys.modules, "pyarrow.parquet", None)
    with pytest.raises(ExportConfigurationError, match=r"pip install 'airflow-provider-ciexport\[parquet\]'"):
        make_source(source_path="segment.parquet")


# -- CSV -------------------------------------------------------------------------------------------


def test_csv_with_bom_spaced_header_and_awkward_values(tmp_path: Path) -> None:
    path = write(
        tmp_path / "vip.csv",
        "\ufeff Email , First Name,phone\r\n"
        "  Ann@Example.com ,Ann,4155550100\r\n"
        '"o\'brien@example.ie","O\'Brien, Pat",\r\n'
        '"multi@example.com","Line1\nLine2",\r\n'
        "\r\n"
        ",NoEmail,\r\n",
    )
    source = make_source(source_path=path)

    assert columns_of(source) == ["Email", "First Name", "phone"]
    assert len(rows_of(source)) == 4
    assert rows_of(source) == [
        ("  Ann@Example.com ", "Ann", "4155550100"),
        ("o'brien@example.ie", "O'Brien, Pat", ""),
        ("multi@example.com", "Line1\nLine2", ""),
        ("", "NoEmail", ""),
    ]


def test_csv_is_read_in_chunks_of_chunk_size(tmp_path: Path) -> None:
    path = tmp_path / "big.csv"
    with path.open("w", newline="") as f:
        f.write("email,n\n")
        f.writelines(f"user{i}@example.com,{i}\n" for i in range(12_345))
    source = make_source(source_path=str(path), chunk_size=1000)

    chunks = chunks_of(source)

    assert len(rows_of(source)) == 12_345
    assert [len(c) for c in chunks] == [1000] * 12 + [345]
    rows = [row for chunk in chunks for row in chunk]
    assert rows[0] == ("user0@example.com", "0")
    assert rows[-1] == ("user12344@example.com", "12344")
    assert len({row[0] for row in rows}) == 12_345


def test_gzip_csv_by_extension_and_by_content(tmp_path: Path) -> None:
    data = b"email,name\na@example.com,A\nb@example.com,B\n"
    named = tmp_path / "segment.csv.gz"
    named.write_bytes(gzip.compress(data))
    disguised = tmp_path / "segment.csv"
    disguised.write_bytes(gzip.compress(data))

    for path in (named, disguised):
        source = make_source(source_path=str(path))
        assert columns_of(source) == ["email", "name"]
        assert len(rows_of(source)) == 2
        assert rows_of(source) == [("a@example.com", "A"), ("b@example.com", "B")]


def test_a_file_uri_is_read_through_object_storage(tmp_path: Path) -> None:
    path = write(tmp_path / "remote.csv", "email\na@example.com\n")
    source = make_source(source_path=f"file://{path}")

    assert columns_of(source) == ["email"]
    assert rows_of(source) == [("a@example.com",)]


def test_short_rows_are_padded_and_long_rows_cut_to_the_header(tmp_path: Path) -> None:
    path = write(tmp_path / "ragged.csv", "email,first,last\na@example.com\nb@example.com,B,Bee,extra,\n")
    assert rows_of(make_source(source_path=path)) == [
        ("a@example.com", None, None),
        ("b@example.com", "B", "Bee"),
    ]


def test_empty_header_cells_get_positional_names(tmp_path: Path) -> None:
    path = write(tmp_path / "excel.csv", "email,,name,\na@example.com,,A,\n")
    assert columns_of(make_source(source_path=path)) == ["email", "column_2", "name", "column_4"]


def test_a_duplicated_header_names_the_duplicate(tmp_path: Path) -> None:
    path = write(tmp_path / "dup.csv", "email,Phone, Phone \na@example.com,1,2\n")
    with pytest.raises(SegmentSourceError, match="'Phone' more than once"):
        columns_of(make_source(source_path=path))


def test_a_header_less_file_with_a_repeated_value_does_not_show_it(tmp_path: Path) -> None:
    path = write(tmp_path / "noheader.csv", "ann@example.com,Lee,Lee\nbob@example.com,Roe,Roe\n")
    with pytest.raises(SegmentSourceError, match="the names look like data") as info:
        columns_of(make_source(source_path=path))
    assert "Lee" not in str(info.value) and "ann@" not in str(info.value)


def test_non_utf8_csv_says_where_and_how_to_fix_without_the_value(tmp_path: Path) -> None:
    lines = ["email,name"] + [f"user{i}@example.com,User" for i in range(5000)] + ["jose@example.com,José"]
    path = write(tmp_path / "latin1.csv", "\n".join(lines) + "\n", encoding="latin-1")
    offset = len("\n".join(lines[:-1]).encode()) + 1 + len("jose@example.com,Jos")
    source = make_source(source_path=path)

    with pytest.raises(SegmentSourceError) as info:
        rows_of(source)

    message = str(info.value)
    assert f"line {len(lines)}" in message and f"byte {offset}" in message
    assert "Re-encode it as UTF-8" in message
    assert "jose" not in message.lower() and "0xe9" not in message


def test_an_empty_csv_has_no_columns_and_no_rows(tmp_path: Path) -> None:
    source = make_source(source_path=write(tmp_path / "empty.csv", ""))
    assert columns_of(source) == []
    assert len(rows_of(source)) == 0
    assert rows_of(source) == []


def test_a_header_only_csv_has_columns_and_no_rows(tmp_path: Path) -> None:
    source = make_source(source_path=write(tmp_path / "header.csv", "email,name\n"))
    assert columns_of(source) == ["email", "name"]
    assert len(rows_of(source)) == 0
    assert chunks_of(source) == []


def test_a_missing_file_is_a_source_error(tmp_path: Path) -> None:
    with pytest.raises(SegmentSourceError, match=r"Cannot open the CSV file nope\.csv.*FileNotFoundError"):
        columns_of(make_source(source_path=str(tmp_path / "nope.csv")))


def test_a_corrupt_gzip_is_a_source_error(tmp_path: Path) -> None:
    path = tmp_path / "cut.csv.gz"
    path.write_bytes(gzip.compress(b"email\n" + b"a@example.com\n" * 1000)[:60])
    with pytest.raises(SegmentSourceError, match="could not be read"):
        rows_of(make_source(source_path=str(path)))


def test_a_file_named_gz_that_is_not_gzip_shows_none_of_its_bytes(tmp_path: Path) -> None:
    # gzip's own message is "Not a gzipped file (b'an')": the file's first bytes.
    path = write(tmp_path / "plain.csv.gz", "ann@example.com,Ann\n")
    with pytest.raises(SegmentSourceError, match="BadGzipFile: not gzip-compressed data") as info:
        rows_of(make_source(source_path=path))
    assert "b'an'" not in _shown_in_the_task_log(info.value)


# -- JSON Lines ------------------------------------------------------------------------------------


def test_json_lines_columns_are_the_union_of_keys_in_first_seen_order(tmp_path: Path) -> None:
    path = write(
        tmp_path / "seg.jsonl",
        '\ufeff{"email": "a@example.com", "first_name": "A"}\n'
        "\n"
        '  {"phone": 4155550100, "email": "b@example.com"}  \r\n'
        '{"email": null, "tier": {"level": 2}}',
    )
    source = make_source(source_path=path)

    assert columns_of(source) == ["email", "first_name", "phone", "tier"]
    assert len(rows_of(source)) == 3
    assert rows_of(source) == [
        ("a@example.com", "A", None, None),
        ("b@example.com", None, 4155550100, None),
        (None, None, None, {"level": 2}),
    ]


def test_json_lines_keys_first_seen_after_the_first_chunk_are_ignored(tmp_path: Path) -> None:
    lines = [json.dumps({"email": f"u{i}@example.com"}) for i in range(5)]
    lines.append(json.dumps({"email": "late@example.com", "late_key": "x"}))
    source = make_source(source_path=write(tmp_path / "s.jsonl", "\n".join(lines)), chunk_size=5)

    assert columns_of(source) == ["email"]
    assert rows_of(source)[-1] == ("late@example.com",)


def test_gzip_json_lines_in_chunks(tmp_path: Path) -> None:
    path = tmp_path / "seg.ndjson.gz"
    path.write_bytes(
        gzip.compress("".join(f'{{"email":"u{i}@example.com"}}\n' for i in range(2500)).encode())
    )
    source = make_source(source_path=str(path), chunk_size=1000)

    assert len(rows_of(source)) == 2500
    assert [len(chunk) for chunk in chunks_of(source)] == [1000, 1000, 500]


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (
            '{"email": "a@example.com"}\n{"email": \n',
            "Line 2 of the JSON Lines file s.jsonl is not valid JSON",
        ),
        ('[{"email": "a@example.com"}]\n', "Line 1 .* is a JSON list, not an object"),
        ('{"email": "a@example.com"}\n\n"just text"\n', "Line 3 .* is a JSON str"),
    ],
)
def test_bad_json_lines_name_the_line(tmp_path: Path, content: str, message: str) -> None:
    with pytest.raises(SegmentSourceError, match=message):
        rows_of(make_source(source_path=write(tmp_path / "s.jsonl", content)))


def test_non_utf8_json_lines_say_where(tmp_path: Path) -> None:
    path = write(tmp_path / "s.jsonl", '{"email": "a@example.com"}\n{"name": "José"}\n', encoding="latin-1")
    with pytest.raises(SegmentSourceError, match=r"not valid UTF-8: line 2, byte 40 ") as info:
        rows_of(make_source(source_path=path))
    assert "Jos" not in str(info.value)


# -- hostile files ---------------------------------------------------------------------------------


def _gzip_with_one_huge_line(path: Path, header: bytes, megabytes: int, prefix: bytes = b"") -> str:
    """A small .gz whose second line expands to ``megabytes`` MB, written without holding it."""
    with gzip.open(path, "wb", compresslevel=6) as out:
        out.write(header + prefix)
        block = b"a" * (1 << 20)
        for _ in range(megabytes):
            out.write(block)
        out.write(b"\n")
    return str(path)


def _peak_while(read: Any) -> tuple[BaseException, int]:
    tracemalloc.start()
    try:
        with pytest.raises(SegmentSourceError) as info:
            read()
        return info.value, tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


@pytest.mark.parametrize(
    ("name", "header", "prefix", "unit"),
    [
        ("bomb.csv.gz", b"email,name\n", b"", "characters"),
        ("bomb.jsonl.gz", b'{"email": "a@example.com"}\n', b'{"email": "', "bytes"),
    ],
)
def test_a_small_gzip_expanding_to_one_huge_line_fails_in_flat_memory(
    tmp_path: Path, name: str, header: bytes, prefix: bytes, unit: str
) -> None:
    path = _gzip_with_one_huge_line(tmp_path / name, header, 64, prefix)
    assert Path(path).stat().st_size < 400_000
    error, peak = _peak_while(lambda: rows_of(make_source(source_path=path)))
    assert (
        f"Line 2 of the {name.split('.')[1].replace('jsonl', 'JSON Lines').replace('csv', 'CSV')} file"
        in str(error)
    )
    assert f"longer than 1,048,576 {unit} (max_line_length)" in str(error)
    assert "raise the operator's max_line_length" in str(error)
    # The 64 MB line is never held: a few times the limit at most, where reading it whole took 130 MB.
    assert peak < 8 * 1024 * 1024


def test_max_line_length_is_the_limit(tmp_path: Path) -> None:
    path = write(tmp_path / "s.csv", "email,note\na@example.com," + "x" * 150 + "\n")
    with pytest.raises(SegmentSourceError, match=r"Line 2 .* longer than 100 characters"):
        rows_of(make_source(source_path=path, max_line_length=100))
    assert rows_of(make_source(source_path=path, max_line_length=200)) == [("a@example.com", "x" * 150)]
    path = write(tmp_path / "s.jsonl", '{"email": "a@example.com", "note": "' + "x" * 150 + '"}\n')
    with pytest.raises(SegmentSourceError, match=r"Line 1 .* longer than 100 bytes"):
        rows_of(make_source(source_path=path, max_line_length=100))


def test_a_quote_that_never_closes_fails_at_the_limit_naming_where_it_opened(tmp_path: Path) -> None:
    lines = ["email,note", 'a@example.com,"an open quote'] + ["more text" for _ in range(100)]
    path = write(tmp_path / "s.csv", "\n".join(lines) + "\n")
    with pytest.raises(
        SegmentSourceError, match=r"Line 2 of the CSV file s\.csv opens a quoted value still open after 500"
    ):
        rows_of(make_source(source_path=path, max_line_length=500))


def test_deeply_nested_json_names_the_line(tmp_path: Path) -> None:
    nested = '{"email": "b@example.com", "x": ' + "[" * 100_000 + "]" * 100_000 + "}"
    path = write(tmp_path / "s.jsonl", '{"email": "a@example.com"}\n' + nested + "\n")
    with pytest.raises(
        SegmentSourceError, match=r"Line 2 of the JSON Lines file s.jsonl nests its values deeper"
    ):
        rows_of(make_source(source_path=path))


@pytest.mark.parametrize("bad", [0, -5, 1.5, "1000", True])
def test_max_line_length_must_be_a_whole_number(tmp_path: Path, bad: Any) -> None:
    with pytest.raises(ExportConfigurationError, match="max_line_length must be a whole number"):
        make_source(source_path=str(tmp_path / "s.csv"), max_line_length=bad)


# -- CSV dialects ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "delimiter"),
    [
        ('Email;First Name;"Note; with semicolon"\na@example.com;Ann;"x, y; z"\n', ";"),
        ("Email\tFirst Name\tNote\na@example.com\tAnn\tx, y; z\n", "\t"),
        ("Email|First Name|Note\na@example.com|Ann|x, y; z\n", "|"),
        ('Email,First Name,"Note, with; comma"\na@example.com,Ann,"x, y; z"\n', ","),
        ("email\na@example.com\n", ","),
    ],
    ids=["semicolon", "tab", "pipe", "comma", "one-column"],
)
def test_the_delimiter_is_found_in_the_header_line(tmp_path: Path, text: str, delimiter: str) -> None:
    source = make_source(source_path=write(tmp_path / "s.csv", text))
    rows = rows_of(source)
    assert source.used_delimiter == delimiter  # type: ignore[attr-defined]
    assert rows[0][:2] == ("a@example.com", "Ann") if len(rows[0]) > 1 else rows == [("a@example.com",)]
    if len(rows[0]) == 3:
        assert rows[0][2] == "x, y; z"


def test_csv_options_set_the_dialect_and_the_encoding(tmp_path: Path) -> None:
    path = write(tmp_path / "excel.csv", "Email;Name;Note\na@example.com;José;'it;s'\n", encoding="cp1252")
    source = make_source(
        source_path=path, csv_options={"delimiter": ";", "quotechar": "'", "encoding": "cp1252"}
    )
    assert columns_of(source) == ["Email", "Name", "Note"]
    assert rows_of(source) == [("a@example.com", "José", "it;s")]
    # A given delimiter wins over the header line's.
    forced = make_source(source_path=path, csv_options={"delimiter": ",", "encoding": "cp1252"})
    assert columns_of(forced) == ["Email;Name;Note"]


def test_a_wrong_encoding_says_how_to_set_it(tmp_path: Path) -> None:
    path = write(tmp_path / "excel.csv", "email,name\na@example.com,José\n", encoding="cp1252")
    with pytest.raises(SegmentSourceError, match=r"line 2, byte 28 .*csv_options=\{'encoding'") as info:
        rows_of(make_source(source_path=path))
    assert "Jos" not in str(info.value)


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"delimiter": ";;"}, "delimiter must be one character"),
        ({"quotechar": ""}, "quotechar must be one character"),
        ({"delimiter": "\n"}, "delimiter must be one character"),
        ({"delimiter": "'", "quotechar": "'"}, "must differ"),
        ({"encoding": "klingon"}, "'klingon' is not a known encoding"),
        ({"sep": ";"}, "csv_options has 'sep'; it takes 'delimiter', 'quotechar', 'encoding'"),
        ("delimiter=;", "csv_options must be a dict"),
    ],
)
def test_bad_csv_options_are_refused(tmp_path: Path, options: Any, message: str) -> None:
    with pytest.raises(ExportConfigurationError, match=message):
        make_source(source_path=str(tmp_path / "s.csv"), csv_options=options)


def test_csv_options_for_a_file_that_is_not_csv_are_refused(tmp_path: Path) -> None:
    with pytest.raises(ExportConfigurationError, match="not a CSV file"):
        make_source(source_path=str(tmp_path / "s.jsonl"), csv_options={"delimiter": ";"})


# -- Parquet ---------------------------------------------------------------------------------------


def test_parquet_columns_count_and_typed_rows_in_chunks(tmp_path: Path) -> None:
    pa = pytest.importorskip("pyarrow")
    pq = pytest.importorskip("pyarrow.parquet")
    n = 2500
    table = pa.table(
        {
            "email": [f"u{i}@example.com" if i % 100 else None for i in range(n)],
            "phone": [4155550000.0 + i for i in range(n)],
            "visits": list(range(n)),
        }
    )
    path = tmp_path / "seg.parquet"
    pq.write_table(table, path, row_group_size=1000)
    source = make_source(source_path=str(path), chunk_size=700)

    rows = rows_of(source)

    assert columns_of(source) == ["email", "phone", "visits"]
    assert len(rows_of(source)) == n
    assert all(len(chunk) <= 700 for chunk in chunks_of(source))
    assert len(rows) == n
    assert rows[0] == (None, 4155550000.0, 0)
    assert rows[1] == ("u1@example.com", 4155550001.0, 1)


def test_a_file_that_is_not_parquet_is_a_source_error(tmp_path: Path) -> None:
    pytest.importorskip("pyarrow")
    with pytest.raises(SegmentSourceError, match="not a readable Parquet file"):
        columns_of(make_source(source_path=write(tmp_path / "fake.parquet", "email\na@example.com\n")))


def test_a_parquet_value_python_cannot_read_is_a_source_error_without_the_value(tmp_path: Path) -> None:
    pa = pytest.importorskip("pyarrow")
    pq = pytest.importorskip("pyarrow.parquet")
    path = tmp_path / "odd.parquet"
    # A string column holding bytes that are not UTF-8: Python's error quotes them.
    names = pa.array([b"Jos\xe9"], type=pa.binary()).cast(pa.string(), safe=False)
    pq.write_table(pa.table({"email": ["a@example.com"], "name": names}), path)
    with pytest.raises(SegmentSourceError, match=r"could not be read \(UnicodeDecodeError\)") as info:
        rows_of(make_source(source_path=str(path)))
    shown = _shown_in_the_task_log(info.value)
    assert "0xe9" not in shown and "Jos" not in shown


# -- records ---------------------------------------------------------------------------------------


def test_records_use_the_union_of_keys_and_read_missing_ones_as_none() -> None:
    records = [{"email": "a@example.com", "first_name": "A"}, {"phone": "1", "email": "b@example.com"}]
    source = make_source(records=records, chunk_size=1)

    assert columns_of(source) == ["email", "first_name", "phone"]
    assert len(rows_of(source)) == 2
    assert chunks_of(source) == [[("a@example.com", "A", None)], [("b@example.com", None, "1")]]


def test_records_that_are_not_mappings_are_refused() -> None:
    with pytest.raises(ExportConfigurationError, match=r"records\[1\] is a str"):
        make_source(records=[{"email": "a@example.com"}, "b@example.com"])  # type: ignore[list-item]


def test_no_records_is_an_empty_segment() -> None:
    source = make_source(records=[])
    assert (columns_of(source), chunks_of(source)) == ([], [])


# -- SQL -------------------------------------------------------------------------------------------


@pytest.fixture
def profiles_db(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    """A SQLite database of 12,345 profiles behind the Airflow connection ``profiles_db``."""
    path = tmp_path / "profiles.db"
    conn = sqlite3.connect(path)
    conn.execute("CREATE TABLE profiles (id INTEGER, email TEXT, first_name TEXT, phone REAL)")
    conn.executemany(
        "INSERT INTO profiles VALUES (?, ?, ?, ?)",
        (
            (i, None if i == 7 else f"User{i}@Example.com", f"Name{i}" if i % 2 else None, 4155550000.0 + i)
            for i in range(12_345)
        ),
    )
    conn.commit()
    conn.close()
    return set_connection(monkeypatch, "profiles_db", conn_type="sqlite", host=str(path))


def test_sql_through_an_airflow_connection_in_chunks(profiles_db: str) -> None:
    source = make_source(
        sql="SELECT email, first_name AS fname, phone FROM profiles ORDER BY id;\n",
        sql_conn_id=profiles_db,
        chunk_size=1000,
    )

    chunks = chunks_of(source)
    rows = [row for chunk in chunks for row in chunk]

    assert columns_of(source) == ["email", "fname", "phone"]
    assert len(rows_of(source)) == 12_345
    assert [len(chunk) for chunk in chunks] == [1000] * 12 + [345]
    assert rows[0] == ("User0@Example.com", None, 4155550000.0)
    assert rows[7] == (None, "Name7", 4155550007.0)
    assert rows[-1] == ("User12344@Example.com", None, 4155562344.0)


def test_sql_empty_result_is_an_empty_segment(profiles_db: str) -> None:
    source = make_source(sql="SELECT email FROM profiles WHERE id < 0", sql_conn_id=profiles_db)
    assert columns_of(source) == ["email"]
    assert len(rows_of(source)) == 0
    assert chunks_of(source) == []


def _shown_in_the_task_log(err: BaseException) -> str:
    """The error as the task log shows it: the traceback, with every chained exception."""
    return "".join(traceback.format_exception(err))


# sqlite3 names its error codes (``sqlite_errorname``) from Python 3.11 on; on 3.10 only the type shows.
SQLITE_CODE = ", SQLITE_ERROR" if sys.version_info >= (3, 11) else ""


def test_a_failing_query_names_the_connection_and_the_driver_code_not_its_text(profiles_db: str) -> None:
    source = make_source(sql="SELECT email FROM no_such_table", sql_conn_id=profiles_db)
    with pytest.raises(SegmentSourceError) as info:
        source.read()
    message = str(info.value)
    assert f"failed on connection 'profiles_db': OperationalError{SQLITE_CODE}." in message
    assert "not shown" in message and "SQL client" in message
    assert "no such table" not in _shown_in_the_task_log(info.value)


def test_a_driver_error_quoting_a_row_value_shows_no_value(profiles_db: str) -> None:
    # SQLite's real message here is "JSON path error near 'User1@Example.com'".
    source = make_source(
        sql="SELECT json_extract('{}', email) AS email FROM profiles WHERE id = 1", sql_conn_id=profiles_db
    )
    with pytest.raises(SegmentSourceError) as info:
        chunks_of(source)
    shown = _shown_in_the_task_log(info.value)
    assert f"OperationalError{SQLITE_CODE}" in shown
    assert "example.com" not in shown.lower() and "json path" not in shown.lower()


class _DriverError(Exception):
    """An exception shaped like a driver's: a message quoting the row, and its code."""

    def __init__(self, message: str, **codes: Any) -> None:
        super().__init__(*((codes.pop("errno_arg"), message) if "errno_arg" in codes else (message,)))
        for name, value in codes.items():
            setattr(self, name, value)


class _FailingHook:
    def __init__(self, error: BaseException, on: str) -> None:
        self.error, self.on = error, on

    def get_conn(self) -> Any:
        if self.on == "connect":
            raise self.error
        hook = self

        class Cursor:
            description = (("email",),)

            def execute(self, sql: str) -> None:
                raise hook.error

            def close(self) -> None:
                pass

        class Connection:
            def cursor(self) -> Cursor:
                return Cursor()

            def close(self) -> None:
                pass

        return Connection()


@pytest.mark.parametrize(
    ("error", "code"),
    [
        (  # psycopg2
            _DriverError('invalid input syntax for type integer: "ann@example.com"', pgcode="22P02"),
            "_DriverError, SQLSTATE 22P02 (data exception: a value does not fit its type or function)",
        ),
        (  # psycopg 3
            _DriverError('column "ann@example.com" does not exist', sqlstate="42703"),
            "_DriverError, SQLSTATE 42703 (syntax error or access rule violation: a misspelt name or a "
            "missing permission)",
        ),
        (  # MySQLdb, PyMySQL
            _DriverError("Incorrect integer value: 'ann@example.com' for column 'id'", errno_arg=1366),
            "_DriverError, error 1366",
        ),
        (_DriverError("bad value ann@example.com"), "_DriverError"),
    ],
    ids=["pgcode", "sqlstate", "mysql", "no-code"],
)
@pytest.mark.parametrize("on", ["execute", "connect"])
def test_driver_errors_show_their_code_only(error: BaseException, code: str, on: str) -> None:
    source = SqlSegmentSource("SELECT email FROM segment", "db")
    source._hook = _FailingHook(error, on)  # type: ignore[assignment]
    with pytest.raises(SegmentSourceError) as info:
        source.read()
    text = _shown_in_the_task_log(info.value)
    where = "failed on connection 'db'" if on == "execute" else "of connection 'db' for the segment query"
    assert f"{where}: {code}. (The driver's own message is not shown" in text
    assert "ann@example.com" not in text and "Incorrect" not in text


def test_duplicate_result_columns_ask_for_aliases(profiles_db: str) -> None:
    source = make_source(sql="SELECT email, email FROM profiles", sql_conn_id=profiles_db)
    with pytest.raises(SegmentSourceError, match="'email' more than once"):
        chunks_of(source)


def test_an_undefined_connection_is_a_configuration_error() -> None:
    with pytest.raises(ExportConfigurationError, match=r"'nowhere_db' .* could not be loaded.*AIRFLOW_CONN_"):
        columns_of(make_source(sql="SELECT 1", sql_conn_id="nowhere_db"))


def test_a_connection_that_cannot_run_sql_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    set_connection(monkeypatch, "some_api", conn_type="http", host="https://api.example.com")
    with pytest.raises(ExportConfigurationError, match=r"'some_api' has type 'http'.*Use a SQL connection"):
        columns_of(make_source(sql="SELECT 1", sql_conn_id="some_api"))


def test_postgres_and_mysql_rows_are_streamed_from_the_server() -> None:
    calls: list[tuple[Any, ...]] = []

    class FakeConnection:
        autocommit = False

        def cursor(self, *args: Any, **kwargs: Any) -> str:
            calls.append((args, kwargs))
            return "server-side"

    FakeConnection.__module__ = "psycopg2.extensions"
    assert _server_side_cursor(FakeConnection()) == "server-side"
    assert calls == [((), {"name": "ciexport_segment", "withhold": False})]
    assert _server_side_cursor(sqlite3.connect(":memory:")) is None


def test_a_sql_segment_builds_clean_contacts(profiles_db: str) -> None:
    source = SqlSegmentSource("SELECT email, first_name, phone FROM profiles ORDER BY id", profiles_db, 500)
    schema = ContactSchema("ActiveCampaign", {"email": 255, "first_name": 255, "phone": 255}, "field:")
    builder = ContactBuilder(
        {"email": "email", "first_name": "first_name", "phone": "phone"}, schema, columns_of(source)
    )

    contacts = [c for chunk in chunks_of(source) for row in chunk if (c := builder.build(row)) is not None]

    assert len(contacts) == 12_344
    assert builder.invalid_reasons == {"missing": 1}
    assert contacts[0] == {"email": "user0@example.com", "phone": "4155550000"}
    assert contacts[1] == {"email": "user1@example.com", "first_name": "Name1", "phone": "4155550001"}
