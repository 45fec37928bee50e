"""The sandbox the HTTP tests of a module share, reset before each test."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from airflow_provider_ciexport.tools.sandbox import SandboxConfig, SandboxServer


@pytest.fixture(scope="module")
def server() -> Iterator[SandboxServer]:
    # A high rate_scale keeps ordinary tests clear of the limits and makes jobs finish at once.
    with SandboxServer(SandboxConfig(rate_scale=1000.0)) as srv:
        yield srv


@pytest.fixture
def sb(server: SandboxServer) -> SandboxServer:
    server.client.reset()
    server.client.clear_faults()
    return server
