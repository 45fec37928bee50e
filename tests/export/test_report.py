"""The export report as a user reads it (XCom and the task log), and the progress line's ETA."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, cast

import pytest

from airflow_provider_ciexport.export.destination import Destination
from airflow_provider_ciexport.export.engine import ExportSettings, SegmentExporter
from airflow_provider_ciexport.export.report import ExportReport
from airflow_provider_ciexport.export.sources import RecordsSegmentSource


def _report(**counts: Any) -> ExportReport:
    report = ExportReport(destination="ActiveCampaign", lists=["2", "3"], **counts)
    report.invalid_reasons = {"malformed": 4, "missing": 5}
    report.omitted_too_long = {"last_name": 2}
    report.jobs = ["job-secret-looking-id"]
    return report


def test_log_line_shows_everything_the_xcom_has_but_job_ids() -> None:
    report = _report(read=30, invalid=9, duplicates=1, submitted=20, accepted=19, rejected=1, batches=1)
    line = report.summary()
    for key, value in report.as_dict().items():
        if key in ("jobs", "destination"):
            continue
        assert f"{key}=" in line, key
        if key != "lists":
            assert f"{key}={value}" in line
    assert "invalid.malformed=4" in line and "invalid.missing=5" in line
    assert "omitted_too_long.last_name=2" in line
    assert "lists=2,3" in line
    assert "job-secret-looking-id" not in line


def test_a_dry_run_reports_what_would_be_sent_not_submitted() -> None:
    report = _report(
        dry_run=True, read=30, invalid=9, duplicates=1, would_submit=20, would_batches=1, waited=False
    )
    d = report.as_dict()
    assert d["submitted"] == 0 and d["batches"] == 0 and d["jobs"] == ["job-secret-looking-id"]
    assert d["would_submit"] == 20 and d["would_batches"] == 1
    assert d["read"] == d["invalid"] + d["duplicates"] + d["would_submit"]
    assert d["accepted"] is None and d["rejected"] is None
    assert "would_submit=20" in report.summary()


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
