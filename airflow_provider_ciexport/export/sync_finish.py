"""The end of a sync run, once every batch is confirmed: the contacts the export removed that came back
are re-subscribed, and (mirror) the ones it added that left the segment are removed."""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

from airflow_provider_ciexport.core.jobs import JobResult
from airflow_provider_ciexport.export.destination import Destination
from airflow_provider_ciexport.export.outcomes import NO_OUTCOMES, OutcomeHooks
from airflow_provider_ciexport.export.progress import PhaseProgress
from airflow_provider_ciexport.export.report import ExportReport
from airflow_provider_ciexport.export.state import UNSUBSCRIBED, StateLease, email_key
from airflow_provider_ciexport.export.sync import SegmentDiff, SyncSettings

#: Submits a removal job (``submit()`` returns its id) and follows it to its end (``poll(job_id)``),
#: again while it ends failed; returns the last job's result.
FollowRemoval = Callable[[Callable[[], str], Callable[[str], "JobResult | None"]], JobResult]


#: Contacts handed to :meth:`Destination.readd` at a time, between two counts of its progress.
READD_CHUNK = 50


class SyncFinish:
    """Re-subscribes the returners and removes the leavers of one sync run.

    :param sync: the sync settings.
    :param destination: where the contacts are.
    :param diff: the run's diff, every batch confirmed.
    :param report: the run's report (its ``sync`` figures are updated).
    :param lease: the state's lease, checked before each change (``None``: a dry run).
    :param dry_run: count, but change nothing.
    :param refused: emails the imports refused (they are not re-subscribed).
    :param removal_ids: contact ids of the leavers, from the members read before sending (``None``:
        the members were not read).
    :param opted_out_complete: ``diff.opted_out`` holds everyone who opted out (read in full this run).
    :param progress_interval_s: the least time between progress lines while removing.
    """

    def __init__(
        self,
        sync: SyncSettings,
        destination: Destination,
        diff: SegmentDiff,
        report: ExportReport,
        lease: StateLease | None,
        *,
        dry_run: bool,
        refused: set[str],
        removal_ids: dict[str, str] | None,
        opted_out_complete: bool = False,
        progress_interval_s: float = 30.0,
    ) -> None:
        self.progress_interval_s = progress_interval_s
        self.sync = sync
        self.destination = destination
        self.diff = diff
        self.report = report
        self.lease = lease
        self.dry_run = dry_run
        self._refused = refused
        self._removal_ids = removal_ids
        self._opted_out_complete = opted_out_complete
        self._lock = threading.Lock()
        self._outcomes: OutcomeHooks = NO_OUTCOMES

    def run(self, follow: FollowRemoval, outcomes: OutcomeHooks = NO_OUTCOMES) -> None:
        """Re-subscribe the returners, then (mirror) remove the leavers.

        :param follow: sends a removal job and follows it to its end.
        :param outcomes: told of each removal (the outcome log).
        """
        self._outcomes = outcomes
        diff, sync = self.diff, self.sync
        if self.destination.removal_unsubscribes and diff.readd_emails and not self.dry_run:
            self._readd()
        if not sync.mirror:
            return
        leavers = []
        for index, email in diff.emails(diff.leavers()):
            if email in diff.opted_out:
                diff.forget([index])  # the person left the list themselves: not the export's any more
            else:
                leavers.append((index, email))
        self.report.sync["to_remove"] = len(leavers)
        segment = sum(diff.counts.values())
        diff.check_removals(len(leavers), segment, sync.max_removal_fraction, sent=True)
        if self.dry_run or not leavers:
            return
        found = self._with_contact_ids(leavers)
        if self.lease is not None:
            self.lease.check("removing contacts (new and changed contacts were sent)")
        self._remove(found, follow)

    def _readd(self) -> None:
        """Re-subscribe the contacts the export removed that came back into the segment."""
        diff = self.diff
        if self.lease is not None:
            self.lease.check("re-subscribing the contacts it removed that came back")
        # The import refused the excluded; the destination checks the rest for an opt-out since,
        # and that its own record shows the export's removal as the last change.
        back = [e for e in diff.readd_emails if e not in self._refused]
        state = diff.state
        windows = [state.removal_window(diff.readd_runs.get(e, 0)) for e in back]
        skipped = self._readd_told(back, windows)
        reasons = dict.fromkeys((e for e in diff.readd_emails if e in self._refused), "import_refused")
        for email in skipped:
            reasons[email] = "changed_since_removal"
            index = diff.state.find(email_key(email))
            if index < 0:
                continue
            if self._opted_out_complete and email not in diff.opted_out:
                diff.forget([index])  # not unsubscribed anywhere: deleted, so a new contact if it comes back
                reasons[email] = "contact_deleted"
            else:
                # Someone else's change (the person's own, most often): theirs from now on, remembered
                # so that no run sends them again until a full read says otherwise.
                diff.state.update(index, 0, UNSUBSCRIBED)
        self._outcomes.readds_refused(reasons)
        refused = len(diff.readd_emails) - len(back) + len(skipped)
        diff.counts["readded"] -= refused
        diff.counts["readd_refused"] += refused

    def _readd_told(self, emails: list[str], windows: list[tuple[float, float] | None]) -> set[str]:
        """:meth:`Destination.readd` in chunks of :data:`READD_CHUNK`, its progress told once an
        interval (ActiveCampaign checks each contact's own record: a few requests each)."""
        what = f"Re-subscribing the contacts the export removed that came back, at {self.destination.name}"
        skipped: set[str] = set()
        with PhaseProgress(what, len(emails), self.progress_interval_s, unit="contacts") as progress:
            for start in range(0, len(emails), READD_CHUNK):
                chunk = slice(start, start + READD_CHUNK)
                skipped.update(self.destination.readd(emails[chunk], windows[chunk]))
                progress.advance(len(emails[chunk]))
        return skipped

    def _with_contact_ids(self, leavers: list[tuple[int, str]]) -> list[tuple[int, str, str]]:
        """The leavers with their contact ids where the destination needs them (from the members read
        before sending; one not there is gone already). Members not read (none was expected to leave):
        nobody is removed, and the state keeps them for the next run."""
        diff = self.diff
        if not self.destination.removal_needs_contact_ids:
            return [(index, email, "") for index, email in leavers]
        if self._removal_ids is None:
            return []
        found = []
        for index, email in leavers:
            if email in self._removal_ids:
                found.append((index, email, self._removal_ids[email]))
            else:
                diff.forget([index])
        return found

    def _remove(self, leavers: list[tuple[int, str, str]], follow: FollowRemoval) -> None:
        destination, diff, report = self.destination, self.diff, self.report
        size = destination.max_removal_batch
        what = f"Removing the contacts that left the segment from the {destination.name} lists"
        progress = PhaseProgress(what, len(leavers), self.progress_interval_s, unit="contacts")

        def remove(chunk: list[tuple[int, str, str]]) -> None:
            contacts = [(email, contact_id) for _, email, contact_id in chunk]
            jobs: list[str] = []  # the last is the one whose result counts (a failed job is sent again)

            def submit() -> str:
                jobs.append(destination.submit_removal(contacts))
                return jobs[-1]

            result = follow(submit, lambda job_id: destination.poll_removal(job_id, contacts))
            progress.advance(len(chunk))
            self._outcomes.removals([email for email, _ in contacts], result, jobs[-1] if jobs else None)
            if not result.ok:
                with self._lock:
                    report.sync["removal_refused"] += len(chunk)
                return
            refused = {e.lower() for e in result.refused or ()}
            done = [index for index, email, _ in chunk if email not in refused]
            diff.removed(done, run)
            with self._lock:
                report.sync["removed"] += len(done)
                report.sync["removal_refused"] += len(chunk) - len(done)

        chunks = [leavers[i : i + size] for i in range(0, len(leavers), size)]
        if not chunks:
            return
        # When this run removed: a membership the destination shows as changed at another time was
        # not changed by this export (the re-subscribe check of :meth:`Destination.readd`).
        window = diff.state.start_removal_run()
        run = int(window[0])
        try:
            with progress, ThreadPoolExecutor(min(len(chunks), destination.max_in_flight)) as pool:
                for future in [pool.submit(remove, chunk) for chunk in chunks]:
                    future.result()
        finally:
            window[2] = float(math.ceil(time.time()))
