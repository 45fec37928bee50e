"""The demo's output: a line per export by default, every report key with ``--full``."""

from __future__ import annotations

import sqlite3
import sys
from contextlib import closing
from pathlib import Path
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


#: Stands for ``python -m airflow``: ``db migrate`` creates a database recording its revision and
#: counts itself in ``<AIRFLOW_HOME>/../migrations``.
FAKE_AIRFLOW_SCRIPT = """
import os, sqlite3, sys
home = os.environ["AIRFLOW_HOME"]
assert sys.argv[1:] == ["db", "migrate"], sys.argv
with sqlite3.connect(os.path.join(home, "airflow.db")) as conn:
    conn.execute("CREATE TABLE alembic_version (version_num TEXT)")
    conn.execute("INSERT INTO alembic_version VALUES ('head')")
with open(os.path.join(home, "..", "migrations"), "a") as f:
    f.write("m")
"""


def _fresh_home(tmp_path: Path) -> Path:
    home = tmp_path / ".airflow"
    demo._fresh_airflow_home(home, [sys.executable, "-c", FAKE_AIRFLOW_SCRIPT])
    return home


def _migrations(tmp_path: Path) -> int:
    counted = tmp_path / "migrations"
    return len(counted.read_text()) if counted.exists() else 0


def test_the_second_demo_copies_the_database_the_first_migrated_and_keeps_nothing_else(
    tmp_path: Path,
) -> None:
    home = _fresh_home(tmp_path)
    name = demo.migrated_db_name()
    assert name and _migrations(tmp_path) == 1
    assert sorted(p.name for p in home.iterdir()) == sorted(["airflow.db", "logs", name])
    # What a run leaves behind: its state, its profiles, a database with runs in it.
    (home / "ciexport-state").mkdir()
    (home / "ciexport-state" / "vip.state").write_text("state")
    (home / "profiles.db").write_text("profiles")
    with closing(sqlite3.connect(home / "airflow.db")) as conn, conn:
        conn.execute("CREATE TABLE dag_run (id INTEGER)")

    home = _fresh_home(tmp_path)

    assert _migrations(tmp_path) == 1  # not migrated again
    assert sorted(p.name for p in home.iterdir()) == sorted(["airflow.db", "logs", name])
    assert (home / "airflow.db").read_bytes() == (home / name).read_bytes()
    with closing(sqlite3.connect(home / "airflow.db")) as conn:
        assert conn.execute("SELECT name FROM sqlite_master WHERE name = 'dag_run'").fetchone() is None


def test_a_database_migrated_by_another_airflow_version_or_damaged_is_not_used(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(demo, "migrated_db_name", lambda: "migrated-airflow-3.3.1-3.3.1.db")
    _fresh_home(tmp_path)
    monkeypatch.setattr(demo, "migrated_db_name", lambda: "migrated-airflow-3.3.2-3.3.2.db")
    home = _fresh_home(tmp_path)
    assert _migrations(tmp_path) == 2
    assert not (home / "migrated-airflow-3.3.1-3.3.1.db").exists()
    (home / "migrated-airflow-3.3.2-3.3.2.db").write_bytes(b"not a database")
    _fresh_home(tmp_path)
    assert _migrations(tmp_path) == 3
    assert demo.is_migrated_db(home / "migrated-airflow-3.3.2-3.3.2.db")


def test_a_symbolic_link_in_place_of_the_home_is_removed_not_followed(tmp_path: Path) -> None:
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (elsewhere / "keep.txt").write_text("mine")
    (tmp_path / ".airflow").symlink_to(elsewhere)
    home = _fresh_home(tmp_path)
    assert not home.is_symlink() and (elsewhere / "keep.txt").read_text() == "mine"
