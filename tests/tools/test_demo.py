"""The demo's output: a line per export by default, every report key with ``--full``."""

from __future__ import annotations

from typing import Any

import pytest

from airflow_provider_ciexport.tools import demo

REPORT: dict[str, Any] = {
    "destination": "ActiveCampaign",
    "lists": ["2"],
    "dry_run": False,
    "read": 1971,
    "invalid": 9,
    "duplicates": 18,
    "submitted": 110,
    "accepted": 110,
    "rejected": 0,
    "batches": 1,
    "unchanged": 1834,
    "new": 60,
    "changed": 50,
    "to_remove": 40,
    "removed": 40,
    "removal_refused": 0,
    "skipped_unsubscribed": 0,
    "resumed_batches": 0,
    "requests": 9,
    "duration_s": 8.5,
    "jobs": ["a", "b"],
}
RUN_2 = {"new": 60, "changed": 50, "removed": 40, "unchanged": 1834, "rejected": 0}
REPORTS = {
    task: {**REPORT, "destination": name}
    for task, name in zip(demo.EXPORT_TASKS, ("ActiveCampaign", "Constant Contact"), strict=True)
}


def test_a_run_is_a_line_per_export(capsys: pytest.CaptureFixture[str]) -> None:
    ok = demo.print_run(2, "success", dict.fromkeys(demo.EXPORT_TASKS, "success"), REPORTS, RUN_2, full=False)

    out = capsys.readouterr().out.splitlines()
    assert ok is True
    assert out == [
        "    Run 2: success",
        "      ActiveCampaign    60 new, 50 changed, 40 removed, 1,834 unchanged, 0 refused  "
        "(1,971 rows read: 9 invalid, 18 duplicates; 1 import, 9 requests, 8.5 s)",
        "      Constant Contact  60 new, 50 changed, 40 removed, 1,834 unchanged, 0 refused  "
        "(1,971 rows read: 9 invalid, 18 duplicates; 1 import, 9 requests, 8.5 s)",
    ]


def test_full_adds_every_report_key(capsys: pytest.CaptureFixture[str]) -> None:
    demo.print_run(2, "success", dict.fromkeys(demo.EXPORT_TASKS, "success"), REPORTS, RUN_2, full=True)

    out = capsys.readouterr().out
    for key in REPORT.keys() - {"destination"}:
        assert out.count(f"    {key} ") == 2, key


def test_counts_that_differ_from_the_changes_made_fail_the_run_and_say_which(
    capsys: pytest.CaptureFixture[str],
) -> None:
    reports = {**REPORTS, demo.EXPORT_TASKS[0]: {**REPORT, "new": 59, "changed": 51}}

    ok = demo.print_run(2, "success", dict.fromkeys(demo.EXPORT_TASKS, "success"), reports, RUN_2, full=False)

    assert ok is False
    assert "NOT AS EXPECTED: new 59 (expected 60); changed 51 (expected 50)" in capsys.readouterr().out


def test_rare_counts_show_only_when_not_zero() -> None:
    line = demo.summarise({**REPORT, "skipped_unsubscribed": 3})

    assert "3 skipped unsubscribed" in line
    assert "removal refused" not in demo.summarise(REPORT)


def test_the_flag_reaches_the_demo(monkeypatch: pytest.MonkeyPatch) -> None:
    seen: dict[str, Any] = {}
    monkeypatch.setattr(demo, "run_demo", lambda workdir, **kwargs: seen.update(kwargs) or True)

    assert demo.main(["--full", "--profiles", "500"]) == 0
    assert seen == {"profiles": 500, "full": True}
