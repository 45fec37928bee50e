"""The export report as a user reads it (XCom and the task log), and the progress line's ETA."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, cast

import pytest

from airflow_provider_ciexport.export.destination import Destination
from airflow_provider_ciexport.export.engine import ExportSettings, SegmentExporter
from airflow_provider_ciexport.export.report import ExportReport
from airflow_provider_ciexport.export.sources import RecordsSegmentSource
from tests.support import logged_report


def _report(**counts: Any) -> ExportReport:
    report = ExportReport(destination="ActiveCampaign", lists=["2", "3"], **counts)
    report.invalid_reasons = {"malformed": 4, "missing": 5}
    report.omitted_too_long = {"last_name": 2}
    report.jobs = ["job-secret-looking-id"]
    return report


def test_the_log_shows_everything_the_xcom_has_but_job_ids_one_figure_a_line() -> None:
    report = _report(read=3000, invalid=9, duplicates=1, submitted=2990, accepted=19, rejected=1, batches=12)
    report.duration_s = 75.25
    lines = report.table()
    figures = logged_report(["ActiveCampaign export report:", *lines])
    expected = {k for k in report.as_dict() if k not in ("jobs", "destination")}
    assert set(figures) == expected and len(lines) == len(expected)
    assert figures["read"] == "3,000" and figures["submitted"] == "2,990" and figures["lists"] == "2, 3"
    assert figures["invalid.malformed"] == "4" and figures["omitted_too_long.last_name"] == "2"
    assert figures["dry_run"] == "False" and figures["duration_s"] == "75.2"
    assert all(len(line) < 60 for line in lines)  # no horizontal scrolling in the UI's log view
    assert "job-secret-looking-id" not in "\n".join(lines)


def test_a_dry_run_reports_what_would_be_sent_not_submitted() -> None:
    report = _report(
        dry_run=True, read=30, invalid=9, duplicates=1, would_submit=20, would_batches=1, waited=False
    )
    d = report.as_dict()
    assert d["submitted"] == 0 and d["batches"] == 0 and d["jobs"] == ["job-secret-looking-id"]
    assert d["would_submit"] == 20 and d["would_batches"] == 1
    assert d["read"] == d["invalid"] + d["duplicates"] + d["would_submit"]
    assert d["accepted"] is None and d["rejected"] is None
    assert logged_report(["x export report:", *report.table()])["would_submit"] == "20"
    assert logged_report(["x export report:", *report.table()])["accepted"] == "-"


def test_a_real_run_has_no_would_keys() -> None:
    d = _report(read=3, submitted=3, accepted=3).as_dict()
    assert "would_submit" not in d and "would_batches" not in d


class _Destination:
    """Only what the exporter reads before it runs: a name and the lists."""

    name = "Fake"
    list_ids: Sequence[str] = ("1",)


def _exporter(total: int, **settings: Any) -> SegmentExporter:
    rows: Sequence[Mapping[str, Any]] = [{"email": f"u{i}@example.com"} for i in range(total)]
    exporter = SegmentExporter(
        RecordsSegmentSource(rows),
        cast(Destination, _Destination()),
        {"email": "email"},
        ExportSettings(**settings),
    )
    exporter._total = total
    return exporter


def test_eta_follows_confirmations_while_imports_are_still_being_confirmed() -> None:
    exporter = _exporter(1000)
    report = exporter.report
    # Everything read and submitted in 10 s, half of it confirmed: another 10 s to go, not 0.
    report.read, report.invalid, report.duplicates, report.submitted = 1000, 100, 100, 800
    report.accepted, report.rejected = 390, 10
    line = exporter._progress_line(10.0)
    assert "1,000/1,000 rows read (100%)" in line and "800 contacts submitted, 400 confirmed" in line
    assert "40 contacts confirmed/s" in line and line.endswith("ETA 0m10s")


def test_eta_is_estimated_from_the_share_of_rows_that_become_contacts() -> None:
    exporter = _exporter(1000)
    report = exporter.report
    # A quarter read, 80% of it valid: about 800 contacts in all, 100 confirmed in 5 s.
    report.read, report.invalid, report.submitted, report.accepted = 250, 50, 200, 100
    assert exporter._progress_line(5.0).endswith("ETA 0m35s")


def test_eta_is_unknown_before_the_first_confirmation() -> None:
    exporter = _exporter(1000)
    exporter.report.read, exporter.report.submitted = 500, 500
    assert exporter._progress_line(3.0).endswith("ETA unknown")


@pytest.mark.parametrize("settings", [{"dry_run": True}, {"wait_for_completion": False}])
def test_without_waiting_the_eta_follows_rows_read(settings: dict[str, Any]) -> None:
    exporter = _exporter(1000, **settings)
    exporter.report.read = 250
    line = exporter._progress_line(10.0)
    assert "25 rows read/s" in line and line.endswith("ETA 0m30s")


def test_a_segment_read_without_counting_shows_no_share_and_no_eta() -> None:
    exporter = _exporter(0)
    exporter._total = None
    exporter.report.read = 500
    line = exporter._progress_line(10.0)
    assert line.startswith("500 rows read (total not counted)") and line.endswith("ETA unknown")
