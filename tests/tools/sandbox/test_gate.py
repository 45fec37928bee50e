"""The gate in front of the APIs: latency that blocks no other request, and what a web page may send."""

from __future__ import annotations

import threading
import time

import pytest
import requests

from airflow_provider_ciexport.tools.sandbox import SandboxServer
from airflow_provider_ciexport.tools.sandbox.seed import AC_LIST_VIP
from tests.tools.sandbox.helpers import AC_H, TIMEOUT, ac_import, contacts, ctl

pytestmark = pytest.mark.integration


def test_slow_import_does_not_block_other_requests(sb: SandboxServer) -> None:
    ctl(sb).reset(import_latency_s=1.0)
    result: dict[str, int] = {}

    def slow() -> None:
        result["import"] = ac_import(sb, contacts(10)).status_code

    worker = threading.Thread(target=slow)
    worker.start()
    time.sleep(0.1)
    assert requests.get(f"{sb.url}/api/3/lists", headers=AC_H, timeout=TIMEOUT).status_code == 200
    assert worker.is_alive()  # the import is still sleeping while the GET has been answered
    worker.join()
    assert result["import"] == 200


def test_a_request_for_another_host_name_is_refused(sb: SandboxServer) -> None:
    # DNS rebinding: a page of evil.example whose name now resolves to 127.0.0.1 sends Host: evil.example.
    for path in ("/_sandbox/config", f"/_sandbox/ac/lists/{AC_LIST_VIP}/contacts", "/api/3/lists"):
        r = requests.get(f"{sb.url}{path}", headers={"Host": "evil.example:8025", **AC_H}, timeout=TIMEOUT)
        assert r.status_code == 403 and "loopback" in r.json()["error"], path
    r = requests.post(
        f"{sb.url}/_sandbox/reset",
        headers={"Host": "evil.example"},
        json={"latency_s": 0.25},
        timeout=TIMEOUT,
    )
    assert r.status_code == 403 and ctl(sb).config()["latency_s"] != 0.25
    for host in ("127.0.0.1", "localhost:1", "[::1]:8025", "127.0.0.2"):
        r = requests.get(f"{sb.url}/_sandbox/health", headers={"Host": host}, timeout=TIMEOUT)
        assert r.status_code == 200, host


def test_a_control_call_without_a_json_body_is_refused(sb: SandboxServer) -> None:
    # What a cross-site form or a text/plain fetch can send without a CORS preflight.
    ctl(sb).add_fault(api="cc", kind="drop", times=1)
    for headers, body in (
        ({"Content-Type": "text/plain"}, '{"latency_s": 0.25}'),
        ({"Content-Type": "application/x-www-form-urlencoded"}, "latency_s=0.25"),
        ({}, ""),
    ):
        r = requests.post(f"{sb.url}/_sandbox/reset", headers=headers, data=body, timeout=TIMEOUT)
        assert r.status_code == 415 and "application/json" in r.json()["error"], headers
    assert ctl(sb).config()["latency_s"] != 0.25 and ctl(sb).faults()
    r = requests.post(f"{sb.url}/_sandbox/reset", json={}, timeout=TIMEOUT)
    assert r.status_code == 200 and ctl(sb).faults() == []
    # DELETE needs a CORS preflight, which a page cannot pass here: it takes no body.
    ctl(sb).add_fault(api="cc", kind="drop", times=1)
    assert requests.delete(f"{sb.url}/_sandbox/faults", timeout=TIMEOUT).json() == {"removed": 1}
