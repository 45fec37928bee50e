"""A vendor error that quotes the refused contact reaches neither the task's error nor its log."""

from __future__ import annotations

import logging
import traceback
from typing import Any

import pytest

from airflow_provider_ciexport.exceptions import CiExportError
from airflow_provider_ciexport.operators.activecampaign import ActiveCampaignSegmentExportOperator
from airflow_provider_ciexport.operators.constantcontact import ConstantContactSegmentExportOperator
from airflow_provider_ciexport.tools.sandbox import seed
from airflow_provider_ciexport.tools.sandbox.client import SandboxClient

CC_VIP = "22222222-2222-4222-8222-222222222222"
#: The refused contact: each value is one the task's error and log must not carry.
QUOTED = {
    "email": "quintessa.zebulon@example.com",
    "first": "Quintessa",
    "last": "Zebulon-Marchetti",
    "phone": "+1 415 555 0199",
}
MAPPING = {"email": "email", "first_name": "first", "last_name": "last", "phone": "phone"}


def _rows(count: int) -> list[dict[str, str]]:
    others = [
        {
            "email": f"other.{i}@example.com",
            "first": f"Other{i}",
            "last": "Person",
            "phone": f"+1 212 555 {i:04d}",
        }
        for i in range(count - 1)
    ]
    return [dict(QUOTED), *others]


def _failure_text(err: pytest.ExceptionInfo[BaseException], caplog: pytest.LogCaptureFixture) -> str:
    """What the task log shows of a failed task: its log lines and the traceback Airflow prints."""
    return "\n".join(
        [*(record.getMessage() for record in caplog.records), *traceback.format_exception(err.value)]
    )


def _assert_quotes_none_of_the_contact(text: str) -> None:
    lowered = text.lower()
    for value in (*QUOTED.values(), "415 555 0199", "quintessa", "zebulon"):
        assert value.lower() not in lowered, value
    assert "@example.com" not in lowered


def _run(operator: Any, caplog: pytest.LogCaptureFixture) -> str:
    with caplog.at_level(logging.INFO), pytest.raises(CiExportError) as err:
        operator.execute(context={})
    return _failure_text(err, caplog)


@pytest.mark.parametrize(
    ("rows", "endpoint"), [(20, "import/bulk_import"), (1, "contact/sync")], ids=["bulk", "sync"]
)
def test_activecampaign_error_quoting_the_contact_is_not_copied(
    ac_conn: str, sandbox: SandboxClient, caplog: pytest.LogCaptureFixture, rows: int, endpoint: str
) -> None:
    sandbox.add_fault(api="ac", kind="quoting_error", path=endpoint, method="POST")
    operator = ActiveCampaignSegmentExportOperator(
        task_id="export",
        list_id=seed.AC_LIST_VIP,
        records=_rows(rows),
        field_mapping=MAPPING,
        activecampaign_conn_id=ac_conn,
    )
    text = _run(operator, caplog)
    _assert_quotes_none_of_the_contact(text)
    # What is worth knowing stays: the status, the request's path and the vendor's own keys.
    assert f"HTTP 400 to POST {endpoint}" in text
    assert ("contact 0: Field' email' incorrect format" if rows > 1 else "field_invalid") in text
    assert sandbox.stats()["faults_injected"] == {"quoting_error": 1}


@pytest.mark.parametrize("shape", ["list", "object"])
def test_constantcontact_error_quoting_the_contact_is_not_copied(
    cc_conn: str, sandbox: SandboxClient, caplog: pytest.LogCaptureFixture, shape: str
) -> None:
    sandbox.configure(cc_error_shape=shape)
    sandbox.add_fault(api="cc", kind="quoting_error", path="contacts_json_import")
    operator = ConstantContactSegmentExportOperator(
        task_id="export",
        list_id=CC_VIP,
        records=_rows(20),
        field_mapping=MAPPING,
        constantcontact_conn_id=cc_conn,
    )
    text = _run(operator, caplog)
    _assert_quotes_none_of_the_contact(text)
    assert "HTTP 400 to POST activities/contacts_json_import" in text
    assert "contacts.api.validation.error" in text
    assert sandbox.stats()["faults_injected"] == {"quoting_error": 1}
    assert sandbox.cc_list_contacts(CC_VIP) == []
