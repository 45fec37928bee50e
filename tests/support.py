"""Helpers shared by the tests."""

from __future__ import annotations

import json
from typing import Any

import pytest


def set_connection(monkeypatch: pytest.MonkeyPatch, conn_id: str, **fields: Any) -> str:
    """Define an Airflow connection through the environment, as a deployment's secrets would."""
    monkeypatch.setenv(f"AIRFLOW_CONN_{conn_id.upper()}", json.dumps(fields))
    return conn_id


def calls(stats: dict[str, Any], api: str, endpoint: str) -> int:
    """How many requests the sandbox received for ``endpoint`` (e.g. ``"POST /api/3/import/bulk_import"``)."""
    by_endpoint = stats["requests"].get(api, {}).get("by_endpoint", {})
    return int(by_endpoint.get(endpoint, {}).get("count", 0))


def posts(stats: dict[str, Any], api: str) -> list[str]:
    """Every POST endpoint of ``api`` the sandbox received."""
    return [e for e in stats["requests"].get(api, {}).get("by_endpoint", {}) if e.startswith("POST")]
