"""max_rejected_fraction and max_invalid_fraction: a finished export over either fails, not retried.

The operator runs the real export engine here, against an in-memory destination (no HTTP).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from airflow.sdk.exceptions import AirflowFailException

from airflow_provider_ciexport.exceptions import CiExportError, ExportConfigurationError, ExportThresholdError
from airflow_provider_ciexport.operators import base
from airflow_provider_ciexport.operators.activecampaign import ActiveCampaignSegmentExportOperator
from airflow_provider_ciexport.operators.thresholds import threshold_error
from airflow_provider_ciexport.tools.sandbox import seed
from airflow_provider_ciexport.tools.sandbox.client import SandboxClient
from tests.export.fakes import FakeDestination
from tests.operators import segment_data
from tests.operators.memory_operator import MAPPING, MemoryOperator, memory_export


def _rows(valid: int, invalid: int = 0) -> list[dict[str, Any]]:
    good = [{"email": f"person.{i}@example.com", "first": f"P{i}"} for i in range(valid)]
    return good + [{"email": f"not-an-address-{i}", "first": f"Quinn{i}"} for i in range(invalid)]


def _run(
    records: list[dict[str, Any]],
    rejected: dict[int, int] | None = None,
    context: dict[str, Any] | None = None,
    **kwargs: Any,
) -> tuple[MemoryOperator, dict[str, Any]]:
    operator = memory_export(records, FakeDestination(rejected=rejected), **kwargs)
    return operator, operator.execute(context=context or {})  # type: ignore[arg-type]


# 10 contacts in batches of 3: batch 1 refuses 2 (a share of 0.2) or 3 (0.3).
@pytest.mark.parametrize(("limit", "refused", "fails"), [(0.19, 2, True), (0.2, 2, False), (0.25, 2, False)])
def test_refused_share_over_max_rejected_fraction_fails(limit: float, refused: int, fails: bool) -> None:
    if not fails:
        _, report = _run(_rows(10), rejected={1: refused}, max_rejected_fraction=limit)
        assert report["rejected"] == refused and report["submitted"] == 10
        return
    with pytest.raises(ExportThresholdError) as err:
        _run(_rows(10), rejected={1: refused}, max_rejected_fraction=limit)
    message = str(err.value)
    assert f"{refused} of 10 contacts sent were refused" in message
    assert f"max_rejected_fraction={limit:g}" in message
    assert "max_invalid_fraction" not in message


# 8 valid rows and 2 invalid ones: a share of 0.2.
@pytest.mark.parametrize(("limit", "fails"), [(0.1, True), (0.2, False), (0.5, False), (0.0, True)])
def test_invalid_share_over_max_invalid_fraction_fails(limit: float, fails: bool) -> None:
    if not fails:
        _, report = _run(_rows(8, invalid=2), max_invalid_fraction=limit)
        assert report["invalid"] == 2 and report["read"] == 10
        return
    with pytest.raises(ExportThresholdError, match=r"2 of 10 rows read were invalid \(20\.0%\)") as err:
        _run(_rows(8, invalid=2), max_invalid_fraction=limit)
    assert f"max_invalid_fraction={limit:g}" in str(err.value)


def test_the_failure_comes_after_every_valid_contact_was_sent() -> None:
    operator = memory_export(_rows(4, invalid=6), max_invalid_fraction=0.5)
    with pytest.raises(ExportThresholdError):
        operator.execute(context={})  # type: ignore[arg-type]
    assert sorted(operator.destination.emails_sent()) == sorted(r["email"] for r in _rows(4))


def test_the_failure_is_not_retried_and_is_the_providers_own() -> None:
    with pytest.raises(ExportThresholdError) as err:
        _run(_rows(1, invalid=1), max_invalid_fraction=0.1)
    # AirflowFailException: Airflow fails the task without its retries, so nothing is sent again.
    assert isinstance(err.value, AirflowFailException) and isinstance(err.value, CiExportError)
    assert "nothing was sent" not in str(err.value).lower()
    assert "not retried" in str(err.value)


def test_both_shares_over_their_limits_are_both_in_the_message_without_personal_data() -> None:
    rows = _rows(10, invalid=5)
    with pytest.raises(ExportThresholdError) as err:
        _run(rows, rejected={1: 3}, max_rejected_fraction=0.1, max_invalid_fraction=0.25)
    message = str(err.value)
    assert (
        "3 of 10 contacts sent were refused by the destination (30.0%), more than max_rejected_fraction=0.1 (10%)"
        in message
    )
    assert "5 of 15 rows read were invalid (33.3%), more than max_invalid_fraction=0.25 (25%)" in message
    for row in rows:
        assert row["email"] not in message and row["first"] not in message
    assert "@" not in message


@pytest.mark.parametrize("limits", [{}, {"max_rejected_fraction": None, "max_invalid_fraction": None}])
def test_without_thresholds_any_share_succeeds(limits: dict[str, Any]) -> None:
    _, report = _run(_rows(3, invalid=30), rejected={1: 3}, **limits)
    assert report["rejected"] == 3 and report["invalid"] == 30


def test_nothing_read_or_nothing_sent_never_fails() -> None:
    _, report = _run([], max_rejected_fraction=0.0, max_invalid_fraction=0.0)
    assert report["read"] == 0
    # Everything invalid: nothing sent, so no refused share (the invalid one is what fails then).
    _, report = _run(_rows(0, invalid=3), max_rejected_fraction=0.0)
    assert report["submitted"] == 0


def test_refusals_unknown_without_the_wait_never_fail() -> None:
    _, report = _run(_rows(10), rejected={1: 3}, max_rejected_fraction=0.0, wait_for_completion=False)
    assert report["rejected"] is None


def test_a_dry_run_fails_on_its_invalid_share_saying_nothing_was_sent() -> None:
    with pytest.raises(
        ExportThresholdError, match=r"^2 of 4 rows read were invalid.*Dry run: nothing was sent"
    ):
        _run(_rows(2, invalid=2), dry_run=True, max_invalid_fraction=0.3, max_rejected_fraction=0.0)


class _TaskInstance:
    """What the operator uses of a task instance: its identity and ``xcom_push``."""

    dag_id, task_id, run_id, map_index, try_number = "dag", "export", "run", -1, 1

    def __init__(self) -> None:
        self.pushed: dict[str, Any] = {}

    def xcom_push(self, key: str, value: Any) -> None:
        self.pushed[key] = value


@pytest.mark.parametrize("do_xcom_push", [True, False])
def test_the_report_is_pushed_to_xcom_before_the_failure(
    do_xcom_push: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(base, "progress_store", lambda context: None)  # no Variable without a database
    ti = _TaskInstance()
    with pytest.raises(ExportThresholdError):
        _run(_rows(2, invalid=2), context={"ti": ti}, max_invalid_fraction=0.1, do_xcom_push=do_xcom_push)
    if do_xcom_push:
        assert ti.pushed["return_value"]["invalid"] == 2 and ti.pushed["return_value"]["submitted"] == 2
    else:
        assert ti.pushed == {}


@pytest.mark.parametrize("name", ["max_rejected_fraction", "max_invalid_fraction", "max_removal_fraction"])
@pytest.mark.parametrize("value", [-0.1, 1.5, "0.2", True, float("nan")])
def test_a_threshold_outside_0_to_1_is_refused_naming_it(name: str, value: Any) -> None:
    with pytest.raises(ExportConfigurationError, match=rf"^{name} must be a number between 0 and 1") as err:
        MemoryOperator(task_id="export", list_id="L1", field_mapping=MAPPING, records=[], **{name: value})
    assert "0.05 for 5%" in str(err.value)


@pytest.mark.parametrize("value", [0, 1, 0.05, None])
def test_a_threshold_of_0_to_1_or_none_is_accepted(value: Any) -> None:
    operator = MemoryOperator(
        task_id="export", list_id="L1", field_mapping=MAPPING, records=[], max_invalid_fraction=value
    )
    assert operator.max_invalid_fraction == (None if value is None else float(value))


def test_max_removal_fraction_takes_no_none() -> None:
    with pytest.raises(
        ExportConfigurationError, match="max_removal_fraction must be a number between 0 and 1"
    ):
        MemoryOperator(
            task_id="export", list_id="L1", field_mapping=MAPPING, records=[], max_removal_fraction=None
        )


@pytest.mark.parametrize(
    ("report", "fails"),
    [
        ({"read": 100, "invalid": 5, "submitted": 95, "rejected": 5}, False),  # 5% and 5.26%, limit 10%
        ({"read": 100, "invalid": 10, "submitted": 90, "rejected": 9}, False),  # exactly 10% each
        ({"read": 100, "invalid": 11, "submitted": 89, "rejected": 0}, True),
        ({"read": 100, "invalid": 0, "submitted": 100, "rejected": 11}, True),
        ({"read": 0, "invalid": 0, "submitted": 0, "rejected": 0}, False),
        ({"read": 10, "invalid": 0, "submitted": 10, "rejected": None}, False),
    ],
)
def test_threshold_error_compares_each_share_with_its_limit(report: dict[str, Any], fails: bool) -> None:
    error = threshold_error(report, max_rejected_fraction=0.1, max_invalid_fraction=0.1)
    assert (error is not None) == fails


def _writes(sandbox: SandboxClient) -> int:
    """How many requests that write (POST, PUT, DELETE) ActiveCampaign received."""
    by_endpoint = sandbox.stats()["requests"]["ac"]["by_endpoint"]
    return sum(v["count"] for k, v in by_endpoint.items() if not k.startswith("GET"))


def _ac_export(ac_conn: str, **kwargs: Any) -> dict[str, Any]:
    operator = ActiveCampaignSegmentExportOperator(
        task_id="export",
        list_id=seed.AC_LIST_VIP,
        field_mapping={"email": "email", "first_name": "first"},
        activecampaign_conn_id=ac_conn,
        records=segment_data.ROWS,
        **kwargs,
    )
    report: dict[str, Any] = operator.execute(context={})  # type: ignore[arg-type]
    return report


@pytest.mark.integration
@pytest.mark.scaled_limits
def test_over_max_invalid_fraction_the_task_fails_once_the_valid_contacts_are_on_the_list(
    ac_conn: str, sandbox: SandboxClient, tmp_path: Path
) -> None:
    state = f"file://{tmp_path}/vip.state"
    # 5 of the segment's 12 rows are invalid: 41.7%.
    with pytest.raises(ExportThresholdError, match=r"^5 of 12 rows read were invalid \(41\.7%\)"):
        _ac_export(ac_conn, state_path=state, max_invalid_fraction=0.25)
    on_list = {c["email"] for c in sandbox.ac_list_contacts(seed.AC_LIST_VIP)}
    assert on_list == set(segment_data.EXPECTED)
    sent = _writes(sandbox)
    assert sent > 0
    # Run again, as a user clearing the failed task would: the state says everything is on the list.
    with pytest.raises(ExportThresholdError):
        _ac_export(ac_conn, state_path=state, max_invalid_fraction=0.25)
    assert _writes(sandbox) == sent
    # At the share it allows, the same segment succeeds.
    report = _ac_export(ac_conn, state_path=state, max_invalid_fraction=5 / 12)
    assert report["invalid"] == 5 and report["unchanged"] == len(segment_data.EXPECTED)
