"""The sync state: what an export confirmed it sent, kept between runs to send only what changed.

One file per export at an :class:`~airflow.sdk.ObjectStoragePath` URI (``s3://``, ``gs://``,
``file:///``...). It holds, per contact the export handled: a stable 64-bit key of the email, a 64-bit
digest of the contact exactly as it was last confirmed, flags (did the export create the membership,
did it remove it) and the email itself (removal needs it). Held as flat arrays, sorted by key: about
46 bytes a contact, so 1,000,000 contacts take some 46 MB in memory and on disk, where a dict of
strings would take several times that.

The envelope: a header names what the state was written for (destination, account, lists, field
mapping), and an HMAC-SHA256 under a key only the workers hold (:class:`StateKeys`) covers the whole
file, header included. A state written for anything else, under a key the workers do not hold, or
changed by anyone else is never trusted. Writes replace the file whole (a temporary sibling, then a
rename; local files are created ``0600`` in folders created ``0700``), after checking that no other run
wrote it since it was read (its ``generation``), and a lease file keeps two runs of the same export
from using one state at once.
"""

from __future__ import annotations

import base64
import contextlib
import functools
import hashlib
import hmac
import json
import logging
import math
import os
import re
import secrets
import sys
import threading
import time
from array import array
from bisect import bisect_left
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from itertools import accumulate
from typing import IO, Any

from airflow_provider_ciexport.core.liveness import dead_here, holder
from airflow_provider_ciexport.core.paths import check_storage_path
from airflow_provider_ciexport.exceptions import CiExportError, ExportConfigurationError
from airflow_provider_ciexport.export.spill import SpilledBytes

log = logging.getLogger(__name__)

MAGIC = b"CIEXPORT-SYNC-STATE\n"
#: 2: the whole file is authenticated with HMAC-SHA256 (format 1 had an unkeyed checksum).
#: 3: the signed header also says what the file is (:class:`FileRole`), so that an authentic file is
#: never used in the place of another; each removed entry names the run that removed it.
FORMAT = 3
_TAG_BYTES = 32
#: How many removal runs the state remembers (see :attr:`SyncState.removals`).
MAX_REMOVAL_WINDOWS = 10_000

#: The export created this list membership (it was not there before): mirror mode may remove it.
MANAGED = 1
#: The export removed this membership (ActiveCampaign: the export set status 2), so when the contact
#: comes back it is the export's to restore, and only then. Such an entry has no digest (a contact
#: who comes back is always sent): its digest slot holds the id of the run that removed it (see
#: :attr:`SyncState.removals`).
REMOVED = 2
#: The person opted out (unsubscribed by their own action, or excluded) when the destination was last
#: read: never sent, never removed. Kept so that a run whose opt-out count is unchanged need not read
#: them all again. Such an entry has digest 0.
UNSUBSCRIBED = 4
#: Drop the entry when the state is written (not stored on disk).
_DROPPED_ON_WRITE = 0x80


class StateBusyError(CiExportError):
    """Another run of the same export is using the state."""


class StateConflictError(CiExportError):
    """The state was written by another run since this run read it."""


class StateKeys:
    """The keys that authenticate sync states with HMAC-SHA256.

    The first key signs what is written; every key is accepted when reading, so a key is rotated by
    putting the new one first and keeping the old one until every state was written again. Keys are
    derived (scrypt, see :func:`derive_state_key`) from the secrets given, so the same secret used
    elsewhere (Airflow's fernet key) never signs a state as is, and each guess at a secret from a copy
    of a state costs a scrypt computation. Neither the secrets nor the keys appear in ``repr``.

    :param secrets: the secrets, newest first (at least one).
    :param source: where they come from, for messages (never a secret itself).
    """

    def __init__(self, secrets: Sequence[str | bytes], source: str) -> None:
        if not secrets:
            raise ValueError("StateKeys needs at least one secret")
        self.source = source
        self._keys = tuple(derive_state_key(s) for s in secrets)
        self._ids = tuple(_key_id(k) for k in self._keys)

    def __repr__(self) -> str:
        return f"StateKeys({len(self._keys)} key(s) from {self.source})"

    @property
    def signing(self) -> tuple[str, bytes]:
        """``(key id, key)`` that signs what is written."""
        return self._ids[0], self._keys[0]

    def find(self, key_id: Any) -> bytes | None:
        """The key with this id, or ``None`` when these keys do not include it."""
        for kid, key in zip(self._ids, self._keys, strict=True):
            if isinstance(key_id, str) and hmac.compare_digest(kid, key_id):
                return key
        return None


_KDF_SALT = b"airflow-provider-ciexport sync state"
#: Names the derivation in the header: a state signed under another (HKDF before it) is not trusted.
KDF = "scrypt-n32768-r8-p1"
_SCRYPT_N, _SCRYPT_R, _SCRYPT_P = 2**15, 8, 1


@functools.lru_cache(maxsize=32)
def _scrypt(material: bytes) -> bytes:
    return hashlib.scrypt(
        material, salt=_KDF_SALT, n=_SCRYPT_N, r=_SCRYPT_R, p=_SCRYPT_P, maxmem=64 * 1024 * 1024, dklen=32
    )


def derive_state_key(secret: str | bytes) -> bytes:
    """A 32-byte key for the state's HMAC from a secret: scrypt (N=2^15, r=8: 32 MiB and some 75 ms),
    so that guessing a secret from a copy of a state costs that much per guess. Computed once per
    secret in a process."""
    return _scrypt(secret.encode() if isinstance(secret, str) else secret)


def _key_id(key: bytes) -> str:
    """A public name of a key (which one signed a state), from which the key cannot be found."""
    return hmac.new(key, b"key id", hashlib.sha256).hexdigest()[:16]


def fernet_secrets(value: str | None) -> list[str]:
    """The valid Fernet keys in an Airflow ``[core] fernet_key`` value (comma-separated, newest first).

    Anything that is not a Fernet key (empty, or the ``{FERNET_KEY}`` placeholder Airflow's Task SDK
    shows when no key is configured) is left out: it is no secret.
    """
    found = []
    for part in (value or "").split(","):
        part = part.strip()
        try:
            if len(base64.urlsafe_b64decode(part.encode())) == 32:
                found.append(part)
        except ValueError:
            continue
    return found


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


@dataclass(frozen=True)
class FileRole:
    """What a signed file is: the state at ``state_path``, or one part of that state's partial state.

    It is signed into every header and checked when the file is read, so that an authentic file
    (an older state, another export's state, a partial state) put in the place of another is refused.

    :param state_path: the state's URI as the export is configured with it (for a partial state too).
    :param part: for a partial state, ``(generation of the state it belongs to, part number)``.
    """

    state_path: str
    part: tuple[int, int] | None = None

    def as_dict(self) -> dict[str, Any]:
        """JSON-safe form, as stored in the header."""
        base, number = self.part if self.part is not None else (None, None)
        return {
            "role": "state" if self.part is None else "partial",
            "state_path": self.state_path,
            "base_generation": base,
            "part": number,
        }

    def mismatch(self, stored: Any) -> str | None:
        """Why a (signed) stored role differs from this one (``None`` when they match); never quotes it."""
        mine = self.as_dict()
        if not isinstance(stored, dict) or stored.get("role") not in ("state", "partial"):
            return "it does not say what file it is"
        if stored.get("role") != mine["role"]:
            signed_as = "a partial state" if stored.get("role") == "partial" else "a sync state"
            return f"it was signed as {signed_as}, not as {'a partial state' if self.part else 'the state'}"
        if stored.get("state_path") != mine["state_path"]:
            return "it was signed for another state_path (another export's file, or one copied or moved here)"
        if stored != mine:
            return "it was signed as another part, or for another generation of the state"
        return None


#: What a state's header says of past runs besides its entries (attributes of :class:`SyncState`,
#: keys of the header), carried over by :meth:`SyncState.folded`.
RUN_NOTES = (
    "removals",
    "list_members",
    "members_read_at",
    "opted_out_count",
    "opted_out_read_at",
    "opted_out_full_read_at",
)


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
        lengths: bytes | bytearray | None = None,
        blob: bytes | bytearray = b"",
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
        # Their addresses, on local disk once large (read back only when the state is written).
        self._new_emails = SpilledBytes()
        self._dropped: list[int] = []
        self._lock = threading.Lock()
        #: ``[run id, start, end]`` (Unix seconds) of the runs that removed contacts, oldest first (the
        #: last :data:`MAX_REMOVAL_WINDOWS`): a membership the destination shows as last changed outside
        #: the window of the run that removed it was not the export's removal.
        self.removals: list[list[float]] = []
        #: Active members the target lists held when the state was written (``None``: not counted): a
        #: run that counts another number reads the members, to repair what changed outside the export.
        self.list_members: int | None = None
        #: When a run last read the lists' members in full (Unix seconds; ``None``: never).
        self.members_read_at: float | None = None
        #: People the destination showed as opted out when the state was written, as it counts them
        #: (``None``: not known): a run that counts the same reads none of them (see :mod:`.opt_outs`).
        self.opted_out_count: int | None = None
        #: When a run last read who opted out (Unix seconds; ``None``: never), and everyone who did.
        self.opted_out_read_at: float | None = None
        self.opted_out_full_read_at: float | None = None

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
        return sum(1 for f in self.flags if f & flag and not f & _DROPPED_ON_WRITE)

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
            self.flags[index] |= _DROPPED_ON_WRITE
            self._dropped.append(index)

    def add(self, key: int, digest: int, flags: int, email: str) -> None:
        """Record a contact new to the state (thread-safe)."""
        data = email.encode()
        with self._lock:
            self._new_keys.append(key)
            self._new_digests.append(digest)
            self._new_flags.append(flags)
            self._new_lengths.append(len(data))
            self._new_emails.append(data)

    def start_removal_run(self) -> list[float]:
        """Record that this run starts removing contacts now; return its ``[run id, start, end]``, whose
        end the caller sets when the run stops removing (mark each removal with the run id)."""
        run = max((int(window[0]) for window in self.removals), default=0) + 1
        window = [float(run), float(math.floor(time.time())), 0.0]
        self.removals.append(window)
        del self.removals[:-MAX_REMOVAL_WINDOWS]
        return window

    def removal_window(self, run: int) -> tuple[float, float] | None:
        """``(start, end)`` of the removal run ``run`` (the digest slot of a :data:`REMOVED` entry), or
        ``None`` when the state does not know it (never, or no longer among the last ones kept)."""
        if run <= 0:
            return None
        for window in reversed(self.removals):
            if int(window[0]) == run:
                return window[1], window[2]
        return None

    def merged_size(self) -> tuple[int, int]:
        """``(entries, email bytes)`` of the state as it will be written."""
        dropped = sorted(set(self._dropped))
        lengths = self._lengths
        count = len(self.keys) - len(dropped) + len(self._new_keys)
        blob = len(self._blob) - sum(lengths[i] for i in dropped) + len(self._new_emails)
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
            # Where each new entry goes (in key order) and which old ones go: two flat arrays, merged
            # as each section is written, not a list of a million tuples.
            dropped: array[int] = array("I", sorted(set(self._dropped)))
            new_keys = self._new_keys
            inserts: array[int] = array("I", (bisect_left(keys, new_keys[j]) for j in new_order))
            old_parts: tuple[Any, ...] = (self.keys, self.digests, self.flags, self._lengths)
            new_parts: tuple[Any, ...] = (
                self._new_keys,
                self._new_digests,
                self._new_flags,
                self._new_lengths,
            )
            for old, new in zip(old_parts, new_parts, strict=True):
                out = _Section(old, write)
                prev = 0
                for index, kind, rank in _events(dropped, inserts):
                    if index > prev:
                        out.copy(old, prev, index)
                    if kind == 0:
                        out.append(new[new_order[rank]])
                        prev = index
                    else:
                        prev = index + 1
                out.copy(old, prev, len(old))
                out.flush()
            offsets = self._old_offsets()
            new_offsets = _offsets(self._new_lengths, len(self._new_emails))
            blob, new_email = memoryview(self._blob), self._new_emails.read
            prev = 0
            for index, kind, rank in _events(dropped, inserts):
                if index > prev:
                    write(blob[offsets[prev] : offsets[index]])
                if kind == 0:
                    k = new_order[rank]
                    write(new_email(new_offsets[k], new_offsets[k + 1]))
                    prev = index
                else:
                    prev = index + 1
            write(blob[offsets[prev] :])

    def folded(self) -> SyncState:
        """A copy with this run's changes so far folded in: new entries findable, dropped ones gone.

        For a state that gains entries before the run starts (a partial state left by a try that
        died, see :mod:`.claims`); it costs one copy of the state.
        """
        count, blob_bytes = self.merged_size()
        keys: array[int] = array("Q", [0]) * count
        digests: array[int] = array("Q", [0]) * count
        flags, lengths, blob = bytearray(count), bytearray(count), bytearray(blob_bytes)
        # Each section goes straight into its copy: nothing of the state is held twice more.
        fill = _Filler([memoryview(keys).cast("B"), memoryview(digests).cast("B"), flags, lengths, blob])
        self.write_sections(fill.write)
        if sys.byteorder != "little":
            keys.byteswap()
            digests.byteswap()
        folded = SyncState(self.identity, self.generation, keys, digests, flags, lengths, blob)
        for name in RUN_NOTES:
            setattr(folded, name, getattr(self, name))
        return folded

    def _write_new_only(
        self, order: array[int], write: Callable[[bytes | bytearray | memoryview | array[int]], Any]
    ) -> None:
        """A state with no old entries (a first sync): the new ones in key order, without a list of
        a million insert events."""
        for new in (self._new_keys, self._new_digests, self._new_flags, self._new_lengths):
            out = _Section(new, write)
            out.pick(new, order)
            out.flush()
        offsets = _offsets(self._new_lengths, len(self._new_emails))
        email = self._new_emails.read
        for k in order:
            write(email(offsets[k], offsets[k + 1]))

    def _old_offsets(self) -> array[int]:
        if self._offsets is None:
            self._offsets = _offsets(self._lengths, len(self._blob))
        return self._offsets


def _offsets(lengths: bytes | bytearray, total: int) -> array[int]:
    """Where each email starts in a blob of ``total`` bytes (and where the last one ends): 32-bit
    numbers while they fit, half the memory of 64-bit ones."""
    return array("I" if total < 2**32 else "Q", accumulate(lengths, initial=0))


class _Section:
    """One section of a state being written, handed to ``write`` a piece of at most :data:`IO_CHUNK`
    at a time (never a whole section's copy next to the state)."""

    def __init__(self, like: array[int] | bytes | bytearray, write: Callable[[Any], Any]) -> None:
        self._typecode = like.typecode if isinstance(like, array) else ""
        self._step = IO_CHUNK // like.itemsize if isinstance(like, array) else IO_CHUNK
        self._write = write
        self._out = self._empty()

    def _empty(self) -> array[int] | bytearray:
        return array(self._typecode) if self._typecode else bytearray()

    def copy(self, old: array[int] | bytes | bytearray, start: int, stop: int) -> None:
        """Add ``old[start:stop]``."""
        while start < stop:
            end = min(stop, start + self._step)
            self._out += old[start:end]  # type: ignore[operator]
            start = end
            if len(self._out) >= self._step:
                self.flush()

    def pick(self, source: array[int] | bytes | bytearray, indices: array[int]) -> None:
        """Add ``source[i]`` for each ``i`` of ``indices``, in order."""
        for start in range(0, len(indices), self._step):
            self._out.extend(map(source.__getitem__, indices[start : start + self._step]))
            if len(self._out) >= self._step:
                self.flush()

    def append(self, value: int) -> None:
        """Add one value."""
        self._out.append(value)
        if len(self._out) >= self._step:
            self.flush()

    def flush(self) -> None:
        """Write what was added."""
        if self._out:
            self._write(_as_little_endian(self._out))
            self._out = self._empty()


class _Filler:
    """Copies what is written, in order, into a sequence of buffers of the right sizes."""

    def __init__(self, targets: list[memoryview | bytearray]) -> None:
        self._targets = [memoryview(t) for t in targets]
        self._index = 0
        self._at = 0

    def write(self, data: bytes | bytearray | memoryview | array[int]) -> None:
        """Copy ``data`` into the buffers, after what was written before."""
        view = memoryview(data).cast("B")
        while len(view):
            while self._at == len(self._targets[self._index]):
                self._index, self._at = self._index + 1, 0
            target = self._targets[self._index]
            n = min(len(view), len(target) - self._at)
            target[self._at : self._at + n] = view[:n]
            self._at += n
            view = view[n:]


def _events(dropped: array[int], inserts: array[int]) -> Iterator[tuple[int, int, int]]:
    """``(old index, 0 insert before it / 1 drop it, rank among the new entries)`` in sorted order,
    from the sorted old indices to drop and the (non-decreasing) insert positions of the new entries
    in key order: at one index the inserts come first, as a sort of those tuples would put them."""
    d = r = 0
    n_dropped, n_inserts = len(dropped), len(inserts)
    while r < n_inserts or d < n_dropped:
        if r < n_inserts and (d == n_dropped or inserts[r] <= dropped[d]):
            yield inserts[r], 0, r
            r += 1
        else:
            yield dropped[d], 1, 0
            d += 1


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


def _as_little_endian(data: array[int] | bytearray) -> array[int] | bytearray:
    """``data`` in the state file's byte order, little-endian (swapped in place on a big-endian machine)."""
    if isinstance(data, array) and sys.byteorder != "little":
        data.byteswap()
    return data


def check_state_path(uri: str) -> None:
    """Refuse a (rendered) ``state_path`` that could reach outside its folder (see :func:`check_storage_path`)."""
    check_storage_path(uri, "state_path")


@dataclass
class LoadedState:
    """What :func:`read_state` found.

    :param state: the state to use (empty when there was none, or none that can be trusted).
    :param distrust: why a stored state is not used (``None``: it is used, or there was none).
    :param stored_generation: the generation of the file as read (``None``: there was no file); a
        write checks that it is still the same.
    :param authenticated: ``True`` when a stored state passed the authentication check, ``False``
        when a file at the path failed it (another key, another format, changed by someone else,
        unreadable, not a sync state at all), ``None`` when there was none.
    :param other_identity: the file is this path's authentic state, written for another identity
        (another destination, account, lists or mapping): the export refuses to replace it unless
        told to start over (see :class:`~airflow_provider_ciexport.export.engine.SyncSettings`).
    """

    state: SyncState
    distrust: str | None = None
    stored_generation: int | None = None
    authenticated: bool | None = None
    other_identity: bool = False


def storage_path(uri: str) -> Any:
    """The ``ObjectStoragePath`` of ``uri`` (local or object storage), for the state and its companions."""
    from airflow.sdk import ObjectStoragePath

    return ObjectStoragePath(uri)


def _local(path: Any) -> str | None:
    """The OS path of a local ``ObjectStoragePath`` (``file://`` or a plain path), else ``None``."""
    return str(path.path) if getattr(path.fs, "local_file", False) else None


def read_state(
    uri: str, identity: StateIdentity, keys: StateKeys, role: FileRole | None = None
) -> LoadedState:
    """Read the state at ``uri`` for an export with ``identity``, checking it with ``keys``.

    A missing file gives an empty state; an unreadable or damaged one, one that fails the
    authentication check, one signed as another file (``role``) or one written for another identity
    gives an empty state and the reason (the run then sends everything, removes and re-subscribes
    nobody, and writes a new one). Whatever the file holds, ``stored_generation`` is what
    :func:`write_state` will find, so that write replaces it.

    :param role: what the file must have been signed as (default: the state at ``uri``).
    :raises ExportConfigurationError: if the URI cannot be used at all.
    """
    path = storage_path(uri)
    try:
        if not path.exists():
            return LoadedState(SyncState(identity))
        with open_for_reading(path) as f:
            return _parse(f, identity, keys, role or FileRole(uri))
    except FileNotFoundError:
        return LoadedState(SyncState(identity))
    except PermissionError as exc:
        raise ExportConfigurationError(
            f"The sync state at state_path cannot be read ({type(exc).__name__}). Give the workers "
            "read and write access to it, or choose another state_path."
        ) from None
    except OSError as exc:
        return LoadedState(
            SyncState(identity),
            distrust=f"the stored state is unreadable ({type(exc).__name__})",
            stored_generation=-1,
            authenticated=False,
        )


#: The most of a state file read or written at once. Small, because each piece is held several times
#: while an object store uploads it (its buffer, the part's copy), next to the whole state.
IO_CHUNK = 2**20
#: Object stores' read-ahead block: a state is read in a few large requests, not one per piece (the
#: default, 50 MB for s3fs, would be held on top of the state itself).
_READ_BLOCK = 4 * 2**20
#: Object stores' write block: S3's smallest multipart part (5 MiB; a multiple of GCS's 256 KiB).
_WRITE_BLOCK = 5 * 2**20


def _read_into(f: IO[bytes], out: memoryview, mac: Any) -> None:
    """Fill ``out`` from ``f`` (and ``mac``), :data:`IO_CHUNK` at a time, so that no second copy of a
    section is ever held; raise ``ValueError`` if the file ends first."""
    done, size = 0, len(out)
    while done < size:
        data = f.read(min(IO_CHUNK, size - done))
        if not data:
            raise ValueError("truncated")
        out[done : done + len(data)] = data
        mac.update(data)
        done += len(data)


def _read_array(f: IO[bytes], n: int, mac: Any) -> array[int]:
    """``n`` little-endian 64-bit numbers (in the machine's order)."""
    out: array[int] = array("Q", [0]) * n
    _read_into(f, memoryview(out).cast("B"), mac)
    if sys.byteorder != "little":
        out.byteswap()
    return out


def _read_bytes(f: IO[bytes], n: int, mac: Any) -> bytearray:
    out = bytearray(n)
    _read_into(f, memoryview(out), mac)
    return out


def open_for_reading(path: Any) -> IO[bytes]:
    """Open a state (or partial state) for reading, with an object store's read-ahead block kept small."""
    return path.open("rb") if _local(path) is not None else path.open("rb", block_size=_READ_BLOCK)


#: A header is smaller than this (its identity and removal windows).
_MAX_HEADER_BYTES = 1_000_000
_MAX_GENERATION = 2**53


class _NotAState(ValueError):
    """The file does not start like a sync state."""


def _read_header(f: IO[bytes]) -> tuple[bytes, bytes, dict[str, Any], int]:
    """``(size field, header bytes, header, generation)`` of a state file, nothing of it authenticated.

    The generation is -1 when the header holds none that is usable.

    :raises ValueError: when the file has no readable header (:class:`_NotAState`: not a state at all).
    """
    if f.read(len(MAGIC)) != MAGIC:
        raise _NotAState("not a sync state")
    size_bytes = f.read(8)
    size = int.from_bytes(size_bytes, "little")
    if len(size_bytes) != 8 or not 0 < size < _MAX_HEADER_BYTES:
        raise ValueError("bad header size")
    header_bytes = f.read(size)
    if len(header_bytes) != size:
        raise ValueError("truncated header")
    try:
        header = json.loads(header_bytes)
    except RecursionError:
        raise ValueError("header nested too deeply") from None
    if not isinstance(header, dict):
        raise ValueError("header is not an object")
    generation = header.get("generation", 0)
    if type(generation) is not int or not 0 <= generation <= _MAX_GENERATION:
        generation = -1
    return size_bytes, header_bytes, header, generation


def _remaining(f: IO[bytes]) -> int:
    """How many bytes of ``f`` are left to read."""
    here = f.tell()
    end = f.seek(0, os.SEEK_END)
    f.seek(here)
    return int(end - here)


def _section_sizes(header: dict[str, Any], available: int) -> tuple[int, int] | None:
    """``(count, blob_bytes)`` from an unauthenticated header, or ``None`` unless they describe exactly
    the ``available`` bytes that follow it (so nothing is sized by a number the file cannot back)."""
    count, blob = header.get("count"), header.get("blob_bytes")
    if type(count) is not int or type(blob) is not int or count < 0 or blob < 0:
        return None
    return (count, blob) if 18 * count + blob + _TAG_BYTES == available else None


def _format_name(value: Any) -> str:
    """The stored format as messages may quote it: only a format this provider ever wrote."""
    return f"format {value}" if type(value) is int and 0 < value < FORMAT else "an unknown format"


def _signing_key(header: dict[str, Any], keys: StateKeys) -> tuple[bytes | None, str]:
    """The key among ``keys`` that signed a state with this (unauthenticated) header, or ``None`` and
    why the state cannot be checked."""
    if header.get("format") == 2:
        return (
            None,
            "the stored state has format 2, not 3 (it does not say which file it is; this run replaces it)",
        )
    if header.get("format") != FORMAT:
        return (
            None,
            f"the stored state has {_format_name(header.get('format'))}, not {FORMAT} (it is not authenticated)",
        )
    if header.get("kdf") != KDF:
        return (
            None,
            "the stored state is signed under an older key derivation of this provider (this run replaces it)",
        )
    key = keys.find(header.get("key_id"))
    if key is None:
        return None, f"the stored state is signed with a key these workers do not hold (keys: {keys.source})"
    return key, ""


def _parse(f: IO[bytes], identity: StateIdentity, keys: StateKeys, role: FileRole) -> LoadedState:
    empty = SyncState(identity)
    try:
        size_bytes, header_bytes, header, generation = _read_header(f)
    except _NotAState:
        return LoadedState(
            empty, "the file at state_path is not a sync state", stored_generation=-1, authenticated=False
        )
    except ValueError:
        return LoadedState(
            empty, "the stored state is damaged (its header is unreadable)", -1, authenticated=False
        )
    # Nothing of the header is used before the tag is checked, except to find the key and the sizes.
    key, why = _signing_key(header, keys)
    if key is None:
        return LoadedState(empty, why, generation, authenticated=False)
    sizes = _section_sizes(header, _remaining(f))
    if sizes is None:
        return LoadedState(
            empty,
            "the stored state is damaged (cut short, or its sizes do not match the file)",
            generation,
            authenticated=False,
        )
    n, blob_bytes = sizes
    mac = hmac.new(key, MAGIC + size_bytes + header_bytes, hashlib.sha256)
    try:
        keys_ = _read_array(f, n, mac)
        digests = _read_array(f, n, mac)
        flags = _read_bytes(f, n, mac)
        lengths = _read_bytes(f, n, mac)
        blob = _read_bytes(f, blob_bytes, mac)
        authentic = hmac.compare_digest(f.read(_TAG_BYTES), mac.digest()) and not f.read(1)
    except ValueError:  # the file changed while it was read
        authentic = False
    if not authentic:
        return LoadedState(
            empty,
            "the stored state failed its authentication check (changed outside the export, or damaged)",
            generation,
            authenticated=False,
        )
    reason = role.mismatch(header.get("file"))
    if reason is not None:
        return LoadedState(empty, reason, generation, authenticated=True)
    reason = identity.mismatch(header.get("identity"))
    if reason is not None:
        return LoadedState(empty, reason, generation, authenticated=True, other_identity=True)
    state = SyncState(identity, generation, keys_, digests, flags, lengths, blob)
    _read_run_notes(state, header)
    return LoadedState(state, None, generation, authenticated=True)


def _read_run_notes(state: SyncState, header: dict[str, Any]) -> None:
    """Set what an authenticated header says of past runs: removal windows, the lists' member count."""
    # Windows of another shape (none that this format writes) are left out: nobody removed in them
    # is re-subscribed.
    state.removals = [[float(x) for x in w] for w in header.get("removals") or [] if len(w) == 3]
    members = header.get("list_members")
    state.list_members = members if type(members) is int and members >= 0 else None
    state.members_read_at = _time_or_none(header.get("members_read_at"))
    opted_out = header.get("opted_out_count")
    state.opted_out_count = opted_out if type(opted_out) is int and opted_out >= 0 else None
    state.opted_out_read_at = _time_or_none(header.get("opted_out_read_at"))
    state.opted_out_full_read_at = _time_or_none(header.get("opted_out_full_read_at"))


def _time_or_none(value: Any) -> float | None:
    return float(value) if isinstance(value, int | float) and not isinstance(value, bool) else None


def write_state(
    uri: str,
    state: SyncState,
    expected_generation: int | None,
    keys: StateKeys,
    *,
    tag: str | None = None,
    role: FileRole | None = None,
) -> int:
    """Replace the state at ``uri`` with ``state`` merged with this run's changes, signed with the
    newest of ``keys``; return its generation.

    :param expected_generation: the generation the file had when this run read it (``None``: there
        was no file). If another run wrote it since, nothing is written.
    :param tag: names the temporary copy (``<state>.tmp-<tag>``): the writer's lease tag, so that
        :func:`remove_stale_copies` knows the copies of writers that no longer hold the lease.
    :param role: what the file is, signed into its header (default: the state at ``uri``).
    :raises StateConflictError: when the file changed since it was read.
    """
    path = storage_path(uri)
    current = _stored_generation(path)
    if current != expected_generation:
        raise StateConflictError(
            f"The sync state at state_path was written by another run while this one ran (generation "
            f"{current}, this run read {expected_generation}); this run's state was not saved, so its "
            "contacts are sent again next time. Do not run two exports with one state_path at once."
        )
    generation = max(current or 0, 0) + 1  # -1: an unusable file, which this write replaces
    key_id, key = keys.signing
    header = _header(state, key_id, role or FileRole(uri), generation)
    make_parents(path)
    tmp = storage_path(f"{uri}.tmp-{tag or secrets.token_hex(6)}")
    local = _local(tmp)
    try:
        with open_new(tmp) as f:
            out = _SignedWriter(f, key)
            out.write(MAGIC)
            out.write(len(header).to_bytes(8, "little"))
            out.write(header)
            state.write_sections(out.write)
            out.finish()
            if local is not None:
                # On disk before the rename makes it the state, or a crash leaves an empty state file.
                f.flush()
                os.fsync(f.fileno())
        _put_in_place(local, tmp, path)
    finally:
        with contextlib.suppress(OSError):
            if tmp.exists():
                tmp.unlink()
    return generation


class _SignedWriter:
    """Writes a file through an HMAC, in pieces of at most :data:`IO_CHUNK`: small writes (an email
    each) are gathered, large ones (a whole section) cut, so that an object store's file never buffers
    more than a block and a million emails are not a million calls."""

    def __init__(self, f: IO[bytes], key: bytes) -> None:
        self._f = f
        self._mac = hmac.new(key, digestmod=hashlib.sha256)
        self._pending = bytearray()

    def write(self, data: bytes | bytearray | memoryview | array[int]) -> None:
        """Add ``data`` to the file."""
        view = memoryview(data).cast("B")
        if len(self._pending) + len(view) <= IO_CHUNK:
            self._pending += view
            return
        self._flush()
        for start in range(0, len(view), IO_CHUNK):
            piece = view[start : start + IO_CHUNK]
            self._mac.update(piece)
            self._f.write(piece)

    def _flush(self) -> None:
        if self._pending:
            self._mac.update(self._pending)
            self._f.write(self._pending)
            self._pending = bytearray()

    def finish(self) -> None:
        """Write what is gathered, then the HMAC of everything written."""
        self._flush()
        self._f.write(self._mac.digest())


def _header(state: SyncState, key_id: str, role: FileRole, generation: int) -> bytes:
    """The state file's header: its format, key, role, identity, generation and sizes."""
    count, blob_bytes = state.merged_size()
    return json.dumps(
        {
            "format": FORMAT,
            "kdf": KDF,
            "key_id": key_id,
            "file": role.as_dict(),
            "identity": state.identity.as_dict(),
            "generation": generation,
            "written_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "count": count,
            "blob_bytes": blob_bytes,
            **{name: getattr(state, name) for name in RUN_NOTES},
            "removals": state.removals[-MAX_REMOVAL_WINDOWS:],
        }
    ).encode()


def _put_in_place(local: str | None, tmp: Any, path: Any) -> None:
    """Rename the written copy ``tmp`` (``local``: its path on local disk, if there) over the state:
    on local disk, durably (the folder is synced after)."""
    if local is None:
        tmp.rename(path)  # an object store's rename (a copy and a delete) is as durable as it gets
        return
    os.replace(local, _local(path) or "")
    _fsync_folder(os.path.dirname(local))


def _fsync_folder(folder: str) -> None:
    """Make a rename in ``folder`` durable (where the OS lets a folder be synced)."""
    try:
        fd = os.open(folder or ".", os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    except OSError:
        return
    try:
        with contextlib.suppress(OSError):
            os.fsync(fd)
    finally:
        os.close(fd)


def make_parents(path: Any) -> None:
    """Create the folders above ``path`` that are missing: ``0700`` on local disk (the state holds
    emails), whatever the umask. Object stores have no folders."""
    local = _local(path)
    if local is None:
        with contextlib.suppress(OSError, ValueError):
            path.parent.mkdir(parents=True, exist_ok=True)
        return
    missing = []
    parent = os.path.dirname(local)
    while parent and not os.path.isdir(parent):
        missing.append(parent)
        parent = os.path.dirname(parent)
    for folder in reversed(missing):
        with contextlib.suppress(FileExistsError):
            os.mkdir(folder, 0o700)


def open_for_writing(path: Any) -> IO[bytes]:
    """Open a file for writing, replacing it; on an object store uploaded a part at a time (the
    store's default block, 50 MB for s3fs, would be held whole)."""
    return path.open("wb") if _local(path) is not None else path.open("wb", block_size=_WRITE_BLOCK)


def open_new(path: Any) -> IO[bytes]:
    """Open a file that must not exist yet for writing: ``0600`` on local disk, never through a
    symbolic link."""
    local = _local(path)
    if local is None:
        return open_for_writing(path)
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_CLOEXEC", 0)
    return os.fdopen(os.open(local, flags, 0o600), "wb")


def _stored_generation(path: Any) -> int | None:
    """The generation of the file at ``path`` as :func:`read_state` reports it (``None``: no file)."""
    try:
        if not path.exists():
            return None
        with open_for_reading(path) as f:
            return _read_header(f)[3]
    except FileNotFoundError:
        return None
    except (OSError, ValueError):
        return -1


def remove_stale_copies(uri: str, keep: str) -> int:
    """Delete the temporary copies of the state that killed writes left (``<state>.tmp-<tag>``, with
    the emails in them), except the one tagged ``keep``; return how many were deleted.

    Only call it while holding the state's lease: every writer holds it while it writes, so a copy with
    another tag belongs to a write that can no longer finish. Files not named exactly so are left alone.
    """
    path = storage_path(uri)
    pattern = re.compile(re.escape(path.name) + r"\.tmp-[0-9a-f]{12}")
    removed = 0
    try:
        siblings = [p for p in path.parent.iterdir() if pattern.fullmatch(p.name)]
    except (OSError, ValueError):
        return 0
    for sibling in siblings:
        if sibling.name.endswith(f".tmp-{keep}"):
            continue
        with contextlib.suppress(FileNotFoundError):
            sibling.unlink()
            removed += 1
    if removed:
        log.info("Deleted %d temporary copies of the sync state left by interrupted writes.", removed)
    return removed


#: What a lease file says it is, so that a ``.lock`` file this provider did not write is never touched.
LEASE_KIND = "airflow-provider-ciexport/sync-state-lease"


class _Foreign:
    """A ``.lock`` file that is not a lease of this provider."""


#: What a lease's owner looks like (DAG, task, run id, map index, try number: Airflow's ids are at most
#: 250 characters of these), so that only such a text is quoted into logs, errors and the XCom.
_OWNER_SHAPE = re.compile(r"[A-Za-z0-9 _.~:+=@,/-]{1,800}")


def _shown_owner(owner: Any) -> str:
    """A lease's owner as messages may quote it (the file is not authenticated)."""
    if isinstance(owner, str) and _OWNER_SHAPE.fullmatch(owner):
        return owner
    return "a run whose lease names it in an unexpected form"


@dataclass
class StateLease:
    """A lease file (``<state>.lock``) that keeps two runs of one export from using a state at once.

    Each try of a task holds its own lease: ``owner`` names it (DAG, task, run, map index, try number)
    and a random token tells it apart from any other, so a zombie try and its retry never both hold
    it. The lease is renewed every ``ttl_s / 3`` seconds while held, each renewal first checking that
    it is still this try's; one older than ``ttl_s`` belongs to a try that died and is taken over, and
    so is one written on this machine (same host name, boot id, machine id and pid namespace) by a
    process that no longer exists. :meth:`check` tells, before
    removals and before the state is written, whether it is still held.

    :param uri: the state's URI.
    :param owner: who holds it, shown to the run that has to wait.
    :param ttl_s: how long a lease lives without renewal.
    """

    uri: str
    owner: str
    ttl_s: float = 600.0
    token: str = field(default_factory=lambda: secrets.token_hex(16), repr=False)
    _stop: threading.Event = field(default_factory=threading.Event, repr=False)
    _lost: threading.Event = field(default_factory=threading.Event, repr=False)
    _thread: threading.Thread | None = field(default=None, repr=False)
    _holder: str = field(default="", repr=False)

    @property
    def path(self) -> Any:
        return storage_path(f"{self.uri}.lock")

    @property
    def tag(self) -> str:
        """Names this try's temporary copy of the state (see :func:`remove_stale_copies`)."""
        return self.token[:12]

    def _read(self) -> dict[str, Any] | _Foreign | None:
        """The lease as stored; ``None`` when there is none, ``_Foreign`` when the file is not one."""
        try:
            data = json.loads(self.path.read_bytes())
        except FileNotFoundError:
            return None
        except ValueError:
            return _Foreign()
        if (
            isinstance(data, dict)
            and isinstance(data.get("token"), str)
            and isinstance(data.get("owner"), str)
            and isinstance(data.get("renewed_at"), (int, float))
            and data.get("kind", LEASE_KIND) == LEASE_KIND
        ):
            return data
        return _Foreign()

    def _foreign_error(self) -> ExportConfigurationError:
        return ExportConfigurationError(
            "A file named like the sync state's lease ('<state_path>.lock') exists and is not a lease of "
            "this provider; it was left untouched. Nothing was sent. Choose another state_path, or "
            "remove that file if it is not needed."
        )

    def _write(self) -> None:
        body = {
            "kind": LEASE_KIND,
            "owner": self.owner,
            "token": self.token,
            **holder(),
            "renewed_at": time.time(),
        }
        data = json.dumps(body).encode()
        local = _local(self.path)
        if local is None:
            with self.path.open("wb") as f:
                f.write(data)
            return
        # Replaced whole through a private temporary sibling: 0600, never through a symbolic link.
        tmp = f"{local}.{self.tag}"
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        with open_new(storage_path(tmp)) as f:
            f.write(data)
        os.replace(tmp, local)

    def acquire(self) -> None:
        """Take the lease, or fail naming the run that holds it.

        :raises StateBusyError: when another live try holds it.
        :raises ExportConfigurationError: when the ``.lock`` file is not a lease of this provider.
        """
        held = self._read()
        if isinstance(held, _Foreign):
            raise self._foreign_error()
        if held is not None and held["token"] != self.token and not dead_here(held):
            age = time.time() - float(held["renewed_at"])
            if age < self.ttl_s:
                raise StateBusyError(
                    f"Another run of this export ({_shown_owner(held['owner'])}) is using the sync state at "
                    f"state_path (its lease was renewed {age:.0f} s ago). Nothing was sent. Wait for it to "
                    f"finish; if it died, its lease expires {self.ttl_s - age:.0f} s from now, or delete "
                    "the state's '.lock' file."
                )
        make_parents(self.path)
        self._write()
        # Two runs that wrote at the same moment: the last write wins, the other sees it and yields.
        time.sleep(0.05)
        mine = self._read()
        if not isinstance(mine, dict) or mine["token"] != self.token:
            raise StateBusyError(
                "Another run of this export took the sync state's lease at the same moment. Nothing was "
                "sent. Retry this task once that run has finished."
            )
        self._thread = threading.Thread(target=self._renew, name="ciexport-state-lease", daemon=True)
        self._thread.start()

    def _still_mine(self, strict: bool = False) -> bool:
        """Whether the lease file still holds this try's token; when it cannot be read, a renewal
        tries again later, a check (``strict``) takes it as lost."""
        try:
            held = self._read()
        except OSError as exc:
            if strict:
                self._holder = f"unknown: the lease could not be read ({type(exc).__name__})"
                return False
            return not self._lost.is_set()
        if isinstance(held, dict) and held["token"] == self.token:
            return True
        self._holder = (
            _shown_owner(held["owner"]) if isinstance(held, dict) else "nobody: the lease file is gone"
        )
        self._lost.set()
        return False

    def renew(self) -> bool:
        """Renew the lease if it is still this try's (never rewriting another's); return whether it is."""
        if not self._still_mine():
            log.warning(
                "The sync state's lease is no longer this run's (now: %s); this run stops renewing it and "
                "will neither remove contacts nor write the state.",
                self._holder,
            )
            return False
        try:
            self._write()
        except OSError:
            log.warning("Could not renew the sync state's lease; another run may take it over.")
        return True

    def _renew(self) -> None:
        while not self._stop.wait(self.ttl_s / 3):
            if not self.renew():
                return

    def check(self, before: str) -> None:
        """Fail unless the lease is still this try's.

        :param before: what the run was about to do, and what it means that it does not (for the message).
        :raises StateBusyError: when another run took it over (or it was deleted).
        """
        if self._lost.is_set() or not self._still_mine(strict=True):
            raise StateBusyError(
                f"This run no longer holds the sync state's lease (now: {self._holder}), so it stopped "
                f"before {before}. Another run may be using the state: let it finish, and check that two "
                "exports do not share one state_path."
            )

    def release(self) -> None:
        """Give the lease back (only if it is still this try's)."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
        with contextlib.suppress(OSError):
            held = self._read()
            if isinstance(held, dict) and held["token"] == self.token:
                self.path.unlink()
