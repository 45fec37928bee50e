"""Hook for the ActiveCampaign API v3."""

from __future__ import annotations

import re
from collections.abc import Iterator, Sequence
from functools import cached_property
from typing import Any
from urllib.parse import urlsplit

import requests

from airflow_provider_ciexport.exceptions import (
    DestinationApiError,
    DestinationAuthError,
    ExportConfigurationError,
)
from airflow_provider_ciexport.export.ratelimit import PER_SECOND_HEADROOM, RateLimiter, shared_limiter
from airflow_provider_ciexport.hooks.base import (
    RetryableAnswer,
    SegmentApiHook,
    json_or_none,
    parse_retry_after,
)
from airflow_provider_ciexport.urls import is_loopback

_HOSTNAME = re.compile(
    r"^[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?(\.[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?)*$"
)
_API_PATHS = ("", "/", "/api/3", "/api/3/")


def normalize_api_url(
    host: str | None, conn_id: str = "activecampaign_default", port: int | None = None
) -> str:
    """Turn what a user pastes as the ActiveCampaign API URL into the API's base URL.

    ``https://youracct.api-us1.com/api/3/``, ``youracct.api-us1.com/`` and ``youracct.api-us1.com`` all
    give ``https://youracct.api-us1.com/api/3``. Plain ``http://`` is honoured only for a loopback host
    (the local sandbox).

    :param host: the connection's host field.
    :param conn_id: the connection's id, for error messages.
    :param port: the connection's port field, if any.
    :raises ExportConfigurationError: if the value is not an ActiveCampaign API URL.
    """
    how = (
        "Set it to the API URL shown in ActiveCampaign under Settings > Developer, "
        "e.g. https://youraccount.api-us1.com."
    )
    value = (host or "").strip()
    if not value:
        raise ExportConfigurationError(f"Connection '{conn_id}' has no API URL (host). {how}")
    if any(ch.isspace() for ch in value):
        raise ExportConfigurationError(f"The API URL of connection '{conn_id}' contains spaces. {how}")
    explicit_scheme = "://" in value
    parts = urlsplit(value if explicit_scheme else f"https://{value}")
    if parts.scheme not in ("http", "https"):
        raise ExportConfigurationError(
            f"The API URL of connection '{conn_id}' has the scheme '{parts.scheme}'. {how}"
        )
    hostname = parts.hostname or ""
    if not hostname or not (_HOSTNAME.match(hostname) or is_loopback(hostname)):
        raise ExportConfigurationError(f"The API URL of connection '{conn_id}' has no valid host name. {how}")
    if parts.path not in _API_PATHS or parts.query or parts.fragment or parts.username:
        raise ExportConfigurationError(
            f"The API URL of connection '{conn_id}' points somewhere other than the API "
            f"(path '{parts.path}'). {how}"
        )
    if parts.scheme == "http" and not is_loopback(hostname):
        raise ExportConfigurationError(
            f"The API URL of connection '{conn_id}' uses plain http://. ActiveCampaign is reached over "
            f"https:// only (http is allowed just for a local sandbox such as http://127.0.0.1:8025). {how}"
        )
    try:
        url_port = parts.port
    except ValueError:
        raise ExportConfigurationError(
            f"The API URL of connection '{conn_id}' has an invalid port. {how}"
        ) from None
    netloc = hostname if ":" not in hostname else f"[{hostname}]"
    if url_port or port:
        netloc = f"{netloc}:{url_port or port}"
    return f"{parts.scheme}://{netloc}/api/3"


class ActiveCampaignHook(SegmentApiHook):
    """Talks to the ActiveCampaign API v3 with the key of an ``activecampaign`` connection.

    The connection's host is the account's API URL (Settings > Developer), its password the API key.
    Optional extras ``requests_per_second`` (default 5) and ``imports_per_minute`` (default 100) set the
    rate limits, which every hook of the same account in this process shares.

    :param activecampaign_conn_id: the Airflow connection to use.
    """

    conn_name_attr = "activecampaign_conn_id"
    default_conn_name = "activecampaign_default"
    conn_type = "activecampaign"
    hook_name = "ActiveCampaign"
    destination = "ActiveCampaign"

    DEFAULT_REQUESTS_PER_SECOND = 5.0
    DEFAULT_IMPORTS_PER_MINUTE = 100.0
    MAX_PAGE = 100

    def __init__(self, activecampaign_conn_id: str = default_conn_name, **kwargs: Any) -> None:
        super().__init__(activecampaign_conn_id, **kwargs)
        self.activecampaign_conn_id = activecampaign_conn_id

    def _resolve_base_url(self) -> str:
        return normalize_api_url(self.connection.host, self.activecampaign_conn_id, self.connection.port)

    @cached_property
    def _api_key(self) -> str:
        key = (self.connection.password or "").strip()
        if not key:
            raise ExportConfigurationError(
                f"Connection '{self.activecampaign_conn_id}' has no API key. Put the key from "
                "ActiveCampaign's Settings > Developer in the connection's password (API key) field."
            )
        return key

    def _auth_headers(self) -> dict[str, str]:
        return {"Api-Token": self._api_key}

    @property
    def imports_per_minute(self) -> float:
        """The bulk import rate limit in use (extra ``imports_per_minute``, default 100)."""
        return self._import_limiter.rate

    @cached_property
    def _general_limiter(self) -> RateLimiter:
        rate = self.positive_extra("requests_per_second", self.DEFAULT_REQUESTS_PER_SECOND)
        return shared_limiter(
            ("activecampaign", self.api_base_url, "requests"), rate, 1.0, PER_SECOND_HEADROOM
        )

    @cached_property
    def _import_limiter(self) -> RateLimiter:
        rate = self.positive_extra("imports_per_minute", self.DEFAULT_IMPORTS_PER_MINUTE)
        return shared_limiter(("activecampaign", self.api_base_url, "imports"), rate, 60.0)

    def _limiters(self, kind: str) -> Sequence[RateLimiter]:
        if kind == "import":
            return (self._import_limiter, self._general_limiter)
        return (self._general_limiter,)

    def _check_answer(self, response: requests.Response) -> None:
        status = response.status_code
        if status in (401, 403):
            raise DestinationAuthError(
                f"ActiveCampaign refused the API key of connection '{self.activecampaign_conn_id}' "
                f"(HTTP {status}). Copy the key again from Settings > Developer of the account whose "
                "API URL the connection names."
            )
        if status == 400:
            payload = json_or_none(response)
            if isinstance(payload, dict) and "rate limit" in str(payload.get("message", "")).lower():
                retry_after = parse_retry_after(response.headers.get("Retry-After"))
                raise RetryableAnswer("HTTP 400 Rate limit exceeded", retry_after)

    # -- API calls ----------------------------------------------------------------------------

    def get_list(self, list_id: int) -> dict[str, Any] | None:
        """Return the list with ``list_id``, or ``None`` if the account has no such list."""
        response = self.call("GET", f"lists/{int(list_id)}", allow_status=(404,))
        if response.status_code == 404:
            return None
        return dict(response.json()["list"])

    def _paginate(
        self, endpoint: str, key: str, params: dict[str, Any] | None = None
    ) -> Iterator[dict[str, Any]]:
        offset = 0
        while True:
            page = self.call(
                "GET", endpoint, params={**(params or {}), "limit": self.MAX_PAGE, "offset": offset}
            )
            payload = page.json()
            items = payload.get(key) or []
            yield from items
            offset += len(items)
            total = int((payload.get("meta") or {}).get("total") or 0)
            if not items or offset >= total:
                return

    def get_lists(self) -> list[dict[str, Any]]:
        """Return every list of the account."""
        return list(self._paginate("lists", "lists"))

    def get_fields(self) -> list[dict[str, Any]]:
        """Return every custom contact field of the account (``id``, ``title``, ``perstag``, ...)."""
        return list(self._paginate("fields", "fields"))

    def bulk_import(self, body: bytes) -> str:
        """Queue a bulk import (``POST /import/bulk_import``) and return its batch id.

        :param body: the serialised request, ``{"contacts": [...]}``: at most 250 contacts and under
            400,000 bytes, every email valid (one bad contact rejects the whole request).
        """
        response = self.call("POST", "import/bulk_import", body=body, kind="import")
        payload = json_or_none(response) or {}
        batch_id = payload.get("batchId")
        if not batch_id:
            raise DestinationApiError(
                f"ActiveCampaign accepted a bulk import but returned no batch id ({self._error_text(response)})."
            )
        return str(batch_id)

    def import_info(self, batch_id: str) -> dict[str, Any]:
        """Return the status of an import batch (``GET /import/info``).

        ``status`` is ``False`` for about a second after the import was queued, then one of
        ``waiting``, ``claimed``, ``active``, ``completed``, ``failed``, ``interrupted``.
        """
        return dict(self.call("GET", "import/info", params={"batchId": batch_id}).json())

    def sync_contact(self, contact: dict[str, Any]) -> int:
        """Create or update one contact (``POST /contact/sync``) and return its id.

        :param contact: the API's camelCase contact object (``email``, ``firstName``, ``fieldValues``...).
        """
        response = self.call("POST", "contact/sync", json_body={"contact": contact})
        return int(response.json()["contact"]["id"])

    def add_to_list(self, contact_id: int, list_id: int) -> None:
        """Subscribe a contact to a list (``POST /contactLists``)."""
        self.call(
            "POST",
            "contactLists",
            json_body={"contactList": {"list": int(list_id), "contact": int(contact_id), "status": 1}},
        )

    def test_connection(self) -> tuple[bool, str]:
        """Make one authenticated call and say what is wrong if it fails."""
        attempts, self.max_attempts = self.max_attempts, 2
        try:
            self.call("GET", "lists", params={"limit": 1})
        except ExportConfigurationError as exc:
            return False, str(exc)
        except DestinationAuthError as exc:
            return False, str(exc)
        except DestinationApiError as exc:
            if exc.status == 404:
                return False, (
                    "The API URL answered 404: it is not an ActiveCampaign API. Use the API URL from "
                    "Settings > Developer."
                )
            return False, f"{exc} Check that the API URL is the one shown under Settings > Developer."
        finally:
            self.max_attempts = attempts
        return True, "Connected to ActiveCampaign."
