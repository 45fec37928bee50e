"""The example DAG, run with ``dag.test()`` against the sandbox, leaves exactly the segment on the lists.

Everything is real except the two marketing APIs: a migrated Airflow metadata DB, the DAG file parsed
from ``example_dags/``, connections from ``AIRFLOW_CONN_*`` variables, SQLite profiles, and the sandbox
answering over HTTP on 127.0.0.1.
"""

from __future__ import annotations

import os
import re
import shutil
import sqlite3
import subprocess
import sys
from collections.abc import Iterator
from contextlib import closing
from pathlib import Path
from typing import Any

import pytest
from airflow import settings
from airflow.dag_processing.dagbag import DagBag
from airflow.models.dagrun import DagRun
from airflow.models.xcom import XComModel
from airflow.utils.session import create_session

from airflow_provider_ciexport.tools.sandbox import SandboxServer
from airflow_provider_ciexport.tools.sandbox.profiles import expected_segment_emails, generate_profiles
from airflow_provider_ciexport.tools.sandbox.seed import (
    AC_LIST_LAPSED,
    AC_LIST_NEWSLETTER,
    AC_LIST_VIP,
    CC_LIST_LAPSED,
    CC_LIST_NEWSLETTER,
    CC_LIST_VIP,
)
from tests.support import set_connection

pytestmark = pytest.mark.integration

EXAMPLE_DAGS = Path(__file__).resolve().parents[1] / "example_dags"
DAG_ID = "ciexport_segment_export"
EXPORT_TASKS = ("export_to_activecampaign", "export_to_constantcontact")
COUNT = 2_000


@pytest.fixture(scope="session")
def airflow_db() -> None:
    """Migrate the metadata DB that ``tests/conftest.py`` points AIRFLOW_HOME and the DB URL at."""
    result = subprocess.run(
        [sys.executable, "-m", "airflow", "db", "migrate"],
        env={**os.environ, "AIRFLOW__CORE__LOAD_EXAMPLES": "False"},
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, (
        f"airflow db migrate failed:\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}"
    )


@pytest.fixture(scope="module")
def dags_folder(airflow_db: None) -> Iterator[Path]:
    """Make ``example_dags/`` the dags folder: ``dag.test()`` syncs the DAG from there to the DB."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("AIRFLOW__CORE__DAGS_FOLDER", str(EXAMPLE_DAGS))
        # airflow.settings read the option when Airflow was first imported, before this fixture.
        mp.setattr(settings, "DAGS_FOLDER", str(EXAMPLE_DAGS))
        yield EXAMPLE_DAGS


@pytest.fixture(scope="module")
def sandbox() -> Iterator[SandboxServer]:
    with SandboxServer() as server:
        yield server


@pytest.fixture(scope="module")
def profiles_db(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("profiles") / "profiles.db"
    generate_profiles(path, count=COUNT)
    return path


@pytest.fixture
def connections(monkeypatch: pytest.MonkeyPatch, sandbox: SandboxServer, profiles_db: Path) -> None:
    """The DAG's three connections, defined the way a deployment's secrets would define them.

    The sandbox's lists start empty, so the exports' sync state (in the Airflow home, the example's
    ``STATE_DIR``) starts anew too.
    """
    sandbox.client.reset()
    shutil.rmtree(Path(os.environ["AIRFLOW_HOME"]) / "ciexport-state", ignore_errors=True)
    set_connection(monkeypatch, "activecampaign_default", **sandbox.ac_connection())
    set_connection(monkeypatch, "constantcontact_default", **sandbox.cc_connection())
    set_connection(monkeypatch, "profiles_db", conn_type="sqlite", host=str(profiles_db))


def run_dag(conf: dict[str, Any] | None = None) -> tuple[DagRun, dict[str, dict[str, Any]]]:
    """Run the example DAG once with ``conf`` (as the trigger form would); return the run and reports."""
    # A fresh parse per run: dag.test() runs tasks in this process, and Airflow's process_params()
    # stores a run's conf in the DAG's Param objects, so a reused DAG would carry it to the next run.
    bag = DagBag(dag_folder=str(EXAMPLE_DAGS))
    assert bag.import_errors == {}
    run = bag.dags[DAG_ID].test(run_conf=conf)
    reports: dict[str, dict[str, Any]] = {}
    with create_session() as session:
        for task_id in EXPORT_TASKS:
            row = session.execute(
                XComModel.get_many(key="return_value", run_id=run.run_id, dag_ids=DAG_ID, task_ids=task_id)
                .with_only_columns(XComModel.value)
                .limit(1)
            ).first()
            if row is not None:
                reports[task_id] = XComModel.deserialize_value(row)
    return run, reports


def ac_emails(sandbox: SandboxServer, list_id: int) -> list[str]:
    return [c["email"].lower() for c in sandbox.client.ac_list_contacts(list_id)]


def cc_emails(sandbox: SandboxServer, list_id: str) -> list[str]:
    return [c["email"].lower() for c in sandbox.client.cc_list_contacts(list_id)]


def segment_rows(db: Path, segment: str) -> list[tuple[Any, ...]]:
    """The segment table as the refresh task left it: (email, loyalty_tier) per row."""
    with closing(sqlite3.connect(db)) as conn:
        return conn.execute(
            f"SELECT email, loyalty_tier FROM segment_{segment} ORDER BY customer_id"
        ).fetchall()


def tiers_by_email(rows: list[tuple[Any, ...]], expected: set[str]) -> dict[str, str | None]:
    """The loyalty tier each exported contact must carry: first row wins, blanks are not sent."""
    tiers: dict[str, str | None] = {}
    for email, tier in rows:
        key = email.strip().lower() if isinstance(email, str) else None
        if key in expected and key not in tiers:
            tiers[key] = tier.strip() if isinstance(tier, str) and tier.strip() else None
    return tiers


def assert_report_accounts_for_every_row(report: dict[str, Any], read: int, exported: int) -> None:
    # A dry run sends nothing: what a real run would send is counted as would_submit instead.
    sent = "would_submit" if report["dry_run"] else "submitted"
    assert report["read"] == read
    assert report[sent] == exported
    assert report["read"] == report["invalid"] + report["duplicates"] + report[sent]
    if report["dry_run"]:
        assert report["submitted"] == report["batches"] == 0 and report["jobs"] == []
    # The segment holds invalid or repeated addresses: the export had something to clean.
    assert report["invalid"] + report["duplicates"] > 0


@pytest.mark.usefixtures("dags_folder", "connections")
def test_scheduled_run_exports_the_vip_segment_to_both_lists(
    sandbox: SandboxServer, profiles_db: Path
) -> None:
    run, reports = run_dag()

    assert run.state == "success"
    expected = expected_segment_emails(profiles_db, "vip")
    ac = ac_emails(sandbox, AC_LIST_VIP)
    cc = cc_emails(sandbox, CC_LIST_VIP)
    assert set(ac) == expected
    assert set(cc) == expected
    assert len(ac) == len(cc) == len(expected), "each address once"
    # Nothing lands on the lists the run was not asked to fill.
    for list_id in (AC_LIST_NEWSLETTER, AC_LIST_LAPSED):
        assert ac_emails(sandbox, list_id) == []
    for cc_list in (CC_LIST_NEWSLETTER, CC_LIST_LAPSED):
        assert cc_emails(sandbox, cc_list) == []

    rows = segment_rows(profiles_db, "vip")
    for task_id, lists in (
        ("export_to_activecampaign", [str(AC_LIST_VIP)]),
        ("export_to_constantcontact", [CC_LIST_VIP]),
    ):
        report = reports[task_id]
        assert report["dry_run"] is False
        assert report["lists"] == lists
        assert_report_accounts_for_every_row(report, read=len(rows), exported=len(expected))
        assert report["accepted"] == len(expected)
        assert report["rejected"] == 0

    # The mapped custom field and the templated tag arrive with each contact.
    tiers = tiers_by_email(rows, expected)
    for contact in sandbox.client.ac_list_contacts(AC_LIST_VIP):
        email = contact["email"].lower()
        assert contact["fields_by_perstag"].get("LOYALTY_TIER") == tiers[email], email
        assert "segment-vip" in contact["tags"]
    for contact in sandbox.client.cc_list_contacts(CC_LIST_VIP):
        assert contact["custom_fields"].get("loyalty_tier") == tiers[contact["email"].lower()]


@pytest.mark.slow
@pytest.mark.usefixtures("dags_folder", "connections")
def test_next_days_run_leaves_the_lists_as_they_were(sandbox: SandboxServer, profiles_db: Path) -> None:
    first, _ = run_dag()
    ac_before = sorted(ac_emails(sandbox, AC_LIST_VIP))
    cc_before = sorted(cc_emails(sandbox, CC_LIST_VIP))

    second, reports = run_dag()

    assert first.state == second.state == "success"
    assert sorted(ac_emails(sandbox, AC_LIST_VIP)) == ac_before
    assert sorted(cc_emails(sandbox, CC_LIST_VIP)) == cc_before
    assert set(ac_before) == expected_segment_emails(profiles_db, "vip")
    # The example keeps a sync state as shipped: the unchanged segment is not sent again.
    for report in reports.values():
        assert report["sync_mode"] == "mirror"
        assert report["unchanged"] == len(ac_before)
        assert report["submitted"] == report["batches"] == report["to_remove"] == 0


@pytest.mark.usefixtures("dags_folder", "connections")
def test_triggered_dry_run_sends_nothing(sandbox: SandboxServer, profiles_db: Path) -> None:
    run, reports = run_dag(
        {"segment": "lapsed", "ac_list_ids": ["3"], "cc_list_ids": [CC_LIST_LAPSED], "dry_run": True}
    )

    assert run.state == "success"
    for list_id in (AC_LIST_NEWSLETTER, AC_LIST_VIP, AC_LIST_LAPSED):
        assert ac_emails(sandbox, list_id) == []
    for cc_list in (CC_LIST_NEWSLETTER, CC_LIST_VIP, CC_LIST_LAPSED):
        assert cc_emails(sandbox, cc_list) == []
    # The report still says what would have gone.
    expected = expected_segment_emails(profiles_db, "lapsed")
    read = len(segment_rows(profiles_db, "lapsed"))
    for report in reports.values():
        assert report["dry_run"] is True
        assert_report_accounts_for_every_row(report, read=read, exported=len(expected))


@pytest.mark.usefixtures("dags_folder", "connections")
def test_triggered_run_exports_the_chosen_segment_to_the_chosen_lists(
    sandbox: SandboxServer, profiles_db: Path
) -> None:
    run, reports = run_dag(
        {"segment": "lapsed", "ac_list_ids": ["3", "1"], "cc_list_ids": [CC_LIST_LAPSED], "dry_run": False}
    )

    assert run.state == "success"
    expected = expected_segment_emails(profiles_db, "lapsed")
    assert set(ac_emails(sandbox, AC_LIST_LAPSED)) == expected
    assert set(ac_emails(sandbox, AC_LIST_NEWSLETTER)) == expected
    assert set(cc_emails(sandbox, CC_LIST_LAPSED)) == expected
    assert ac_emails(sandbox, AC_LIST_VIP) == []
    assert cc_emails(sandbox, CC_LIST_VIP) == []
    assert reports["export_to_activecampaign"]["accepted"] == len(expected)
    assert reports["export_to_constantcontact"]["accepted"] == len(expected)


@pytest.mark.slow
def test_make_demo_says_in_a_line_per_export_what_each_run_did(tmp_path: Path) -> None:
    # What `make demo` runs, with fewer profiles: a fresh Airflow home, two runs, the list check.
    result = subprocess.run(
        [sys.executable, "-m", "airflow_provider_ciexport.tools.demo", "--profiles", "1000"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )

    out = result.stdout.splitlines()
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    summary = re.compile(
        r"^ {6}(ActiveCampaign|Constant Contact) +([\d,]+) new, ([\d,]+) changed, ([\d,]+) removed, "
        r"([\d,]+) unchanged, ([\d,]+) refused  \(.*rows read.*\)$"
    )
    lines = [m for m in map(summary.match, out) if m]
    # One line per export and run; nothing of the reports' other keys unless asked (--full).
    assert [m[1] for m in lines] == ["ActiveCampaign", "Constant Contact"] * 2
    assert not [line for line in out if re.match(r"^ +(read|submitted|jobs|duration_s) ", line)]
    assert len(out) < 35, "\n".join(out)

    def announced(pattern: str) -> int:
        found = re.search(pattern, result.stdout)
        assert found, pattern
        return int(found[1].replace(",", ""))

    members = announced(r"each of the segment's ([\d,]+) valid")
    left = announced(r"- (\d+) VIP customers withdraw")
    joined = announced(r"- (\d+) customers reach the gold tier")
    moved = announced(r"- (\d+) VIP customers move")

    def numbers(m: re.Match[str]) -> tuple[int, ...]:
        return tuple(int(g.replace(",", "")) for g in m.groups()[1:])

    for first, second in zip(lines[:2], lines[2:], strict=True):
        assert numbers(first) == (members, 0, 0, 0, 0)
        # The second run counts exactly the announced changes.
        assert numbers(second) == (joined, moved, left, members - left - moved, 0)
    assert "NOT AS EXPECTED" not in result.stdout
    assert sum("[OK]" in line for line in out) == 6
    assert "make demo DEMO_ARGS=--full" in result.stdout
