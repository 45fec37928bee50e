"""The CSV file source: delimiter detection, capped lines, the header and the wanted columns."""

from __future__ import annotations

import codecs
import contextlib
import csv
import io
import logging
import os
from collections.abc import Generator, Iterator
from itertools import chain
from typing import IO, Any

from airflow_provider_ciexport.exceptions import SegmentSourceError
from airflow_provider_ciexport.export.sources.base import (
    Header,
    Row,
    check_unique_names,
    chunked,
    column_picker,
)
from airflow_provider_ciexport.export.sources.files import (
    CHUNK_BYTES,
    DEFAULT_MAX_COLUMNS,
    DEFAULT_MAX_LINE_LENGTH,
    FileSegmentSource,
)

log = logging.getLogger(__name__)

#: Delimiters a CSV file's header line is searched for, the first winning a tie.
CSV_DELIMITERS = (",", ";", "\t", "|")


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

    def _delimiter_of(self, header: str) -> str:
        """The delimiter given, or else the one the header line holds most often outside quotes."""
        if self.delimiter is not None:
            return self.delimiter
        outside = "".join(header.split(self.quotechar)[::2])
        counts = {d: outside.count(d) for d in CSV_DELIMITERS}
        best = max(CSV_DELIMITERS, key=counts.__getitem__)  # the first of a tie: a comma
        return best if counts[best] else ","

    @contextlib.contextmanager
    def _open_csv_reader(self) -> Iterator[Iterator[list[str]]]:
        encoding = "utf-8-sig" if self._utf8 else self.encoding
        with self._open_binary() as raw:
            text = io.TextIOWrapper(raw, encoding=encoding, newline="")
            reader: Any = None
            try:
                lines = self._lines(text)
                header = next(lines, "")
                delimiter = self.used_delimiter = self._delimiter_of(header)
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
        with self._open_csv_reader() as reader:
            header = next(reader, [])
            if len(header) > self.max_columns:
                raise self._too_many("Line 1 (the header)")
            names = [name.strip() or f"column_{i}" for i, name in enumerate(header, start=1)]
            del header
            check_unique_names(names, f"The header of the {self.description}")
            wanted = self._wanted
            keep = [i for i, name in enumerate(names) if wanted is None or wanted(name)]
            yield Header([names[i] for i in keep], len(names), None)
            del names
            yield from chunked(self._rows(reader, keep), self.chunk_size, CHUNK_BYTES)

    def _rows(self, reader: Any, keep: list[int]) -> Iterator[tuple[Row, int]]:
        """The columns ``keep`` of each row (``None`` where a row is short), with the characters read for it."""
        limit = self.max_columns
        need = keep[-1] + 1 if keep else 0
        pick = column_picker(keep)
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
