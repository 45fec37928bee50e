"""The Airflow connections that point at a sandbox: written once, used by the demo, the tests and the bench.

Each function returns a connection's fields as ``AIRFLOW_CONN_<ID>`` JSON takes them
(``conn_type``, ``host``, ``login``, ``password``, ``extra``). Light on purpose: no FastAPI, no Airflow.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

from airflow_provider_ciexport.tools.sandbox.seed import SEED

#: The connection ids the provider's operators use by default (and the example DAGs use).
AC_CONN_ID = "activecampaign_default"
CC_CONN_ID = "constantcontact_default"


def cc_api_base_url(url: str) -> str:
    """The Constant Contact ``api_base_url`` of a sandbox at ``url`` (``http://127.0.0.1:8025``)."""
    return f"{url}/v3"


def cc_token_url(url: str) -> str:
    """The Constant Contact OAuth token endpoint of a sandbox at ``url``."""
    return f"{url}/oauth2/default/v1/token"


def ac_connection(url: str, **extra: Any) -> dict[str, Any]:
    """An ``activecampaign`` connection to the sandbox at ``url`` with its seeded API key.

    :param url: the sandbox's base URL.
    :param extra: connection extras, e.g. ``requests_per_second=100``.
    """
    fields: dict[str, Any] = {"conn_type": "activecampaign", "host": url, "password": SEED.ac_api_key}
    if extra:
        fields["extra"] = dict(extra)
    return fields


def cc_connection(url: str, **extra: Any) -> dict[str, Any]:
    """A ``constantcontact`` connection to the sandbox at ``url`` with its seeded client and refresh token.

    :param url: the sandbox's base URL.
    :param extra: more extras, or replacements (e.g. ``refresh_token=...``).
    """
    return {
        "conn_type": "constantcontact",
        "login": SEED.cc_client_id,
        "password": SEED.cc_client_secret,
        "extra": {
            "refresh_token": SEED.cc_refresh_token,
            "api_base_url": cc_api_base_url(url),
            "oauth_url": cc_token_url(url),
            **extra,
        },
    }


def connection_env(connections: Mapping[str, Mapping[str, Any]]) -> dict[str, str]:
    """``{conn_id: fields}`` as ``AIRFLOW_CONN_<ID>`` environment variables.

    :param connections: connection id -> fields, e.g. ``{AC_CONN_ID: ac_connection(url)}``.
    """
    return {f"AIRFLOW_CONN_{conn_id.upper()}": json.dumps(fields) for conn_id, fields in connections.items()}
