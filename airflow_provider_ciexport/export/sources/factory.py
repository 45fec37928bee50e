"""``make_source``: an operator's source parameters checked and turned into one segment source."""

from __future__ import annotations

import codecs
import os
from collections.abc import Mapping, Sequence
from typing import Any

from airflow_provider_ciexport.exceptions import ExportConfigurationError
from airflow_provider_ciexport.export.sources.base import SegmentSource
from airflow_provider_ciexport.export.sources.csv_file import CsvSegmentSource
from airflow_provider_ciexport.export.sources.files import (
    DEFAULT_MAX_COLUMNS,
    DEFAULT_MAX_LINE_LENGTH,
    FileSegmentSource,
    location_without_credentials,
)
from airflow_provider_ciexport.export.sources.json_lines import JsonLinesSegmentSource
from airflow_provider_ciexport.export.sources.parquet import ParquetSegmentSource
from airflow_provider_ciexport.export.sources.records import RecordsSegmentSource
from airflow_provider_ciexport.export.sources.sql import SqlSegmentSource

_FORMATS = {
    "csv": "csv",
    "jsonl": "jsonl",
    "ndjson": "jsonl",
    "json": "jsonl",
    "parquet": "parquet",
    "pq": "parquet",
}
#: What ``csv_options`` may set.
CSV_OPTIONS = ("delimiter", "quotechar", "encoding")


def _file_format(path: str, file_format: str | None) -> str:
    """The format (``"csv"``, ``"jsonl"`` or ``"parquet"``) given, or else told by the path's extension."""
    if file_format is not None:
        fmt = _FORMATS.get(file_format.strip().lower().lstrip(".").removesuffix(".gz"))
        if fmt is None:
            raise ExportConfigurationError(
                f"file_format={file_format!r} is not supported. Use 'csv', 'jsonl' or 'parquet'."
            )
        return fmt
    name = path.rstrip("/").rsplit("/", 1)[-1].lower()
    stem = name.removesuffix(".gz")
    extension = stem.rsplit(".", 1)[-1] if "." in stem else ""
    fmt = _FORMATS.get(extension)
    if fmt is None or (fmt == "parquet" and stem != name):
        raise ExportConfigurationError(
            f"Cannot tell the format of source_path {location_without_credentials(path)!r} from its "
            "extension. Name it .csv, .jsonl/.ndjson/.json or .parquet/.pq (.csv.gz and .jsonl.gz for gzip), or pass "
            "file_format='csv', 'jsonl' or 'parquet'."
        )
    return fmt


def _csv_dialect(options: Mapping[str, Any]) -> dict[str, Any]:
    """``csv_options`` checked: a one-character delimiter and quote character, a known encoding."""
    _check_csv_option_names(options)
    dialect = _one_character_options(options)
    encoding = options.get("encoding")
    if encoding is not None:
        dialect["encoding"] = _known_encoding(encoding)
    return dialect


def _check_csv_option_names(options: Mapping[str, Any]) -> None:
    """Refuse ``csv_options`` that is not a mapping or sets anything but :data:`CSV_OPTIONS`."""
    if not isinstance(options, Mapping):
        raise ExportConfigurationError(
            f"csv_options must be a dict, e.g. {{'delimiter': ';'}}, not {type(options).__name__}."
        )
    unknown = [key for key in options if key not in CSV_OPTIONS]
    if unknown:
        raise ExportConfigurationError(
            f"csv_options has {', '.join(map(repr, unknown))}; it takes {', '.join(map(repr, CSV_OPTIONS))}."
        )


def _one_character_options(options: Mapping[str, Any]) -> dict[str, Any]:
    """The delimiter and quote character given, each checked to be one character, the two different."""
    dialect: dict[str, Any] = {}
    for key in ("delimiter", "quotechar"):
        value = options.get(key)
        if value is None:
            continue
        if not isinstance(value, str) or len(value) != 1 or value in "\r\n":
            raise ExportConfigurationError(
                f"csv_options {key} must be one character (e.g. ';' or '\\t' for a tab), not {value!r}."
            )
        dialect[key] = value
    if dialect.get("delimiter") is not None and dialect.get("delimiter") == dialect.get("quotechar"):
        raise ExportConfigurationError("csv_options delimiter and quotechar must differ.")
    return dialect


def _known_encoding(encoding: Any) -> str:
    """The encoding's name, checked to be one Python knows."""
    try:
        codecs.lookup(str(encoding))
    except LookupError:
        raise ExportConfigurationError(
            f"csv_options encoding {encoding!r} is not a known encoding. Use e.g. 'utf-8', 'cp1252', "
            "'latin-1' or 'utf-16'."
        ) from None
    return str(encoding)


def make_source(
    *,
    sql: str | None = None,
    sql_conn_id: str | None = None,
    source_path: str | None = None,
    records: Sequence[Mapping[str, Any]] | None = None,
    file_format: str | None = None,
    chunk_size: int = 5000,
    csv_options: Mapping[str, Any] | None = None,
    max_line_length: int = DEFAULT_MAX_LINE_LENGTH,
    max_columns: int = DEFAULT_MAX_COLUMNS,
) -> SegmentSource:
    """Build the segment source from an operator's parameters; exactly one source must be given.

    Nothing is opened or queried here: sources open lazily.

    :param sql: a query whose rows are the segment; needs ``sql_conn_id``.
    :param sql_conn_id: the Airflow SQL connection to run ``sql`` on.
    :param source_path: a CSV, JSON Lines or Parquet file: local path or object-storage URI.
    :param records: rows given directly, as mappings.
    :param file_format: ``"csv"``, ``"jsonl"`` or ``"parquet"``; by default from the extension.
    :param chunk_size: rows per chunk.
    :param csv_options: how a CSV file is written: ``delimiter`` (detected from the header line when
        not given), ``quotechar`` (``"``) and ``encoding`` (``utf-8``).
    :param max_line_length: the longest line a CSV or JSON Lines file may have (characters; bytes for
        JSON Lines); for Parquet, the most a row's mapped columns may take on average in a row group,
        uncompressed, and :data:`PARQUET_ROW_GROUP_LINES` times it the most a row group's may take.
    :param max_columns: the most columns a CSV file, keys a JSON Lines file or fields a Parquet
        schema may have.
    :raises ExportConfigurationError: if the parameters do not describe exactly one usable source.
    """
    _check_one_source_given(sql=sql, source_path=source_path, records=records)
    _check_whole_numbers(chunk_size=chunk_size, max_line_length=max_line_length, max_columns=max_columns)
    if csv_options is not None and (source_path is None or _file_format(source_path, file_format) != "csv"):
        raise ExportConfigurationError(
            "csv_options is given but the segment is not a CSV file. Drop csv_options, or point "
            "source_path at a .csv file (or pass file_format='csv')."
        )
    if sql is not None:
        return _sql_source(sql, sql_conn_id, chunk_size)
    if source_path is not None:
        return _file_source(
            source_path,
            file_format,
            chunk_size,
            csv_options,
            max_line_length=max_line_length,
            max_columns=max_columns,
        )
    assert records is not None
    return _records_source(records, chunk_size)


def _check_one_source_given(**sources: Any) -> None:
    """Refuse no source, or more than one, of the keyword arguments (``None``: not given)."""
    given = [name for name, value in sources.items() if value is not None]
    if not given:
        raise ExportConfigurationError(
            "No segment source given. Pass one of sql (with sql_conn_id), source_path or records."
        )
    if len(given) > 1:
        raise ExportConfigurationError(
            f"Several segment sources given ({', '.join(given)}). Pass exactly one of sql, "
            "source_path or records."
        )


#: Each whole-number parameter: its least value, what it must be, and the advice after the value.
_WHOLE_NUMBERS: dict[str, tuple[int, str, str]] = {
    "chunk_size": (1, "a positive integer", "Use e.g. 5000."),
    "max_line_length": (
        2,
        "a whole number of characters",
        f"The default is {DEFAULT_MAX_LINE_LENGTH:,}.",
    ),
    "max_columns": (1, "a positive whole number", f"The default is {DEFAULT_MAX_COLUMNS:,}."),
}


def _check_whole_numbers(**values: Any) -> None:
    """Refuse a parameter of :data:`_WHOLE_NUMBERS` that is not an integer (a bool is not) of at least
    its least value."""
    for name, value in values.items():
        least, what, advice = _WHOLE_NUMBERS[name]
        if isinstance(value, bool) or not isinstance(value, int) or value < least:
            raise ExportConfigurationError(f"{name} must be {what}, got {value!r}. {advice}")


def _sql_source(sql: str, sql_conn_id: str | None, chunk_size: int) -> SqlSegmentSource:
    if not sql.strip():
        raise ExportConfigurationError("sql is empty. Pass the query that selects the segment.")
    if not sql_conn_id:
        raise ExportConfigurationError(
            "sql is given without sql_conn_id. Pass the id of the Airflow connection to run it on."
        )
    return SqlSegmentSource(sql, sql_conn_id, chunk_size)


def _file_source(
    source_path: str | os.PathLike[str],
    file_format: str | None,
    chunk_size: int,
    csv_options: Mapping[str, Any] | None,
    *,
    max_line_length: int,
    max_columns: int,
) -> FileSegmentSource:
    """The file source for the path's format (from its extension unless ``file_format`` is given)."""
    path = os.fspath(source_path)
    if not path.strip():
        raise ExportConfigurationError("source_path is empty. Pass the path or URI of the file.")
    fmt = _file_format(path, file_format)
    if fmt == "csv":
        return CsvSegmentSource(
            path,
            chunk_size,
            max_line_length=max_line_length,
            max_columns=max_columns,
            **_csv_dialect(csv_options or {}),
        )
    if fmt == "jsonl":
        return JsonLinesSegmentSource(
            path, chunk_size, max_line_length=max_line_length, max_columns=max_columns
        )
    return ParquetSegmentSource(path, chunk_size, max_line_length=max_line_length, max_columns=max_columns)


def _records_source(records: Sequence[Mapping[str, Any]], chunk_size: int) -> RecordsSegmentSource:
    if isinstance(records, (str, bytes)) or not isinstance(records, Sequence):
        raise ExportConfigurationError(
            f"records must be a list of dicts, got {type(records).__name__}. Pass one dict per contact."
        )
    return RecordsSegmentSource(records, chunk_size)
