"""Constant Contact's OAuth 2 endpoints (``/oauth2/default/v1/...``), auto-approving every grant."""

from __future__ import annotations

import base64
import binascii
import re
from collections.abc import Callable
from dataclasses import dataclass
from urllib.parse import parse_qs, urlencode, urlsplit

from fastapi import APIRouter, Request
from starlette.responses import HTMLResponse, RedirectResponse, Response

from airflow_provider_ciexport.tools.sandbox import errors
from airflow_provider_ciexport.tools.sandbox.oauth_store import DEVICE_TTL_S, pkce_s256
from airflow_provider_ciexport.tools.sandbox.routing import Route, bind_routes
from airflow_provider_ciexport.tools.sandbox.state import SandboxState

KNOWN_SCOPES = frozenset(
    {"contact_data", "offline_access", "campaign_data", "account_read", "account_update", "openid", "profile"}
)
DEVICE_GRANT = "urn:ietf:params:oauth:grant-type:device_code"
VERIFIER_RE = re.compile(r"[A-Za-z0-9\-._~]{43,128}")
NO_STORE = {"Cache-Control": "no-store", "Pragma": "no-cache"}


def _invalid_client(description: str = "Client authentication failed.") -> Response:
    return errors.oauth_error(
        401, "invalid_client", description, {"WWW-Authenticate": 'Basic realm="sandbox"'}
    )


def _basic_credentials(header: str) -> tuple[str, str] | bool | None:
    """``(id, secret)`` from a Basic header, None when absent, False when malformed."""
    scheme, _, value = header.partition(" ")
    if not header:
        return None
    if scheme.lower() != "basic":
        return False
    try:
        decoded = base64.b64decode(value.strip(), validate=True).decode("utf-8")
    except (binascii.Error, UnicodeDecodeError):
        return False
    client_id, sep, secret = decoded.partition(":")
    return (client_id, secret) if sep else False


def _scope_ok(scope: str) -> bool:
    return all(s in KNOWN_SCOPES for s in scope.split())


def build_router(state: SandboxState) -> APIRouter:
    """The ``/oauth2/default/v1`` routes bound to ``state``."""
    return bind_routes(APIRouter(prefix="/oauth2/default/v1"), state, ROUTES)


@dataclass(frozen=True)
class _TokenRequest:
    """A token request from an authenticated client, with what every grant needs to answer it."""

    form: dict[str, str]
    client_id: str
    #: Whether the client sent no secret (a public client).
    public: bool
    now: float
    ttl: float
    issuer: str


async def token(state: SandboxState, request: Request) -> Response:
    """``POST /oauth2/default/v1/token``: tokens for a refresh token, an authorization code or a device code."""
    if not request.headers.get("content-type", "").startswith("application/x-www-form-urlencoded"):
        return errors.oauth_error(
            400, "invalid_request", "The body must be application/x-www-form-urlencoded."
        )
    form = {
        k: v[0] for k, v in parse_qs((await request.body()).decode("utf-8"), keep_blank_values=True).items()
    }
    client = _authenticate_client(state, request.headers.get("authorization", ""), form)
    if isinstance(client, Response):
        return client
    client_id, public = client
    grant_type = form.get("grant_type", "")
    state.recorder.counters[f"oauth.grant.{grant_type or 'missing'}"] += 1
    cfg = state.config
    token_request = _TokenRequest(
        form,
        client_id,
        public,
        state.now(),
        cfg.scaled(cfg.cc_access_token_ttl_s),
        str(request.base_url).rstrip("/") + "/oauth2/default",
    )
    grant = _GRANTS.get(grant_type)
    if grant is None:
        return errors.oauth_error(400, "unsupported_grant_type", "The grant type is not supported.")
    return grant(state, token_request)


def _authenticate_client(
    state: SandboxState, authorization: str, form: dict[str, str]
) -> tuple[str, bool] | Response:
    """``(client id, whether public)`` of a token request, or the answer refusing its client."""
    rec = state.recorder
    if "client_secret" in form:
        # The app is set up for client_secret_basic, like Constant Contact's documentation.
        rec.counters["oauth.client_secret_in_body"] += 1
        rec.auth_failures["oauth"] += 1
        return _invalid_client("Send client credentials with HTTP Basic authentication.")
    basic = _basic_credentials(authorization)
    if basic is False:
        rec.auth_failures["oauth"] += 1
        return _invalid_client()
    if isinstance(basic, tuple):
        client_id, secret = basic
        if not state.oauth.check_client(client_id, secret) or form.get("client_id", client_id) != client_id:
            rec.auth_failures["oauth"] += 1
            return _invalid_client()
        return client_id, False
    client_id = form.get("client_id", "")
    if not state.oauth.check_client(client_id, None):
        rec.auth_failures["oauth"] += 1
        return _invalid_client()
    return client_id, True


def _refresh_grant(state: SandboxState, req: _TokenRequest) -> Response:
    oauth = state.oauth
    refresh = req.form.get("refresh_token", "")
    grant = oauth.refresh_tokens.get(refresh)
    if grant is None or grant.client_id != req.client_id:
        state.recorder.counters["oauth.invalid_refresh_token"] += 1
        return errors.oauth_error(400, "invalid_grant", "The refresh token is invalid or expired.")
    if req.public and not grant.public:
        # A token of the confidential (client id + secret) app needs the secret to refresh.
        state.recorder.auth_failures["oauth"] += 1
        return _invalid_client("Client authentication is required for this refresh token.")
    scope = req.form.get("scope") or grant.scope
    if not set(scope.split()) <= set(grant.scope.split()):
        return errors.oauth_error(400, "invalid_scope", "The requested scope is not allowed.")
    new_refresh: str | None = refresh
    if state.config.cc_rotating_refresh_tokens:
        del oauth.refresh_tokens[refresh]
        new_refresh = oauth.new_refresh_token(req.client_id, grant.scope, grant.public)
    body = oauth.issue(req.client_id, scope, req.now, req.ttl, req.issuer, new_refresh)
    return errors.json_response(body, headers=NO_STORE)


def _code_grant(state: SandboxState, req: _TokenRequest) -> Response:
    oauth = state.oauth
    code = oauth.codes.pop(req.form.get("code", ""), None)
    if code is None or code.client_id != req.client_id or req.now >= code.expires_at:
        return errors.oauth_error(400, "invalid_grant", "The authorization code is invalid or has expired.")
    if req.form.get("redirect_uri") != code.redirect_uri:
        return errors.oauth_error(400, "invalid_grant", "The redirect_uri does not match the authorization.")
    if code.code_challenge is not None:
        if not _verifier_matches(req.form.get("code_verifier"), code.code_challenge):
            state.recorder.counters["oauth.pkce_failures"] += 1
            return errors.oauth_error(400, "invalid_grant", "PKCE verification failed.")
    elif req.public:
        return errors.oauth_error(400, "invalid_request", "PKCE is required for public clients.")
    refresh_token = oauth.new_refresh_token(req.client_id, code.scope, req.public)
    body = oauth.issue(req.client_id, code.scope, req.now, req.ttl, req.issuer, refresh_token)
    return errors.json_response(body, headers=NO_STORE)


def _verifier_matches(verifier: str | None, challenge: str) -> bool:
    """Whether a PKCE verifier is well formed and hashes to ``challenge``."""
    if not verifier or not VERIFIER_RE.fullmatch(verifier):
        return False
    return pkce_s256(verifier) == challenge


def _device_grant(state: SandboxState, req: _TokenRequest) -> Response:
    oauth = state.oauth
    device = oauth.devices.get(req.form.get("device_code", ""))
    if device is None or device.used or device.client_id != req.client_id:
        return errors.oauth_error(400, "invalid_grant", "The device code is invalid.")
    if req.now >= device.expires_at:
        return errors.oauth_error(400, "expired_token", "The device code has expired.")
    device.polls += 1
    if device.polls == 1:
        return errors.oauth_error(400, "authorization_pending", "The user has not yet approved the request.")
    device.used = True
    refresh_token = oauth.new_refresh_token(req.client_id, device.scope, req.public)
    body = oauth.issue(req.client_id, device.scope, req.now, req.ttl, req.issuer, refresh_token)
    return errors.json_response(body, headers=NO_STORE)


#: How each grant type of the token endpoint is answered.
_GRANTS: dict[str, Callable[[SandboxState, _TokenRequest], Response]] = {
    "refresh_token": _refresh_grant,
    "authorization_code": _code_grant,
    DEVICE_GRANT: _device_grant,
}


async def authorize(state: SandboxState, request: Request) -> Response:
    """``GET /oauth2/default/v1/authorize``: approve at once and redirect back with a code."""
    qp = request.query_params
    client_id = qp.get("client_id", "")
    if not state.oauth.check_client(client_id, None):
        return errors.oauth_error(400, "invalid_client", "Unknown client_id.")
    redirect_uri = qp.get("redirect_uri", "")
    parts = urlsplit(redirect_uri)
    if parts.scheme != "http" or parts.hostname not in ("localhost", "127.0.0.1"):
        return errors.oauth_error(
            400, "invalid_request", "redirect_uri must be http://localhost or http://127.0.0.1."
        )

    def back(params: dict[str, str]) -> Response:
        if qp.get("state") is not None:
            params["state"] = qp["state"]
        joiner = "&" if parts.query else "?"
        return RedirectResponse(f"{redirect_uri}{joiner}{urlencode(params)}", status_code=302)

    if qp.get("response_type") != "code":
        return back({"error": "unsupported_response_type", "error_description": "Only response_type=code."})
    scope = qp.get("scope", "")
    if not scope or not _scope_ok(scope):
        return back({"error": "invalid_scope", "error_description": "Unknown or missing scope."})
    challenge = qp.get("code_challenge")
    if challenge is not None and qp.get("code_challenge_method") != "S256":
        return back({"error": "invalid_request", "error_description": "code_challenge_method must be S256."})
    code = state.oauth.new_code(client_id, redirect_uri, scope, challenge, state.now())
    state.recorder.counters["oauth.authorizations"] += 1
    return back({"code": code})


async def device_authorize(state: SandboxState, request: Request) -> Response:
    """``POST /oauth2/default/v1/device/authorize``: a device code and its user code."""
    form = {k: v[0] for k, v in parse_qs((await request.body()).decode("utf-8")).items()}
    client_id = form.get("client_id", "")
    if not state.oauth.check_client(client_id, None):
        return _invalid_client("Unknown client_id.")
    scope = form.get("scope", "")
    if not scope or not _scope_ok(scope):
        return errors.oauth_error(400, "invalid_scope", "Unknown or missing scope.")
    device_code, grant = state.oauth.new_device(client_id, scope, state.now())
    verify = str(request.base_url).rstrip("/") + "/oauth2/default/v1/device/verify"
    return errors.json_response(
        {
            "device_code": device_code,
            "user_code": grant.user_code,
            "verification_uri": verify,
            "verification_uri_complete": f"{verify}?{urlencode({'user_code': grant.user_code})}",
            "expires_in": DEVICE_TTL_S,
            "interval": state.config.cc_device_interval_s,
        },
        headers=NO_STORE,
    )


async def device_verify(state: SandboxState, request: Request) -> Response:
    """``GET /oauth2/default/v1/device/verify``."""
    # Grants are auto-approved; this page only exists so the printed link leads somewhere.
    return HTMLResponse(
        "<html><body><p>Sandbox: device requests are approved automatically.</p></body></html>"
    )


#: Every route, in the order they are matched.
ROUTES: tuple[Route, ...] = (
    ("POST", "/token", token),
    ("GET", "/authorize", authorize),
    ("POST", "/device/authorize", device_authorize),
    ("GET", "/device/verify", device_verify),
)
