"""What a retried export may skip: the batches an earlier try saw confirmed (see :class:`Checkpoint`)."""

from __future__ import annotations

import hashlib
import json
import logging
import threading
import time
from collections.abc import Mapping
from typing import Any, Protocol

from airflow_provider_ciexport.export.batcher import Batch
from airflow_provider_ciexport.export.destination import Destination

log = logging.getLogger(__name__)


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


class Checkpoint:
    """The batches of this export that the destination confirmed, saved so a retry skips them.

    A batch is skipped on a later try only if the same batch number has the same body digest, so a
    segment that changed in between is simply sent again (imports match contacts by email, so a
    resent contact is updated, never duplicated). Saves are coalesced to one every ``min_interval_s``.
    """

    def __init__(self, store: ProgressStore | None, fingerprint: str, min_interval_s: float = 1.0) -> None:
        self.store = store
        self.fingerprint = fingerprint
        self.min_interval_s = min_interval_s
        saved = store.load() if store is not None else None
        self.done: dict[int, list[Any]] = {}
        if isinstance(saved, dict) and saved.get("fingerprint") == fingerprint:
            self.done = {int(k): list(v) for k, v in (saved.get("done") or {}).items()}
        elif saved is not None:
            log.info("Saved progress belongs to a different export configuration; starting over.")
        self.resumable = dict(self.done)
        self._lock = threading.Lock()
        self._write_lock = threading.Lock()
        self._dirty = False
        self._last_save = 0.0

    def resumed(self, batch: Batch, digest: str) -> tuple[int, int] | None:
        """``(accepted, rejected)`` if an earlier try confirmed this very batch."""
        entry = self.resumable.get(batch.number)
        if entry is not None and entry[0] == digest:
            return int(entry[1]), int(entry[2])
        return None

    def confirm(self, batch: Batch, digest: str, accepted: int, rejected: int) -> None:
        """Note a confirmed batch and save soon."""
        with self._lock:
            self.done[batch.number] = [digest, accepted, rejected]
            self._dirty = True
        if time.monotonic() - self._last_save >= self.min_interval_s:
            self.flush()

    def flush(self) -> None:
        """Save now if anything changed (one writer at a time; others leave it to that one)."""
        if self.store is None or not self._write_lock.acquire(blocking=False):
            return
        try:
            with self._lock:
                if not self._dirty:
                    return
                document = {
                    "fingerprint": self.fingerprint,
                    "done": {str(k): v for k, v in self.done.items()},
                }
                self._dirty = False
            self.store.save(document)
            self._last_save = time.monotonic()
        finally:
            self._write_lock.release()

    def clear(self) -> None:
        """The export completed: nothing to resume."""
        if self.store is not None and (self.done or self.resumable):
            self.store.delete()


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
