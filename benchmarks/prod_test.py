"""``make prod-test``: the provider on a production-shaped Airflow stack, all on 127.0.0.1.

It starts, each in its own process and recording its pid: a throwaway PostgreSQL cluster (Airflow's
metadata database and the warehouse the segments are queried from), Redis (the Celery broker), moto's
S3 server (the sync states), the sandbox (both APIs, limits scaled by ``--scale``), then Airflow 3 with
the CeleryExecutor: API server, scheduler, DAG processor and two ``airflow celery worker`` processes,
each in its own working directory. Through the scheduler it runs the DAGs of ``prod/dags``: an idle task
per destination (the memory baseline), three exports at once on one account, a mirror export per
destination with its state on S3 and its churn run, two runs at once on one S3 state, and an export
whose worker is killed mid-export (SIGKILL), retried on the other worker. ``--memory`` runs instead the
memory figures' set: idle, a first sync, a mirror re-export, a killed export's retry. It checks every
list against its segment through the sandbox's HTTP API, prints a table, and stops everything it
started by the recorded pids.

Usage: ``python benchmarks/prod_test.py [--profiles N] [--scale N] [--memory]``
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import sqlite3
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from contextlib import ExitStack, closing, contextmanager, suppress
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
    ("ciexport_prod_shared_account", "list1_ac"): 1,
    ("ciexport_prod_shared_account", "list2_ac"): 2,
    ("ciexport_prod_shared_account", "list3_ac"): 3,
    ("ciexport_prod_memory", "export_ac"): 2,
    ("ciexport_prod_retry", "export_ac"): 1,
}
#: How long a try whose worker died stays "running" before the scheduler fails it (Airflow: 300 s).
HEARTBEAT_TIMEOUT_S = 60
#: The share of the segment the sandbox has received when the test kills the worker of the export.
KILL_AT = 0.3
#: The sandbox's latency of an import request while the two runs on one state run (else run.py's).
SHARED_IMPORT_LATENCY_S = 6.0
CC_VIP = "22222222-2222-4222-8222-222222222222"


@dataclass
class Stack:
    """What the test started: processes (by pid), servers' addresses, the Airflow environment."""

    work: Path
    procs: list[subprocess.Popen[bytes]] = field(default_factory=list)
    named: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)
    env: dict[str, str] = field(default_factory=dict)
    pg: PostgresServer | None = None
    sandbox: Any = None

    def start(self, name: str, cmd: list[str], env: dict[str, str], cwd: Path | None = None) -> None:
        """Start ``cmd`` and record its pid (in ``pids.txt`` too)."""
        proc = spawn(cmd, env, LOGS / f"{name}.log", cwd)
        self.procs.append(proc)
        self.named[name] = proc
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
            "AIRFLOW__SCHEDULER__TASK_INSTANCE_HEARTBEAT_TIMEOUT": str(HEARTBEAT_TIMEOUT_S),
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
    """Trigger ``dag_id`` once per run id, all at once (see :func:`wait_runs`)."""
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


def wait_runs(stack: Stack, dag_id: str, run_ids: Sequence[str], profiles: int) -> None:
    """Wait until every run of ``run_ids`` has ended."""

    def ended() -> bool:
        rows = pg_rows(stack, "SELECT state FROM dag_run WHERE run_id = ANY(%s)", (list(run_ids),))
        return len(rows) == len(run_ids) and all(state in FINAL_STATES for (state,) in rows)

    wait_for(f"the runs of {dag_id} to end", ended, 900 + profiles / 500, 2.0)


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
    try_number: int = 0
    #: When the sampled peak came (seconds into the try) and the provider's last log line before it.
    peak_at_s: float | None = None
    peak_during: str = ""


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
        files = list((stack.work / "probes").glob(f"{dag_id}.{run_id}.{task_id}.*.json"))
        probes = [json.loads(f.read_text()) for f in files]
        kept = LOGS / "probes"  # with their memory timelines, after the stack's folder is gone
        kept.mkdir(exist_ok=True)
        for f in files:
            shutil.copy(f, kept / f.name)
        for probe in sorted((p for p in probes if "peak_kb" in p), key=lambda p: p["try_number"]):
            result.peak_mb, result.worker = probe["peak_kb"] / 1024, probe["worker"]
            result.refusals, result.try_number = probe.get("throttled"), probe["try_number"]
            result.peak_at_s, result.peak_during = probe.get("peak_at_s"), probe.get("peak_during", "")
        results.append(result)
    return sorted(results, key=lambda r: (r.run_id, r.task_id))


def task_log_note(stack: Stack, dag_id: str, run_id: str, task_id: str) -> str:
    """``lease held`` when a try of the task was refused because another run held its state."""
    logs = stack.work / "home" / "logs" / f"dag_id={dag_id}" / f"run_id={run_id}" / f"task_id={task_id}"
    for log in logs.glob("attempt=*.log"):
        if "StateBusyError" in log.read_text(errors="replace"):
            return "refused: state's lease held"
    return ""


def segment_emails(stack: Stack, profiles: int, churn: bool = False, first: int = 0) -> set[str]:
    """The valid distinct addresses of the warehouse's segment of ``profiles`` profiles (``SYNC_SQL``),
    or of customer ids ``first + 1`` to ``first + profiles``."""
    import psycopg

    pg = stack.pg
    assert pg is not None
    with psycopg.connect(
        host=pg.host, port=pg.port, user=pg.login, password=pg.password, dbname="warehouse"
    ) as conn:
        sql = "SELECT email FROM customer_profiles WHERE customer_id > %s AND customer_id <= %s"
        if churn:
            sql, profiles = sql + " AND customer_id %% 200 != 0", profiles + profiles // 100
        rows = conn.execute(sql, (first, first + profiles))
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
    wait_runs(stack, dag_id, run_ids, int(conf.get("profiles", 0)))
    results = task_results(stack, name, dag_id, run_ids)
    for result in results:
        if result.refusals is None:  # no probe: the API's 429s during the scenario
            result.refusals = refusals(stack, since, "cc" if result.task_id.endswith("cc") else "ac")
    print(f"  {name}: done in {time.monotonic() - started:.0f} s", flush=True)
    return results


def contacts_received(stack: Stack) -> int:
    """The ActiveCampaign contacts the sandbox has received in imports so far."""
    return int(stack.sandbox.client.stats()["imports"]["ac"]["contacts_received"])


def become_subreaper() -> None:
    """Adopt this process's orphaned descendants (Linux), so that a killed task process is reaped here
    and its pid is gone for the retry's lease check (a container's pid 1 may never reap it)."""
    import ctypes

    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(36, 1, 0, 0, 0)  # PR_SET_CHILD_SUBREAPER


def reap(pid: int, timeout_s: float = 30) -> None:
    """Wait until ``pid`` (killed, orphaned, adopted by this process) is gone."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            if os.waitpid(pid, os.WNOHANG)[0] == pid:
                return
        except ChildProcessError:  # not (yet) adopted: gone already, or its parent is dying
            try:
                os.kill(pid, 0)
            except ProcessLookupError:
                return
        time.sleep(0.1)


def kill_try(stack: Stack, start_file: Path, scenario_name: str) -> TaskResult:
    """SIGKILL the Celery worker that runs the try of ``start_file`` (its process group, by the pid the
    stack recorded) and the try's task process group (Airflow gives the task its own); its row."""
    start = json.loads(start_file.read_text())
    worker = stack.named[start["worker"]]
    os.killpg(worker.pid, signal.SIGKILL)
    with suppress(ProcessLookupError):
        os.killpg(int(start["pid"]), signal.SIGKILL)
    worker.wait(30)
    reap(int(start["pid"]))
    dag_id, run_id, task_id, try_number = start_file.name.split(".")[:4]
    result = TaskResult(scenario_name, dag_id, run_id, task_id, "killed", worker=start["worker"])
    result.try_number = int(try_number)
    result.note = f"SIGKILL to {start['worker']} (pgid {worker.pid}) and its task (pgid {start['pid']})"
    return result


def killed_scenario(stack: Stack, profiles: int) -> list[TaskResult]:
    """A mirror export whose worker is killed once the sandbox has received :data:`KILL_AT` of the
    segment; the retry runs on the other worker and resumes. The list is emptied first."""
    name, dag_id, run_id = "killed + retry", "ciexport_prod_retry", "killed"
    print(f"  {name}: 1 run of {dag_id} ...", flush=True)
    stack.sandbox.client.ac_empty_account()
    since, received = last_seq(stack), contacts_received(stack)
    started = time.monotonic()
    trigger(stack, dag_id, [run_id], {"profiles": profiles})
    start_file = stack.work / "probes" / f"{dag_id}.{run_id}.export_ac.1.start.json"
    wait_for("the export's first try to start", start_file.exists, 600, 0.5)
    wait_for(
        f"{KILL_AT:.0%} of the segment to reach the sandbox",
        lambda: contacts_received(stack) - received >= KILL_AT * profiles,
        900 + profiles / 500,
        0.5,
    )
    killed = kill_try(stack, start_file, name)
    print(f"  {name}: {killed.note}; waiting for the retry", flush=True)
    wait_runs(stack, dag_id, [run_id], profiles + HEARTBEAT_TIMEOUT_S * 500)
    results = task_results(stack, name, dag_id, [run_id])
    for result in results:
        if result.refusals is None:
            result.refusals = refusals(stack, since, "ac")
    check_lists(stack, results, segment_emails(stack, profiles))
    print(f"  {name}: done in {time.monotonic() - started:.0f} s", flush=True)
    return [killed, *results]


HEAD: tuple[str, ...] = (
    *("scenario", "run", "task", "try", "worker", "started", "state", "time s", "requests", "429s"),
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
        _fmt(r.try_number or None, "d"),
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
    print("\nWhere each peak came (sampled), after the provider's last log line:")
    for r in results:
        if r.peak_at_s is not None and r.scenario != "idle":
            print(
                f"  {r.run_id}/{r.task_id} try {r.try_number}: at {r.peak_at_s:.0f} s, after {r.peak_during!r}"
            )


def _fmt(value: Any, spec: str) -> str:
    return "-" if value is None else format(value, spec)


@contextmanager
def running_stack(work: Path, profiles_db: Path, rows: int, scale: float) -> Iterator[Stack]:
    """Start everything (see the module doc); stop it all on exit, by the recorded pids."""
    binaries, why = find_binaries(), missing_user()
    if binaries is None or why is not None:
        raise SystemExit(why or "PostgreSQL's initdb, pg_ctl and postgres are not installed")
    stack = Stack(work)
    with ExitStack() as stop:
        stop.callback(stop_all, stack.procs)
        print("Starting PostgreSQL, Redis, the S3 server and the sandbox ...", flush=True)
        stack.pg = stop.enter_context(postgres_server(binaries, "airflow"))
        load_warehouse(stack.pg, profiles_db, rows)
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
                len(pg_rows(stack, "SELECT 1 FROM serialized_dag WHERE dag_id LIKE 'ciexport_prod_%%'")) >= 7
            ),
            300,
        )
        yield stack


def shared_account(stack: Stack, profiles: int) -> list[TaskResult]:
    """Three exports at once on one ActiveCampaign account, each to its list; the account emptied after."""
    runs = ["three_exports"]
    results = scenario(stack, "one account", "ciexport_prod_shared_account", runs, profiles=profiles)
    for result in results:
        first = (int(result.task_id[len("list")]) - 1) * profiles
        check_lists(stack, [result], segment_emails(stack, profiles, first=first))
    stack.sandbox.client.ac_empty_account()
    return results


def memory_scenarios(stack: Stack, profiles: int) -> list[TaskResult]:
    """The memory figures: idle, a first sync, a mirror re-export, a killed export's retry."""
    stack.sandbox.client.reset(request_log_size=200_000)
    results = scenario(stack, "idle", "ciexport_prod_idle", ["idle"], profiles=0)
    for name, run_id in (("first sync", "first_sync"), ("re-export", "re_export")):
        ran = scenario(stack, name, "ciexport_prod_memory", [run_id], profiles=profiles)
        check_lists(stack, ran, segment_emails(stack, profiles))
        results += ran
    return results + killed_scenario(stack, profiles)


def run_scenarios(stack: Stack, profiles: int) -> list[TaskResult]:
    """Idle baseline, three exports on one account, a mirror export per destination and its churn run,
    two runs on one S3 state, a killed export and its retry."""
    stack.sandbox.client.reset(request_log_size=200_000)
    results = scenario(stack, "idle", "ciexport_prod_idle", ["idle"], profiles=0)
    results += shared_account(stack, profiles)
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
    return results + mirror + churn + shared + killed_scenario(stack, profiles)


def verdict(results: list[TaskResult]) -> list[str]:
    """What went wrong, if anything (empty when the test passed); a run refused by the lease is not."""
    problems = [f"{r.run_id}/{r.task_id}: list differs from its segment" for r in results if r.exact is False]
    problems += [f"{r.run_id}/{r.task_id}: {r.state}" for r in results if r.state != "success" and not r.note]
    return problems + scenario_problems(results)


def scenario_problems(results: list[TaskResult]) -> list[str]:
    """A shared-state scenario where no run succeeded; a retry that ran on the killed worker."""
    problems = []
    for name in ("one S3 state", "lease only"):
        ran = [r for r in results if r.scenario == name]
        if ran and not any(r.state == "success" for r in ran):
            problems.append(f"{name}: neither run succeeded")
    tries = [r for r in results if r.scenario == "killed + retry"]
    if len({r.worker for r in tries}) != 2:
        problems.append("killed + retry: the retry did not run on the other worker")
    return problems


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    """The command line."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--profiles", type=int, default=20_000, help="profiles in each segment")
    parser.add_argument("--scale", type=float, default=20.0, help="multiply the APIs' rate limits by this")
    parser.add_argument(
        "--memory",
        action="store_true",
        help="only the memory figures: idle, first sync, mirror re-export, a killed export's retry",
    )
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    """Start the stack, run the scenarios, print the table, stop everything."""
    args = parse_args(argv)
    LOGS.mkdir(parents=True, exist_ok=True)
    started = time.monotonic()
    # Three ranges for the exports on one account, or the segment and the churn's new rows.
    rows = args.profiles if args.memory else max(3 * args.profiles, args.profiles + args.profiles // 100)
    profiles_db = ensure_profiles(rows, regenerate=False)
    become_subreaper()
    with tempfile.TemporaryDirectory(prefix="ciexport-prodtest-") as tmp:
        with running_stack(Path(tmp), profiles_db, rows, args.scale) as stack:
            print(f"Stack up in {time.monotonic() - started:.0f} s; logs in {LOGS}", flush=True)
            results = (memory_scenarios if args.memory else run_scenarios)(stack, args.profiles)
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
