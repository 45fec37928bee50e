"""The JSON Lines file source: one object a line, its keys from the first chunk."""

from __future__ import annotations

import json
from collections.abc import Callable, Generator, Iterator
from itertools import chain
from typing import IO, Any

from airflow_provider_ciexport.exceptions import SegmentSourceError
from airflow_provider_ciexport.export.sources.base import Header, chunked
from airflow_provider_ciexport.export.sources.files import CHUNK_BYTES, FileSegmentSource


class JsonLinesSegmentSource(FileSegmentSource):
    """A JSON Lines file: one JSON object per line, UTF-8; blank lines are skipped.

    The columns are the union of the keys of the first chunk's objects (``chunk_size`` objects, or
    fewer when their lines add up to :data:`CHUNK_BYTES`), in first-seen order. A key that first
    appears after them is ignored; a key missing from a row reads as ``None``. When read for some
    columns only, each object keeps just those keys as soon as it is parsed.
    """

    kind = "JSON Lines"
    _unit = "keys"
    _line_unit = "bytes"

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
                first.append((obj if wanted is None else _with_wanted_keys(obj, wanted), nbytes))
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
            yield from chunked(chain(head, rest), size, CHUNK_BYTES)


def _with_wanted_keys(obj: dict[str, Any], wanted: Callable[[str], bool]) -> dict[str, Any]:
    """The object with only its wanted keys."""
    return {key: value for key, value in obj.items() if wanted(key)}
