"""Constant Contact's OAuth2 token endpoint: the token request and how its answers read.

Shared by :class:`~airflow_provider_ciexport.hooks.constantcontact.ConstantContactHook` (refresh grant)
and the authorization command :mod:`airflow_provider_ciexport.tools.constantcontact_auth` (authorization code
and device grants). Nothing here imports Airflow, so the command starts at once.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import requests

from airflow_provider_ciexport.core.redaction import as_key, request_values, scrub
from airflow_provider_ciexport.core.urls import redirect_target

#: The scopes the provider needs; without ``offline_access`` Constant Contact issues no refresh token.
SCOPES = "contact_data offline_access"


class TokenError(Exception):
    """The token endpoint refused a request.

    :param status: the HTTP status of the answer.
    :param error: the OAuth error code (``invalid_grant``, ``invalid_client``, ...), or ``None``
        when the answer had none. A bare 401 reads as ``invalid_client`` (RFC 6749, 5.2).
    :param description: the server's ``error_description`` on one line, or ``""``.
    """

    def __init__(self, status: int, error: str | None, description: str = "") -> None:
        if error is None and status == 401:
            error = "invalid_client"
        super().__init__(f"HTTP {status}" + (f" ({error})" if error else ""))
        self.status = status
        self.error = error
        self.description = description

    @classmethod
    def from_response(cls, response: requests.Response) -> TokenError:
        """Read the OAuth ``error`` and ``error_description`` of an answer (never the rest of it).

        The description is the server's free text: it is kept only without anything the request
        carried (the refresh token or code, the client credentials) or that looks like an address.
        """
        payload = json_body(response)
        if not isinstance(payload, dict):
            return cls(response.status_code, None)
        error = as_key(payload.get("error"))
        raw = payload.get("error_description")
        description = scrub(raw, request_values(response.request))[:200] if isinstance(raw, str) else ""
        return cls(response.status_code, error, description)


class TokenRedirect(TokenError):
    """The token endpoint answered a redirect, which a token request never follows.

    The request carries the refresh token or code and the client credentials; following the redirect
    would hand them to whatever host it names.

    :param status: the 3xx status.
    :param target: where it pointed, as ``scheme://host[:port]`` (no path or query).
    """

    def __init__(self, status: int, target: str) -> None:
        super().__init__(status, None)
        self.target = target

    @classmethod
    def from_redirect(cls, response: requests.Response) -> TokenRedirect:
        """Read where a 3xx answer pointed (its host only)."""
        request_url = response.request.url if response.request is not None else None
        return cls(response.status_code, redirect_target(request_url, response.headers.get("Location")))


def json_body(response: requests.Response) -> Any:
    """The JSON body of ``response``, or ``None`` when it has none."""
    try:
        return response.json()
    except ValueError:
        return None


def token_payload(response: requests.Response) -> dict[str, Any]:
    """The token endpoint's answer when it issued an access token.

    :raises TokenRedirect: for a 3xx answer.
    :raises TokenError: for any other answer.
    """
    if 300 <= response.status_code < 400:
        raise TokenRedirect.from_redirect(response)
    payload = json_body(response)
    if response.status_code == 200 and isinstance(payload, dict) and payload.get("access_token"):
        return payload
    raise TokenError.from_response(response)


def request_token(
    session: requests.Session,
    token_url: str,
    data: Mapping[str, str],
    *,
    client: tuple[str, str] | None = None,
    timeout: float | tuple[float, float],
) -> dict[str, Any]:
    """Send one token request (form-encoded, client credentials as HTTP Basic) and read the answer.

    Redirects are never followed (see :class:`TokenRedirect`).

    :param session: the HTTP session to send it with.
    :param token_url: the token endpoint.
    :param data: the grant, e.g. :func:`refresh_grant`.
    :param client: ``(client_id, client_secret)``, or ``None`` for a public client (device flow).
    :param timeout: connect and read timeouts, in seconds.
    :return: the token answer (``access_token``, ``expires_in``, maybe ``refresh_token``, ``scope``).
    :raises TokenRedirect: when the endpoint answered a redirect.
    :raises TokenError: when the endpoint refused.
    :raises requests.RequestException: when no answer arrived.
    """
    response = session.post(
        token_url,
        data=dict(data),
        auth=client,
        headers={"Accept": "application/json"},
        timeout=timeout,
        allow_redirects=False,
    )
    return token_payload(response)


def refresh_grant(refresh_token: str) -> dict[str, str]:
    """The form of a refresh token grant."""
    return {"grant_type": "refresh_token", "refresh_token": refresh_token}
