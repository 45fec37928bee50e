"""The Parquet file source: metadata checks before decoding, and rows decoded a byte budget at a time."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable, Generator, Iterator, Sequence
from typing import IO, Any

from airflow_provider_ciexport.exceptions import ExportConfigurationError, SegmentSourceError
from airflow_provider_ciexport.export.sources.base import Header, Row, check_unique_names, chunked
from airflow_provider_ciexport.export.sources.files import (
    CHUNK_BYTES,
    DEFAULT_MAX_COLUMNS,
    DEFAULT_MAX_LINE_LENGTH,
    FileSegmentSource,
)

_PARQUET_EXTRA = "pip install 'airflow-provider-ciexport[parquet]'"
#: Rows of a Parquet file decoded at once; text columns stay dictionary-encoded, and rows become
#: Python values a byte budget at a time.
_PARQUET_BATCH_ROWS = 1024
#: A Parquet row group's mapped columns may hold, uncompressed, at most this many times
#: ``max_line_length`` bytes (by default 256 MiB, four times :data:`CHUNK_BYTES`): Arrow decompresses
#: a column chunk's pages and a record batch whole, so a small zstd file of large repeated values can
#: otherwise take gigabytes. 1,000,000 rows of five ordinary profile columns take about 100 MB.
PARQUET_ROW_GROUP_LINES = 256
#: What a value of a nested Parquet column (a list's element) takes at least once decoded: its Arrow
#: offset or dictionary index (4 bytes) and validity, rounded up.
_NESTED_VALUE_BYTES = 8
#: What each value of a row counts toward a chunk's budget besides its text: a rough figure for its
#: Arrow slot and Python object, so that rows without text still end a chunk.
_VALUE_BYTES = 16
#: Parquet logical types of BYTE_ARRAY leaves read as dictionaries (``NONE``: plain binary).
_TEXT_LOGICAL_TYPES = frozenset({"STRING", "NONE", "ENUM", "JSON", "BSON"})


class ParquetSegmentSource(FileSegmentSource):
    """A Parquet file, read by record batches with pyarrow (the ``parquet`` extra).

    Before anything is decoded, the file's metadata is checked: a row group whose mapped columns
    take, uncompressed, more than ``max_line_length`` bytes a row on average, or more than
    :data:`PARQUET_ROW_GROUP_LINES` times ``max_line_length`` in all, fails naming the row group. Text,
    nested too, is decoded as dictionaries and counted at its decoded size; a row of more than
    ``max_line_length`` bytes of text fails naming the row.

    :raises ExportConfigurationError: if pyarrow is not installed.
    """

    kind = "Parquet"

    def __init__(
        self,
        path: str | os.PathLike[str],
        chunk_size: int = 5000,
        *,
        max_line_length: int = DEFAULT_MAX_LINE_LENGTH,
        max_columns: int = DEFAULT_MAX_COLUMNS,
    ) -> None:
        super().__init__(path, chunk_size, max_line_length=max_line_length, max_columns=max_columns)
        self._num_rows: int | None = None
        self._rows_per_batch = _PARQUET_BATCH_ROWS
        self._raw: IO[bytes] | None = None  # the open file, to read it again with dictionary columns
        try:
            import pyarrow.parquet  # noqa: F401
        except ImportError as err:
            raise ExportConfigurationError(
                f"Reading Parquet files needs pyarrow, which is not installed. Run {_PARQUET_EXTRA} "
                "on the workers, or export the segment as CSV or JSON Lines."
            ) from err

    @contextlib.contextmanager
    def _open_parquet(self) -> Iterator[Any]:
        import pyarrow as pa
        import pyarrow.parquet as pq

        with self._open_binary() as raw:
            self._raw = raw
            try:
                parquet = pq.ParquetFile(raw)
            except (pa.ArrowException, OSError) as err:
                raise SegmentSourceError(
                    f"The {self.description} is not a readable Parquet file ({type(err).__name__}). "
                    "Check the file, or write it again."
                ) from None
            try:
                yield parquet
            except (pa.ArrowException, ValueError, OverflowError) as err:
                # Arrow's and Python's conversion errors can quote a value ("year 60000 is out of range").
                raise SegmentSourceError(
                    f"The {self.description} could not be read ({type(err).__name__}). "
                    "Check the file, or write it again."
                ) from None
            finally:
                parquet.close()

    def _read(self) -> Generator[Any, None, None]:
        """The schema's column names, then the rows of its record batches as tuples of Python values.

        Only the wanted columns are decoded, at most ``_PARQUET_BATCH_ROWS`` rows at a time.
        """
        with self._open_parquet() as parquet:
            names = list(parquet.schema_arrow.names)
            if len(names) > self.max_columns:
                raise self._too_many("The schema")
            check_unique_names(names, f"The {self.description}")
            wanted = self._wanted
            columns = [name for name in names if wanted is None or wanted(name)]
            self._num_rows = int(parquet.metadata.num_rows)
            self._check_row_groups(parquet, columns)
            yield Header(columns, len(names), names)
            yield from chunked(self._rows(parquet, columns), self.chunk_size, CHUNK_BYTES)

    def _rows(self, parquet: Any, columns: list[str]) -> Iterator[tuple[Row, int]]:
        """The rows of ``columns``, each with its size in bytes.

        Text is decoded as dictionaries, in nested columns too: a dictionary-encoded value repeated on
        every row (a file of a few KB) is then held once, not once per row, until the rows are taken a
        few at a time.
        """
        import pyarrow.parquet as pq

        text = _text_leaves(parquet, columns)
        reader = (
            pq.ParquetFile(self._raw, metadata=parquet.metadata, read_dictionary=text) if text else parquet
        )
        batches = reader.iter_batches(batch_size=min(self.chunk_size, self._rows_per_batch), columns=columns)
        first_row = 0
        for batch in batches:
            if batch.num_rows:
                yield from _rows_with_sizes(batch, bool(columns), self._row_check(first_row))
                first_row += batch.num_rows

    def _row_check(self, first_row: int) -> Callable[[Any], None]:
        """A check that no row of a batch (starting at ``first_row``) holds more than
        ``max_line_length`` bytes of text: a nested column can repeat a long value many times."""
        import pyarrow.compute as pc

        def check(text: Any) -> None:
            if (pc.max(text).as_py() or 0) <= self.max_line_length:
                return
            offset, size = next(
                (i, size) for i, size in enumerate(text.to_pylist()) if size > self.max_line_length
            )
            raise SegmentSourceError(
                f"Row {first_row + offset + 1:,} of the {self.description} holds {size:,} bytes of text "
                f"in the mapped columns, more than {self.max_line_length:,} bytes (max_line_length), far "
                "more than a contact's row, so it was not read further: the file is damaged or not a "
                "segment. Fix the file; if rows this long are intended, raise the operator's "
                "max_line_length."
            )

        return check

    def _count(self) -> int | None:
        """The row count from the file's metadata, read when the file was opened."""
        return self._num_rows

    def _check_row_groups(self, parquet: Any, columns: list[str]) -> None:
        """Refuse, from the metadata alone, a row group whose mapped columns are too large to decode;
        else make record batches small enough that one of average rows holds about :data:`CHUNK_BYTES`."""
        metadata = parquet.metadata
        wanted = set(columns)
        # A nested column is stored as several leaf columns, each path starting with the column's name.
        leaves = [i for i, path in enumerate(parquet.reader.column_paths) if path[0] in wanted]
        limit = PARQUET_ROW_GROUP_LINES * self.max_line_length
        widest = 0
        for group in range(metadata.num_row_groups):
            row_group = metadata.row_group(group)
            rows = max(int(row_group.num_rows), 1)
            size = sum(_decoded_size(row_group.column(i), parquet.reader.column_paths[i]) for i in leaves)
            if size > limit or size > rows * self.max_line_length:
                raise SegmentSourceError(
                    f"Row group {group} of the {self.description} holds about {size:,} bytes of the mapped "
                    f"columns once decoded in {rows:,} rows, more than the {limit:,} bytes a row group "
                    f"or {self.max_line_length:,} bytes a row (max_line_length) it may hold, so it was "
                    "not decoded: the file is damaged or not a segment. Write the file with smaller "
                    "row groups (row_group_size) or smaller values; if this is intended, raise the "
                    "operator's max_line_length."
                )
            widest = max(widest, -(-size // rows))
        self._rows_per_batch = max(1, min(_PARQUET_BATCH_ROWS, CHUNK_BYTES // max(widest, 1)))


def _decoded_size(chunk: Any, path: Sequence[str]) -> int:
    """A column chunk's size once decoded, at least: its uncompressed bytes, and for a leaf of a nested
    column (a list's elements) :data:`_NESTED_VALUE_BYTES` a value, which run-length encoding can store
    in next to nothing (a million elements of one dictionary value in a few bytes)."""
    size = int(chunk.total_uncompressed_size)
    if len(path) > 1:
        size = max(size, int(chunk.num_values) * _NESTED_VALUE_BYTES)
    return size


def _text_leaves(parquet: Any, columns: Sequence[str]) -> list[str]:
    """The dotted paths of the text (string or plain binary) leaves of ``columns``, nested ones too."""
    wanted = set(columns)
    leaves = []
    for i, path in enumerate(parquet.reader.column_paths):
        column = parquet.schema.column(i)
        logical = column.logical_type.type
        if path[0] in wanted and column.physical_type == "BYTE_ARRAY" and logical in _TEXT_LOGICAL_TYPES:
            leaves.append(".".join(path))
    return leaves


def _is_text(kind: Any, pa: Any) -> bool:
    return bool(
        pa.types.is_string(kind)
        or pa.types.is_large_string(kind)
        or pa.types.is_binary(kind)
        or pa.types.is_large_binary(kind)
    )


def _text_bytes_per_row(array: Any) -> Any:
    """Each row's bytes of text in an Arrow array, nested values included (an Arrow int64 array with
    no nulls), or ``None`` when it holds no text."""
    import pyarrow as pa
    import pyarrow.compute as pc

    kind = array.type
    if pa.types.is_dictionary(kind):
        lengths = (
            pc.binary_length(array.dictionary).take(array.indices) if _is_text(kind.value_type, pa) else None
        )
    elif _is_text(kind, pa):
        lengths = pc.binary_length(array)
    elif pa.types.is_struct(kind):
        lengths = _row_wise_sum([_text_bytes_per_row(child) for child in array.flatten()])
    elif pa.types.is_list(kind) or pa.types.is_large_list(kind) or pa.types.is_map(kind):
        lengths = _sums_per_list(_text_bytes_per_row(array.values), array.offsets)
    elif pa.types.is_fixed_size_list(kind):
        size, start = kind.list_size, array.offset
        offsets = pa.array(range(start * size, (start + len(array) + 1) * size, size), pa.int64())
        lengths = _sums_per_list(_text_bytes_per_row(array.values), offsets)
    else:
        return None
    return None if lengths is None else pc.fill_null(lengths.cast(pa.int64()), 0)


def _row_wise_sum(columns: Sequence[Any]) -> Any:
    """The row-wise sum of per-row byte counts, ``None`` standing for none."""
    import pyarrow.compute as pc

    total = None
    for lengths in columns:
        if lengths is not None:
            total = lengths if total is None else pc.add(total, lengths)
    return total


def _sums_per_list(element_bytes: Any, offsets: Any) -> Any:
    """Per-list sums of ``element_bytes``, the lists given by ``offsets`` into the elements."""
    import pyarrow as pa
    import pyarrow.compute as pc

    if element_bytes is None:
        return None
    running = pa.concat_arrays([pa.array([0], pa.int64()), pc.cumulative_sum(element_bytes)])
    return pc.subtract(running.take(offsets[1:]), running.take(offsets[:-1]))


def _python_values(column: Any) -> list[Any]:
    """An Arrow column's Python values (a dictionary column decoded first: much faster)."""
    decode = getattr(column, "dictionary_decode", None)
    return (decode() if decode is not None else column).to_pylist()


def _rows_with_sizes(
    batch: Any, any_columns: bool, check: Callable[[Any], None]
) -> Iterator[tuple[Row, int]]:
    """The rows of an Arrow record batch with their sizes, turned into Python values a budget at a time;
    ``check`` sees each row's bytes of text (an Arrow array) before anything is decoded."""
    import pyarrow.compute as pc

    count = batch.num_rows
    per_row = _VALUE_BYTES * batch.num_columns
    if not any_columns:
        yield from (((), per_row) for _ in range(count))
        return
    text = _row_wise_sum([_text_bytes_per_row(column) for column in batch.columns])
    if text is not None:
        check(text)
    total = per_row * count + (0 if text is None else int(pc.sum(text).as_py() or 0))
    if text is None or total <= CHUNK_BYTES:
        # The usual case: the whole batch fits in the budget.
        size = -(-total // count)
        rows = zip(*map(_python_values, batch.columns), strict=True)
        yield from ((row, size) for row in rows)
        return
    sizes = [per_row + length for length in text.to_pylist()]
    for start, end in _slices_within_budget(sizes):
        piece = batch.slice(start, end - start)
        rows = zip(*map(_python_values, piece.columns), strict=True)
        yield from zip(rows, sizes[start:end], strict=True)


def _slices_within_budget(sizes: Sequence[int]) -> Iterator[tuple[int, int]]:
    """Consecutive ``(start, end)`` slices of rows of these sizes, each holding at most
    :data:`CHUNK_BYTES` (or one row, if larger)."""
    count = len(sizes)
    start = 0
    while start < count:
        end, held = start, 0
        while end < count and (end == start or held + sizes[end] <= CHUNK_BYTES):
            held += sizes[end]
            end += 1
        yield start, end
        start = end
