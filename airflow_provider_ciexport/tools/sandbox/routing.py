"""Registering the sandbox's route handlers, which take the state they answer from, on a router."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterable

from fastapi import APIRouter, Request
from starlette.responses import Response

from airflow_provider_ciexport.tools.sandbox.state import SandboxState

#: A route handler: it answers a request from the sandbox's state.
Handler = Callable[[SandboxState, Request], Awaitable[Response]]
#: A route: its HTTP method, its path under the router's prefix and its handler, whose name it takes.
Route = tuple[str, str, Handler]


def bind_routes(router: APIRouter, state: SandboxState, routes: Iterable[Route]) -> APIRouter:
    """Register ``routes`` on ``router`` in their order (the first that matches answers), bound to ``state``.

    :return: ``router``.
    """
    for method, path, handler in routes:
        router.add_api_route(path, _bound(handler, state), methods=[method], name=handler.__name__)
    return router


def _bound(handler: Handler, state: SandboxState) -> Callable[[Request], Awaitable[Response]]:
    async def endpoint(request: Request) -> Response:
        return await handler(state, request)

    return endpoint
