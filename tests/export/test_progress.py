"""The progress line's figures and ETA, and when a line is due."""

from __future__ import annotations

import logging
import threading
from typing import Any

import pytest

from airflow_provider_ciexport.export.progress import (
    MIN_ETA_S,
    PhaseProgress,
    ProgressClock,
    Ticker,
    format_duration,
    progress_line,
)
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


def test_a_resumed_export_counts_what_it_resumed_as_done_but_not_in_its_rate() -> None:
    report = _report()
    # 1,000 contacts; the earlier try confirmed 600, this try 100 more in 10 s: 300 left at 10/s.
    report.read, report.submitted, report.accepted = 1000, 1000, 700
    line = progress_line(report, 1000, 10.0, resumed=600)
    assert "700 confirmed (600 resumed from an earlier try)" in line
    assert "10 contacts confirmed/s" in line and line.endswith("ETA 0m30s")
    # Counting the resumed 600 in the rate would promise the end in 4 s.
    assert progress_line(report, 1000, 10.0).endswith("ETA 0m04s")


def test_the_main_rate_counts_from_the_start_of_sending() -> None:
    clock = ProgressClock(interval_s=30.0)
    assert clock.sending_elapsed() == pytest.approx(clock.elapsed(), abs=0.5)  # before sending: the start
    clock.started -= 1000.0  # a long read of the lists' members before sending
    clock.sending()
    assert clock.sending_elapsed() < 1.0 < 1000.0 < clock.elapsed()


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def _phase(total: Any, clock: FakeClock, interval_s: float = 30.0) -> PhaseProgress:
    return PhaseProgress("Reading the Fake lists' members", total, interval_s, unit="members", clock=clock)


def test_a_phase_tells_how_far_it_got_once_an_interval_with_an_eta_once_data_is_in(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger="airflow_provider_ciexport.export.progress")
    clock = FakeClock()
    phase = _phase(150_000, clock)
    lines_at: list[float] = []
    for _ in range(1500):  # a page of 100 every 0.25 s, for 375 s
        clock.now += 0.25
        before = len(caplog.records)
        phase.advance(100)
        if len(caplog.records) > before:
            lines_at.append(clock.now)
    gaps = [b - a for a, b in zip([1000.0, *lines_at], lines_at, strict=False)]
    assert len(lines_at) == 12 and max(gaps) <= 30.0 + 0.25
    first = caplog.records[0].getMessage()
    assert (
        first == "Reading the Fake lists' members: 12,000 of 150,000 members (8%) in 0m30s, 400/s, ETA 5m45s"
    )
    # Steady 400/s: the ETA is the truth (150,000 / 400 = 375 s in all) at every line.
    for record, at in zip(caplog.records, lines_at, strict=False):
        eta = record.getMessage().rsplit("ETA ", 1)[1]
        assert eta == format_duration(1000.0 + 375.0 - at)


def test_a_phase_shows_no_eta_before_it_has_data_for_one() -> None:
    clock = FakeClock()
    phase = _phase(1000, clock, interval_s=1.0)
    clock.now += MIN_ETA_S / 2
    phase.done = 10
    assert phase.line() == "Reading the Fake lists' members: 10 of 1,000 members (1%) in 0m05s, 2/s"
    clock.now += MIN_ETA_S / 2
    assert phase.line().endswith(", ETA 16m30s")  # 990 left at 1/s


def test_without_a_total_a_phase_tells_how_far_and_no_eta() -> None:
    clock = FakeClock()
    phase = _phase(None, clock)
    clock.now += 60.0
    phase.done = 6_000
    assert (
        phase.line()
        == "Reading the Fake lists' members: 6,000 members so far in 1m00s, 100/s (total unknown)"
    )


def test_a_total_is_asked_once_and_only_when_the_first_line_is_due() -> None:
    asked: list[int] = []

    def count() -> int:
        asked.append(1)
        return 500

    clock = FakeClock()
    phase = _phase(count, clock)
    for item in phase.counted(range(400)):  # a quick phase: no line, no counting request
        clock.now += 0.01 if item < 399 else 30.0
    assert asked == [1] and phase.done == 400
    short = _phase(count, FakeClock())
    list(short.counted(range(10)))
    assert asked == [1]


def test_a_failed_count_only_leaves_the_eta_out() -> None:
    def count() -> int:
        raise ConnectionError("the count request failed")

    clock = FakeClock()
    phase = _phase(count, clock)
    clock.now += 30.0
    phase.done = 10
    assert phase.line().endswith("(total unknown)")


def test_a_blocked_phase_still_tells_its_line() -> None:
    """The ticker tells the line while nothing advances (a slow page, a job being prepared)."""
    told: list[str] = []
    line_told = threading.Event()

    class Catch(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            told.append(record.getMessage())
            line_told.set()

    logger = logging.getLogger("airflow_provider_ciexport.export.progress")
    handler, level = Catch(), logger.level
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    try:
        with PhaseProgress("Reading who opted out at Fake", None, 0.01, unit="contacts"):
            assert line_told.wait(10.0)  # nothing advanced, yet the line was told
    finally:
        logger.removeHandler(handler)
        logger.setLevel(level)
    assert told[0].startswith("Reading who opted out at Fake: 0 contacts so far")
    ticks = threading.Event()
    with Ticker(0.0, ticks.set):  # interval 0: no thread, lines come with each step
        pass
    assert not ticks.is_set()
