"""``make demo``: run the example DAG end to end against the local sandbox and show what happened.

Steps: a fresh Airflow home in ``./.airflow`` (recreated every run), ``airflow db migrate`` (or, from
the second run on, a copy of the database an earlier run migrated with the same Airflow), 10,000
generated customer profiles in SQLite, the sandbox (fake ActiveCampaign and Constant Contact) on
127.0.0.1, the three connections as ``AIRFLOW_CONN_*`` variables, then ``airflow dags test
ciexport_segment_export`` twice, with a sync state under ``./.airflow`` (mirror mode) and the segment
changed in between (some customers join it, some leave, some change). Each run prints a line per export
saying what it did (contacts new, changed, removed, unchanged, refused), checked against what the demo
knows must have happened; ``--full`` prints every report whole. Then it checks that the sandbox lists
hold exactly the segment's valid, deduplicated addresses, and exits non-zero if anything failed.

Nothing outside ``./.airflow`` is touched: ``AIRFLOW__*`` settings and connections inherited from the
environment are dropped, so the demo never reaches a real metadata database or a real account.
"""

from __future__ import annotations

import argparse
import csv
import itertools
import json
import os
import re
import shutil
import sqlite3
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from contextlib import closing, suppress
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Any, NamedTuple

from airflow_provider_ciexport.tools.sandbox import SandboxServer
from airflow_provider_ciexport.tools.sandbox.client import SandboxClient
from airflow_provider_ciexport.tools.sandbox.connections import AC_CONN_ID, CC_CONN_ID, connection_env
from airflow_provider_ciexport.tools.sandbox.emails import is_valid_ac_email, is_valid_cc_email
from airflow_provider_ciexport.tools.sandbox.profiles import (
    expected_segment_emails,
    generate_profiles,
    in_segment,
)
from airflow_provider_ciexport.tools.sandbox.seed import AC_LIST_VIP, CC_LIST_VIP, CC_LISTS, SEED

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
    for candidate in (Path(__file__).resolve().parents[2] / "example_dags", Path.cwd() / "example_dags"):
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


@dataclass(frozen=True)
class SegmentChange:
    """One change the demo makes to the profiles between its runs, and the report key it shows in."""

    #: ``to_remove``, ``new`` or ``changed``: where the second run's reports count these contacts.
    outcome: str
    what: str
    column: str
    value: Any
    customer_ids: tuple[int, ...]

    def describe(self) -> str:
        """E.g. ``40 VIP customers withdraw their marketing consent (they leave the segment)``."""
        return self.what.format(n=len(self.customer_ids))


#: (outcome, what, column set, value, how many) of each change; ``{n}`` is the number picked.
CHANGES = (
    (
        "to_remove",
        "{n} VIP customers withdraw their marketing consent (they leave the segment)",
        "marketing_opt_in",
        0,
        40,
    ),
    ("new", "{n} customers reach the gold tier (they join it)", "loyalty_tier", "gold", 60),
    (
        "changed",
        "{n} VIP customers move to another city (their mapped values change)",
        "city",
        "Springfield",
        50,
    ),
)


class _Profile(NamedTuple):
    customer_id: int
    email: str
    loyalty_tier: str | None
    lifetime_value: float | None
    last_order_date: str | None
    marketing_opt_in: int
    city: str | None

    @property
    def member(self) -> bool:
        return in_segment(
            SEGMENT, self.loyalty_tier, self.lifetime_value, self.last_order_date, self.marketing_opt_in
        )


def plan_changes(profiles_db: Path) -> list[SegmentChange]:
    """Pick the customers each change applies to, so that the reports count exactly what is announced.

    Only customers whose address is valid and belongs to no other profile are picked: a change to a
    row the export skips (an invalid address) or that shares its address with another row (which
    may stay in the segment, or win the deduplication instead) would not show in the counts one for
    one. Each customer is picked for one change at most.

    :param profiles_db: the SQLite file holding ``customer_profiles``.
    """
    eligible = _with_own_valid_address(_read_profiles(profiles_db))
    taken: set[int] = set()
    changes = []
    for outcome, what, column, value, count in CHANGES:
        # The movers from the other end of the table, as far from the leavers as can be.
        candidates = reversed(eligible) if outcome == "changed" else eligible
        wanted = _WANTED[outcome]
        picked = tuple(
            itertools.islice(
                (r.customer_id for r in candidates if r.customer_id not in taken and wanted(r)), count
            )
        )
        taken.update(picked)
        changes.append(SegmentChange(outcome, what, column, value, picked))
    return changes


def _read_profiles(profiles_db: Path) -> list[_Profile]:
    with closing(sqlite3.connect(profiles_db)) as conn:
        return [
            _Profile(*row)
            for row in conn.execute(
                f"SELECT {', '.join(_Profile._fields)} FROM customer_profiles ORDER BY customer_id"
            )
        ]


def _with_own_valid_address(rows: list[_Profile]) -> list[_Profile]:
    """The profiles whose address is valid for both destinations and shared with no other profile."""
    owners = Counter(row.email.strip().lower() for row in rows if isinstance(row.email, str))
    return [
        row
        for row in rows
        if isinstance(row.email, str)
        and owners[email := row.email.strip().lower()] == 1
        and is_valid_ac_email(email)
        and is_valid_cc_email(email)
    ]


def _leaves_when_opting_out(row: _Profile) -> bool:
    return row.member and row.loyalty_tier in ("gold", "platinum")


def _joins_when_gold(row: _Profile) -> bool:
    # Opted in but not a member: the gold tier makes them one.
    return row.marketing_opt_in == 1 and not row.member


def _changes_when_moving(row: _Profile) -> bool:
    return row.member and row.loyalty_tier == "platinum" and row.city != "Springfield"


#: Which profiles each change of :data:`CHANGES` may pick, by its outcome.
_WANTED: dict[str, Callable[[_Profile], bool]] = {
    "to_remove": _leaves_when_opting_out,
    "new": _joins_when_gold,
    "changed": _changes_when_moving,
}


def change_segment(profiles_db: Path, changes: Sequence[SegmentChange]) -> None:
    """Apply ``changes`` to the profiles, so that the next refresh gives a segment with members new, changed, gone."""
    with closing(sqlite3.connect(profiles_db)) as conn, conn:
        for change in changes:
            # The column names are this module's constants, never input.
            conn.executemany(
                f"UPDATE customer_profiles SET {change.column} = ? WHERE customer_id = ?",
                [(change.value, customer_id) for customer_id in change.customer_ids],
            )
            print(f"      - {change.describe()}", flush=True)


#: The counts of an export's summary line, in its order: report key -> what the line calls it.
SUMMARY_COUNTS = {
    "new": "new",
    "changed": "changed",
    "removed": "removed",
    "unchanged": "unchanged",
    "rejected": "refused",
}


def _plural(count: int, noun: str) -> str:
    return f"{count:,} {noun}{'' if count == 1 else 's'}"


def summarise(report: Mapping[str, Any]) -> str:
    """One line saying what an export did: its contacts new, changed, removed, unchanged and refused.

    The rows it skipped and the requests it made follow in brackets; counts that are rare (contacts
    skipped as unsubscribed, removals refused, ...) only when they are not zero.

    :param report: the export task's report (its XCom value).
    """
    counts = ", ".join(f"{report.get(key) or 0:,} {label}" for key, label in SUMMARY_COUNTS.items())
    rare = [
        f"{report[key]:,} {key.replace('_', ' ')}"
        for key in (
            "restored",
            "skipped_unsubscribed",
            "readded",
            "readd_refused",
            "removal_refused",
            "failed_batches",
        )
        if report.get(key)
    ]
    details = (
        f"{report.get('read', 0):,} rows read: {report.get('invalid', 0):,} invalid, "
        f"{report.get('duplicates', 0):,} duplicates; {_plural(report.get('batches', 0), 'import')}, "
        f"{_plural(report.get('requests', 0), 'request')}, {report.get('duration_s', 0):.1f} s"
    )
    return f"{counts}{''.join(', ' + r for r in rare)}  ({details})"


def expected_counts(report: Mapping[str, Any], expected: Mapping[str, int]) -> str | None:
    """``None`` if the report counts what ``expected`` says; otherwise what differs, in words.

    :param report: an export's report.
    :param expected: report key -> the count the demo's own changes make certain.
    """
    wrong = [
        f"{key} {report.get(key) or 0:,} (expected {value:,})"
        for key, value in expected.items()
        if (report.get(key) or 0) != value
    ]
    return "; ".join(wrong) or None


def print_run(
    run: int,
    state: str | None,
    task_states: Mapping[str, str],
    reports: Mapping[str, Mapping[str, Any]],
    expected: Mapping[str, int],
    full: bool,
) -> bool:
    """A run's outcome and a line per export saying what it did; whether all went as expected.

    :param run: the run's number.
    :param state: the DAG run's state, ``None`` if none was recorded.
    :param task_states: task id -> state.
    :param reports: export task id -> its report.
    :param expected: report key -> the count each export must report (the demo knows what changed).
    :param full: print every export's whole report too.
    """
    not_ok = sorted(task for task, task_state in task_states.items() if task_state != "success")
    print(
        f"    Run {run}: {state or 'no run recorded'}"
        + (f" (not successful: {', '.join(f'{t}={task_states[t]}' for t in not_ok)})" if not_ok else "")
    )
    ok = state == "success"
    for task_id in EXPORT_TASKS:
        report = reports.get(task_id)
        if report is None:
            print(f"      {task_id}: no report (the task failed or did not run)")
            ok = False
            continue
        wrong = expected_counts(report, expected)
        ok &= wrong is None
        verdict = "" if wrong is None else f"\n        NOT AS EXPECTED: {wrong}"
        print(f"      {report.get('destination', task_id):<17} {summarise(report)}{verdict}")
    if full:
        for task_id, report in reports.items():
            print_report(task_id, report)
        print()
    return ok


#: The outcome log files the example DAG writes for each run, by destination (see the DAG's OUTCOMES_DIR).
OUTCOME_FILES = {"ActiveCampaign": "activecampaign.csv", "Constant Contact": "constantcontact.csv"}


def print_outcome_logs(home: Path, workdir: Path) -> None:
    """The statuses of the latest run's outcome logs, a line per export, and where the files are."""
    runs = home / "ciexport-outcomes" / DAG_ID
    folders = sorted(runs.iterdir(), key=lambda p: p.stat().st_mtime) if runs.is_dir() else []
    if not folders:
        print("      Outcome log: none written")
        return
    print(f"      Outcome log, a row per segment row ({folders[-1].relative_to(workdir)}/):")
    for name, file in OUTCOME_FILES.items():
        path = folders[-1] / file
        if not path.is_file():
            print(f"        {name:<17} not written")
            continue
        with path.open(newline="") as f:
            statuses = Counter(row["status"] for row in csv.DictReader(f))
        counts = ", ".join(f"{status} {count:,}" for status, count in statuses.most_common())
        print(f"        {name:<17} {counts}")


def run_dag(
    airflow: list[str],
    env: Mapping[str, str],
    home: Path,
    workdir: Path,
    run: int,
    expected: Mapping[str, int],
    full: bool,
) -> tuple[DemoError | None, bool, dict[str, dict[str, Any]]]:
    """One ``airflow dags test`` of the example DAG, a line per export saying what it did.

    :param expected: report key -> the count each export must report (the demo knows what changed).
    :param full: print every export's whole report too.
    :return: the run's error (if any), whether it succeeded with the expected counts, the reports.
    """
    log = home / "logs" / f"dags-test-{run}.log"
    print(f"    airflow dags test {DAG_ID} (task logs in {log.relative_to(workdir)}) ...", flush=True)
    failed: DemoError | None = None
    try:
        run_logged([*airflow, "dags", "test", DAG_ID], env, log, f"airflow dags test {DAG_ID}")
    except DemoError as exc:
        failed = exc  # still show whatever the run got done
    state, task_states, reports = read_run(home / "airflow.db")
    ok = print_run(run, state, task_states, reports, expected, full) and failed is None
    print_outcome_logs(home, workdir)
    return failed, ok, reports


def run_demo(workdir: Path, profiles: int = PROFILE_COUNT, full: bool = False) -> bool:
    """Every step of the demo; whether the runs succeeded and the lists hold what they should.

    :param workdir: where ``.airflow`` goes.
    :param profiles: how many customer profiles to generate.
    :param full: print every export's whole report, not only its summary line.
    """
    started = time.monotonic()
    home = workdir / ".airflow"
    airflow = [sys.executable, "-m", "airflow"]
    env = _fresh_airflow_home(home, airflow)
    profiles_db = home / "profiles.db"
    _generate_profiles(profiles_db, profiles)
    members = len(expected_segment_emails(profiles_db, SEGMENT))

    with SandboxServer() as sandbox:
        print(f"3/5 Sandbox (fake ActiveCampaign + Constant Contact) listening on {sandbox.url}.", flush=True)
        run_env = {**env, **dag_connections(sandbox, profiles_db)}
        print(
            f"4/5 First run: the lists start empty, so each of the segment's {members:,} valid, distinct "
            "contacts is new.",
            flush=True,
        )
        first = {"new": members, "changed": 0, "removed": 0, "unchanged": 0, "rejected": 0}
        test_failed, ok, _ = run_dag(airflow, run_env, home, workdir, 1, first, full)
        print(
            "\n5/5 The segment changes, then a second run sends only what changed and removes who left:",
            flush=True,
        )
        changes = plan_changes(profiles_db)
        change_segment(profiles_db, changes)
        failed, ok2, _ = run_dag(
            airflow, run_env, home, workdir, 2, _second_run_counts(changes, members), full
        )
        test_failed = test_failed or failed
        ok &= ok2
        ok &= _check_lists(sandbox.client, profiles_db)

    _print_outcome(ok, full, test_failed, time.monotonic() - started, home / "logs" / "dags-test-2.log")
    return ok


def migrated_db_name() -> str | None:
    """The name of the migrated, never used database kept in the demo's home for this Airflow version
    (``None`` when the version cannot be read: then every run migrates)."""
    versions = []
    for dist in ("apache-airflow", "apache-airflow-core"):
        try:
            versions.append(metadata.version(dist))
        except metadata.PackageNotFoundError:
            versions.append("none")
    if versions == ["none", "none"]:
        return None
    return "migrated-airflow-" + re.sub(r"[^0-9A-Za-z.+-]", "_", "-".join(versions)) + ".db"


def is_migrated_db(path: Path) -> bool:
    """Whether ``path`` is a readable SQLite database that records its Alembic revision."""
    try:
        with closing(sqlite3.connect(f"file:{path}?mode=ro", uri=True)) as conn:
            return conn.execute("SELECT count(*) FROM alembic_version").fetchone()[0] == 1
    except sqlite3.Error:
        return False


def _empty_home(home: Path, keep: Path | None) -> None:
    """Remove everything in ``home`` but ``keep``; create ``home`` if it is missing (a symbolic link
    there is removed, never followed)."""
    if home.is_symlink():
        home.unlink()
    home.mkdir(parents=True, exist_ok=True)
    for entry in home.iterdir():
        if entry == keep:
            continue
        if entry.is_dir() and not entry.is_symlink():
            shutil.rmtree(entry, ignore_errors=True)
        else:
            with suppress(FileNotFoundError):
                entry.unlink()


def _fresh_airflow_home(home: Path, airflow: list[str]) -> dict[str, str]:
    """Step 1: an empty Airflow home with a migrated database; the environment that uses it.

    ``airflow db migrate`` costs some 7 s of CPU even on an up-to-date database, so the first run keeps
    a copy of the database it migrated (never used: the runs use a copy) for the next runs with the
    same Airflow version; every run still starts from an empty database.
    """
    dags_folder = find_example_dags()
    name = migrated_db_name()
    template = home / name if name else None
    kept = template is not None and is_migrated_db(template)
    _empty_home(home, template if kept else None)
    (home / "logs").mkdir()
    env = airflow_env(home, dags_folder)
    if kept and template is not None:
        print(f"1/5 Fresh Airflow home in {home}; its database copied from {template.name} ...", flush=True)
        shutil.copyfile(template, home / "airflow.db")
        return env
    print(f"1/5 Fresh Airflow home in {home}; migrating its database ...", flush=True)
    run_logged([*airflow, "db", "migrate"], env, home / "logs" / "db-migrate.log", "airflow db migrate")
    if template is not None:
        partial = home / f"{template.name}.partial"
        shutil.copyfile(home / "airflow.db", partial)
        os.replace(partial, template)
    return env


def _generate_profiles(profiles_db: Path, count: int) -> None:
    """Step 2: the customer profiles the DAG reads, with what is wrong in them."""
    stats = generate_profiles(profiles_db, count=count)
    print(
        f"2/5 Generated {stats.count:,} customer profiles in {profiles_db.name}: "
        f"{stats.invalid_emails} invalid and {stats.duplicate_emails} repeated addresses, "
        f"{stats.blank_values:,} blank values, {stats.long_values} over-long values.",
        flush=True,
    )


def _second_run_counts(changes: Sequence[SegmentChange], members: int) -> dict[str, int]:
    """What each export of the second run must report, after ``changes`` to a segment of ``members``."""
    count = {change.outcome: len(change.customer_ids) for change in changes}
    return {
        "new": count["new"],
        "changed": count["changed"],
        "removed": count["to_remove"],
        "unchanged": members - count["to_remove"] - count["changed"],
        "rejected": 0,
    }


def _check_lists(client: SandboxClient, profiles_db: Path) -> bool:
    """Print every sandbox list; whether the VIP lists hold the segment and the others nobody.

    Closes ``client``.
    """
    expected = expected_segment_emails(profiles_db, SEGMENT)
    ok = True
    print(f"\nSandbox lists now (the {SEGMENT} segment has {len(expected):,} valid distinct addresses):")
    for list_id, name in SEED.ac_lists.items():
        emails = [c["email"].lower() for c in client.ac_list_contacts(list_id)]
        wanted = expected if list_id == AC_LIST_VIP else set()
        ok &= print_list(f"ActiveCampaign {list_id} {name!r}", emails, wanted)
    for cc_list_id, name in CC_LISTS.items():
        emails = [c["email"].lower() for c in client.cc_list_contacts(cc_list_id)]
        wanted = expected if cc_list_id == CC_LIST_VIP else set()
        ok &= print_list(f"Constant Contact {cc_list_id[:8]}… {name!r}", emails, wanted)
    client.close()
    return ok


def _print_outcome(ok: bool, full: bool, test_failed: DemoError | None, duration_s: float, log: Path) -> None:
    print(f"\nDemo {'succeeded' if ok else 'FAILED'} in {duration_s:.0f} s.")
    if not full:
        print("Every export's full report: make demo DEMO_ARGS=--full")
    if test_failed is not None:
        print(f"\n{test_failed}", file=sys.stderr)
    elif not ok:
        print(f"See {log} for the task logs.", file=sys.stderr)


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``python -m airflow_provider_ciexport.tools.demo``.

    :param argv: the command line arguments (default: ``sys.argv[1:]``).
    """
    parser = argparse.ArgumentParser(
        prog="python -m airflow_provider_ciexport.tools.demo",
        description="Run the example DAG twice against the local sandbox and say what each export did.",
    )
    parser.add_argument("--full", action="store_true", help="print every export's full report too")
    parser.add_argument(
        "--profiles",
        type=int,
        default=PROFILE_COUNT,
        metavar="N",
        help=f"customer profiles to generate (default {PROFILE_COUNT:,})",
    )
    args = parser.parse_args(argv)
    try:
        return 0 if run_demo(Path.cwd(), profiles=args.profiles, full=args.full) else 1
    except DemoError as exc:
        print(f"\nDemo FAILED: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
