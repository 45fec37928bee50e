"""Constant Contact's OAuth 2 server state: clients, codes, device grants and tokens."""

from __future__ import annotations

import base64
import hashlib
import json
import secrets
import time
from dataclasses import dataclass

from airflow_provider_ciexport.tools.sandbox.seed import (
    CC_CLIENT_ID,
    CC_CLIENT_SECRET,
    CC_REFRESH_TOKEN,
    CC_REFRESH_TOKEN_SCOPE,
)

CODE_TTL_S = 600.0
DEVICE_TTL_S = 600


@dataclass
class Grant:
    """What a refresh token stands for."""

    client_id: str
    scope: str
    #: Issued to a public client (PKCE or device flow): refreshing it needs no client secret.
    public: bool = False


@dataclass
class AccessToken:
    """An issued access token."""

    client_id: str
    scope: str
    expires_at: float
    #: API requests this token has answered.
    uses: int = 0


@dataclass
class AuthCode:
    """An authorization code waiting to be exchanged."""

    client_id: str
    redirect_uri: str
    scope: str
    code_challenge: str | None
    expires_at: float


@dataclass
class DeviceGrant:
    """A device authorization waiting to be polled."""

    client_id: str
    scope: str
    user_code: str
    expires_at: float
    polls: int = 0
    used: bool = False


class OAuthStore:
    """Tokens and pending grants; every lookup takes the current monotonic time."""

    def __init__(self) -> None:
        self.clients: dict[str, str] = {CC_CLIENT_ID: CC_CLIENT_SECRET}
        self.refresh_tokens: dict[str, Grant] = {
            CC_REFRESH_TOKEN: Grant(CC_CLIENT_ID, CC_REFRESH_TOKEN_SCOPE)
        }
        self.access_tokens: dict[str, AccessToken] = {}
        self.codes: dict[str, AuthCode] = {}
        self.devices: dict[str, DeviceGrant] = {}

    def check_client(self, client_id: str, secret: str | None) -> bool:
        """Whether the client exists and, when a secret is given, that it matches."""
        expected = self.clients.get(client_id)
        if expected is None:
            return False
        return secret is None or secrets.compare_digest(expected.encode(), secret.encode())

    def access_status(self, token: str, now: float, max_uses: int = 0) -> AccessToken | str:
        """The token's record (counting one more use), or ``"unknown"`` / ``"expired"``.

        :param max_uses: a token answers this many requests, then expires (0: no limit).
        """
        record = self.access_tokens.get(token)
        if record is None:
            return "unknown"
        if max_uses and record.uses >= max_uses:
            record.expires_at = 0.0
        if now >= record.expires_at:
            return "expired"
        record.uses += 1
        return record

    def expire_all(self) -> int:
        """Make every access token expired now; returns how many were live."""
        live = 0
        for record in self.access_tokens.values():
            if record.expires_at > 0:
                live += 1
            record.expires_at = 0.0
        return live

    def issue(
        self,
        client_id: str,
        scope: str,
        now: float,
        ttl_s: float,
        issuer: str,
        refresh_token: str | None,
    ) -> dict[str, object]:
        """Mint an access token (and pass on ``refresh_token``) as a token-endpoint answer."""
        access = "sandbox-at-" + secrets.token_urlsafe(24)
        self.access_tokens[access] = AccessToken(client_id, scope, now + ttl_s)
        body: dict[str, object] = {
            "token_type": "Bearer",
            "expires_in": max(1, round(ttl_s)),
            "access_token": access,
            "scope": scope,
            "id_token": _fake_id_token(client_id, issuer, ttl_s),
        }
        if refresh_token is not None:
            body["refresh_token"] = refresh_token
        return body

    def new_refresh_token(self, client_id: str, scope: str, public: bool) -> str | None:
        """A fresh refresh token, or None when ``offline_access`` was not granted."""
        if "offline_access" not in scope.split():
            return None
        token = "sandbox-rt-" + secrets.token_urlsafe(24)
        self.refresh_tokens[token] = Grant(client_id, scope, public)
        return token

    def new_code(
        self, client_id: str, redirect_uri: str, scope: str, challenge: str | None, now: float
    ) -> str:
        """An authorization code for the redirect."""
        code = secrets.token_urlsafe(24)
        self.codes[code] = AuthCode(client_id, redirect_uri, scope, challenge, now + CODE_TTL_S)
        return code

    def new_device(self, client_id: str, scope: str, now: float) -> tuple[str, DeviceGrant]:
        """A device code and its grant."""
        device_code = secrets.token_urlsafe(32)
        user_code = "-".join(secrets.token_hex(2).upper() for _ in range(2))
        grant = DeviceGrant(client_id, scope, user_code, now + DEVICE_TTL_S)
        self.devices[device_code] = grant
        return device_code, grant


def pkce_s256(verifier: str) -> str:
    """The S256 code challenge of a PKCE code verifier."""
    digest = hashlib.sha256(verifier.encode("ascii")).digest()
    return base64.urlsafe_b64encode(digest).rstrip(b"=").decode("ascii")


def _b64(data: dict[str, object]) -> str:
    return base64.urlsafe_b64encode(json.dumps(data).encode()).rstrip(b"=").decode("ascii")


def _fake_id_token(client_id: str, issuer: str, ttl_s: float) -> str:
    # Shaped like a JWT so clients that split it do not choke; the signature is meaningless.
    now = int(time.time())
    header = _b64({"alg": "RS256", "kid": "sandbox"})
    payload = _b64(
        {"sub": "sandbox-user", "aud": client_id, "iss": issuer, "iat": now, "exp": now + int(ttl_s)}
    )
    return f"{header}.{payload}.c2FuZGJveA"
