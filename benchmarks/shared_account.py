"""The benchmark's concurrent scenario: several exports to ONE account, run by a real scheduler.

``run.py`` calls :func:`run_shared_account` once per destination. It starts Airflow's API server
(the execution API the tasks talk to, Variables included), scheduler (LocalExecutor) and DAG
processor on a copy of the migrated metadata DB, creates one pool per account with ``airflow pools
import``, triggers ``ciexport_bench_<dest>_concurrent`` (see ``dags/ciexport_bench.py``: one task per
list, each exporting its own range of ``profiles`` customer ids) and waits for the run to end. Then it
reads each task's state and XCom report from the metadata DB, the sandbox's request log and the
lists' contents, and measures:

- ``ceiling_ratio``: the account's accepted imports per minute in the steady state of the import
  stream (the exports together: first and last 5% or 3 s trimmed, as for a single export), over the
  ceiling (ActiveCampaign only: Constant Contact's limit is requests a second, not imports);
- ``throttled_share``: API requests answered 429 (throttled) over all API requests of the account;
- each export's outcome, and whether each list holds exactly its segment's valid distinct addresses.
"""

from __future__ import annotations

import json
import os
import secrets
import signal
import socket
import sqlite3
import subprocess
import sys
import time
from collections.abc import Callable, Iterable, Iterator
from contextlib import closing, contextmanager
from pathlib import Path
from typing import Any

PYTHON = sys.executable
#: The DAG file's pools (``dags/ciexport_bench.py``): one per account.
POOLS = {"ac": "ciexport_bench_activecampaign", "cc": "ciexport_bench_constantcontact"}
#: The DAG file's lists, in task order (``export_1`` -> the first).
AC_LISTS = [1, 2, 3]
CC_LISTS = ["11111111-1111-4111-8111-111111111111", "22222222-2222-4222-8222-222222222222"]
IMPORT_PATHS = {"ac": "/api/3/import/bulk_import", "cc": "/v3/activities/contacts_json_import"}
FINAL_STATES = {"success", "failed"}


def free_port() -> int:
    """A free TCP port on 127.0.0.1."""
    with closing(socket.socket()) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def scheduler_env(env: dict[str, str], db: Path, port: int) -> dict[str, str]:
    """``env`` for a real deployment on one machine: LocalExecutor, tasks on the execution API."""
    from cryptography.fernet import Fernet

    return {
        **env,
        "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": f"sqlite:///{db}",
        "AIRFLOW__CORE__EXECUTOR": "LocalExecutor",
        "AIRFLOW__CORE__PARALLELISM": "8",
        "AIRFLOW__CORE__FERNET_KEY": Fernet.generate_key().decode(),
        "AIRFLOW__API__HOST": "127.0.0.1",
        "AIRFLOW__API__PORT": str(port),
        "AIRFLOW__API__WORKERS": "1",
        "AIRFLOW__API__BASE_URL": f"http://127.0.0.1:{port}",
        "AIRFLOW__CORE__EXECUTION_API_SERVER_URL": f"http://127.0.0.1:{port}/execution/",
        "AIRFLOW__API_AUTH__JWT_SECRET": secrets.token_hex(16),
        "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_ALL_ADMINS": "True",
        "AIRFLOW__DAG_PROCESSOR__REFRESH_INTERVAL": "5",
        "AIRFLOW__SCHEDULER__ENABLE_HEALTH_CHECK": "False",
    }


def spawn(cmd: list[str], env: dict[str, str], log: Path, cwd: Path | None = None) -> subprocess.Popen[bytes]:
    """Start ``cmd`` in its own session (its process group is its pid), output into ``log``."""
    with log.open("wb") as out:
        return subprocess.Popen(  # noqa: S603 - our own interpreter's commands, or Debian's binaries
            cmd, env=env, cwd=cwd, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
        )


def stop_all(procs: list[subprocess.Popen[bytes]], grace_s: float = 30) -> None:
    """Stop what :func:`spawn` started, by each recorded pid's process group: SIGTERM, then SIGKILL."""
    for proc in procs:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGTERM)
    deadline = time.monotonic() + grace_s
    for proc in procs:
        try:
            proc.wait(max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


@contextmanager
def airflow_services(env: dict[str, str], logs: Path, tag: str) -> Iterator[None]:
    """API server, scheduler and DAG processor, each in its own session, stopped afterwards."""
    procs: list[subprocess.Popen[bytes]] = []
    try:
        for name in ("api-server", "scheduler", "dag-processor"):
            procs.append(spawn([PYTHON, "-m", "airflow", name], env, logs / f"{tag}-{name}.log"))
        yield
    finally:
        stop_all(procs)


def airflow_cli(env: dict[str, str], args: list[str], log: Path) -> None:
    """Run an ``airflow`` command; raise with its log's tail if it fails."""
    with log.open("wb") as out:
        result = subprocess.run(  # noqa: S603 - our own interpreter's Airflow CLI
            [PYTHON, "-m", "airflow", *args], env=env, stdout=out, stderr=subprocess.STDOUT, check=False
        )
    if result.returncode != 0:
        tail = "\n".join(log.read_text(errors="replace").splitlines()[-15:])
        raise RuntimeError(f"airflow {' '.join(args[:2])} failed:\n{tail}")


def wait_for(what: str, check: Callable[[], Any], timeout_s: float, interval_s: float = 1.0) -> Any:
    """Call ``check`` until it returns something truthy; raise after ``timeout_s``."""
    deadline = time.monotonic() + timeout_s
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise RuntimeError(f"timed out waiting for {what}")
        time.sleep(interval_s)


def query(db: Path, sql: str, params: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    """Rows from the metadata DB (read-only; the scheduler owns it)."""
    try:
        with closing(sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=30)) as conn:
            return list(conn.execute(sql, params))
    except sqlite3.OperationalError:  # locked or not created yet: ask again later
        return []


def valid_emails(raw_emails: Iterable[Any]) -> set[str]:
    """The addresses a correct export of these segment values leaves in its list (valid for both APIs)."""
    from airflow_provider_ciexport.tools.sandbox.emails import is_valid_ac_email, is_valid_cc_email

    emails: set[str] = set()
    for raw in raw_emails:
        if isinstance(raw, str):
            email = raw.strip().lower()
            if email and is_valid_ac_email(email) and is_valid_cc_email(email):
                emails.add(email)
    return emails


def expected_emails(profiles_db: Path, first_id: int, last_id: int) -> set[str]:
    """The addresses a correct export of customer ids ``first_id..last_id`` leaves in its list."""
    with closing(sqlite3.connect(profiles_db)) as conn:
        rows = conn.execute(
            "SELECT email FROM customer_profiles WHERE customer_id BETWEEN ? AND ?", (first_id, last_id)
        )
        return valid_emails(raw for (raw,) in rows)


def run_shared_account(
    dest: str,
    profiles: int,
    scale: float,
    client: Any,
    env: dict[str, str],
    home: Path,
    profiles_db: Path,
    logs: Path,
    steady_rate: Callable[[list[float]], dict[str, Any]],
) -> dict[str, Any]:
    """Run the concurrent DAG of ``dest`` under a real scheduler and measure it (see the module doc).

    :param client: the sandbox's control client.
    :param env: the benchmark's Airflow environment (connections, DAGs folder).
    :param home: the AIRFLOW_HOME whose ``airflow.db`` is migrated.
    """
    lists: list[Any] = AC_LISTS if dest == "ac" else CC_LISTS
    dag_id = f"ciexport_bench_{dest}_concurrent"
    db = home / f"airflow-{dest}-concurrent.db"
    db.write_bytes((home / "airflow.db").read_bytes())
    senv = scheduler_env(env, db, free_port())
    pools = {POOLS[dest]: {"slots": len(lists), "description": "one account", "include_deferred": False}}
    pools_file = logs / f"pools-{dest}.json"
    pools_file.write_text(json.dumps(pools))
    airflow_cli(senv, ["pools", "import", str(pools_file)], logs / f"pools-{dest}.log")
    client.reset(request_log_size=len(lists) * max(5000, profiles // 250 * 6 + 5000))
    print(
        f"  {len(lists)} {dest.upper()} exports of {profiles:,} profiles to one account, real scheduler "
        "(LocalExecutor), pool of {0}: starting Airflow ...".format(len(lists)),
        flush=True,
    )
    started = time.monotonic()
    with airflow_services(senv, logs, f"{dest}-concurrent"):
        wait_for(
            f"the DAG {dag_id} to be parsed",
            lambda: query(db, "SELECT 1 FROM serialized_dag WHERE dag_id = ?", (dag_id,)),
            180,
        )
        airflow_cli(
            senv,
            ["dags", "trigger", dag_id, "--conf", json.dumps({"profiles": profiles})],
            logs / f"trigger-{dest}.log",
        )
        expected_s = len(lists) * profiles / (100 * 250 * scale) * 60 if dest == "ac" else 60
        state = wait_for(
            "the run to end",
            lambda: next(
                (
                    s
                    for (s,) in query(db, "SELECT state FROM dag_run WHERE dag_id = ?", (dag_id,))
                    if s in FINAL_STATES
                ),
                None,
            ),
            3 * expected_s + 600,
            2.0,
        )
    wall_s = time.monotonic() - started
    tasks = {
        task_id: {"state": st, "start": start, "end": end}
        for task_id, st, start, end in query(
            db, "SELECT task_id, state, start_date, end_date FROM task_instance WHERE dag_id = ?", (dag_id,)
        )
    }
    for task_id, value in query(
        db, "SELECT task_id, value FROM xcom WHERE dag_id = ? AND key = 'return_value'", (dag_id,)
    ):
        if task_id in tasks and value is not None:
            tasks[task_id]["report"] = json.loads(value)
    log = [e for e in client.requests_log() if e["api"] == dest or (dest == "cc" and e["api"] == "oauth")]
    # Every request's arrival time, route and status, for a closer look (no headers: they hold keys).
    keep = ("seq", "time", "api", "method", "path", "status")
    (logs / f"{dest}-concurrent.requests.json").write_text(
        json.dumps([{k: e.get(k) for k in keep} for e in log])
    )
    api = [e for e in log if e["api"] == dest]
    throttled = [e for e in api if e.get("status") == 429]
    posts = [e for e in api if e["method"] == "POST" and e["path"] == IMPORT_PATHS[dest]]
    ok_posts = [e for e in posts if isinstance(e.get("status"), int) and 200 <= e["status"] < 300]
    exports = []
    for index, list_id in enumerate(lists):
        task = tasks.get(f"export_{index + 1}", {})
        report = task.get("report") or {}
        expected = expected_emails(profiles_db, index * profiles + 1, (index + 1) * profiles)
        contacts = client.ac_list_contacts(list_id) if dest == "ac" else client.cc_list_contacts(list_id)
        held = [c.get("email") or c.get("email_address") for c in contacts]
        exports.append(
            {
                "task": f"export_{index + 1}",
                "list": list_id,
                "state": task.get("state"),
                "submitted": report.get("submitted"),
                "accepted": report.get("accepted"),
                "duration_s": report.get("duration_s"),
                "requests": report.get("requests"),
                "list_size": len(held),
                "expected": len(expected),
                "exact_list": set(held) == expected and len(held) == len(expected),
            }
        )
    out: dict[str, Any] = {
        "destination": dest,
        "exports": exports,
        "profiles_each": profiles,
        "dag_run_state": state,
        "all_succeeded": all(e["state"] == "success" for e in exports),
        "all_exact": all(e["exact_list"] for e in exports),
        "wall_s": wall_s,
        "api_requests": len(api),
        "throttled": len(throttled),
        "throttled_share": len(throttled) / len(api) if api else None,
        "import_requests": len(posts),
        "import_requests_throttled": len(posts) - len(ok_posts),
        "sandbox_rate_limit_rejections": client.stats().get("rate_limit_rejections"),
    }
    if dest == "ac":
        # "Together": the account's accepted imports, whoever sent them (the sandbox cannot tell the
        # exports apart: one key), over the steady state of the stream, as for a single export.
        times = sorted(e["time"] for e in ok_posts)
        ceiling = 100 * scale
        together = steady_rate(times)
        span = times[-1] - times[0] if len(times) > 1 else 0.0
        out["ceiling_imports_per_min"] = ceiling
        out["together"] = together
        out["ceiling_ratio"] = together["per_min"] / ceiling if together.get("per_min") else None
        out["first_to_last_ratio"] = (len(times) - 1) / span * 60 / ceiling if span > 0 else None
    return out
