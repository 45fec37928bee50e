"""What a retried export may skip: the batches an earlier try saw confirmed (see :class:`Checkpoint`)."""

from __future__ import annotations

import hashlib
import json
import logging
import threading
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any, NamedTuple, Protocol

from airflow_provider_ciexport.export.batcher import Batch
from airflow_provider_ciexport.export.destination import Destination

log = logging.getLogger(__name__)

#: The most batches, and body bytes, one saved range covers: a retry holds a range's batches in
#: memory until it has seen them all and can compare the range's digest.
MAX_RANGE_BATCHES = 500
MAX_RANGE_BYTES = 16_000_000


class ProgressStore(Protocol):
    """Somewhere a retried task (on any worker) can read what an earlier try confirmed."""

    def load(self) -> Any:
        """The saved document, or ``None``."""

    def save(self, document: Any) -> None:
        """Replace the saved document."""

    def delete(self) -> None:
        """Forget the saved document."""


def batch_digest(batch: Batch) -> str:
    """A short fingerprint of a batch's exact body."""
    return hashlib.blake2b(batch.body, digest_size=8).hexdigest()


def range_digest(digests: Iterable[str]) -> str:
    """The fingerprint of consecutive batches: of their bodies' digests, in order."""
    return hashlib.blake2b("".join(digests).encode(), digest_size=16).hexdigest()


class ConfirmedRange(NamedTuple):
    """Batches ``first``..``last``, all confirmed: their body bytes (-1: unknown), the digest of their
    bodies' digests, and their summed counts. Saved as a JSON list in this order."""

    first: int
    last: int
    size: int
    digest: str
    accepted: int
    rejected: int


@dataclass
class Admitted:
    """A batch the checkpoint lets through: to send, or (``resumed`` set) confirmed by an earlier try.

    :param payload: what the caller gave with the batch (its sync entries), handed back unchanged.
    :param resumed: ``(accepted, rejected)`` to count for a batch not sent again, else ``None``.
    :param accepted_all: for a resumed batch, whether its range had no rejected contact.
    """

    batch: Batch
    digest: str
    payload: Any
    resumed: tuple[int, int] | None = None
    accepted_all: bool = True


def _read_ranges(saved: Mapping[str, Any]) -> list[ConfirmedRange]:
    """The ranges of a saved document; the format before ranges (one digest per batch) reads as
    one-batch ranges, which a retry checks exactly as before."""
    if "ranges" in saved:
        return [
            ConfirmedRange(int(r[0]), int(r[1]), int(r[2]), str(r[3]), int(r[4]), int(r[5]))
            for r in saved["ranges"]
        ]
    done = saved.get("done") or {}
    return [
        ConfirmedRange(int(k), int(k), -1, range_digest([str(v[0])]), int(v[1]), int(v[2]))
        for k, v in done.items()
    ]


class Checkpoint:
    """The batches of this export that the destination confirmed, saved so a retry skips them.

    The saved document stays small whatever the segment's size: runs of consecutive confirmed
    batches (at most :data:`MAX_RANGE_BATCHES` batches and :data:`MAX_RANGE_BYTES` bytes each), each
    with one digest of its batches' bodies and its summed counts. A retry holds back the batches of
    a saved range until it has built them all, and skips them only if together they have the same
    digest (so each the same body); otherwise it sends every one of them. A segment that changed in
    between is therefore simply sent again (imports match contacts by email, so a resent contact is
    updated, never duplicated). Saves happen at most every ``min_interval_s`` and only when
    something changed; :meth:`flush` at the end of a try saves the rest.
    """

    def __init__(self, store: ProgressStore | None, fingerprint: str, min_interval_s: float = 30.0) -> None:
        self.store = store
        self.fingerprint = fingerprint
        self.min_interval_s = min_interval_s
        saved = store.load() if store is not None else None
        ranges: list[ConfirmedRange] = []
        if isinstance(saved, dict) and saved.get("fingerprint") == fingerprint:
            ranges = _read_ranges(saved)
        elif saved is not None:
            log.info("Saved progress belongs to a different export configuration; starting over.")
        #: Ranges an earlier try confirmed that this try has not reached yet, by first batch.
        self.resumable: dict[int, ConfirmedRange] = {r.first: r for r in ranges}
        #: Batches this try knows confirmed: number -> (digest, body bytes, accepted, rejected).
        self.done: dict[int, tuple[str, int, int, int]] = {}
        self._loaded = saved is not None
        self._holding: ConfirmedRange | None = None
        self._held: list[Admitted] = []
        self._held_bytes = 0
        self._lock = threading.Lock()
        self._write_lock = threading.Lock()
        self._dirty = False
        self._last_save = time.monotonic()

    @property
    def resumable_batches(self) -> int:
        """How many batches the earlier tries' saved ranges cover."""
        return sum(r.last - r.first + 1 for r in self.resumable.values())

    # -- the retry's side: batches in order, held while their range is checked -------------------

    def admit(self, batch: Batch, digest: str, payload: Any = None) -> list[Admitted]:
        """Take the next batch (in batch order); return those now decided, in order: usually just this
        one to send, nothing while a saved range is still being built, a whole range at its end."""
        item = Admitted(batch, digest, payload)
        if self._holding is None:
            saved = self.resumable.get(batch.number)
            if saved is None:
                return [item]
            self._holding = saved
        held = self._holding
        self._held.append(item)
        self._held_bytes += len(batch.body)
        if held.size >= 0 and self._held_bytes > held.size:
            return self._settle(matched=False)  # already more bytes than were confirmed
        if batch.number < held.last:
            return []
        return self._settle(matched=self._held_bytes == held.size or held.size < 0)

    def release(self) -> list[Admitted]:
        """The batches still held once batching ended (the segment ended inside a saved range): to send."""
        return self._settle(matched=False) if self._holding is not None else []

    def _settle(self, matched: bool) -> list[Admitted]:
        saved, items = self._holding, self._held
        assert saved is not None
        self._holding, self._held, self._held_bytes = None, [], 0
        matched = matched and len(items) == saved.last - saved.first + 1
        matched = matched and range_digest(i.digest for i in items) == saved.digest
        # One step, so that no save finds these batches both in the saved range and in `done`.
        with self._lock:
            del self.resumable[saved.first]
            self._dirty = True
            for n, item in enumerate(items if matched else ()):
                # The range's counts go to its first batch: the report needs only their sum.
                item.resumed = (saved.accepted, saved.rejected) if n == 0 else (0, 0)
                item.accepted_all = saved.rejected == 0
                self.done[item.batch.number] = (item.digest, len(item.batch.body), *item.resumed)
        return items

    # -- this try's confirmations ----------------------------------------------------------------

    def confirm(self, batch: Batch, digest: str, accepted: int, rejected: int) -> None:
        """Note a confirmed batch; save if the last save is ``min_interval_s`` old."""
        self._note(batch, digest, accepted, rejected)
        if time.monotonic() - self._last_save >= self.min_interval_s:
            self.flush()

    def _note(self, batch: Batch, digest: str, accepted: int, rejected: int) -> None:
        with self._lock:
            self.done[batch.number] = (digest, len(batch.body), accepted, rejected)
            self._dirty = True

    def document(self) -> dict[str, Any]:
        """What is saved: the ranges this try confirmed and those of earlier tries not reached yet."""
        with self._lock:
            ranges = [*self.resumable.values(), *confirmed_ranges(self.done)]
        return {"fingerprint": self.fingerprint, "ranges": [list(r) for r in sorted(ranges)]}

    def flush(self) -> None:
        """Save now if anything changed (one writer at a time; others leave it to that one)."""
        if self.store is None or not self._write_lock.acquire(blocking=False):
            return
        try:
            with self._lock:
                if not self._dirty:
                    return
                self._dirty = False
            self.store.save(self.document())
            self._last_save = time.monotonic()
        finally:
            self._write_lock.release()

    def clear(self) -> None:
        """The export completed: nothing to resume."""
        if self.store is not None and (self.done or self.resumable or self._loaded):
            self.store.delete()


def confirmed_ranges(done: Mapping[int, tuple[str, int, int, int]]) -> list[ConfirmedRange]:
    """Runs of consecutive batch numbers in ``done``, cut at :data:`MAX_RANGE_BATCHES` batches and
    :data:`MAX_RANGE_BYTES` bytes."""
    ranges: list[ConfirmedRange] = []
    run: list[int] = []
    size = 0

    def close() -> None:
        if run:
            entries = [done[n] for n in run]
            ranges.append(
                ConfirmedRange(
                    run[0],
                    run[-1],
                    size,
                    range_digest(e[0] for e in entries),
                    sum(e[2] for e in entries),
                    sum(e[3] for e in entries),
                )
            )

    for number in sorted(done):
        body = done[number][1]
        full = len(run) >= MAX_RANGE_BATCHES or (run and size + body > MAX_RANGE_BYTES)
        if run and (number != run[-1] + 1 or full):
            close()
            run, size = [], 0
        run.append(number)
        size += body
    close()
    return ranges


def export_fingerprint(destination: Destination, field_mapping: Mapping[str, str]) -> str:
    """What must be unchanged for an earlier try's confirmations to count."""
    identity = {
        "destination": destination.name,
        "lists": list(destination.list_ids),
        "mapping": sorted(field_mapping.items()),
        "envelope": [part.decode() for part in destination.envelope()],
        "limits": [destination.max_batch_contacts, destination.max_batch_bytes],
    }
    return hashlib.sha256(json.dumps(identity, sort_keys=True).encode()).hexdigest()[:32]
