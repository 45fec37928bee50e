"""Hook for the Constant Contact V3 API (OAuth2 with a refresh token)."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator, Sequence
from datetime import datetime, timedelta, timezone
from functools import cached_property
from typing import Any
from urllib.parse import urlsplit

import requests
import tenacity

from airflow_provider_ciexport.exceptions import (
    DestinationApiError,
    DestinationAuthError,
    DestinationQuotaError,
    ExportConfigurationError,
)
from airflow_provider_ciexport.export.ratelimit import PER_SECOND_HEADROOM, RateLimiter, shared_limiter
from airflow_provider_ciexport.hooks.base import (
    RetryableAnswer,
    SegmentApiHook,
    check_base_url,
    json_or_none,
)
from airflow_provider_ciexport.urls import CC_API_BASE_URL, CC_TOKEN_URL
from airflow_provider_ciexport.variables import get_variable, set_variable

AUTH_COMMAND = "python -m airflow_provider_ciexport.constantcontact_auth"
# Refresh a little before the expiry the server announced, so a token never dies mid-request.
_EXPIRY_MARGIN_S = 60.0
_ROTATION_RETRIES = 3


def _mask(secret: str) -> None:
    from airflow.sdk.log import mask_secret

    mask_secret(secret)


class RefreshTokenStore:
    """Where a rotated refresh token is kept for the next run: the Airflow Variable ``key``.

    Connections are read-only from tasks in Airflow 3, so a refresh token that Constant Contact rotated
    is saved as a Variable, which every later run (on any worker) reads before the connection's own
    ``refresh_token`` extra.

    :param key: the Variable's key.
    """

    def __init__(self, key: str) -> None:
        self.key = key

    def get(self) -> str | None:
        """The stored refresh token, or ``None``."""
        return get_variable(self.key) or None

    def set(self, token: str) -> None:
        """Store ``token`` for the next run."""
        set_variable(
            self.key,
            token,
            "Constant Contact refresh token rotated by airflow-provider-ciexport; do not edit.",
        )


class ConstantContactHook(SegmentApiHook):
    """Talks to the Constant Contact V3 API with a ``constantcontact`` connection.

    The connection's login is the app's client id (API key), its password the client secret, and the
    extra ``refresh_token`` the token from the first authorization (see :mod:`constantcontact_auth`).
    Optional extras: ``api_base_url`` and ``token_url`` (to point at the sandbox) and
    ``requests_per_second`` (default 4). Access tokens are fetched when missing, about to expire, or
    refused with 401 (the call is then retried once), and registered with Airflow's secret masker.
    Rotating refresh tokens are saved in the Variable named by :attr:`refresh_token_variable`.

    :param constantcontact_conn_id: the Airflow connection to use.
    """

    conn_name_attr = "constantcontact_conn_id"
    default_conn_name = "constantcontact_default"
    conn_type = "constantcontact"
    hook_name = "Constant Contact"
    destination = "Constant Contact"

    DEFAULT_REQUESTS_PER_SECOND = 4.0
    MAX_PAGE = 100

    def __init__(self, constantcontact_conn_id: str = default_conn_name, **kwargs: Any) -> None:
        super().__init__(constantcontact_conn_id, **kwargs)
        self.constantcontact_conn_id = constantcontact_conn_id
        self._token_lock = threading.Lock()
        self._access_token: str | None = None
        self._expires_at = 0.0

    @property
    def refresh_token_variable(self) -> str:
        """Key of the Airflow Variable that holds a rotated refresh token for this connection."""
        return f"{self.constantcontact_conn_id}_refresh_token"

    @cached_property
    def token_store(self) -> RefreshTokenStore:
        """Where rotated refresh tokens are kept."""
        return RefreshTokenStore(self.refresh_token_variable)

    def _resolve_base_url(self) -> str:
        return check_base_url(
            self.extra_value("api_base_url") or CC_API_BASE_URL,
            "api_base_url",
            self.constantcontact_conn_id,
        )

    @cached_property
    def token_url(self) -> str:
        """The OAuth2 token endpoint."""
        return check_base_url(
            self.extra_value("token_url") or CC_TOKEN_URL, "token_url", self.constantcontact_conn_id
        )

    @cached_property
    def _client(self) -> tuple[str, str]:
        client_id = (self.connection.login or "").strip()
        secret = (self.connection.password or "").strip()
        if not client_id or not secret:
            missing = "client id (login)" if not client_id else "client secret (password)"
            raise ExportConfigurationError(
                f"Connection '{self.constantcontact_conn_id}' has no {missing}. Copy the API key and "
                "client secret of your app from the Constant Contact developer portal."
            )
        return client_id, secret

    @cached_property
    def _limiter(self) -> RateLimiter:
        rate = self.positive_extra("requests_per_second", self.DEFAULT_REQUESTS_PER_SECOND)
        return shared_limiter(("constantcontact", self._client[0]), rate, 1.0, PER_SECOND_HEADROOM)

    def _limiters(self, kind: str) -> Sequence[RateLimiter]:
        return (self._limiter,)

    # -- OAuth2 ---------------------------------------------------------------------------------

    def _auth_headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.get_access_token()}"}

    def get_access_token(self) -> str:
        """Return a valid access token, refreshing it when missing or about to expire."""
        with self._token_lock:
            if self._access_token is None or time.monotonic() >= self._expires_at:
                self._refresh_access_token()
            assert self._access_token is not None
            return self._access_token

    def _invalidate(self, token: str) -> None:
        with self._token_lock:
            if self._access_token == token:
                self._access_token = None

    def _refresh_access_token(self) -> None:
        conn_token = self.extra_value("refresh_token") or None
        stored = self.token_store.get()
        token = stored or conn_token
        if not token:
            raise ExportConfigurationError(
                f"Connection '{self.constantcontact_conn_id}' has no refresh token. Run `{AUTH_COMMAND}` "
                "once to authorize the app and put the token in the connection's 'refresh_token' extra."
            )
        tried = {token}
        for _ in range(_ROTATION_RETRIES + 1):
            payload = self._token_request(token)
            if payload is not None:
                break
            # Refused: another task may have rotated the token under us (read the newly stored one),
            # or the stored token is stale after the user put a fresh one in the connection.
            newer = self.token_store.get()
            candidates = [t for t in (newer, conn_token) if t and t not in tried]
            if not candidates:
                raise DestinationAuthError(
                    f"Constant Contact refused the refresh token of connection "
                    f"'{self.constantcontact_conn_id}' (invalid_grant): it expired (180 days unused), was "
                    f"revoked, or was already used. Run `{AUTH_COMMAND}`, put the new token in the "
                    f"connection's 'refresh_token' extra, and delete the Variable "
                    f"'{self.refresh_token_variable}' if it exists."
                )
            token = candidates[0]
            tried.add(token)
        else:  # pragma: no cover - the loop always breaks or raises
            raise AssertionError("unreachable")
        access = str(payload["access_token"])
        _mask(access)
        self._access_token = access
        expires_in = float(payload.get("expires_in") or 3600)
        self._expires_at = time.monotonic() + max(1.0, expires_in - min(_EXPIRY_MARGIN_S, expires_in / 10))
        rotated = payload.get("refresh_token")
        if rotated and rotated != token:
            _mask(str(rotated))
            self.token_store.set(str(rotated))
            self.log.info(
                "Constant Contact rotated the refresh token; saved it in Variable '%s'.",
                self.refresh_token_variable,
            )
        elif stored and token != stored:
            # The connection's token worked where the stored one did not: the stored one is stale.
            self.token_store.set(token)

    def _token_request(self, refresh_token: str) -> dict[str, Any] | None:
        """Exchange a refresh token; ``None`` when it was refused with ``invalid_grant``."""
        client_id, secret = self._client
        _mask(refresh_token)
        retrying = tenacity.Retrying(
            stop=tenacity.stop_after_attempt(self.max_attempts),
            wait=tenacity.wait_exponential(multiplier=0.5, max=30),
            retry=tenacity.retry_if_exception_type(RetryableAnswer),
            reraise=True,
        )
        try:
            for attempt in retrying:
                with attempt:
                    with self._counter_lock:
                        self._requests += 1
                    try:
                        response = self.get_conn().post(
                            self.token_url,
                            data={"grant_type": "refresh_token", "refresh_token": refresh_token},
                            auth=(client_id, secret),
                            timeout=self.timeout,
                        )
                    except (requests.ConnectionError, requests.Timeout) as exc:
                        raise RetryableAnswer(
                            f"no answer from the token endpoint ({type(exc).__name__})"
                        ) from None
                    if response.status_code == 429 or response.status_code >= 500:
                        raise RetryableAnswer(f"token endpoint HTTP {response.status_code}")
        except RetryableAnswer as exc:
            raise DestinationApiError(
                f"Constant Contact's token endpoint kept failing ({exc.reason}). Retry the task later."
            ) from None
        payload = json_or_none(response)
        error = payload.get("error") if isinstance(payload, dict) else None
        if response.status_code == 200 and isinstance(payload, dict) and payload.get("access_token"):
            return payload
        if error == "invalid_grant":
            return None
        if response.status_code == 401 or error == "invalid_client":
            raise DestinationAuthError(
                f"Constant Contact refused the client id or client secret of connection "
                f"'{self.constantcontact_conn_id}' (invalid_client). Copy the API key (login) and client "
                "secret (password) of your app from the Constant Contact developer portal."
            )
        raise DestinationApiError(
            f"Constant Contact's token endpoint answered HTTP {response.status_code}"
            f"{f' ({error})' if error else ''}. Check the connection's token_url.",
            status=response.status_code,
        )

    def _check_answer(self, response: requests.Response) -> None:
        status = response.status_code
        if status == 401:
            sent = response.request.headers.get("Authorization", "").removeprefix("Bearer ")
            retried = getattr(self._local, "unauthorized", 0)
            if retried >= 1:
                self._local.unauthorized = 0
                raise DestinationAuthError(
                    f"Constant Contact refused a freshly issued access token for connection "
                    f"'{self.constantcontact_conn_id}'. Check that the app's authorization included the "
                    f"scope 'contact_data', or run `{AUTH_COMMAND}` again."
                )
            self._local.unauthorized = retried + 1
            self._invalidate(sent)
            raise RetryableAnswer("access token expired", retry_after=0.0)
        self._local.unauthorized = 0
        if status == 403:
            raise DestinationAuthError(
                f"Constant Contact denied access with connection '{self.constantcontact_conn_id}' (HTTP 403). "
                f"The authorization needs the scopes 'contact_data offline_access': run `{AUTH_COMMAND}` again."
            )
        if status == 429:
            payload = json_or_none(response)
            keys = (
                {e.get("error_key") for e in payload if isinstance(e, dict)}
                if isinstance(payload, list)
                else set()
            )
            if "quota_exceeded" in keys:
                reset = (datetime.now(timezone.utc) + timedelta(days=1)).replace(
                    hour=0, minute=0, second=0, microsecond=0
                )
                raise DestinationQuotaError(
                    "Constant Contact's daily request quota for this API key (10,000 requests) is spent. "
                    f"It resets at 00:00 UTC ({reset:%Y-%m-%d %H:%M} UTC); retry the task after that."
                )

    # -- API calls ----------------------------------------------------------------------------

    def get_list(self, list_id: str) -> dict[str, Any] | None:
        """Return the contact list ``list_id`` (a UUID), or ``None`` if the account has no such list."""
        response = self.call("GET", f"contact_lists/{list_id}", allow_status=(404,))
        if response.status_code == 404:
            return None
        return dict(response.json())

    def _paginate(self, endpoint: str, key: str, params: dict[str, Any]) -> Iterator[dict[str, Any]]:
        next_endpoint: str | None = endpoint
        query: dict[str, Any] | None = params
        while next_endpoint:
            payload = self.call("GET", next_endpoint, params=query).json()
            yield from payload.get(key) or []
            href = ((payload.get("_links") or {}).get("next") or {}).get("href")
            if not href:
                return
            # Next links are absolute paths such as /v3/contact_custom_fields?cursor=...
            parts = urlsplit(href)
            base_path = urlsplit(self.api_base_url).path
            path = parts.path[len(base_path) :] if parts.path.startswith(base_path) else parts.path
            next_endpoint = f"{path.lstrip('/')}?{parts.query}" if parts.query else path
            query = None

    def get_custom_fields(self) -> list[dict[str, Any]]:
        """Return every custom contact field (``custom_field_id``, ``name``, ``label``, ``type``)."""
        return list(self._paginate("contact_custom_fields", "custom_fields", {"limit": self.MAX_PAGE}))

    def json_import(self, body: bytes) -> dict[str, Any]:
        """Start a JSON contact import (``POST /activities/contacts_json_import``); return the activity.

        :param body: the serialised ``{"import_data": [...], "list_ids": [...]}``: fewer than 40,000
            contacts and under 4 MB (the API silently drops whatever lies past 4 MB).
        """
        return dict(self.call("POST", "activities/contacts_json_import", body=body, kind="import").json())

    def get_activity(self, activity_id: str) -> dict[str, Any]:
        """Return an activity's state and counts (``GET /activities/{id}``)."""
        return dict(self.call("GET", f"activities/{activity_id}").json())

    def test_connection(self) -> tuple[bool, str]:
        """Refresh the access token and list one contact list; say what is wrong if that fails."""
        attempts, self.max_attempts = self.max_attempts, 2
        try:
            self.call("GET", "contact_lists", params={"limit": 1})
        except (ExportConfigurationError, DestinationAuthError, DestinationQuotaError) as exc:
            return False, str(exc)
        except DestinationApiError as exc:
            return (
                False,
                f"{exc} Check the connection's api_base_url and token_url (leave both empty for Constant Contact).",
            )
        finally:
            self.max_attempts = attempts
        return True, "Connected to Constant Contact."
