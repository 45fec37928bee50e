"""Segment sources: stream the rows of a SQL query, a file (CSV, JSON Lines, Parquet) or in-memory records.

A source is read once (:meth:`SegmentSource.read`): its column names come first, from the same pass,
then its rows as tuples in column order, ``chunk_size`` at a time, without ever holding the whole
segment in memory. A second read would cost another warehouse scan and could disagree with the first.
"""

from __future__ import annotations

from airflow_provider_ciexport.export.sources.base import Header, Row, SegmentRows, SegmentSource
from airflow_provider_ciexport.export.sources.csv_file import CSV_DELIMITERS, CsvSegmentSource
from airflow_provider_ciexport.export.sources.factory import CSV_OPTIONS, make_source
from airflow_provider_ciexport.export.sources.files import (
    CHUNK_BYTES,
    DEFAULT_MAX_COLUMNS,
    DEFAULT_MAX_LINE_LENGTH,
    FileSegmentSource,
)
from airflow_provider_ciexport.export.sources.json_lines import JsonLinesSegmentSource
from airflow_provider_ciexport.export.sources.parquet import PARQUET_ROW_GROUP_LINES, ParquetSegmentSource
from airflow_provider_ciexport.export.sources.records import RecordsSegmentSource
from airflow_provider_ciexport.export.sources.sql import SqlSegmentSource

__all__ = [
    "CHUNK_BYTES",
    "CSV_DELIMITERS",
    "CSV_OPTIONS",
    "DEFAULT_MAX_COLUMNS",
    "DEFAULT_MAX_LINE_LENGTH",
    "PARQUET_ROW_GROUP_LINES",
    "CsvSegmentSource",
    "FileSegmentSource",
    "Header",
    "JsonLinesSegmentSource",
    "ParquetSegmentSource",
    "RecordsSegmentSource",
    "Row",
    "SegmentRows",
    "SegmentSource",
    "SqlSegmentSource",
    "make_source",
]
