"""Who opted out, as a sync run needs it: remembered in the state, read again only as far as it changed.

The state keeps everyone the destination showed as opted out (entries flagged
:data:`~.state.UNSUBSCRIBED`) and the destination's count of them at the end of the run. The next run
counts them again (one request a list, or one for the account):

* the same count: the state's record is all it needs, and nobody is read;
* another count: it reads those who opted out since the last read, where the destination can select
  them by date, and keeps what it found only if it explains the difference exactly (nobody
  re-subscribed or was deleted meanwhile);
* otherwise (a first sync, no count, a state not trusted, or ``check_members_every`` due): it reads
  them all, and the state's record is replaced by what it read.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable
from dataclasses import dataclass

from airflow_provider_ciexport.core.contacts import EmailSet
from airflow_provider_ciexport.export.destination import Destination
from airflow_provider_ciexport.export.list_members import full_read_due
from airflow_provider_ciexport.export.progress import PhaseProgress
from airflow_provider_ciexport.export.state import REMOVED, UNSUBSCRIBED, LoadedState, SyncState, email_key
from airflow_provider_ciexport.export.sync import SyncSettings

log = logging.getLogger(__name__)

#: How far before the last read a read "since" starts: the destinations' clocks and a date-only filter
#: (ActiveCampaign's) must not hide anyone; those found twice are known and not counted twice.
SINCE_MARGIN_S = 86_400.0


@dataclass
class OptOuts:
    """What a run knows of who opted out, besides the state's flags.

    :param emails: the people read this run (normalised); those new to the state are not findable in it
        until it is written, so the run asks this set too.
    :param count: the destination's count at the start of the run (``None``: it cannot count).
    :param read_at: when this run's read started (``None``: nobody was read).
    :param complete: ``emails`` is everyone who opted out (a full read, at ``read_at``), not only who
        changed.
    """

    emails: EmailSet
    count: int | None
    read_at: float | None
    complete: bool = False


def known_opt_outs(
    sync: SyncSettings, destination: Destination, loaded: LoadedState, state: SyncState, interval_s: float
) -> OptOuts:
    """Who opted out, read as little as the counts allow; the state's flags are brought up to date.

    :param loaded: the state as read (whether it is trusted, and its stored count).
    :param state: the state the run works on (with the claims of a try that died).
    :param interval_s: the least time between progress lines of a long read.
    """
    count = destination.opted_out_count()
    stored = loaded.state
    if count is not None and _record_usable(sync, loaded):
        if count == stored.opted_out_count:
            log.info(
                "Who opted out at %s: as the sync state records (the destination counts %s, as at the "
                "end of the last run); nobody is read.",
                destination.name,
                f"{count:,}",
            )
            return OptOuts(EmailSet(), count, None)
        assert stored.opted_out_count is not None
        found = _read_since(destination, state, stored, count - stored.opted_out_count)
        if found is not None:
            return OptOuts(found[0], count, found[1])
    return _read_all(destination, state, count, interval_s)


def _record_usable(sync: SyncSettings, loaded: LoadedState) -> bool:
    """Whether the state's record of who opted out can stand in for reading them all."""
    stored = loaded.state
    return (
        len(stored) > 0
        and loaded.distrust is None
        and not sync.full_refresh
        and stored.opted_out_count is not None
        and not full_read_due(
            stored.opted_out_full_read_at, sync.check_members_every_s, time.time(), "who opted out"
        )
    )


def _read_since(
    destination: Destination, state: SyncState, stored: SyncState, change: int
) -> tuple[EmailSet, float] | None:
    """Read who opted out since the last read; keep it if it explains the count's ``change`` exactly."""
    since = stored.opted_out_read_at
    if since is None:
        return None
    started = time.time()
    found = destination.opted_out_since(since - SINCE_MARGIN_S)
    if found is None:
        return None
    emails = [email.strip().lower() for email in found]
    removal_unsubscribes = destination.removal_unsubscribes
    unknown = sum(1 for email in emails if not _known(state, email_key(email), removal_unsubscribes))
    if unknown != change:
        log.info(
            "Who opted out at %s: the count changed by %s, and %s opted out since the last read: "
            "reading them all.",
            destination.name,
            f"{change:+,}",
            f"{unknown:,}",
        )
        return None
    log.info(
        "Who opted out at %s: %s since the last read, which is all the count changed by.",
        destination.name,
        f"{unknown:,}",
    )
    return _flag(state, emails, removal_unsubscribes), started


def _read_all(destination: Destination, state: SyncState, count: int | None, interval_s: float) -> OptOuts:
    """Read everyone who opted out; the state's record becomes exactly that."""
    started = time.time()
    flags = state.flags
    for index in range(len(state)):
        if flags[index] & UNSUBSCRIBED:
            # Re-read below if still opted out; otherwise a contact like any other (not the export's).
            state.update(index, flags=flags[index] & ~UNSUBSCRIBED)
    what = f"Reading who opted out at {destination.name}"
    with PhaseProgress(what, lambda: count, interval_s, unit="contacts") as progress:
        emails = (email.strip().lower() for email in progress.counted(destination.opted_out()))
        read = _flag(state, emails, destination.removal_unsubscribes)
    return OptOuts(read, count, started, complete=True)


def _known(state: SyncState, key: int, removal_unsubscribes: bool) -> bool:
    """Whether the state already accounts for this person's opt-out (or the export's own removal)."""
    index = state.find(key)
    if index < 0:
        return False
    flags = state.flags[index]
    return bool(flags & UNSUBSCRIBED or (flags & REMOVED and removal_unsubscribes))


def _flag(state: SyncState, emails: Iterable[str], removal_unsubscribes: bool) -> EmailSet:
    """Record ``emails`` as opted out in the state: an entry is flagged (it is no longer the export's),
    a person new to it is added; the export's own removals (ActiveCampaign) stay what they are."""
    read = EmailSet()
    for email in emails:
        if not read.add(email):
            continue  # on several lists
        key = email_key(email)
        index = state.find(key)
        if index < 0:
            state.add(key, 0, UNSUBSCRIBED, email)
        elif not (state.flags[index] & REMOVED and removal_unsubscribes):
            state.update(index, 0, UNSUBSCRIBED)
    return read


def closing_opt_out_count(destination: Destination, start: int | None, own_change: int) -> int | None:
    """The count to store with the state: the destination's count now, if it differs from the start's
    only by this run's own removals and re-adds (``own_change``); otherwise ``None``, and the next run
    reads everyone (someone opted out while this run ran). Never raises: the state must be written."""
    if start is None:
        return None
    try:
        now = destination.opted_out_count()
    except Exception as exc:
        log.warning("Could not count who opted out (%s): the next run reads them.", type(exc).__name__)
        return None
    if now is None or now != start + own_change:
        log.info("Who opted out changed while this run ran: the next run reads them all.")
        return None
    return now
