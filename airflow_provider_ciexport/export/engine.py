"""The export pipeline: source -> contacts -> batches -> destination jobs -> report."""

from __future__ import annotations

import contextlib
import itertools
import logging
import math
import sys
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from concurrent.futures import ThreadPoolExecutor
from contextlib import nullcontext
from dataclasses import dataclass
from functools import partial

from airflow_provider_ciexport.core.contacts import ContactBuilder, EmailSet
from airflow_provider_ciexport.core.polling import poll_until_done
from airflow_provider_ciexport.core.ratelimit import RateLimiter
from airflow_provider_ciexport.exceptions import (
    CiExportError,
    ExportConfigurationError,
    ExportIncompleteError,
)
from airflow_provider_ciexport.export.batcher import Batch, Batcher
from airflow_provider_ciexport.export.checkpoint import (
    Checkpoint,
    ProgressStore,
    batch_digest,
    export_fingerprint,
)
from airflow_provider_ciexport.export.claims import ClaimJournal
from airflow_provider_ciexport.export.collector import steady_collector
from airflow_provider_ciexport.export.destination import Destination, JobResult
from airflow_provider_ciexport.export.progress import ProgressClock, progress_line
from airflow_provider_ciexport.export.report import ExportReport
from airflow_provider_ciexport.export.sources import Row, SegmentSource
from airflow_provider_ciexport.export.spool import RowSpool, SegmentTooLargeError
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
from airflow_provider_ciexport.export.sync import OPTED_OUT, UNCHANGED, Ledger, SegmentDiff

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ExportSettings:
    """How an export behaves.

    :param max_profiles: a segment with more rows fails before anything is sent (``None``: no limit).
    :param dry_run: do everything but send contacts (lists and fields are still checked).
    :param wait_for_completion: follow every import job to its end and count accepted/rejected.
    :param max_resubmits: how many times a batch whose job ended failed is sent again.
    :param progress_interval_s: seconds between progress lines in the log.
    """

    max_profiles: int | None = 1_000_000
    dry_run: bool = False
    wait_for_completion: bool = True
    max_resubmits: int = 2
    progress_interval_s: float = 30.0


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
    lease_owner: str = "this export"
    keys: StateKeys | None = None

    @property
    def mirror(self) -> bool:
        """Whether contacts that left the segment are removed."""
        return self.mode == "mirror"


class _Stopped(Exception):
    """The export was asked to stop (``on_kill``) or a batch failed for good."""


class SegmentExporter:
    """Runs one export of a segment source to a destination and returns its report.

    Rows stream through in chunks, so memory stays flat whatever the segment's size; only the
    deduplication set grows (compactly) and at most ``destination.max_unconfirmed`` batch bodies are
    kept until their jobs are confirmed, so that a failed job can be sent again.

    :param source: where the rows come from.
    :param destination: where the contacts go.
    :param field_mapping: destination attribute -> source column; ``email`` is required.
    :param settings: limits and switches.
    :param progress: where confirmed batches are saved so that a retried task does not send them
        again (``None``: no resuming).
    :param sync: keep the lists in sync through a state (``None``: send every contact, remove none).
    """

    def __init__(
        self,
        source: SegmentSource,
        destination: Destination,
        field_mapping: Mapping[str, str],
        settings: ExportSettings | None = None,
        progress: ProgressStore | None = None,
        sync: SyncSettings | None = None,
    ) -> None:
        self.source = source
        self.sync = sync
        self._diff: SegmentDiff | None = None
        self._loaded: LoadedState | None = None
        self._removal_ids: dict[str, str] = {}
        self._lease: StateLease | None = None
        self._keys: StateKeys | None = None
        # Sync: the state entries of contacts handed to the batcher and not yet in a batch, and the
        # emails the destination refused.
        self._ledger = Ledger()
        self._refused: set[str] = set()
        # The ledgers of batches handed to the destination and not yet confirmed (by batch number), and
        # where the memberships they may create are saved before they are sent (mirror mode).
        self._inflight: dict[int, Ledger] = {}
        self._journal: ClaimJournal | None = None

        self.destination = destination
        self.field_mapping = dict(field_mapping)
        self.settings = settings or ExportSettings()
        self.report = ExportReport(
            destination=destination.name,
            lists=list(destination.list_ids),
            dry_run=self.settings.dry_run,
            waited=self.settings.wait_for_completion and not self.settings.dry_run,
        )
        self._progress_store = progress if self.report.waited else None
        self._checkpoint: Checkpoint | None = None
        self._stop = threading.Event()
        self._fatal: BaseException | None = None
        self._failed_contacts = 0
        self._sent_unconfirmed = 0  # contacts whose import was accepted but whose job is not final yet
        self._too_large = 0
        self._failed_state = ""
        self._lock = threading.Lock()
        self._total: int | None = None  # rows in the segment; None when read without counting first
        self._read_all = False
        self._clock = ProgressClock(self.settings.progress_interval_s)

    def stop(self) -> None:
        """Ask a running export to stop sending (for ``on_kill``); it raises once in-flight calls end."""
        self._stop.set()

    # -- the run -------------------------------------------------------------------------------

    def run(self) -> ExportReport:
        """Export the segment; return the report, or raise with what was and was not exported.

        The source is read once. When ``max_profiles`` is set and the source cannot tell its row count
        without reading the rows (SQL, CSV, JSON Lines), the rows are spooled to local disk first and
        counted, so a segment over the limit fails before anything is sent.
        """
        self._clock.restart()
        with contextlib.ExitStack() as stack:
            # The lease first: a second run fails before it reads (or spools) a single row.
            self._lease = self._take_lease()
            if self._lease is not None:
                stack.callback(self._lease.release)
            stack.enter_context(steady_collector())
            # Only the mapped columns are kept, as each row is read.
            rows = stack.enter_context(self.source.read(self.field_mapping.values()))
            chunks: Iterator[list[Row]] = iter(rows)
            columns, names = rows.columns, rows.names
            if not columns:
                first = next(chunks, None)
                if first is None:
                    # No rows to tell the columns (e.g. records=[]): every mapped column exists vacuously.
                    columns = names = list(dict.fromkeys(self.field_mapping.values()))
                else:
                    chunks = itertools.chain([first], chunks)
            builder = ContactBuilder(
                self.field_mapping, self.destination.schema, columns, names=names, width=rows.width
            )
            self.destination.prepare(self.field_mapping)
            total = rows.count
            limit = self.settings.max_profiles
            spool_used: RowSpool | None = None
            if total is None and limit is not None:
                spool = stack.enter_context(RowSpool())
                total = self._spool(chunks, spool, limit)
                rows.close()  # the source is released before anything is sent
                chunks = iter(spool)
                spool_used = spool
            elif total is not None and limit is not None and total > limit:
                raise ExportConfigurationError(
                    f"The segment has {total:,} rows, more than max_profiles={limit:,}. Nothing was sent. "
                    "Narrow the segment, or raise max_profiles (None for no limit) if this size is intended."
                )
            rereadable: RowSpool | None = None
            if self.sync is not None and self.sync.mirror:
                # Mirror reads the segment's emails once before sending (the safety limit), so the rows
                # must be readable twice: from the local spool.
                if spool_used is not None:
                    rereadable = spool_used
                else:
                    rereadable = stack.enter_context(RowSpool())
                    total = self._spool(chunks, rereadable, limit if limit is not None else sys.maxsize)
                    rows.close()
                    chunks = iter(rereadable)
            self._total = total
            if self.sync is not None:
                self._start_sync(builder, rereadable)
            return self._run(builder, chunks)

    def _spool(self, chunks: Iterator[list[Row]], spool: RowSpool, limit: int) -> int:
        """Read the whole segment onto local disk and count it, failing as soon as it passes ``limit``."""
        log.info(
            "Reading the %s onto local disk before sending anything (%s).",
            self.source.description,
            f"max_profiles={limit:,}" if limit < sys.maxsize else "mirror reads it twice",
        )

        def progress(rows: int) -> None:
            if self._stop.is_set():
                raise _Stopped
            if self._clock.due():
                log.info("Reading the segment: %s rows so far, nothing sent yet.", f"{rows:,}")

        try:
            total = spool.fill(chunks, limit, progress)
        except SegmentTooLargeError:
            raise ExportConfigurationError(
                f"The segment has more than max_profiles={limit:,} rows (reading stopped there). Nothing "
                "was sent. Narrow the segment, or raise max_profiles (None for no limit) if this size is "
                "intended."
            ) from None
        except _Stopped:
            raise ExportIncompleteError(
                "The export was stopped while reading the segment. Nothing was sent. Retry the task."
            ) from None
        log.info(
            "Read %s rows in %.1f s (%.1f MB on local disk until the export ends).",
            f"{total:,}",
            self._clock.elapsed(),
            spool.bytes / 1e6,
        )
        return total

    def _run(self, builder: ContactBuilder, chunks: Iterator[list[Row]]) -> ExportReport:
        report = self.report
        # Sized once when the count is known: no rehashing while a million rows stream.
        builder.seen = EmailSet(capacity=self._total or 0)
        self._checkpoint = Checkpoint(
            self._progress_store, export_fingerprint(self.destination, self.field_mapping)
        )
        if self._checkpoint.resumable:
            log.info(
                "Resuming: %d batch(es) confirmed by an earlier try are not sent again.",
                len(self._checkpoint.resumable),
            )
        log.info(
            "Exporting %s rows from %s to %s list(s) %s%s.",
            "the" if self._total is None else f"{self._total:,}",
            self.source.description,
            self.destination.name,
            ", ".join(report.lists),
            " (dry run: nothing is sent)" if self.settings.dry_run else "",
        )
        destination = self.destination
        prefix, suffix = destination.envelope()
        batcher = Batcher(
            max_contacts=destination.max_batch_contacts,
            max_bytes=destination.max_batch_bytes,
            prefix=prefix,
            suffix=suffix,
        )
        sharing = nullcontext() if self.settings.dry_run else destination.share_account()
        try:
            with sharing:
                # Each contact is encoded once: the sync diff's digest and the request body use the same bytes.
                items: Iterator[tuple[dict[str, str], bytes]] = (
                    (contact, destination.encode(contact)) for contact in self._contacts(builder, chunks)
                )
                if self._diff is not None:
                    items = self._changed(items, batcher)
                head = list(itertools.islice(items, destination.small_segment_max + 1))
                # A contact the export removed comes back through an import, which names the contacts
                # it refuses (excluded); single-contact calls do not.
                readds = (
                    self._diff is not None
                    and self._diff.readd_emails
                    and self.destination.removal_unsubscribes
                )
                if (
                    not self.settings.dry_run
                    and self.destination.small_segment_max
                    and len(head) <= self.destination.small_segment_max
                    and not readds
                ):
                    self._send_small([contact for contact, _ in head])
                else:
                    self._send_batches(itertools.chain(head, items), batcher)
                if self._diff is not None and not self._stop.is_set() and self._fatal is None:
                    self._finish_sync(builder)
        except _Stopped:
            pass  # reported below with what was and was not exported
        finally:
            self._sync_counts(builder)
            if self._checkpoint is not None:
                self._checkpoint.flush()
            self._save_state()
            report.requests = self.destination.requests_made
            report.duration_s = self._clock.elapsed()
            # One figure a line: a single line of every figure ran off the UI's log view.
            log.info("%s export report:", self.destination.name)
            for line in report.table():
                log.info("%s", line)
        self._raise_if_incomplete()
        if self._checkpoint is not None:
            self._checkpoint.clear()
        return report

    # -- keeping lists in sync -----------------------------------------------------------------

    def _take_lease(self) -> StateLease | None:
        """Check the sync settings and take the state's lease (not for a dry run, which writes nothing);
        then delete the temporary copies that killed writes left. Nothing is read before this."""
        sync = self.sync
        if sync is None:
            return None
        if sync.mode not in ("upsert", "mirror"):
            raise ExportConfigurationError(f"sync_mode must be 'upsert' or 'mirror', not {sync.mode!r}.")
        if sync.keys is not None:
            self._keys = sync.keys
        else:
            from airflow_provider_ciexport.export.state_keys import state_keys

            self._keys = state_keys()
        if self.settings.dry_run:
            return None
        lease = StateLease(sync.state_path, sync.lease_owner)
        lease.acquire()
        try:
            remove_stale_copies(sync.state_path, keep=lease.tag)
        except BaseException:
            lease.release()
            raise
        return lease

    def _start_sync(self, builder: ContactBuilder, rows: RowSpool | None) -> None:
        """Read the state, who opted out and (when needed) the lists' members; check the safety
        limit. Everything here happens before any contact is sent or removed."""
        sync, destination, report = self.sync, self.destination, self.report
        assert sync is not None and self._keys is not None
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
        state = loaded.state
        first_sync = len(state) == 0
        if sync.mirror and loaded.distrust is None:
            # What an earlier try that died put on the list stays the export's (see .claims).
            journal = ClaimJournal(sync.state_path, identity, loaded.stored_generation or 0, self._keys)
            state, claimed = journal.fold_into(state, destination.removal_unsubscribes)
            self._journal = journal
            if claimed:
                log.info(
                    "An earlier try of this export may have added %s contacts it did not confirm "
                    "(a partial state next to the state): they stay the export's and are sent again.",
                    f"{claimed:,}",
                )
        reason = loaded.distrust
        if loaded.other_identity:
            reason = f"full_refresh=True replaces a state of another export ({reason})"
        elif reason is None and sync.full_refresh:
            reason = "full_refresh=True"
        report.sync = {
            "sync_mode": sync.mode,
            "state_entries": len(loaded.state),
            "full_refresh_reason": reason,
            "state_authenticated": loaded.authenticated,
            "unchanged": 0,
            "new": 0,
            "changed": 0,
            "readded": 0,
            "readd_refused": 0,
            "skipped_unsubscribed": 0,
            "to_remove": 0,
            "removed": 0,
            "removal_refused": 0,
        }
        if loaded.distrust:
            log.warning(
                "The sync state is not used: %s. Every contact is sent (a full refresh); nobody is "
                "removed or re-subscribed on its account.",
                loaded.distrust,
            )
        opted_out = EmailSet()
        for email in destination.opted_out():
            opted_out.add(email.strip().lower())
        members_before: EmailSet | None = None
        if sync.mirror and (first_sync or destination.members_read_is_cheap):
            members_before = EmailSet()
            leaver_emails = self._first_pass_leavers(builder, state, opted_out, rows) if len(state) else set()
            for email, contact_id in destination.members():
                email = email.strip().lower()
                members_before.add(email)
                if email in leaver_emails:
                    self._removal_ids[email] = contact_id
        elif sync.mirror and len(state):
            self._first_pass_leavers(builder, state, opted_out, rows)
        self._diff = SegmentDiff(
            state,
            full_refresh=sync.full_refresh,
            mirror=sync.mirror,
            opted_out=opted_out,
            removal_unsubscribes=destination.removal_unsubscribes,
            members_before=members_before,
        )

    def _first_pass_leavers(
        self, builder: ContactBuilder, state: SyncState, opted_out: EmailSet, rows: RowSpool | None
    ) -> set[str]:
        """Read the segment once for its emails alone, and fail (before anything is sent) if mirroring
        would remove too many contacts; return the emails that would be removed."""
        assert self.sync is not None
        probe = ContactBuilder(self.field_mapping, self.destination.schema, builder.columns)
        probe.seen = EmailSet(capacity=self._total or 0)
        diff = SegmentDiff(state)
        seen = diff.seen
        contacts = 0
        assert rows is not None, "mirror spools the segment so that it can be read twice"
        for chunk in rows:
            for row in chunk:
                contact = probe.build(row)
                if contact is not None:
                    contacts += 1
                    index = state.find(email_key(contact["email"]))
                    if index >= 0:
                        seen[index] = 1
        leavers = {email for _, email in diff.emails(diff.leavers()) if email not in opted_out}
        diff.check_removals(len(leavers), contacts, self.sync.max_removal_fraction)
        return leavers

    def _changed(
        self, items: Iterator[tuple[dict[str, str], bytes]], batcher: Batcher
    ) -> Iterator[tuple[dict[str, str], bytes]]:
        """Only the contacts that need sending; the rest are counted (unchanged, opted out)."""
        diff = self._diff
        assert diff is not None
        for contact, item in items:
            if not batcher.fits_alone(item):
                yield contact, item  # too large to send at all: counted where the batches are made
                continue
            kind, index, key, digest = diff.classify(contact["email"], item)
            if kind in (UNCHANGED, OPTED_OUT):
                continue
            # Read each time: dispatching a batch moves the pending entries into a new ledger.
            self._ledger.add(index, key, digest, contact["email"])
            yield contact, item

    def _finish_sync(self, builder: ContactBuilder) -> None:
        """After every batch is confirmed: re-add the contacts the export removed that came back, then
        (mirror) remove the ones the export added that left the segment."""
        diff, sync, destination, report = self._diff, self.sync, self.destination, self.report
        assert diff is not None and sync is not None
        if not self._read_all:
            return  # a partial read says nothing about who left
        if destination.removal_unsubscribes and diff.readd_emails and not self.settings.dry_run:
            if self._lease is not None:
                self._lease.check("re-subscribing the contacts it removed that came back")
            # The import refused the excluded; the destination checks the rest for an opt-out since,
            # and that its own record shows the export's removal as the last change.
            back = [e for e in diff.readd_emails if e not in self._refused]
            state = diff.state
            windows = [state.removal_window(diff.readd_runs.get(e, 0)) for e in back]
            skipped = set(destination.readd(back, windows))
            for email in skipped:
                index = diff.state.find(email_key(email))
                if index >= 0:
                    diff.forget([index])
            refused = len(diff.readd_emails) - len(back) + len(skipped)
            diff.counts["readded"] -= refused
            diff.counts["readd_refused"] += refused
        if not sync.mirror:
            return
        leavers = []
        for index, email in diff.emails(diff.leavers()):
            if email in diff.opted_out:
                diff.forget([index])  # the person left the list themselves: not the export's any more
            else:
                leavers.append((index, email))
        report.sync["to_remove"] = len(leavers)
        segment = sum(diff.counts.values())
        diff.check_removals(len(leavers), segment, sync.max_removal_fraction, sent=True)
        if self.settings.dry_run or not leavers:
            return
        if destination.members_read_is_cheap:
            # The contact ids come from the members read before sending; one not there is gone already.
            found = []
            for index, email in leavers:
                if email in self._removal_ids:
                    found.append((index, email, self._removal_ids[email]))
                else:
                    diff.forget([index])
        else:
            found = [(index, email, "") for index, email in leavers]
        if self._lease is not None:
            self._lease.check("removing contacts (new and changed contacts were sent)")
        self._remove(found)

    def _remove(self, leavers: list[tuple[int, str, str]]) -> None:
        destination, diff, report = self.destination, self._diff, self.report
        assert diff is not None
        poll_limiter = RateLimiter(destination.max_poll_rate, 1.0)
        size = destination.max_removal_batch

        def remove(chunk: list[tuple[int, str, str]]) -> None:
            contacts = [(email, contact_id) for _, email, contact_id in chunk]
            for _attempt in range(self.settings.max_resubmits + 1):
                job_id = destination.submit_removal(contacts)
                report.record_job(job_id)
                result = self._wait_for(partial(destination.poll_removal, job_id, contacts), poll_limiter)
                if result.ok:
                    refused = {e.lower() for e in result.refused or ()}
                    done = [index for index, email, _ in chunk if email not in refused]
                    diff.removed(done, run)
                    with self._lock:
                        report.sync["removed"] += len(done)
                        report.sync["removal_refused"] += len(chunk) - len(done)
                    return
            with self._lock:
                report.sync["removal_refused"] += len(chunk)

        chunks = [leavers[i : i + size] for i in range(0, len(leavers), size)]
        if not chunks:
            return
        # When this run removed: a membership the destination shows as changed at another time was
        # not changed by this export (the re-subscribe check of :meth:`Destination.readd`).
        window = diff.state.start_removal_run()
        run = int(window[0])
        try:
            with ThreadPoolExecutor(min(len(chunks), destination.max_in_flight)) as pool:
                for future in [pool.submit(remove, chunk) for chunk in chunks]:
                    future.result()
        finally:
            window[2] = float(math.ceil(time.time()))

    def _save_state(self) -> None:
        """Write the state with what this run confirmed (also after a failure: the confirmed part
        holds, the rest is sent again next run)."""
        if self._diff is None or self.sync is None or self.settings.dry_run or self._loaded is None:
            return
        assert self._keys is not None
        lease = self._lease
        if lease is not None:
            try:
                lease.check("writing the sync state (its confirmed contacts are sent again next run)")
            except StateBusyError as exc:
                with self._lock:
                    if self._fatal is None:
                        self._fatal = exc
                return
        # Batches sent (or about to be) but never confirmed: what they may have added is the export's.
        with self._lock:
            unconfirmed, self._inflight = list(self._inflight.values()), {}
        for ledger in unconfirmed:
            self._diff.claim(ledger)
        write_state(
            self.sync.state_path,
            self._diff.state,
            self._loaded.stored_generation,
            self._keys,
            tag=lease.tag if lease is not None else None,
        )
        if self._journal is not None:
            self._journal.discard()  # the state now holds every claim they made

    def _claim_ahead(self, ledger: Ledger) -> int:
        """Add to the partial state the contacts whose membership sending ``ledger`` makes the export's;
        return the ticket to wait for before sending (0: nothing to save)."""
        if self._journal is None or self._diff is None or self.settings.dry_run:
            return 0
        owned = self._diff.owned_by_sending(ledger)
        if not owned:
            return 0
        return self._journal.add([(ledger.keys[i], ledger.emails[i]) for i in owned])

    def _contacts(self, builder: ContactBuilder, chunks: Iterator[list[Row]]) -> Iterator[dict[str, str]]:
        report = self.report
        for chunk in chunks:
            if self._stop.is_set():
                raise _Stopped
            report.read += len(chunk)
            for row in chunk:
                contact = builder.build(row)
                if contact is not None:
                    yield contact
            self._sync_counts(builder)
            self._maybe_log_progress()
        self._read_all = True

    def _sync_counts(self, builder: ContactBuilder) -> None:
        report = self.report
        report.invalid_reasons = dict(builder.invalid_reasons)
        if self._too_large:
            report.invalid_reasons["too_large"] = self._too_large
        report.invalid = builder.invalid + self._too_large
        report.duplicates = builder.duplicates
        report.omitted_too_long = dict(builder.omitted_too_long)
        if self._diff is not None:
            report.sync.update(self._diff.counts)

    def _send_small(self, contacts: list[dict[str, str]]) -> None:
        report = self.report
        report.submitted = len(contacts)
        if contacts:
            ledger = self._ledger
            if self._diff is not None:
                with self._lock:
                    self._inflight[0] = ledger  # batch numbers start at 1
                ticket = self._claim_ahead(ledger)
                if ticket and self._journal is not None:
                    self._journal.wait(ticket)
            accepted = self.destination.send_small(contacts)
            report.record_outcome(accepted, len(contacts) - accepted)
            if self._diff is not None:
                with self._lock:
                    self._inflight.pop(0, None)
                self._diff.confirm(ledger, None, accepted == len(contacts))

    def _send_batches(self, items: Iterator[tuple[dict[str, str], bytes]], batcher: Batcher) -> None:
        destination = self.destination
        report = self.report
        slots = threading.BoundedSemaphore(destination.max_unconfirmed)
        submit_gate = threading.BoundedSemaphore(destination.max_in_flight)
        poll_limiter = RateLimiter(destination.max_poll_rate, 1.0)

        checkpoint = self._checkpoint
        assert checkpoint is not None

        def dispatch(batch: Batch) -> None:
            ledger = None
            if self._diff is not None:
                ledger, self._ledger = self._ledger.split(batch.contacts)
            if self.settings.dry_run:
                report.would_batches += 1
                report.would_submit += batch.contacts
                return
            report.batches += 1
            report.submitted += batch.contacts
            digest = batch_digest(batch) if checkpoint.store is not None else ""
            earlier = checkpoint.resumed(batch, digest) if checkpoint.resumable else None
            if earlier is not None:
                report.resumed_batches += 1
                report.record_outcome(*earlier)
                if self._diff is not None and ledger is not None:
                    self._diff.confirm(ledger, None, earlier[1] == 0)
                return
            while not slots.acquire(timeout=0.5):
                if self._stop.is_set():
                    raise _Stopped
            ticket = 0
            if ledger is not None:
                with self._lock:
                    self._inflight[batch.number] = ledger
                ticket = self._claim_ahead(ledger)
            # _deliver records its own fatal error and stops the export; leaving the pool waits for it.
            pool.submit(self._deliver, batch, digest, slots, submit_gate, poll_limiter, ledger, ticket)

        with ThreadPoolExecutor(destination.max_unconfirmed, thread_name_prefix="ciexport") as pool:
            try:
                for _, item in items:
                    if self._stop.is_set():
                        raise _Stopped
                    if not batcher.fits_alone(item):
                        # One contact larger than a whole request: the API could never take it.
                        self._too_large += 1
                        continue
                    batch = batcher.add(item)
                    if batch is not None:
                        dispatch(batch)
                last = batcher.flush()
                if last is not None:
                    dispatch(last)
            except _Stopped:
                pass

    def _deliver(
        self,
        batch: Batch,
        digest: str,
        slots: threading.BoundedSemaphore,
        submit_gate: threading.BoundedSemaphore,
        poll_limiter: RateLimiter,
        ledger: Ledger | None = None,
        ticket: int = 0,
    ) -> None:
        """Submit one batch and follow its job to the end, sending it again if the job fails.

        :param ticket: the batch's claims in the partial state, saved before it is sent (0: none).
        """
        destination = self.destination
        try:
            if ticket and self._journal is not None:
                self._journal.wait(ticket)
            for attempt in range(self.settings.max_resubmits + 1):
                if self._stop.is_set():
                    raise _Stopped
                with submit_gate:
                    job_id = destination.submit(batch)
                self.report.record_job(job_id)
                with self._lock:
                    self._sent_unconfirmed += batch.contacts
                    self.report.resubmitted_batches += 1 if attempt else 0
                if not self.report.waited:
                    return
                result = self._wait_for(partial(self.destination.poll, job_id, batch), poll_limiter)
                with self._lock:
                    self._sent_unconfirmed -= batch.contacts
                if result.ok:
                    self.report.record_outcome(result.accepted, result.rejected)
                    if self._diff is not None and ledger is not None:
                        with self._lock:
                            self._inflight.pop(batch.number, None)
                        self._diff.confirm(ledger, result.refused, result.rejected == 0)
                        if result.refused:
                            with self._lock:
                                self._refused.update(e.lower() for e in result.refused)
                    if self._checkpoint is not None:
                        self._checkpoint.confirm(batch, digest, result.accepted, result.rejected)
                    return
                log.warning(
                    "%s import job %s (batch %d, %d contacts) ended '%s'%s.",
                    destination.name,
                    job_id,
                    batch.number,
                    batch.contacts,
                    result.state,
                    "; sending it again" if attempt < self.settings.max_resubmits else "",
                )
            with self._lock:
                self.report.failed_batches += 1
                self._failed_contacts += batch.contacts
                self._failed_state = result.state
            # A job that ended failed may still have added part of the batch: owned, not confirmed.
            if self._diff is not None and ledger is not None:
                with self._lock:
                    self._inflight.pop(batch.number, None)
                self._diff.claim(ledger)
        except BaseException as exc:
            with self._lock:
                if self._fatal is None and not isinstance(exc, _Stopped):
                    self._fatal = exc
            self._stop.set()
            raise
        finally:
            slots.release()
            self._maybe_log_progress()

    def _wait_for(self, poll: Callable[[], JobResult | None], poll_limiter: RateLimiter) -> JobResult:
        """Poll a job (at the export's poll rate) until it ends; stop waiting when the export stops."""

        def pause(seconds: float) -> None:
            if self._stop.wait(seconds):
                raise _Stopped

        def paced_poll() -> JobResult | None:
            poll_limiter.acquire()
            return poll()

        destination = self.destination
        return poll_until_done(paced_poll, destination.poll_interval, destination.max_poll_interval, pause)

    # -- progress and the end ------------------------------------------------------------------

    def _maybe_log_progress(self) -> None:
        if self._clock.due():
            line = progress_line(self.report, self._total, self._clock.elapsed())
            log.info("%s export progress: %s", self.destination.name, line)

    def _raise_if_incomplete(self) -> None:
        report = self.report
        confirmed = report.accepted + report.rejected
        where = f"{self.destination.name} list(s) {', '.join(report.lists)}"
        pending = (
            f"; {self._sent_unconfirmed:,} more were accepted by the API but not yet confirmed"
            if self._sent_unconfirmed and report.waited
            else ""
        )
        done = (
            f"{report.accepted:,} of {report.submitted:,} contacts were confirmed as exported to {where}"
            f"{pending} ({report.read:,} rows read"
            f"{'' if self._total is None else f' of {self._total:,}'})."
        )
        if self._fatal is not None:
            exc = self._fatal
            if isinstance(exc, CiExportError):
                raise type(exc)(f"{exc} So far {done}") from exc
            raise ExportIncompleteError(f"The export failed ({type(exc).__name__}). So far {done}") from exc
        if self._stop.is_set() and (not self._read_all or confirmed < report.submitted):
            raise ExportIncompleteError(f"The export was stopped. So far {done} Retry the task to finish it.")
        if self._failed_contacts:
            raise ExportIncompleteError(
                f"{self._failed_contacts:,} contacts in {report.failed_batches} batch(es) were NOT exported: "
                f"their import jobs ended '{self._failed_state}' {self.settings.max_resubmits + 1} times. "
                f"{done} Retry the task to send the rest."
            )
