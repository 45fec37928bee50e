"""Writing the outcome log as the run goes: the buffering writer, and its file sinks (CSV, JSON Lines,
Parquet)."""

from __future__ import annotations

import csv
import io
import json
import threading
from collections.abc import Sequence
from typing import Any, Protocol

from airflow_provider_ciexport.core.paths import check_storage_path
from airflow_provider_ciexport.exceptions import ExportConfigurationError
from airflow_provider_ciexport.export.state import make_parents, open_for_writing, storage_path

#: The log's columns, in order (documented in docs/outcomes.md).
OUTCOME_COLUMNS = (
    "dag_id",
    "task_id",
    "run_id",
    "map_index",
    "try_number",
    "logical_date",
    "destination",
    "lists",
    "row_number",
    "row_id",
    "operation",
    "status",
    "reason",
    "batch",
    "job_id",
    "recorded_at",
)
#: The columns ``outcome_include_values`` adds: the e-mail, and the other mapped values as JSON.
VALUE_COLUMNS = ("email", "mapped_values")
#: File formats by extension.
FORMATS = {".csv": "csv", ".jsonl": "jsonl", ".ndjson": "jsonl", ".parquet": "parquet"}
#: Rows held before they are written: memory stays flat whatever the segment's size.
BUFFER_ROWS = 5_000


def outcome_format(uri: str) -> str:
    """The format of an ``outcomes_path`` from its extension; checks the path as ``state_path`` is.

    :raises ExportConfigurationError: naming the parameter, the extensions and (Parquet) the extra.
    """
    check_storage_path(uri, "outcomes_path")
    name = uri.rsplit("/", 1)[-1].lower()
    fmt = next((f for ext, f in FORMATS.items() if name.endswith(ext)), None)
    if fmt is None:
        raise ExportConfigurationError(
            "outcomes_path must end with .csv, .jsonl or .parquet (the log's format), e.g. "
            "'s3://bucket/ciexport/{{ dag.dag_id }}/{{ run_id }}.csv'. Nothing was sent."
        )
    if fmt == "parquet":
        try:
            import pyarrow  # noqa: F401
        except ImportError:
            raise ExportConfigurationError(
                "outcomes_path ends with .parquet, which needs pyarrow: install the provider's "
                "'parquet' extra (airflow-provider-ciexport[parquet]), or write .csv or .jsonl. "
                "Nothing was sent."
            ) from None
    return fmt


class OutcomeSink(Protocol):
    """Where the writer's buffers go: a file (:func:`file_sink`) or a table."""

    def write(self, rows: list[tuple[Any, ...]]) -> None:
        """Write one buffer of rows (in :data:`OUTCOME_COLUMNS` order)."""

    def close(self) -> None:
        """Finish: nothing is written after."""


class OutcomeWriter:
    """Streams outcome rows to a sink (thread-safe) through a buffer of :data:`BUFFER_ROWS` rows.

    Only the thread that made the writer (the task's) writes to the sink: the export's other threads
    (its job pollers) add rows to the buffer and leave it, at most their jobs' contacts, for the task's
    thread. Serialising rows is CPU work for the interpreter; two threads taking turns at it on two
    cores cost twice the CPU, and Arrow would keep a heap for each thread that wrote.

    :param sink: where the buffers go (:func:`file_sink`, or a table's).
    :param where: what the task log calls it: the file's URI, or ``table <name>``.
    """

    def __init__(self, sink: OutcomeSink, where: str) -> None:
        self.where = where
        self.rows = 0
        self._buffer: list[tuple[Any, ...]] = []
        self._lock = threading.Lock()
        self._owner = threading.get_ident()
        self._sink = sink

    def write(self, row: tuple[Any, ...]) -> None:
        """Add one row (in :data:`OUTCOME_COLUMNS` order)."""
        with self._lock:
            self._buffer.append(row)
            self.rows += 1
            full = len(self._buffer) >= BUFFER_ROWS
        if full and threading.get_ident() == self._owner:
            self._flush()

    def close(self) -> None:
        """Write what is buffered and close the sink."""
        try:
            self._flush()
        finally:
            self._sink.close()

    def _flush(self) -> None:
        with self._lock:
            rows, self._buffer = self._buffer, []
        if rows:
            self._sink.write(rows)


def file_sink(uri: str, columns: Sequence[str] = OUTCOME_COLUMNS) -> OutcomeSink:
    """The sink that writes the file at ``uri`` (an ``ObjectStoragePath`` URI; its extension gives the
    format), opened now."""
    fmt = outcome_format(uri)
    path = storage_path(uri)
    make_parents(path)  # a run id in the path is a new folder each run; 0700 on local disk
    file = open_for_writing(path)
    try:
        return _FileSink(file, _sink(fmt, file, columns))
    except BaseException:
        file.close()
        raise


class _FileSink:
    """A format's sink and the file it writes, closed after it."""

    def __init__(self, file: Any, sink: Any) -> None:
        self._file = file
        self._sink = sink

    def write(self, rows: list[tuple[Any, ...]]) -> None:
        self._sink.write(rows)

    def close(self) -> None:
        try:
            self._sink.close()
        finally:
            self._file.close()


class _CsvSink:
    def __init__(self, file: Any, columns: Sequence[str]) -> None:
        self._text = io.TextIOWrapper(file, encoding="utf-8", newline="")
        self._csv = csv.writer(self._text)
        self._csv.writerow(columns)

    def write(self, rows: list[tuple[Any, ...]]) -> None:
        self._csv.writerows(rows)

    def close(self) -> None:
        self._text.flush()
        self._text.detach()


class _JsonlSink:
    def __init__(self, file: Any, columns: Sequence[str]) -> None:
        self._file = file
        self._columns = columns

    def write(self, rows: list[tuple[Any, ...]]) -> None:
        lines = (json.dumps(dict(zip(self._columns, row, strict=True)), ensure_ascii=False) for row in rows)
        self._file.write(("\n".join(lines) + "\n").encode())

    def close(self) -> None:
        self._file.flush()


class _ParquetSink:
    _INTS = {"map_index", "try_number", "row_number", "batch"}

    def __init__(self, file: Any, columns: Sequence[str]) -> None:
        import pyarrow as pa
        import pyarrow.parquet as pq

        self._pa = pa
        self._schema = pa.schema(
            [(name, pa.int64() if name in self._INTS else pa.string()) for name in columns]
        )
        self._writer = pq.ParquetWriter(file, self._schema, compression="zstd")

    def write(self, rows: list[tuple[Any, ...]]) -> None:
        columns = list(zip(*rows, strict=True))
        self._writer.write_table(self._pa.Table.from_arrays(columns, schema=self._schema))

    def close(self) -> None:
        self._writer.close()


def _sink(fmt: str, file: Any, columns: Sequence[str]) -> Any:
    return {"csv": _CsvSink, "jsonl": _JsonlSink, "parquet": _ParquetSink}[fmt](file, columns)
