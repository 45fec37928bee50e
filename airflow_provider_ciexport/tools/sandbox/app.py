"""Wires the fake APIs, the control API and the gate into one ASGI application."""

from __future__ import annotations

from fastapi import FastAPI

from airflow_provider_ciexport.tools.sandbox import activecampaign, constantcontact, control, oauth
from airflow_provider_ciexport.tools.sandbox.config import SandboxConfig
from airflow_provider_ciexport.tools.sandbox.gate import SandboxGate
from airflow_provider_ciexport.tools.sandbox.state import SandboxState


def create_app(state: SandboxState | None = None, config: SandboxConfig | None = None) -> SandboxGate:
    """The sandbox as an ASGI app serving ActiveCampaign, Constant Contact, OAuth and control routes.

    :param state: state to serve (a new one from ``config`` when omitted).
    :param config: startup config, used only when ``state`` is omitted.
    """
    state = state or SandboxState(config)
    app = FastAPI(title="ciexport sandbox", docs_url=None, redoc_url=None, openapi_url=None)
    app.include_router(activecampaign.build_router(state))
    app.include_router(constantcontact.build_router(state))
    app.include_router(oauth.build_router(state))
    app.include_router(control.build_router(state))
    return SandboxGate(app, app.router, state)
