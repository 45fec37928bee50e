"""The partial state: which memberships a running mirror export may have created, saved as it sends.

The sync state is written when a run ends. A try killed before that (SIGKILL, a lost worker) has
put contacts on the list that no state records; its retry would read the list, find them there and
take them for members that existed before the export, which a mirror run never removes. So before a
batch goes out, the contacts whose membership the export would own by sending them (new to the state
and not on the list before) are saved next to the state, in files the retry, or the next run of the
export, reads and folds into the state: those contacts are the export's, unconfirmed (sent again,
and removed when they leave the segment).

Each file (``<state_path>.partial-g<generation>-<n>``) is in the state's own format (and has its
protection): about 43 bytes a contact, rewritten whole (a temporary file, then a rename) with each
stretch of claims until it holds :data:`PART_CLAIMS` (or more, when one batch claims more), then
the next one starts. Files belong to the state generation they were made on, so once a
state is written with them folded in they no longer apply; they are deleted then.
"""

from __future__ import annotations

import contextlib
import logging
import re
import threading
from collections.abc import Sequence
from typing import Any

from airflow_provider_ciexport.core.contacts import EmailSet
from airflow_provider_ciexport.export.state import (
    MANAGED,
    REMOVED,
    FileRole,
    StateIdentity,
    StateKeys,
    SyncState,
    read_state,
    storage_path,
    write_state,
)

log = logging.getLogger(__name__)

#: A partial state is rewritten with each new stretch of claims until it holds this many, then the
#: next one starts: bounded rewriting (ActiveCampaign's batches of 250 fill one in 8 writes) and a
#: file per 2,000 contacts at most (Constant Contact's batches of up to 40,000 take one file each).
PART_CLAIMS = 2_000


def part_uri(uri: str, generation: int, number: int) -> str:
    """Where the ``number``-th partial state of the state ``uri`` at ``generation`` is kept."""
    return f"{uri}.partial-g{generation}-{number:05d}"


class KeySet:
    """A set of 64-bit email keys on :class:`~airflow_provider_ciexport.core.contacts.EmailSet`'s flat
    table: 16 to 32 bytes a key, where a ``set`` of Python ints takes about 60 (a retry may fold a
    million claims)."""

    def __init__(self) -> None:
        self._set = EmailSet()
        self._zero = False  # the table's empty-slot marker is 0: the key 0 is kept apart

    def __len__(self) -> int:
        return len(self._set) + self._zero

    def add(self, key: int) -> bool:
        """Add ``key``; return ``True`` if it was not in the set yet."""
        if key == 0:
            new, self._zero = not self._zero, True
            return new
        # The keys are hashes already; the table holds signed numbers (the same 64 bits).
        return self._set.add_hash(key - (1 << 64) if key >= 1 << 63 else key)


class ClaimJournal:
    """The partial states of one state generation: read at the start, added to before each send.

    :param uri: the state's URI.
    :param identity: the export's identity (a partial state for another is not used).
    :param generation: the generation of the state this run read (0: none).
    :param keys: the state's keys: partial states are signed and checked like the state.
    """

    def __init__(self, uri: str, identity: StateIdentity, generation: int, keys: StateKeys) -> None:
        self.uri = uri
        self.identity = identity
        self.generation = generation
        self.keys = keys
        self._parts: list[str] = []
        self._pending: list[tuple[int, str]] = []
        # The part being filled and its generation as a file (None: not written yet).
        self._current = SyncState(identity)
        self._current_generation: int | None = None
        self._ticket = 0
        self._durable = 0
        self._writing = False
        self._failed = False
        self._cond = threading.Condition()

    def fold_into(self, state: SyncState, removal_unsubscribes: bool) -> tuple[SyncState, int]:
        """Read the partial states an earlier try left and fold them into ``state``.

        :return: the state with every claimed contact in it (the export's, digest 0: unconfirmed),
            and how many contacts were claimed that the state did not already hold as the export's.
        """
        claimed = 0
        seen = KeySet()
        number = 0
        while True:
            uri = part_uri(self.uri, self.generation, number)
            if not storage_path(uri).exists():
                break
            self._parts.append(uri)
            loaded = read_state(uri, self.identity, self.keys, FileRole(self.uri, (self.generation, number)))
            number += 1
            if loaded.distrust is not None:
                log.warning("A partial state of an earlier try is not used: %s.", loaded.distrust)
                continue
            part = loaded.state
            for j in range(len(part)):
                key = part.keys[j]
                if not seen.add(key):
                    continue
                index = state.find(key)
                if index < 0:
                    state.add(key, 0, MANAGED, part.email(j))
                    claimed += 1
                elif state.flags[index] & REMOVED and not removal_unsubscribes:
                    state.update(index, 0, MANAGED)
                    claimed += 1
        return (state.folded() if state.added else state), claimed

    def add(self, entries: Sequence[tuple[int, str]]) -> int:
        """Claim ``(key, email)`` contacts about to be sent; return the ticket to :meth:`wait` for."""
        with self._cond:
            self._pending.extend(entries)
            self._ticket += 1
            return self._ticket

    def wait(self, ticket: int) -> None:
        """Return once the claims up to ``ticket`` are saved; the first caller saves every pending one.

        :raises OSError: when the partial state cannot be written (nothing of the batch is sent).
        """
        with self._cond:
            while self._durable < ticket:
                if self._failed:
                    raise OSError("an earlier partial state could not be written")
                if self._writing:
                    self._cond.wait()
                    continue
                self._writing = True
                entries, self._pending = self._pending, []
                upto = self._ticket
                current = self._current
                if not current.added or current.added + len(entries) > PART_CLAIMS:
                    self._parts.append(part_uri(self.uri, self.generation, len(self._parts)))
                    current = self._current = SyncState(self.identity)
                    self._current_generation = None
                uri, expected = self._parts[-1], self._current_generation
                role = FileRole(self.uri, (self.generation, len(self._parts) - 1))
                self._cond.release()
                written = False
                try:
                    for key, email in entries:
                        current.add(key, 0, MANAGED, email)
                    self._current_generation = write_state(uri, current, expected, self.keys, role=role)
                    written = True
                finally:
                    self._cond.acquire()
                    self._writing = False
                    # Claims that were not saved must never pass as saved: no later batch goes out.
                    self._failed = self._failed or not written
                    if written:
                        self._durable = upto
                    self._cond.notify_all()

    def discard(self) -> None:
        """Delete the partial states (the state now holds their claims), older generations' left by a
        failed delete and temporary copies left by a killed write included. Only while holding the
        state's lease; files named otherwise are left alone."""
        state = storage_path(self.uri)
        pattern = re.compile(re.escape(state.name) + r"\.partial-g\d+-\d{5}(\.tmp-[0-9a-f]{12})?")
        found: list[Any] = []
        with contextlib.suppress(OSError, ValueError):
            found = [p for p in state.parent.iterdir() if pattern.fullmatch(p.name)]
        for path in [*found, *(storage_path(uri) for uri in reversed(self._parts))]:
            with contextlib.suppress(OSError, ValueError):
                if path.exists():
                    path.unlink()
        self._parts.clear()
