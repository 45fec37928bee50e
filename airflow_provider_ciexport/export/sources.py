"""Segment sources: stream the rows of a SQL query, a file (CSV, JSON Lines, Parquet) or in-memory records.

A source is read once (:meth:`SegmentSource.read`): its column names come first, from the same pass,
then its rows as tuples in column order, ``chunk_size`` at a time, without ever holding the whole
segment in memory. A second read would cost another warehouse scan and could disagree with the first.
"""

from __future__ import annotations

import codecs
import contextlib
import csv
import gzip
import io
import json
import logging
import os
import zlib
from abc import ABC, abstractmethod
from collections.abc import Callable, Generator, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from itertools import chain
from operator import itemgetter
from types import TracebackType
from typing import IO, TYPE_CHECKING, Any

from airflow_provider_ciexport.core.contacts import column_key
from airflow_provider_ciexport.core.redaction import driver_error, looks_like_a_header
from airflow_provider_ciexport.exceptions import ExportConfigurationError, SegmentSourceError

if TYPE_CHECKING:
    from airflow.providers.common.sql.hooks.sql import DbApiHook

Row = tuple[Any, ...]

log = logging.getLogger(__name__)

_GZIP_MAGIC = b"\x1f\x8b"
_FORMATS = {
    "csv": "csv",
    "jsonl": "jsonl",
    "ndjson": "jsonl",
    "json": "jsonl",
    "parquet": "parquet",
    "pq": "parquet",
}
_FORMAT_NAMES = {"csv": "CSV", "jsonl": "JSON Lines", "parquet": "Parquet"}
_PARQUET_EXTRA = "pip install 'airflow-provider-ciexport[parquet]'"
#: The longest line of a CSV or JSON Lines file read by default: a contact's row is a few hundred
#: characters; this much is still read in flat memory.
DEFAULT_MAX_LINE_LENGTH = 1024 * 1024
#: The most columns (CSV) or keys (JSON Lines objects, a Parquet schema) a file may have by default: a
#: segment has tens; a hostile file's million-comma header would make every row that wide.
DEFAULT_MAX_COLUMNS = 10_000
#: About the most a chunk of file rows holds, in bytes (measured from the lines read): a chunk ends at
#: ``chunk_size`` rows or at this many bytes, whichever comes first.
CHUNK_BYTES = 64 * 1024 * 1024
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
#: Parquet logical types of BYTE_ARRAY leaves read as dictionaries (``NONE``: plain binary).
_TEXT_LOGICAL_TYPES = frozenset({"STRING", "NONE", "ENUM", "JSON", "BSON"})
#: Delimiters a CSV file's header line is searched for, the first winning a tie.
CSV_DELIMITERS = (",", ";", "\t", "|")
#: What ``csv_options`` may set.
CSV_OPTIONS = ("delimiter", "quotechar", "encoding")
_DRIVER_TEXT_HIDDEN = "(The driver's own message is not shown: it can quote row values.)"


@dataclass(frozen=True)
class Header:
    """What a file source's read yields first.

    :param columns: the columns its rows hold, in row order (only the wanted ones, if asked).
    :param width: how many columns the source has.
    :param names: all its column names when they are known to be names, ``None`` when they may be a
        data row (a CSV file's first line).
    """

    columns: list[str]
    width: int
    names: list[str] | None


class SegmentRows:
    """One pass over a segment: its column names, then its rows in chunks. Close it (or use ``with``).

    :param columns: the column names of the rows, in row order.
    :param chunks: the rows as tuples in ``columns`` order, at most ``chunk_size`` per list.
    :param count: the number of rows when the source knows it without reading them (in-memory
        records, a Parquet file's metadata), else ``None``.
    :param width: how many columns the source has (more than ``columns`` when only the wanted ones
        are kept); by default ``len(columns)``.
    :param names: all the source's column names when known to be names, ``None`` when they may be
        data; by default ``columns``.
    """

    def __init__(
        self,
        columns: list[str],
        chunks: Iterator[list[Row]],
        count: int | None = None,
        *,
        width: int | None = None,
        names: list[str] | tuple[()] | None = (),
    ) -> None:
        self.columns = columns
        self.count = count
        self.width = len(columns) if width is None else width
        self.names: list[str] | None = list(columns) if isinstance(names, tuple) else names
        self._chunks = chunks

    def __iter__(self) -> Iterator[list[Row]]:
        return self._chunks

    def close(self) -> None:
        """Release the cursor or file, even in the middle of the rows."""
        close = getattr(self._chunks, "close", None)
        if close is not None:
            close()

    def __enter__(self) -> SegmentRows:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()


class SegmentSource(ABC):
    """Where a segment's rows come from.

    ``description`` says what the source is for logs and messages, without secrets or personal data
    (``"SQL query on conn 'profiles_db'"``, ``"CSV file vip.csv"``).
    """

    description: str
    _wanted: Callable[[str], bool] | None = None

    def read(self, wanted: Iterable[Any] | None = None) -> SegmentRows:
        """Open the source and read its column names; the rows follow from the same pass.

        :param wanted: the column names the rows are read for (``field_mapping``'s values): a file
            source keeps only the columns that match one exactly or ignoring case and surrounding
            spaces, as each row is read. ``None``: every column.
        :raises SegmentSourceError: if the source cannot be opened or its columns cannot be read.
        """
        self._wanted = None if wanted is None else _Wanted(wanted)
        generator = self._read()
        try:
            first = next(generator)
        except BaseException:
            generator.close()
            raise
        if isinstance(first, Header):
            return SegmentRows(first.columns, generator, self._count(), width=first.width, names=first.names)
        return SegmentRows(first, generator, self._count())

    @abstractmethod
    def _read(self) -> Generator[Any, None, None]:
        """Yield the column names (one ``list[str]``), then the rows in chunks (``list[Row]`` each)."""

    def _count(self) -> int | None:
        """The number of rows if known without reading them; called once :meth:`_read` has begun."""
        return None

    def __repr__(self) -> str:
        return f"<{type(self).__name__}: {self.description}>"


class _Wanted:
    """Whether a column is one of the wanted names, exactly or ignoring case and surrounding spaces."""

    def __init__(self, names: Iterable[Any]) -> None:
        # Not-a-string names are left to the mapping's own check, which says what is wrong.
        self.exact = frozenset(name for name in names if isinstance(name, str))
        self.loose = frozenset(map(column_key, self.exact))
        # JSON Lines asks for the same keys line after line; bounded, as a hostile file's keys are not.
        self._seen: dict[str, bool] = {}

    def __call__(self, name: str) -> bool:
        found = self._seen.get(name)
        if found is None:
            found = name in self.exact or column_key(name) in self.loose
            if len(self._seen) < 1024:
                self._seen[name] = found
        return found


def _picker(keep: Sequence[int]) -> Callable[[Sequence[Any]], Row]:
    """A function that takes the values at ``keep`` of a row at least ``keep[-1] + 1`` long, as a tuple."""
    if len(keep) > 1:
        return itemgetter(*keep)
    if keep:
        index = keep[0]
        return lambda row: (row[index],)
    return lambda row: ()


def _chunked(rows: Iterator[tuple[Row, int]], size: int, budget: int) -> Iterator[list[Row]]:
    """Rows (each with its size in bytes) in lists of at most ``size`` rows, a list ending once it
    holds ``budget`` bytes: a few huge rows never make a chunk of thousands."""
    while True:
        chunk: list[Row] = []
        held = 0
        for row, nbytes in rows:
            chunk.append(row)
            held += nbytes
            if len(chunk) >= size or held >= budget:
                break
        if not chunk:
            return
        yield chunk


def _check_unique(names: Sequence[str], where: str) -> None:
    seen: set[str] = set()
    for name in names:
        if name in seen:
            shown = (
                repr(name)
                if looks_like_a_header(names)
                else "name (not shown: the names look like data; is the first line a data row instead of a header row?)"
            )
            raise SegmentSourceError(
                f"{where} has the column {shown} more than once, so rows cannot be read by name. "
                "Rename or drop the duplicate column."
            )
        seen.add(name)


class SqlSegmentSource(SegmentSource):
    """The rows of a SQL query on any Airflow SQL connection (a ``DbApiHook``).

    Rows are read with ``cursor.execute`` and ``cursor.fetchmany(chunk_size)``. For PostgreSQL
    (psycopg2, psycopg) and MySQL (mysqlclient, PyMySQL) a server-side cursor is used, because their
    ordinary cursors load the whole result into memory on ``execute``.

    :param sql: the query; a trailing ``;`` is ignored.
    :param conn_id: the Airflow connection to run it on.
    :param chunk_size: rows per chunk.
    """

    def __init__(self, sql: str, conn_id: str, chunk_size: int = 5000) -> None:
        self.sql = sql.strip().rstrip(";").rstrip()
        self.conn_id = conn_id
        self.chunk_size = chunk_size
        self.description = f"SQL query on conn {conn_id!r}"
        self._hook: DbApiHook | None = None

    def _get_hook(self) -> DbApiHook:
        if self._hook is None:
            from airflow.providers.common.sql.hooks.sql import DbApiHook
            from airflow.sdk import BaseHook

            try:
                conn = BaseHook.get_connection(self.conn_id)
            except Exception as err:
                raise ExportConfigurationError(
                    f"The Airflow connection {self.conn_id!r} for the segment query could not be loaded "
                    f"({type(err).__name__}). Create it (UI, `airflow connections add` or an "
                    f"AIRFLOW_CONN_{self.conn_id.upper()} variable) or fix sql_conn_id."
                ) from err
            hook = conn.get_hook()
            if not isinstance(hook, DbApiHook):
                raise ExportConfigurationError(
                    f"Connection {self.conn_id!r} has type {conn.conn_type!r}, whose hook "
                    f"{type(hook).__name__} cannot run SQL. Use a SQL connection (postgres, mysql, "
                    "sqlite, ...) as sql_conn_id, or install its provider package."
                )
            self._hook = hook
        return self._hook

    def _failed(self, err: Exception) -> SegmentSourceError:
        # Raised `from None`: drivers quote row values in their messages, also in a chained traceback.
        return SegmentSourceError(
            f"The segment query failed on connection {self.conn_id!r}: {driver_error(err)}. "
            f"{_DRIVER_TEXT_HIDDEN} Fix the SQL (run it in a SQL client against the same database to "
            "see the driver's message)."
        )

    def get_db_hook(self) -> DbApiHook:
        """The SQL hook of ``conn_id`` (also used for lineage)."""
        return self._get_hook()

    @contextlib.contextmanager
    def _cursor(self) -> Iterator[Any]:
        hook = self._get_hook()
        with contextlib.ExitStack() as stack:
            try:
                conn = hook.get_conn()
                stack.callback(conn.close)
                cursor = _server_side_cursor(conn)
                if cursor is None:
                    cursor = conn.cursor()
                stack.callback(cursor.close)
            except Exception as err:
                raise SegmentSourceError(
                    f"Could not connect to the database of connection {self.conn_id!r} for the segment "
                    f"query: {driver_error(err)}. {_DRIVER_TEXT_HIDDEN} Check the connection's host, "
                    "credentials and network access from this worker (e.g. with the connection's Test "
                    "button)."
                ) from None
            yield cursor

    def _names(self, cursor: Any) -> list[str]:
        names = [str(column[0]) for column in cursor.description or ()]
        _check_unique(names, f"The result of the {self.description}")
        return names

    def _read(self) -> Generator[Any, None, None]:
        """Run the query once: its columns from ``cursor.description``, its rows with ``fetchmany``."""
        size = self.chunk_size
        with self._cursor() as cursor:
            try:
                cursor.execute(self.sql)
                rows = cursor.fetchmany(size)
            except Exception as err:
                raise self._failed(err) from None
            # Read after the first fetch: server-side cursors only describe their columns then.
            yield self._names(cursor)
            while rows:
                # Most drivers return tuples already; others (sqlite3.Row, dict-like rows) are converted.
                yield rows if type(rows[0]) is tuple else _as_tuples(rows)
                try:
                    rows = cursor.fetchmany(size)
                except Exception as err:
                    raise self._failed(err) from None


def _as_tuples(rows: Sequence[Any]) -> list[Row]:
    return [tuple(row.values()) if isinstance(row, Mapping) else tuple(row) for row in rows]


def _server_side_cursor(conn: Any) -> Any | None:
    """A cursor that streams results from the server, for drivers whose default cursor does not."""
    module = type(conn).__module__.split(".")[0]
    if module in ("psycopg2", "psycopg"):
        # Outside a transaction (autocommit) PostgreSQL only allows WITH HOLD cursors.
        return conn.cursor(name="ciexport_segment", withhold=bool(getattr(conn, "autocommit", False)))
    if module == "MySQLdb":
        import MySQLdb.cursors

        return conn.cursor(MySQLdb.cursors.SSCursor)
    if module == "pymysql":
        import pymysql.cursors

        return conn.cursor(pymysql.cursors.SSCursor)
    return None


def _os_error(err: BaseException) -> str:
    """What went wrong opening or reading a file, without anything read from it.

    ``BadGzipFile``'s message quotes the file's first bytes, so only fixed texts are shown: the
    operating system's ``strerror`` or a description of the compression error.
    """
    if isinstance(err, gzip.BadGzipFile):
        return "BadGzipFile: not gzip-compressed data"
    if isinstance(err, EOFError):
        return "EOFError: the compressed data ends early"
    if isinstance(err, zlib.error):
        return "zlib.error: corrupt compressed data"
    strerror = getattr(err, "strerror", None)
    return (
        f"{type(err).__name__}: {strerror}" if isinstance(strerror, str) and strerror else type(err).__name__
    )


def _shown(location: str) -> str:
    """The location for messages, without any ``user:password@`` part of a URI."""
    scheme, sep, rest = location.partition("://")
    if sep and "@" in rest.split("/", 1)[0]:
        return f"{scheme}://{rest.split('@', 1)[1]}"
    return location


class FileSegmentSource(SegmentSource):
    """Common handling of file sources: local paths or object-storage URIs, optionally gzip-compressed.

    A path containing ``://`` is opened with ``airflow.sdk.ObjectStoragePath`` (``s3://``, ``gs://``,
    ``file://``, ...); anything else is a local path. Gzip is recognised from the ``.gz`` suffix or the
    gzip magic bytes.

    :param path: local path or URI.
    :param chunk_size: rows per chunk.
    :param max_line_length: the longest line (a CSV record) read, in characters (JSON Lines: bytes);
        a longer one fails before it is held in memory. Parquet: see :class:`ParquetSegmentSource`.
    :param max_columns: the most columns (CSV), keys (JSON Lines) or schema fields (Parquet) read; more
        fail, naming the line.

    A chunk also ends once its rows' lines add up to :data:`CHUNK_BYTES`.
    """

    kind = "file"
    _unit = "columns"

    def __init__(
        self,
        path: str | os.PathLike[str],
        chunk_size: int = 5000,
        *,
        max_line_length: int = DEFAULT_MAX_LINE_LENGTH,
        max_columns: int = DEFAULT_MAX_COLUMNS,
    ) -> None:
        self.path = os.fspath(path)
        self.chunk_size = chunk_size
        self.max_line_length = max_line_length
        self.max_columns = max_columns
        self.name = self.path.rstrip("/").rsplit("/", 1)[-1]
        self.description = f"{self.kind} file {self.name}"

    @contextlib.contextmanager
    def _open_binary(self) -> Iterator[IO[bytes]]:
        """The file's (decompressed) bytes."""
        with contextlib.ExitStack() as stack:
            try:
                if "://" in self.path:
                    from airflow.sdk import ObjectStoragePath

                    raw: IO[bytes] = stack.enter_context(ObjectStoragePath(self.path).open("rb"))
                else:
                    raw = stack.enter_context(open(self.path, "rb"))
                compressed = self.path.endswith(".gz")
                if not compressed and raw.seekable():
                    compressed = raw.read(2) == _GZIP_MAGIC
                    raw.seek(0)
            except Exception as err:
                raise SegmentSourceError(
                    f"Cannot open the {self.description} at {_shown(self.path)!r}: {_os_error(err)}. "
                    "Check that the path exists and this worker may read it."
                ) from None
            if compressed:
                raw = stack.enter_context(gzip.GzipFile(fileobj=raw, mode="rb"))  # type: ignore[arg-type]
            try:
                yield raw
            except (OSError, EOFError, zlib.error) as err:
                raise SegmentSourceError(
                    f"The {self.description} could not be read ({_os_error(err)}). Check "
                    "that the file is complete (and really gzip-compressed if it is named .gz)."
                ) from None

    def _not_utf8(self, line_no: int, offset: int, hint: str = "") -> SegmentSourceError:
        return SegmentSourceError(
            f"The {self.description} is not valid UTF-8: line {line_no}, byte {offset} of the "
            f"(decompressed) file. Re-encode it as UTF-8 (e.g. `iconv -f latin1 -t utf-8`) and run again"
            f"{hint}."
        )

    def _too_long(self, line_no: int, what: str = "is longer than") -> SegmentSourceError:
        unit = "bytes" if isinstance(self, JsonLinesSegmentSource) else "characters"
        return SegmentSourceError(
            f"Line {line_no} of the {self.description} {what} {self.max_line_length:,} {unit} "
            "(max_line_length), far more than a contact's row, so it was not read further: the file is "
            "damaged or not a segment. Fix the file; if rows this long are intended, raise the "
            "operator's max_line_length."
        )

    def _too_many(self, where: str) -> SegmentSourceError:
        return SegmentSourceError(
            f"{where} of the {self.description} has more than {self.max_columns:,} {self._unit} "
            "(max_columns), far more than a segment's, so it was not read further: the file is damaged or "
            "not a segment. Fix the file; if this many are intended, raise the operator's max_columns."
        )


class CsvSegmentSource(FileSegmentSource):
    """A CSV file with a header row, read with the ``csv`` module, UTF-8 by default (a BOM is skipped).

    The delimiter is the one given, or else the one of ``,`` ``;`` tab ``|`` that the header line
    holds most often outside quotes (a comma when it holds none): spreadsheets set to a European
    locale save with ``;``. Header names are stripped of surrounding spaces; empty header cells are
    named ``column_<n>`` (1-based position) so that trailing commas do not produce duplicate names.
    Blank lines are skipped; rows shorter than the header are padded with ``None`` and longer rows
    are cut to the header's width. Values are strings. When read for some columns only, each row keeps
    just those as it is parsed. The header's names are never shown in messages: a file without a
    header row would show a contact's values.

    :param delimiter: the field delimiter (one character), or ``None`` to detect it.
    :param quotechar: the quote character (one character).
    :param encoding: the file's text encoding (a Python codec name); UTF-8 skips a BOM.
    """

    kind = "CSV"

    def __init__(
        self,
        path: str | os.PathLike[str],
        chunk_size: int = 5000,
        *,
        delimiter: str | None = None,
        quotechar: str = '"',
        encoding: str = "utf-8",
        max_line_length: int = DEFAULT_MAX_LINE_LENGTH,
        max_columns: int = DEFAULT_MAX_COLUMNS,
    ) -> None:
        super().__init__(path, chunk_size, max_line_length=max_line_length, max_columns=max_columns)
        self._consumed = 0  # characters read so far, for the chunks' byte budget
        self.delimiter = delimiter
        self.quotechar = quotechar
        self.encoding = encoding
        #: The delimiter used by the last read, given or detected.
        self.used_delimiter: str | None = None

    @property
    def _utf8(self) -> bool:
        return codecs.lookup(self.encoding).name in ("utf-8", "utf-8-sig")

    def _lines(self, text: IO[str]) -> Iterator[str]:
        """The file's lines, each at most ``max_line_length`` characters, and so each record: a quoted
        value that stays open line after line is counted as one line."""
        limit = self.max_line_length
        quote = self.quotechar
        readline = text.readline
        line_no = opened = record = 0
        inside = False
        while line := readline(limit):
            line_no += 1
            if not inside:
                opened, record = line_no, 0
            record += len(line)
            self._consumed += len(line)
            if quote in line and line.count(quote) & 1:
                inside = not inside
            if record >= limit and (inside or line[-1] not in "\r\n"):
                if opened < line_no:
                    raise self._too_long(opened, "opens a quoted value still open after")
                raise self._too_long(line_no)
            yield line

    def _detect(self, header: str) -> str:
        if self.delimiter is not None:
            return self.delimiter
        outside = "".join(header.split(self.quotechar)[::2])
        counts = {d: outside.count(d) for d in CSV_DELIMITERS}
        best = max(CSV_DELIMITERS, key=counts.__getitem__)  # the first of a tie: a comma
        return best if counts[best] else ","

    @contextlib.contextmanager
    def _reader(self) -> Iterator[Iterator[list[str]]]:
        encoding = "utf-8-sig" if self._utf8 else self.encoding
        with self._open_binary() as raw:
            text = io.TextIOWrapper(raw, encoding=encoding, newline="")
            reader: Any = None
            try:
                lines = self._lines(text)
                header = next(lines, "")
                delimiter = self.used_delimiter = self._detect(header)
                if self.delimiter is None and delimiter != ",":
                    log.info(
                        "Reading the %s with the delimiter %r, found in its header line.",
                        self.description,
                        delimiter,
                    )
                reader = csv.reader(chain([header], lines), delimiter=delimiter, quotechar=self.quotechar)
                yield reader
            except UnicodeDecodeError:
                raise self._locate_decode_error() from None
            except csv.Error as err:
                # The csv module's messages are fixed texts ("line contains NUL"), never the line.
                where = f"line {reader.line_num}" if reader is not None else "its first line"
                raise SegmentSourceError(
                    f"The {self.description} is not valid CSV at {where}: {err}. Fix the file (quotes, "
                    "line breaks inside fields, field size) or export it again."
                ) from None
            finally:
                text.detach()

    def _locate_decode_error(self) -> SegmentSourceError:
        hint = (
            "; or, if the file is in another encoding (Excel on Windows saves 'cp1252'), pass it as "
            "csv_options={'encoding': ...}"
        )
        if not self._utf8:
            return SegmentSourceError(
                f"The {self.description} is not valid {self.encoding} text. Check the encoding in "
                "csv_options (e.g. 'utf-8', 'cp1252', 'latin-1', 'utf-16') or re-encode the file."
            )
        # Decoding happens in large blocks, so the position the decoder reports is not the line. Find
        # the line again with a slow binary pass (only on this error path), a capped piece at a time.
        offset, line_no = 0, 1
        with self._open_binary() as raw:
            while piece := raw.readline(self.max_line_length):
                try:
                    piece.decode("utf-8")
                except UnicodeDecodeError as err:
                    # A character cut at the end of a capped piece is not an error.
                    cut = err.end == len(piece) and err.reason == "unexpected end of data"
                    if not (cut and not piece.endswith(b"\n")):
                        return self._not_utf8(line_no, offset + err.start, hint)
                offset += len(piece)
                line_no += piece.endswith(b"\n")
        return self._not_utf8(0, offset, hint)

    def _read(self) -> Generator[Any, None, None]:
        """The header row's names, stripped of surrounding spaces, then the data rows as tuples of strings."""
        with self._reader() as reader:
            header = next(reader, [])
            if len(header) > self.max_columns:
                raise self._too_many("Line 1 (the header)")
            names = [name.strip() or f"column_{i}" for i, name in enumerate(header, start=1)]
            del header
            _check_unique(names, f"The header of the {self.description}")
            wanted = self._wanted
            keep = [i for i, name in enumerate(names) if wanted is None or wanted(name)]
            yield Header([names[i] for i in keep], len(names), None)
            del names
            yield from _chunked(self._rows(reader, keep), self.chunk_size, CHUNK_BYTES)

    def _rows(self, reader: Any, keep: list[int]) -> Iterator[tuple[Row, int]]:
        """The columns ``keep`` of each row (``None`` where a row is short), with the characters read for it."""
        limit = self.max_columns
        need = keep[-1] + 1 if keep else 0
        pick = _picker(keep)
        before = self._consumed
        for row in reader:
            if not row:  # a blank line
                continue
            width = len(row)
            if width > limit:
                raise self._too_many(f"Line {reader.line_num}")
            values = pick(row) if width >= need else tuple(row[i] if i < width else None for i in keep)
            after = self._consumed
            yield values, after - before
            before = after


class JsonLinesSegmentSource(FileSegmentSource):
    """A JSON Lines file: one JSON object per line, UTF-8; blank lines are skipped.

    The columns are the union of the keys of the first chunk's objects (``chunk_size`` objects, or
    fewer when their lines add up to :data:`CHUNK_BYTES`), in first-seen order. A key that first
    appears after them is ignored; a key missing from a row reads as ``None``. When read for some
    columns only, each object keeps just those keys as soon as it is parsed.
    """

    kind = "JSON Lines"
    _unit = "keys"

    def _objects(self, raw: IO[bytes]) -> Iterator[tuple[dict[str, Any], int, int]]:
        """Each object with its line's length in bytes and its line number."""
        offset = line_no = 0
        limit = self.max_line_length
        readline = raw.readline
        # Read a capped piece at a time: a hostile file's one huge line is never held whole.
        while line := readline(limit):
            line_no += 1
            if len(line) >= limit and not line.endswith(b"\n"):
                raise self._too_long(line_no)
            start = offset
            offset += len(line)
            if line.isspace():
                continue
            try:
                obj = json.loads(line)
            except RecursionError:
                raise SegmentSourceError(
                    f"Line {line_no} of the {self.description} nests its values deeper than can be read "
                    "(RecursionError). A contact is one flat JSON object per line: fix the file."
                ) from None
            except UnicodeDecodeError as err:
                raise self._not_utf8(line_no, start + err.start) from None
            except ValueError as err:
                raise SegmentSourceError(
                    f"Line {line_no} of the {self.description} is not valid JSON "
                    f"({type(err).__name__} at column {getattr(err, 'colno', '?')}). Write one JSON "
                    "object per line (JSON Lines), not a JSON array or pretty-printed JSON."
                ) from None
            if type(obj) is not dict:
                raise SegmentSourceError(
                    f"Line {line_no} of the {self.description} is a JSON {type(obj).__name__}, not an "
                    "object. Write one JSON object per line (JSON Lines), not a JSON array."
                )
            if len(obj) > self.max_columns:
                raise self._too_many(f"Line {line_no}")
            yield obj, len(line), line_no

    def _read(self) -> Generator[Any, None, None]:
        """The union of the keys of the first chunk's objects, then the objects' values in that order."""
        size = self.chunk_size
        wanted = self._wanted
        with self._open_binary() as raw:
            objects = self._objects(raw)
            first: list[tuple[dict[str, Any], int]] = []
            keys: dict[str, None] = {}
            held = 0
            for obj, nbytes, line_no in objects:
                keys.update(dict.fromkeys(obj))
                if len(keys) > self.max_columns:
                    raise self._too_many(f"Line {line_no} (with the lines before it)")
                first.append((obj if wanted is None else _only(obj, wanted), nbytes))
                held += nbytes
                if len(first) >= size or held >= CHUNK_BYTES:
                    break
            names = list(keys)
            columns = names if wanted is None else [name for name in names if wanted(name)]
            yield Header(columns, len(names), names)
            del keys
            head = [(tuple(map(obj.get, columns)), nbytes) for obj, nbytes in first]
            del first
            # Later objects are transient: their values are taken as each line is parsed.
            rest = ((tuple(map(obj.get, columns)), nbytes) for obj, nbytes, _ in objects)
            yield from _chunked(chain(head, rest), size, CHUNK_BYTES)


def _only(obj: dict[str, Any], wanted: Callable[[str], bool]) -> dict[str, Any]:
    """The object with only its wanted keys."""
    return {key: value for key, value in obj.items() if wanted(key)}


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
        self._batch_rows = _PARQUET_BATCH_ROWS
        self._raw: IO[bytes] | None = None  # the open file, to read it again with dictionary columns
        try:
            import pyarrow.parquet  # noqa: F401
        except ImportError as err:
            raise ExportConfigurationError(
                f"Reading Parquet files needs pyarrow, which is not installed. Run {_PARQUET_EXTRA} "
                "on the workers, or export the segment as CSV or JSON Lines."
            ) from err

    @contextlib.contextmanager
    def _parquet(self) -> Iterator[Any]:
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
        with self._parquet() as parquet:
            names = list(parquet.schema_arrow.names)
            if len(names) > self.max_columns:
                raise self._too_many("The schema")
            _check_unique(names, f"The {self.description}")
            wanted = self._wanted
            columns = [name for name in names if wanted is None or wanted(name)]
            self._num_rows = int(parquet.metadata.num_rows)
            self._check_row_groups(parquet, columns)
            yield Header(columns, len(names), names)
            yield from _chunked(self._rows(parquet, columns), self.chunk_size, CHUNK_BYTES)

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
        batches = reader.iter_batches(batch_size=min(self.chunk_size, self._batch_rows), columns=columns)
        first_row = 0
        for batch in batches:
            if batch.num_rows:
                yield from _batch_rows(batch, bool(columns), self._row_check(first_row))
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
        self._batch_rows = max(1, min(_PARQUET_BATCH_ROWS, CHUNK_BYTES // max(widest, 1)))


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


def _text_bytes(array: Any) -> Any:
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
        lengths = _sum_rows([_text_bytes(child) for child in array.flatten()])
    elif pa.types.is_list(kind) or pa.types.is_large_list(kind) or pa.types.is_map(kind):
        lengths = _per_list(_text_bytes(array.values), array.offsets)
    elif pa.types.is_fixed_size_list(kind):
        size, start = kind.list_size, array.offset
        offsets = pa.array(range(start * size, (start + len(array) + 1) * size, size), pa.int64())
        lengths = _per_list(_text_bytes(array.values), offsets)
    else:
        return None
    return None if lengths is None else pc.fill_null(lengths.cast(pa.int64()), 0)


def _sum_rows(columns: Sequence[Any]) -> Any:
    """The row-wise sum of per-row byte counts, ``None`` standing for none."""
    import pyarrow.compute as pc

    total = None
    for lengths in columns:
        if lengths is not None:
            total = lengths if total is None else pc.add(total, lengths)
    return total


def _per_list(element_bytes: Any, offsets: Any) -> Any:
    """Per-list sums of ``element_bytes``, the lists given by ``offsets`` into the elements."""
    import pyarrow as pa
    import pyarrow.compute as pc

    if element_bytes is None:
        return None
    running = pa.concat_arrays([pa.array([0], pa.int64()), pc.cumulative_sum(element_bytes)])
    return pc.subtract(running.take(offsets[1:]), running.take(offsets[:-1]))


def _values(column: Any) -> list[Any]:
    """An Arrow column's Python values (a dictionary column decoded first: much faster)."""
    decode = getattr(column, "dictionary_decode", None)
    return (decode() if decode is not None else column).to_pylist()


def _batch_rows(batch: Any, any_columns: bool, check: Callable[[Any], None]) -> Iterator[tuple[Row, int]]:
    """The rows of an Arrow record batch with their sizes, turned into Python values a budget at a time;
    ``check`` sees each row's bytes of text (an Arrow array) before anything is decoded."""
    import pyarrow.compute as pc

    count = batch.num_rows
    per_row = 16 * batch.num_columns
    if not any_columns:
        yield from (((), per_row) for _ in range(count))
        return
    text = _sum_rows([_text_bytes(column) for column in batch.columns])
    if text is not None:
        check(text)
    total = per_row * count + (0 if text is None else int(pc.sum(text).as_py() or 0))
    if text is None or total <= CHUNK_BYTES:
        # The usual case: the whole batch fits in the budget.
        size = -(-total // count)
        rows = zip(*map(_values, batch.columns), strict=True)
        yield from ((row, size) for row in rows)
        return
    sizes = [per_row + length for length in text.to_pylist()]
    start = 0
    while start < count:
        end, held = start, 0
        while end < count and (end == start or held + sizes[end] <= CHUNK_BYTES):
            held += sizes[end]
            end += 1
        piece = batch.slice(start, end - start)
        rows = zip(*map(_values, piece.columns), strict=True)
        yield from zip(rows, sizes[start:end], strict=True)
        start = end


class RecordsSegmentSource(SegmentSource):
    """Rows given in memory as mappings (e.g. from XCom).

    The columns are the union of the keys of all records, in first-seen order; a missing key reads as
    ``None``.

    :param records: the rows.
    :param chunk_size: rows per chunk.
    :raises ExportConfigurationError: if a record is not a mapping.
    """

    def __init__(self, records: Sequence[Mapping[str, Any]], chunk_size: int = 5000) -> None:
        self.records = records
        self.chunk_size = chunk_size
        self.description = f"{len(records)} in-memory records"
        keys: dict[str, None] = {}
        for i, record in enumerate(records):
            if not isinstance(record, Mapping):
                raise ExportConfigurationError(
                    f"records[{i}] is a {type(record).__name__}, not a mapping. Pass records as a list "
                    "of dicts, one per contact."
                )
            keys.update(dict.fromkeys(record))
        self._columns = [str(key) for key in keys]
        self._keys = list(keys)

    def _read(self) -> Generator[Any, None, None]:
        """The union of the records' keys, then the records' values in that order."""
        yield list(self._columns)
        keys = self._keys
        size = self.chunk_size
        for start in range(0, len(self.records), size):
            yield [tuple(map(record.get, keys)) for record in self.records[start : start + size]]

    def _count(self) -> int:
        """The number of records."""
        return len(self.records)


def _file_format(path: str, file_format: str | None) -> str:
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
            f"Cannot tell the format of source_path {_shown(path)!r} from its extension. Name it .csv, "
            ".jsonl/.ndjson/.json or .parquet/.pq (.csv.gz and .jsonl.gz for gzip), or pass "
            "file_format='csv', 'jsonl' or 'parquet'."
        )
    return fmt


def _csv_dialect(options: Mapping[str, Any]) -> dict[str, Any]:
    """``csv_options`` checked: a one-character delimiter and quote character, a known encoding."""
    if not isinstance(options, Mapping):
        raise ExportConfigurationError(
            f"csv_options must be a dict, e.g. {{'delimiter': ';'}}, not {type(options).__name__}."
        )
    unknown = [key for key in options if key not in CSV_OPTIONS]
    if unknown:
        raise ExportConfigurationError(
            f"csv_options has {', '.join(map(repr, unknown))}; it takes {', '.join(map(repr, CSV_OPTIONS))}."
        )
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
    encoding = options.get("encoding")
    if encoding is not None:
        try:
            codecs.lookup(str(encoding))
        except LookupError:
            raise ExportConfigurationError(
                f"csv_options encoding {encoding!r} is not a known encoding. Use e.g. 'utf-8', 'cp1252', "
                "'latin-1' or 'utf-16'."
            ) from None
        dialect["encoding"] = str(encoding)
    return dialect


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
    given = [
        name
        for name, value in (("sql", sql), ("source_path", source_path), ("records", records))
        if value is not None
    ]
    if not given:
        raise ExportConfigurationError(
            "No segment source given. Pass one of sql (with sql_conn_id), source_path or records."
        )
    if len(given) > 1:
        raise ExportConfigurationError(
            f"Several segment sources given ({', '.join(given)}). Pass exactly one of sql, "
            "source_path or records."
        )
    if isinstance(chunk_size, bool) or not isinstance(chunk_size, int) or chunk_size < 1:
        raise ExportConfigurationError(
            f"chunk_size must be a positive integer, got {chunk_size!r}. Use e.g. 5000."
        )
    if isinstance(max_line_length, bool) or not isinstance(max_line_length, int) or max_line_length < 2:
        raise ExportConfigurationError(
            f"max_line_length must be a whole number of characters, got {max_line_length!r}. The default "
            f"is {DEFAULT_MAX_LINE_LENGTH:,}."
        )
    if isinstance(max_columns, bool) or not isinstance(max_columns, int) or max_columns < 1:
        raise ExportConfigurationError(
            f"max_columns must be a positive whole number, got {max_columns!r}. The default is "
            f"{DEFAULT_MAX_COLUMNS:,}."
        )
    if csv_options is not None and (source_path is None or _file_format(source_path, file_format) != "csv"):
        raise ExportConfigurationError(
            "csv_options is given but the segment is not a CSV file. Drop csv_options, or point "
            "source_path at a .csv file (or pass file_format='csv')."
        )
    if sql is not None:
        if not sql.strip():
            raise ExportConfigurationError("sql is empty. Pass the query that selects the segment.")
        if not sql_conn_id:
            raise ExportConfigurationError(
                "sql is given without sql_conn_id. Pass the id of the Airflow connection to run it on."
            )
        return SqlSegmentSource(sql, sql_conn_id, chunk_size)
    if source_path is not None:
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
        return ParquetSegmentSource(
            path, chunk_size, max_line_length=max_line_length, max_columns=max_columns
        )
    assert records is not None
    if isinstance(records, (str, bytes)) or not isinstance(records, Sequence):
        raise ExportConfigurationError(
            f"records must be a list of dicts, got {type(records).__name__}. Pass one dict per contact."
        )
    return RecordsSegmentSource(records, chunk_size)
