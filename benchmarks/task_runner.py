"""Child process of the benchmark: run one export DAG with ``dag.test()`` and write what happened as JSON.

The parent (``run.py``) prepares the environment: ``AIRFLOW_HOME`` with a migrated SQLite metadata DB,
``AIRFLOW__CORE__DAGS_FOLDER`` pointing at ``benchmarks/dags`` and the connections as ``AIRFLOW_CONN_*``
variables. The task runs in this process, as ``dag.test()`` runs tasks, so this process's peak RSS
and CPU time are those of the export (plus Airflow's own, which the empty-task run measures).

Usage: ``python benchmarks/task_runner.py {ac|cc}[_VARIANT] PROFILES RESULT_JSON [CONF_JSON]``: runs
``ciexport_bench_ac``, ``ciexport_bench_cc_sync``, ...; ``CONF_JSON`` adds to the run's conf.
"""

from __future__ import annotations

import json
import os
import resource
import sys
import time
from pathlib import Path
from typing import Any

TASK_ID = "export"
#: The DAG file's pre/post-execute hooks append probes to the file this variable names.
PROBE_ENV = "CIEXPORT_BENCH_PROBE"


def run(destination: str, profiles: int, conf: dict[str, Any] | None = None) -> dict[str, Any]:
    """Parse the benchmark DAGs, run ``ciexport_bench_<destination>`` once and collect its outcome.

    :param destination: ``ac`` or ``cc``, or one of their variants (``ac_sync``).
    :param conf: more of the run's conf (the DAG's params) besides ``profiles``.
    """
    from airflow.dag_processing.dagbag import DagBag
    from airflow.models.taskinstance import TaskInstance
    from airflow.models.xcom import XComModel
    from airflow.utils.session import create_session

    dag_id = f"ciexport_bench_{destination}"
    bag = DagBag(dag_folder=os.environ["AIRFLOW__CORE__DAGS_FOLDER"])
    if bag.import_errors:
        raise RuntimeError(f"the benchmark DAG file does not import: {bag.import_errors}")
    started = time.monotonic()
    dag_run = bag.dags[dag_id].test(run_conf={"profiles": profiles, **(conf or {})})
    test_wall_s = time.monotonic() - started
    with create_session() as session:
        ti = (
            session.query(TaskInstance).filter_by(dag_id=dag_id, run_id=dag_run.run_id, task_id=TASK_ID).one()
        )
        state = str(ti.state)
        start, end = ti.start_date, ti.end_date
        row = session.execute(
            XComModel.get_many(key="return_value", run_id=dag_run.run_id, dag_ids=dag_id, task_ids=TASK_ID)
            .with_only_columns(XComModel.value)
            .limit(1)
        ).first()
        report = XComModel.deserialize_value(row) if row is not None else None
    return {
        "destination": destination,
        "profiles": profiles,
        "dag_run_state": str(dag_run.state),
        "task_state": state,
        "task_duration_s": (end - start).total_seconds() if start and end else None,
        "dag_test_wall_s": test_wall_s,
        "report": report,
    }


def main(argv: list[str]) -> int:
    """Run the export named on the command line; the JSON result says whether it succeeded."""
    destination, profiles, result_path = argv[0], int(argv[1]), Path(argv[2])
    conf = json.loads(argv[3]) if len(argv) > 3 else None
    probe_path = result_path.with_suffix(".probe")
    probe_path.unlink(missing_ok=True)
    os.environ[PROBE_ENV] = str(probe_path)
    outcome: dict[str, Any]
    try:
        outcome = run(destination, profiles, conf)
    except Exception as exc:  # reported to the parent, which prints it
        outcome = {"destination": destination, "profiles": profiles, "error": f"{type(exc).__name__}: {exc}"}
    if probe_path.exists():
        probes = [json.loads(line) for line in probe_path.read_text().splitlines() if line.strip()]
        outcome["probes"] = {p["stage"]: p for p in probes}
    usage = resource.getrusage(resource.RUSAGE_SELF)
    outcome["self_maxrss_kb"] = usage.ru_maxrss
    outcome["self_cpu_s"] = usage.ru_utime + usage.ru_stime
    result_path.write_text(json.dumps(outcome, default=str))
    ok = "error" not in outcome and outcome.get("task_state") == "success"
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
