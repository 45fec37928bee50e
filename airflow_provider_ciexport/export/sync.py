"""The diff between a segment and its sync state: what to send, what to skip, whom to remove.

Vendor-agnostic: it sees normalised emails and encoded contacts, and the state
(:mod:`~airflow_provider_ciexport.export.state`); destinations only say who opted out and carry out
sends and removals.
"""

from __future__ import annotations

import enum
import threading
from array import array
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import NamedTuple

from airflow_provider_ciexport.core.contacts import EmailSet
from airflow_provider_ciexport.exceptions import CiExportError, ExportConfigurationError
from airflow_provider_ciexport.export.state import (
    MANAGED,
    REMOVED,
    UNSUBSCRIBED,
    StateKeys,
    SyncState,
    contact_digest,
    email_key,
)


class ContactKind(enum.IntEnum):
    """What a contact is to the sync state (the report counts each under :data:`KIND_NAMES`)."""

    NEW = 0  #: not in the state, or owned but never confirmed: sent
    CHANGED = 1  #: in the state with another digest: sent
    UNCHANGED = 2  #: in the state with this digest: skipped
    READD = 3  #: removed by the export and back in the segment: sent, and re-subscribed
    OPTED_OUT = 4  #: unsubscribed by the person: skipped
    RESTORED = 5  #: in the state, but gone from the lists outside the export: sent again


NEW, CHANGED, UNCHANGED, READD, OPTED_OUT, RESTORED = ContactKind

#: The report's name for the count of each :class:`ContactKind`, in its order.
KIND_NAMES = ("new", "changed", "unchanged", "readded", "skipped_unsubscribed", "restored")


class Classified(NamedTuple):
    """One contact as :meth:`SegmentDiff.classify` found it."""

    kind: ContactKind
    #: Its entry in the state, or -1.
    state_index: int
    #: Its email's key in the state.
    key: int
    #: Its encoded body's digest (0 when it is skipped as opted out).
    digest: int


@dataclass(frozen=True)
class SyncSettings:
    """How an export keeps its lists in sync with the segment (see :mod:`.state` and :mod:`.sync`).

    :param state_path: the sync state's URI (an ``ObjectStoragePath``: ``s3://``, ``file:///``...).
    :param mode: ``"upsert"`` (send new and changed contacts) or ``"mirror"`` (also remove the contacts
        the export added that left the segment).
    :param full_refresh: send every contact once and rebuild the state; also the way to start over on a
        ``state_path`` whose state was written for other lists (or another destination, account or
        mapping), which a run otherwise refuses to replace.
    :param max_removal_fraction: fail before sending anything if more than this share of the contacts
        the export added would be removed, or if the segment is empty.
    :param check_members_every_s: also read the lists' members (and repair what changed outside the
        export) when the last full read is older than this many seconds, even if their count did not
        change (``None``: only when it changed).
    :param lease_owner: who this try is (DAG, task, run, map index, try number), for the lease that
        keeps any other try out.
    :param keys: the keys that authenticate the state (``None``: from
        :func:`~airflow_provider_ciexport.export.state_keys.state_keys`, the default connection or Airflow's
        fernet key).
    """

    state_path: str
    mode: str = "upsert"
    full_refresh: bool = False
    max_removal_fraction: float = 0.2
    check_members_every_s: float | None = None
    lease_owner: str = "this export"
    keys: StateKeys | None = None

    @property
    def mirror(self) -> bool:
        """Whether contacts that left the segment are removed."""
        return self.mode == "mirror"

    def __post_init__(self) -> None:
        check_sync_mode(self.mode)


#: What ``sync_mode`` may be.
SYNC_MODES = ("upsert", "mirror")


def check_sync_mode(mode: str) -> None:
    """Fail naming the modes if ``mode`` is not one of :data:`SYNC_MODES`.

    :raises ExportConfigurationError: if it is not.
    """
    if mode not in SYNC_MODES:
        raise ExportConfigurationError(f"sync_mode must be 'upsert' or 'mirror', not {mode!r}.")


class RemovalLimitError(CiExportError):
    """Removing the contacts that left the segment would exceed the safety limit."""


@dataclass
class BatchEntries:
    """The state entries behind one batch of contacts, kept compactly until its job is confirmed.

    :param indices: each contact's entry in the state (-1: new to it).
    :param keys: each contact's email key.
    :param digests: each contact's digest as sent.
    :param emails: the contacts' emails, newline-joined.
    """

    indices: array[int] = field(default_factory=lambda: array("q"))
    keys: array[int] = field(default_factory=lambda: array("Q"))
    digests: array[int] = field(default_factory=lambda: array("Q"))
    emails: list[str] = field(default_factory=list)

    def add(self, index: int, key: int, digest: int, email: str) -> None:
        """Note one contact of the batch."""
        self.indices.append(index)
        self.keys.append(key)
        self.digests.append(digest)
        self.emails.append(email)

    def __len__(self) -> int:
        return len(self.indices)

    def split(self, n: int) -> tuple[BatchEntries, BatchEntries]:
        """The first ``n`` entries (one batch's) and the rest."""
        head = BatchEntries(self.indices[:n], self.keys[:n], self.digests[:n], self.emails[:n])
        tail = BatchEntries(self.indices[n:], self.keys[n:], self.digests[n:], self.emails[n:])
        return head, tail


class ListMembers:
    """The lists' members as a run reads them, against its state: a byte for each of the state's
    entries, and a set of the addresses the state does not hold. A re-export's or a retry's members
    are mostly in the state: a million take 1 MB instead of a 17 MB set.

    :param state: the state the run's diff works on (a retry's claims folded in).
    """

    def __init__(self, state: SyncState) -> None:
        self._state = state
        self._in_state = bytearray(len(state))
        self._others = EmailSet()

    def add(self, email: str) -> None:
        """Add a member (a normalised address)."""
        index = self._state.find(email_key(email))
        if index >= 0:
            self._in_state[index] = 1
        else:
            self._others.add(email)

    def holds_entry(self, index: int) -> bool:
        """Whether the state's entry ``index`` is a member."""
        return bool(self._in_state[index])

    def holds_new(self, email: str) -> bool:
        """Whether an address the state does not hold is a member."""
        return email in self._others


class SegmentDiff:
    """Classifies each contact of a run against the state, and records what the run confirmed.

    :param state: the state read at the start (empty on a first sync).
    :param full_refresh: send every contact, whatever the state says.
    :param mirror: the run may remove contacts that left the segment; new memberships are recorded as
        created by the export (unless ``members_before`` shows they already existed).
    :param opted_out: people the destination shows as unsubscribed by their own action (or excluded).
    :param removal_unsubscribes: the destination's removal looks like an opt-out (ActiveCampaign's
        status 2): a contact the export removed is then not skipped as opted out but re-added.
    :param members_before: the lists' members before this run (``None``: unknown); a membership that
        existed before the export sent the contact is not the export's to remove.
    """

    def __init__(
        self,
        state: SyncState,
        *,
        full_refresh: bool = False,
        mirror: bool = False,
        opted_out: EmailSet | None = None,
        removal_unsubscribes: bool = False,
        members_before: ListMembers | None = None,
    ) -> None:
        self.state = state
        self.full_refresh = full_refresh
        self.mirror = mirror
        self.opted_out = opted_out if opted_out is not None else EmailSet()
        self.removal_unsubscribes = removal_unsubscribes
        self.members_before = members_before
        self.seen = bytearray(len(state))
        self.counts = dict.fromkeys(KIND_NAMES, 0)
        #: Re-adds sent that the destination did not put back (excluded, or opted out since).
        self.counts["readd_refused"] = 0
        self.readd_emails: list[str] = []
        #: email -> the run that removed it (its entry's digest slot, read before a send overwrites it).
        self.readd_runs: dict[str, int] = {}
        #: 1 for the entries the state shows on the lists that the members read this run did not
        #: include (see :meth:`mark_missing`); empty when the members were not read.
        self.missing = bytearray()
        self._lock = threading.Lock()

    def classify(self, email: str, encoded: bytes) -> Classified:
        """What to do with one contact (see :class:`ContactKind`); counts as it goes."""
        state = self.state
        key = email_key(email)
        index = state.find(key)
        if index >= 0:
            self.seen[index] = 1
        flags = state.flags[index] if index >= 0 else 0
        removed_by_export = bool(flags & REMOVED)
        opted_out = flags & UNSUBSCRIBED or email in self.opted_out
        if opted_out and not (removed_by_export and self.removal_unsubscribes):
            kind = OPTED_OUT
            if index >= 0:
                # The person manages their membership now, not the export; the entry remembers the opt-out.
                state.update(index, 0, UNSUBSCRIBED)
            self.counts["skipped_unsubscribed"] += 1
            return Classified(kind, index, key, 0)
        digest = contact_digest(encoded)
        kind = self._kind(index, digest, removed_by_export)
        if kind == READD:
            self.readd_emails.append(email)
            self.readd_runs[email] = state.digests[index]
        self.counts[KIND_NAMES[kind]] += 1
        return Classified(kind, index, key, digest)

    def _kind(self, index: int, digest: int, removed_by_export: bool) -> ContactKind:
        """What to do with a contact that did not opt out, from its state entry (-1: none)."""
        if index < 0:
            return NEW
        if self.missing and self.missing[index]:
            return RESTORED
        stored = self.state.digests[index]
        if removed_by_export:
            return READD
        if stored == 0:
            return NEW  # owned but never confirmed
        if digest == stored and not self.full_refresh:
            return UNCHANGED
        return CHANGED

    def confirm(self, entries: BatchEntries, refused: Iterable[str] | None, accepted_all: bool) -> None:
        """Record a confirmed batch: its contacts are synced, except those the destination refused.

        :param refused: emails the destination refused, when it says which (ActiveCampaign, or a
            Constant Contact activity whose messages name every refused contact).
        :param accepted_all: the destination accepted every contact; when it refused some without
            saying which (Constant Contact's counts), the batch is only :meth:`claim`-ed: owned, not
            confirmed, so every contact of it is sent again next run and removed if it leaves.
        """
        refused_set = {e.lower() for e in refused} if refused else set()
        if not accepted_all and not refused_set:
            self.claim(entries)
            return
        state = self.state
        for i in range(len(entries)):
            email = entries.emails[i]
            if email in refused_set:
                continue
            index = entries.indices[i]
            if index >= 0:
                old = state.flags[index]
                # A re-added contact is the export's again; otherwise ownership does not change.
                flags = MANAGED if old & REMOVED else old
                state.update(index, entries.digests[i], flags)
            else:
                state.add(entries.keys[i], entries.digests[i], self._new_flags(email), email)

    def claim(self, entries: BatchEntries) -> None:
        """Record that a batch may have created its memberships, without confirming its values.

        For a batch that was sent but not confirmed (refusals the destination did not name, a job
        that failed, a run stopped while it was in flight): each contact is the export's where it
        would have been on confirmation, and its digest is 0, so it is sent again next run and, in
        mirror mode, removed if it leaves the segment. Ownership and confirmation are recorded apart.
        """
        state = self.state
        for i in range(len(entries)):
            index = entries.indices[i]
            if index >= 0:
                flags = state.flags[index]
                if flags & REMOVED and not self.removal_unsubscribes:
                    flags = MANAGED  # the import may have put the removed contact back
                # Still removed: its digest slot keeps the run that removed it.
                state.update(index, None if flags & REMOVED else 0, flags)
            else:
                state.add(entries.keys[i], 0, self._new_flags(entries.emails[i]), entries.emails[i])

    def owned_by_sending(self, entries: BatchEntries) -> list[int]:
        """Positions in ``entries`` whose membership becomes the export's by sending them (and was not
        the export's in the state read at the start): what a retry must know if this try dies."""
        flags = self.state.flags
        out = []
        for i in range(len(entries)):
            index = entries.indices[i]
            if index < 0:
                if self._new_flags(entries.emails[i]) & MANAGED:
                    out.append(i)
            elif flags[index] & REMOVED and not self.removal_unsubscribes:
                out.append(i)
        return out

    def _new_flags(self, email: str) -> int:
        if not self.mirror:
            return 0
        if self.members_before is not None and self.members_before.holds_new(email):
            return 0  # already on the list before the export sent it: not the export's to remove
        return MANAGED

    def mark_missing(self, members: ListMembers) -> int:
        """Note the entries the state shows on the lists (confirmed, not removed by the export) that
        ``members``, the lists' active members read this run, do not include: deleted or taken off
        the lists outside the export. Those still in the segment are sent again (:data:`RESTORED`),
        unless the person opted out; :meth:`forget_missing_leavers` drops the rest. Return how many.
        """
        state = self.state
        missing = bytearray(len(state))
        found = 0
        for index in range(len(state)):
            if (
                state.digests[index] == 0
                or state.flags[index] & (REMOVED | 0x80)
                or members.holds_entry(index)
            ):
                continue
            if state.email(index) not in self.opted_out:
                missing[index] = 1
                found += 1
        self.missing = missing if found else bytearray()
        return found

    def forget_missing_leavers(self) -> None:
        """Drop the missing entries that were not in the segment: they are on no list to remove them
        from, and one that comes back is a new contact."""
        missing, seen = self.missing, self.seen
        self.forget(i for i in range(len(missing)) if missing[i] and not seen[i])

    def leavers(self) -> list[int]:
        """State entries the export added that are no longer in the segment (mirror removes them)."""
        flags, seen = self.state.flags, self.seen
        skip = REMOVED | UNSUBSCRIBED | 0x80
        return [i for i, f in enumerate(flags) if f & MANAGED and not f & skip and not seen[i]]

    def check_removals(
        self, to_remove: int, segment_contacts: int, max_fraction: float, *, sent: bool = False
    ) -> None:
        """Fail before anything is removed (and, from the first read, sent) if the removals look like a
        broken segment.

        :param sent: contacts were sent already (the check after the send): the message says so.
        :raises RemovalLimitError: naming both numbers and the parameter that allows it.
        """
        managed = self.state.count(MANAGED)
        nothing = (
            "Nothing was removed (new and changed contacts were sent)."
            if sent
            else "Nothing was sent or removed."
        )
        if managed and segment_contacts == 0:
            raise RemovalLimitError(
                f"The segment is empty but the sync state holds {managed:,} contacts this export added; "
                f"mirroring it would remove all {to_remove:,} of them. {nothing} Check "
                "the segment's source, its query, file or upstream task (a broken upstream refresh?). If the list really must be emptied, "
                "set max_removal_fraction=1.0 for one run."
            )
        if managed and to_remove > max_fraction * managed:
            raise RemovalLimitError(
                f"{to_remove:,} contacts left the segment, more than max_removal_fraction={max_fraction} of "
                f"the {managed:,} this export added ({int(max_fraction * managed):,}). {nothing} If the "
                "segment really shrank that much, raise max_removal_fraction for one run."
            )

    def removed(self, indices: Iterable[int], run: int) -> None:
        """Record confirmed removals, each with the removal run ``run`` (see :data:`REMOVED`)."""
        for index in indices:
            self.state.update(index, run, REMOVED)

    def forget(self, indices: Iterable[int]) -> None:
        """Drop entries that no longer need the export (e.g. no longer on the list at all)."""
        for index in indices:
            self.state.drop(index)

    def emails(self, indices: Iterable[int]) -> Iterator[tuple[int, str]]:
        """``(index, email)`` of state entries."""
        for index in indices:
            yield index, self.state.email(index)
