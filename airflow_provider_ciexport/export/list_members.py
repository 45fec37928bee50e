"""What the target lists hold now, as a sync run needs it: their member count, and their members.

A run compares the count with the one the state stored at the end of the last run, and reads the
members only when they differ (or where mirror mode always needs them): what changed outside the
export is then found at the cost of one request a list on a quiet day.
"""

from __future__ import annotations

import logging
import time

from airflow_provider_ciexport.export.destination import Destination
from airflow_provider_ciexport.export.progress import PhaseProgress
from airflow_provider_ciexport.export.state import LoadedState, SyncState
from airflow_provider_ciexport.export.sync import ListMembers, SyncSettings

log = logging.getLogger(__name__)


def members_needed(
    sync: SyncSettings, destination: Destination, loaded: LoadedState, first_sync: bool, leavers: int = 0
) -> bool:
    """Whether this run reads the lists' members: in mirror mode on the first sync (who was there
    before) and when contacts to remove need their ids; with a trusted state, when the members' count
    changed or ``check_members_every`` says so.

    :param leavers: how many contacts a mirror run would remove.
    """
    if sync.mirror and (first_sync or (leavers and destination.removal_needs_contact_ids)):
        return True
    state = loaded.state
    if not len(state) or sync.full_refresh or loaded.distrust is not None:
        return False
    due = full_read_due(state.members_read_at, sync.check_members_every_s, time.time(), "the lists' members")
    return due or lists_changed(destination, state)


def lists_changed(destination: Destination, state: SyncState) -> bool:
    """Whether the lists' active members, counted now, differ from their count when ``state`` was
    written: then something changed them outside the export (or a run died before writing it)."""
    count = destination.member_count()
    if count is None or count == state.list_members:
        return False
    log.info(
        "The target lists hold %s active members; the sync state expects %s. Reading the members "
        "to find what changed outside this export.",
        f"{count:,}",
        "an unknown number" if state.list_members is None else f"{state.list_members:,}",
    )
    return True


def full_read_due(last: float | None, every_s: float | None, now: float, what: str) -> bool:
    """Whether the user's ``check_members_every`` asks for a full read of ``what`` this run.

    :param last: when the last full read of it was (Unix seconds; ``None``: never).
    """
    if every_s is None:
        return False
    if last is not None and now - last < every_s:
        return False
    log.info(
        "Reading %s in full, to repair what changed outside this export (check_members_every: the "
        "last full read was %s).",
        what,
        "never" if last is None else f"{(now - last) / 86400:,.1f} days ago",
    )
    return True


def read_members(
    destination: Destination, state: SyncState, leavers: set[str], progress_interval_s: float = 30.0
) -> tuple[ListMembers, dict[str, str]]:
    """The lists' active members (normalised emails) against ``state``, and the contact ids of those
    in ``leavers``.

    A read that lasts longer than ``progress_interval_s`` tells how far it got at least that often,
    against the lists' member count (asked only then: one request a list).
    """
    members = ListMembers(state)
    removal_ids: dict[str, str] = {}
    what = f"Reading the {destination.name} lists' members"
    with PhaseProgress(what, destination.member_count, progress_interval_s, unit="members") as progress:
        for email, contact_id in progress.counted(destination.members()):
            email = email.strip().lower()
            members.add(email)
            if email in leavers:
                removal_ids[email] = contact_id
    return members, removal_ids


def log_missing(missing: int) -> None:
    """Say how many contacts the state shows on the lists were not among their members."""
    if missing:
        log.warning(
            "%s contacts the sync state shows on the lists are not there any more (deleted or taken "
            "off the lists outside this export): those still in the segment are sent again.",
            f"{missing:,}",
        )


def closing_count(destination: Destination) -> int | None:
    """The lists' active members now, stored with the state for the next run to compare (``None``: not
    known, and the next run reads the members). Never raises: the state must still be written."""
    try:
        return destination.member_count()
    except Exception as exc:
        log.warning("Could not count the lists' members (%s): the next run reads them.", type(exc).__name__)
        return None
