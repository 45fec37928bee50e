"""The README's example DAG parses and means what the README says about it."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from airflow.dag_processing.dagbag import DagBag

from airflow_provider_ciexport.operators.activecampaign import ActiveCampaignSegmentExportOperator

README = Path(__file__).resolve().parents[1] / "README.md"


def test_the_readme_stays_short() -> None:
    assert len(README.read_text().splitlines()) < 200


def test_the_readme_example_is_a_working_dag(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    block = re.search(r"## An export in a DAG\n\n```python\n(.*?)```", README.read_text(), re.S)
    assert block, "the README has its example DAG"
    (tmp_path / "readme_dag.py").write_text(block[1])
    (tmp_path / "sql").mkdir()
    (tmp_path / "sql" / "segment_vip.sql").write_text("SELECT 1")
    # Parsing must not need the connections the example names.
    for name in ("AIRFLOW_CONN_WAREHOUSE", "AIRFLOW_CONN_ACTIVECAMPAIGN_DEFAULT"):
        monkeypatch.delenv(name, raising=False)

    bag = DagBag(dag_folder=str(tmp_path))

    assert bag.import_errors == {}
    dag = bag.dags["vip_to_activecampaign"]
    export = dag.get_task("export")
    assert isinstance(export, ActiveCampaignSegmentExportOperator)
    assert export.upstream_task_ids == {"refresh"}
    assert export.sync_mode == "mirror" and export.state_path
    assert len(block[1].splitlines()) <= 25, "about twenty lines"
