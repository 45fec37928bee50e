"""Requests and constants the sandbox's HTTP tests share: credentials, imports and waits per API."""

from __future__ import annotations

import time
from typing import Any

import requests

from airflow_provider_ciexport.tools.sandbox import SEED, SandboxClient, SandboxServer
from airflow_provider_ciexport.tools.sandbox.seed import CC_LIST_NEWSLETTER

AC_H = {"Api-Token": SEED.ac_api_key}
TIMEOUT = 30
BASIC = (SEED.cc_client_id, SEED.cc_client_secret)


def ctl(sb: SandboxServer) -> SandboxClient:
    return sb.client


def contacts(n: int, start: int = 0, **extra: Any) -> list[dict[str, Any]]:
    return [{"email": f"user{i}@example.com", **extra} for i in range(start, start + n)]


def ac_import(sb: SandboxServer, items: list[dict[str, Any]], **kwargs: Any) -> requests.Response:
    return requests.post(
        f"{sb.url}/api/3/import/bulk_import",
        headers=AC_H,
        json={"contacts": items},
        timeout=TIMEOUT,
        **kwargs,
    )


def ac_wait(sb: SandboxServer, batch_id: str) -> dict[str, Any]:
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        r = requests.get(
            f"{sb.url}/api/3/import/info", headers=AC_H, params={"batchId": batch_id}, timeout=TIMEOUT
        )
        assert r.status_code == 200
        body: dict[str, Any] = r.json()
        if body["status"] in ("completed", "failed", "interrupted"):
            return body
        time.sleep(0.01)
    raise AssertionError("AC job did not finish")


def cc_token(sb: SandboxServer) -> str:
    r = requests.post(
        sb.cc_token_url,
        auth=BASIC,
        data={"grant_type": "refresh_token", "refresh_token": SEED.cc_refresh_token},
        timeout=TIMEOUT,
    )
    assert r.status_code == 200, r.text
    token: str = r.json()["access_token"]
    return token


def cc_h(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def cc_import(
    sb: SandboxServer, token: str, rows: list[dict[str, Any]], list_ids: list[str] | None = None
) -> requests.Response:
    body = {"import_data": rows, "list_ids": list_ids if list_ids is not None else [CC_LIST_NEWSLETTER]}
    return requests.post(
        f"{sb.cc_api_base_url}/activities/contacts_json_import",
        headers=cc_h(token),
        json=body,
        timeout=TIMEOUT,
    )


def cc_wait(sb: SandboxServer, token: str, activity_id: str) -> dict[str, Any]:
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        r = requests.get(
            f"{sb.cc_api_base_url}/activities/{activity_id}", headers=cc_h(token), timeout=TIMEOUT
        )
        assert r.status_code == 200
        body: dict[str, Any] = r.json()
        if body["state"] not in ("initialized", "processing"):
            return body
        time.sleep(0.01)
    raise AssertionError("CC activity did not finish")
