"""``make prod-test``: the provider on a production-shaped Airflow stack, all on 127.0.0.1.

It starts, each in its own process and recording its pid: a throwaway PostgreSQL cluster (Airflow's
metadata database and the warehouse the segments are queried from), Redis (the Celery broker), moto's
S3 server (the sync states), the sandbox (both APIs, limits scaled by ``--scale``), then Airflow 3 with
the CeleryExecutor: API server, scheduler, DAG processor and two ``airflow celery worker`` processes,
each in its own working directory. Through the scheduler it runs the DAGs of ``prod/dags``: an idle task
per destination (the memory baseline), a mirror export per destination with its state on S3, and two
runs at once on one S3 state. It checks every list against its segment through the sandbox's HTTP API,
prints a table, and stops everything it started by the recorded pids.

Usage: ``python benchmarks/prod_test.py [--profiles N] [--scale N]``
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sqlite3
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from contextlib import ExitStack, closing, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from run import IMPORT_LATENCY_S, RESULTS, Sandbox, airflow_env, ensure_profiles
from shared_account import (
    airflow_cli,
    airflow_services,
    free_port,
    scheduler_env,
    spawn,
    stop_all,
    valid_emails,
    wait_for,
)

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(ROOT))  # the tests' PostgreSQL server helper, shared rather than copied

from tests.export.sources.postgres_server import (  # noqa: E402
    PostgresServer,
    find_binaries,
    missing_user,
    postgres_server,
)

PYTHON = sys.executable
DAGS = HERE / "prod" / "dags"
LOGS = RESULTS / "prod"
BUCKET = "ciexport-prod"
S3_KEYS = {"login": "prodtest-key-id", "password": "prodtest-secret-key"}
FINAL_STATES = {"success", "failed"}
WORKERS = ("worker1", "worker2")
#: The sandbox's lists the DAGs export to (``prod/dags/ciexport_prod.py``).
LIST_OF = {
    ("ciexport_prod_mirror", "export_ac"): 2,
    ("ciexport_prod_shared_state", "export_ac"): 3,
    ("ciexport_prod_shared_state_lease", "export_ac"): 1,
}
#: The sandbox's latency of an import request while the two runs on one state run (else run.py's).
SHARED_IMPORT_LATENCY_S = 6.0
CC_VIP = "22222222-2222-4222-8222-222222222222"


@dataclass
class Stack:
    """What the test started: processes (by pid), servers' addresses, the Airflow environment."""

    work: Path
    procs: list[subprocess.Popen[bytes]] = field(default_factory=list)
    env: dict[str, str] = field(default_factory=dict)
    pg: PostgresServer | None = None
    sandbox: Any = None

    def start(self, name: str, cmd: list[str], env: dict[str, str], cwd: Path | None = None) -> None:
        """Start ``cmd`` and record its pid (in ``pids.txt`` too)."""
        proc = spawn(cmd, env, LOGS / f"{name}.log", cwd)
        self.procs.append(proc)
        with (self.work / "pids.txt").open("a") as pids:
            pids.write(f"{proc.pid} {name}\n")


def ensure_redis() -> str:
    """Debian's ``redis-server``, installed with apt-get if missing."""
    found = shutil.which("redis-server")
    if found:
        return found
    if os.geteuid() != 0:
        raise SystemExit("redis-server is missing: sudo apt-get install -y redis-server")
    print("Installing Debian's redis-server ...", flush=True)
    subprocess.run(["apt-get", "install", "-y", "-q", "redis-server"], check=True, capture_output=True)  # noqa: S607
    return shutil.which("redis-server") or "/usr/bin/redis-server"


def start_redis(stack: Stack) -> str:
    """Redis on a free port, no persistence; returns its URL."""
    port = free_port()
    folder = stack.work / "redis"
    folder.mkdir()
    cmd = [ensure_redis(), "--bind", "127.0.0.1", "--port", str(port), "--save", "", "--dir", str(folder)]
    stack.start("redis", cmd, dict(os.environ))
    wait_for("Redis", lambda: _listening(port), 30, 0.2)
    return f"redis://127.0.0.1:{port}/0"


def _listening(port: int) -> bool:
    """Whether something accepts connections on ``port`` of 127.0.0.1."""
    import socket

    with closing(socket.socket()) as sock:
        return sock.connect_ex(("127.0.0.1", port)) == 0


def start_s3(stack: Stack) -> str:
    """moto's S3 server on a free port with the states' bucket; returns its URL."""
    import boto3

    port = free_port()
    stack.start("s3", [PYTHON, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)], dict(os.environ))
    wait_for("the S3 server", lambda: _listening(port), 60, 0.2)
    url = f"http://127.0.0.1:{port}"
    s3 = boto3.client(
        "s3",
        endpoint_url=url,
        region_name="us-east-1",
        aws_access_key_id=S3_KEYS["login"],
        aws_secret_access_key=S3_KEYS["password"],
    )
    s3.create_bucket(Bucket=BUCKET)
    return url


def load_warehouse(pg: PostgresServer, profiles_db: Path, count: int) -> None:
    """The first ``count`` generated profiles into the ``warehouse`` database's ``customer_profiles``."""
    import psycopg

    from airflow_provider_ciexport.tools.sandbox.profiles import CREATE_TABLE_SQL, PROFILE_COLUMNS

    pg.execute("CREATE DATABASE warehouse", database="postgres")
    with closing(sqlite3.connect(profiles_db)) as src:
        rows = src.execute(
            f"SELECT {', '.join(PROFILE_COLUMNS)} FROM customer_profiles WHERE customer_id <= ?", (count,)
        )
        with psycopg.connect(
            host=pg.host, port=pg.port, user=pg.login, password=pg.password, dbname="warehouse"
        ) as conn:
            conn.execute(CREATE_TABLE_SQL)
            with conn.cursor().copy(
                f"COPY customer_profiles ({', '.join(PROFILE_COLUMNS)}) FROM STDIN"
            ) as copy:
                for row in rows:
                    copy.write_row(row)


def stack_env(stack: Stack, redis_url: str, s3_url: str, profiles_db: Path, scale: float) -> dict[str, str]:
    """Every Airflow component's environment: CeleryExecutor, PostgreSQL, the connections."""
    assert stack.pg is not None and stack.sandbox is not None
    pg = stack.pg
    base = airflow_env(stack.work / "home", profiles_db, stack.sandbox.url, scale)
    env = scheduler_env(base, stack.work / "unused.db", free_port())
    env.pop("AIRFLOW_CONN_PROFILES_DB", None)
    auth = f"{pg.login}:{pg.password}@{pg.host}:{pg.port}"
    env.update(
        {
            "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": f"postgresql+psycopg2://{auth}/airflow",
            "AIRFLOW__CORE__EXECUTOR": "CeleryExecutor",
            "AIRFLOW__CELERY__BROKER_URL": redis_url,
            "AIRFLOW__CELERY__RESULT_BACKEND": f"db+postgresql+psycopg2://{auth}/airflow",
            "AIRFLOW__CORE__DAGS_FOLDER": str(DAGS),
            "AIRFLOW_CONN_WAREHOUSE": json.dumps({**pg.connection(), "schema": "warehouse"}),
            "AIRFLOW_CONN_CIEXPORT_STATE": json.dumps(
                {"conn_type": "aws", **S3_KEYS, "extra": {"endpoint_url": s3_url, "region_name": "us-east-1"}}
            ),
            "CIEXPORT_PROD_PROBES": str(stack.work / "probes"),
        }
    )
    (stack.work / "probes").mkdir()
    (stack.work / "home").mkdir(exist_ok=True)
    return env


def start_workers(stack: Stack) -> None:
    """Two Celery workers, each with its own hostname, working directory, TMPDIR and log server port."""
    for name in WORKERS:
        folder = stack.work / name
        (folder / "tmp").mkdir(parents=True)
        env = {
            **stack.env,
            "CIEXPORT_PROD_WORKER": name,
            "TMPDIR": str(folder / "tmp"),
            "AIRFLOW__LOGGING__WORKER_LOG_SERVER_PORT": str(free_port()),
        }
        cmd = [PYTHON, "-m", "airflow", "celery", "worker", "--celery-hostname", f"{name}@127.0.0.1"]
        stack.start(name, [*cmd, "--concurrency", "2"], env, cwd=folder)


def pg_rows(stack: Stack, sql: str, params: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    """Rows of Airflow's metadata database (``[]`` while it cannot answer)."""
    import psycopg

    pg = stack.pg
    assert pg is not None
    try:
        with psycopg.connect(
            host=pg.host, port=pg.port, user=pg.login, password=pg.password, dbname="airflow"
        ) as conn:
            return list(conn.execute(sql, params))
    except psycopg.Error:
        return []


def trigger(stack: Stack, dag_id: str, run_ids: Sequence[str], conf_values: dict[str, Any]) -> None:
    """Trigger ``dag_id`` once per run id, all at once; wait until every run has ended."""
    conf = json.dumps(conf_values)
    clis = [
        spawn(
            [PYTHON, "-m", "airflow", "dags", "trigger", dag_id, "--run-id", run_id, "--conf", conf],
            stack.env,
            LOGS / f"trigger-{run_id}.log",
        )
        for run_id in run_ids
    ]
    for cli in clis:
        if cli.wait(300) != 0:
            raise RuntimeError(f"airflow dags trigger {dag_id} failed; see {LOGS}")
    if len(run_ids) > 1:  # the DAG starts paused: its runs wait, queued, and start together now
        airflow_cli(stack.env, ["dags", "unpause", dag_id], LOGS / f"unpause-{dag_id}.log")

    def ended() -> bool:
        rows = pg_rows(stack, "SELECT state FROM dag_run WHERE run_id = ANY(%s)", (list(run_ids),))
        return len(rows) == len(run_ids) and all(state in FINAL_STATES for (state,) in rows)

    wait_for(f"the runs of {dag_id} to end", ended, 900, 2.0)


@dataclass
class TaskResult:
    """One try of a task, as the metadata DB, its XCom and its probe file tell it."""

    scenario: str
    dag_id: str
    run_id: str
    task_id: str
    state: str
    worker: str = "-"
    report: dict[str, Any] = field(default_factory=dict)
    peak_mb: float | None = None
    exact: bool | None = None
    refusals: int | None = None
    start: Any = None
    note: str = ""


def task_results(stack: Stack, scenario: str, dag_id: str, run_ids: Sequence[str]) -> list[TaskResult]:
    """The tasks of ``run_ids``: state, report, peak RSS (from the probe files)."""
    results = []
    for run_id, task_id, state, start in pg_rows(
        stack,
        "SELECT run_id, task_id, state, start_date FROM task_instance WHERE dag_id = %s AND run_id = ANY(%s)",
        (dag_id, list(run_ids)),
    ):
        result = TaskResult(scenario, dag_id, run_id, task_id, state, start=start)
        result.note = task_log_note(stack, dag_id, run_id, task_id)
        for (value,) in pg_rows(
            stack,
            "SELECT value FROM xcom WHERE dag_id = %s AND run_id = %s AND task_id = %s AND key = 'return_value'",
            (dag_id, run_id, task_id),
        ):
            result.report = json.loads(value) if isinstance(value, str) else dict(value or {})
        for probe_file in (stack.work / "probes").glob(f"{dag_id}.{run_id}.{task_id}.*.json"):
            probe = json.loads(probe_file.read_text())
            result.peak_mb, result.worker = probe["peak_kb"] / 1024, probe["worker"]
        results.append(result)
    return sorted(results, key=lambda r: (r.run_id, r.task_id))


def task_log_note(stack: Stack, dag_id: str, run_id: str, task_id: str) -> str:
    """``lease held`` when a try of the task was refused because another run held its state."""
    logs = stack.work / "home" / "logs" / f"dag_id={dag_id}" / f"run_id={run_id}" / f"task_id={task_id}"
    for log in logs.glob("attempt=*.log"):
        if "StateBusyError" in log.read_text(errors="replace"):
            return "refused: state's lease held"
    return ""


def segment_emails(stack: Stack, profiles: int, churn: bool = False) -> set[str]:
    """The valid distinct addresses of the warehouse's segment of ``profiles`` profiles (``SYNC_SQL``)."""
    import psycopg

    pg = stack.pg
    assert pg is not None
    with psycopg.connect(
        host=pg.host, port=pg.port, user=pg.login, password=pg.password, dbname="warehouse"
    ) as conn:
        sql = "SELECT email FROM customer_profiles WHERE customer_id <= %s"
        if churn:
            sql, profiles = sql + " AND customer_id %% 200 != 0", profiles + profiles // 100
        rows = conn.execute(sql, (profiles,))
        return valid_emails(raw for (raw,) in rows)


def check_lists(stack: Stack, results: list[TaskResult], expected: set[str]) -> None:
    """Whether each export's list holds exactly its segment, read through the sandbox's HTTP API."""
    client = stack.sandbox.client
    for result in results:
        if result.task_id == "export_cc":
            contacts = client.cc_list_contacts(CC_VIP)
        elif (result.dag_id, result.task_id) in LIST_OF:
            contacts = client.ac_list_contacts(LIST_OF[(result.dag_id, result.task_id)])
        else:
            continue
        held = [c.get("email") or c.get("email_address") for c in contacts]
        result.exact = len(held) == len(expected) and set(held) == expected
        if not result.exact:
            print(
                f"  {result.run_id}/{result.task_id}: the list holds {len(held):,}, the segment {len(expected):,}"
            )


def refusals(stack: Stack, since_seq: int, api: str) -> int:
    """The ``api``'s requests the sandbox answered 429 since request number ``since_seq``."""
    log = stack.sandbox.client.requests_log(api)
    return sum(1 for e in log if e.get("seq", 0) > since_seq and e.get("status") == 429)


def last_seq(stack: Stack) -> int:
    """The sandbox's latest request number."""
    return max((int(e.get("seq", 0)) for e in stack.sandbox.client.requests_log()), default=0)


def scenario(stack: Stack, name: str, dag_id: str, run_ids: Sequence[str], **conf: Any) -> list[TaskResult]:
    """Run one scenario through the scheduler and measure its tasks."""
    print(f"  {name}: {len(run_ids)} run(s) of {dag_id} ...", flush=True)
    since = last_seq(stack)
    started = time.monotonic()
    trigger(stack, dag_id, run_ids, conf)
    results = task_results(stack, name, dag_id, run_ids)
    for result in results:
        result.refusals = refusals(stack, since, "cc" if result.task_id.endswith("cc") else "ac")
    print(f"  {name}: done in {time.monotonic() - started:.0f} s", flush=True)
    return results


HEAD: tuple[str, ...] = (
    *("scenario", "run", "task", "worker", "started", "state", "time s", "requests", "429s"),
    *("peak MB", "over idle", "list", "note"),
)


def _row(r: TaskResult, idle_mb: float | None, first: Any) -> tuple[str, ...]:
    """One task's row of the table (``first``: when its scenario's first task started)."""
    over = r.peak_mb - idle_mb if r.peak_mb is not None and idle_mb is not None else None
    started = f"+{(r.start - first).total_seconds():.0f} s" if r.start and first else "-"
    exact = "-" if r.exact is None else ("exact" if r.exact else "WRONG")
    return (
        r.scenario,
        r.run_id,
        r.task_id,
        r.worker,
        started,
        r.state,
        _fmt(r.report.get("duration_s"), ".1f"),
        _fmt(r.report.get("requests"), "d"),
        _fmt(r.refusals, "d"),
        _fmt(r.peak_mb, ".0f"),
        _fmt(over, ".0f"),
        exact,
        r.note,
    )


def print_table(results: list[TaskResult]) -> None:
    """Time, requests, refusals and peak memory over the idle task's, one row per task."""
    idle = {r.task_id[-2:]: r.peak_mb for r in results if r.scenario == "idle"}
    first: dict[str, Any] = {}
    for r in results:
        if r.start and (r.scenario not in first or r.start < first[r.scenario]):
            first[r.scenario] = r.start
    rows = [HEAD, *(_row(r, idle.get(r.task_id[-2:]), first.get(r.scenario)) for r in results)]
    widths = [max(len(row[i]) for row in rows) for i in range(len(HEAD))]
    for row in rows:
        print("  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip())


def _fmt(value: Any, spec: str) -> str:
    return "-" if value is None else format(value, spec)


@contextmanager
def running_stack(work: Path, profiles_db: Path, profiles: int, scale: float) -> Iterator[Stack]:
    """Start everything (see the module doc); stop it all on exit, by the recorded pids."""
    binaries, why = find_binaries(), missing_user()
    if binaries is None or why is not None:
        raise SystemExit(why or "PostgreSQL's initdb, pg_ctl and postgres are not installed")
    stack = Stack(work)
    with ExitStack() as stop:
        stop.callback(stop_all, stack.procs)
        print("Starting PostgreSQL, Redis, the S3 server and the sandbox ...", flush=True)
        stack.pg = stop.enter_context(postgres_server(binaries, "airflow"))
        load_warehouse(stack.pg, profiles_db, profiles + profiles // 100)
        redis_url, s3_url = start_redis(stack), start_s3(stack)
        stack.sandbox = stop.enter_context(Sandbox(scale, work))
        stack.env = stack_env(stack, redis_url, s3_url, profiles_db, scale)
        print("Airflow: migrating the metadata database on PostgreSQL ...", flush=True)
        airflow_cli(stack.env, ["db", "migrate"], LOGS / "migrate.log")
        stop.enter_context(airflow_services(stack.env, LOGS, "airflow"))
        start_workers(stack)
        wait_for(
            "the DAGs to be parsed",
            lambda: (
                len(pg_rows(stack, "SELECT 1 FROM serialized_dag WHERE dag_id LIKE 'ciexport_prod_%%'")) >= 4
            ),
            300,
        )
        yield stack


def run_scenarios(stack: Stack, profiles: int) -> list[TaskResult]:
    """Idle baseline, a mirror export per destination and its churn run, two runs on one S3 state."""
    stack.sandbox.client.reset(request_log_size=200_000)
    results = scenario(stack, "idle", "ciexport_prod_idle", ["idle"], profiles=0)
    mirror = scenario(stack, "mirror", "ciexport_prod_mirror", ["mirror"], profiles=profiles)
    check_lists(stack, mirror, segment_emails(stack, profiles))
    churn = scenario(stack, "2% churn", "ciexport_prod_mirror", ["churn"], profiles=profiles, churn=True)
    check_lists(stack, churn, segment_emails(stack, profiles, churn=True))
    # Slower imports, so that the first run still holds the state's lease when the second one starts.
    stack.sandbox.client.configure(import_latency_s=SHARED_IMPORT_LATENCY_S)
    runs = ["shared_1", "shared_2"]
    shared = scenario(stack, "one S3 state", "ciexport_prod_shared_state", runs, profiles=profiles)
    runs = ["lease_1", "lease_2"]
    shared += scenario(stack, "lease only", "ciexport_prod_shared_state_lease", runs, profiles=profiles)
    stack.sandbox.client.configure(import_latency_s=IMPORT_LATENCY_S)
    check_lists(stack, shared, segment_emails(stack, profiles))
    return results + mirror + churn + shared


def verdict(results: list[TaskResult]) -> list[str]:
    """What went wrong, if anything (empty when the test passed); a run refused by the lease is not."""
    problems = [f"{r.run_id}/{r.task_id}: list differs from its segment" for r in results if r.exact is False]
    problems += [f"{r.run_id}/{r.task_id}: {r.state}" for r in results if r.state != "success" and not r.note]
    for name in ("one S3 state", "lease only"):
        if not any(r.state == "success" for r in results if r.scenario == name):
            problems.append(f"{name}: neither run succeeded")
    return problems


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    """The command line."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--profiles", type=int, default=20_000, help="profiles in each segment")
    parser.add_argument("--scale", type=float, default=20.0, help="multiply the APIs' rate limits by this")
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    """Start the stack, run the scenarios, print the table, stop everything."""
    args = parse_args(argv)
    LOGS.mkdir(parents=True, exist_ok=True)
    started = time.monotonic()
    profiles_db = ensure_profiles(args.profiles + args.profiles // 100, regenerate=False)  # + the churn's new
    with tempfile.TemporaryDirectory(prefix="ciexport-prodtest-") as tmp:
        with running_stack(Path(tmp), profiles_db, args.profiles, args.scale) as stack:
            print(f"Stack up in {time.monotonic() - started:.0f} s; logs in {LOGS}", flush=True)
            results = run_scenarios(stack, args.profiles)
        print(
            f"\nEverything stopped. {args.profiles:,} profiles a segment, limits x{args.scale:g}, "
            f"{time.monotonic() - started:.0f} s in all:\n"
        )
    print_table(results)
    problems = verdict(results)
    for problem in problems:
        print(f"FAILED: {problem}")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
