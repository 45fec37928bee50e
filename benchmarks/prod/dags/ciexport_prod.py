"""The DAGs ``make prod-test`` runs through the scheduler on its Celery workers (``benchmarks/prod_test.py``).

The segment is a SQL query on the PostgreSQL warehouse (connection ``warehouse``, table
``customer_profiles``), the sync states live on the local S3 server (connection ``ciexport_state``,
bucket :data:`BUCKET`). Every task measures its own memory: the pre-execute hook records the task
process's RSS and resets its peak (Linux ``clear_refs``), the post-execute hook writes the peak since
into a file of the folder named by ``CIEXPORT_PROD_PROBES`` (one JSON file per try).

- ``ciexport_prod_idle``: an empty segment per destination, the idle baseline of the memory figure;
- ``ciexport_prod_mirror``: a mirror export of the first ``params.profiles`` profiles per destination,
  each with its state on S3; with ``params.churn``, of the same segment after 2% churn;
- ``ciexport_prod_shared_state``: one ActiveCampaign mirror export whose state is the same S3 object for
  every run; the test queues two runs while the DAG is paused, then unpauses it, so they start together;
  Airflow runs them one after the other. ``ciexport_prod_shared_state_lease`` lets them run at once:
  the state's lease refuses the second;
- ``ciexport_prod_shared_account``: three ActiveCampaign exports at once on one account, each to its
  own list and its own range of ``params.profiles`` customer ids (``list<i>_ac``: ids of range *i*);
- ``ciexport_prod_memory``: one ActiveCampaign mirror export with its state on S3 (the memory figures'
  first sync, then re-export);
- ``ciexport_prod_retry``: the same with one retry a few seconds after a failure: the test kills the
  worker running its first try (``prod_test.py``), the retry runs on the other worker.

The pre-execute hook also writes a start file (``<dag>.<run>.<task>.<try>.start.json``: worker and the
task process's pid), so that the test knows which worker to kill; the post-execute hook records the
429 answers the task's hook received (``throttled``). Between the two, :class:`PeakWatch` samples the
task process's RSS and notes it at each of the provider's log lines, so that the probe also says when
the memory peaked and during which phase.
"""

from __future__ import annotations

import json
import logging
import os
import threading
import time
from datetime import timedelta
from typing import Any

import pendulum
from airflow.sdk import DAG, Param

from airflow_provider_ciexport.operators.activecampaign import ActiveCampaignSegmentExportOperator
from airflow_provider_ciexport.operators.constantcontact import ConstantContactSegmentExportOperator
from airflow_provider_ciexport.tools.sandbox.seed import (
    AC_LIST_LAPSED,
    AC_LIST_NEWSLETTER,
    AC_LIST_VIP,
    CC_LIST_VIP,
)
from benchmarks.segments import SYNC_SQL

BUCKET = "ciexport-prod"
STATE = f"s3://ciexport_state@{BUCKET}"
PROBES_ENV = "CIEXPORT_PROD_PROBES"
SEGMENT_SQL = (
    "SELECT customer_id, email, first_name, last_name, phone, city, favorite_store, loyalty_tier "
    "FROM customer_profiles WHERE customer_id <= {{ params.profiles | int }} ORDER BY customer_id"
)
AC_MAPPING = {"email": "email", "first_name": "first_name", "last_name": "last_name", "phone": "phone"}
CC_MAPPING = dict(AC_MAPPING)


def _status_kb(field: str) -> int:
    """A ``kB`` figure of this process's ``/proc/self/status`` (``VmRSS``, ``VmHWM``)."""
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    return 0


def _probe_name(context: Any, suffix: str) -> str | None:
    """The probe file of this try (``None`` when the test gave no folder)."""
    folder = os.environ.get(PROBES_ENV)
    if not folder:
        return None
    ti = context["ti"]
    name = f"{ti.dag_id}.{ti.run_id}.{ti.task_id}.{ti.try_number}.{suffix}".replace("/", "_")
    return os.path.join(folder, name)


class PeakWatch(logging.Handler):
    """Where in the export its memory peaked: the RSS sampled every :data:`SAMPLE_S`, and the provider's
    last log line before the highest sample (its lines name phases, never a person)."""

    SAMPLE_S = 0.1

    def __init__(self) -> None:
        super().__init__(logging.INFO)
        self.started = time.monotonic()
        self.last = "(before the first log line)"
        self.peak_kb, self.peak_at_s, self.peak_during = 0, 0.0, ""
        #: ``[seconds, RSS MB, line]`` at each of the provider's log lines.
        self.timeline: list[list[Any]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, name="peak-watch", daemon=True)

    def emit(self, record: logging.LogRecord) -> None:
        self.last = record.getMessage()[:100]
        elapsed = round(time.monotonic() - self.started, 1)
        self.timeline.append([elapsed, round(_status_kb("VmRSS") / 1024), self.last])

    def _sample(self) -> None:
        while not self._stop.wait(self.SAMPLE_S):
            rss = _status_kb("VmRSS")
            if rss > self.peak_kb:
                self.peak_kb, self.peak_at_s = rss, time.monotonic() - self.started
                self.peak_during = self.last

    def start(self) -> PeakWatch:
        logging.getLogger("airflow_provider_ciexport").addHandler(self)
        self._thread.start()
        return self

    def stop(self) -> dict[str, Any]:
        """Stop watching; the sampled peak, when and during what."""
        self._stop.set()
        self._thread.join()
        logging.getLogger("airflow_provider_ciexport").removeHandler(self)
        return {
            "sampled_peak_kb": self.peak_kb,
            "peak_at_s": round(self.peak_at_s, 1),
            "peak_during": self.peak_during,
            "timeline": self.timeline,
        }


_WATCH: list[PeakWatch] = []


def probe_pre(context: Any) -> None:
    """Remember the task process's RSS before the export and reset its peak to it; say where it runs."""
    os.environ["CIEXPORT_PROD_RSS_PRE_KB"] = str(_status_kb("VmRSS"))
    _WATCH[:] = [PeakWatch().start()]
    start = _probe_name(context, "start.json")
    if start:
        with open(start, "w") as out:
            json.dump({"pid": os.getpid(), "worker": os.environ.get("CIEXPORT_PROD_WORKER", "")}, out)
    try:
        with open("/proc/self/clear_refs", "w") as refs:
            refs.write("5")
    except OSError:
        pass


def probe_post(context: Any, result: Any = None) -> None:
    """Write the task process's peak RSS since :func:`probe_pre` (and its pid, host) into a probe file."""
    path = _probe_name(context, "json")
    watched = _WATCH.pop().stop() if _WATCH else {}
    if not path:
        return
    ti = context["ti"]
    throttling = getattr(context.get("task"), "_throttling", None)
    probe = {
        "dag_id": ti.dag_id,
        "run_id": ti.run_id,
        "task_id": ti.task_id,
        "try_number": ti.try_number,
        "pid": os.getpid(),
        "worker": os.environ.get("CIEXPORT_PROD_WORKER", ""),
        "rss_pre_kb": int(os.environ.get("CIEXPORT_PROD_RSS_PRE_KB", "0")),
        "peak_kb": _status_kb("VmHWM"),
        "throttled": getattr(throttling, "total", None),
        **watched,
    }
    with open(path, "w") as out:
        json.dump(probe, out)


_COMMON: dict[str, Any] = {
    "schedule": None,
    "start_date": pendulum.datetime(2025, 1, 1, tz="UTC"),
    "catchup": False,
    "is_paused_upon_creation": False,
    "tags": ["ciexport", "prod-test"],
    "params": {"profiles": Param(0, type="integer", minimum=0)},
}
_TASK: dict[str, Any] = {
    "sql_conn_id": "warehouse",
    "sql": SEGMENT_SQL,
    "progress_interval": 15.0,
    "pre_execute": probe_pre,
    "post_execute": probe_post,
}

with DAG(dag_id="ciexport_prod_idle", **_COMMON):
    ActiveCampaignSegmentExportOperator(
        task_id="idle_ac", list_id=AC_LIST_VIP, field_mapping=AC_MAPPING, **_TASK
    )
    ConstantContactSegmentExportOperator(
        task_id="idle_cc", list_id=CC_LIST_VIP, field_mapping=CC_MAPPING, **_TASK
    )

# With ``params.churn`` the segment has changed by 2% since (the benchmark's ``SYNC_SQL``).
_MIRROR: dict[str, Any] = {**_TASK, "sql": SYNC_SQL, "sync_mode": "mirror"}
with DAG(
    dag_id="ciexport_prod_mirror",
    **{**_COMMON, "params": {**_COMMON["params"], "churn": Param(False, type="boolean")}},
):
    ActiveCampaignSegmentExportOperator(
        task_id="export_ac",
        list_id=AC_LIST_VIP,
        field_mapping=AC_MAPPING,
        state_path=f"{STATE}/mirror-ac.state",
        **_MIRROR,
    )
    ConstantContactSegmentExportOperator(
        task_id="export_cc",
        list_id=CC_LIST_VIP,
        field_mapping=CC_MAPPING,
        state_path=f"{STATE}/mirror-cc.state",
        **_MIRROR,
    )


def _mirror_export(dag_id: str, list_id: int, **task: Any) -> ActiveCampaignSegmentExportOperator:
    """A mirror export to ``list_id`` with its own state on S3, named after its DAG."""
    return ActiveCampaignSegmentExportOperator(
        task_id="export_ac",
        list_id=list_id,
        field_mapping=AC_MAPPING,
        sync_mode="mirror",
        state_path=f"{STATE}/{dag_id}-ac.state",
        **_TASK,
        **task,
    )


# Paused until both runs are queued (``prod_test.py`` unpauses it), so that they start together. The
# operator lets one try of a task with a state run at a time (``max_active_tis_per_dag=1``): Airflow
# runs the two one after the other. The ``_lease`` DAG allows two at once, as two DAGs exporting to
# one state would: then only the state's lease on S3 keeps them apart.
for dag_id, list_id, at_once in (
    ("ciexport_prod_shared_state", AC_LIST_LAPSED, 1),
    ("ciexport_prod_shared_state_lease", AC_LIST_NEWSLETTER, 2),
):
    with DAG(dag_id=dag_id, max_active_runs=2, **{**_COMMON, "is_paused_upon_creation": True}):
        _mirror_export(dag_id, list_id, max_active_tis_per_dag=at_once)

# Three exports at once on one account, each its own list and range of customer ids.
RANGE_SQL = (
    "SELECT customer_id, email, first_name, last_name, phone, city, favorite_store, loyalty_tier "
    "FROM customer_profiles WHERE customer_id > {first} * {{{{ params.profiles | int }}}} "
    "AND customer_id <= {last} * {{{{ params.profiles | int }}}} ORDER BY customer_id"
)
with DAG(dag_id="ciexport_prod_shared_account", **_COMMON):
    for index, list_id in enumerate((AC_LIST_NEWSLETTER, AC_LIST_VIP, AC_LIST_LAPSED)):
        ActiveCampaignSegmentExportOperator(
            task_id=f"list{index + 1}_ac",
            list_id=list_id,
            field_mapping=AC_MAPPING,
            **{**_TASK, "sql": RANGE_SQL.format(first=index, last=index + 1)},
        )

# The memory figures' first sync and re-export; the killed export and its retry (on the other worker:
# the test kills the first try's). A retry on this machine takes over the dead try's lease at once.
for dag_id, list_id, retries in (
    ("ciexport_prod_memory", AC_LIST_VIP, 0),
    ("ciexport_prod_retry", AC_LIST_NEWSLETTER, 1),
):
    with DAG(dag_id=dag_id, **_COMMON):
        _mirror_export(dag_id, list_id, retries=retries, retry_delay=timedelta(seconds=5))
