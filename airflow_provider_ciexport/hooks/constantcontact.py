"""The Constant Contact V3 API: its hook (a complete client, OAuth2 with a refresh token), payload
shapes, limits and status vocabulary.

The export's adapter to this API is :mod:`airflow_provider_ciexport.destinations.constantcontact`.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import tempfile
import threading
import time
import uuid
from collections.abc import Iterable, Iterator, Mapping, Sequence
from datetime import datetime, timedelta, timezone
from functools import cached_property
from typing import IO, Any
from urllib.parse import urlsplit

import requests

from airflow_provider_ciexport.core.contacts import ContactSchema
from airflow_provider_ciexport.core.intervals import IntervalGate
from airflow_provider_ciexport.core.jobs import JobResult
from airflow_provider_ciexport.core.polling import poll_until_done
from airflow_provider_ciexport.core.ratelimit import PER_SECOND_HEADROOM, RateLimiter, shared_limiter
from airflow_provider_ciexport.core.redaction import looks_like_a_header
from airflow_provider_ciexport.core.urls import CC_API_BASE_URL, CC_TOKEN_URL
from airflow_provider_ciexport.core.variables import get_variable, set_variable
from airflow_provider_ciexport.exceptions import (
    DestinationApiError,
    DestinationAuthError,
    DestinationQuotaError,
    ExportConfigurationError,
)
from airflow_provider_ciexport.hooks.base import (
    HeaderAuth,
    ImportEncoder,
    SegmentApiHook,
    check_base_url,
    checked_contacts,
    encode_json,
    json_or_none,
)
from airflow_provider_ciexport.hooks.constantcontact_oauth import (
    SCOPES,
    TokenError,
    TokenRedirect,
    refresh_grant,
    request_token,
)

AUTH_COMMAND = "python -m airflow_provider_ciexport.tools.constantcontact_auth"
#: The first status poll of an activity comes this long after it starts at the documented 4 requests
#: a second (two of the key's request slots), sooner on a key with raised limits: the pace the
#: export's imports are followed at.
_FIRST_POLL_S = 0.5
#: The longest pause between two status polls of a contact export.
_LONGEST_EXPORT_POLL_S = 5.0
# Refresh a little before the expiry the server announced, so a token never dies mid-request.
_EXPIRY_MARGIN_S = 60.0
_ROTATION_RETRIES = 3


#: One JSON import takes fewer than 40,000 contacts, in a body under 4 MB: the API silently drops
#: whatever lies past 4 MB, so bodies must be sized by their bytes.
MAX_IMPORT_CONTACTS = 39_999
MAX_IMPORT_BYTES = 4_000_000
#: One import adds its contacts to at most 50 lists.
MAX_LISTS = 50
#: Contacts one ``remove_list_memberships`` activity takes.
MAX_REMOVE_CONTACTS = 500
CUSTOM_PREFIX = "cf:"
#: Bytes read at a time from a file the API offers for download (a contact export).
DOWNLOAD_BLOCK_BYTES = 256 * 1024
#: Final activity states that mean the import did not happen.
FAILED_STATES = frozenset({"failed", "cancelled", "timed_out"})

_NAME_50 = (
    "first_name",
    "last_name",
    "job_title",
    "company_name",
    "phone",
    "home_phone",
    "work_phone",
    "mobile_phone",
    "other_phone",
)
_ADDRESS = ("city", "state", "zip", "country")
_STREET = ("street", "street2")
#: The import's own attributes and their maximum lengths (the V3 schema's JsonImportContact).
ATTRIBUTES: dict[str, int | None] = {
    # The import schema says 50 for email, the rest of the API 80; over-long addresses in between are
    # counted as rejected by the API itself, never lost silently.
    "email": 80,
    **dict.fromkeys(_NAME_50, 50),
    "birthday_month": 2,
    "birthday_day": 2,
    "anniversary": 10,
    **dict.fromkeys(_STREET, 255),
    **dict.fromkeys(_ADDRESS, 50),
    **{f"{kind}_{part}": 255 for kind in ("home", "work", "other") for part in _STREET},
    **{f"{kind}_{part}": 50 for kind in ("home", "work", "other") for part in _ADDRESS},
}
SCHEMA = ContactSchema(
    destination="Constant Contact",
    standard=ATTRIBUTES,
    custom_prefix=CUSTOM_PREFIX,
    custom_max_length=255,
    max_custom_fields=25,
    email_max_length=80,
)
# The schema types these as integers; every other attribute is text.
_INTEGER_ATTRIBUTES = ("birthday_month", "birthday_day")


def parse_list_ids(values: Iterable[Any]) -> list[str]:
    """Check list ids are UUIDs (1 to 50 of them) and return them in canonical form, without repeats."""
    ids: list[str] = []
    for value in values:
        try:
            list_id = str(uuid.UUID(str(value).strip()))
        except ValueError:
            raise ExportConfigurationError(
                f"Constant Contact list id {value!r} is not a UUID. Nothing was sent. Copy the list's id "
                "from its URL in Constant Contact (e.g. 1f2e3d4c-5b6a-4789-8abc-def012345678)."
            ) from None
        if list_id not in ids:
            ids.append(list_id)
    if len(ids) > MAX_LISTS:
        raise ExportConfigurationError(
            f"{len(ids)} Constant Contact lists were given; one import accepts at most {MAX_LISTS}. "
            "Nothing was sent. Split the export into several tasks."
        )
    return ids


class JsonImportEncoder(ImportEncoder):
    """Builds ``POST /activities/contacts_json_import`` bodies that add every contact to the lists.

    :param list_ids: the lists (canonical UUIDs) every contact is added to.
    """

    prefix = b'{"import_data":['

    def __init__(self, list_ids: Sequence[str]) -> None:
        self.suffix = ('],"list_ids":' + json.dumps(list(list_ids)) + "}").encode()
        self._integer_keys = frozenset(_INTEGER_ATTRIBUTES)

    def encode(self, contact: Mapping[str, str]) -> bytes:
        if not self._integer_keys.isdisjoint(contact):
            body: dict[str, Any] = dict(contact)
            for key in _INTEGER_ATTRIBUTES:
                if key in body and body[key].isdigit():
                    body[key] = int(body[key])
            return encode_json(body)
        return encode_json(contact)


def error_keys(payload: Any) -> set[str]:
    """The ``error_key`` values of a Constant Contact error body.

    Most endpoints answer a list of ``{"error_key", "error_message"}`` objects; the documentation shows
    429 answers as one such object. Both shapes are read, for every answer.
    """
    errors = payload if isinstance(payload, list) else [payload]
    return {str(e["error_key"]) for e in errors if isinstance(e, dict) and e.get("error_key")}


def rotated_token_variable(token_url: str, client_id: str, refresh_token: str | None) -> str:
    """The Variable that holds the rotated successors of a connection's refresh token.

    Its key follows from what the connection holds (token endpoint, client id and its own refresh
    token, hashed), not from the connection's id: Airflow's UI tests a copy of a connection under a
    random id, so a test that rotates the token must store the successor exactly where the real
    connection's tasks look, whichever id, environment variable or secrets backend holds it. A fresh
    token put in the connection gives a new key, so a stale stored token is never tried again.
    """
    identity = "\n".join((token_url, client_id, refresh_token or ""))
    return f"constantcontact_refresh_token_{hashlib.sha256(identity.encode()).hexdigest()[:24]}"


def _folded_column_name(name: str) -> str:
    """``name`` without case, spaces and underscores: ``"Email address"`` and ``"email_address"`` meet."""
    return name.replace("_", "").replace(" ", "").lower()


def _export_columns(header: Sequence[str], fields: Sequence[str]) -> list[str]:
    """The field name of each column of a contact export's ``header`` (its own name when no field's).

    :raises DestinationApiError: if a field has no column.
    """
    # The header's spelling is not documented ("email_address" or "Email address"): compare
    # ignoring case, spaces and underscores.
    wanted = {_folded_column_name(name): name for name in fields}
    names = [wanted.get(_folded_column_name(column), column) for column in header]
    missing = [name for name in fields if name not in names]
    if missing:
        # The vendor's file: its first line is shown only when it reads as column names.
        shown = ", ".join(header[:20]) if looks_like_a_header(header) else "not shown: they look like data"
        raise DestinationApiError(
            f"Constant Contact's contact export has no column for {', '.join(missing)} (columns: {shown})."
        )
    return names


class _BearerAuth(HeaderAuth):
    """The hook's current access token in the ``Authorization`` header; renewable after a 401."""

    def __init__(self, hook: ConstantContactHook) -> None:
        super().__init__("Authorization", lambda: f"Bearer {hook.get_access_token()}")
        self.hook = hook

    def renew(self, refused: requests.PreparedRequest) -> bool:
        sent = str(refused.headers.get("Authorization", "")).removeprefix("Bearer ")
        self.hook.invalidate_access_token(sent)
        return True


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
    extra ``refresh_token`` the token from the first authorization (see :mod:`airflow_provider_ciexport.tools.constantcontact_auth`).
    Optional extras: ``api_base_url`` and ``oauth_url`` (the token endpoint; formerly ``token_url``, still
    read), both to point at the sandbox, and
    ``requests_per_second`` (default 4). Access tokens are fetched when missing, about to expire, or
    refused with 401 (the call is then sent again with a new one), and registered with Airflow's secret masker.
    Rotating refresh tokens are saved in the Variable named by :attr:`refresh_token_variable`.

    :param constantcontact_conn_id: the Airflow connection to use.
    """

    conn_name_attr = "constantcontact_conn_id"
    default_conn_name = "constantcontact_default"
    conn_type = "constantcontact"
    hook_name = "Constant Contact"
    destination = "Constant Contact"
    address_setting = "api_base_url"

    import_endpoint = "activities/contacts_json_import"

    DEFAULT_REQUESTS_PER_SECOND = 4.0
    MAX_PAGE = 100
    #: ``GET /contacts`` answers up to 500 contacts a page.
    MAX_CONTACTS_PAGE = 500

    def __init__(self, constantcontact_conn_id: str = default_conn_name, **kwargs: Any) -> None:
        super().__init__(constantcontact_conn_id, **kwargs)
        self.constantcontact_conn_id = constantcontact_conn_id
        self._token_lock = threading.Lock()
        self._access_token: str | None = None
        self._expires_at = 0.0

    @property
    def refresh_token_variable(self) -> str:
        """Key of the Airflow Variable that holds a rotated refresh token for this connection.

        See :func:`rotated_token_variable`: it depends on the connection's content, not its id.
        """
        return rotated_token_variable(self.token_url, self._client[0], self.extra_value("refresh_token"))

    @cached_property
    def token_store(self) -> RefreshTokenStore:
        """Where rotated refresh tokens are kept."""
        return RefreshTokenStore(self.refresh_token_variable)

    @property
    def _message_conn_id(self) -> str | None:
        return None if self.testing else self.constantcontact_conn_id

    def _resolve_base_url(self) -> str:
        return check_base_url(
            self.extra_value("api_base_url") or CC_API_BASE_URL, "api_base_url", self._message_conn_id
        )

    @cached_property
    def token_url(self) -> str:
        """The OAuth2 token endpoint: the extra ``oauth_url`` (formerly ``token_url``), or Constant Contact's."""
        name = "oauth_url" if self.extra_value("oauth_url") else "token_url"
        return check_base_url(self.extra_value(name) or CC_TOKEN_URL, name, self._message_conn_id)

    @cached_property
    def _client(self) -> tuple[str, str]:
        client_id = (self.connection.login or "").strip()
        secret = (self.connection.password or "").strip()
        if not client_id or not secret:
            missing = "client id (login)" if not client_id else "client secret (password)"
            raise ExportConfigurationError(
                f"{self.capitalized_conn_label} has no {missing}. Copy the API key and "
                "client secret of your app from the Constant Contact developer portal."
            )
        return client_id, secret

    @cached_property
    def _limiter(self) -> RateLimiter:
        rate = self.positive_extra("requests_per_second", self.DEFAULT_REQUESTS_PER_SECOND)
        return shared_limiter(
            ("constantcontact", self._client[0]),
            rate,
            1.0,
            PER_SECOND_HEADROOM,
            window_calls=self.DEFAULT_REQUESTS_PER_SECOND,
        )

    def _limiters(self, kind: str) -> Sequence[RateLimiter]:
        return (self._limiter,)

    def _account(self) -> str:
        # 4 requests a second and 10,000 a day are per API key (the app's client id).
        return self._client[0]

    # -- OAuth2 ---------------------------------------------------------------------------------

    @cached_property
    def api_auth(self) -> HeaderAuth:
        """The access token as a Bearer token; a refused one is dropped, so the next call gets a new one."""
        return _BearerAuth(self)

    def get_access_token(self) -> str:
        """Return a valid access token, refreshing it when missing or about to expire."""
        with self._token_lock:
            if self._access_token is None or time.monotonic() >= self._expires_at:
                self._refresh_access_token()
            assert self._access_token is not None
            return self._access_token

    def invalidate_access_token(self, token: str) -> None:
        """Forget ``token`` (the API refused it) unless another thread already replaced it."""
        with self._token_lock:
            if self._access_token == token:
                self._access_token = None

    def _refresh_access_token(self) -> None:
        conn_token = self.extra_value("refresh_token") or None
        stored = self.token_store.get()
        token = stored or conn_token
        if not token:
            raise ExportConfigurationError(
                f"{self.capitalized_conn_label} has no refresh token. Run "
                f"{AUTH_COMMAND} once to authorize the app and put the token in the connection's Refresh "
                "token field (in the UI's connection form, under Extra Fields; the extra 'refresh_token')."
            )
        payload, token = self._exchange_refresh_token(token, conn_token)
        self._keep_access_token(payload)
        self._keep_refresh_token(payload, token, stored)

    def _exchange_refresh_token(self, token: str, conn_token: str | None) -> tuple[dict[str, Any], str]:
        """The token endpoint's answer to ``token``, or to the next candidate when it is refused, and
        the refresh token that got it."""
        tried = {token}
        for _ in range(_ROTATION_RETRIES + 1):
            payload = self._token_request(token)
            if payload is not None:
                return payload, token
            # Refused: another task may have rotated the token under us (read the newly stored one),
            # or an old stored token is stale while the connection's own one still works.
            newer = self.token_store.get()
            candidates = [t for t in (newer, conn_token) if t and t not in tried]
            if not candidates:
                raise DestinationAuthError(
                    f"Constant Contact refused the refresh token of {self.conn_label} (invalid_grant): it "
                    f"expired (180 days unused), was revoked, or was already used. Run {AUTH_COMMAND} and "
                    "put the new token in the connection's Refresh token field (extra 'refresh_token')."
                )
            token = candidates[0]
            tried.add(token)
        raise AssertionError("unreachable")  # pragma: no cover - the loop always returns or raises

    def _keep_access_token(self, payload: Mapping[str, Any]) -> None:
        access = str(payload["access_token"])
        _mask(access)
        self._access_token = access
        expires_in = float(payload.get("expires_in") or 3600)
        self._expires_at = time.monotonic() + max(1.0, expires_in - min(_EXPIRY_MARGIN_S, expires_in / 10))

    def _keep_refresh_token(self, payload: Mapping[str, Any], token: str, stored: str | None) -> None:
        """Store the refresh token to use next: the rotated successor of ``token``, or ``token`` when it
        worked where the stored one did not."""
        rotated = payload.get("refresh_token")
        if rotated and rotated != token:
            _mask(str(rotated))
            self.token_store.set(str(rotated))
            self.log.info(
                "Constant Contact rotated the refresh token; saved it in Variable '%s'.",
                self.refresh_token_variable,
            )
        elif stored and token != stored:
            # Another token worked where the stored one did not: the stored one is stale.
            self.token_store.set(token)

    def _token_request(self, refresh_token: str) -> dict[str, Any] | None:
        """Exchange a refresh token; ``None`` when it was refused with ``invalid_grant``."""
        _mask(refresh_token)
        try:
            return request_token(
                self.get_conn(),
                self.token_url,
                refresh_grant(refresh_token),
                client=self._client,
                timeout=self.timeout,
            )
        except TokenError as refusal:
            if refusal.error == "invalid_grant":
                return None
            raise self._token_error(refusal) from None

    def _is_api_url(self, url: str) -> bool:
        # The token endpoint may lie under the API's base URL (a gateway): it must never get the bearer
        # auth, which would wait for the token lock that the refresh sending it already holds.
        return url.split("?", 1)[0] != self.token_url and super()._is_api_url(url)

    def _address_setting(self, url: str) -> str:
        if url.startswith(self.token_url):
            return (
                "token_url"
                if self.extra_value("token_url") and not self.extra_value("oauth_url")
                else "oauth_url"
            )
        return self.address_setting

    # -- error mapping: every answer of this API that is not a plain result ----------------------

    def _token_error(self, refusal: TokenError) -> Exception:
        """The error for a refusal of the token endpoint (other than ``invalid_grant``)."""
        if isinstance(refusal, TokenRedirect):
            setting = self._address_setting(self.token_url)
            return DestinationApiError(
                f"Constant Contact's token endpoint answered HTTP {refusal.status}, a redirect to "
                f"{refusal.target}. Token requests never follow redirects (they carry the refresh token "
                f"and the client secret): set the {setting} of {self.conn_label} to the token endpoint "
                "itself, or leave it empty for Constant Contact's.",
                status=refusal.status,
            )
        if refusal.error == "invalid_client":
            return DestinationAuthError(
                f"Constant Contact refused the client id or client secret of {self.conn_label} "
                "(invalid_client). Copy the API key (login) and client "
                "secret (password) of your app from the Constant Contact developer portal."
            )
        return DestinationApiError(
            f"Constant Contact's token endpoint answered HTTP {refusal.status}"
            f"{f' ({refusal.error})' if refusal.error else ''}. Check the connection's oauth_url (leave it "
            "empty for Constant Contact).",
            status=refusal.status,
        )

    def _check_answer(self, response: requests.Response) -> None:
        status = response.status_code
        if status == 401:
            # send() renewed the access token after every 401 and tried max_attempts times.
            raise DestinationAuthError(
                f"Constant Contact refused the access token for {self.conn_label} on each of "
                f"{self.max_attempts} attempts, every time freshly issued. Check that the app's "
                f"authorization included the scope 'contact_data', or run {AUTH_COMMAND} again."
            )
        if status == 403:
            raise DestinationAuthError(
                f"Constant Contact denied access with {self.conn_label} (HTTP 403). The authorization "
                f"needs the scopes '{SCOPES}': run {AUTH_COMMAND} again."
            )
        if status == 429 and "quota_exceeded" in error_keys(json_or_none(response)):
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
        (canonical,) = parse_list_ids([list_id])
        response = self.call("GET", f"contact_lists/{canonical}", allow_status=(404,))
        if response.status_code == 404:
            return None
        return dict(response.json())

    def count_list_members(self, list_id: str) -> int:
        """How many active contacts are members of the list ``list_id``, in one request
        (``GET /contact_lists/{id}?include_membership_count=active``)."""
        (canonical,) = parse_list_ids([list_id])
        answer = self.call(
            "GET", f"contact_lists/{canonical}", params={"include_membership_count": "active"}
        ).json()
        return int(answer.get("membership_count") or 0)

    def count_contacts(self, status: str) -> int:
        """How many contacts of the account have ``status`` (for example ``unsubscribed``), in one
        request (``contacts_count`` of ``GET /contacts?status=&include_count=true&limit=1``)."""
        params = {"status": status, "include_count": "true", "limit": 1}
        return int(self.call("GET", "contacts", params=params).json().get("contacts_count") or 0)

    def contacts_opted_out_since(self, since: datetime) -> Iterator[str]:
        """The email addresses of the contacts who unsubscribed after ``since`` and still are, 500 a
        request (``GET /contacts?status=unsubscribed&optout_after=``)."""
        when = since.astimezone(timezone.utc).isoformat(timespec="seconds").replace("+00:00", "Z")
        params = {"status": "unsubscribed", "optout_after": when, "limit": self.MAX_CONTACTS_PAGE}
        for contact in self._paginate("contacts", "contacts", params):
            address = (contact.get("email_address") or {}).get("address")
            if address:
                yield str(address)

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

    def require_lists(self, list_ids: Sequence[str]) -> None:
        """Check that every list exists, before anything is sent.

        :raises ExportConfigurationError: naming the first missing list.
        """
        for list_id in list_ids:
            if self.get_list(list_id) is None:
                raise ExportConfigurationError(
                    f"Constant Contact has no list {list_id} in this account. Nothing was sent. Copy the "
                    "list's id from its URL in Constant Contact."
                )

    def require_custom_fields(self, attributes: Iterable[str]) -> None:
        """Check that every custom-field attribute (``cf:<name>``) names a field of the account.

        Imports cannot create fields; other attributes are ignored.

        :raises ExportConfigurationError: naming the missing fields and those that exist.
        """
        names = [key[len(CUSTOM_PREFIX) :] for key in attributes if key.startswith(CUSTOM_PREFIX)]
        if not names:
            return
        existing = {str(f.get("name")) for f in self.get_custom_fields()}
        missing = [name for name in names if name not in existing]
        if missing:
            raise ExportConfigurationError(
                f"Constant Contact has no custom field named {', '.join(repr(m) for m in missing)}. Nothing "
                "was sent. Create the field in Constant Contact first (imports cannot create fields), or "
                f"map an existing one; the account has: {', '.join(sorted(existing)) or 'none'}."
            )

    def import_contacts(self, contacts: Sequence[Mapping[str, Any]], list_ids: Sequence[str]) -> str:
        """Add contacts to lists in one JSON import; return the import's activity id.

        The import runs in the background: follow it with :meth:`import_status`.

        :param contacts: fewer than 40,000 dicts keyed by attribute names as in ``field_mapping``:
            ``email`` (required), ``first_name``, ``last_name``, ``phone``, ``job_title``, ... and custom
            fields as ``cf:<name>``. E-mails are trimmed and lowercased, blank values left out.
        :param list_ids: the lists (UUIDs, 1 to 50) every contact is added to.
        :raises ExportConfigurationError: for a bad contact, list id or field, before anything is sent.
        """
        cleaned = checked_contacts(contacts, SCHEMA, MAX_IMPORT_CONTACTS)
        body = JsonImportEncoder(parse_list_ids(list_ids)).body(cleaned)
        if len(body) >= MAX_IMPORT_BYTES:
            # Past 4 MB the API would silently drop contacts: refuse instead.
            raise ExportConfigurationError(
                f"These {len(cleaned):,} contacts make a {len(body):,}-byte import; Constant Contact takes "
                f"under {MAX_IMPORT_BYTES:,} (and drops the rest silently). Nothing was sent; send fewer "
                "at once."
            )
        return self.json_import(body)

    def json_import(self, body: bytes) -> str:
        """Start a JSON import from a ready body (``POST /activities/contacts_json_import``); return its id.

        The fast path for exports: :class:`JsonImportEncoder` builds the body.

        :param body: the serialised ``{"import_data": [...], "list_ids": [...]}``: fewer than 40,000
            contacts and under 4 MB (the API silently drops whatever lies past 4 MB).
        """
        response = self.call("POST", self.import_endpoint, body=body)
        activity_id = (json_or_none(response) or {}).get("activity_id")
        if not activity_id:
            raise DestinationApiError(
                "Constant Contact accepted an import but returned no activity id "
                f"({self._error_text(response)})."
            )
        return str(activity_id)

    def import_status(self, activity_id: str) -> JobResult:
        """Where an import activity stands (``GET /activities/{id}``).

        The state is ``initialized`` or ``processing`` while it runs, then ``completed``, or ``failed``,
        ``cancelled`` or ``timed_out``. ``rejected`` is ``error_count + cannot_add_to_list_count``
        (bad data, unsubscribed); ``total`` is how many contacts the API received; ``messages`` are
        the ``activity_errors`` (free text, never to be logged).

        :param activity_id: what :meth:`import_contacts` or :meth:`json_import` returned.
        """
        activity = self.call("GET", f"activities/{activity_id}").json()
        state = str(activity.get("state") or "initialized")
        if state != "completed":
            return JobResult(state=state, done=state in FAILED_STATES, ok=False)
        status = activity.get("status") or {}
        total = status.get("items_total_count")
        rejected = int(status.get("error_count") or 0) + int(status.get("cannot_add_to_list_count") or 0)
        accepted = max(0, int(total) - rejected) if total is not None else 0
        # Strings in the spec's activity status, {"message": ...} objects in its generic activity.
        messages = tuple(
            str(m.get("message") if isinstance(m, dict) else m)
            for m in activity.get("activity_errors") or []
            if isinstance(m, (str, dict))
        )
        return JobResult(
            state=state,
            done=True,
            ok=True,
            accepted=accepted,
            rejected=rejected,
            total=None if total is None else int(total),
            messages=messages,
        )

    # -- list membership ------------------------------------------------------------------------

    def remove_list_memberships(self, contact_ids: Sequence[str], list_ids: Sequence[str]) -> str:
        """Start removing contacts from lists (``POST /activities/remove_list_memberships``); return the
        activity id. Removing a membership does not unsubscribe anyone: an import adds them back.

        :param contact_ids: at most 500 contact ids (UUIDs, e.g. from :meth:`export_contacts`).
        :param list_ids: at most 50 lists.
        """
        if not 0 < len(contact_ids) <= MAX_REMOVE_CONTACTS:
            raise ValueError(f"remove 1 to {MAX_REMOVE_CONTACTS} contacts at a time, not {len(contact_ids)}")
        body = {"source": {"contact_ids": list(contact_ids)}, "list_ids": parse_list_ids(list_ids)}
        response = self.call("POST", "activities/remove_list_memberships", json_body=body)
        activity_id = (json_or_none(response) or {}).get("activity_id")
        if not activity_id:
            raise DestinationApiError(
                "Constant Contact accepted a list removal but returned no activity id "
                f"({self._error_text(response)})."
            )
        return str(activity_id)

    @property
    def first_poll_s(self) -> float:
        """Seconds from starting an activity to its first status poll: half a second at the documented
        4 requests a second (or less), two of the key's request slots on a key with raised limits."""
        return min(_FIRST_POLL_S, _FIRST_POLL_S * self.DEFAULT_REQUESTS_PER_SECOND / self.requests_per_second)

    def export_contacts(
        self,
        fields: Sequence[str],
        *,
        list_ids: Sequence[str] = (),
        status: str | None = None,
        poll_interval: float | None = None,
        timeout: float = 3600.0,
    ) -> Iterator[dict[str, str]]:
        """Contacts as rows of a bulk contact export (``POST /activities/contact_exports``, then its
        CSV file): the cheap way to read many contacts (one activity, a few polls, one download).

        :param fields: the API's field names, e.g. ``["contact_id", "email_address"]``; each row is
            keyed by them, whatever spelling the file's header uses.
        :param list_ids: members of these lists (at most 50); every contact when empty.
        :param status: only contacts with this email status, e.g. ``"unsubscribed"``.
        :param poll_interval: seconds before the first status poll (default :attr:`first_poll_s`,
            which follows the key's rate); each pause is 1.5 times the one before, up to 5 s, and
            every poll waits for its slot of the key's rate.
        :param timeout: seconds to wait for the export before failing.
        """
        first_poll = self.first_poll_s if poll_interval is None else poll_interval
        activity_id, activity = self._run_contact_export(fields, list_ids, status, first_poll, timeout)
        href = str(((activity.get("_links") or {}).get("results") or {}).get("href") or "")
        file_id = href.rstrip("/").rsplit("/", 1)[-1]
        if not file_id:
            raise DestinationApiError(
                f"Constant Contact's contact export {activity_id} names no results file."
            )
        download = self._download(f"contact_exports/{file_id}")
        # newline="": line breaks inside quoted values stay part of the value, as csv expects.
        with io.TextIOWrapper(download, encoding="utf-8-sig", newline="") as text:
            reader = csv.reader(text)
            names = _export_columns(next(reader, []), fields)
            for row in reader:
                if row:
                    yield dict(zip(names, row, strict=False))

    def _run_contact_export(
        self,
        fields: Sequence[str],
        list_ids: Sequence[str],
        status: str | None,
        poll_interval: float,
        timeout: float,
    ) -> tuple[str, dict[str, Any]]:
        """Start a contact export and wait for it; return its activity id and its completed activity."""
        body: dict[str, Any] = {"fields": list(fields)}
        if list_ids:
            body["list_ids"] = parse_list_ids(list_ids)
        if status:
            body["status"] = status
        activity = self.call("POST", "activities/contact_exports", json_body=body).json()
        activity_id = str(activity.get("activity_id") or "")
        deadline = time.monotonic() + timeout
        progress = IntervalGate(self.progress_interval_s)

        def finished(answer: dict[str, Any]) -> dict[str, Any] | None:
            if str(answer.get("state")) == "completed":
                return answer
            if answer.get("state") in FAILED_STATES or time.monotonic() > deadline:
                raise DestinationApiError(
                    f"Constant Contact's contact export {activity_id} ended '{answer.get('state')}'. "
                    "Nothing was removed; retry the task."
                )
            if progress.due():
                self.log.info(
                    "Constant Contact is preparing a contact export: %s%% done (its rows are read once "
                    "it is ready).",
                    answer.get("percent_done", 0),
                )
            return None

        activity = finished(activity) or poll_until_done(
            lambda: finished(self.call("GET", f"activities/{activity_id}").json()),
            poll_interval,
            _LONGEST_EXPORT_POLL_S,
        )
        return activity_id, activity

    def _download(self, endpoint: str) -> IO[bytes]:
        """The file at ``endpoint``, read in pieces into an anonymous temporary file (deleted when
        closed), from its start. A contact export of a million members is some 70 MB: never held in
        memory, and the connection is free again before the rows are read."""
        file = tempfile.TemporaryFile(prefix="ciexport-download-")  # noqa: SIM115 (the caller closes it)
        try:
            with self.call("GET", endpoint, stream=True) as response:
                for block in response.iter_content(DOWNLOAD_BLOCK_BYTES):
                    file.write(block)
            file.seek(0)
        except requests.RequestException as exc:
            file.close()
            raise DestinationApiError(
                f"The download of Constant Contact's contact export broke off ({type(exc).__name__}). "
                "Nothing was removed; retry the task."
            ) from None
        except BaseException:
            file.close()
            raise
        return file

    def test_connection(self) -> tuple[bool, str]:
        """Refresh the access token and list one contact list; say what is wrong if that fails.

        A rotating refresh token is rotated by the test like by any task; its successor is stored where
        the real connection's tasks read it (see :func:`rotated_token_variable`), so testing a copy of
        the connection (as the UI does) never leaves the connection itself unusable.
        """
        attempts, self.max_attempts = self.max_attempts, 2
        self.testing = True
        try:
            self.call("GET", "contact_lists", params={"limit": 1})
        except (ExportConfigurationError, DestinationAuthError, DestinationQuotaError) as exc:
            return False, str(exc)
        except DestinationApiError as exc:
            if exc.status is None:  # no answer: the message names the host and what to check
                return False, str(exc)
            return (
                False,
                f"{exc} Check the connection's api_base_url and oauth_url (leave both empty for Constant "
                "Contact).",
            )
        finally:
            self.max_attempts = attempts
            self.testing = False
        return True, "Connected to Constant Contact."
