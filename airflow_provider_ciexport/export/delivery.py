"""Delivery: the batches of one export sent to the destination, each job followed to its end and a
failed one sent again, with at most the destination's number of batches unconfirmed at once."""

from __future__ import annotations

import contextlib
import logging
import threading
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from functools import partial

from airflow_provider_ciexport.core.jobs import JobResult
from airflow_provider_ciexport.core.polling import poll_until_done
from airflow_provider_ciexport.core.ratelimit import Pacer
from airflow_provider_ciexport.exceptions import CiExportError, ExportIncompleteError
from airflow_provider_ciexport.export.batcher import Batch, Batcher
from airflow_provider_ciexport.export.checkpoint import Admitted, Checkpoint, batch_digest
from airflow_provider_ciexport.export.destination import Destination
from airflow_provider_ciexport.export.outcomes import NO_OUTCOMES, OutcomeHooks
from airflow_provider_ciexport.export.report import ExportReport
from airflow_provider_ciexport.export.sync import BatchEntries
from airflow_provider_ciexport.export.sync_run import SyncRun

log = logging.getLogger(__name__)

#: Seconds between looks at the stop flag while every unconfirmed-batch slot is taken.
_SLOT_WAIT_S = 0.5


class Stopped(Exception):
    """The export was asked to stop (``on_kill``) or a batch failed for good."""


class Delivery:
    """Sends one export's contacts and follows their jobs; what it could not deliver is kept for the
    export's final error.

    :param destination: where the contacts go.
    :param report: the run's report (counts of batches, jobs and outcomes).
    :param sync_run: the sync side of the run (``None``: no state).
    :param stop: set to stop sending (``on_kill``, or a batch failed for good).
    :param max_resubmits: how many times a batch whose job ended failed is sent again.
    :param on_progress: called after each batch ends (logs a progress line when one is due).
    :param outcomes: told what happens to each contact (the outcome log; by default nothing).
    """

    def __init__(
        self,
        destination: Destination,
        report: ExportReport,
        sync_run: SyncRun | None,
        stop: threading.Event,
        *,
        max_resubmits: int,
        on_progress: Callable[[], None],
        outcomes: OutcomeHooks = NO_OUTCOMES,
    ) -> None:
        self.destination = destination
        self.report = report
        self.sync_run = sync_run
        self.stop = stop
        self.max_resubmits = max_resubmits
        self.on_progress = on_progress
        self.outcomes = outcomes
        #: The first error that ended the export (a batch's, or the lease lost before the state was written).
        self.fatal: BaseException | None = None
        #: Contacts in batches whose jobs ended failed every time, and the last such job's state.
        self.failed_contacts = 0
        self.failed_state = ""
        #: Contacts whose import was accepted but whose job is not final yet.
        self.unconfirmed = 0
        #: Contacts larger than a whole request, never sent.
        self.too_large = 0
        self.resumed_contacts = 0  #: contacts of batches an earlier try confirmed, not sent again
        self._lock = threading.Lock()

    def fail(self, exc: BaseException) -> None:
        """Record ``exc`` as what ended the export, unless an earlier error did."""
        with self._lock:
            if self.fatal is None:
                self.fatal = exc

    def ended_early(self) -> bool:
        """Whether the export was stopped or failed (nothing more should be sent or removed)."""
        return self.stop.is_set() or self.fatal is not None

    # -- a small segment: single-contact calls ---------------------------------------------------

    def send_small(self, contacts: list[dict[str, str]]) -> None:
        """Send a segment small enough for the destination's single-contact calls."""
        report = self.report
        report.submitted = len(contacts)
        if not contacts:
            return
        sync_run = self.sync_run
        entries = sync_run.take_all() if sync_run is not None else None
        if sync_run is not None and entries is not None:
            sync_run.wait_for_claims(sync_run.sending(0, entries))  # batch numbers start at 1
        accepted = self.destination.send_small(contacts)
        report.record_outcome(accepted, len(contacts) - accepted)
        self.outcomes.small(accepted, len(contacts))
        if sync_run is not None and entries is not None:
            sync_run.confirmed(0, entries, None, accepted == len(contacts))

    # -- batches ---------------------------------------------------------------------------------

    def send_batches(
        self, items: Iterator[tuple[dict[str, str], bytes]], batcher: Batcher, checkpoint: Checkpoint
    ) -> None:
        """Batch the encoded contacts and send each batch, skipping those an earlier try saw confirmed;
        return once every batch's job has ended (or the export stopped)."""
        destination = self.destination
        slots = threading.BoundedSemaphore(destination.max_unconfirmed)
        submit_gate = threading.BoundedSemaphore(destination.max_in_flight)
        poll_limiter = destination.poll_pacer()

        def dispatch(batch: Batch) -> None:
            prepared = self._prepare(batch, checkpoint)
            if prepared is not None:
                for admitted in checkpoint.admit(batch, *prepared):
                    start(admitted)

        def start(admitted: Admitted) -> None:
            batch, digest, entries = admitted.batch, admitted.digest, admitted.payload
            if admitted.resumed is not None:
                self._resumed(admitted)
                return
            ticket = 0
            while not slots.acquire(timeout=_SLOT_WAIT_S):
                if self.stop.is_set():
                    raise Stopped
            if self.sync_run is not None and entries is not None:
                ticket = self.sync_run.sending(batch.number, entries)
            job = partial(
                self._deliver, batch, digest, submit_gate, poll_limiter, entries, ticket, checkpoint
            )
            # _deliver records its own fatal error and stops the export; leaving the pool waits for it.
            pool.submit(self._releasing, slots, job)

        # Leaving the pool waits for every batch already dispatched, also once the export stopped.
        pool = ThreadPoolExecutor(destination.max_unconfirmed, thread_name_prefix="ciexport")
        with pool, contextlib.suppress(Stopped):
            self._batch(items, batcher, dispatch)
            for admitted in checkpoint.release():
                start(admitted)

    def _batch(
        self,
        items: Iterator[tuple[dict[str, str], bytes]],
        batcher: Batcher,
        dispatch: Callable[[Batch], None],
    ) -> None:
        for _, item in items:
            if self.stop.is_set():
                raise Stopped
            if not batcher.fits_alone(item):
                # One contact larger than a whole request: the API could never take it.
                self.too_large += 1
                self.outcomes.too_large(batcher.pending)
                continue
            batch = batcher.add(item)
            if batch is not None:
                dispatch(batch)
        last = batcher.flush()
        if last is not None:
            dispatch(last)

    def _prepare(self, batch: Batch, checkpoint: Checkpoint) -> tuple[str, BatchEntries | None] | None:
        """Count a batch about to be sent; ``None`` when it is not sent (a dry run), else its digest and
        its entries (the checkpoint then decides whether an earlier try saw it confirmed)."""
        report, sync_run = self.report, self.sync_run
        entries = sync_run.take_batch(batch.contacts) if sync_run is not None else None
        self.outcomes.batched(batch, sent=not report.dry_run)
        if report.dry_run:
            report.would_batches += 1
            report.would_submit += batch.contacts
            return None
        report.batches += 1
        report.submitted += batch.contacts
        digest = batch_digest(batch) if checkpoint.store is not None else ""
        return digest, entries

    def _resumed(self, admitted: Admitted) -> None:
        """Count a batch an earlier try saw confirmed, not sent again."""
        assert admitted.resumed is not None
        self.report.resumed_batches += 1
        self.report.record_outcome(*admitted.resumed)
        self.outcomes.confirmed(admitted.batch.number, JobResult(True, *admitted.resumed), "resumed")
        self.resumed_contacts += sum(admitted.resumed)
        if self.sync_run is not None and admitted.payload is not None:
            self.sync_run.resumed(admitted.payload, admitted.accepted_all)

    def _releasing(self, slots: threading.BoundedSemaphore, job: Callable[[], None]) -> None:
        """Run ``job`` (one batch's delivery), then free its slot and log progress when due."""
        try:
            job()
        finally:
            slots.release()
            self.on_progress()

    def _deliver(
        self,
        batch: Batch,
        digest: str,
        submit_gate: threading.BoundedSemaphore,
        poll_limiter: Pacer,
        entries: BatchEntries | None,
        ticket: int,
        checkpoint: Checkpoint,
    ) -> None:
        """Submit one batch and follow its job to the end, sending it again if the job fails.

        :param ticket: the batch's claims in the partial state, saved before it is sent (0: none).
        """
        try:
            if self.sync_run is not None:
                self.sync_run.wait_for_claims(ticket)
            result = self._submit_until_done(batch, submit_gate, poll_limiter)
            if result is None:
                return  # not waited for
            if result.ok:
                self._confirmed(batch, digest, result, entries, checkpoint)
            else:
                self._failed(batch, result, entries)
        except BaseException as exc:
            if not isinstance(exc, Stopped):
                self.fail(exc)
            self.stop.set()
            raise

    def _submit_until_done(
        self, batch: Batch, submit_gate: threading.BoundedSemaphore, poll_limiter: Pacer
    ) -> JobResult | None:
        """Submit the batch and wait for its job, again while the job ends failed (``max_resubmits``
        times); the last job's result, or ``None`` when the export does not wait for its jobs."""
        destination, report = self.destination, self.report

        def submit(attempt: int) -> str:
            with submit_gate:
                job_id = destination.submit(batch)
            self.outcomes.submitted(batch.number, job_id)
            with self._lock:
                self.unconfirmed += batch.contacts
                report.resubmitted_batches += 1 if attempt else 0
            return job_id

        def wait(job_id: str) -> JobResult:
            result = wait_for(self.stop, destination, partial(destination.poll, job_id, batch), poll_limiter)
            with self._lock:
                self.unconfirmed -= batch.contacts
            return result

        def failed(job_id: str, result: JobResult, attempt: int) -> None:
            log.warning(
                "%s import job %s (batch %d, %d contacts) ended '%s'%s.",
                destination.name,
                job_id,
                batch.number,
                batch.contacts,
                result.state,
                "; sending it again" if attempt < self.max_resubmits else "",
            )

        if not report.waited:
            report.record_job(submit(0))
            return None
        return self.follow(submit, wait, failed)

    def follow(
        self,
        submit: Callable[[int], str],
        wait: Callable[[str], JobResult],
        failed: Callable[[str, JobResult, int], None] | None = None,
    ) -> JobResult:
        """Submit a job and wait for its end, again while it ends failed (``max_resubmits`` times):
        the one loop of imports and removals. Return the last job's result.

        :param submit: sends the job (given the attempt, 0 first) and returns its id.
        :param wait: follows the job with that id to its end.
        :param failed: told of each job that ended failed (its id, result and attempt).
        """
        for attempt in range(self.max_resubmits + 1):
            if self.stop.is_set():
                raise Stopped
            job_id = submit(attempt)
            self.report.record_job(job_id)
            result = wait(job_id)
            if result.ok:
                return result
            if failed is not None:
                failed(job_id, result, attempt)
        return result

    def follow_removal(
        self,
        submit: Callable[[], str],
        poll: Callable[[str], JobResult | None],
        poll_limiter: Pacer,
    ) -> JobResult:
        """Follow a removal job (see :meth:`follow`), polled at ``poll_limiter``'s pace."""
        return self.follow(
            lambda _attempt: submit(),
            lambda job_id: wait_for(self.stop, self.destination, partial(poll, job_id), poll_limiter),
        )

    def _confirmed(
        self,
        batch: Batch,
        digest: str,
        result: JobResult,
        entries: BatchEntries | None,
        checkpoint: Checkpoint,
    ) -> None:
        self.report.record_outcome(result.accepted, result.rejected)
        self.outcomes.confirmed(batch.number, result)
        if self.sync_run is not None and entries is not None:
            self.sync_run.confirmed(batch.number, entries, result.refused, result.rejected == 0)
        checkpoint.confirm(batch, digest, result.accepted, result.rejected)

    def _failed(self, batch: Batch, result: JobResult, entries: BatchEntries | None) -> None:
        with self._lock:
            self.report.failed_batches += 1
            self.failed_contacts += batch.contacts
            self.failed_state = result.state
        self.outcomes.failed(batch.number, result)
        # A job that ended failed may still have added part of the batch: owned, not confirmed.
        if self.sync_run is not None and entries is not None:
            self.sync_run.failed(batch.number, entries)


def wait_for(
    stop: threading.Event,
    destination: Destination,
    poll: Callable[[], JobResult | None],
    poll_limiter: Pacer,
) -> JobResult:
    """Poll a job (at the export's poll rate) until it ends; stop waiting when ``stop`` is set."""

    def pause(seconds: float) -> None:
        if stop.wait(seconds):
            raise Stopped

    def paced_poll() -> JobResult | None:
        poll_limiter.acquire()
        return poll()

    return poll_until_done(paced_poll, destination.poll_interval, destination.max_poll_interval, pause)


def sending_phase(delivery: Delivery, read_all: bool) -> str:
    """What the export is doing, for the progress line: sending; once every row is read, submitting
    the batches still queued; then waiting for the jobs of the last batches."""
    if not read_all:
        return "sending"
    report = delivery.report
    confirmed = report.accepted + report.rejected
    queued = report.submitted - confirmed - delivery.unconfirmed - delivery.failed_contacts
    if queued > 0:
        return f"every row read, {queued:,} contacts still to submit"
    return f"every row read, waiting for the last jobs: {delivery.unconfirmed:,} contacts not yet confirmed"


def raise_if_incomplete(delivery: Delivery, read_all: bool, total: int | None) -> None:
    """Raise, saying what was and was not exported, if the export failed, was stopped before the end
    or left batches unsent.

    :param read_all: whether the whole segment was read.
    :param total: the segment's rows, if counted.
    """
    report = delivery.report
    confirmed = report.accepted + report.rejected
    where = f"{delivery.destination.name} list(s) {', '.join(report.lists)}"
    pending = (
        f"; {delivery.unconfirmed:,} more were accepted by the API but not yet confirmed"
        if delivery.unconfirmed and report.waited
        else ""
    )
    done = (
        f"{report.accepted:,} of {report.submitted:,} contacts were confirmed as exported to {where}"
        f"{pending} ({report.read:,} rows read"
        f"{'' if total is None else f' of {total:,}'})."
    )
    if delivery.fatal is not None:
        exc = delivery.fatal
        if isinstance(exc, CiExportError):
            raise type(exc)(f"{exc} So far {done}") from exc
        raise ExportIncompleteError(f"The export failed ({type(exc).__name__}). So far {done}") from exc
    if delivery.stop.is_set() and (not read_all or confirmed < report.submitted):
        raise ExportIncompleteError(f"The export was stopped. So far {done} Retry the task to finish it.")
    if delivery.failed_contacts:
        raise ExportIncompleteError(
            f"{delivery.failed_contacts:,} contacts in {report.failed_batches} batch(es) were NOT exported: "
            f"their import jobs ended '{delivery.failed_state}' {delivery.max_resubmits + 1} times. "
            f"{done} Retry the task to send the rest."
        )
