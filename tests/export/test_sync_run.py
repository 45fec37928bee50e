"""A sync run end to end against a list held in memory: no HTTP, no sandbox, no Airflow task.

What a user cares about after each run: who is on the list, and what the report's sync figures say.
Each test runs in both of the in-memory destination's modes where the destinations agree: like
Constant Contact (a removal takes the membership away) and like ActiveCampaign (a removal
unsubscribes, and a contact the export removed is re-subscribed when it comes back).
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import pytest

from airflow_provider_ciexport.export.engine import ExportSettings, SegmentExporter
from airflow_provider_ciexport.export.sources.records import RecordsSegmentSource
from airflow_provider_ciexport.export.state import StateKeys
from airflow_provider_ciexport.export.sync import RemovalLimitError, SyncSettings
from tests.export.fakes import MemoryListDestination

MAPPING = {"email": "email", "first_name": "first"}
KEYS = StateKeys(["the workers' secret"], "a test")


def email(i: int) -> str:
    return f"person.{i}@example.com"


def segment(ids: range | list[int], **changed: str) -> list[dict[str, Any]]:
    """The segment's rows for people ``ids``; ``changed`` gives some a new first name (by email)."""
    records = [{"email": email(i), "first": f"P{i}"} for i in ids]
    return [{**r, "first": changed.get(r["email"], r["first"])} for r in records]


def emails(records: list[dict[str, Any]]) -> set[str]:
    return {r["email"] for r in records}


class Export:
    """One export with a sync state, run again and again against the same list."""

    def __init__(self, tmp_path: Path, destination: MemoryListDestination, mode: str = "mirror") -> None:
        self.state_path = f"file://{tmp_path}/s.state"
        self.destination = destination
        self.mode = mode

    def run(
        self, records: list[dict[str, Any]], export: ExportSettings | None = None, **sync: Any
    ) -> dict[str, Any]:
        settings = SyncSettings(state_path=self.state_path, mode=self.mode, keys=KEYS, **sync)
        exporter = SegmentExporter(
            RecordsSegmentSource(records),
            self.destination,
            MAPPING,
            export or ExportSettings(),
            sync=settings,
        )
        report = exporter.run().as_dict()
        _check_invariants(report)
        return report

    def sent(self, since: int) -> list[str]:
        """Emails in the import bodies sent after the first ``since`` batches."""
        return [c["email"] for b in self.destination.submitted[since:] for c in _contacts(b.body)]


def _contacts(body: bytes) -> list[dict[str, str]]:
    return list(json.loads(body))


def _check_invariants(report: dict[str, Any]) -> None:
    """What the operators page promises about every sync report."""
    assert report["read"] == (
        report["invalid"]
        + report["duplicates"]
        + report["skipped_unsubscribed"]
        + report["unchanged"]
        + report["submitted"]
    ), report
    assert report["submitted"] == (
        report["new"] + report["changed"] + report["readded"] + report["readd_refused"] + report["restored"]
    ), report
    assert report["submitted"] == report["accepted"] + report["rejected"], report


@pytest.fixture(params=["removes", "unsubscribes"])
def destination(request: pytest.FixtureRequest) -> MemoryListDestination:
    """The list in each mode: a removal takes the membership away (Constant Contact) or unsubscribes
    (ActiveCampaign)."""
    return MemoryListDestination(removal_unsubscribes=request.param == "unsubscribes")


def test_a_first_mirror_sync_makes_the_list_the_segment_and_leaves_earlier_members_alone(
    tmp_path: Path, destination: MemoryListDestination
) -> None:
    destination.signup("form.only@example.com")  # never in the segment
    destination.signup(email(0))  # joined by a form before the export ever ran
    export = Export(tmp_path, destination)

    first = export.run(segment(range(10)))
    assert (first["new"], first["accepted"], first["state_entries"], first["to_remove"]) == (10, 10, 0, 0)
    assert destination.member_emails() == emails(segment(range(10))) | {"form.only@example.com"}
    assert destination.fields(email(3)) == {"first_name": "P3"}

    later = export.run(segment(range(2, 10)))  # person.0 and person.1 leave the segment
    assert (later["to_remove"], later["removed"], later["unchanged"]) == (1, 1, 8)
    assert destination.member_emails() == emails(segment(range(2, 10))) | {
        "form.only@example.com",
        email(0),  # theirs, not the export's: never removed
    }


def test_churn_sends_only_new_and_changed_contacts_and_removes_the_leavers(
    tmp_path: Path, destination: MemoryListDestination
) -> None:
    export = Export(tmp_path, destination)
    export.run(segment(range(10)))
    batches = len(destination.submitted)

    same = export.run(segment(range(10)))
    assert (same["unchanged"], same["submitted"], same["to_remove"]) == (10, 0, 0)
    assert len(destination.submitted) == batches and destination.removal_requests == []

    churned = segment([*range(1, 10), 10], **{email(1): "Changed"})
    report = export.run(churned)
    assert (report["new"], report["changed"], report["unchanged"]) == (1, 1, 8)
    assert (report["submitted"], report["to_remove"], report["removed"]) == (2, 1, 1)
    assert sorted(export.sent(batches)) == sorted([email(1), email(10)])
    assert destination.member_emails() == emails(churned)
    assert destination.fields(email(1)) == {"first_name": "Changed"}


def test_a_person_who_opted_out_is_never_re_added_and_is_remembered_without_reading_them_again(
    tmp_path: Path, destination: MemoryListDestination
) -> None:
    destination.unsubscribe(email(9))  # before the first sync
    export = Export(tmp_path, destination)
    first = export.run(segment(range(10)))
    assert (first["skipped_unsubscribed"], first["new"]) == (1, 9)
    batches = len(destination.submitted)

    destination.unsubscribe(email(3))  # after the export added them
    changed = segment(range(10), **{email(3): "Changed", email(9): "Changed"})
    second = export.run(changed)
    assert (second["skipped_unsubscribed"], second["submitted"], second["to_remove"]) == (2, 0, 0)
    assert export.sent(batches) == []
    assert second["state_entries"] == 10  # the nine sent, and the one who opted out before

    # No longer the export's: when they leave the segment nobody is removed; back, they are skipped.
    gone = export.run([r for r in changed if r["email"] != email(3)])
    assert (gone["to_remove"], gone["removed"]) == (0, 0)
    assert destination.removal_requests == []
    back = export.run(changed)
    assert (back["skipped_unsubscribed"], back["readded"], back["submitted"]) == (2, 0, 0)
    assert destination.member_emails() == emails(changed) - {email(3), email(9)}
    # Everyone was read once (the first sync); the second run read only who opted out since.
    assert (destination.opt_out_reads, destination.opt_out_reads_since) == (1, 1)


def test_a_refused_contact_is_sent_again_next_run(tmp_path: Path, destination: MemoryListDestination) -> None:
    destination.refuse = {email(4)}
    export = Export(tmp_path, destination)
    first = export.run(segment(range(10)))
    assert (first["accepted"], first["rejected"]) == (9, 1)
    assert email(4) not in destination.member_emails()

    batches = len(destination.submitted)
    again = export.run(segment(range(10)))
    assert (again["new"], again["unchanged"], again["rejected"]) == (1, 9, 1)
    assert export.sent(batches) == [email(4)]

    destination.refuse = set()  # the address is fixed
    fixed = export.run(segment(range(10)))
    assert (fixed["new"], fixed["accepted"], fixed["rejected"]) == (1, 1, 0)
    assert destination.member_emails() == emails(segment(range(10)))
    assert export.run(segment(range(10)))["submitted"] == 0


def test_a_person_who_signed_up_between_runs_and_then_left_the_segment_is_not_removed(
    tmp_path: Path,
) -> None:
    destination = MemoryListDestination()  # members read on every run (Constant Contact)
    export = Export(tmp_path, destination)
    export.run(segment(range(10)))
    destination.signup(email(20))  # by a form, and enters the segment the same day
    joined = export.run(segment([*range(10), 20]))
    assert joined["new"] == 1
    left = export.run(segment(range(10)))
    assert (left["to_remove"], left["removed"]) == (0, 0)
    assert email(20) in destination.member_emails()


def test_the_removal_limit_fails_before_anything_is_sent_or_removed(
    tmp_path: Path, destination: MemoryListDestination
) -> None:
    export = Export(tmp_path, destination)
    export.run(segment(range(10)))
    batches = len(destination.submitted)
    shrunk = segment(range(5), **{email(0): "Changed"})

    with pytest.raises(RemovalLimitError, match=r"5 contacts left .*max_removal_fraction=0.2.* 10 "):
        export.run(shrunk)
    with pytest.raises(RemovalLimitError, match=r"segment is empty.* 10 contacts"):
        export.run([])
    assert len(destination.submitted) == batches and destination.removal_requests == []
    assert destination.member_emails() == emails(segment(range(10)))
    assert destination.fields(email(0)) == {"first_name": "P0"}

    report = export.run(shrunk, max_removal_fraction=0.5)
    assert (report["removed"], report["changed"]) == (5, 1)
    assert destination.member_emails() == emails(shrunk)


def test_upsert_sends_changes_and_never_removes(tmp_path: Path, destination: MemoryListDestination) -> None:
    export = Export(tmp_path, destination, mode="upsert")
    export.run(segment(range(10)))
    report = export.run(segment(range(3), **{email(0): "Changed"}), max_removal_fraction=1.0)
    assert (report["sync_mode"], report["changed"], report["unchanged"]) == ("upsert", 1, 2)
    assert (report["to_remove"], report["removed"]) == (0, 0)
    assert destination.removal_requests == []
    assert destination.member_emails() == emails(segment(range(10)))


def test_a_contact_the_export_removed_that_comes_back_is_on_the_list_again(
    tmp_path: Path, destination: MemoryListDestination
) -> None:
    export = Export(tmp_path, destination)
    export.run(segment(range(10)))
    assert export.run(segment(range(8)))["removed"] == 2
    assert destination.member_emails() == emails(segment(range(8)))

    back = export.run(segment(range(10)))
    assert (back["readded"], back["unchanged"], back["readd_refused"]) == (2, 8, 0)
    assert destination.member_emails() == emails(segment(range(10)))
    assert destination.readds == ([email(8), email(9)] if destination.removal_unsubscribes else [])


def test_unsubscribes_mode_never_re_subscribes_one_who_unsubscribed_after_the_removal(
    tmp_path: Path,
) -> None:
    destination = MemoryListDestination(removal_unsubscribes=True)
    export = Export(tmp_path, destination)
    export.run(segment(range(10)))
    export.run(segment(range(8)))
    destination.unsubscribe(email(8))  # their own unsubscribe is now the last change
    back = export.run(segment(range(10)))
    assert (back["readded"], back["readd_refused"]) == (1, 1)
    assert destination.readds == [email(9)]
    assert destination.member_emails() == emails(segment([*range(8), 9]))
    # Forgotten: the next run skips them as opted out and re-subscribes nobody.
    after = export.run(segment(range(10)))
    assert (after["skipped_unsubscribed"], after["readded"], after["submitted"]) == (1, 0, 0)


def test_a_contact_deleted_out_of_band_that_left_the_segment_is_forgotten(
    tmp_path: Path, destination: MemoryListDestination
) -> None:
    export = Export(tmp_path, destination)
    export.run(segment(range(10)))
    destination.delete(email(5))
    remaining = segment([i for i in range(10) if i != 5])

    left = export.run(remaining)
    assert (left["removed"], left["removal_refused"]) == (0, 0)
    assert destination.member_emails() == emails(remaining)
    after = export.run(remaining)
    assert (after["state_entries"], after["to_remove"], after["removal_refused"]) == (9, 0, 0)
    assert export.run(segment(range(10)))["new"] == 1  # back in the segment: a new contact again
    assert destination.member_emails() == emails(segment(range(10)))


@pytest.mark.parametrize("mode", ["mirror", "upsert"])
def test_a_contact_deleted_out_of_band_while_in_the_segment_is_put_back(
    tmp_path: Path, destination: MemoryListDestination, mode: str
) -> None:
    export = Export(tmp_path, destination, mode)
    export.run(segment(range(10)))
    destination.delete(email(5))
    destination.take_off(email(6))  # off the list, still in the account
    repaired = export.run(segment(range(10)))
    assert (repaired["restored"], repaired["unchanged"], repaired["accepted"]) == (2, 8, 2)
    assert destination.member_emails() == emails(segment(range(10)))
    assert export.run(segment(range(10)))["submitted"] == 0


def test_an_emptied_account_is_filled_again_with_the_segment_and_nobody_else(
    tmp_path: Path, destination: MemoryListDestination
) -> None:
    destination.signup("form.only@example.com")
    export = Export(tmp_path, destination)
    export.run(segment(range(10)))
    destination.empty()
    repaired = export.run(segment(range(2, 12)))  # two left, two joined the same day
    assert (repaired["restored"], repaired["new"], repaired["to_remove"]) == (8, 2, 0)
    assert destination.member_emails() == emails(segment(range(2, 12)))
    assert export.run(segment(range(2, 12)))["submitted"] == 0


@pytest.mark.parametrize("mode", ["upsert", "mirror"])
def test_a_quiet_day_counts_the_members_and_reads_none(
    tmp_path: Path, destination: MemoryListDestination, mode: str
) -> None:
    export = Export(tmp_path, destination, mode)
    export.run(segment(range(10)))
    reads = destination.member_reads
    quiet = export.run(segment(range(10), **{email(1): "Changed"}))
    assert (quiet["submitted"], quiet["changed"], quiet["restored"]) == (1, 1, 0)
    assert destination.member_reads == reads


def test_contacts_to_remove_by_id_read_the_members_once_and_only_then(tmp_path: Path) -> None:
    destination = MemoryListDestination()  # removal by contact id, as Constant Contact's
    export = Export(tmp_path, destination)
    export.run(segment(range(10)))
    reads = destination.member_reads
    churn = export.run(segment(range(2, 10)))
    assert (churn["removed"], destination.member_reads) == (2, reads + 1)
    assert destination.member_emails() == emails(segment(range(2, 10)))
    export.run(segment(range(2, 11)))  # one new, nobody leaves
    assert destination.member_reads == reads + 1


@pytest.mark.parametrize(
    ("every", "repaired"),
    [(None, False), (86_400.0, False), (0.0, True)],
    ids=["only-when-the-count-changes", "a-day-not-yet-passed", "every-run"],
)
def test_a_change_that_keeps_the_count_is_repaired_by_the_scheduled_full_read(
    tmp_path: Path, destination: MemoryListDestination, every: float | None, repaired: bool
) -> None:
    export = Export(tmp_path, destination, "upsert")
    export.run(segment(range(10)), check_members_every_s=every)
    destination.delete(email(5))
    destination.signup("someone.else@example.com")  # one in, one out: the count is the same
    reads = destination.member_reads

    after = export.run(segment(range(10)), check_members_every_s=every)
    assert after["restored"] == (1 if repaired else 0)
    assert (email(5) in destination.member_emails()) is repaired
    assert destination.member_reads == reads + (1 if repaired else 0)


def test_one_who_unsubscribed_between_runs_is_not_put_back(
    tmp_path: Path, destination: MemoryListDestination
) -> None:
    export = Export(tmp_path, destination)
    export.run(segment(range(10)))
    destination.unsubscribe(email(3))
    destination.delete(email(4))
    after = export.run(segment(range(10)))
    assert (after["restored"], after["skipped_unsubscribed"]) == (1, 1)
    assert destination.member_emails() == emails(segment([i for i in range(10) if i != 3]))


def test_one_who_signed_up_by_a_form_between_runs_is_never_removed_where_members_are_not_read_each_run(
    tmp_path: Path,
) -> None:
    destination = MemoryListDestination(removal_unsubscribes=True)  # like ActiveCampaign
    export = Export(tmp_path, destination)
    export.run(segment(range(10)))
    destination.signup(email(20))  # by a form, and enters the segment the same day
    export.run(segment([*range(10), 20]))
    left = export.run(segment(range(10)))
    assert (left["to_remove"], left["removed"]) == (0, 0)
    assert email(20) in destination.member_emails()


def test_every_phase_of_a_mirror_run_tells_how_far_it_got_without_personal_data(
    tmp_path: Path, destination: MemoryListDestination, caplog: pytest.LogCaptureFixture
) -> None:
    export = Export(tmp_path, destination)
    export.run(segment(range(10)))
    destination.unsubscribe(email(9))
    destination.can_read_since = False  # so everyone who opted out is read again, and told as it goes
    caplog.set_level(logging.INFO, logger="airflow_provider_ciexport")
    every_time = ExportSettings(progress_interval_s=0.0)  # a line at every step

    report = export.run(segment(range(3, 12)), every_time, max_removal_fraction=0.5)  # 0-2 leave, 10-11 new
    assert (report["removed"], report["new"]) == (3, 2)
    lines = [r.getMessage() for r in caplog.records]

    def told(what: str) -> list[str]:
        return [line for line in lines if line.startswith(what)]

    assert told("Reading who opted out at Fake")[-1].startswith(
        "Reading who opted out at Fake: 1 of 1 contacts (100%)"
    )
    first_pass = told("Mirror first pass (")
    assert first_pass[-1].split(": ", 1)[1].startswith("9 of 9 rows (100%)")
    if destination.removal_needs_contact_ids:  # members are read for the leavers' ids there
        # Counted against the lists' member count, asked once the first line was due.
        assert told("Reading the Fake lists' members")[-1].split(": ", 1)[1].startswith("9 of 9 members")
    removals = told("Removing the contacts that left the segment")
    assert removals[-1].split(": ", 1)[1].startswith("3 of 3 contacts (100%)")
    main = [line for line in lines if "export progress (" in line]
    assert main and all("rows read" in line and "ETA" in line for line in main)
    assert "@example.com" not in caplog.text


def test_re_subscribing_many_who_came_back_tells_how_far_it_got(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    destination = MemoryListDestination(removal_unsubscribes=True)
    export = Export(tmp_path, destination)
    export.run(segment(range(200)))
    export.run(segment(range(80)), max_removal_fraction=0.9)  # 120 removed
    caplog.set_level(logging.INFO, logger="airflow_provider_ciexport")

    back = export.run(segment(range(200)), ExportSettings(progress_interval_s=0.0))
    assert back["readded"] == 120
    told = [
        r.getMessage().split(": ", 1)[1]
        for r in caplog.records
        if r.getMessage().startswith("Re-subscribing")
    ]
    assert [line.split(" in ")[0] for line in told] == [
        "50 of 120 contacts (42%)",
        "100 of 120 contacts (83%)",
        "120 of 120 contacts (100%)",
    ]
    assert destination.member_emails() == emails(segment(range(200)))
