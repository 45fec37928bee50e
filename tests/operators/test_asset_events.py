"""Asset events carry the export's counts for downstream DAGs."""

from __future__ import annotations

from collections import defaultdict
from types import SimpleNamespace
from typing import Any

import pytest
from airflow.sdk import Asset, AssetAlias

from airflow_provider_ciexport.asset_events import add_report_to_outlet_events, report_extra

REPORT = {
    "destination": "ActiveCampaign",
    "lists": ["2"],
    "dry_run": False,
    "read": 10,
    "accepted": 9,
    "rejected": 1,
    "jobs": [f"job-{i}" for i in range(4000)],
}


def test_the_extra_has_the_counts_but_not_the_job_ids() -> None:
    extra = report_extra(REPORT)
    assert extra["accepted"] == 9
    assert extra["lists"] == ["2"]
    assert "jobs" not in extra


def test_every_asset_outlet_gets_the_counts_and_aliases_are_left_alone() -> None:
    events: dict[Any, SimpleNamespace] = defaultdict(lambda: SimpleNamespace(extra={}))
    vip, lapsed = Asset("ciexport://ac/vip"), Asset("ciexport://ac/lapsed")

    done = add_report_to_outlet_events([vip, AssetAlias("exports"), lapsed], events, REPORT)

    assert done == ["ciexport://ac/vip", "ciexport://ac/lapsed"]
    assert events[vip].extra["read"] == 10
    assert events[lapsed].extra["rejected"] == 1
    assert AssetAlias("exports") not in events


def test_a_broken_event_is_logged_never_raised(caplog: pytest.LogCaptureFixture) -> None:
    class Broken:
        def __getitem__(self, key: Any) -> Any:
            raise KeyError(key)

    assert add_report_to_outlet_events([Asset("ciexport://x")], Broken(), REPORT) == []
    assert "Could not add the export's counts" in caplog.text
