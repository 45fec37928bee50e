"""The control API's reset and config."""

from __future__ import annotations

import pytest
import requests

from airflow_provider_ciexport.tools.sandbox import SandboxServer
from airflow_provider_ciexport.tools.sandbox.seed import AC_LIST_NEWSLETTER
from tests.tools.sandbox.helpers import TIMEOUT, ac_import, ac_wait, contacts, ctl

pytestmark = pytest.mark.integration


def test_reset_and_config(sb: SandboxServer) -> None:
    client = ctl(sb)
    ac_wait(sb, ac_import(sb, contacts(10, subscribe=[{"listid": 1}])).json()["batchId"])
    assert client.configure(latency_s=0.0, ac_exclusion_list=["x@example.com"])["ac_exclusion_list"] == [
        "x@example.com"
    ]
    r = requests.post(f"{sb.url}/_sandbox/config", json={"no_such_setting": 1}, timeout=TIMEOUT)
    assert r.status_code == 400
    r = requests.post(f"{sb.url}/_sandbox/config", json={"rate_scale": "fast"}, timeout=TIMEOUT)
    assert r.status_code == 400
    config = client.reset(cc_daily_quota=5)
    assert (
        config["cc_daily_quota"] == 5 and config["rate_scale"] == 1000.0 and config["ac_exclusion_list"] == []
    )
    assert client.ac_list_contacts(AC_LIST_NEWSLETTER) == []
    assert client.stats()["requests"] == {}
    assert client.config()["cc_daily_quota"] == 5
