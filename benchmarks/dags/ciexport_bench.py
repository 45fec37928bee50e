"""The benchmark's DAGs, reading the generated profiles.

``benchmarks/run.py`` points ``AIRFLOW__CORE__DAGS_FOLDER`` here. ``ciexport_bench_ac`` and
``ciexport_bench_cc`` have one export task each, reading the first ``params.profiles`` profiles, run
with ``dag.test(run_conf={"profiles": N})`` in a fresh process per export. The ``*_concurrent`` DAGs
export several segments of ``params.profiles`` profiles each (consecutive ranges of customer ids) to
different lists of ONE account at once; a real scheduler with the LocalExecutor runs their tasks in
parallel, in the account's pool. The ``*_sync`` DAGs mirror the first ``params.profiles`` profiles
into a list with a sync state at ``params.state_path``; with ``params.churn`` the segment has changed
by 2% since (``SYNC_SQL``). The mappings are those of the example DAG: e-mail, names, phone and three
custom fields.
"""

from __future__ import annotations

import json
import os
import resource
import time
from collections.abc import Callable
from typing import Any

import pendulum
from airflow.sdk import DAG, Param

from airflow_provider_ciexport.operators.activecampaign import ActiveCampaignSegmentExportOperator
from airflow_provider_ciexport.operators.base import BaseSegmentExportOperator
from airflow_provider_ciexport.operators.constantcontact import ConstantContactSegmentExportOperator
from airflow_provider_ciexport.tools.sandbox.seed import AC_LIST_VIP, AC_LISTS, CC_LIST_VIP, CC_LISTS
from benchmarks.segments import SYNC_SQL

#: The segment: the first N rows of the generated table (N = 0 is the empty task).
SEGMENT_SQL = "SELECT * FROM customer_profiles WHERE customer_id <= {{ params.profiles | int }}"
AC_MAPPING = {
    "email": "email",
    "first_name": "first_name",
    "last_name": "last_name",
    "phone": "phone",
    "field:LOYALTY_TIER": "loyalty_tier",
    "field:FAVORITE_STORE": "favorite_store",
    "field:CITY": "city",
}
CC_MAPPING = {
    "email": "email",
    "first_name": "first_name",
    "last_name": "last_name",
    "phone": "phone",
    "cf:loyalty_tier": "loyalty_tier",
    "cf:favorite_store": "favorite_store",
    "cf:city": "city",
}
#: The concurrent DAGs' segments: the ``index``-th range of ``params.profiles`` customer ids.
RANGE_SQL = (
    "SELECT * FROM customer_profiles WHERE customer_id > {{{{ params.profiles | int * {index} }}}} "
    "AND customer_id <= {{{{ params.profiles | int * {next} }}}} ORDER BY customer_id"
)
#: Pools, one per account, that cap how many exports run on it at once (``run.py`` creates them).
AC_POOL = "ciexport_bench_activecampaign"
CC_POOL = "ciexport_bench_constantcontact"
AC_CONCURRENT_LISTS = sorted(AC_LISTS)
CC_CONCURRENT_LISTS = sorted(CC_LISTS)[:2]
#: Where the task's execute-time probes go (set by ``benchmarks/task_runner.py``).
PROBE_ENV = "CIEXPORT_BENCH_PROBE"


def _probe(stage: str) -> Callable[..., None]:
    """A pre/post-execute hook appending this process's CPU time and memory at ``stage`` to the probe file.

    The difference between the two probes is the CPU the export itself used (all threads), without
    Airflow's start-up; the RSS at ``pre`` is the process's size just before the export starts, and the
    process's peak RSS (``wait4``) is reset to it there, so that it is the export's peak.
    """

    def hook(context: Any, result: Any = None) -> None:
        path = os.environ.get(PROBE_ENV)
        if not path:
            return
        rss_kb = None
        try:
            with open("/proc/self/statm") as statm:
                rss_kb = int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") // 1024
        except OSError:
            pass
        probe = {
            "stage": stage,
            "cpu_s": time.process_time(),
            "monotonic": time.monotonic(),
            "maxrss_kb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss,
            "rss_kb": rss_kb,
        }
        with open(path, "a") as out:
            out.write(json.dumps(probe) + "\n")
        if stage == "pre":
            # Start the process's peak RSS afresh at the current RSS (Linux's clear_refs "5"): Airflow's
            # start-up (parsing, serialising the DAG) can peak above what the export then needs, and a
            # peak taken over the whole process would hide the export's own growth under it.
            try:
                with open("/proc/self/clear_refs", "w") as refs:
                    refs.write("5")
            except OSError:
                pass

    return hook


_COMMON: dict[str, Any] = {
    "schedule": None,
    "start_date": pendulum.datetime(2025, 1, 1, tz="UTC"),
    "catchup": False,
    "tags": ["ciexport", "benchmark"],
    "params": {"profiles": Param(0, type="integer", minimum=0)},
}

_SYNC: dict[str, Any] = {
    **_COMMON,
    "params": {
        "profiles": Param(0, type="integer", minimum=0),
        "churn": Param(False, type="boolean"),
        "state_path": Param("", type="string"),
    },
}

#: Per destination: the operator, the list of the single and sync exports, the mapping, the lists of
#: the concurrent exports and their pool. Every task uses the connection's default id.
_DESTINATIONS: dict[str, tuple[type[BaseSegmentExportOperator], Any, dict[str, str], list[Any], str]] = {
    "ac": (ActiveCampaignSegmentExportOperator, AC_LIST_VIP, AC_MAPPING, AC_CONCURRENT_LISTS, AC_POOL),
    "cc": (ConstantContactSegmentExportOperator, CC_LIST_VIP, CC_MAPPING, CC_CONCURRENT_LISTS, CC_POOL),
}
_TASK: dict[str, Any] = {"sql_conn_id": "profiles_db", "max_profiles": None, "progress_interval": 15.0}

for dest, (operator, vip_list, mapping, concurrent_lists, pool) in _DESTINATIONS.items():
    probes: dict[str, Any] = {"pre_execute": _probe("pre"), "post_execute": _probe("post")}
    with DAG(dag_id=f"ciexport_bench_{dest}", **_COMMON):
        operator(
            task_id="export", list_id=vip_list, sql=SEGMENT_SQL, field_mapping=mapping, **_TASK, **probes
        )

    with DAG(dag_id=f"ciexport_bench_{dest}_sync", **_SYNC):
        operator(
            task_id="export",
            list_id=vip_list,
            sql=SYNC_SQL,
            field_mapping=mapping,
            sync_mode="mirror",
            state_path="{{ params.state_path }}",
            **_TASK,
            **probes,
        )

    with DAG(dag_id=f"ciexport_bench_{dest}_concurrent", is_paused_upon_creation=False, **_COMMON):
        for index, list_id in enumerate(concurrent_lists):
            operator(
                task_id=f"export_{index + 1}",
                list_id=list_id,
                sql=RANGE_SQL.format(index=index, next=index + 1),
                field_mapping=mapping,
                pool=pool,
                **_TASK,
            )
