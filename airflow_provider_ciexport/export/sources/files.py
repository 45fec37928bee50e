"""What the file sources share: opening a local or object-storage file, gzip, the size limits and their errors."""

from __future__ import annotations

import contextlib
import gzip
import os
import zlib
from collections.abc import Iterator
from typing import IO

from airflow_provider_ciexport.exceptions import SegmentSourceError
from airflow_provider_ciexport.export.sources.base import SegmentSource

_GZIP_MAGIC = b"\x1f\x8b"
#: The longest line of a CSV or JSON Lines file read by default: a contact's row is a few hundred
#: characters; this much is still read in flat memory.
DEFAULT_MAX_LINE_LENGTH = 1024 * 1024
#: The most columns (CSV) or keys (JSON Lines objects, a Parquet schema) a file may have by default: a
#: segment has tens; a hostile file's million-comma header would make every row that wide.
DEFAULT_MAX_COLUMNS = 10_000
#: About the most a chunk of file rows holds, in bytes (measured from the lines read): a chunk ends at
#: ``chunk_size`` rows or at this many bytes, whichever comes first.
CHUNK_BYTES = 64 * 1024 * 1024


def _file_error_text(err: BaseException) -> str:
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


def location_without_credentials(location: str) -> str:
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
    #: What ``max_line_length`` counts.
    _line_unit = "characters"

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
                    f"Cannot open the {self.description} at {location_without_credentials(self.path)!r}: {_file_error_text(err)}. "
                    "Check that the path exists and this worker may read it."
                ) from None
            if compressed:
                raw = stack.enter_context(gzip.GzipFile(fileobj=raw, mode="rb"))  # type: ignore[arg-type]
            try:
                yield raw
            except (OSError, EOFError, zlib.error) as err:
                raise SegmentSourceError(
                    f"The {self.description} could not be read ({_file_error_text(err)}). Check "
                    "that the file is complete (and really gzip-compressed if it is named .gz)."
                ) from None

    def _not_utf8(self, line_no: int, offset: int, hint: str = "") -> SegmentSourceError:
        return SegmentSourceError(
            f"The {self.description} is not valid UTF-8: line {line_no}, byte {offset} of the "
            f"(decompressed) file. Re-encode it as UTF-8 (e.g. `iconv -f latin1 -t utf-8`) and run again"
            f"{hint}."
        )

    def _too_long(self, line_no: int, what: str = "is longer than") -> SegmentSourceError:
        return SegmentSourceError(
            f"Line {line_no} of the {self.description} {what} {self.max_line_length:,} {self._line_unit} "
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
