"""The sync state: what an export confirmed it sent, kept between runs to send only what changed.

One file per export at an :class:`~airflow.sdk.ObjectStoragePath` URI (``s3://``, ``gs://``,
``file:///``...). It holds, per contact the export handled: a stable 64-bit key of the email, a 64-bit
digest of the contact exactly as it was last confirmed, flags (did the export create the membership,
did it remove it) and the email itself (removal needs it). Held as flat arrays, sorted by key: about
46 bytes a contact, so 1,000,000 contacts take some 46 MB in memory and on disk, where a dict of
strings would take several times that.

A header names what the state was written for (destination, account, lists, field mapping): a state
written for anything else is never trusted. Writes replace the file whole (a temporary sibling, then a
rename), after checking that no other run wrote it since it was read (its ``generation``), and a lease
file keeps two runs of the same export from using one state at once.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import socket
import sys
import threading
import time
import uuid
from array import array
from bisect import bisect_left
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timezone
from itertools import accumulate
from typing import IO, Any

from airflow_provider_ciexport.exceptions import CiExportError, ExportConfigurationError

log = logging.getLogger(__name__)

MAGIC = b"CIEXPORT-SYNC-STATE\n"
FORMAT = 1

#: The export created this list membership (it was not there before): mirror mode may remove it.
MANAGED = 1
#: The export removed this membership (ActiveCampaign: the export set status 2), so when the contact
#: comes back it is the export's to restore, and only then.
REMOVED = 2
#: Drop the entry when the state is written (not stored on disk).
_DROP = 0x80


class StateBusyError(CiExportError):
    """Another run of the same export is using the state."""


class StateConflictError(CiExportError):
    """The state was written by another run since this run read it."""


def email_key(email: str) -> int:
    """A stable 64-bit key of a normalised email (the same in every process, unlike ``hash()``)."""
    return int.from_bytes(hashlib.blake2b(email.encode(), digest_size=8).digest(), "little")


def contact_digest(encoded: bytes) -> int:
    """A 64-bit digest of a contact exactly as it is sent (never 0: 0 means "send again")."""
    return int.from_bytes(hashlib.blake2b(encoded, digest_size=8).digest(), "little") or 1


@dataclass(frozen=True)
class StateIdentity:
    """What a state was written for; a state for anything else is not trusted.

    :param destination: the destination's name.
    :param account: the account (API URL, or the connection's client id), never a secret.
    :param lists: the target list ids.
    :param mapping: destination attribute -> source column.
    """

    destination: str
    account: str
    lists: tuple[str, ...]
    mapping: tuple[tuple[str, str], ...]

    @classmethod
    def of(cls, destination: str, account: str, lists: Any, mapping: Mapping[str, str]) -> StateIdentity:
        """Build one from plain values (lists and mapping are sorted: order does not matter)."""
        return cls(destination, account, tuple(sorted(str(x) for x in lists)), tuple(sorted(mapping.items())))

    def as_dict(self) -> dict[str, Any]:
        """JSON-safe form, as stored in the header."""
        return {
            "destination": self.destination,
            "account": self.account,
            "lists": list(self.lists),
            "mapping": {k: v for k, v in self.mapping},
        }

    def mismatch(self, stored: Any) -> str | None:
        """Why a stored identity differs from this one (``None`` when they match)."""
        if not isinstance(stored, dict):
            return "the state has no identity"
        mine = self.as_dict()
        names = {
            "destination": "destination",
            "account": "account",
            "lists": "lists",
            "mapping": "field mapping",
        }
        differ = [names[k] for k in mine if stored.get(k) != mine[k]]
        return f"it was written for another {', '.join(differ)}" if differ else None


class SyncState:
    """The entries of one state, sorted by email key, plus this run's changes to them.

    Entries are looked up by :func:`email_key`; changes (a new digest, new flags, an entry dropped)
    are made in place, and new contacts are collected apart, so nothing is copied until
    :func:`write_state` merges them.

    :param identity: what the state is for.
    :param generation: how many times it has been written (0: never).
    """

    def __init__(
        self,
        identity: StateIdentity,
        generation: int = 0,
        keys: array[int] | None = None,
        digests: array[int] | None = None,
        flags: bytearray | None = None,
        lengths: bytes | None = None,
        blob: bytes = b"",
    ) -> None:
        self.identity = identity
        self.generation = generation
        self.keys: array[int] = keys if keys is not None else array("Q")
        self.digests: array[int] = digests if digests is not None else array("Q")
        self.flags = flags if flags is not None else bytearray()
        self._lengths = lengths if lengths is not None else b""
        self._blob = blob
        self._offsets: array[int] | None = None
        # Contacts new to the state, confirmed in this run.
        self._new_keys: array[int] = array("Q")
        self._new_digests: array[int] = array("Q")
        self._new_flags = bytearray()
        self._new_lengths = bytearray()
        self._new_blob = bytearray()
        self._dropped: list[int] = []
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return len(self.keys)

    @property
    def added(self) -> int:
        """Contacts new to the state so far in this run."""
        return len(self._new_keys)

    def find(self, key: int) -> int:
        """The index of the entry with this key, or -1."""
        keys = self.keys
        i = bisect_left(keys, key)
        return i if i < len(keys) and keys[i] == key else -1

    def email(self, index: int) -> str:
        """The email of an entry."""
        offsets = self._old_offsets()
        return self._blob[offsets[index] : offsets[index + 1]].decode()

    def count(self, flag: int) -> int:
        """Entries with ``flag`` set (dropped ones excluded)."""
        return sum(1 for f in self.flags if f & flag and not f & _DROP)

    def update(self, index: int, digest: int | None = None, flags: int | None = None) -> None:
        """Change an entry (thread-safe): its digest (0: send again next run) and/or flags."""
        with self._lock:
            if digest is not None:
                self.digests[index] = digest
            if flags is not None:
                self.flags[index] = flags

    def drop(self, index: int) -> None:
        """Leave an entry out when the state is written."""
        with self._lock:
            self.flags[index] |= _DROP
            self._dropped.append(index)

    def add(self, key: int, digest: int, flags: int, email: str) -> None:
        """Record a contact new to the state (thread-safe)."""
        data = email.encode()
        with self._lock:
            self._new_keys.append(key)
            self._new_digests.append(digest)
            self._new_flags.append(flags)
            self._new_lengths.append(len(data))
            self._new_blob += data

    def merged_size(self) -> tuple[int, int]:
        """``(entries, email bytes)`` of the state as it will be written."""
        dropped = sorted(set(self._dropped))
        lengths = self._lengths
        count = len(self.keys) - len(dropped) + len(self._new_keys)
        blob = len(self._blob) - sum(lengths[i] for i in dropped) + len(self._new_blob)
        return count, blob

    def write_sections(self, write: Callable[[bytes | bytearray | memoryview | array[int]], Any]) -> None:
        """Write the merged entries, section by section (keys, digests, flags, lengths, emails), in key
        order, without the dropped ones.

        Old entries are copied slice by slice between the (few) places where something is inserted or
        dropped, one section at a time, so an incremental run costs about one pass of C-speed copying
        and never holds a second copy of the whole state.
        """
        with self._lock:
            new_order = _order(self._new_keys)
            keys = self.keys
            if not keys:
                self._write_new_only(new_order, write)
                return
            # (old index, 0 insert before it / 1 drop it, rank among the new entries)
            events = [(i, 1, 0) for i in sorted(set(self._dropped))]
            new_keys = self._new_keys
            events += [(bisect_left(keys, new_keys[j]), 0, rank) for rank, j in enumerate(new_order)]
            events.sort()
            old_parts: tuple[Any, ...] = (self.keys, self.digests, self.flags, self._lengths)
            new_parts: tuple[Any, ...] = (
                self._new_keys,
                self._new_digests,
                self._new_flags,
                self._new_lengths,
            )
            for old, new in zip(old_parts, new_parts, strict=True):
                out = array(old.typecode) if isinstance(old, array) else bytearray()
                prev = 0
                for index, kind, rank in events:
                    if index > prev:
                        out += old[prev:index]
                    if kind == 0:
                        out.append(new[new_order[rank]])
                        prev = index
                    else:
                        prev = index + 1
                out += old[prev:]
                write(_little(out))
                del out
            offsets = self._old_offsets()
            new_offsets = array("Q", accumulate(self._new_lengths, initial=0))
            blob, new_blob = memoryview(self._blob), memoryview(self._new_blob)
            prev = 0
            for index, kind, rank in events:
                if index > prev:
                    write(blob[offsets[prev] : offsets[index]])
                if kind == 0:
                    k = new_order[rank]
                    write(new_blob[new_offsets[k] : new_offsets[k + 1]])
                    prev = index
                else:
                    prev = index + 1
            write(blob[offsets[prev] :])

    def _write_new_only(
        self, order: array[int], write: Callable[[bytes | bytearray | memoryview | array[int]], Any]
    ) -> None:
        """A state with no old entries (a first sync): the new ones in key order, without a list of
        a million insert events."""
        for new in (self._new_keys, self._new_digests, self._new_flags, self._new_lengths):
            picked = map(new.__getitem__, order)
            out = array(new.typecode, picked) if isinstance(new, array) else bytearray(picked)
            write(_little(out))
            del out
        offsets = array("Q", accumulate(self._new_lengths, initial=0))
        blob = memoryview(self._new_blob)
        for k in order:
            write(blob[offsets[k] : offsets[k + 1]])

    def _old_offsets(self) -> array[int]:
        if self._offsets is None:
            self._offsets = array("Q", accumulate(self._lengths, initial=0))
        return self._offsets


def _order(keys: array[int]) -> array[int]:
    """The permutation that sorts ``keys``, without a million-element list of tuples: the indices are
    spread over 4,096 buckets by the keys' top bits, and each bucket sorted on its own."""
    n = len(keys)
    if n < 65536:
        return array("I", sorted(range(n), key=keys.__getitem__))
    buckets: list[array[int]] = [array("I") for _ in range(4096)]
    for i, key in enumerate(keys):
        buckets[key >> 52].append(i)
    order = array("I")
    get = keys.__getitem__
    for bucket in buckets:
        order.extend(sorted(bucket, key=get))
    return order


def _little(data: array[int] | bytearray) -> array[int] | bytearray:
    if isinstance(data, array) and sys.byteorder != "little":
        data.byteswap()
    return data


@dataclass
class LoadedState:
    """What :func:`read_state` found.

    :param state: the state to use (empty when there was none, or none that can be trusted).
    :param distrust: why a stored state is not used (``None``: it is used, or there was none).
    :param stored_generation: the generation of the file as read (``None``: there was no file); a
        write checks that it is still the same.
    """

    state: SyncState
    distrust: str | None = None
    stored_generation: int | None = None


def _path(uri: str) -> Any:
    from airflow.sdk import ObjectStoragePath

    return ObjectStoragePath(uri)


def read_state(uri: str, identity: StateIdentity) -> LoadedState:
    """Read the state at ``uri`` for an export with ``identity``.

    A missing file gives an empty state; an unreadable one, or one written for another identity, gives
    an empty state and the reason (the run then sends everything and writes a new one).

    :raises ExportConfigurationError: if the URI cannot be used at all.
    """
    path = _path(uri)
    try:
        if not path.exists():
            return LoadedState(SyncState(identity))
        with path.open("rb") as f:
            return _parse(f, identity)
    except (OSError, ValueError, KeyError, TypeError) as exc:
        if isinstance(exc, FileNotFoundError):
            return LoadedState(SyncState(identity))
        if isinstance(exc, PermissionError):
            raise ExportConfigurationError(
                f"The sync state at state_path cannot be read ({type(exc).__name__}). Give the workers "
                "read and write access to it, or choose another state_path."
            ) from None
        return LoadedState(
            SyncState(identity), distrust=f"the stored state is unreadable ({type(exc).__name__})"
        )


def _read_exact(f: IO[bytes], n: int, checksum: Any) -> bytes:
    data = f.read(n)
    if len(data) != n:
        raise ValueError("truncated")
    checksum.update(data)
    return data


def _parse(f: IO[bytes], identity: StateIdentity) -> LoadedState:
    if f.read(len(MAGIC)) != MAGIC:
        return LoadedState(SyncState(identity), distrust="the file at state_path is not a sync state")
    size = int.from_bytes(f.read(8), "little")
    if not 0 < size < 1_000_000:
        raise ValueError("bad header size")
    header = json.loads(f.read(size))
    generation = int(header.get("generation", 0))
    if header.get("format") != FORMAT:
        return LoadedState(
            SyncState(identity), f"the stored state has format {header.get('format')!r}", generation
        )
    reason = identity.mismatch(header.get("identity"))
    if reason is not None:
        return LoadedState(SyncState(identity), reason, generation)
    n = int(header["count"])
    checksum = hashlib.blake2b(digest_size=16)
    keys: array[int] = array("Q")
    keys.frombytes(_read_exact(f, 8 * n, checksum))
    digests: array[int] = array("Q")
    digests.frombytes(_read_exact(f, 8 * n, checksum))
    if sys.byteorder != "little":
        keys.byteswap()
        digests.byteswap()
    flags = bytearray(_read_exact(f, n, checksum))
    lengths = _read_exact(f, n, checksum)
    blob = _read_exact(f, int(header["blob_bytes"]), checksum)
    if f.read(16) != checksum.digest() or f.read(1):
        return LoadedState(SyncState(identity), "the stored state is damaged (checksum)", generation)
    state = SyncState(identity, generation, keys, digests, flags, lengths, blob)
    return LoadedState(state, None, generation)


def write_state(uri: str, state: SyncState, expected_generation: int | None) -> int:
    """Replace the state at ``uri`` with ``state`` merged with this run's changes; return its generation.

    :param expected_generation: the generation the file had when this run read it (``None``: there
        was no file). If another run wrote it since, nothing is written.
    :raises StateConflictError: when the file changed since it was read.
    """
    path = _path(uri)
    current = _stored_generation(path)
    if current != expected_generation:
        raise StateConflictError(
            f"The sync state at state_path was written by another run while this one ran (generation "
            f"{current}, this run read {expected_generation}); this run's state was not saved, so its "
            "contacts are sent again next time. Do not run two exports with one state_path at once."
        )
    generation = (current or 0) + 1
    count, blob_bytes = state.merged_size()
    header = json.dumps(
        {
            "format": FORMAT,
            "identity": state.identity.as_dict(),
            "generation": generation,
            "written_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "count": count,
            "blob_bytes": blob_bytes,
        }
    ).encode()
    with contextlib.suppress(OSError, ValueError):  # object stores have no directories
        path.parent.mkdir(parents=True, exist_ok=True)
    tmp = _path(f"{uri}.tmp-{uuid.uuid4().hex[:12]}")
    try:
        with tmp.open("wb") as f:
            f.write(MAGIC)
            f.write(len(header).to_bytes(8, "little"))
            f.write(header)
            checksum = hashlib.blake2b(digest_size=16)

            def write(data: Any) -> None:
                checksum.update(data)
                f.write(data)

            state.write_sections(write)
            f.write(checksum.digest())
        tmp.rename(path)
    finally:
        try:
            if tmp.exists():
                tmp.unlink()
        except OSError:
            pass
    return generation


def _stored_generation(path: Any) -> int | None:
    try:
        if not path.exists():
            return None
        with path.open("rb") as f:
            if f.read(len(MAGIC)) != MAGIC:
                return -1
            size = int.from_bytes(f.read(8), "little")
            return int(json.loads(f.read(size)).get("generation", 0))
    except FileNotFoundError:
        return None
    except (OSError, ValueError):
        return -1


@dataclass
class StateLease:
    """A lease file (``<state>.lock``) that keeps two runs of one export from using a state at once.

    The lease is renewed every ``ttl_s / 3`` seconds while held; one older than ``ttl_s`` belongs to a
    run that died and is taken over. A retry of the same task instance (same ``owner``) takes its own
    lease back at once.

    :param uri: the state's URI.
    :param owner: who holds it (DAG, task, run, map index), shown to the run that has to wait.
    :param ttl_s: how long a lease lives without renewal.
    """

    uri: str
    owner: str
    ttl_s: float = 600.0
    _stop: threading.Event = field(default_factory=threading.Event, repr=False)
    _thread: threading.Thread | None = field(default=None, repr=False)
    _token: str = field(default_factory=lambda: uuid.uuid4().hex, repr=False)

    @property
    def path(self) -> Any:
        return _path(f"{self.uri}.lock")

    def _read(self) -> dict[str, Any] | None:
        try:
            data = json.loads(self.path.read_bytes())
            return data if isinstance(data, dict) else None
        except (OSError, ValueError):
            return None

    def _write(self) -> None:
        body = {
            "owner": self.owner,
            "token": self._token,
            "host": socket.gethostname(),
            "pid": os.getpid(),
            "renewed_at": time.time(),
        }
        with self.path.open("wb") as f:
            f.write(json.dumps(body).encode())

    def acquire(self) -> None:
        """Take the lease, or fail naming the run that holds it.

        :raises StateBusyError: when another live run holds it.
        """
        held = self._read()
        if held is not None and held.get("owner") != self.owner:
            age = time.time() - float(held.get("renewed_at", 0))
            if age < self.ttl_s:
                raise StateBusyError(
                    f"Another run of this export ({held.get('owner')}) is using the sync state at "
                    f"state_path (its lease was renewed {age:.0f} s ago). Nothing was sent. Wait for it to "
                    f"finish; if it died, its lease expires {self.ttl_s - age:.0f} s from now, or delete "
                    "the state's '.lock' file."
                )
        with contextlib.suppress(OSError, ValueError):
            self.path.parent.mkdir(parents=True, exist_ok=True)
        self._write()
        # Two runs that wrote at the same moment: the last write wins, the other sees it and yields.
        time.sleep(0.05)
        mine = self._read()
        if mine is None or mine.get("token") != self._token:
            raise StateBusyError(
                "Another run of this export took the sync state's lease at the same moment. Nothing was "
                "sent. Retry this task once that run has finished."
            )
        self._thread = threading.Thread(target=self._renew, name="ciexport-state-lease", daemon=True)
        self._thread.start()

    def _renew(self) -> None:
        while not self._stop.wait(self.ttl_s / 3):
            try:
                self._write()
            except OSError:
                log.warning("Could not renew the sync state's lease; another run may take it over.")

    def release(self) -> None:
        """Give the lease back (only if it is still this run's)."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
        held = self._read()
        if held is not None and held.get("token") == self._token:
            with contextlib.suppress(OSError):
                self.path.unlink()
