"""The example DAGs parse without connections, wire refresh >> export, and offer a valid trigger form."""

from __future__ import annotations

import copy
import os
import re
import shutil
from pathlib import Path
from typing import Any

import pytest
from airflow.dag_processing.dagbag import DagBag
from airflow.providers.common.sql.hooks.sql import DbApiHook
from airflow.providers.common.sql.operators.sql import SQLExecuteQueryOperator
from airflow.sdk import Asset, BaseHook
from airflow.sdk.definitions.param import ParamValidationError
from airflow.serialization.serialized_objects import DagSerialization

from airflow_provider_ciexport.hooks.activecampaign import parse_list_ids as parse_ac_list_ids
from airflow_provider_ciexport.hooks.constantcontact import parse_list_ids as parse_cc_list_ids
from airflow_provider_ciexport.operators.activecampaign import ActiveCampaignSegmentExportOperator
from airflow_provider_ciexport.operators.base import BaseSegmentExportOperator
from airflow_provider_ciexport.operators.constantcontact import ConstantContactSegmentExportOperator
from airflow_provider_ciexport.tools.sandbox.profiles import SEGMENTS, segment_refresh_sql
from airflow_provider_ciexport.tools.sandbox.seed import AC_LISTS, CC_LIST_VIP, CC_LISTS

EXAMPLE_DAGS = Path(__file__).resolve().parents[1] / "example_dags"
EXPORT_TASKS = {"export_to_activecampaign", "export_to_constantcontact"}


@pytest.fixture(scope="module")
def dagbag() -> DagBag:
    # Parsing must not need a connection: hide any the environment defines and make lookups fail loudly.
    saved = {k: os.environ.pop(k) for k in list(os.environ) if k.startswith("AIRFLOW_CONN_")}
    with pytest.MonkeyPatch.context() as mp:

        def no_lookups(*args: Any, **kwargs: Any) -> Any:
            raise AssertionError("a connection was looked up while parsing an example DAG")

        mp.setattr(BaseHook, "get_connection", classmethod(no_lookups))
        bag = DagBag(dag_folder=str(EXAMPLE_DAGS))
    os.environ.update(saved)
    return bag


def _export_task(dag: Any, task_id: str) -> BaseSegmentExportOperator:
    task = dag.get_task(task_id)
    assert isinstance(task, BaseSegmentExportOperator), task_id
    return task


#: The run id a manual trigger gets, for the templates that name the run.
RUN_ID = "manual__2026-12-07T18:00:00+00:00"


def _context(dag: Any, params: Any) -> dict[str, Any]:
    """What an export's templates see at run time: the params, the DAG and the run id."""
    return {"params": params, "dag": dag, "run_id": RUN_ID}


def _refresh_statements(dag: Any, task_id: str) -> list[str]:
    """The statements a refresh task runs: its .sql file rendered as the task runner does, then split."""
    task = dag.get_task(task_id).prepare_for_execution()
    assert isinstance(task, SQLExecuteQueryOperator)
    task.render_template_fields({"params": dag.params}, jinja_env=dag.get_template_env())
    assert task.split_statements is True
    assert isinstance(task.sql, str)
    statements = DbApiHook.split_sql_string(task.sql, strip_semicolon=True)
    # Comments and line breaks are for readers; compare what the database runs.
    return [" ".join(_code(statement).split()) for statement in statements]


def _code(statement: str) -> str:
    return "\n".join(line for line in statement.splitlines() if not line.lstrip().startswith("--"))


def test_example_dags_import_nothing_from_the_sandbox() -> None:
    # A user copies an example into their own project, where the sandbox is not installed.
    for path in EXAMPLE_DAGS.glob("*.py"):
        assert "sandbox" not in "".join(
            line for line in path.read_text().splitlines() if line.startswith(("import", "from"))
        ), path.name


def _trigger(dag: Any, conf: dict[str, Any]) -> dict[str, Any]:
    """The params a run triggered with ``conf`` gets (validated as the trigger form and API do)."""
    params = copy.deepcopy(dag.params)
    params.update(conf)
    return params.validate()


def test_every_example_dag_imports(dagbag: DagBag) -> None:
    assert dagbag.import_errors == {}
    assert set(dagbag.dag_ids) == {
        "ciexport_segment_export",
        "ciexport_refresh_vip_segment",
        "ciexport_export_vip_segment",
    }
    for dag_id in dagbag.dag_ids:
        dag = dagbag.dags[dag_id]
        assert dag.doc_md, f"{dag_id} documents itself"
        # The scheduler and `airflow dags test` work from the serialized DAG.
        DagSerialization.from_dict(DagSerialization.to_dict(dag))


def test_segment_export_refreshes_then_exports(dagbag: DagBag) -> None:
    dag = dagbag.dags["ciexport_segment_export"]

    assert set(dag.task_ids) == {"refresh_segments", *EXPORT_TASKS}
    refresh = dag.get_task("refresh_segments")
    assert isinstance(refresh, SQLExecuteQueryOperator)
    assert refresh.conn_id == "profiles_db"
    # The SQL beside the DAG builds exactly the segments the sandbox's profile generator defines.
    assert _refresh_statements(dag, "refresh_segments") == [
        stmt for segment in SEGMENTS for stmt in segment_refresh_sql(segment)
    ]
    assert refresh.downstream_task_ids == EXPORT_TASKS
    assert isinstance(dag.get_task("export_to_activecampaign"), ActiveCampaignSegmentExportOperator)
    assert isinstance(dag.get_task("export_to_constantcontact"), ConstantContactSegmentExportOperator)
    for task_id in EXPORT_TASKS:
        task = _export_task(dag, task_id)
        assert task.upstream_task_ids == {"refresh_segments"}
        assert task.sql_conn_id == "profiles_db"
        assert task.field_mapping["email"] == "email"
    # Manual runs only: unpausing it (as the trigger dialog does) never starts an export by itself.
    assert dag.schedule is None


def test_a_copied_example_mirrors_with_a_state_in_the_airflow_home(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Copied into a project as the docs say (the file and its sql/ folder), with nothing else set.
    shutil.copy(EXAMPLE_DAGS / "ciexport_segment_export.py", tmp_path)
    shutil.copytree(EXAMPLE_DAGS / "sql", tmp_path / "sql")
    home = tmp_path / "airflow-home"
    monkeypatch.setenv("AIRFLOW_HOME", str(home))
    bag = DagBag(dag_folder=str(tmp_path))
    assert bag.import_errors == {}
    dag = bag.dags["ciexport_segment_export"]

    paths = set()
    for task_id in EXPORT_TASKS:
        task = _export_task(dag, task_id).prepare_for_execution()
        assert isinstance(task, BaseSegmentExportOperator)
        assert task.sync_mode == "mirror"
        task.render_template_fields(_context(dag, dag.params.validate()), jinja_env=dag.get_template_env())
        assert task.state_path is not None
        paths.add(task.state_path)
    # One state per segment, destination and set of lists, in the one setting the file names at its top.
    assert paths == {
        (home / "ciexport-state" / "vip-activecampaign-2.state").as_uri(),
        (home / "ciexport-state" / f"vip-constantcontact-{CC_LIST_VIP}.state").as_uri(),
    }
    source = (EXAMPLE_DAGS / "ciexport_segment_export.py").read_text()
    assert source.index("STATE_DIR = ") < source.index("with DAG(")


def test_trigger_form_defaults_are_valid(dagbag: DagBag) -> None:
    dag = dagbag.dags["ciexport_segment_export"]
    params = dag.params.validate()

    assert params == {
        "segment": "vip",
        "ac_list_ids": ["2"],
        "cc_list_ids": [CC_LIST_VIP],
        "dry_run": False,
    }
    for name in params:
        param = dag.params.get_param(name)
        assert param.schema.get("title"), f"{name} has a form label"
        assert param.description, f"{name} is explained in the form"
    assert dag.params.get_param("segment").schema["enum"] == ["vip", "lapsed"]
    # The pick lists offer the sandbox's lists, so the form works against it out of the box.
    assert {int(i) for i in dag.params.get_param("ac_list_ids").schema["examples"]} == set(AC_LISTS)
    assert set(dag.params.get_param("cc_list_ids").schema["examples"]) == set(CC_LISTS)


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("segment", "everyone"),
        ("ac_list_ids", ["two"]),
        ("ac_list_ids", []),
        ("cc_list_ids", ["not-a-uuid"]),
        ("dry_run", "yes"),
    ],
)
def test_trigger_form_refuses_bad_values(dagbag: DagBag, name: str, value: Any) -> None:
    with pytest.raises(ParamValidationError):
        _trigger(dagbag.dags["ciexport_segment_export"], {name: value})


@pytest.mark.parametrize(
    ("conf", "table", "ac_ids", "cc_ids", "dry_run"),
    [
        ({}, "segment_vip", [2], [CC_LIST_VIP], False),
        (
            {
                "segment": "lapsed",
                "ac_list_ids": ["3", "1"],
                "cc_list_ids": list(CC_LISTS)[:1],
                "dry_run": True,
            },
            "segment_lapsed",
            [3, 1],
            list(CC_LISTS)[:1],
            True,
        ),
    ],
)
def test_params_render_into_the_operators(
    dagbag: DagBag, conf: dict[str, Any], table: str, ac_ids: list[int], cc_ids: list[str], dry_run: bool
) -> None:
    dag = dagbag.dags["ciexport_segment_export"]
    params = _trigger(dag, conf)
    rendered = {}
    for task_id in EXPORT_TASKS:
        # Render a copy, as the task runner does, so the parsed DAG keeps its templates.
        task = _export_task(dag, task_id).prepare_for_execution()
        assert isinstance(task, BaseSegmentExportOperator)
        task.render_template_fields(_context(dag, params), jinja_env=dag.get_template_env())
        rendered[task_id] = task
        assert task.sql == f"SELECT * FROM {table}"
        # Each run writes its own outcome log, keyed by customer_id.
        file = task_id.removeprefix("export_to_") + ".csv"
        assert str(task.outcomes_path).endswith(f"/ciexport-outcomes/ciexport_segment_export/{RUN_ID}/{file}")
        assert task.outcome_key == ("customer_id",)
        assert task.dry_run is dry_run
    # The refresh task builds the table the exports read.
    assert any(s.startswith(f"CREATE TABLE {table} ") for s in _refresh_statements(dag, "refresh_segments"))
    # Each set of lists has its own state: a manual run to other lists never meets the production state.
    names = {t: str(task.state_path).rsplit("/", 1)[-1] for t, task in rendered.items()}
    assert (
        names["export_to_activecampaign"]
        == f"{conf.get('segment', 'vip')}-activecampaign-{'+'.join(sorted(map(str, ac_ids)))}.state"
    )
    assert (
        names["export_to_constantcontact"]
        == f"{conf.get('segment', 'vip')}-constantcontact-{'+'.join(sorted(cc_ids))}.state"
    )
    # The rendered list ids are what the operators accept.
    assert parse_ac_list_ids(rendered["export_to_activecampaign"].list_ids()) == ac_ids
    assert parse_cc_list_ids(rendered["export_to_constantcontact"].list_ids()) == cc_ids


def test_asset_dags_export_when_the_segment_is_refreshed(dagbag: DagBag) -> None:
    refresh_dag = dagbag.dags["ciexport_refresh_vip_segment"]
    export_dag = dagbag.dags["ciexport_export_vip_segment"]

    [refresh] = refresh_dag.tasks
    assert isinstance(refresh, SQLExecuteQueryOperator)
    assert _refresh_statements(refresh_dag, refresh.task_id) == segment_refresh_sql("vip")
    [asset] = refresh.outlets
    assert isinstance(asset, Asset)

    # The export DAG is scheduled on exactly the asset the refresh task updates.
    assert export_dag.schedule == [asset]
    assert {type(t) for t in export_dag.tasks} == {
        ActiveCampaignSegmentExportOperator,
        ConstantContactSegmentExportOperator,
    }
    ac = _export_task(export_dag, "export_vip_to_activecampaign")
    cc = _export_task(export_dag, "export_vip_to_constantcontact")
    assert ac.sql == cc.sql == "SELECT * FROM segment_vip"
    assert parse_ac_list_ids(ac.list_ids()) == [2]
    assert parse_cc_list_ids(cc.list_ids()) == [CC_LIST_VIP]


def test_a_state_path_for_many_lists_stays_a_valid_file_name(dagbag: DagBag) -> None:
    dag = dagbag.dags["ciexport_segment_export"]
    many = [f"{i:08x}-2222-4222-8222-222222222222" for i in range(50)]
    task = _export_task(dag, "export_to_constantcontact").prepare_for_execution()
    assert isinstance(task, BaseSegmentExportOperator)
    task.render_template_fields(
        _context(dag, _trigger(dag, {"cc_list_ids": many})), jinja_env=dag.get_template_env()
    )
    name = str(task.state_path).rsplit("/", 1)[-1]
    assert re.fullmatch(r"vip-constantcontact-h[0-9a-f]{24}\.state", name)
    task = _export_task(dag, "export_to_constantcontact").prepare_for_execution()
    task.render_template_fields(
        _context(dag, _trigger(dag, {"cc_list_ids": list(reversed(many))})), jinja_env=dag.get_template_env()
    )
    assert str(task.state_path).rsplit("/", 1)[-1] == name  # the order of the lists does not matter
