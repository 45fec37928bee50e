"""The progress line's figures and ETA, and when a line is due."""

from __future__ import annotations

from typing import Any

import pytest

from airflow_provider_ciexport.export.progress import ProgressClock, format_duration, progress_line
from airflow_provider_ciexport.export.report import ExportReport


def _report(dry_run: bool = False, wait_for_completion: bool = True) -> ExportReport:
    return ExportReport(
        destination="Fake", lists=["1"], dry_run=dry_run, waited=wait_for_completion and not dry_run
    )


def test_eta_follows_confirmations_while_imports_are_still_being_confirmed() -> None:
    report = _report()
    # Everything read and submitted in 10 s, half of it confirmed: another 10 s to go, not 0.
    report.read, report.invalid, report.duplicates, report.submitted = 1000, 100, 100, 800
    report.accepted, report.rejected = 390, 10
    line = progress_line(report, 1000, 10.0)
    assert "1,000/1,000 rows read (100%)" in line and "800 contacts submitted, 400 confirmed" in line
    assert "40 contacts confirmed/s" in line and line.endswith("ETA 0m10s")


def test_eta_is_estimated_from_the_share_of_rows_that_become_contacts() -> None:
    report = _report()
    # A quarter read, 80% of it valid: about 800 contacts in all, 100 confirmed in 5 s.
    report.read, report.invalid, report.submitted, report.accepted = 250, 50, 200, 100
    assert progress_line(report, 1000, 5.0).endswith("ETA 0m35s")


def test_eta_is_unknown_before_the_first_confirmation() -> None:
    report = _report()
    report.read, report.submitted = 500, 500
    assert progress_line(report, 1000, 3.0).endswith("ETA unknown")


@pytest.mark.parametrize("settings", [{"dry_run": True}, {"wait_for_completion": False}])
def test_without_waiting_the_eta_follows_rows_read(settings: dict[str, Any]) -> None:
    report = _report(**settings)
    report.read = 250
    line = progress_line(report, 1000, 10.0)
    assert "25 rows read/s" in line and line.endswith("ETA 0m30s")


def test_a_dry_run_says_what_would_be_submitted() -> None:
    report = _report(dry_run=True)
    report.read, report.would_submit = 40, 30
    assert "30 contacts would be submitted" in progress_line(report, 100, 1.0)


def test_a_segment_read_without_counting_shows_no_share_and_no_eta() -> None:
    report = _report()
    report.read = 500
    line = progress_line(report, None, 10.0)
    assert line.startswith("500 rows read (total not counted)") and line.endswith("ETA unknown")


@pytest.mark.parametrize(
    ("seconds", "shown"), [(0, "0m00s"), (247.9, "4m07s"), (3900, "1h05m"), (float("inf"), "unknown")]
)
def test_durations_read_as_hours_and_minutes_or_minutes_and_seconds(seconds: float, shown: str) -> None:
    assert format_duration(seconds) == shown


def test_a_line_is_due_once_an_interval() -> None:
    clock = ProgressClock(interval_s=3600.0)
    assert not clock.due()  # the interval starts with the export
    clock = ProgressClock(interval_s=0.0)
    assert clock.due() and clock.due()
