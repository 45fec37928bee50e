"""The export report as a user reads it (XCom and the task log)."""

from __future__ import annotations

from typing import Any

from airflow_provider_ciexport.export.report import ExportReport
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
