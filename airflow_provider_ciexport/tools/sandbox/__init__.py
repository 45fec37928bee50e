"""A local server that behaves like the ActiveCampaign and Constant Contact APIs.

One FastAPI app on 127.0.0.1 serves ActiveCampaign under ``/api/3``, Constant Contact under
``/v3``, its OAuth 2 server under ``/oauth2/default/v1`` and a control API under ``/_sandbox``
(reset, config, fault injection, stats, request log, list contents). It follows
``docs/api-notes.md``: limits, error shapes, job lifecycles, rate limits and quirks such as the
silent 4 MB truncation of Constant Contact imports.

Seeded state (see :mod:`airflow_provider_ciexport.tools.sandbox.seed`): ActiveCampaign key
``sandbox-ac-key``, lists 1 "Newsletter", 2 "VIP customers", 3 "Lapsed customers", fields 1
``LOYALTY_TIER``, 2 ``FAVORITE_STORE``, 3 ``CITY``; Constant Contact client
``sandbox-client-id``/``sandbox-client-secret``, refresh token ``sandbox-refresh-token``, lists
``11111111-1111-4111-8111-111111111111`` "Newsletter", ``22222222-2222-4222-8222-222222222222``
"VIP customers", ``33333333-3333-4333-8333-333333333333`` "Lapsed customers", custom fields
``loyalty_tier``, ``favorite_store``, ``city``.

Usage::

    with SandboxServer(SandboxConfig(rate_scale=20)) as server:
        server.client.reset()
        ...  # point connections at server.url, server.cc_api_base_url, server.cc_token_url
        server.client.stats()

or ``python -m airflow_provider_ciexport.tools.sandbox --port 8025``.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from airflow_provider_ciexport.tools.sandbox.client import SandboxClient
    from airflow_provider_ciexport.tools.sandbox.config import SandboxConfig
    from airflow_provider_ciexport.tools.sandbox.seed import SEED, Seed
    from airflow_provider_ciexport.tools.sandbox.server import SandboxServer

__all__ = ["SEED", "SandboxClient", "SandboxConfig", "SandboxServer", "Seed"]

# Imported on first use, so light modules (seed, emails) do not pull in FastAPI and uvicorn.
_LAZY = {
    "SEED": "seed",
    "Seed": "seed",
    "SandboxClient": "client",
    "SandboxConfig": "config",
    "SandboxServer": "server",
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(f"{__name__}.{_LAZY[name]}"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
