"""Groups serialised contacts into request bodies that respect a destination's count and size limits."""

from __future__ import annotations

from dataclasses import dataclass

from airflow_provider_ciexport.exceptions import ExportConfigurationError


@dataclass(frozen=True)
class Batch:
    """One import request body, ready to send.

    :param number: 1-based position in the order batches were completed.
    :param contacts: how many contacts the body holds.
    :param body: the exact request body, ``prefix + b",".join(items) + suffix``.
    """

    number: int
    contacts: int
    body: bytes


class Batcher:
    """Packs already-serialised items into bodies of at most ``max_contacts`` items each.

    A body is always *strictly shorter* than ``max_bytes``: destinations document their limit as
    "less than N bytes", and staying one byte under never hurts. Sizes are tracked incrementally, so
    adding an item is O(1) and each body is joined exactly once.

    :param max_contacts: the most items one body may hold.
    :param max_bytes: every body's length is strictly below this.
    :param prefix: bytes before the first item, e.g. ``b'{"contacts":['``.
    :param suffix: bytes after the last item, e.g. ``b']}'``.
    """

    def __init__(self, *, max_contacts: int, max_bytes: int, prefix: bytes, suffix: bytes) -> None:
        if max_contacts < 1:
            raise ExportConfigurationError(
                f"A batch must be allowed at least 1 contact, got max_contacts={max_contacts}. "
                "Use a positive batch size."
            )
        if max_bytes <= len(prefix) + len(suffix) + 1:
            raise ExportConfigurationError(
                f"max_bytes={max_bytes} leaves no room for a contact between the "
                f"{len(prefix) + len(suffix)} bytes of request envelope. Use a larger byte limit."
            )
        self.max_contacts = max_contacts
        self.max_bytes = max_bytes
        self.prefix = prefix
        self.suffix = suffix
        self._envelope = len(prefix) + len(suffix)
        self._items: list[bytes] = []
        # Length the body would have right now (meaningful only while there are items).
        self._size = self._envelope
        self._number = 0

    @property
    def pending(self) -> int:
        """Items added but not yet returned in a batch."""
        return len(self._items)

    def fits_alone(self, item: bytes) -> bool:
        """Whether ``item`` can be sent at all: a body holding only it is under ``max_bytes``.

        :param item: one serialised contact.
        """
        return self._envelope + len(item) < self.max_bytes

    def add(self, item: bytes) -> Batch | None:
        """Add one item; return a batch when one is complete.

        The returned batch is the current one when ``item`` would push it to ``max_bytes`` (``item``
        then starts the next batch), or the batch ``item`` filled up to ``max_contacts``.

        :param item: one serialised contact; check :meth:`fits_alone` first.
        :raises ValueError: if ``item`` cannot fit in any body.
        """
        size = len(item)
        if self._envelope + size >= self.max_bytes:
            raise ValueError(
                f"An item of {size} bytes cannot fit in a body under {self.max_bytes} bytes; "
                "check fits_alone() before add()."
            )
        items = self._items
        done: Batch | None = None
        if items and self._size + 1 + size >= self.max_bytes:
            done = self._complete()
            items = self._items
        if items:
            self._size += 1 + size
        else:
            self._size = self._envelope + size
        items.append(item)
        if len(items) >= self.max_contacts:
            # Cannot collide with ``done``: a size-completed batch leaves exactly one item here, and
            # with max_contacts == 1 the list is always empty on entry so no size completion happens.
            return self._complete()
        return done

    def flush(self) -> Batch | None:
        """Return the last, partial batch, or ``None`` if no items are pending."""
        if not self._items:
            return None
        return self._complete()

    def _complete(self) -> Batch:
        items = self._items
        self._number += 1
        batch = Batch(
            number=self._number, contacts=len(items), body=self.prefix + b",".join(items) + self.suffix
        )
        self._items = []
        self._size = self._envelope
        return batch
