"""The export pipeline: source -> contacts -> batches -> destination jobs -> report."""

from __future__ import annotations

import contextlib
import itertools
import logging
import sys
import threading
from collections.abc import Iterator, Mapping
from contextlib import nullcontext
from dataclasses import dataclass
from functools import partial

from airflow_provider_ciexport.core.contacts import ContactBuilder, EmailSet
from airflow_provider_ciexport.exceptions import (
    ExportConfigurationError,
    ExportIncompleteError,
)
from airflow_provider_ciexport.export.batcher import Batcher
from airflow_provider_ciexport.export.checkpoint import (
    Checkpoint,
    ProgressStore,
    export_fingerprint,
)
from airflow_provider_ciexport.export.collector import returning_free_memory, steady_collector
from airflow_provider_ciexport.export.delivery import Delivery, Stopped, raise_if_incomplete, sending_phase
from airflow_provider_ciexport.export.destination import Destination
from airflow_provider_ciexport.export.outcomes import OutcomeSettings, outcome_hooks
from airflow_provider_ciexport.export.progress import ProgressClock, Ticker, progress_line
from airflow_provider_ciexport.export.report import ExportReport
from airflow_provider_ciexport.export.sources.base import Row, SegmentRows, SegmentSource
from airflow_provider_ciexport.export.spool import RowSpool, SegmentTooLargeError
from airflow_provider_ciexport.export.sync import SyncSettings
from airflow_provider_ciexport.export.sync_run import SyncRun

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
    :param outcomes: write what happened to every row there (``None``: no outcome log).
    """

    def __init__(
        self,
        source: SegmentSource,
        destination: Destination,
        field_mapping: Mapping[str, str],
        settings: ExportSettings | None = None,
        progress: ProgressStore | None = None,
        sync: SyncSettings | None = None,
        outcomes: OutcomeSettings | None = None,
    ) -> None:
        self.source = source
        self.sync = sync

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
        self._sync_run = (
            SyncRun(
                sync,
                destination,
                self.field_mapping,
                self.report,
                dry_run=self.settings.dry_run,
                progress_interval_s=self.settings.progress_interval_s,
            )
            if sync is not None
            else None
        )
        self._stop = threading.Event()
        self._outcomes = outcome_hooks(outcomes, self.report)
        self._delivery = Delivery(
            destination,
            self.report,
            self._sync_run,
            self._stop,
            max_resubmits=self.settings.max_resubmits,
            on_progress=self._maybe_log_progress,
            outcomes=self._outcomes,
        )
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
            lease = self._sync_run.take_lease() if self._sync_run is not None else None
            if lease is not None:
                stack.callback(lease.release)
            stack.enter_context(steady_collector())
            stack.enter_context(returning_free_memory())
            # Only the mapped columns are kept, as each row is read.
            rows = stack.enter_context(self.source.read(self._outcomes.columns(self.field_mapping.values())))
            stack.callback(self._outcomes.close)  # after the report and the state (_run's end)
            builder, chunks = self._contact_builder(rows)
            self.destination.prepare(self.field_mapping)
            chunks, rereadable = self._counted(rows, chunks, stack)
            if self._sync_run is not None:
                self._sync_run.start(builder, rereadable, self._total)
            return self._run(builder, chunks)

    def _contact_builder(self, rows: SegmentRows) -> tuple[ContactBuilder, Iterator[list[Row]]]:
        """What turns the segment's rows into contacts, and the rows (a first chunk may have been read
        to learn the columns of a source that tells them only with its rows)."""
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
        return builder, chunks

    def _counted(
        self, rows: SegmentRows, chunks: Iterator[list[Row]], stack: contextlib.ExitStack
    ) -> tuple[Iterator[list[Row]], RowSpool | None]:
        """Count the segment against ``max_profiles`` before anything is sent, spooling it to local disk
        when the source cannot tell its count (or when mirror must read it twice); return the rows to
        send and the spool a mirror run reads first (``None``: not mirroring)."""
        total = rows.count
        limit = self.settings.max_profiles
        spool: RowSpool | None = None
        if total is None and limit is not None:
            spool = stack.enter_context(RowSpool())
            total = self._spool(chunks, spool, limit)
            rows.close()  # the source is released before anything is sent
            chunks = iter(spool)
        elif total is not None and limit is not None and total > limit:
            raise ExportConfigurationError(
                f"The segment has {total:,} rows, more than max_profiles={limit:,}. Nothing was sent. "
                "Narrow the segment, or raise max_profiles (None for no limit) if this size is intended."
            )
        self._total = total
        if self.sync is None or not self.sync.mirror:
            return chunks, None
        # Mirror reads the segment's emails once before sending (the safety limit), so the rows must be
        # readable twice: from the local spool.
        if spool is None:
            spool = stack.enter_context(RowSpool())
            self._total = self._spool(chunks, spool, limit if limit is not None else sys.maxsize)
            rows.close()
            chunks = iter(spool)
        return chunks, spool

    def _spool(self, chunks: Iterator[list[Row]], spool: RowSpool, limit: int) -> int:
        """Read the whole segment onto local disk and count it, failing as soon as it passes ``limit``."""
        log.info(
            "Reading the %s onto local disk before sending anything (%s).",
            self.source.description,
            f"max_profiles={limit:,}" if limit < sys.maxsize else "mirror reads it twice",
        )

        def progress(rows: int) -> None:
            if self._stop.is_set():
                raise Stopped
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
        except Stopped:
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
        # Sized once when the count is known: no rehashing while a million rows stream.
        builder.seen = self._outcomes.seen(self._total or 0)
        # Saved at most once a progress interval (and at the end): a SIGKILL resends at most that much.
        checkpoint = Checkpoint(
            self._progress_store,
            export_fingerprint(self.destination, self.field_mapping),
            self.settings.progress_interval_s,
        )
        if checkpoint.resumable:
            log.info(
                "Resuming: %d batch(es) confirmed by an earlier try are not sent again if unchanged.",
                checkpoint.resumable_batches,
            )
        log.info(
            "Exporting %s rows from %s to %s list(s) %s%s.",
            "the" if self._total is None else f"{self._total:,}",
            self.source.description,
            self.destination.name,
            ", ".join(self.report.lists),
            " (dry run: nothing is sent)" if self.settings.dry_run else "",
        )
        sharing = nullcontext() if self.settings.dry_run else self.destination.share_account()
        try:
            with sharing:
                self._send(builder, chunks, checkpoint)
        except Stopped:
            pass  # reported below with what was and was not exported
        finally:
            self._end_of_run(builder, checkpoint)
        raise_if_incomplete(self._delivery, self._read_all, self._total)
        checkpoint.clear()
        return self.report

    def _send(self, builder: ContactBuilder, chunks: Iterator[list[Row]], checkpoint: Checkpoint) -> None:
        """Send the contacts that need sending (a small segment by single calls), then finish the sync."""
        destination = self.destination
        prefix, suffix = destination.envelope()
        batcher = Batcher(
            max_contacts=destination.max_batch_contacts,
            max_bytes=destination.max_batch_bytes,
            prefix=prefix,
            suffix=suffix,
        )
        # Each contact is encoded once: the sync diff's digest and the request body use the same bytes.
        items: Iterator[tuple[dict[str, str], bytes]] = (
            (contact, destination.encode(contact)) for contact in self._contacts(builder, chunks)
        )
        sync_run = self._sync_run
        if sync_run is not None:
            items = sync_run.changed(items, batcher, self._outcomes)
        items = self._outcomes.queued(items)
        self._clock.sending()  # the main line's rate counts from here
        head = list(itertools.islice(items, destination.small_segment_max + 1))
        # A contact the export removed comes back through an import, which names the contacts it
        # refuses (excluded); single-contact calls do not.
        readds = sync_run is not None and sync_run.readds_pending
        small = bool(destination.small_segment_max) and len(head) <= destination.small_segment_max
        if small and not self.settings.dry_run and not readds:
            self._delivery.send_small([contact for contact, _ in head])
        else:
            with Ticker(self.settings.progress_interval_s, self._maybe_log_progress):
                self._delivery.send_batches(itertools.chain(head, items), batcher, checkpoint)
        if sync_run is not None and not self._delivery.ended_early():
            removal_polls = destination.poll_pacer()
            follow = partial(self._delivery.follow_removal, poll_limiter=removal_polls)
            sync_run.finish(self._read_all, follow, self._outcomes)

    def _end_of_run(self, builder: ContactBuilder, checkpoint: Checkpoint) -> None:
        """Whatever happened: the report's counts, the checkpoint and the state saved, the report logged."""
        report = self.report
        copy_counts_to_report(self.report, builder, self._delivery.too_large, self._sync_run)
        # Every row is built: the duplicate check's set (17 MB a million) is freed before the state's write.
        builder.seen = EmailSet()
        checkpoint.flush()
        self._save_state()
        report.requests = self.destination.requests_made
        report.duration_s = self._clock.elapsed()
        # One figure a line: a single line of every figure ran off the UI's log view.
        log.info("%s export report:", self.destination.name)
        for line in report.table():
            log.info("%s", line)

    def _contacts(self, builder: ContactBuilder, chunks: Iterator[list[Row]]) -> Iterator[dict[str, str]]:
        report, build = self.report, self._outcomes.building(builder)
        for chunk in chunks:
            if self._stop.is_set():
                raise Stopped
            report.read += len(chunk)
            for row in chunk:
                contact = build(row)
                if contact is not None:
                    yield contact
            copy_counts_to_report(self.report, builder, self._delivery.too_large, self._sync_run)
            self._maybe_log_progress()
        self._read_all = True

    def _save_state(self) -> None:
        """Write the sync state; a lost lease fails the export (after the report is logged)."""
        if self._sync_run is None:
            return
        lost = self._sync_run.save()
        if lost is not None:
            self._delivery.fail(lost)

    # -- progress and the end ------------------------------------------------------------------

    def _maybe_log_progress(self) -> None:
        """The main line when due; its rate counts from the start of sending, resumed batches as done."""
        if not self._clock.due():
            return
        elapsed, resumed = self._clock.sending_elapsed(), self._delivery.resumed_contacts
        line = progress_line(self.report, self._total, elapsed, resumed)
        doing = sending_phase(self._delivery, self._read_all)
        log.info("%s export progress (%s): %s", self.destination.name, doing, line)


def copy_counts_to_report(
    report: ExportReport, builder: ContactBuilder, too_large: int, sync_run: SyncRun | None
) -> None:
    """The report's counts of invalid and duplicate rows, and the sync's, as they stand now.

    :param too_large: contacts larger than a whole request, never sent (counted as invalid).
    """
    report.invalid_reasons = dict(builder.invalid_reasons)
    if too_large:
        report.invalid_reasons["too_large"] = too_large
    report.invalid = builder.invalid + too_large
    report.duplicates = builder.duplicates
    report.omitted_too_long = dict(builder.omitted_too_long)
    if sync_run is not None and sync_run.diff is not None:
        report.sync.update(sync_run.diff.counts)
