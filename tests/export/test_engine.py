"""The export engine on its own, with an in-memory destination: no HTTP, no Airflow task."""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import pytest

from airflow_provider_ciexport.core.contacts import ContactSchema
from airflow_provider_ciexport.core.jobs import JobResult
from airflow_provider_ciexport.exceptions import (
    DestinationAuthError,
    ExportConfigurationError,
    ExportIncompleteError,
)
from airflow_provider_ciexport.export.batcher import Batch
from airflow_provider_ciexport.export.destination import Destination
from airflow_provider_ciexport.export.engine import ExportSettings, SegmentExporter
from airflow_provider_ciexport.export.sources.records import RecordsSegmentSource
from airflow_provider_ciexport.export.state import StateIdentity, StateKeys, read_state
from airflow_provider_ciexport.export.sync import SyncSettings
from tests.core.fakes import MemoryStore
from tests.export.fakes import FakeDestination
from tests.support import logged_report

MAPPING = {"email": "email", "first_name": "first"}


def rows(n: int, start: int = 0) -> list[dict[str, Any]]:
    return [{"email": f"User{i}@Example.com", "first": f"F{i}"} for i in range(start, start + n)]


def export(
    records: list[dict[str, Any]],
    destination: Destination,
    store: MemoryStore | None = None,
    **settings: Any,
) -> dict[str, Any]:
    exporter = SegmentExporter(
        RecordsSegmentSource(records), destination, MAPPING, ExportSettings(**settings), progress=store
    )
    return exporter.run().as_dict()


def test_every_row_is_accounted_for_and_each_valid_contact_sent_once() -> None:
    records = [
        *rows(7),
        {"email": "not an email", "first": "x"},
        {"email": None, "first": "y"},
        {"email": " USER3@example.com ", "first": "again"},  # a duplicate of User3
        {"email": "blank@example.com", "first": "   "},
    ]
    destination = FakeDestination(rejected={2: 1})
    report = export(records, destination)

    assert report["read"] == 11
    assert (report["invalid"], report["invalid.malformed"], report["invalid.missing"]) == (2, 1, 1)
    assert report["duplicates"] == 1
    assert report["submitted"] == 8
    assert report["read"] == report["invalid"] + report["duplicates"] + report["submitted"]
    assert (report["accepted"], report["rejected"]) == (7, 1)
    assert report["submitted"] == report["accepted"] + report["rejected"]
    assert report["batches"] == 3 and sorted(report["jobs"]) == ["job-1", "job-2", "job-3"]
    assert destination.emails_sent() == [f"user{i}@example.com" for i in range(7)] + ["blank@example.com"]
    assert json.loads(destination.submitted[-1].body)[-1] == {"email": "blank@example.com"}  # no blank sent
    assert destination.prepared_with == MAPPING
    assert report["requests"] == destination.requests_made


def test_a_failed_job_is_sent_again_with_the_same_body() -> None:
    destination = FakeDestination(failures={2: 1})
    report = export(rows(9), destination)

    assert report["resubmitted_batches"] == 1 and report["failed_batches"] == 0
    assert report["accepted"] == 9 and len(report["jobs"]) == 4
    bodies = [b.body for b in destination.submitted if b.number == 2]
    assert len(bodies) == 2 and bodies[0] == bodies[1]


def test_jobs_that_keep_failing_fail_the_export_saying_what_was_exported() -> None:
    destination = FakeDestination(failures={1: 3})
    with pytest.raises(ExportIncompleteError) as err:
        export(rows(7), destination)

    message = str(err.value)
    assert "3 contacts in 1 batch(es) were NOT exported" in message
    assert "ended 'failed' 3 times" in message
    assert "4 of 7 contacts were confirmed as exported to Fake list(s) L1" in message
    assert "Retry the task" in message
    assert len([b for b in destination.submitted if b.number == 1]) == 3


def test_a_fatal_error_keeps_its_type_and_says_how_far_the_export_got() -> None:
    class Refusing(FakeDestination):
        def submit(self, batch: Batch) -> str:
            if batch.number == 2:
                raise DestinationAuthError("The API key was refused.")
            return super().submit(batch)

    with pytest.raises(DestinationAuthError) as err:
        export(rows(9), Refusing(), max_resubmits=0)
    assert re.fullmatch(
        r"The API key was refused\. So far \d of \d contacts were confirmed as exported to Fake list\(s\) L1"
        r"(; \d more were accepted by the API but not yet confirmed)? \(9 rows read of 9\)\.",
        str(err.value),
    )


def test_stop_sends_nothing_more_and_says_so() -> None:
    exporter: SegmentExporter

    class Stopping(FakeDestination):
        def submit(self, batch: Batch) -> str:
            job = super().submit(batch)
            if batch.number == 1:
                exporter.stop()  # as on_kill does, from another thread, while the first import is out
            return job

    destination = Stopping()
    exporter = SegmentExporter(RecordsSegmentSource(rows(30)), destination, MAPPING, ExportSettings())
    with pytest.raises(ExportIncompleteError, match="The export was stopped") as err:
        exporter.run()
    assert len(destination.submitted) <= destination.max_in_flight
    assert "Retry the task to finish it" in str(err.value)


def test_a_retried_export_skips_the_batches_an_earlier_try_confirmed() -> None:
    store = MemoryStore()
    with pytest.raises(ExportIncompleteError):
        export(rows(9), FakeDestination(failures={3: 3}), store)
    assert [r[:2] for r in store.document["ranges"]] == [[1, 2]]

    second = FakeDestination()
    report = export(rows(9), second, store)

    assert report["resumed_batches"] == 2
    assert [b.number for b in second.submitted] == [3]
    assert (report["submitted"], report["accepted"], report["batches"]) == (9, 9, 3)
    assert store.document is None  # the export completed: nothing left to resume


class JobsWaitForTheEnd(FakeDestination):
    """Jobs run until the export has read every row, so a progress line is always logged while the
    export waits for its last job (however the threads are scheduled)."""

    def __init__(self) -> None:
        super().__init__()
        self.read_all: Callable[[], bool] = lambda: True

    def poll(self, job_id: str, batch: Batch) -> JobResult | None:
        if not self.read_all():
            return None
        return super().poll(job_id, batch)


def test_a_retried_export_says_what_it_resumed_and_counts_it_as_done(
    caplog: pytest.LogCaptureFixture,
) -> None:
    store = MemoryStore()
    with pytest.raises(ExportIncompleteError):
        export(rows(9), FakeDestination(failures={3: 3}), store)
    caplog.set_level(logging.INFO, logger="airflow_provider_ciexport.export.engine")
    caplog.clear()

    destination = JobsWaitForTheEnd()
    exporter = SegmentExporter(
        RecordsSegmentSource(rows(9)),
        destination,
        MAPPING,
        ExportSettings(progress_interval_s=0.0),
        progress=store,
    )
    destination.read_all = lambda: exporter._read_all
    exporter.run()

    lines = [r.getMessage() for r in caplog.records if "export progress (" in r.getMessage()]
    # The two batches the first try confirmed are done from the retry's first line on.
    assert lines and all("(6 resumed from an earlier try)" in line for line in lines)
    assert lines[-1].startswith("Fake export progress (") and "9 confirmed (6 resumed" in lines[-1]
    # Once every row is read, the line says the export waits for its last jobs.
    assert "(every row read, waiting for the last jobs: " in lines[-1]


def test_a_changed_segment_is_sent_again_rather_than_resumed() -> None:
    store = MemoryStore()
    with pytest.raises(ExportIncompleteError):
        export(rows(9), FakeDestination(failures={3: 3}), store)

    changed = FakeDestination()
    report = export(rows(9, start=1), changed, store)  # every batch's body differs now
    assert report["resumed_batches"] == 0
    assert [b.number for b in changed.submitted] == [1, 2, 3]


def test_progress_is_not_kept_for_another_mapping() -> None:
    store = MemoryStore()
    with pytest.raises(ExportIncompleteError):
        export(rows(9), FakeDestination(failures={3: 3}), store)
    exporter = SegmentExporter(
        RecordsSegmentSource(rows(9)), FakeDestination(), {"email": "email"}, ExportSettings(), progress=store
    )
    assert exporter.run().resumed_batches == 0


def test_progress_lines_count_without_personal_data(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="airflow_provider_ciexport.export.engine")
    export(rows(12), FakeDestination(), progress_interval_s=0.0)

    lines = [r.getMessage() for r in caplog.records if "export progress" in r.getMessage()]
    assert lines and all("rows read" in line and "ETA" in line for line in lines)
    assert "12/12 rows read (100%)" in lines[-1]
    assert "@example.com" not in caplog.text
    figures = logged_report([r.getMessage() for r in caplog.records])
    assert figures["read"] == "12" and figures["accepted"] == "12"


def test_dry_run_prepares_and_counts_but_sends_nothing() -> None:
    destination = FakeDestination()
    report = export(rows(7), destination, dry_run=True)
    assert destination.prepared_with == MAPPING and destination.submitted == []
    assert (report["would_submit"], report["would_batches"], report["dry_run"]) == (7, 3, True)
    assert (report["submitted"], report["batches"], report["accepted"]) == (0, 0, None)


def test_without_waiting_jobs_are_started_but_never_polled() -> None:
    destination = FakeDestination()
    report = export(rows(7), destination, wait_for_completion=False)
    assert len(destination.submitted) == 3 and destination.polls == 0
    assert report["accepted"] is None and report["rejected"] is None


def test_a_small_segment_goes_contact_by_contact() -> None:
    destination = FakeDestination()
    destination.small_segment_max = 5
    report = export(rows(4), destination)
    assert [c["email"] for c in destination.small] == [f"user{i}@example.com" for i in range(4)]
    assert destination.submitted == [] and report["accepted"] == 4


def test_a_contact_too_large_for_any_request_is_counted_invalid() -> None:
    destination = FakeDestination()
    destination.max_batch_bytes = 200
    records = [*rows(2), {"email": "big@example.com", "first": "x" * 300}]
    destination.schema = ContactSchema("Fake", {"email": 254, "first_name": None}, "x:")
    report = export(records, destination)
    assert report["invalid.too_large"] == 1 and report["submitted"] == 2


def test_too_many_rows_fail_before_anything_is_sent() -> None:
    destination = FakeDestination()
    with pytest.raises(ExportConfigurationError, match=r"more than max_profiles=5\. Nothing was sent"):
        export(rows(6), destination, max_profiles=5)
    assert destination.submitted == []


class SyncingDestination(FakeDestination):
    """The fake destination with what a sync needs: an account, lists chosen per test, nobody opted out."""

    def __init__(self, lists: list[str]) -> None:
        super().__init__()
        self._lists = lists

    @property
    def list_ids(self) -> list[str]:
        return self._lists

    def account(self) -> str:
        return "https://fake.example.com"

    def opted_out(self) -> Iterator[str]:
        return iter(())

    def members(self) -> Iterator[tuple[str, str]]:
        return iter(())


def sync_export(destination: Destination, state_path: str, **sync: Any) -> dict[str, Any]:
    settings = SyncSettings(state_path, keys=StateKeys(["the workers' secret"], "a test"), **sync)
    exporter = SegmentExporter(RecordsSegmentSource(rows(4)), destination, MAPPING, sync=settings)
    return exporter.run().as_dict()


def test_a_run_to_other_lists_never_replaces_the_state_unless_told_to_start_over(tmp_path: Path) -> None:
    uri = f"file://{tmp_path}/vip.state"
    sync_export(SyncingDestination(["L1"]), uri)
    production = (tmp_path / "vip.state").read_bytes()
    manual = SyncingDestination(["L2"])
    with pytest.raises(ExportConfigurationError) as error:
        sync_export(manual, uri)
    assert str(error.value) == (
        "The sync state at state_path belongs to another export: it was written for another lists (this "
        "run's destination, account, lists and field_mapping are not those it was written for). "
        "Replacing it would make that export take the contacts it added for members that were there "
        "before, and never remove them. Give each set of lists its own state_path (render the list ids "
        "into it); to start over on this state_path with these lists, run once with full_refresh=True "
        "(it sends everything, removes and re-subscribes nobody, and replaces the state)."
    )
    assert manual.submitted == [] and manual.small == []
    assert (tmp_path / "vip.state").read_bytes() == production
    assert not (tmp_path / "vip.state.lock").exists()

    report = sync_export(manual, uri, full_refresh=True)
    assert report["full_refresh_reason"] == (
        "full_refresh=True replaces a state of another export (it was written for another lists)"
    )
    assert report["new"] == 4 and report["state_authenticated"] is True
    assert sync_export(SyncingDestination(["L2"]), uri)["unchanged"] == 4
    with pytest.raises(ExportConfigurationError, match="belongs to another export"):
        sync_export(SyncingDestination(["L1"]), uri)


class RemovingDestination(SyncingDestination):
    """A destination whose removal unsubscribes (as ActiveCampaign's): it records what each re-subscribe
    is checked against."""

    removal_unsubscribes = True

    def __init__(self) -> None:
        super().__init__(["L1"])
        self.readd_checked: dict[str, Sequence[float] | None] = {}

    def submit_removal(self, contacts: Sequence[tuple[str, str]]) -> str:
        return "removal"

    def poll_removal(self, job_id: str, contacts: Sequence[tuple[str, str]]) -> JobResult | None:
        return JobResult(ok=True, accepted=len(contacts))

    def readd(self, emails: Sequence[str], removals: Sequence[Sequence[float] | None]) -> list[str]:
        self.readd_checked.update(zip(emails, removals, strict=True))
        return []


def test_a_resubscribe_is_checked_against_the_run_that_removed_that_contact_only(tmp_path: Path) -> None:
    uri = f"file://{tmp_path}/vip.state"
    destination = RemovingDestination()

    def run(records: list[dict[str, Any]]) -> dict[str, Any]:
        settings = SyncSettings(
            uri, mode="mirror", max_removal_fraction=1.0, keys=StateKeys(["the workers' secret"], "a test")
        )
        return (
            SegmentExporter(RecordsSegmentSource(records), destination, MAPPING, sync=settings)
            .run()
            .as_dict()
        )

    everyone = rows(6)
    run(everyone)
    assert run(everyone[1:])["removed"] == 1  # user0 removed by the first removal run
    assert run(everyone[2:])["removed"] == 1  # user1 by the second
    assert run(everyone)["readded"] == 2
    state = read_state(
        uri,
        StateIdentity.of("Fake", "https://fake.example.com", ["L1"], MAPPING),
        StateKeys(["the workers' secret"], "a test"),
    )
    first, second = (tuple(w[1:]) for w in state.state.removals)
    # Each contact's record is compared with the window of the run that removed it, not with any of
    # the export's removal runs (another app's unsubscribe then would pass for the export's).
    assert destination.readd_checked == {"user0@example.com": first, "user1@example.com": second}
