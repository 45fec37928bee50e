"""Who opted out, remembered in the sync state and read again only as far as the destination's count
changed (:mod:`airflow_provider_ciexport.export.opt_outs`), against a list held in memory.

What a user cares about: nobody who opted out is ever sent or put back, nobody the export did not add
is removed, and a day on which nobody opted out reads none of them.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from tests.export.fakes import MemoryListDestination
from tests.export.test_sync_run import Export, email, emails, segment


@pytest.fixture(params=["removes", "unsubscribes"])
def destination(request: pytest.FixtureRequest) -> MemoryListDestination:
    """Constant Contact-like (account-wide opt-outs) and ActiveCampaign-like (status 2 on the list,
    the export's own removals included)."""
    return MemoryListDestination(removal_unsubscribes=request.param == "unsubscribes")


def test_days_on_which_nobody_opted_out_read_nobody_even_with_removals_and_returns(
    tmp_path: Path, destination: MemoryListDestination
) -> None:
    export = Export(tmp_path, destination)
    export.run(segment(range(10)))
    export.run(segment(range(2, 12)))  # 0 and 1 removed (on ActiveCampaign: status 2, as an opt-out)
    back = export.run(segment(range(12)))  # and back
    assert back["readded"] == 2
    assert destination.member_emails() == emails(segment(range(12)))
    assert (destination.opt_out_reads, destination.opt_out_reads_since) == (1, 0)


def test_one_who_opted_out_between_runs_is_read_alone_and_neither_sent_nor_removed(
    tmp_path: Path, destination: MemoryListDestination
) -> None:
    export = Export(tmp_path, destination)
    export.run(segment(range(10)))
    destination.unsubscribe(email(4))
    destination.unsubscribe("someone.else@example.com")  # never in the segment
    report = export.run(segment([*range(4), *range(5, 10)]))  # 4 leaves the segment the same day
    assert (report["to_remove"], report["skipped_unsubscribed"]) == (0, 0)
    assert destination.removal_requests == []
    assert (destination.opt_out_reads, destination.opt_out_reads_since) == (1, 1)
    # Known from the state from now on: neither of them is sent when they join the segment.
    later = export.run([*segment(range(10)), {"email": "Someone.Else@example.com ", "first": "S"}])
    assert (later["skipped_unsubscribed"], later["submitted"]) == (2, 0)
    assert (destination.opt_out_reads, destination.opt_out_reads_since) == (1, 1)


def test_a_re_subscribe_reads_everyone_again_and_the_person_is_sent_as_any_other(tmp_path: Path) -> None:
    destination = MemoryListDestination()  # account-wide opt-outs, as Constant Contact's
    export = Export(tmp_path, destination)
    destination.unsubscribe(email(3))
    export.run(segment(range(10)))
    destination.signup(email(3))  # they subscribe again by a form: the count goes down
    report = export.run(segment(range(10), **{email(3): "Changed"}))
    assert (report["skipped_unsubscribed"], report["submitted"]) == (0, 1)
    assert destination.fields(email(3))["first_name"] == "Changed"
    assert destination.opt_out_reads == 2
    # On the list by their own sign-up, so not the export's to remove when they leave.
    gone = export.run(segment([i for i in range(10) if i != 3]))
    assert (gone["to_remove"], email(3) in destination.member_emails()) == (0, True)


def test_without_a_read_by_date_a_changed_count_reads_everyone(
    tmp_path: Path, destination: MemoryListDestination
) -> None:
    destination.can_read_since = False
    export = Export(tmp_path, destination)
    export.run(segment(range(10)))
    destination.unsubscribe(email(2))
    report = export.run(segment(range(10), **{email(2): "Changed"}))
    assert (report["skipped_unsubscribed"], report["submitted"]) == (1, 0)
    assert destination.opt_out_reads == 2
    export.run(segment(range(10)))
    assert destination.opt_out_reads == 2


def test_an_opt_out_while_a_run_runs_is_read_by_the_next_run(
    tmp_path: Path, destination: MemoryListDestination
) -> None:
    export = Export(tmp_path, destination)
    export.run(segment(range(10)))
    count = destination.opted_out_count
    calls: list[int] = []

    def opt_out_during_the_run() -> int | None:
        calls.append(1)
        if len(calls) == 2:  # the count at the end of the run
            destination.unsubscribe(email(6))
        return count()

    destination.opted_out_count = opt_out_during_the_run  # type: ignore[method-assign]
    export.run(segment(range(10)))
    destination.opted_out_count = count  # type: ignore[method-assign]
    report = export.run(segment(range(10), **{email(6): "Changed"}))
    assert (report["skipped_unsubscribed"], report["submitted"]) == (1, 0)
    assert destination.opt_out_reads == 2


def test_the_scheduled_full_read_also_reads_who_opted_out(
    tmp_path: Path, destination: MemoryListDestination
) -> None:
    export = Export(tmp_path, destination)
    export.run(segment(range(10)))
    export.run(segment(range(10)), check_members_every_s=0.0)
    assert destination.opt_out_reads == 2


def test_one_the_export_removed_who_was_deleted_and_comes_back_is_on_the_list_again(tmp_path: Path) -> None:
    destination = MemoryListDestination(removal_unsubscribes=True)  # as ActiveCampaign
    export = Export(tmp_path, destination)
    export.run(segment(range(10)))
    export.run(segment(range(8)))  # 8 and 9 removed: status 2
    destination.delete(email(9))  # an account clean-up deletes the unsubscribed
    back = export.run(segment(range(10)))
    assert destination.member_emails() == emails(segment(range(10)))
    after: dict[str, Any] = export.run(segment(range(10)))
    assert after["skipped_unsubscribed"] == 0
    assert destination.member_emails() == emails(segment(range(10)))
    assert back["readded"] == 1


def test_the_scheduled_full_read_of_who_opted_out_follows_its_own_last_full_read(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Constant Contact reads the members on every run with removals; that must not put off the
    scheduled full read of who opted out."""
    import time as real_time
    from types import SimpleNamespace

    from airflow_provider_ciexport.export import list_members, opt_outs, sync_run

    day = 86_400.0
    clock = SimpleNamespace(time=real_time.time)
    for module in (list_members, opt_outs, sync_run):
        monkeypatch.setattr(module, "time", clock)
    destination = MemoryListDestination()
    export = Export(tmp_path, destination)
    start = real_time.time()
    export.run(segment(range(10)), check_members_every_s=1.5 * day)  # everyone read
    clock.time = lambda: start + day
    export.run(segment(range(1, 10)), check_members_every_s=1.5 * day)  # members read for a removal
    assert (destination.member_reads, destination.opt_out_reads) == (2, 1)
    clock.time = lambda: start + 2 * day
    export.run(segment(range(1, 10)), check_members_every_s=1.5 * day)
    assert destination.opt_out_reads == 2
