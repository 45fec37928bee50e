"""Every error raised before any contact is sent says "Nothing was sent."; one raised after does not."""

from __future__ import annotations

import sqlite3
from pathlib import Path
from typing import Any

import pytest

from airflow_provider_ciexport.exceptions import CiExportError
from airflow_provider_ciexport.operators.activecampaign import ActiveCampaignSegmentExportOperator
from airflow_provider_ciexport.operators.constantcontact import ConstantContactSegmentExportOperator
from airflow_provider_ciexport.tools.sandbox import seed
from airflow_provider_ciexport.tools.sandbox.client import SandboxClient
from airflow_provider_ciexport.tools.sandbox.server import SandboxServer
from tests.support import posts, set_connection

CC_VIP = "22222222-2222-4222-8222-222222222222"
ROWS = [{"email": f"person.{i}@example.com", "first": f"P{i}"} for i in range(30)]
MAPPING = {"email": "email", "first_name": "first"}


#: Failures before sending, each by the parameters that cause it; a source file is named by its key
#: in :func:`files`, a list by "bad list" or "unknown list" (each destination has its own ids).
CASES: dict[str, dict[str, Any]] = {
    "unknown attribute": {"field_mapping": {"email": "email", "nickname": "first"}},
    "missing column": {"field_mapping": {"email": "mail"}},
    "no source": {"records": None},
    "missing file": {"records": None, "source_path": "/nonexistent/segment.csv"},
    "header-less csv": {"records": None, "source_path": "noheader.csv"},
    "line too long": {"records": None, "source_path": "long.jsonl", "max_line_length": 1000},
    "bad json": {"records": None, "source_path": "bad.jsonl"},
    "source_path leaves its folder": {"records": None, "source_path": "escape"},
    "too many columns": {"records": None, "source_path": "outside.csv", "max_columns": 1},
    "bad csv_options": {"records": None, "source_path": "noheader.csv", "csv_options": {"sep": ";"}},
    "failing query": {"records": None, "sql": "SELECT email FROM missing", "sql_conn_id": "seg_db"},
    "over max_profiles": {"max_profiles": 10},
    "bad list id": {"list_id": "bad list"},
    "unknown list": {"list_id": "unknown list"},
    "dry run, unknown list": {"dry_run": True, "list_id": "unknown list"},
}
LISTS = {
    "ac": {"bad list": "vip", "unknown list": 99},
    "cc": {"bad list": "not-a-uuid", "unknown list": "44444444-4444-4444-8444-444444444444"},
}


@pytest.fixture
def files(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> dict[str, str]:
    """Sources that fail in each way a source can, before anything is sent."""
    (tmp_path / "noheader.csv").write_text("ann@example.com,Ann\nbob@example.com,Bob\n")
    (tmp_path / "long.jsonl").write_text('{"email": "a@example.com", "first": "' + "x" * 5000 + '"}\n')
    (tmp_path / "bad.jsonl").write_text('{"email": "a@example.com"}\n{"email": \n')
    db = tmp_path / "profiles.db"
    with sqlite3.connect(db) as conn:
        conn.execute("CREATE TABLE t (email TEXT, first TEXT)")
    set_connection(monkeypatch, "seg_db", conn_type="sqlite", host=str(db))
    # A readable, valid segment outside the folder that source_path names: it must not be read.
    (tmp_path / "segments").mkdir()
    (tmp_path / "outside.csv").write_text("email,first\nann@example.com,Ann\n")
    return {path.name: str(path) for path in tmp_path.iterdir()} | {
        "escape": f"file://{tmp_path}/segments/../outside.csv"
    }


def _params(api: str, case: str, files: dict[str, str], **base: Any) -> dict[str, Any]:
    params = {**base, **CASES[case]}
    if "source_path" in params:
        params["source_path"] = files.get(params["source_path"], params["source_path"])
    params["list_id"] = LISTS[api].get(params["list_id"], params["list_id"])
    return params


def _fails_saying_nothing_was_sent(operator: Any, sandbox: SandboxClient, api: str) -> None:
    with pytest.raises(CiExportError) as err:
        operator.execute(context={})
    message = str(err.value)
    assert message.lower().count("nothing was sent") == 1, message
    assert posts(sandbox.stats(), api) == []


@pytest.mark.parametrize("case", [*CASES, "unknown custom field", "refused key"])
def test_activecampaign_errors_before_sending_say_nothing_was_sent(
    ac_conn: str,
    sandbox: SandboxClient,
    sandbox_server: SandboxServer,
    monkeypatch: pytest.MonkeyPatch,
    files: dict[str, str],
    case: str,
) -> None:
    conn_id = ac_conn
    if case == "unknown custom field":
        params = {
            "records": ROWS,
            "list_id": seed.AC_LIST_VIP,
            "field_mapping": {"email": "email", "field:SHOE_SIZE": "first"},
        }
    elif case == "refused key":
        params = {"records": ROWS, "list_id": seed.AC_LIST_VIP, "field_mapping": MAPPING}
        wrong = {**sandbox_server.ac_connection(), "password": "not-the-key"}
        conn_id = set_connection(monkeypatch, "ac_wrong_key", **wrong)
    else:
        params = _params("ac", case, files, records=ROWS, list_id=seed.AC_LIST_VIP, field_mapping=MAPPING)
    operator = ActiveCampaignSegmentExportOperator(task_id="export", activecampaign_conn_id=conn_id, **params)
    _fails_saying_nothing_was_sent(operator, sandbox, "ac")


@pytest.mark.parametrize("case", [*CASES, "unknown custom field"])
def test_constantcontact_errors_before_sending_say_nothing_was_sent(
    cc_conn: str, sandbox: SandboxClient, files: dict[str, str], case: str
) -> None:
    if case == "unknown custom field":
        params = {
            "records": ROWS,
            "list_id": CC_VIP,
            "field_mapping": {"email": "email", "cf:shoe_size": "first"},
        }
    else:
        params = _params("cc", case, files, records=ROWS, list_id=CC_VIP, field_mapping=MAPPING)
    operator = ConstantContactSegmentExportOperator(
        task_id="export", constantcontact_conn_id=cc_conn, **params
    )
    _fails_saying_nothing_was_sent(operator, sandbox, "cc")


def test_an_error_after_sending_does_not_say_nothing_was_sent(ac_conn: str, sandbox: SandboxClient) -> None:
    sandbox.add_fault(api="ac", kind="quoting_error", path="bulk_import")
    operator = ActiveCampaignSegmentExportOperator(
        task_id="export",
        list_id=seed.AC_LIST_VIP,
        records=ROWS,
        field_mapping=MAPPING,
        activecampaign_conn_id=ac_conn,
    )
    with pytest.raises(CiExportError) as err:
        operator.execute(context={})
    assert "nothing was sent" not in str(err.value).lower()
    assert "So far 0 of 30 contacts were confirmed" in str(err.value)


@pytest.mark.parametrize(
    ("operator_class", "parameter", "list_id"),
    [
        (ActiveCampaignSegmentExportOperator, "activecampaign_conn_id", seed.AC_LIST_VIP),
        (ConstantContactSegmentExportOperator, "constantcontact_conn_id", CC_VIP),
    ],
)
def test_a_connection_that_does_not_exist_is_named_with_the_fix(
    operator_class: Any, parameter: str, list_id: Any
) -> None:
    operator = operator_class(
        task_id="export", list_id=list_id, records=ROWS, field_mapping=MAPPING, **{parameter: "no_such_conn"}
    )
    with pytest.raises(CiExportError) as err:
        operator.execute(context={})
    message = str(err.value)
    assert "There is no Airflow connection 'no_such_conn'" in message and parameter in message
    assert "AIRFLOW_CONN_NO_SUCH_CONN" in message and message.endswith("Nothing was sent.")
