"""``make demo``: run the example DAG end to end against the local sandbox and show what happened.

Steps: a fresh Airflow home in ``./.airflow`` (recreated every run), ``airflow db migrate``, 10,000
generated customer profiles in SQLite, the sandbox (fake ActiveCampaign and Constant Contact) on
127.0.0.1, the three connections as ``AIRFLOW_CONN_*`` variables, then ``airflow dags test
ciexport_segment_export`` twice, with a sync state under ``./.airflow`` (mirror mode) and the segment
changed in between (some customers join it, some leave, some change). It prints both runs' export
reports (their XCom values) and what the sandbox lists hold, checks the lists hold exactly the
segment's valid, deduplicated addresses after the second run, and exits non-zero if anything failed.

Nothing outside ``./.airflow`` is touched: ``AIRFLOW__*`` settings and connections inherited from the
environment are dropped, so the demo never reaches a real metadata database or a real account.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import sqlite3
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from contextlib import closing
from pathlib import Path
from typing import Any

from airflow_provider_ciexport.sandbox import SandboxServer
from airflow_provider_ciexport.sandbox.connections import AC_CONN_ID, CC_CONN_ID, connection_env
from airflow_provider_ciexport.sandbox.profiles import expected_segment_emails, generate_profiles
from airflow_provider_ciexport.sandbox.seed import AC_LIST_VIP, CC_LIST_VIP, CC_LISTS, SEED

DAG_ID = "ciexport_segment_export"
EXPORT_TASKS = ("export_to_activecampaign", "export_to_constantcontact")
PROFILE_COUNT = 10_000
#: The DAG's defaults (a run triggered without changes): the VIP segment to the "VIP customers" lists.
SEGMENT = "vip"
REPORT_KEYS = (
    "lists",
    "dry_run",
    "read",
    "invalid",
    "duplicates",
    "submitted",
    "would_submit",
    "accepted",
    "rejected",
    "batches",
    "unchanged",
    "new",
    "changed",
    "readded",
    "skipped_unsubscribed",
    "to_remove",
    "removed",
    "full_refresh_reason",
    "jobs",
    "requests",
    "duration_s",
)


_EXCEPTION_LINE = re.compile(r"^[A-Za-z_][\w.]*(?:Error|Exception|Exit): ")


class DemoError(Exception):
    """A step failed; the message says which and where its log is."""


def mask_email(email: str) -> str:
    """``jane.doe@example.com`` -> ``j***@example.com``: enough to recognise, not to read.

    :param email: an address.
    """
    local, at, domain = email.partition("@")
    return f"{local[:1]}***{at}{domain}" if at else "***"


def find_example_dags() -> Path:
    """The repository's ``example_dags`` folder (next to the package, or in the current directory)."""
    for candidate in (Path(__file__).resolve().parents[1] / "example_dags", Path.cwd() / "example_dags"):
        if (candidate / f"{DAG_ID}.py").is_file():
            return candidate
    raise DemoError(
        "example_dags/ciexport_segment_export.py not found; run the demo from the repository root."
    )


def airflow_env(home: Path, dags_folder: Path) -> dict[str, str]:
    """The environment of every Airflow command: this demo's home, DB and DAGs only."""
    env = {
        key: value
        for key, value in os.environ.items()
        if not key.startswith(("AIRFLOW__", "AIRFLOW_CONN_", "AIRFLOW_VAR_"))
    }
    env.update(
        {
            "AIRFLOW_HOME": str(home),
            "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": f"sqlite:///{home / 'airflow.db'}",
            "AIRFLOW__CORE__DAGS_FOLDER": str(dags_folder),
            "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
            "AIRFLOW__CORE__UNIT_TEST_MODE": "False",
        }
    )
    return env


def dag_connections(sandbox: SandboxServer, profiles_db: Path) -> dict[str, str]:
    """The DAG's three connections as ``AIRFLOW_CONN_*`` variables pointing at the sandbox and SQLite."""
    return connection_env(
        {
            AC_CONN_ID: sandbox.ac_connection(),
            CC_CONN_ID: sandbox.cc_connection(),
            "profiles_db": {"conn_type": "sqlite", "host": str(profiles_db)},
        }
    )


def run_logged(args: Sequence[str], env: Mapping[str, str], log: Path, what: str) -> None:
    """Run a command with its output in ``log``; raise :class:`DemoError` with the log's tail if it fails."""
    with log.open("w", encoding="utf-8") as out:
        # Fixed argument lists built above (the Airflow CLI of this interpreter), never user input.
        result = subprocess.run(args, env=dict(env), stdout=out, stderr=subprocess.STDOUT, check=False)  # noqa: S603
    if result.returncode != 0:
        lines = log.read_text(encoding="utf-8", errors="replace").splitlines()
        # The exceptions' own messages say what went wrong; the traceback around them rarely helps here.
        errors = list(dict.fromkeys(line for line in lines if _EXCEPTION_LINE.match(line)))
        shown = "\n".join(errors[-5:] or lines[-30:])
        raise DemoError(f"{what} failed (exit {result.returncode}):\n{shown}\nFull log: {log}")


def read_run(airflow_db: Path) -> tuple[str | None, dict[str, str], dict[str, dict[str, Any]]]:
    """The latest run of the DAG: its state, each task's state and the export tasks' reports.

    Read straight from the demo's own SQLite metadata DB (``dag_run``, ``task_instance`` and ``xcom``
    tables), since no Airflow command prints a task's XCom value.
    """
    with closing(sqlite3.connect(airflow_db)) as conn:
        run = conn.execute(
            "SELECT run_id, state FROM dag_run WHERE dag_id = ? ORDER BY id DESC LIMIT 1", (DAG_ID,)
        ).fetchone()
        if run is None:
            return None, {}, {}
        run_id, state = run
        tasks = dict(
            conn.execute(
                "SELECT task_id, state FROM task_instance WHERE dag_id = ? AND run_id = ?", (DAG_ID, run_id)
            )
        )
        reports = {
            task_id: json.loads(value)
            for task_id, value in conn.execute(
                "SELECT task_id, value FROM xcom WHERE dag_id = ? AND run_id = ? AND key = 'return_value'",
                (DAG_ID, run_id),
            )
            if task_id in EXPORT_TASKS and value is not None
        }
    return state, tasks, reports


def print_report(task_id: str, report: Mapping[str, Any]) -> None:
    """One export's report, the keys that matter first."""
    print(f"\n  {task_id} ({report.get('destination', '?')})")
    for key in (*REPORT_KEYS, *sorted(k for k in report if k not in REPORT_KEYS and k != "destination")):
        if key not in report:
            continue
        value = report[key]
        if key == "jobs" and isinstance(value, list) and len(value) > 3:
            value = f"{len(value)} jobs: {value[0]}, {value[1]}, ..., {value[-1]}"
        print(f"    {key:<34} {value}")


def print_list(name: str, emails: Sequence[str], expected: set[str]) -> bool:
    """A list's size and a few masked members; whether it holds exactly ``expected``."""
    ok = set(emails) == expected and len(emails) == len(expected)
    sample = ", ".join(mask_email(e) for e in emails[:: max(1, len(emails) // 3)][:3])
    verdict = "OK" if ok else f"MISMATCH: expected {len(expected):,} distinct addresses"
    print(f"  {name:<42} {len(emails):>6,} contacts  [{verdict}]  e.g. {sample or '-'}")
    return ok


#: How the demo changes the segment between its two runs: (what, SQL on customer_profiles).
CHANGES = (
    (
        "40 VIP customers withdraw their marketing consent (they leave the segment)",
        "UPDATE customer_profiles SET marketing_opt_in = 0 WHERE customer_id IN (SELECT customer_id "
        "FROM customer_profiles WHERE marketing_opt_in = 1 AND loyalty_tier IN ('gold', 'platinum') "
        "ORDER BY customer_id LIMIT 40)",
    ),
    (
        "60 customers reach the gold tier (they join it)",
        "UPDATE customer_profiles SET loyalty_tier = 'gold' WHERE customer_id IN (SELECT customer_id "
        "FROM customer_profiles WHERE marketing_opt_in = 1 AND COALESCE(loyalty_tier, '') NOT IN "
        "('gold', 'platinum') AND COALESCE(lifetime_value, 0) <= 1000 ORDER BY customer_id LIMIT 60)",
    ),
    (
        "50 VIP customers move to another city (their mapped values change)",
        "UPDATE customer_profiles SET city = 'Springfield' WHERE customer_id IN (SELECT customer_id "
        "FROM customer_profiles WHERE marketing_opt_in = 1 AND loyalty_tier = 'platinum' "
        "AND COALESCE(city, '') <> 'Springfield' ORDER BY customer_id DESC LIMIT 50)",
    ),
)


def change_segment(profiles_db: Path) -> None:
    """Change the profiles so that the next refresh gives a segment with members new, changed, gone."""
    with closing(sqlite3.connect(profiles_db)) as conn, conn:
        for what, sql in CHANGES:
            conn.execute(sql)
            print(f"      - {what}", flush=True)


def run_dag(
    airflow: list[str], env: Mapping[str, str], home: Path, workdir: Path, run: int
) -> tuple[DemoError | None, str | None, dict[str, dict[str, Any]]]:
    """One ``airflow dags test`` of the example DAG; its error (if any), state and export reports."""
    log = home / "logs" / f"dags-test-{run}.log"
    print(f"    airflow dags test {DAG_ID} (task logs in {log.relative_to(workdir)}) ...", flush=True)
    failed: DemoError | None = None
    try:
        run_logged([*airflow, "dags", "test", DAG_ID], env, log, f"airflow dags test {DAG_ID}")
    except DemoError as exc:
        failed = exc  # still show whatever the run got done
    state, task_states, reports = read_run(home / "airflow.db")
    print(
        f"    Run {run} finished: {state or 'no run recorded'}; tasks: "
        + (", ".join(f"{task}={task_state}" for task, task_state in sorted(task_states.items())) or "none")
    )
    print(f"\n    Export reports of run {run} (each task's XCom return value):")
    for task_id in EXPORT_TASKS:
        if task_id in reports:
            print_report(task_id, reports[task_id])
        else:
            print(f"\n  {task_id}: no report (the task failed or did not run)")
    return failed, state, reports


def run_demo(workdir: Path) -> bool:
    """Every step of the demo; whether the run succeeded and the lists hold what they should."""
    started = time.monotonic()
    home = workdir / ".airflow"
    dags_folder = find_example_dags()
    shutil.rmtree(home, ignore_errors=True)
    (home / "logs").mkdir(parents=True)
    env = airflow_env(home, dags_folder)
    airflow = [sys.executable, "-m", "airflow"]

    print(f"1/5 Fresh Airflow home in {home}; migrating its database ...", flush=True)
    run_logged([*airflow, "db", "migrate"], env, home / "logs" / "db-migrate.log", "airflow db migrate")

    profiles_db = home / "profiles.db"
    stats = generate_profiles(profiles_db, count=PROFILE_COUNT)
    print(
        f"2/5 Generated {stats.count:,} customer profiles in {profiles_db.name}: "
        f"{stats.invalid_emails} invalid and {stats.duplicate_emails} repeated addresses, "
        f"{stats.blank_values:,} blank values, {stats.long_values} over-long values.",
        flush=True,
    )

    with SandboxServer() as sandbox:
        print(f"3/5 Sandbox (fake ActiveCampaign + Constant Contact) listening on {sandbox.url}.", flush=True)
        run_env = {**env, **dag_connections(sandbox, profiles_db)}
        print("4/5 First run: the lists start empty, so every contact of the segment is new.", flush=True)
        failed, state, reports = run_dag(airflow, run_env, home, workdir, 1)
        test_failed = failed
        print("\n5/5 The segment changes, then a second run sends only what changed:", flush=True)
        change_segment(profiles_db)
        failed, state2, reports2 = run_dag(airflow, run_env, home, workdir, 2)
        test_failed = test_failed or failed
        log = home / "logs" / "dags-test-2.log"

        expected = expected_segment_emails(profiles_db, SEGMENT)
        client = sandbox.client
        print(f"\nSandbox lists now (the {SEGMENT} segment has {len(expected):,} valid distinct addresses):")
        lists_ok = True
        for list_id, name in SEED.ac_lists.items():
            emails = [c["email"].lower() for c in client.ac_list_contacts(list_id)]
            wanted = expected if list_id == AC_LIST_VIP else set()
            lists_ok &= print_list(f"ActiveCampaign {list_id} {name!r}", emails, wanted)
        for cc_list_id, name in CC_LISTS.items():
            emails = [c["email"].lower() for c in client.cc_list_contacts(cc_list_id)]
            wanted = expected if cc_list_id == CC_LIST_VIP else set()
            lists_ok &= print_list(f"Constant Contact {cc_list_id[:8]}… {name!r}", emails, wanted)
        client.close()

    ok = (
        test_failed is None
        and state == state2 == "success"
        and len(reports) == len(reports2) == len(EXPORT_TASKS)
        and lists_ok
    )
    print(f"\nDemo {'succeeded' if ok else 'FAILED'} in {time.monotonic() - started:.0f} s.")
    if test_failed is not None:
        print(f"\n{test_failed}", file=sys.stderr)
    elif not ok:
        print(f"See {log} for the task logs.", file=sys.stderr)
    return ok


def main() -> int:
    """Entry point of ``python -m airflow_provider_ciexport.demo``."""
    try:
        return 0 if run_demo(Path.cwd()) else 1
    except DemoError as exc:
        print(f"\nDemo FAILED: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
