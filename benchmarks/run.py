"""``make bench``: export generated profiles to the sandbox as real Airflow tasks and measure how close
the exports come to what the APIs and the machine allow.

What it does, in order:

1. Generates the profiles (SQLite, the package's deterministic generator), cached in
   ``benchmarks/results/profiles.db`` while the generator and the seed are unchanged.
2. Starts the sandbox in its own process (``python -m airflow_provider_ciexport.tools.sandbox``) with every
   documented rate limit enforced and scaled by ``--scale N``, request bodies not recorded, and one
   second of latency on every import request (not scaled: real APIs take that long whatever the rate).
   The connections' extras carry the same scaled limits (ActiveCampaign ``requests_per_second=5N``,
   ``imports_per_minute=100N``; Constant Contact ``requests_per_second=4N``).
3. Migrates an Airflow metadata DB in a temporary ``AIRFLOW_HOME`` and, for each destination, runs
   ``benchmarks/dags/ciexport_bench.py`` with ``dag.test()`` in a fresh process per export: an empty
   segment (the idle baseline), 10,000 profiles and ``--profiles`` profiles. The baselines of the two
   destinations run side by side (they only give peak RSS); the large exports run alone. Each child's
   peak RSS and CPU time come from ``os.wait4``; the sandbox's request log gives the arrival time of
   every request.
4. Measures the Constant Contact floor (``benchmarks/floor.py``): reading the same rows and serialising
   the same bodies, nothing else, right before and right after the Constant Contact export (the fastest
   counts), so that both see the machine at the same speed.
5. Prints a table and writes ``benchmarks/results/latest.json`` (and a timestamped copy).

The figures are printed, never asserted: the exit status is non-zero only when an export failed.

Usage: ``python benchmarks/run.py [--profiles N] [--scale N] [--only ac|cc]``
"""

from __future__ import annotations

import argparse
import hashlib
import importlib.metadata
import json
import math
import os
import platform
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from busy import busy_cores
from shared_account import run_shared_account

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
RESULTS = HERE / "results"
RUNS = RESULTS / "runs"
DAGS = HERE / "dags"
PYTHON = sys.executable

SEED = 42
SMALL = 10_000
IMPORT_LATENCY_S = 1.0
AC_BATCH = 250
CC_MAX_BYTES = 4_000_000
CC_MAX_CONTACTS = 39_999
AC_IMPORT_PATH = "/api/3/import/bulk_import"
CC_IMPORT_PATH = "/v3/activities/contacts_json_import"
#: Real, unscaled ActiveCampaign ceiling: 100 imports a minute of 250 contacts.
AC_FLOOR_MINUTES_1M = 1_000_000 / (100 * AC_BATCH)
MB = 1024 * 1024
#: ``--sandbox-no-gc``: the sandbox's own ``__main__`` with Python's cyclic garbage collector disabled.
SANDBOX_WITHOUT_GC = (
    "import gc, runpy; gc.disable(); "
    "runpy.run_module('airflow_provider_ciexport.tools.sandbox', run_name='__main__', alter_sys=True)"
)

#: name -> (comparison, target, what it means)
GOALS: dict[str, tuple[str, float, str]] = {
    "ac_ceiling_ratio": (">=", 0.97, "AC steady-state imports/min over the configured ceiling"),
    "ac_refused_share": ("<=", 0.01, "AC import requests answered 429 over all import requests"),
    "cc_floor_ratio": ("<=", 2.0, "CC export wall time over read+serialise floor"),
    "ac_requests_ratio": ("<=", 1.05, "AC import requests sent over ceil(contacts/250)"),
    "cc_requests_ratio": ("<=", 1.05, "CC import requests sent over the byte/count minimum"),
    "rss_over_idle_mb": ("<=", 150.0, "peak RSS of the export over an empty task (worst destination)"),
    "rss_growth_mb": ("<=", 100.0, "peak RSS at --profiles over 10,000 profiles (worst destination)"),
    "ac_shared_ceiling_ratio": (
        ">=",
        0.9,
        "AC exports on one account together: imports/min over the ceiling",
    ),
    "ac_shared_throttled_share": ("<=", 0.01, "AC exports on one account: requests answered 429 / all"),
    "cc_shared_throttled_share": ("<=", 0.01, "CC exports on one API key: requests answered 429 / all"),
    "ac_other_app_left_ratio": (
        ">=",
        0.85,
        "AC export beside another app: its imports/min over what the other app leaves",
    ),
    "ac_other_app_refused_share": (
        "<=",
        0.05,
        "AC export beside another app: its import requests answered 429 / all",
    ),
}
#: ``--other-app``: profiles of the export that shares the account with a simulated other app.
OTHER_APP_PROFILES = 200_000


# -- profiles -----------------------------------------------------------------------------------------


def ensure_profiles(count: int, regenerate: bool) -> Path:
    """A SQLite file with at least ``count`` generated profiles (row *n* never depends on the count)."""
    from airflow_provider_ciexport.tools.sandbox import profiles

    db = RESULTS / "profiles.db"
    meta_path = RESULTS / "profiles.json"
    source = Path(profiles.__file__).read_bytes()
    meta = {"seed": SEED, "generator_sha256": hashlib.sha256(source).hexdigest()}
    if not regenerate and db.exists() and meta_path.exists():
        cached = json.loads(meta_path.read_text())
        if all(cached.get(k) == v for k, v in meta.items()) and cached.get("count", 0) >= count:
            print(f"Profiles: reusing {cached['count']:,} generated profiles in {db.relative_to(ROOT)}")
            return db
    print(f"Profiles: generating {count:,} profiles (seed {SEED}) ...", flush=True)
    started = time.monotonic()
    meta_path.unlink(missing_ok=True)
    stats = profiles.generate_profiles(db, count=count, seed=SEED)
    meta_path.write_text(json.dumps({**meta, **stats.as_dict()}, indent=1))
    print(f"Profiles: {count:,} written in {time.monotonic() - started:.0f} s")
    return db


# -- processes ----------------------------------------------------------------------------------------


@dataclass
class ChildResult:
    """A finished child process: exit code, wall time and its own resource usage (``os.wait4``)."""

    returncode: int
    wall_s: float
    maxrss_kb: int
    cpu_s: float
    timed_out: bool


def run_child(cmd: Sequence[str], env: dict[str, str], log: Path, timeout_s: float) -> ChildResult:
    """Run ``cmd`` with output to ``log``; return its exit status and the usage of it alone."""
    started = time.monotonic()
    with log.open("wb") as out:
        proc = subprocess.Popen(  # noqa: S603 - our own interpreter and scripts
            list(cmd), env=env, cwd=ROOT, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
        )
        expired = threading.Event()

        def kill() -> None:
            expired.set()
            os.killpg(proc.pid, signal.SIGKILL)

        timer = threading.Timer(timeout_s, kill)
        timer.start()
        try:
            _, status, usage = os.wait4(proc.pid, 0)
        finally:
            timer.cancel()
        proc.returncode = os.waitstatus_to_exitcode(status)
    return ChildResult(
        returncode=proc.returncode,
        wall_s=time.monotonic() - started,
        maxrss_kb=usage.ru_maxrss,
        cpu_s=usage.ru_utime + usage.ru_stime,
        timed_out=expired.is_set(),
    )


#: The sandbox's nice value while the worker's cores are kept busy (``--busy-cores``).
SANDBOX_NICE = -10


def _raise_own_priority() -> None:
    """In the sandbox's child before it starts: run ahead of the busy loops and the exports, as the
    API's servers, which are not on the worker, would (needs root or CAP_SYS_NICE; else unchanged)."""
    with suppress(OSError):
        os.setpriority(os.PRIO_PROCESS, 0, SANDBOX_NICE)


class Sandbox:
    """The sandbox in its own process, with the control API client and its CPU time."""

    def __init__(
        self,
        scale: float,
        workdir: Path,
        gc_enabled: bool = True,
        timing: str = "sandbox",
        raise_priority: bool = False,
    ) -> None:
        self.scale = scale
        self.timing = timing
        self.workdir = workdir
        self.gc_enabled = gc_enabled
        self.raise_priority = raise_priority
        self.proc: subprocess.Popen[bytes] | None = None
        self.url = ""
        self.nice = 0

    def __enter__(self) -> Sandbox:
        import psutil

        from airflow_provider_ciexport.tools.sandbox.client import SandboxClient

        ready = self.workdir / "sandbox.ready"
        log = (RESULTS / "sandbox.log").open("wb")
        # ``python -m airflow_provider_ciexport.tools.sandbox``, or the same module with the GC off (diagnosis).
        start = (
            ["-m", "airflow_provider_ciexport.tools.sandbox"]
            if self.gc_enabled
            else ["-c", SANDBOX_WITHOUT_GC]
        )
        cmd = [
            PYTHON,
            *start,
            "--port",
            "0",
            "--ready-file",
            str(ready),
            "--rate-scale",
            repr(self.scale),
            "--import-latency",
            repr(IMPORT_LATENCY_S),
            "--timing",
            self.timing,
        ]
        self.proc = subprocess.Popen(  # noqa: S603
            cmd,
            cwd=ROOT,
            stdout=log,
            stderr=subprocess.STDOUT,
            preexec_fn=_raise_own_priority if self.raise_priority else None,
        )
        log.close()
        self.nice = os.getpriority(os.PRIO_PROCESS, self.proc.pid)
        deadline = time.monotonic() + 60
        while not ready.exists():
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.__exit__()
                raise RuntimeError(f"the sandbox did not start; see {RESULTS / 'sandbox.log'}")
            time.sleep(0.1)
        self.url = ready.read_text().strip()
        self.client = SandboxClient(self.url, timeout=120)
        self.process = psutil.Process(self.proc.pid)
        return self

    def __exit__(self, *exc: object) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()

    def cpu_s(self) -> float:
        """CPU seconds the sandbox process has used so far."""
        times = self.process.cpu_times()
        return float(times.user + times.system)

    def rss_mb(self) -> float:
        """The sandbox's resident memory now."""
        return float(self.process.memory_info().rss) / MB


# -- Airflow ----------------------------------------------------------------------------------------


def airflow_env(home: Path, db: Path, sandbox_url: str, scale: float) -> dict[str, str]:
    """The environment of every child: a throwaway AIRFLOW_HOME and the three connections."""
    from airflow_provider_ciexport.tools.sandbox.connections import (
        AC_CONN_ID,
        CC_CONN_ID,
        ac_connection,
        cc_connection,
        connection_env,
    )

    env = {k: v for k, v in os.environ.items() if not k.startswith(("AIRFLOW_", "AIRFLOW__"))}
    env.update(
        {
            "AIRFLOW_HOME": str(home),
            "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": f"sqlite:///{home}/airflow.db",
            "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
            "AIRFLOW__CORE__UNIT_TEST_MODE": "False",
            "AIRFLOW__CORE__DAGS_FOLDER": str(DAGS),
            "AIRFLOW__LOGGING__LOGGING_LEVEL": "INFO",
            "PYTHONPATH": os.pathsep.join(p for p in (str(ROOT), env.get("PYTHONPATH", "")) if p),
            "AIRFLOW_CONN_PROFILES_DB": json.dumps({"conn_type": "sqlite", "host": str(db)}),
            **connection_env(
                {
                    AC_CONN_ID: ac_connection(
                        sandbox_url, requests_per_second=5 * scale, imports_per_minute=100 * scale
                    ),
                    CC_CONN_ID: cc_connection(sandbox_url, requests_per_second=4 * scale),
                }
            ),
        }
    )
    return env


def migrate(env: dict[str, str]) -> None:
    """``airflow db migrate`` in the throwaway AIRFLOW_HOME."""
    print("Airflow: migrating a fresh metadata DB ...", flush=True)
    result = run_child([PYTHON, "-m", "airflow", "db", "migrate"], env, RESULTS / "migrate.log", 600)
    if result.returncode != 0:
        raise RuntimeError(f"airflow db migrate failed; see {RESULTS / 'migrate.log'}")


# -- one export ---------------------------------------------------------------------------------------


@dataclass
class Export:
    """One export task run and what both sides saw of it."""

    destination: str
    profiles: int
    child: ChildResult
    outcome: dict[str, Any]
    stats: dict[str, Any]
    log: list[dict[str, Any]]
    sandbox_cpu_s: float
    derived: dict[str, Any] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        """The task succeeded and returned its report."""
        return (
            self.child.returncode == 0
            and self.outcome.get("task_state") == "success"
            and isinstance(self.outcome.get("report"), dict)
        )

    @property
    def report(self) -> dict[str, Any]:
        """The task's XCom report (empty if it failed)."""
        report = self.outcome.get("report")
        return report if isinstance(report, dict) else {}

    @property
    def rss_mb(self) -> float:
        """Peak RSS of the task's process."""
        return self.child.maxrss_kb / 1024

    def probe(self, stage: str, key: str) -> float | None:
        """A value the task's pre/post-execute hook recorded (see ``dags/ciexport_bench.py``)."""
        value = (self.outcome.get("probes") or {}).get(stage, {}).get(key)
        return float(value) if value is not None else None

    @property
    def execute_cpu_s(self) -> float | None:
        """CPU seconds (all threads) between the operator's pre- and post-execute hooks."""
        pre, post = self.probe("pre", "cpu_s"), self.probe("post", "cpu_s")
        return post - pre if pre is not None and post is not None else None


def expected_seconds(destination: str, profiles: int, scale: float) -> float:
    """About how long an export should take, for the timeout and the progress line."""
    if destination == "ac":
        return profiles / (100 * AC_BATCH * scale) * 60
    return profiles / 20_000


def py_spy_cmd(output: Path) -> list[str]:
    """``py-spy record`` writing collapsed stacks of every thread, idle ones included, to ``output``."""
    exe = shutil.which("py-spy", path=str(Path(PYTHON).parent)) or shutil.which("py-spy")
    if exe is None:
        raise SystemExit("--py-spy needs py-spy: .venv/bin/pip install py-spy")
    return [exe, "record", "--idle", "--threads", "--rate", "200", "--format", "raw", "-o", str(output)]


def run_exports(
    sandbox: Sandbox,
    envs: dict[str, dict[str, str]],
    jobs: Sequence[tuple[str, int]],
    scale: float,
    py_spy: bool = False,
    config: dict[str, Any] | None = None,
    tag_suffix: str = "",
) -> list[Export]:
    """Reset the sandbox, run export tasks side by side (a fresh process each) and collect both sides' records.

    Only the small baseline runs share a phase, one per destination, so their requests are told apart
    by API, and each destination has its own copy of the metadata DB (``envs``): two ``dag.test()``
    processes writing the same DAGs to one DB collide. The sandbox CPU of a shared phase is the phase's.
    With ``py_spy`` each task process and the sandbox are sampled into ``results/runs/<tag>.*.pyspy``
    (peak RSS and CPU figures then include the profiler's overhead: use it to investigate only).
    """
    largest = max(profiles for _, profiles in jobs)
    sandbox.client.reset(request_log_size=len(jobs) * max(5000, largest // AC_BATCH * 6 + 5000))
    if config:
        sandbox.client.configure(**config)
    expected = max(expected_seconds(dest, profiles, scale) for dest, profiles in jobs)
    names = " and ".join(f"{dest.upper()} {profiles:,}" for dest, profiles in jobs)
    print(f"  {names} profiles: running (about {expected + 15:.0f} s) ...", flush=True)
    tags = [f"{dest}-{profiles}{tag_suffix}" for dest, profiles in jobs]
    spy: subprocess.Popen[bytes] | None = None
    cmds: list[list[str]] = []
    for (dest, profiles), tag in zip(jobs, tags, strict=True):
        (RUNS / f"{tag}.json").unlink(missing_ok=True)
        cmd = [PYTHON, str(HERE / "task_runner.py"), dest, str(profiles), str(RUNS / f"{tag}.json")]
        cmds.append([*py_spy_cmd(RUNS / f"{tag}.task.pyspy"), "--", *cmd] if py_spy else cmd)
    if py_spy:
        spy_cmd = [*py_spy_cmd(RUNS / f"{tags[0]}.sandbox.pyspy"), "--pid", str(sandbox.process.pid)]
        spy = subprocess.Popen(spy_cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # noqa: S603
    cpu_before = sandbox.cpu_s()
    children: dict[str, ChildResult] = {}

    def run(dest: str, tag: str, cmd: list[str]) -> None:
        children[tag] = run_child(cmd, envs[dest], RUNS / f"{tag}.log", timeout_s=3 * expected + 600)

    threads = [
        threading.Thread(target=run, args=(dest, tag, cmd))
        for (dest, _), tag, cmd in zip(jobs, tags, cmds, strict=True)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    sandbox_cpu = sandbox.cpu_s() - cpu_before
    if spy is not None:
        spy.send_signal(signal.SIGINT)  # py-spy writes its output on SIGINT
        spy.wait(60)
    stats = sandbox.client.stats()
    everything = sandbox.client.requests_log()
    exports = []
    for (dest, profiles), tag in zip(jobs, tags, strict=True):
        result_path = RUNS / f"{tag}.json"
        outcome: dict[str, Any] = (
            json.loads(result_path.read_text()) if result_path.exists() else {"error": "no result written"}
        )
        # Only Constant Contact signs in (oauth), so the APIs tell the side-by-side runs apart.
        apis = ("cc", "oauth") if dest == "cc" else (dest,)
        log = [e for e in everything if e["api"] in apis]
        # Every request's arrival time, route, status and size, for a closer look (no headers: they hold keys).
        keep = ("seq", "time", "api", "method", "path", "status", "body_bytes")
        (RUNS / f"{tag}.requests.json").write_text(json.dumps([{k: e.get(k) for k in keep} for e in log]))
        child = children[tag]
        export = Export(dest, profiles, child, outcome, stats, log, sandbox_cpu)
        if export.ok:
            print(
                f"    {dest.upper()} {profiles:>9,}: {export.report.get('duration_s', 0):.1f} s export, "
                f"{child.wall_s:.1f} s process, peak RSS {export.rss_mb:.0f} MB"
            )
        else:
            why = "timed out" if child.timed_out else outcome.get("error") or outcome.get("task_state")
            print(f"    {dest.upper()} {profiles:>9,}: FAILED ({why}); see {RUNS / (tag + '.log')}")
        exports.append(export)
    return exports


# -- analysis -----------------------------------------------------------------------------------------


def import_posts(export: Export) -> list[dict[str, Any]]:
    """Every import request the sandbox received for this export (throttled ones included)."""
    path = AC_IMPORT_PATH if export.destination == "ac" else CC_IMPORT_PATH
    return [e for e in export.log if e["method"] == "POST" and e["path"] == path]


def accepted(entry: dict[str, Any]) -> bool:
    """The request was answered with a 2xx status."""
    return isinstance(entry.get("status"), int) and 200 <= entry["status"] < 300


def steady_rate(times: list[float]) -> dict[str, Any]:
    """Imports per minute over the steady state: the import stream minus its first and last stretch.

    The trimmed stretch at each end is the larger of 3 s and 5% of the stream, so that the start (the
    first import waits for the first body) and the tail (the last, partial batch) do not count.
    """
    times = sorted(times)
    if len(times) < 3:
        return {"imports": len(times), "span_s": 0.0, "per_min": None, "window_s": 0.0}
    span = times[-1] - times[0]
    trim = max(3.0, 0.05 * span)
    start, end = times[0] + trim, times[-1] - trim
    if end - start < 0.5 * span:  # a short stream: use all of it
        start, end = times[0], times[-1]
        count = len(times) - 1  # intervals between the first and the last
    else:
        count = sum(1 for t in times if start <= t < end)
    window = end - start
    return {
        "imports": len(times),
        "span_s": span,
        "window_s": window,
        "window_imports": count,
        "per_min": count / window * 60 if window > 0 else None,
    }


def analyse_ac(export: Export, scale: float) -> dict[str, Any]:
    """Ceiling ratio, requests ratio and the projection to 1M profiles at the real limits."""
    report = export.report
    posts = import_posts(export)
    ok_times = [e["time"] for e in posts if accepted(e)]
    contacts = int(report.get("submitted") or 0)
    minimum = math.ceil(contacts / AC_BATCH)
    ceiling = 100 * scale
    steady = steady_rate(ok_times)
    per_min = steady["per_min"]
    out: dict[str, Any] = {
        "contacts": contacts,
        "import_requests": len(posts),
        "import_requests_accepted": len(ok_times),
        "import_requests_throttled": len(posts) - len(ok_times),
        "min_import_requests": minimum,
        "requests_ratio": len(posts) / minimum if minimum else None,
        "refused_share": (len(posts) - len(ok_times)) / len(posts) if posts else None,
        "api_requests_total": len([e for e in export.log if e["api"] == "ac"]),
        "client_reported_requests": report.get("requests"),
        "sandbox_rate_limit_rejections": export.stats.get("rate_limit_rejections"),
        "sandbox_limit_violations": export.stats.get("limit_violation_count"),
        "ceiling_imports_per_min": ceiling,
        "steady_state": steady,
        "ceiling_ratio": per_min / ceiling if per_min else None,
        "overall_imports_per_min": (
            len(ok_times) / report["duration_s"] * 60 if report.get("duration_s") else None
        ),
    }
    if per_min and export.profiles:
        imports_1m = math.ceil(contacts * (1_000_000 / export.profiles) / AC_BATCH)
        # Outside the import stream (start-up, the tail of confirmations): latency-bound, not scaled.
        fixed_s = max(0.0, float(report.get("duration_s") or 0) - steady["span_s"])
        out["imports_for_1m_profiles"] = imports_1m
        out["fixed_overhead_s"] = fixed_s
        out["projected_minutes_1m"] = imports_1m / (per_min / scale) + fixed_s / 60
    return out


def analyse_other_app(export: Export, scale: float, other_per_min: float) -> dict[str, Any]:
    """The export's steady import rate against what the other app leaves of the ceiling."""
    if not export.ok:
        return {"error": export.outcome.get("error") or export.outcome.get("task_state")}
    info = analyse_ac(export, scale)
    left = (100 - other_per_min) * scale
    per_min = info["steady_state"]["per_min"]
    other = (export.stats.get("other_app") or {}).get("ac_imports_per_minute") or {}
    return {
        "profiles": export.profiles,
        "other_app_imports_per_min": other_per_min,
        "left_imports_per_min": left,
        "per_min": per_min,
        "left_ratio": per_min / left if per_min else None,
        "import_requests": info["import_requests"],
        "import_requests_throttled": info["import_requests_throttled"],
        "refused_share": info["refused_share"],
        "other_app_admitted": other.get("admitted"),
        "other_app_refused": other.get("refused"),
        "export_duration_s": export.report.get("duration_s"),
    }


def analyse_cc(export: Export, floor: dict[str, Any] | None) -> dict[str, Any]:
    """Requests ratio and the floor ratio; checks that the bodies sent are the floor's bodies."""
    report = export.report
    posts = import_posts(export)
    sent_sizes = sorted(e["body_bytes"] for e in posts if accepted(e))
    contacts = int(report.get("submitted") or 0)
    out: dict[str, Any] = {
        "contacts": contacts,
        "import_requests": len(posts),
        "import_requests_accepted": len(sent_sizes),
        "import_requests_throttled": len(posts) - len(sent_sizes),
        "api_requests_total": len(export.log),
        "api_requests_by_api": {
            api: len([e for e in export.log if e["api"] == api]) for api in ("cc", "oauth")
        },
        "client_reported_requests": report.get("requests"),
        "sandbox_rate_limit_rejections": export.stats.get("rate_limit_rejections"),
        "sandbox_limit_violations": export.stats.get("limit_violation_count"),
        "largest_body_bytes": max(sent_sizes, default=0),
        "export_duration_s": report.get("duration_s"),
    }
    if floor is not None:
        contact_bytes = int(floor["contact_bytes"])
        minimum = max(math.ceil(contact_bytes / CC_MAX_BYTES), math.ceil(contacts / CC_MAX_CONTACTS))
        out.update(
            {
                "contact_bytes": contact_bytes,
                "min_import_requests": minimum,
                "requests_ratio": len(posts) / minimum if minimum else None,
                "floor_s": floor["seconds"],
                "floor_ratio": (report["duration_s"] / floor["seconds"])
                if report.get("duration_s")
                else None,
                "bodies_match_floor": sent_sizes == sorted(floor["body_sizes"]),
                "floor_contacts": floor["contacts"],
            }
        )
    return out


def run_floor(db: Path, profiles: int, env: dict[str, str], repeats: int, when: str) -> list[dict[str, Any]]:
    """``repeats`` floor measurements in a fresh process (``when``: ``before`` or ``after`` the export)."""
    print(
        f"  CC floor {when} the export: reading and serialising {profiles:,} profiles x{repeats} ...", end=""
    )
    sys.stdout.flush()
    result_path = RUNS / f"floor-{when}.json"
    child = run_child(
        [PYTHON, str(HERE / "floor.py"), str(db), str(profiles), str(repeats), str(result_path)],
        env,
        RUNS / f"floor-{when}.log",
        timeout_s=1800,
    )
    if child.returncode != 0:
        print(f" FAILED; see {RUNS / f'floor-{when}.log'}")
        return []
    runs: list[dict[str, Any]] = json.loads(result_path.read_text())["runs"]
    print(" " + ", ".join(f"{r['seconds']:.2f} s" for r in runs))
    return runs


def fastest_floor(runs: list[dict[str, Any]]) -> dict[str, Any] | None:
    """The fastest floor measurement, with every measurement's time."""
    if not runs:
        return None
    best = dict(min(runs, key=lambda r: r["seconds"]))
    best["all_seconds"] = [r["seconds"] for r in runs]
    return best


# -- report -------------------------------------------------------------------------------------------


def reaches(value: float | None, op: str, target: float) -> bool | None:
    """Whether ``value`` reaches ``target`` by ``op`` (``>=`` or ``<=``); ``None`` when not measured."""
    return None if value is None else (value >= target if op == ">=" else value <= target)


def goal(name: str, value: float | None) -> dict[str, Any]:
    """A goal's value, target and verdict (``None`` when not measured)."""
    op, target, meaning = GOALS[name]
    return {"value": value, "goal": f"{op} {target:g}", "met": reaches(value, op, target), "meaning": meaning}


def summarise(
    args: argparse.Namespace,
    runs: dict[tuple[str, int], Export],
    floor: dict[str, Any] | None,
    destinations: Sequence[str],
    total_s: float,
    shared: dict[str, dict[str, Any]],
    other_app: dict[str, Any],
) -> dict[str, Any]:
    """Every figure of the run as one JSON-ready dict."""
    profiles = args.profiles
    per_dest: dict[str, dict[str, Any]] = {}
    for dest in destinations:
        main = runs.get((dest, profiles))
        idle = runs.get((dest, 0))
        small = runs.get((dest, SMALL))
        info: dict[str, Any] = {}
        if main is not None and main.ok:
            info = analyse_ac(main, args.scale) if dest == "ac" else analyse_cc(main, floor)
            report = main.report
            info["read"] = report.get("read")
            info["invalid"] = report.get("invalid")
            info["duplicates"] = report.get("duplicates")
            info["accepted"] = report.get("accepted")
            info["rejected"] = report.get("rejected")
            info["batches"] = report.get("batches")
            info["export_duration_s"] = report.get("duration_s")
            info["task_duration_s"] = main.outcome.get("task_duration_s")
            info["process_wall_s"] = main.child.wall_s
            info["cpu_s"] = main.child.cpu_s
            info["execute_cpu_s"] = main.execute_cpu_s
            pre_rss = main.probe("pre", "maxrss_kb")
            info["peak_rss_before_execute_mb"] = pre_rss / 1024 if pre_rss is not None else None
            info["peak_rss_mb"] = main.rss_mb
            info["sandbox_cpu_s"] = main.sandbox_cpu_s
            info["sandbox_cpu_share"] = main.sandbox_cpu_s / max(main.child.wall_s, 1e-9)
            if idle is not None and idle.ok:
                info["idle_peak_rss_mb"] = idle.rss_mb
                info["idle_cpu_s"] = idle.child.cpu_s
                info["rss_over_idle_mb"] = main.rss_mb - idle.rss_mb
                info["cpu_s_per_1k_over_idle_process"] = (
                    (main.child.cpu_s - idle.child.cpu_s) / profiles * 1000
                )
            if main.execute_cpu_s is not None:
                info["cpu_s_per_1k"] = main.execute_cpu_s / profiles * 1000
            info["cpu_s_per_1k_whole_process"] = main.child.cpu_s / profiles * 1000
            if small is not None and small.ok and small is not main:
                info["small_peak_rss_mb"] = small.rss_mb
                info["rss_growth_mb"] = main.rss_mb - small.rss_mb
        per_dest[dest] = info

    def worst(key: str) -> float | None:
        values = [d[key] for d in per_dest.values() if d.get(key) is not None]
        return max(values) if values else None

    ac, cc = per_dest.get("ac", {}), per_dest.get("cc", {})
    goals = {
        "ac_ceiling_ratio": goal("ac_ceiling_ratio", ac.get("ceiling_ratio")),
        "ac_refused_share": goal("ac_refused_share", ac.get("refused_share")),
        "cc_floor_ratio": goal("cc_floor_ratio", cc.get("floor_ratio")),
        "ac_requests_ratio": goal("ac_requests_ratio", ac.get("requests_ratio")),
        "cc_requests_ratio": goal("cc_requests_ratio", cc.get("requests_ratio")),
        "rss_over_idle_mb": goal("rss_over_idle_mb", worst("rss_over_idle_mb")),
        "rss_growth_mb": goal("rss_growth_mb", worst("rss_growth_mb")),
        "ac_shared_ceiling_ratio": goal(
            "ac_shared_ceiling_ratio", (shared.get("ac") or {}).get("ceiling_ratio")
        ),
        "ac_shared_throttled_share": goal(
            "ac_shared_throttled_share", (shared.get("ac") or {}).get("throttled_share")
        ),
        "cc_shared_throttled_share": goal(
            "cc_shared_throttled_share", (shared.get("cc") or {}).get("throttled_share")
        ),
        "ac_other_app_left_ratio": goal("ac_other_app_left_ratio", other_app.get("left_ratio")),
        "ac_other_app_refused_share": goal("ac_other_app_refused_share", other_app.get("refused_share")),
    }
    return {
        "generated_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "profiles": profiles,
        "scale": args.scale,
        "destinations": list(destinations),
        "ac_ceiling_ratio": goals["ac_ceiling_ratio"]["value"],
        "ac_projected_minutes_1m": ac.get("projected_minutes_1m"),
        "ac_floor_minutes_1m": AC_FLOOR_MINUTES_1M,
        "cc_floor_ratio": goals["cc_floor_ratio"]["value"],
        "ac_requests_ratio": goals["ac_requests_ratio"]["value"],
        "cc_requests_ratio": goals["cc_requests_ratio"]["value"],
        "ac_api_requests_total": ac.get("api_requests_total"),
        "cc_api_requests_total": cc.get("api_requests_total"),
        "rss_over_idle_mb": goals["rss_over_idle_mb"]["value"],
        "rss_growth_mb": goals["rss_growth_mb"]["value"],
        "cpu_s_per_1k": {d: per_dest[d].get("cpu_s_per_1k") for d in destinations},
        "goals": goals,
        "all_goals_met": all(g["met"] for g in goals.values() if g["met"] is not None),
        "by_destination": per_dest,
        "shared_account": shared,
        "other_app": other_app,
        "cc_floor": {k: v for k, v in (floor or {}).items() if k != "body_sizes"} or None,
        "runs": [
            {
                "destination": e.destination,
                "profiles": e.profiles,
                "ok": e.ok,
                "error": e.outcome.get("error"),
                "task_state": e.outcome.get("task_state"),
                "export_duration_s": e.report.get("duration_s"),
                "task_duration_s": e.outcome.get("task_duration_s"),
                "process_wall_s": e.child.wall_s,
                "peak_rss_mb": e.rss_mb,
                "cpu_s": e.child.cpu_s,
                "execute_cpu_s": e.execute_cpu_s,
                "sandbox_cpu_s": e.sandbox_cpu_s,
                "report": {k: v for k, v in e.report.items() if k != "jobs"}
                | {"jobs": len(e.report.get("jobs") or [])},
            }
            for e in runs.values()
        ],
        "settings": {
            "sandbox": {
                "gc_enabled": not args.sandbox_no_gc,
                "timing": args.timing,
                "rate_scale": args.scale,
                "import_latency_s": IMPORT_LATENCY_S,
                "record_bodies": False,
            },
            "ac_connection_extras": {
                "requests_per_second": 5 * args.scale,
                "imports_per_minute": 100 * args.scale,
            },
            "cc_connection_extras": {"requests_per_second": 4 * args.scale},
            "floor_repeats": args.floor_repeats,
            "busy_cores": args.busy_cores,
        },
        "machine": {
            "cpus": os.cpu_count(),
            "python": platform.python_version(),
            "airflow": importlib.metadata.version("apache-airflow"),
            "platform": platform.platform(),
        },
        "bench_wall_s": total_s,
    }


def _fmt(value: Any, spec: str = ".2f") -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return format(value, spec)
    return f"{value:,}" if isinstance(value, int) else str(value)


def goal_notes(summary: dict[str, Any]) -> dict[str, str]:
    """What stands behind each goal's value, in words (the table's detail column; the docs use it too).

    :param summary: the content of ``benchmarks/results/latest.json``.
    """
    ac = summary["by_destination"].get("ac", {})
    cc = summary["by_destination"].get("cc", {})
    notes = {
        "ac_ceiling_ratio": (
            f"{_fmt((ac.get('steady_state') or {}).get('per_min'), '.0f')}/min of "
            f"{_fmt(ac.get('ceiling_imports_per_min'), '.0f')}; projected 1M at real limits "
            f"{_fmt(summary['ac_projected_minutes_1m'], '.1f')} min (floor {AC_FLOOR_MINUTES_1M:.1f})"
        ),
        "cc_floor_ratio": f"{_fmt(cc.get('export_duration_s'), '.1f')} s vs floor {_fmt(cc.get('floor_s'), '.1f')} s"
        + (
            " (same bodies)"
            if cc.get("bodies_match_floor")
            else " (bodies differ from the floor's!)"
            if cc
            else ""
        ),
        "ac_requests_ratio": (
            f"{_fmt(ac.get('import_requests'))} imports (min {_fmt(ac.get('min_import_requests'))}, "
            f"{_fmt(ac.get('import_requests_throttled'))} throttled); {_fmt(ac.get('api_requests_total'))} API requests"
        ),
        "cc_requests_ratio": (
            f"{_fmt(cc.get('import_requests'))} imports (min {_fmt(cc.get('min_import_requests'))}); "
            f"{_fmt(cc.get('api_requests_total'))} API requests"
        ),
        "rss_over_idle_mb": "AC {} / CC {}".format(
            _fmt(ac.get("rss_over_idle_mb"), ".0f"), _fmt(cc.get("rss_over_idle_mb"), ".0f")
        ),
        "rss_growth_mb": "AC {} / CC {}".format(
            _fmt(ac.get("rss_growth_mb"), ".0f"), _fmt(cc.get("rss_growth_mb"), ".0f")
        ),
        "ac_refused_share": (
            f"{_fmt(ac.get('import_requests_throttled'))} of {_fmt(ac.get('import_requests'))} imports answered 429"
        ),
    }
    for dest, info in summary["shared_account"].items():
        exports = info.get("exports") or []
        outcome = (
            f"{len(exports)} exports: "
            + ", ".join(
                f"{e['task']} {e['state']} {_fmt(e['accepted'])} {'exact' if e['exact_list'] else 'NOT EXACT'}"
                for e in exports
            )
            + f"; {_fmt(info.get('throttled'))} of {_fmt(info.get('api_requests'))} requests answered 429"
        )
        if dest == "ac":
            per_min = (info.get("together") or {}).get("per_min")
            notes["ac_shared_ceiling_ratio"] = (
                f"{_fmt(per_min, '.0f')}/min of {_fmt(info.get('ceiling_imports_per_min'), '.0f')} together "
                f"(first to last import {_fmt(info.get('first_to_last_ratio'))})"
            )
        notes[f"{dest}_shared_throttled_share"] = outcome
    other = summary["other_app"]
    if other.get("per_min"):
        notes["ac_other_app_left_ratio"] = (
            f"{_fmt(other['per_min'], '.0f')}/min of the {_fmt(other['left_imports_per_min'], '.0f')} the other app "
            f"({_fmt(other['other_app_imports_per_min'], 'g')} imports/min unscaled) leaves; "
            f"{_fmt(other['profiles'])} profiles"
        )
        notes["ac_other_app_refused_share"] = (
            f"{_fmt(other['import_requests_throttled'])} of {_fmt(other['import_requests'])} imports answered 429; "
            f"the other app's: {_fmt(other.get('other_app_admitted'))} admitted, "
            f"{_fmt(other.get('other_app_refused'))} refused and tried again"
        )
    return notes


def goal_rows(summary: dict[str, Any]) -> list[tuple[str, str, str, str, str]]:
    """The goals table: (goal, value, target, PASS/FAIL/-, detail) per goal, then the CPU figure.

    :param summary: the content of ``benchmarks/results/latest.json``.
    """
    notes = goal_notes(summary)
    rows = [
        (
            name,
            _fmt(g["value"], ".3f"),
            g["goal"],
            "-" if g["met"] is None else "PASS" if g["met"] else "FAIL",
            notes.get(name, ""),
        )
        for name, g in summary["goals"].items()
    ]
    cpu = summary["cpu_s_per_1k"]
    rows.append(
        (
            "cpu_s_per_1k",
            "",
            "",
            "",
            " / ".join(f"{d.upper()} {_fmt(v, '.3f')}" for d, v in cpu.items())
            + " (client CPU of execute(), all threads, per 1,000 profiles)",
        )
    )
    return rows


def print_tables(summary: dict[str, Any], runs: dict[tuple[str, int], Export]) -> None:
    """The runs, then the goals."""
    print()
    head = f"{'export':<14}{'valid':>10}{'export s':>10}{'task s':>9}{'imports':>9}{'requests':>10}"
    head += f"{'peak RSS MB':>13}{'CPU s':>8}{'exec CPU s':>12}{'sandbox CPU s':>15}"
    print(head)
    print("-" * len(head))
    for export in sorted(runs.values(), key=lambda e: (e.destination, e.profiles)):
        report = export.report
        imports = len(import_posts(export)) if export.ok else None
        print(
            f"{export.destination.upper() + ' ' + format(export.profiles, ','):<14}"
            f"{_fmt(report.get('submitted')):>10}{_fmt(report.get('duration_s'), '.1f'):>10}"
            f"{_fmt(export.outcome.get('task_duration_s'), '.1f'):>9}{_fmt(imports):>9}"
            f"{_fmt(len(export.log) if export.ok else None):>10}{export.rss_mb:>13.0f}"
            f"{export.child.cpu_s:>8.1f}{_fmt(export.execute_cpu_s, '.1f'):>12}{export.sandbox_cpu_s:>15.1f}"
        )
    print()
    head = f"{'goal':<26}{'value':>7}  {'target':<9}{'':<6}  detail"
    print(head)
    print("-" * 100)
    for name, value, target, verdict, detail in goal_rows(summary):
        print(f"{name:<26}{value:>7}  {target:<9}{verdict:<6}  {detail}")
    print(
        f"\n{summary['profiles']:,} profiles, scale N={summary['scale']:g}, "
        f"timing model {summary['settings']['sandbox']['timing']}, "
        f"{summary['settings']['busy_cores']} busy core(s), bench took {summary['bench_wall_s']:.0f} s"
    )


# -- main ---------------------------------------------------------------------------------------------


@contextmanager
def airflow_home(keep: bool) -> Iterator[Path]:
    """A throwaway AIRFLOW_HOME, removed afterwards unless ``keep``."""
    home = Path(tempfile.mkdtemp(prefix="ciexport-bench-"))
    try:
        yield home
    finally:
        if keep:
            print(f"Kept AIRFLOW_HOME {home}")
        else:
            shutil.rmtree(home, ignore_errors=True)


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    """Command-line options."""
    parser = argparse.ArgumentParser(prog="benchmarks/run.py", description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--profiles", type=int, default=1_000_000, help="profiles per export (default 1,000,000)"
    )
    parser.add_argument(
        "--scale",
        type=float,
        default=20.0,
        help="rate-limit scale N on both sides (default 20: AC 1M in ~2 min)",
    )
    parser.add_argument("--only", choices=("ac", "cc"), help="run one destination only")
    parser.add_argument(
        "--floor-repeats",
        type=int,
        default=1,
        help="floor measurements just before and again just after the CC export; the fastest counts",
    )
    parser.add_argument(
        "--concurrent",
        type=int,
        default=100_000,
        help="profiles per export of the concurrent scenario: 3 AC / 2 CC exports to one account under a "
        "real scheduler (default 100,000; 0 skips it)",
    )
    parser.add_argument(
        "--other-app",
        type=float,
        default=30.0,
        help="imports a minute (unscaled) another app spends on the ActiveCampaign account while an export "
        f"of {OTHER_APP_PROFILES:,} profiles runs beside it (default 30; 0 skips it)",
    )
    parser.add_argument(
        "--timing",
        choices=("sandbox", "strict"),
        default="sandbox",
        help="the sandbox's timing model of the documented limits: its own (default), or strict sliding "
        "windows counting refused requests too, with a latency drawn per request (docs/sandbox.md)",
    )
    parser.add_argument(
        "--busy-cores",
        type=int,
        default=0,
        help="busy-loop processes keeping N cores saturated while the exports run, so the pace is "
        "measured on a busy worker (default 0)",
    )
    parser.add_argument(
        "--out",
        type=Path,
        help="write the results to this file only (not latest.json nor a timestamped copy): for "
        "benchmarks/pace.py's runs",
    )
    parser.add_argument("--regenerate", action="store_true", help="generate the profiles even if cached")
    parser.add_argument("--keep-home", action="store_true", help="keep the temporary AIRFLOW_HOME")
    parser.add_argument(
        "--sandbox-no-gc",
        action="store_true",
        help="run the sandbox with Python's cyclic GC disabled (diagnosis: its pauses stall its event loop, "
        "which bunches request arrivals into its scaled per-second windows)",
    )
    parser.add_argument(
        "--py-spy",
        action="store_true",
        help="sample each export and the sandbox with py-spy into results/runs/*.pyspy (to investigate)",
    )
    args = parser.parse_args(argv)
    if args.profiles < 1:
        parser.error("--profiles must be at least 1")
    if args.scale <= 0:
        parser.error("--scale must be positive")
    if args.busy_cores < 0:
        parser.error("--busy-cores must be 0 or more")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    """Run the benchmark; non-zero exit only if an export failed."""
    args = parse_args(argv)
    destinations = [args.only] if args.only else ["ac", "cc"]
    started = time.monotonic()
    RUNS.mkdir(parents=True, exist_ok=True)
    sys.path.insert(0, str(ROOT))
    db = ensure_profiles(max(args.profiles, SMALL, 3 * args.concurrent), args.regenerate)
    sizes = sorted({0, SMALL, args.profiles} if args.profiles > SMALL else {0, args.profiles})
    runs: dict[tuple[str, int], Export] = {}
    with (
        airflow_home(args.keep_home) as home,
        Sandbox(args.scale, home, not args.sandbox_no_gc, args.timing, args.busy_cores > 0) as sandbox,
        busy_cores(args.busy_cores) as busy,
    ):
        print(
            f"Sandbox: {sandbox.url} (pid {sandbox.process.pid}), timing model {args.timing}, "
            f"rate_scale={args.scale:g}, "
            f"import_latency_s={IMPORT_LATENCY_S:g}, record_bodies=False"
            + (", cyclic GC disabled" if args.sandbox_no_gc else "")
            + (f", {len(busy)} busy core(s) (busy-loop pids {', '.join(map(str, busy))})" if busy else "")
            + (f", sandbox at nice {sandbox.nice}" if busy else "")
        )
        env = airflow_env(home, db, sandbox.url, args.scale)
        migrate(env)
        envs = {}
        for dest in destinations:
            shutil.copyfile(home / "airflow.db", home / f"airflow-{dest}.db")
            envs[dest] = {**env, "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": f"sqlite:///{home}/airflow-{dest}.db"}
        print("Exports: one dag.test() process each; the small baselines of both destinations side by side")
        # The baselines only give peak RSS; the large exports, which give every other figure, run alone.
        phases = [[(dest, size) for dest in destinations] for size in sizes[:-1]]
        phases += [[(dest, sizes[-1])] for dest in destinations]
        floor_runs: list[dict[str, Any]] = []
        for phase in phases:
            # The floor is measured right before and right after the export it is compared with, so
            # that both see the same machine: a shared machine's speed drifts by tens of percent.
            bracket = phase == [("cc", sizes[-1])]
            if bracket:
                floor_runs += run_floor(db, args.profiles, env, args.floor_repeats, "before")
            for export in run_exports(sandbox, envs, phase, args.scale, args.py_spy):
                runs[(export.destination, export.profiles)] = export
            if bracket:
                floor_runs += run_floor(db, args.profiles, env, args.floor_repeats, "after")
        floor = fastest_floor(floor_runs)
        other_app: dict[str, Any] = {}
        if args.other_app and "ac" in destinations:
            print(
                f"Another app spending {args.other_app:g} of ActiveCampaign's 100 imports a minute (and 1 "
                "request a second) beside an export"
            )
            profiles = min(args.profiles, OTHER_APP_PROFILES)
            config = {
                "ac_other_app_imports_per_minute": args.other_app,
                "ac_other_app_requests_per_second": 1.0,
            }
            (beside,) = run_exports(
                sandbox, envs, [("ac", profiles)], args.scale, args.py_spy, config, "-other-app"
            )
            other_app = analyse_other_app(beside, args.scale, args.other_app)
            sandbox.client.configure(
                ac_other_app_imports_per_minute=0.0, ac_other_app_requests_per_second=0.0
            )
        shared: dict[str, dict[str, Any]] = {}
        if args.concurrent:
            print(
                "Concurrent exports on one account: a real scheduler, the LocalExecutor, a pool per account"
            )
            for dest in destinations:
                try:
                    shared[dest] = run_shared_account(
                        dest, args.concurrent, args.scale, sandbox.client, env, home, db, RUNS, steady_rate
                    )
                except RuntimeError as exc:
                    print(f"    {dest.upper()}: FAILED ({exc})")
                    shared[dest] = {"error": str(exc), "all_succeeded": False, "all_exact": False}
    summary = summarise(args, runs, floor, destinations, time.monotonic() - started, shared, other_app)
    summary["settings"]["sandbox"]["nice"] = sandbox.nice
    print_tables(summary, runs)
    text = json.dumps(summary, indent=2, default=str) + "\n"
    stamp = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%SZ")
    written = [RESULTS / f"run-{stamp}-{args.profiles}.json"]
    if not (args.sandbox_no_gc or args.py_spy):  # diagnostic runs do not replace the standard figures
        written.insert(0, RESULTS / "latest.json")
    if args.out:
        written = [args.out.resolve()]
    for path in written:
        path.write_text(text)
    print(f"Wrote {', '.join(str(p.relative_to(ROOT)) for p in written)}")
    shared_ok = all(info.get("all_succeeded") and info.get("all_exact") for info in shared.values())
    other_ok = "error" not in other_app
    return 0 if all(e.ok for e in runs.values()) and shared_ok and other_ok else 1


if __name__ == "__main__":
    sys.exit(main())
