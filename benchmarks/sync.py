"""Keeping lists in sync: what a daily re-export with 2% churn costs.

``python benchmarks/sync.py`` (run by ``make bench`` after the export benchmark) prints and writes
``benchmarks/results/sync.json``:

1. **state**: a 1,000,000-contact sync state (as a first sync writes it) is read, 1,000,000 contacts are
   diffed against it (1% new, 0.5% changed, 0.5% left the segment) and the new state is written, in a
   fresh process: CPU seconds of the three together, and the peak RSS over the process's RSS before.
2. **requests**: real mirror exports of ``--profiles`` contacts (default 20,000) to the sandbox, through
   the operators' engine and hooks over HTTP: a first sync, a re-export after 2% churn and an unchanged
   re-export. The sandbox counts every request; the churn run's counts are scaled to 1,000,000
   contacts and turned into minutes at the real, unscaled limits (ActiveCampaign 100 imports a minute
   and 5 requests a second; Constant Contact 4 requests a second).
3. **memory**: the export's peak RSS in a real Airflow task (``dag.test()`` in a fresh process, as
   ``benchmarks/run.py`` measures it, with its machinery) for a mirror re-export of ``--memory-profiles``
   profiles (default 1,000,000) with a state, after 2% churn, to both destinations of a sandbox at
   ``--scale`` (default 20) over HTTP, minus the peak RSS of an empty-segment task. The first sync
   that writes the state and fills the lists is a real task too, at ``--first-sync-scale`` (default
   20, as the re-export) with no import latency; its peak is reported beside the goal's figure.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results" / "sync.json"
#: The memory goal: the re-export's peak RSS over an empty task, MB.
RSS_GOAL_MB = 150.0
IDENTITY_ARGS = (
    "ActiveCampaign",
    "https://bench.api-us1.com/api/3",
    ["2"],
    {"email": "email", "first_name": "fn"},
)


def bench_identity_and_keys() -> tuple[Any, Any]:
    """The benchmarks' state identity (:data:`IDENTITY_ARGS`) and signing keys."""
    from airflow_provider_ciexport.export.state import StateIdentity, StateKeys

    return StateIdentity.of(*IDENTITY_ARGS), StateKeys(["the bench's state key"], "the bench")


def _rss_mb() -> float:
    with open("/proc/self/status") as f:
        return int(f.read().split("VmRSS:")[1].split()[0]) / 1024


def _body(i: int, changed: bool = False) -> bytes:
    return f'{{"email":"person.{i}@example.com","first_name":"N{i}{"x" if changed else ""}"}}'.encode()


def first_sync_diff(state: Any, count: int) -> Any:
    """The diff of a first sync of ``count`` contacts into the empty ``state``, every batch confirmed."""
    from airflow_provider_ciexport.export.sync import BatchEntries, SegmentDiff

    diff = SegmentDiff(state, mirror=True)
    entries = BatchEntries()
    for i in range(count):
        email = f"person.{i}@example.com"
        _, index, key, digest = diff.classify(email, _body(i))
        entries.add(index, key, digest, email)
        if len(entries) >= 10_000:
            diff.confirm(entries, None, True)
            entries = BatchEntries()
    diff.confirm(entries, None, True)
    return diff


def churn_diff(state: Any, count: int) -> Any:
    """The diff of a re-export of the first sync's segment with 0.5% left (every 200th), 0.5% changed
    (the next one) and 1% new (past the end), the changes confirmed."""
    from airflow_provider_ciexport.export.sync import UNCHANGED, BatchEntries, SegmentDiff

    diff = SegmentDiff(state, mirror=True)
    entries = BatchEntries()
    for i in range(count + count // 100):
        if i % 200 == 0:
            continue
        email = f"person.{i}@example.com"
        kind, index, key, digest = diff.classify(email, _body(i, i % 200 == 1))
        if kind != UNCHANGED:
            entries.add(index, key, digest, email)
    diff.confirm(entries, None, True)
    return diff


def state_child(mode: str, count: int, uri: str) -> dict[str, Any]:
    """One side of the state measurement, in its own process (``--state-child``)."""
    from airflow_provider_ciexport.export.state import SyncState, read_state, write_state

    identity, keys = bench_identity_and_keys()
    if mode == "first":
        write_state(uri, first_sync_diff(SyncState(identity), count).state, None, keys)
        return {}
    rss_before = _rss_mb()
    cpu = time.process_time()
    loaded = read_state(uri, identity, keys)
    diff = churn_diff(loaded.state, count)
    diff.removed(diff.leavers(), int(diff.state.start_removal_run()[0]))
    write_state(uri, loaded.state, loaded.stored_generation, keys)
    cpu = time.process_time() - cpu
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return {
        "contacts": count,
        "counts": diff.counts,
        "cpu_s": round(cpu, 2),
        "rss_over_start_mb": round(peak - rss_before, 1),
        "state_mb": round(os.path.getsize(uri.removeprefix("file://")) / 1e6, 1),
    }


def measure_state(count: int) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="ciexport-sync-bench-") as tmp:
        uri = f"file://{tmp}/bench.state"
        for mode in ("first", "churn"):
            out = subprocess.run(  # noqa: S603 (this very script, with fixed arguments)
                [sys.executable, __file__, "--state-child", mode, str(count), uri],
                check=True,
                capture_output=True,
                text=True,
            )
        result: dict[str, Any] = json.loads(out.stdout.strip().splitlines()[-1])
        return result


def _churned(rows: list[dict[str, str]]) -> list[dict[str, str]]:
    n = len(rows)
    out = [dict(r, first=r["first"] + "x") if i % 200 == 1 else r for i, r in enumerate(rows) if i % 200]
    return out + [{"email": f"new.{i}@example.com", "first": f"N{i}"} for i in range(n // 100)]


def measure_requests(profiles: int) -> dict[str, Any]:
    """First sync, 2% churn, unchanged: requests per destination, as the sandbox counted them."""
    from airflow_provider_ciexport.tools.sandbox import SandboxConfig, SandboxServer

    rows = [{"email": f"person.{i}@example.com", "first": f"P{i}"} for i in range(profiles)]
    scale = 50.0
    out: dict[str, Any] = {"profiles": profiles}
    with (
        tempfile.TemporaryDirectory(prefix="ciexport-sync-bench-") as tmp,
        SandboxServer(SandboxConfig(rate_scale=scale)) as sandbox,
    ):
        in_process_airflow(tmp, sandbox, scale)
        from airflow_provider_ciexport.operators.activecampaign import ActiveCampaignSegmentExportOperator
        from airflow_provider_ciexport.operators.constantcontact import ConstantContactSegmentExportOperator

        for dest, cls, list_id in (
            ("ac", ActiveCampaignSegmentExportOperator, 2),
            ("cc", ConstantContactSegmentExportOperator, "22222222-2222-4222-8222-222222222222"),
        ):
            runs: dict[str, Any] = {}
            for name, segment in (("first", rows), ("churn", _churned(rows)), ("unchanged", _churned(rows))):
                before = _requests(sandbox, dest)
                op = cls(
                    task_id="bench",
                    list_id=list_id,
                    records=segment,
                    field_mapping={"email": "email", "first_name": "first"},
                    state_path=f"file://{tmp}/{dest}.state",
                    sync_mode="mirror",
                )
                report = op.execute(context={})
                after = _requests(sandbox, dest)
                runs[name] = {
                    "requests": {
                        k: after.get(k, 0) - before.get(k, 0)
                        for k in after
                        if after.get(k, 0) != before.get(k, 0)
                    },
                    **{k: report[k] for k in ("new", "changed", "unchanged", "removed", "submitted")},
                }
            out[dest] = runs
    out["projection_1m"] = _project(out, profiles)
    return out


def in_process_airflow(home: str, sandbox: Any, scale: float) -> None:
    """For operators run in this process: an Airflow home with a migrated metadata DB of its own
    (exports keep account leases in Airflow Variables), and both default connections on ``sandbox``
    at ``scale`` times the documented limits."""
    os.environ["AIRFLOW_HOME"] = home
    os.environ["AIRFLOW__DATABASE__SQL_ALCHEMY_CONN"] = f"sqlite:///{home}/airflow.db"
    os.environ["AIRFLOW__CORE__LOAD_EXAMPLES"] = "False"
    subprocess.run([sys.executable, "-m", "airflow", "db", "migrate"], check=True, capture_output=True)
    os.environ["AIRFLOW_CONN_ACTIVECAMPAIGN_DEFAULT"] = json.dumps(
        sandbox.ac_connection(imports_per_minute=100 * scale, requests_per_second=5 * scale)
    )
    os.environ["AIRFLOW_CONN_CONSTANTCONTACT_DEFAULT"] = json.dumps(
        sandbox.cc_connection(requests_per_second=4 * scale)
    )


def _requests(sandbox: Any, dest: str) -> dict[str, int]:
    stats = sandbox.client.stats()
    by = stats["requests"].get(dest, {}).get("by_endpoint", {})
    return {k: int(v["count"]) for k, v in by.items()}


def _project(out: dict[str, Any], profiles: int) -> dict[str, Any]:
    """The churn run at 1M contacts and the real limits, from what was measured: the same number of
    reads, imports and removal requests sized by the APIs' limits, the measured polls per job."""
    factor = 1_000_000 / profiles
    ac, cc = out["ac"]["churn"], out["cc"]["churn"]
    sent, removed = ac["submitted"] * factor, ac["removed"] * factor
    ac_req = ac["requests"]
    ac_jobs = ac_req.get("POST /api/3/import/bulk_import", 0)
    ac_imports = math.ceil(sent / 250) + math.ceil(removed / 250)
    ac_polls = ac_imports * ac_req.get("GET /api/3/import/info", 0) / max(1, ac_jobs)
    ac_other = sum(
        v for k, v in ac_req.items() if k not in ("POST /api/3/import/bulk_import", "GET /api/3/import/info")
    )
    ac_all = ac_imports + ac_polls + ac_other
    cc_req = cc["requests"]
    cc_jobs = sum(v for k, v in cc_req.items() if k.startswith("POST /v3/activities/"))
    cc_activities = (
        math.ceil(cc["submitted"] * factor / 39_999)  # at ~60 bytes a contact, far under 4 MB each
        + math.ceil(cc["removed"] * factor / 500)
        + cc_req.get("POST /v3/activities/contact_exports", 0)
    )
    cc_polls = cc_activities * cc_req.get("GET /v3/activities/{activity_id}", 0) / max(1, cc_jobs)
    cc_all = cc_activities + cc_polls + cc_req.get("GET /v3/contact_exports/{file_id}", 0) + 1
    return {
        "ac_imports": ac_imports,
        "ac_requests": round(ac_all),
        "ac_minutes": round(max(ac_imports / 100, ac_all / 5 / 60), 2),
        "ac_unchanged_writes": _writes(out["ac"]["unchanged"]["requests"]),
        "cc_activities": cc_activities,
        "cc_requests": round(cc_all),
        "cc_minutes": round(cc_all / 4 / 60, 2),
        "cc_unchanged_writes": _writes(out["cc"]["unchanged"]["requests"]),
    }


def _writes(requests: dict[str, int]) -> int:
    writes = (
        "import/bulk_import",
        "contactLists",
        "contact/sync",
        "contacts_json_import",
        "remove_list_memberships",
    )
    return sum(v for k, v in requests.items() if k.startswith("POST") and k.endswith(writes))


def _tasks(
    sandbox: Any, env: dict[str, dict[str, str]], jobs: list[tuple[str, str, int, dict[str, Any]]], tag: str
) -> dict[str, dict[str, Any]]:
    """Run one export task per destination side by side (a fresh ``dag.test()`` process each, as
    ``run.py`` runs them); per destination: its peak RSS, outcome and the requests the sandbox counted."""
    import run as bench

    before = {dest: _requests(sandbox, dest) for dest, *_ in jobs}
    results: dict[str, Any] = {}

    def one(dest: str, dag: str, profiles: int, conf: dict[str, Any]) -> None:
        out = bench.RUNS / f"sync-{tag}-{dest}.json"
        out.unlink(missing_ok=True)
        cmd = [bench.PYTHON, str(HERE / "task_runner.py"), dag, str(profiles), str(out), json.dumps(conf)]
        child = bench.run_child(cmd, env[dest], bench.RUNS / f"sync-{tag}-{dest}.log", timeout_s=1800)
        outcome = json.loads(out.read_text()) if out.exists() else {"error": "no result written"}
        results[dest] = (child, outcome)

    threads = [threading.Thread(target=one, args=job) for job in jobs]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    measured: dict[str, dict[str, Any]] = {}
    for dest, *_ in jobs:
        child, outcome = results[dest]
        report = outcome.get("report") if isinstance(outcome.get("report"), dict) else None
        if child.returncode != 0 or outcome.get("task_state") != "success" or report is None:
            why = "timed out" if child.timed_out else outcome.get("error") or outcome.get("task_state")
            log = bench.RUNS / f"sync-{tag}-{dest}.log"
            raise RuntimeError(f"the {dest.upper()} {tag} task failed ({why}); see {log}")
        after = _requests(sandbox, dest)
        pre = (outcome.get("probes") or {}).get("pre", {}).get("maxrss_kb")
        measured[dest] = {
            "peak_rss_mb": round(child.maxrss_kb / 1024, 1),
            "peak_rss_before_execute_mb": round(pre / 1024, 1) if pre else None,
            "process_wall_s": round(child.wall_s, 1),
            "cpu_s": round(child.cpu_s, 1),
            "report": {k: v for k, v in report.items() if k != "jobs"},
            "requests": {
                k: after[k] - before[dest].get(k, 0) for k in after if after[k] != before[dest].get(k)
            },
        }
    return measured


def measure_memory(profiles: int, scale: float, first_scale: float) -> dict[str, Any]:
    """Peak RSS over an empty task of a mirror re-export of ``profiles`` with a state, per destination.

    Reuses ``run.py``: its profiles, its sandbox process, its Airflow home, environment and children.
    """
    import run as bench

    from airflow_provider_ciexport.tools.sandbox.seed import AC_LIST_VIP, CC_LIST_VIP

    started = time.monotonic()
    bench.RUNS.mkdir(parents=True, exist_ok=True)
    db = bench.ensure_profiles(profiles + profiles // 100, False)
    dests = ("ac", "cc")
    out: dict[str, Any] = {"profiles": profiles, "scale": scale, "first_sync_scale": first_scale}
    with bench.airflow_home(False) as home, bench.Sandbox(scale, home) as sandbox:
        print(f"Sync memory: sandbox {sandbox.url}, rate_scale={scale:g}", flush=True)
        bench.migrate(bench.airflow_env(home, db, sandbox.url, scale))

        def envs(rate_scale: float) -> dict[str, dict[str, str]]:
            env = bench.airflow_env(home, db, sandbox.url, rate_scale)
            # Each destination its own metadata DB: two dag.test() processes on one DB collide.
            return {
                d: {**env, "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": f"sqlite:///{home}/airflow-{d}.db"}
                for d in dests
            }

        for dest in dests:
            shutil.copyfile(home / "airflow.db", home / f"airflow-{dest}.db")
        states = {dest: f"file://{home}/{dest}.state" for dest in dests}
        print("  empty tasks (the idle baseline), side by side ...", flush=True)
        idle = _tasks(sandbox, envs(scale), [(d, d, 0, {}) for d in dests], "idle")
        print(
            f"  first syncs of {profiles:,} profiles (limits x{first_scale:g}), side by side ...", flush=True
        )
        sandbox.client.configure(rate_scale=first_scale, import_latency_s=0.0)
        first_conf = {"churn": False}
        first = _tasks(
            sandbox,
            envs(first_scale),
            [(d, f"{d}_sync", profiles, {**first_conf, "state_path": states[d]}) for d in dests],
            "first",
        )
        sandbox.client.configure(rate_scale=scale, import_latency_s=bench.IMPORT_LATENCY_S)
        lists = sandbox.client.stats()["store"]
        members = {
            "ac": lists["ac"]["list_members"].get(str(AC_LIST_VIP)),
            "cc": lists["cc"]["list_members"].get(CC_LIST_VIP),
        }
        print(f"  mirror re-exports after 2% churn (limits x{scale:g}), side by side ...", flush=True)
        churn = _tasks(
            sandbox,
            envs(scale),
            [(d, f"{d}_sync", profiles, {"churn": True, "state_path": states[d]}) for d in dests],
            "churn",
        )
        for dest in dests:
            report = churn[dest]["report"]
            out[dest] = {
                "rss_over_idle_mb": round(churn[dest]["peak_rss_mb"] - idle[dest]["peak_rss_mb"], 1),
                "idle_peak_rss_mb": idle[dest]["peak_rss_mb"],
                "peak_rss_mb": churn[dest]["peak_rss_mb"],
                "peak_rss_before_execute_mb": churn[dest]["peak_rss_before_execute_mb"],
                "first_sync_rss_over_idle_mb": round(
                    first[dest]["peak_rss_mb"] - idle[dest]["peak_rss_mb"], 1
                ),
                "list_members_after_first_sync": members[dest],
                "state_entries": report.get("state_entries"),
                "export_duration_s": report.get("duration_s"),
                "report": report,
                "requests": churn[dest]["requests"],
                "process_wall_s": churn[dest]["process_wall_s"],
                "first_sync_wall_s": first[dest]["process_wall_s"],
            }
    out["wall_s"] = round(time.monotonic() - started, 1)
    worst = max(out[d]["rss_over_idle_mb"] for d in dests)
    out["goal"] = {"value": worst, "goal": f"<= {RSS_GOAL_MB:g}", "met": worst <= RSS_GOAL_MB}
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="benchmarks/sync.py", description=__doc__.split("\n\n")[0])
    parser.add_argument("--state-contacts", type=int, default=1_000_000)
    parser.add_argument("--profiles", type=int, default=20_000, help="contacts of the request measurement")
    parser.add_argument(
        "--memory-profiles",
        type=int,
        default=1_000_000,
        help="profiles of the memory measurement: a real mirror re-export task per destination (0 skips it)",
    )
    parser.add_argument(
        "--scale", type=float, default=20.0, help="rate-limit scale of the re-export (as run.py)"
    )
    parser.add_argument(
        "--first-sync-scale",
        type=float,
        default=20.0,
        help="rate-limit scale of the first sync (default 20; higher sets the scene faster, with more "
        "imports in flight and so a higher peak)",
    )
    parser.add_argument("--state-child", nargs=3, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.state_child:
        mode, count, uri = args.state_child
        print(json.dumps(state_child(mode, int(count), uri)))
        return 0
    state = measure_state(args.state_contacts)
    requests = measure_requests(args.profiles)
    memory = (
        measure_memory(args.memory_profiles, args.scale, args.first_sync_scale)
        if args.memory_profiles
        else None
    )
    summary = {"state": state, "requests": requests, "memory": memory}
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(summary, indent=2) + "\n")
    p = requests["projection_1m"]
    print("\nKeeping lists in sync (daily re-export, 1M profiles, 2% churn, mirror):")
    print(
        f"  state read + diff + write at {state['contacts']:,}: {state['cpu_s']} s CPU (goal < 10), "
        f"peak {state['rss_over_start_mb']} MB over the start of a bare process, file {state['state_mb']} MB"
    )
    if memory is not None:
        ac, cc = memory["ac"], memory["cc"]
        r = ac["report"]
        verdict = "PASS" if memory["goal"]["met"] else "FAIL"
        print(
            f"  peak RSS of a {memory['profiles']:,}-profile mirror re-export with a state (a real task over "
            f"HTTP) over an empty task: ActiveCampaign {ac['rss_over_idle_mb']:.0f} MB, Constant Contact "
            f"{cc['rss_over_idle_mb']:.0f} MB (goal <= {RSS_GOAL_MB:g}: {verdict})"
        )
        print(
            f"    {r['read']:,} rows read: {r['new']:,} new, {r['changed']:,} changed, {r['removed']:,} removed, "
            f"{r['unchanged']:,} unchanged; export {ac['export_duration_s']:.0f} s / {cc['export_duration_s']:.0f} s "
            f"at limits x{memory['scale']:g}. The first sync (no state yet, limits x{memory['first_sync_scale']:g}) "
            f"peaked {ac['first_sync_rss_over_idle_mb']:.0f} / {cc['first_sync_rss_over_idle_mb']:.0f} MB over "
            f"idle. {memory['wall_s']:.0f} s in all"
        )
    print(
        f"  ActiveCampaign: {p['ac_imports']} imports, {p['ac_requests']} requests in all: "
        f"{p['ac_minutes']} min at the real limits (goal < 2)"
    )
    print(
        f"  Constant Contact: {p['cc_activities']} activities, {p['cc_requests']} requests: "
        f"{p['cc_minutes']} min of requests at the real limits (goal < 1)"
    )
    print(
        f"  unchanged segment: {p['ac_unchanged_writes']} + {p['cc_unchanged_writes']} import/removal "
        "requests (goal 0)"
    )
    print(f"  written to {RESULTS}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
