"""Get the refresh token a ``constantcontact`` Airflow connection needs, without writing code.

Run ``python -m airflow_provider_ciexport.tools.constantcontact_auth --client-id <API key>`` and follow the
instructions. Two OAuth2 flows are offered, both asking for the scopes ``contact_data offline_access``
(without ``offline_access`` Constant Contact silently issues no refresh token):

``pkce`` (default)
    Authorization code with PKCE (S256). A one-shot web server on ``localhost:<port>`` (both loopback
    addresses, 127.0.0.1 and ::1, since a browser may resolve ``localhost`` to either) receives the
    browser's redirect to ``http://localhost:<port>/callback``; that redirect URI must be registered for
    the app in the Constant Contact developer portal, exactly so (Constant Contact compares it
    character for character). A redirect whose ``state`` is not this run's is answered 400 and
    ignored: the command keeps waiting for the real one.
``device``
    Device authorization: open the printed link on any device, sign in and approve; the command polls
    the token endpoint until you did.

At the end the command prints a ready-to-run ``airflow connections add`` command and the equivalent
``AIRFLOW_CONN_<ID>`` value. Secrets (client secret, refresh token) are printed only with
``--show-secrets``; otherwise they appear as placeholders and the refresh token is written to a file
readable only by you. The access token is never printed.
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import errno
import getpass
import hashlib
import html
import http.server
import json
import os
import secrets
import shlex
import socket
import socketserver
import sys
import threading
import time
import webbrowser
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, quote, urlencode, urlsplit

import requests

from airflow_provider_ciexport.core.urls import (
    CC_API_BASE_URL,
    CC_TOKEN_URL,
    base_url_problem,
    redirect_target,
)
from airflow_provider_ciexport.hooks.constantcontact_oauth import (
    SCOPES,
    TokenError,
    TokenRedirect,
    json_body,
    request_token,
)

PROG = "python -m airflow_provider_ciexport.tools.constantcontact_auth"
DEFAULT_AUTHORIZE_URL = "https://authz.constantcontact.com/oauth2/default/v1/authorize"
DEFAULT_DEVICE_URL = "https://authz.constantcontact.com/oauth2/default/v1/device/authorize"
DEFAULT_PORT = 8765
DEFAULT_CONN_ID = "constantcontact_default"
DEFAULT_TOKEN_FILE = "constantcontact_refresh_token.txt"  # noqa: S105 - a file name, not a secret
CALLBACK_PATH = "/callback"
#: How long the PKCE flow waits for the browser's redirect, in seconds.
DEFAULT_WAIT_S = 300.0
#: Connect and read timeouts of each HTTP request, in seconds.
HTTP_TIMEOUT: tuple[float, float] = (10.0, 30.0)
DEVICE_GRANT = "urn:ietf:params:oauth:grant-type:device_code"
CLIENT_SECRET_PLACEHOLDER = "<client-secret>"  # noqa: S105 - a placeholder
REFRESH_TOKEN_PLACEHOLDER = "<refresh-token>"  # noqa: S105 - a placeholder
# Consecutive 5xx/no answers tolerated while polling the device flow.
_MAX_POLL_FAILURES = 3
#: How much longer to wait between polls after a ``slow_down`` (RFC 8628), in seconds.
_SLOW_DOWN_STEP_S = 5
#: How often the callback servers check for shutdown, and how long their threads get to end, in seconds.
_CALLBACK_POLL_S = 0.1
_THREAD_JOIN_S = 5

Echo = Callable[[str], None]
OpenUrl = Callable[[str], object]


class AuthError(Exception):
    """The authorization failed; the message is one line that says what to do about it."""


@dataclass(frozen=True)
class Endpoints:
    """The OAuth2 endpoints and API base URL to use.

    :param authorize_url: the authorization endpoint (PKCE flow).
    :param token_url: the token endpoint.
    :param device_url: the device authorization endpoint (device flow).
    :param api_base_url: the V3 API base URL (only written to the connection's extras).
    """

    authorize_url: str = DEFAULT_AUTHORIZE_URL
    token_url: str = CC_TOKEN_URL
    device_url: str = DEFAULT_DEVICE_URL
    api_base_url: str = CC_API_BASE_URL

    @classmethod
    def sandbox(cls, url: str) -> Endpoints:
        """The endpoints of the local sandbox at ``url`` (e.g. ``http://127.0.0.1:8025``)."""
        base = url.strip().rstrip("/")
        return cls(
            authorize_url=f"{base}/oauth2/default/v1/authorize",
            token_url=f"{base}/oauth2/default/v1/token",
            device_url=f"{base}/oauth2/default/v1/device/authorize",
            api_base_url=f"{base}/v3",
        )

    def checked(self, conn_id: str) -> Endpoints:
        """A copy with every URL validated (HTTPS, or HTTP to loopback only), without trailing slashes.

        :raises AuthError: when a URL is not acceptable.
        """

        def check(url: str, what: str) -> str:
            problem = base_url_problem(url, what, conn_id)
            if problem is not None:
                raise AuthError(problem)
            return url.strip().rstrip("/")

        return Endpoints(
            authorize_url=check(self.authorize_url, "authorize URL (--authorize-url)"),
            token_url=check(self.token_url, "token URL (--token-url)"),
            device_url=check(self.device_url, "device URL (--device-url)"),
            api_base_url=check(self.api_base_url, "API base URL (--api-base-url)"),
        )


@dataclass(frozen=True)
class TokenResult:
    """What the token endpoint issued, minus the access token (which this tool never keeps).

    :param refresh_token: the refresh token for the Airflow connection.
    :param scope: the scopes granted, as the server reported them (may be empty).
    """

    refresh_token: str = field(repr=False)
    scope: str = ""


@dataclass(frozen=True)
class DeviceAuthorization:
    """The answer of the device authorization endpoint.

    :param device_code: the code to poll the token endpoint with (kept out of ``repr``).
    :param user_code: the code the user confirms in the browser.
    :param verification_uri: where the user signs in.
    :param verification_uri_complete: the same with the user code filled in, if the server sent one.
    :param expires_in: seconds until the codes expire.
    :param interval: seconds to wait between two polls.
    """

    device_code: str = field(repr=False)
    user_code: str
    verification_uri: str
    verification_uri_complete: str | None
    expires_in: float
    interval: float


# -- PKCE and the authorization URL ---------------------------------------------------------------


def pkce_pair() -> tuple[str, str]:
    """Make a PKCE code verifier and its S256 code challenge (RFC 7636).

    :return: ``(code_verifier, code_challenge)``.
    """
    verifier = secrets.token_urlsafe(64)  # 86 characters from the unreserved set
    digest = hashlib.sha256(verifier.encode("ascii")).digest()
    challenge = base64.urlsafe_b64encode(digest).rstrip(b"=").decode("ascii")
    return verifier, challenge


def redirect_uri_for(port: int) -> str:
    """The redirect URI to register in the developer portal for ``port``."""
    return f"http://localhost:{port}{CALLBACK_PATH}"


def build_authorize_url(
    authorize_url: str,
    client_id: str,
    redirect_uri: str,
    state: str,
    code_challenge: str,
    scope: str = SCOPES,
) -> str:
    """Build the URL that starts the authorization code flow with PKCE in the browser.

    :param authorize_url: the authorization endpoint.
    :param client_id: the app's client id (API key).
    :param redirect_uri: where the browser returns with the code.
    :param state: an unguessable value the redirect must carry back.
    :param code_challenge: the S256 challenge of the PKCE verifier.
    :param scope: space-separated scopes.
    """
    query = urlencode(
        {
            "client_id": client_id,
            "redirect_uri": redirect_uri,
            "response_type": "code",
            "scope": scope,
            "state": state,
            "code_challenge": code_challenge,
            "code_challenge_method": "S256",
        },
        quote_via=quote,
    )
    separator = "&" if urlsplit(authorize_url).query else "?"
    return f"{authorize_url}{separator}{query}"


# -- token endpoint answers -----------------------------------------------------------------------


def _one_line(text: Any, limit: int = 200) -> str:
    return " ".join(str(text).split())[:limit]


def _auth_error(refusal: TokenError, step: str, flow: str) -> AuthError:
    """Say what to do about a refusal of the token (or device authorization) endpoint."""
    error, status = refusal.error, refusal.status
    detail = f" ({refusal.description})" if refusal.description else ""
    if isinstance(refusal, TokenRedirect):
        return AuthError(
            f"The token endpoint answered HTTP {status}, a redirect to {refusal.target}; token requests "
            "never follow redirects (they carry the code or refresh token and the client secret): pass "
            f"the token endpoint itself as --token-url (Constant Contact's is {CC_TOKEN_URL})."
        )
    if error == "invalid_client":
        return AuthError(
            f"Constant Contact refused the client credentials (invalid_client){detail}: check --client-id "
            "(the app's API key) and the client secret in the Constant Contact developer portal."
        )
    if error == "unauthorized_client":
        kind = "Device Flow" if flow == "device" else "Authorization Code Flow with PKCE"
        other = "pkce" if flow == "device" else "device"
        return AuthError(
            f"This app may not use the {flow} flow (unauthorized_client){detail}: enable the {kind} for the "
            f"app in the Constant Contact developer portal, or run with --flow {other}."
        )
    if error == "invalid_scope":
        return AuthError(
            f"Constant Contact refused the scopes '{SCOPES}' (invalid_scope){detail}: check the app's "
            "settings in the developer portal."
        )
    if error == "invalid_grant":
        return AuthError(
            f"Constant Contact refused the {step} (invalid_grant){detail}: it expired, was already used, "
            "or the redirect URI did not match; run the command again."
        )
    if error:
        return AuthError(
            f"Constant Contact's {step} failed with HTTP {status} ({error}){detail}: "
            "run the command again; if it keeps failing, check the app in the developer portal."
        )
    return AuthError(
        f"The token endpoint answered HTTP {status} without an OAuth error: check --token-url "
        f"(Constant Contact's is {CC_TOKEN_URL})."
    )


def _token_result(payload: Mapping[str, Any]) -> TokenResult:
    """Keep the refresh token of a token answer; insist on one."""
    scope = str(payload.get("scope") or "")
    refresh_token = payload.get("refresh_token")
    if not refresh_token:
        granted = f" (granted scopes: '{scope}')" if scope else ""
        raise AuthError(
            f"Constant Contact issued no refresh token{granted}: the authorization must include the scope "
            "'offline_access'; make sure the app allows refresh tokens in the developer portal and approve "
            "every requested permission, then run the command again."
        )
    return TokenResult(refresh_token=str(refresh_token), scope=scope)


def _unreachable(url: str, what: str, exc: Exception) -> AuthError:
    return AuthError(
        f"Could not reach the {what} at {url} ({type(exc).__name__}): check your network and the URL."
    )


def _post(session: requests.Session, url: str, what: str, option: str, **kwargs: Any) -> requests.Response:
    """POST to an OAuth endpoint without following redirects; ``option`` names where its URL is set."""
    try:
        response = session.post(url, timeout=HTTP_TIMEOUT, allow_redirects=False, **kwargs)
    except requests.RequestException as exc:
        raise _unreachable(url, what, exc) from None
    if 300 <= response.status_code < 400:
        target = redirect_target(url, response.headers.get("Location"))
        raise AuthError(
            f"The {what} answered HTTP {response.status_code}, a redirect to {target}, which is not "
            f"followed: pass the endpoint itself as {option}."
        )
    return response


# -- authorization code flow with PKCE ------------------------------------------------------------


def exchange_code(
    token_url: str,
    client_id: str,
    client_secret: str,
    code: str,
    redirect_uri: str,
    code_verifier: str,
    *,
    session: requests.Session | None = None,
) -> TokenResult:
    """Exchange an authorization code for tokens (HTTP Basic client authentication, PKCE verifier).

    :param token_url: the token endpoint.
    :param client_id: the app's client id.
    :param client_secret: the app's client secret.
    :param code: the code from the redirect.
    :param redirect_uri: the redirect URI used in the authorization request.
    :param code_verifier: the PKCE verifier whose challenge was sent.
    :param session: the HTTP session to use.
    :raises AuthError: when the exchange fails or no refresh token was issued.
    """
    grant = {
        "grant_type": "authorization_code",
        "code": code,
        "redirect_uri": redirect_uri,
        "code_verifier": code_verifier,
    }
    try:
        payload = request_token(
            session or requests.Session(),
            token_url,
            grant,
            client=(client_id, client_secret),
            timeout=HTTP_TIMEOUT,
        )
    except TokenError as refusal:
        raise _auth_error(refusal, "authorization code", "pkce") from None
    except requests.RequestException as exc:
        raise _unreachable(token_url, "token endpoint", exc) from None
    return _token_result(payload)


class _Callback:
    """What the callback servers share: the state expected, and the first redirect that carried it.

    :param expected_state: the ``state`` of this run's authorization request.
    """

    def __init__(self, expected_state: str) -> None:
        self.expected_state = expected_state
        self.params: dict[str, str] | None = None
        self.received = threading.Event()
        self.lock = threading.Lock()
        #: Redirects that carried another state (a stale tab, a forged request), answered 400.
        self.ignored = 0

    def belongs(self, params: Mapping[str, str]) -> bool:
        """Whether a redirect carries this run's state (compared in constant time)."""
        return secrets.compare_digest(params.get("state", "").encode(), self.expected_state.encode())


class _CallbackServer(http.server.ThreadingHTTPServer):
    """A web server on one loopback address that hands redirects to :data:`CALLBACK_PATH` to ``callback``.

    Threaded, so a browser's idle speculative connection cannot hold up the real redirect.
    """

    daemon_threads = True

    def __init__(self, host: str, port: int, callback: _Callback) -> None:
        self.address_family = socket.AF_INET6 if ":" in host else socket.AF_INET
        super().__init__((host, port), _CallbackHandler)
        self.callback = callback

    def server_bind(self) -> None:
        # HTTPServer.server_bind looks up the host's name (a DNS query): not needed for a callback.
        socketserver.TCPServer.server_bind(self)
        self.server_name, self.server_port = "localhost", int(self.server_address[1])


def _listen(port: int, callback: _Callback) -> list[_CallbackServer]:
    """Listen on ``localhost:port``: 127.0.0.1 and, where this machine has it, ::1 on the same port.

    A browser may resolve ``localhost`` to either address; both must be this command's, or another
    program listening on the other one could receive the authorization code.

    :param port: the port; 0 picks one that is free on both addresses.
    :raises AuthError: when an address cannot be listened on.
    """
    for attempt in range(5 if port == 0 else 1):
        try:
            v4 = _CallbackServer("127.0.0.1", port, callback)
        except OSError as exc:
            raise _cannot_listen(f"127.0.0.1:{port}", exc) from None
        chosen = v4.server_address[1]
        try:
            v6 = _CallbackServer("::1", chosen, callback)
        except OSError as exc:
            if exc.errno in (errno.EADDRNOTAVAIL, errno.EAFNOSUPPORT) or not socket.has_ipv6:
                return [v4]  # no IPv6 loopback here: localhost can only be 127.0.0.1
            v4.server_close()
            if port == 0 and attempt < 4:
                continue  # the free IPv4 port is taken on ::1: pick another
            raise _cannot_listen(f"[::1]:{chosen}", exc) from None
        return [v4, v6]
    raise AssertionError("unreachable")  # pragma: no cover


def _cannot_listen(address: str, exc: OSError) -> AuthError:
    return AuthError(
        f"Cannot listen on {address} ({exc.strerror or exc}): pass a free --port and register "
        f"http://localhost:<port>{CALLBACK_PATH} as a redirect URI of the app in the developer portal."
    )


class _CallbackHandler(http.server.BaseHTTPRequestHandler):
    server: _CallbackServer
    timeout = 10  # seconds a connection may stay silent

    def do_GET(self) -> None:
        parts = urlsplit(self.path)
        if parts.path != CALLBACK_PATH:
            self._page(404, "Not found", "This server only waits for Constant Contact's redirect.")
            return
        params = {key: values[0] for key, values in parse_qs(parts.query).items()}
        callback = self.server.callback
        if not callback.belongs(params):
            # Not this run's redirect (a stale tab, or a request forged to abort the flow): ignored,
            # the command goes on waiting for the real one.
            with callback.lock:
                callback.ignored += 1
            self._page(
                400,
                "Not this authorization",
                "The state did not match the authorization the command is waiting for: this request was "
                "ignored. Use the link the command printed.",
            )
            return
        with callback.lock:
            first = callback.params is None
            if first:
                callback.params = params
        if not first:
            self._page(409, "Already handled", "The authorization was already received. Close this tab.")
        elif "error" in params:
            reason = params.get("error_description") or params["error"]
            self._page(400, "Authorization failed", f"{reason}. See the terminal for what to do.")
        else:
            self._page(200, "Authorization received", "You can close this tab and return to the terminal.")
        if first:
            callback.received.set()

    def _page(self, status: int, title: str, text: str) -> None:
        body = (
            f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title></head>"
            f"<body><h1>{html.escape(title)}</h1><p>{html.escape(text)}</p></body></html>"
        ).encode()
        self.send_response(status)
        self.send_header("Content-Type", "text/html; charset=utf-8")
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Cache-Control", "no-store")
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:
        """Stay silent: the request line carries the authorization code."""


def _check_redirect(params: Mapping[str, str], state: str, redirect_uri: str) -> str:
    """Return the authorization code of a redirect, or raise what went wrong."""
    error = params.get("error")
    if error:
        description = _one_line(params.get("error_description") or "")
        detail = f" ({description})" if description else ""
        if error == "access_denied":
            raise AuthError(
                f"The authorization was declined (access_denied){detail}: run the command again and click "
                "'Allow' on Constant Contact's consent page."
            )
        if error == "unauthorized_client":
            raise AuthError(
                f"This app may not use the authorization code flow (unauthorized_client){detail}: enable "
                "PKCE for the app in the Constant Contact developer portal, or run with --flow device."
            )
        if error == "invalid_scope":
            raise AuthError(
                f"Constant Contact refused the scopes '{SCOPES}' (invalid_scope){detail}: check the app's "
                "settings in the developer portal."
            )
        raise AuthError(
            f"Constant Contact returned the error '{_one_line(error, 60)}'{detail}: check that {redirect_uri} "
            "is registered as a redirect URI of the app in the developer portal, then run the command again."
        )
    if not secrets.compare_digest(params.get("state", "").encode(), state.encode()):
        raise AuthError(
            "The redirect's state did not match this authorization request (a stale browser tab or a forged "
            "redirect): run the command again and use only the link it prints."
        )
    code = params.get("code")
    if not code:
        raise AuthError("The redirect carried no authorization code: run the command again.")
    return code


def run_pkce_flow(
    client_id: str,
    client_secret: str,
    endpoints: Endpoints,
    *,
    port: int = DEFAULT_PORT,
    open_url: OpenUrl = webbrowser.open,
    echo: Echo = print,
    wait_s: float = DEFAULT_WAIT_S,
    scope: str = SCOPES,
    session: requests.Session | None = None,
) -> TokenResult:
    """Run the authorization code flow with PKCE through a one-shot server on ``localhost:port``.

    Redirects that do not carry this run's ``state`` are answered 400 and ignored.

    :param client_id: the app's client id.
    :param client_secret: the app's client secret.
    :param endpoints: where to authorize and exchange the code.
    :param port: the local port (0 picks a free one; the redirect URI then names the chosen port).
    :param open_url: called with the authorization URL (opens the browser by default); the redirect
        may arrive while it runs.
    :param echo: where instructions are written.
    :param wait_s: how long to wait for the redirect, in seconds.
    :param scope: the scopes to request.
    :param session: the HTTP session for the code exchange.
    :raises AuthError: when the authorization fails.
    """
    state = secrets.token_urlsafe(24)
    verifier, challenge = pkce_pair()
    callback = _Callback(state)
    servers = _listen(port, callback)
    redirect_uri = redirect_uri_for(servers[0].server_address[1])
    url = build_authorize_url(endpoints.authorize_url, client_id, redirect_uri, state, challenge, scope)
    threads = _serve(servers)
    try:
        echo(
            f"The redirect URI {redirect_uri} must be registered for this app in the Constant Contact "
            "developer portal (My Applications > your app > Redirect URI)."
        )
        echo(f"Open this URL in a browser, sign in and click 'Allow':\n\n  {url}\n")
        echo(f"Waiting up to {wait_s:g} s for Constant Contact to redirect to {redirect_uri} ...")
        open_url(url)
        _wait_for_redirect(callback, wait_s, redirect_uri)
    finally:
        _stop(servers, threads)
    assert callback.params is not None
    code = _check_redirect(callback.params, state, redirect_uri)
    return exchange_code(
        endpoints.token_url, client_id, client_secret, code, redirect_uri, verifier, session=session
    )


def _serve(servers: list[_CallbackServer]) -> list[threading.Thread]:
    """Start serving the callback ``servers``, each in a thread of its own."""
    threads = [
        threading.Thread(
            target=server.serve_forever,
            kwargs={"poll_interval": _CALLBACK_POLL_S},
            name="cc-oauth-callback",
            daemon=True,
        )
        for server in servers
    ]
    for thread in threads:
        thread.start()
    return threads


def _stop(servers: list[_CallbackServer], threads: list[threading.Thread]) -> None:
    for server in servers:
        server.shutdown()
        server.server_close()
    for thread in threads:
        thread.join(timeout=_THREAD_JOIN_S)


def _wait_for_redirect(callback: _Callback, wait_s: float, redirect_uri: str) -> None:
    """Wait for the redirect with this run's state.

    :raises AuthError: when none arrived within ``wait_s`` seconds.
    """
    if callback.received.wait(wait_s):
        return
    ignored = f" ({callback.ignored} request(s) with another state were ignored)" if callback.ignored else ""
    raise AuthError(
        f"No redirect arrived within {wait_s:g} s{ignored}: finish signing in within the time "
        f"limit; if Constant Contact reported a redirect_uri problem, register {redirect_uri} for "
        "the app in the developer portal and run the command again."
    )


# -- device flow ----------------------------------------------------------------------------------


def start_device_authorization(
    device_url: str, client_id: str, *, scope: str = SCOPES, session: requests.Session | None = None
) -> DeviceAuthorization:
    """Ask the device authorization endpoint for a device code and a user code.

    :param device_url: the device authorization endpoint.
    :param client_id: the app's client id.
    :param scope: the scopes to request.
    :param session: the HTTP session to use.
    :raises AuthError: when the endpoint refuses.
    """
    response = _post(
        session or requests.Session(),
        device_url,
        "device authorization endpoint",
        "--device-url",
        data={"client_id": client_id, "scope": scope},
        headers={"Accept": "application/json"},
    )
    payload = json_body(response)
    if response.status_code != 200 or not isinstance(payload, dict) or not payload.get("device_code"):
        raise _auth_error(TokenError.from_response(response), "device authorization", "device")
    try:
        return DeviceAuthorization(
            device_code=str(payload["device_code"]),
            user_code=str(payload.get("user_code") or ""),
            verification_uri=str(payload.get("verification_uri") or payload.get("verification_url") or ""),
            verification_uri_complete=(
                str(payload["verification_uri_complete"])
                if payload.get("verification_uri_complete")
                else None
            ),
            expires_in=float(payload.get("expires_in") or 600),
            # RFC 8628: 5 seconds when the server does not say.
            interval=max(0.0, float(5 if payload.get("interval") is None else payload["interval"])),
        )
    except (TypeError, ValueError):
        raise AuthError(
            "The device authorization endpoint sent an unreadable answer: check --device-url "
            f"(Constant Contact's is {DEFAULT_DEVICE_URL})."
        ) from None


def poll_device_token(
    token_url: str,
    client_id: str,
    authorization: DeviceAuthorization,
    *,
    session: requests.Session | None = None,
    sleep: Callable[[float], None] = time.sleep,
    clock: Callable[[], float] = time.monotonic,
    wait_s: float | None = None,
) -> TokenResult:
    """Poll the token endpoint until the user approved the device authorization (RFC 8628).

    :param token_url: the token endpoint.
    :param client_id: the app's client id.
    :param authorization: what :func:`start_device_authorization` returned.
    :param session: the HTTP session to use.
    :param sleep: waits between polls (replaceable in tests).
    :param clock: a monotonic clock (replaceable in tests).
    :param wait_s: the longest wait, in seconds (``--timeout``); by default until the code expires.
    :raises AuthError: when the user declined, the code expired, the wait ran out, or the endpoint
        failed.
    """
    http = session or requests.Session()
    started = clock()
    deadline = started + authorization.expires_in
    give_up = deadline if wait_s is None else min(deadline, started + wait_s)
    interval = authorization.interval
    failures = 0
    while True:
        sleep(interval)
        _check_time_left(clock(), deadline, give_up, authorization, wait_s)
        try:
            payload = request_token(
                http,
                token_url,
                {
                    "grant_type": DEVICE_GRANT,
                    "device_code": authorization.device_code,
                    "client_id": client_id,
                },
                timeout=HTTP_TIMEOUT,
            )
        except requests.RequestException as exc:
            failures += 1
            if failures >= _MAX_POLL_FAILURES:
                raise AuthError(
                    f"Could not reach the token endpoint at {token_url} ({type(exc).__name__}): check your "
                    "network and run the command again."
                ) from None
            continue
        except TokenError as refusal:
            failures, interval = _keep_polling(refusal, failures, interval, authorization)
            continue
        return _token_result(payload)


def _device_code_expired(authorization: DeviceAuthorization) -> AuthError:
    return AuthError(
        f"The device code expired before the authorization was approved (after "
        f"{authorization.expires_in:g} s): run the command again and approve sooner."
    )


def _check_time_left(
    now: float, deadline: float, give_up: float, authorization: DeviceAuthorization, wait_s: float | None
) -> None:
    """Raise when the device code expired (``deadline``) or the wait ran out (``give_up``)."""
    if now > deadline:
        raise _device_code_expired(authorization)
    if now > give_up:
        raise AuthError(
            f"No approval arrived within --timeout {wait_s:g} s: run the command again and approve "
            "sooner, or pass a longer --timeout."
        )


def _keep_polling(
    refusal: TokenError, failures: int, interval: float, authorization: DeviceAuthorization
) -> tuple[int, float]:
    """The failure count and poll interval after a refusal that leaves the authorization pending.

    :raises AuthError: when the refusal is final, or the endpoint failed too often in a row.
    """
    if refusal.error == "authorization_pending":
        return 0, interval
    if refusal.error == "slow_down" or refusal.status == 429:
        return failures, interval + _SLOW_DOWN_STEP_S
    if refusal.status >= 500:
        failures += 1
        if failures < _MAX_POLL_FAILURES:
            return failures, interval
    if refusal.error == "expired_token":
        raise _device_code_expired(authorization) from None
    if refusal.error == "access_denied":
        detail = f" ({refusal.description})" if refusal.description else ""
        raise AuthError(
            f"The authorization was declined (access_denied){detail}: run the command again and "
            "click 'Allow' on Constant Contact's page."
        ) from None
    raise _auth_error(refusal, "device code", "device") from None


def device_flow(
    client_id: str,
    endpoints: Endpoints,
    *,
    echo: Echo = print,
    scope: str = SCOPES,
    session: requests.Session | None = None,
    sleep: Callable[[float], None] = time.sleep,
    wait_s: float | None = None,
) -> TokenResult:
    """Run the device authorization flow: show the link and code, then wait for the approval.

    :param client_id: the app's client id.
    :param endpoints: the device and token endpoints.
    :param echo: where instructions are written.
    :param scope: the scopes to request.
    :param session: the HTTP session to use.
    :param sleep: waits between polls (replaceable in tests).
    :param wait_s: the longest wait for the approval, in seconds (``--timeout``); by default until
        the device code expires.
    :raises AuthError: when the authorization fails.
    """
    http = session or requests.Session()
    authorization = start_device_authorization(endpoints.device_url, client_id, scope=scope, session=http)
    if authorization.verification_uri_complete:
        echo(
            f"Open this URL on any device, sign in and click 'Allow':\n\n"
            f"  {authorization.verification_uri_complete}\n"
        )
        if authorization.user_code:
            echo(f"Check that the page shows the code {authorization.user_code}.")
    else:
        echo(
            f"Open {authorization.verification_uri} on any device, sign in, enter the code "
            f"{authorization.user_code} and click 'Allow'."
        )
    waiting = authorization.expires_in if wait_s is None else min(wait_s, authorization.expires_in)
    echo(f"Waiting up to {waiting:g} s for the approval ...")
    return poll_device_token(
        endpoints.token_url, client_id, authorization, session=http, sleep=sleep, wait_s=wait_s
    )


# -- the Airflow connection -----------------------------------------------------------------------


def connection_extra(refresh_token: str, endpoints: Endpoints) -> dict[str, str]:
    """The connection's extras: the refresh token, and the URLs that differ from Constant Contact's."""
    extra = {"refresh_token": refresh_token}
    if endpoints.api_base_url.rstrip("/") != CC_API_BASE_URL:
        extra["api_base_url"] = endpoints.api_base_url
    if endpoints.token_url.rstrip("/") != CC_TOKEN_URL:
        extra["oauth_url"] = endpoints.token_url
    return extra


def env_var_name(conn_id: str) -> str:
    """The environment variable Airflow reads the connection ``conn_id`` from."""
    return f"AIRFLOW_CONN_{conn_id.upper()}"


def format_connection_command(
    conn_id: str,
    client_id: str,
    client_secret: str,
    refresh_token: str,
    endpoints: Endpoints,
    *,
    show_secrets: bool = False,
) -> str:
    """The ``airflow connections add`` command that creates the connection (shell-quoted).

    :param conn_id: the connection id.
    :param client_id: the app's client id (the connection's login).
    :param client_secret: the app's client secret (the connection's password).
    :param refresh_token: the refresh token (the extra ``refresh_token``).
    :param endpoints: the endpoints used (non-default URLs go into the extras).
    :param show_secrets: print the secrets; otherwise placeholders stand in for them.
    """
    secret = client_secret if show_secrets else CLIENT_SECRET_PLACEHOLDER
    token = refresh_token if show_secrets else REFRESH_TOKEN_PLACEHOLDER
    extra = json.dumps(connection_extra(token, endpoints))
    args = [
        "airflow",
        "connections",
        "add",
        conn_id,
        "--conn-type",
        "constantcontact",
        "--conn-login",
        client_id,
        "--conn-password",
        secret,
        "--conn-extra",
        extra,
    ]
    return " ".join(shlex.quote(arg) for arg in args)


def format_connection_env(
    conn_id: str,
    client_id: str,
    client_secret: str,
    refresh_token: str,
    endpoints: Endpoints,
    *,
    show_secrets: bool = False,
) -> str:
    """The ``export AIRFLOW_CONN_<ID>='<json>'`` line equivalent to :func:`format_connection_command`."""
    secret = client_secret if show_secrets else CLIENT_SECRET_PLACEHOLDER
    token = refresh_token if show_secrets else REFRESH_TOKEN_PLACEHOLDER
    value = json.dumps(
        {
            "conn_type": "constantcontact",
            "login": client_id,
            "password": secret,
            "extra": connection_extra(token, endpoints),
        }
    )
    name = env_var_name(conn_id)
    if name.isidentifier():
        return f"export {name}={shlex.quote(value)}"
    return f"env {shlex.quote(f'{name}={value}')} <command>  # '{conn_id}' is not a valid shell variable name"


def write_token_file(path: Path, refresh_token: str) -> Path:
    """Write the refresh token to ``path`` readable and writable by the owner only (mode 0600).

    The token goes into a new file beside ``path`` (created exclusively, never through a symbolic
    link) that then replaces ``path``: a symbolic link or a file someone else prepared at ``path`` is
    replaced, never written through, and no other program can have the file open.

    :return: the absolute path written.
    """
    path = path.expanduser().absolute()
    temporary = path.with_name(f".{path.name}.{secrets.token_hex(8)}.tmp")
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0)
    fd = os.open(temporary, flags, 0o600)
    try:
        try:
            os.fchmod(fd, 0o600)  # whatever the umask
            os.write(fd, f"{refresh_token}\n".encode())
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(temporary, path)
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise
    return path


# -- command line -----------------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    """The command-line parser."""
    parser = argparse.ArgumentParser(
        prog=PROG,
        description=(
            "Authorize your Constant Contact app (scopes 'contact_data offline_access') and print the "
            "Airflow connection that holds the resulting refresh token."
        ),
        epilog=(
            f"Before using the pkce flow, register exactly http://localhost:{DEFAULT_PORT}{CALLBACK_PATH} (with "
            "your --port) as a Redirect URI of the app in the Constant Contact developer portal (My "
            "Applications > your app). The device flow needs no redirect URI but must be enabled for the app. "
            "Exit status: 0 on success, 1 on failure (the message says what to fix), 2 on bad arguments."
        ),
    )
    _add_app_arguments(parser)
    _add_endpoint_arguments(parser)
    _add_output_arguments(parser)
    return parser


def _add_app_arguments(parser: argparse.ArgumentParser) -> None:
    """The app, the flow and the connection to authorize for."""
    parser.add_argument("--client-id", required=True, help="the app's API key (client id)")
    parser.add_argument(
        "--client-secret-env",
        metavar="VAR",
        help="read the client secret from environment variable VAR (default: prompt for it)",
    )
    parser.add_argument(
        "--flow",
        choices=("pkce", "device"),
        default="pkce",
        help="pkce: browser and localhost redirect (default); device: approve on any device with a code",
    )
    parser.add_argument(
        "--port",
        type=int,
        default=DEFAULT_PORT,
        help=f"local port of the redirect URI http://localhost:PORT{CALLBACK_PATH} (default {DEFAULT_PORT})",
    )
    parser.add_argument(
        "--conn-id", default=DEFAULT_CONN_ID, help=f"Airflow connection id (default {DEFAULT_CONN_ID})"
    )


def _add_endpoint_arguments(parser: argparse.ArgumentParser) -> None:
    """Where the OAuth endpoints and the API are, when not Constant Contact's."""
    parser.add_argument(
        "--sandbox-url", metavar="URL", help="use the local sandbox at URL for every endpoint"
    )
    parser.add_argument("--authorize-url", help=f"authorization endpoint (default {DEFAULT_AUTHORIZE_URL})")
    parser.add_argument("--token-url", help=f"token endpoint (default {CC_TOKEN_URL})")
    parser.add_argument("--device-url", help=f"device authorization endpoint (default {DEFAULT_DEVICE_URL})")
    parser.add_argument("--api-base-url", help=f"API base URL (default {CC_API_BASE_URL})")


def _add_output_arguments(parser: argparse.ArgumentParser) -> None:
    """What is printed or written, and how long to wait."""
    parser.add_argument(
        "--show-secrets",
        action="store_true",
        help="print the client secret and refresh token instead of placeholders",
    )
    parser.add_argument(
        "--token-file",
        type=Path,
        help=f"where the refresh token is written (mode 0600) when not shown (default ./{DEFAULT_TOKEN_FILE})",
    )
    parser.add_argument("--no-browser", action="store_true", help="print the URL but do not open a browser")
    parser.add_argument(
        "--timeout",
        type=float,
        help=(
            f"seconds to wait for the approval: the browser's redirect (pkce, default {DEFAULT_WAIT_S:g}) "
            "or the device approval (device, default: until the device code expires)"
        ),
    )


def endpoints_from_args(args: argparse.Namespace) -> Endpoints:
    """The endpoints chosen on the command line (``--sandbox-url`` first, then single overrides)."""
    if args.sandbox_url:
        problem = base_url_problem(args.sandbox_url, "sandbox URL (--sandbox-url)", args.conn_id)
        if problem is not None:
            raise AuthError(problem)
    base = Endpoints.sandbox(args.sandbox_url) if args.sandbox_url else Endpoints()
    return Endpoints(
        authorize_url=args.authorize_url or base.authorize_url,
        token_url=args.token_url or base.token_url,
        device_url=args.device_url or base.device_url,
        api_base_url=args.api_base_url or base.api_base_url,
    ).checked(args.conn_id)


def _client_secret(env_var: str | None) -> str:
    if env_var:
        secret = os.environ.get(env_var, "").strip()
        if not secret:
            raise AuthError(
                f"The environment variable {env_var} is empty or not set: export it with the app's client "
                "secret, or leave out --client-secret-env to be prompted."
            )
        return secret
    secret = getpass.getpass("Client secret of the Constant Contact app (input hidden): ").strip()
    if not secret:
        raise AuthError("No client secret given: copy it from the Constant Contact developer portal.")
    return secret


def _open_browser(url: str) -> None:
    with contextlib.suppress(webbrowser.Error):  # the URL is printed anyway
        webbrowser.open(url)


def _report(args: argparse.Namespace, client_secret: str, result: TokenResult, endpoints: Endpoints) -> None:
    print(
        "\nSuccess: Constant Contact issued a refresh token"
        + (f" (scopes: {result.scope})." if result.scope else ".")
    )
    token_file: Path | None = None
    if not args.show_secrets or args.token_file:
        target = args.token_file or Path(DEFAULT_TOKEN_FILE)
        try:
            token_file = write_token_file(target, result.refresh_token)
        except OSError as exc:
            raise AuthError(
                f"Cannot write the refresh token to {target} ({exc.strerror or exc}): pass a writable "
                "--token-file, or --show-secrets to print the token instead."
            ) from None
        print(f"The refresh token was written to {token_file} (readable only by you). Delete it once stored.")
    print("\nCreate the Airflow connection with:\n")
    values = (args.conn_id, args.client_id, client_secret, result.refresh_token, endpoints)
    print("  " + format_connection_command(*values, show_secrets=args.show_secrets))
    print("\nor set it in the environment instead:\n")
    print("  " + format_connection_env(*values, show_secrets=args.show_secrets))
    if not args.show_secrets:
        print(
            f"\nReplace {CLIENT_SECRET_PLACEHOLDER} with the app's client secret and "
            f"{REFRESH_TOKEN_PLACEHOLDER} with the contents of {token_file} "
            "(or run again with --show-secrets to have them printed)."
        )
    print(
        "If the connection had an older token, replacing it is all there is to do: tokens that Constant "
        "Contact rotates are kept in a Variable keyed by the connection's own token "
        "(constantcontact_refresh_token_<hash>), so the new token is used from the next task on."
    )


def main(argv: Sequence[str] | None = None, *, open_url: OpenUrl | None = None) -> int:
    """Run the command line.

    :param argv: the arguments (default ``sys.argv[1:]``).
    :param open_url: what opens the authorization URL in the pkce flow (default: the web browser, or
        nothing with ``--no-browser``).
    :return: the exit status: 0 on success, 1 on failure.
    """
    args = build_parser().parse_args(argv)
    try:
        endpoints = endpoints_from_args(args)
        if not args.client_id.strip():
            raise AuthError("--client-id is empty: copy the app's API key from the developer portal.")
        if not 0 <= args.port <= 65535:
            raise AuthError(f"--port {args.port} is not a port number: pass one between 1 and 65535.")
        if args.timeout is not None and args.timeout <= 0:
            raise AuthError("--timeout must be a positive number of seconds.")
        client_id = args.client_id.strip()
        client_secret = _client_secret(args.client_secret_env)
        with requests.Session() as session:
            if args.flow == "device":
                result = device_flow(client_id, endpoints, session=session, wait_s=args.timeout)
            else:
                opener: OpenUrl = open_url or ((lambda url: None) if args.no_browser else _open_browser)
                result = run_pkce_flow(
                    client_id,
                    client_secret,
                    endpoints,
                    port=args.port,
                    open_url=opener,
                    wait_s=DEFAULT_WAIT_S if args.timeout is None else args.timeout,
                    session=session,
                )
        args.client_id = client_id
        _report(args, client_secret, result, endpoints)
    except AuthError as exc:
        print(f"Error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("Interrupted: no token was stored.", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
