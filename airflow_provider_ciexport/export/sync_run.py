"""One run's side of keeping lists in sync: the lease, the state, the diff, opt-outs, members and removals.

The pipeline (:mod:`.engine`) asks it which contacts need sending, tells it what each batch's job
confirmed, and lets it finish (re-subscribe, remove) and save the state; the diff itself is
:class:`~.sync.SegmentDiff`, the state's format :mod:`.state`.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Iterable, Iterator, Mapping

from airflow_provider_ciexport.core.contacts import ContactBuilder, EmailSet
from airflow_provider_ciexport.exceptions import ExportConfigurationError
from airflow_provider_ciexport.export.batcher import Batcher
from airflow_provider_ciexport.export.claims import ClaimJournal
from airflow_provider_ciexport.export.destination import Destination
from airflow_provider_ciexport.export.list_members import (
    closing_count,
    log_missing,
    members_needed,
    read_members,
)
from airflow_provider_ciexport.export.opt_outs import OptOuts, closing_opt_out_count, known_opt_outs
from airflow_provider_ciexport.export.outcomes import NO_OUTCOMES, OutcomeHooks
from airflow_provider_ciexport.export.progress import PhaseProgress
from airflow_provider_ciexport.export.report import ExportReport
from airflow_provider_ciexport.export.spool import RowSpool
from airflow_provider_ciexport.export.state import (
    LoadedState,
    StateBusyError,
    StateIdentity,
    StateKeys,
    StateLease,
    SyncState,
    email_key,
    read_state,
    remove_stale_copies,
    write_state,
)
from airflow_provider_ciexport.export.sync import (
    OPTED_OUT,
    UNCHANGED,
    BatchEntries,
    ListMembers,
    SegmentDiff,
    SyncSettings,
)
from airflow_provider_ciexport.export.sync_finish import FollowRemoval, SyncFinish

log = logging.getLogger(__name__)


def _sync_figures(sync: SyncSettings, loaded: LoadedState, reason: str | None) -> dict[str, object]:
    """The report's ``sync`` section at the start of a run."""
    return {
        "sync_mode": sync.mode,
        "state_entries": len(loaded.state),
        "full_refresh_reason": reason,
        "state_authenticated": loaded.authenticated,
        "unchanged": 0,
        "new": 0,
        "changed": 0,
        "readded": 0,
        "readd_refused": 0,
        "restored": 0,
        "skipped_unsubscribed": 0,
        "to_remove": 0,
        "removed": 0,
        "removal_refused": 0,
    }


def _full_refresh_reason(sync: SyncSettings, loaded: LoadedState) -> str | None:
    """Why every contact is sent this run (``None``: the state is used)."""
    if loaded.other_identity:
        return f"full_refresh=True replaces a state of another export ({loaded.distrust})"
    if loaded.distrust is None and sync.full_refresh:
        return "full_refresh=True"
    return loaded.distrust


class SyncRun:
    """The sync side of one export run, from the lease to the state written.

    :param sync: the sync settings.
    :param destination: where the contacts go.
    :param field_mapping: destination attribute -> source column.
    :param report: the run's report (its ``sync`` section is filled here).
    :param dry_run: check and count, but take no lease and write, send and remove nothing.
    :param progress_interval_s: the least time between progress lines of a long phase.
    """

    def __init__(
        self,
        sync: SyncSettings,
        destination: Destination,
        field_mapping: Mapping[str, str],
        report: ExportReport,
        *,
        dry_run: bool,
        progress_interval_s: float = 30.0,
    ) -> None:
        self.sync = sync
        self.progress_interval_s = progress_interval_s
        self.destination = destination
        self.field_mapping = field_mapping
        self.report = report
        self.dry_run = dry_run
        self.diff: SegmentDiff | None = None
        self.lease: StateLease | None = None
        self._keys: StateKeys | None = None
        self._loaded: LoadedState | None = None
        self._removal_ids: dict[str, str] | None = None
        self._members_read_at: float | None = None
        self._opt_outs: OptOuts | None = None
        # The state entries of contacts handed to the batcher and not yet in a batch, and the emails
        # the destination refused.
        self._pending = BatchEntries()
        self._refused: set[str] = set()
        # The entries of the batches handed to the destination and not yet confirmed (by batch number), and
        # where the memberships they may create are saved before they are sent (mirror mode).
        self._inflight: dict[int, BatchEntries] = {}
        self._journal: ClaimJournal | None = None
        self._lock = threading.Lock()

    # -- before anything is read -----------------------------------------------------------------

    def take_lease(self) -> StateLease | None:
        """Find the state's keys and take its lease (not for a dry run, which writes nothing);
        then delete the temporary copies that killed writes left. Nothing is read before this."""
        sync = self.sync
        if sync.keys is not None:
            self._keys = sync.keys
        else:
            from airflow_provider_ciexport.export.state_keys import state_keys

            self._keys = state_keys()
        if self.dry_run:
            return None
        lease = StateLease(sync.state_path, sync.lease_owner)
        lease.acquire()
        try:
            remove_stale_copies(sync.state_path, keep=lease.tag)
        except BaseException:
            lease.release()
            raise
        self.lease = lease
        return lease

    # -- before anything is sent -----------------------------------------------------------------

    def start(self, builder: ContactBuilder, rows: RowSpool | None, total: int | None) -> None:
        """Read the state, who opted out and (when needed) the lists' members; check the safety
        limit. Everything here happens before any contact is sent or removed.

        :param rows: the spooled segment (mirror reads it once before sending).
        :param total: the segment's rows, if counted.
        """
        sync, destination = self.sync, self.destination
        assert self._keys is not None
        identity = StateIdentity.of(
            destination.name, destination.account(), destination.list_ids, self.field_mapping
        )
        loaded = read_state(sync.state_path, identity, self._keys)
        if loaded.other_identity and not sync.full_refresh:
            raise ExportConfigurationError(
                f"The sync state at state_path belongs to another export: {loaded.distrust} (this "
                "run's destination, account, lists and field_mapping are not those it was written for). "
                "Replacing it would make that export take the contacts it added for members that were "
                "there before, and never remove them. Give each set of lists its own state_path (render "
                "the list ids into it); to start over on this state_path with these lists, run once with "
                "full_refresh=True (it sends everything, removes and re-subscribes nobody, and replaces "
                "the state)."
            )
        self._loaded = loaded
        state = self._with_claims(loaded, identity)
        self.report.sync = _sync_figures(sync, loaded, _full_refresh_reason(sync, loaded))
        if loaded.distrust:
            log.warning(
                "The sync state is not used: %s. Every contact is sent (a full refresh); nobody is "
                "removed or re-subscribed on its account.",
                loaded.distrust,
            )
        opt_outs = self._opt_outs = known_opt_outs(sync, destination, loaded, state, self.progress_interval_s)
        opted_out = opt_outs.emails
        first_sync = len(loaded.state) == 0  # claims of a try that died do not make it a later sync
        members_before = self._read_members(builder, state, opted_out, rows, total, first_sync)
        diff = self.diff = SegmentDiff(
            state,
            full_refresh=sync.full_refresh,
            mirror=sync.mirror,
            opted_out=opted_out,
            removal_unsubscribes=destination.removal_unsubscribes,
            members_before=members_before,
        )
        if members_before is not None and not first_sync:
            log_missing(diff.mark_missing(members_before))
        loaded.state = state  # a retry folded its partial states into a copy: free the one as read

    def _with_claims(self, loaded: LoadedState, identity: StateIdentity) -> SyncState:
        """The state, with what an earlier try that died put on the list (see :mod:`.claims`)."""
        state = loaded.state
        if not self.sync.mirror or loaded.distrust is not None:
            return state
        assert self._keys is not None
        journal = ClaimJournal(self.sync.state_path, identity, loaded.stored_generation or 0, self._keys)
        state, claimed = journal.fold_into(state, self.destination.removal_unsubscribes)
        self._journal = journal
        if claimed:
            log.info(
                "An earlier try of this export may have added %s contacts it did not confirm "
                "(a partial state next to the state): they stay the export's and are sent again.",
                f"{claimed:,}",
            )
        return state

    def _read_members(
        self,
        builder: ContactBuilder,
        state: SyncState,
        opted_out: EmailSet,
        rows: RowSpool | None,
        total: int | None,
        first_sync: bool,
    ) -> ListMembers | None:
        """Mirror: check the safety limit from a first pass over the segment. Read the lists' members
        (keeping the contact ids of those that would be removed) when the lists changed outside the
        export, and in mirror mode on the first sync or where it is cheap."""
        leavers: set[str] = set()
        if self.sync.mirror and len(state):
            # A contact builder of its own, for a first pass that must not touch the run's counts.
            probe = ContactBuilder(self.field_mapping, self.destination.schema, builder.columns)
            fraction, interval = self.sync.max_removal_fraction, self.progress_interval_s
            leavers = leavers_before_sending(probe, state, opted_out, rows, total, fraction, interval)
        assert self._loaded is not None
        if first_sync:  # the state is made from what this run sends: it matches the lists from now
            self._members_read_at = time.time()
        if not members_needed(self.sync, self.destination, self._loaded, first_sync, len(leavers)):
            return None
        members, self._removal_ids = read_members(self.destination, state, leavers, self.progress_interval_s)
        self._members_read_at = time.time()
        return members

    # -- while sending ---------------------------------------------------------------------------

    @property
    def readds_pending(self) -> bool:
        """Whether contacts the export removed came back (they go through an import, which names the
        contacts it refuses)."""
        return bool(
            self.diff is not None and self.diff.readd_emails and self.destination.removal_unsubscribes
        )

    def changed(
        self, items: Iterator[tuple[dict[str, str], bytes]], batcher: Batcher, outcomes: OutcomeHooks
    ) -> Iterator[tuple[dict[str, str], bytes]]:
        """Only the contacts that need sending; the rest are counted (unchanged, opted out) and each
        verdict told to ``outcomes``."""
        diff = self.diff
        assert diff is not None
        for contact, item in items:
            if not batcher.fits_alone(item):
                yield contact, item  # too large to send at all: counted where the batches are made
                continue
            kind, index, key, digest = diff.classify(contact["email"], item)
            outcomes.classified(kind)
            if kind in (UNCHANGED, OPTED_OUT):
                continue
            # Read each time: dispatching a batch moves the pending entries out.
            self._pending.add(index, key, digest, contact["email"])
            yield contact, item

    def take_batch(self, contacts: int) -> BatchEntries:
        """The entries of the next batch: the first ``contacts`` pending entries."""
        entries, self._pending = self._pending.split(contacts)
        return entries

    def take_all(self) -> BatchEntries:
        """Every pending entry (one call sends them all)."""
        entries, self._pending = self._pending, BatchEntries()
        return entries

    def sending(self, number: int, entries: BatchEntries) -> int:
        """Note a batch about to be sent; return the ticket of its claims in the partial state, to wait
        for before sending (0: nothing to save)."""
        with self._lock:
            self._inflight[number] = entries
        if self._journal is None or self.diff is None or self.dry_run:
            return 0
        owned = self.diff.owned_by_sending(entries)
        if not owned:
            return 0
        return self._journal.add([(entries.keys[i], entries.emails[i]) for i in owned])

    def wait_for_claims(self, ticket: int) -> None:
        """Wait until the claims behind ``ticket`` are saved (0: none)."""
        if ticket and self._journal is not None:
            self._journal.wait(ticket)

    def confirmed(
        self, number: int, entries: BatchEntries, refused: Iterable[str] | None, accepted_all: bool
    ) -> None:
        """A batch's job ended: its contacts are in the state, but those the destination refused."""
        with self._lock:
            self._inflight.pop(number, None)
        assert self.diff is not None
        self.diff.confirm(entries, refused, accepted_all)
        if refused:
            with self._lock:
                self._refused.update(e.lower() for e in refused)

    def resumed(self, entries: BatchEntries, accepted_all: bool) -> None:
        """A batch an earlier try saw confirmed: its contacts are in the state."""
        assert self.diff is not None
        self.diff.confirm(entries, None, accepted_all)

    def failed(self, number: int, entries: BatchEntries) -> None:
        """A batch's job ended failed for good: it may still have added part of it, which is owned, not
        confirmed."""
        with self._lock:
            self._inflight.pop(number, None)
        assert self.diff is not None
        self.diff.claim(entries)

    # -- after every batch -----------------------------------------------------------------------

    def finish(self, read_all: bool, follow: FollowRemoval, outcomes: OutcomeHooks = NO_OUTCOMES) -> None:
        """After every batch is confirmed: re-add the contacts the export removed that came back, then
        (mirror) remove the ones the export added that left the segment (see :class:`.SyncFinish`).

        :param read_all: whether the whole segment was read (a partial read says nothing of who left).
        :param follow: sends a removal job and follows it to its end.
        :param outcomes: told of each removal (the outcome log).
        """
        assert self.diff is not None
        if not read_all:
            return
        self.diff.forget_missing_leavers()
        SyncFinish(
            self.sync,
            self.destination,
            self.diff,
            self.report,
            self.lease,
            dry_run=self.dry_run,
            refused=self._refused,
            removal_ids=self._removal_ids,
            opted_out_complete=self._opt_outs is not None and self._opt_outs.complete,
            progress_interval_s=self.progress_interval_s,
        ).run(follow, outcomes)

    # -- the end ---------------------------------------------------------------------------------

    def save(self) -> StateBusyError | None:
        """Write the state with what this run confirmed (also after a failure: the confirmed part
        holds, the rest is sent again next run); return the error if the lease was lost."""
        if self.diff is None or self.dry_run or self._loaded is None:
            return None
        assert self._keys is not None
        lease = self.lease
        if lease is not None:
            try:
                lease.check("writing the sync state (its confirmed contacts are sent again next run)")
            except StateBusyError as exc:
                return exc
        # Batches sent (or about to be) but never confirmed: what they may have added is the export's.
        with self._lock:
            unconfirmed, self._inflight = list(self._inflight.values()), {}
        for entries in unconfirmed:
            self.diff.claim(entries)
        _note_counts(self.diff, self.destination, self._opt_outs, self._members_read_at, self.report)
        write_state(
            self.sync.state_path,
            self.diff.state,
            self._loaded.stored_generation,
            self._keys,
            tag=lease.tag if lease is not None else None,
        )
        if self._journal is not None:
            self._journal.discard()  # the state now holds every claim they made
        return None


def _note_counts(
    diff: SegmentDiff,
    destination: Destination,
    opt_outs: OptOuts | None,
    members_read_at: float | None,
    report: ExportReport,
) -> None:
    """Store with the state what the next run compares: the lists' member count, who opted out."""
    state = diff.state
    state.list_members = closing_count(destination)
    if members_read_at is not None:
        state.members_read_at = members_read_at
    if opt_outs is None:
        return
    own = destination.opt_out_change(report.sync.get("removed", 0), diff.counts["readded"])
    state.opted_out_count = closing_opt_out_count(destination, opt_outs.count, own)
    if opt_outs.read_at is not None:
        state.opted_out_read_at = opt_outs.read_at
        if opt_outs.complete:
            state.opted_out_full_read_at = opt_outs.read_at


def leavers_before_sending(
    probe: ContactBuilder,
    state: SyncState,
    opted_out: EmailSet,
    rows: RowSpool | None,
    total: int | None,
    max_removal_fraction: float,
    progress_interval_s: float = 30.0,
) -> set[str]:
    """Read the segment once for its emails alone, and fail (before anything is sent) if mirroring
    would remove too many contacts; return the emails that would be removed.

    :param probe: a contact builder of its own (it counts and deduplicates the rows it reads).
    :param progress_interval_s: the least time between progress lines of this pass.
    :raises RemovalLimitError: if more than ``max_removal_fraction`` would be removed.
    """
    probe.seen = EmailSet(capacity=total or 0)
    diff = SegmentDiff(state)
    assert rows is not None, "mirror spools the segment so that it can be read twice"
    what = "Mirror first pass (how many would be removed, nothing sent yet)"
    with PhaseProgress(what, total, progress_interval_s, unit="rows") as progress:
        contacts = _first_pass(probe, state, diff.seen, rows, progress)
    leavers = {email for _, email in diff.emails(diff.leavers()) if email not in opted_out}
    diff.check_removals(len(leavers), contacts, max_removal_fraction)
    return leavers


def _first_pass(
    probe: ContactBuilder, state: SyncState, seen: bytearray, rows: RowSpool, progress: PhaseProgress
) -> int:
    """Mark in ``seen`` the state's contacts that are in the segment; return how many contacts it has."""
    contacts = 0
    for chunk in rows:
        for row in chunk:
            contact = probe.build(row)
            if contact is not None:
                contacts += 1
                index = state.find(email_key(contact["email"]))
                if index >= 0:
                    seen[index] = 1
        progress.advance(len(chunk))
    return contacts
