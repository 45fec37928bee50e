"""The ActiveCampaign API v3: its hook (a complete client), payload shapes, limits and status vocabulary.

The export's adapter to this API is :mod:`airflow_provider_ciexport.destinations.activecampaign`.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator, Mapping, Sequence
from datetime import date
from functools import cached_property
from typing import Any
from urllib.parse import SplitResult, urlsplit

import requests

from airflow_provider_ciexport.core.contacts import ContactSchema
from airflow_provider_ciexport.core.jobs import JobResult
from airflow_provider_ciexport.core.ratelimit import PER_SECOND_HEADROOM, RateLimiter, shared_limiter
from airflow_provider_ciexport.core.urls import is_loopback, unsafe_character
from airflow_provider_ciexport.exceptions import (
    DestinationApiError,
    DestinationAuthError,
    ExportConfigurationError,
)
from airflow_provider_ciexport.hooks.base import (
    HeaderAuth,
    ImportEncoder,
    SegmentApiHook,
    checked_contacts,
    encode_json,
    json_or_none,
)
from airflow_provider_ciexport.hooks.retry import Throttled, parse_retry_after

#: One bulk import takes at most 250 contacts, in a body under 400,000 bytes.
MAX_IMPORT_CONTACTS = 250
MAX_IMPORT_BYTES = 400_000
#: Fewer contacts than this should go through ``contact/sync``, one by one.
SMALL_IMPORT_MAX = 10
CUSTOM_PREFIX = "field:"
#: The contact attributes a bulk import takes (no length limits are documented but the e-mail's).
SCHEMA = ContactSchema(
    destination="ActiveCampaign",
    standard={"email": 254, "first_name": None, "last_name": None, "phone": None, "customer_acct_name": None},
    custom_prefix=CUSTOM_PREFIX,
)
#: Final import states that mean the import did not happen (ActiveCampaign does not retry them).
FAILED_STATES = frozenset({"failed", "interrupted"})
# contact/sync speaks camelCase where bulk_import speaks snake_case.
_SYNC_NAMES = {"first_name": "firstName", "last_name": "lastName"}

_HOSTNAME = re.compile(
    r"^[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?(\.[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?)*$"
)
_API_PATHS = ("", "/", "/api/3", "/api/3/")
# Ends every message on a bad API URL.
_HOW = (
    "Set it to the API URL shown in ActiveCampaign under Settings > Developer, "
    "e.g. https://youraccount.api-us1.com."
)


def parse_list_ids(values: Iterable[Any]) -> list[int]:
    """Turn list ids (ints or digit strings) into positive ints without repeats, or fail naming the bad one."""
    ids: list[int] = []
    for value in values:
        text = str(value).strip()
        if isinstance(value, bool) or not text.isdigit() or int(text) <= 0:
            raise ExportConfigurationError(
                f"ActiveCampaign list id {value!r} is not a positive whole number. Nothing was sent. Use "
                "the number in the list's URL in ActiveCampaign (Contacts > Lists), e.g. list_id=3."
            )
        if int(text) not in ids:
            ids.append(int(text))
    return ids


class BulkImportEncoder(ImportEncoder):
    """Builds ``POST /import/bulk_import`` bodies: every contact subscribed to the lists, with the tags.

    :param list_ids: the lists every contact is subscribed to.
    :param tags: tags added to every contact.
    :param field_ids: custom-field attribute (``field:...``) -> field id, from
        :meth:`ActiveCampaignHook.field_ids`.
    """

    prefix = b'{"contacts":['
    suffix = b"]}"

    def __init__(
        self, list_ids: Sequence[int], tags: Sequence[str] = (), field_ids: Mapping[str, int] | None = None
    ) -> None:
        self.field_ids = dict(field_ids or {})
        tail: dict[str, Any] = {"subscribe": [{"listid": int(i)} for i in list_ids]}
        tags = [str(t).strip() for t in tags if str(t).strip()]
        if tags:
            tail["tags"] = tags
        # Each contact object ends with the same members: written once, appended as bytes.
        self._tail = b"," + encode_json(tail)[1:]

    def encode(self, contact: Mapping[str, str]) -> bytes:
        body: dict[str, Any] = {}
        fields = []
        for key, value in contact.items():
            if key.startswith(CUSTOM_PREFIX):
                fields.append({"id": self.field_ids[key], "value": value})
            else:
                body[key] = value
        if fields:
            body["fields"] = fields
        return encode_json(body)[:-1] + self._tail


def _refusing_window(payload: Mapping[str, Any]) -> float | None:
    """The window (seconds) a 400 "Rate limit exceeded" names in its reasons ("Up to 100 imports may
    be requested per minute", "... per second"), or ``None`` when it names none."""
    reasons = " ".join(str(reason) for reason in payload.get("failureReasons") or ()).lower()
    if "per minute" in reasons:
        return 60.0
    if "per second" in reasons:
        return 1.0
    return None


def normalize_api_url(
    host: str | None, conn_id: str | None = "activecampaign_default", port: int | None = None
) -> str:
    """Turn what a user pastes as the ActiveCampaign API URL into the API's base URL.

    ``https://youracct.api-us1.com/api/3/``, ``youracct.api-us1.com/`` and ``youracct.api-us1.com`` all
    give ``https://youracct.api-us1.com/api/3``. Plain ``http://`` is honoured only for a loopback host
    (the local sandbox).

    :param host: the connection's host field.
    :param conn_id: the connection's id, for error messages; ``None`` says "this connection" (a
        connection test, which Airflow runs under a random temporary id).
    :param port: the connection's port field, if any.
    :raises ExportConfigurationError: if the value is not an ActiveCampaign API URL.
    """
    where = "this connection" if conn_id is None else f"connection '{conn_id}'"
    parts = _split_api_url((host or "").strip(), where)
    hostname = _api_hostname(parts, where)
    try:
        url_port = parts.port
    except ValueError:
        raise ExportConfigurationError(f"The API URL of {where} has an invalid port. {_HOW}") from None
    netloc = hostname if ":" not in hostname else f"[{hostname}]"
    if url_port or port:
        netloc = f"{netloc}:{url_port or port}"
    return f"{parts.scheme}://{netloc}/api/3"


def _split_api_url(value: str, where: str) -> SplitResult:
    """``value`` (stripped) split as a URL, ``https://`` assumed; refused when empty, unsafe, of another
    scheme or with a user name or password."""
    if not value:
        raise ExportConfigurationError(f"{where[:1].upper()}{where[1:]} has no API URL (host). {_HOW}")
    bad = unsafe_character(value)
    if bad is not None:
        raise ExportConfigurationError(
            f"The API URL (host) of {where} contains {bad}. Nothing was sent. {_HOW}"
        )
    explicit_scheme = "://" in value
    parts = urlsplit(value if explicit_scheme else f"https://{value}")
    if parts.scheme not in ("http", "https"):
        raise ExportConfigurationError(f"The API URL of {where} has the scheme '{parts.scheme}'. {_HOW}")
    if "@" in parts.netloc:
        raise ExportConfigurationError(
            f"The API URL (host) of {where} contains a user name or password (before '@'); the API key "
            f"goes in the password field, never in the address. Nothing was sent. {_HOW}"
        )
    return parts


def _api_hostname(parts: SplitResult, where: str) -> str:
    """The host name of a split API URL; refused when invalid, with a path other than the API's, or
    plain http:// to a host other than this machine."""
    hostname = parts.hostname or ""
    if not hostname or not (_HOSTNAME.match(hostname) or is_loopback(hostname)):
        raise ExportConfigurationError(f"The API URL of {where} has no valid host name. {_HOW}")
    if parts.path not in _API_PATHS or parts.query or parts.fragment or parts.username:
        raise ExportConfigurationError(
            f"The API URL of {where} points somewhere other than the API (path '{parts.path}'). {_HOW}"
        )
    if parts.scheme == "http" and not is_loopback(hostname):
        raise ExportConfigurationError(
            f"The API URL of {where} uses plain http://. ActiveCampaign is reached over "
            f"https:// only (http is allowed just for a local sandbox such as http://127.0.0.1:8025). {_HOW}"
        )
    return hostname


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

    address_setting = "API URL (host)"
    import_endpoint = "import/bulk_import"

    DEFAULT_REQUESTS_PER_SECOND = 5.0
    DEFAULT_IMPORTS_PER_MINUTE = 100.0
    MAX_PAGE = 100

    def __init__(self, activecampaign_conn_id: str = default_conn_name, **kwargs: Any) -> None:
        super().__init__(activecampaign_conn_id, **kwargs)
        self.activecampaign_conn_id = activecampaign_conn_id

    def _resolve_base_url(self) -> str:
        conn_id = None if self.testing else self.activecampaign_conn_id
        return normalize_api_url(self.connection.host, conn_id, self.connection.port)

    @cached_property
    def _api_key(self) -> str:
        key = (self.connection.password or "").strip()
        if not key:
            raise ExportConfigurationError(
                f"{self.capitalized_conn_label} has no API key. Put the key from "
                "ActiveCampaign's Settings > Developer in the connection's password (API key) field."
            )
        return key

    @cached_property
    def api_auth(self) -> HeaderAuth:
        """The API key, in the ``Api-Token`` header (and nowhere else)."""
        return HeaderAuth("Api-Token", lambda: self._api_key)

    @property
    def imports_per_minute(self) -> float:
        """The bulk import rate limit in use (extra ``imports_per_minute``, default 100)."""
        return self._import_limiter.rate

    @property
    def requests_per_second(self) -> float:
        """The account's request rate limit in use (extra ``requests_per_second``, default 5)."""
        return self.positive_extra("requests_per_second", self.DEFAULT_REQUESTS_PER_SECOND)

    @property
    def paced_requests_per_second(self) -> float:
        """Requests a second the account's pace allows this export now (headroom and learning
        included)."""
        return self._general_limiter.paced_rate

    @property
    def requests_limiter(self) -> RateLimiter:
        """The pace of the account's requests a second, which every call passes (imports too while
        the export is alone on the account)."""
        return self._general_limiter

    def import_requests_per_second(self) -> float:
        """Requests a second the imports take from :attr:`requests_limiter` now (none while the
        account is shared: imports then pass only their own pace)."""
        if self._general_limiter.lanes > 1:
            return 0.0
        return self._import_limiter.paced_rate

    @cached_property
    def _general_limiter(self) -> RateLimiter:
        # While several exports share the account, imports run on their own slots only and every other
        # call (status polls, reads) gets about one request per import, what the polls need: the
        # one-second windows then keep slack for the timing differences between processes.
        return shared_limiter(
            ("activecampaign", self.api_base_url, "requests"),
            self.requests_per_second,
            1.0,
            PER_SECOND_HEADROOM,
            shared_rate=1.25 * self.imports_per_minute / 60,
            window_calls=self.DEFAULT_REQUESTS_PER_SECOND,
        )

    @cached_property
    def _import_limiter(self) -> RateLimiter:
        rate = self.positive_extra("imports_per_minute", self.DEFAULT_IMPORTS_PER_MINUTE)
        return shared_limiter(("activecampaign", self.api_base_url, "imports"), rate, 60.0)

    def _limiters(self, kind: str) -> Sequence[RateLimiter]:
        if kind != "import":
            return (self._general_limiter,)
        if self._general_limiter.lanes > 1:
            return (self._import_limiter,)
        # Alone on the account, an import also takes one of the requests a second.
        return (self._import_limiter, self._general_limiter)

    def _account(self) -> str:
        # The limits are the account's, shared by all its keys; the API URL names the account.
        return self.api_base_url

    def _check_answer(self, response: requests.Response) -> None:
        status = response.status_code
        if status in (401, 403):
            raise DestinationAuthError(
                f"ActiveCampaign refused the API key of {self.conn_label} "
                f"(HTTP {status}). Copy the key again from Settings > Developer of the account whose "
                "API URL the connection names."
            )
        if status == 400:
            payload = json_or_none(response)
            if isinstance(payload, dict) and "rate limit" in str(payload.get("message", "")).lower():
                retry_after = parse_retry_after(response.headers.get("Retry-After"))
                raise Throttled("HTTP 400 Rate limit exceeded", retry_after, _refusing_window(payload))
        if status == 503:
            # One of ActiveCampaign's three ways of saying "too fast" (429, the 400 above, 503): slowed
            # down for, not counted as a fault; a real outage still ends at `throttle_timeout`.
            raise Throttled("HTTP 503", parse_retry_after(response.headers.get("Retry-After")))

    # -- API calls ----------------------------------------------------------------------------

    def get_list(self, list_id: int | str) -> dict[str, Any] | None:
        """Return the list with ``list_id``, or ``None`` if the account has no such list.

        :param list_id: the list's number (as in its URL under Contacts > Lists).
        """
        (number,) = parse_list_ids([list_id])
        response = self.call("GET", f"lists/{number}", allow_status=(404,))
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

    def require_lists(self, list_ids: Sequence[int]) -> None:
        """Check that every list exists, before anything is sent.

        :raises ExportConfigurationError: naming the first missing list.
        """
        for list_id in list_ids:
            if self.get_list(list_id) is None:
                raise ExportConfigurationError(
                    f"ActiveCampaign has no list with id {list_id} in this account. Nothing was sent. Check "
                    "list_id: it is the number in the list's URL under Contacts > Lists."
                )

    def field_ids(self, attributes: Iterable[str]) -> dict[str, int]:
        """Map custom-field attributes (``field:<id, personalization tag or title>``) to field ids.

        Other attributes are ignored. The account's fields are read once per hook.

        :param attributes: attribute names, e.g. the keys of ``field_mapping``.
        :raises ExportConfigurationError: naming a field the account does not have.
        """
        refs = {key: key[len(CUSTOM_PREFIX) :].strip() for key in attributes if key.startswith(CUSTOM_PREFIX)}
        if not refs:
            return {}
        fields = self._fields
        by_id = {str(f.get("id")): int(f["id"]) for f in fields}
        by_name: dict[str, int] = {}
        for f in fields:
            for name in (f.get("perstag"), f.get("title")):
                if name:
                    by_name.setdefault(str(name).strip("%").upper(), int(f["id"]))
        ids: dict[str, int] = {}
        for key, ref in refs.items():
            field_id = by_id.get(ref) if ref.isdigit() else by_name.get(ref.strip("%").upper())
            if field_id is None:
                known = ", ".join(sorted(str(f.get("perstag")) for f in fields if f.get("perstag"))) or "none"
                raise ExportConfigurationError(
                    f"ActiveCampaign has no custom field '{ref}' (from field_mapping key '{key}'). Nothing was "
                    f"sent. Use a field id or personalization tag; the account's tags are: {known}."
                )
            ids[key] = field_id
        return ids

    @cached_property
    def _fields(self) -> list[dict[str, Any]]:
        return self.get_fields()

    def import_contacts(
        self,
        contacts: Sequence[Mapping[str, Any]],
        list_ids: Sequence[int | str],
        *,
        tags: Sequence[str] = (),
    ) -> str:
        """Subscribe up to 250 contacts to lists in one bulk import; return the import's batch id.

        The import runs in the background: follow it with :meth:`import_status`.

        :param contacts: dicts keyed by attribute names as in ``field_mapping``: ``email`` (required),
            ``first_name``, ``last_name``, ``phone``, ``customer_acct_name``, ``field:<id or PERSTAG>``.
            E-mails are trimmed and lowercased, blank values left out.
        :param list_ids: the lists every contact is subscribed to.
        :param tags: tags added to every contact (created if unknown).
        :raises ExportConfigurationError: for a bad contact, list id or field, before anything is sent.
        """
        cleaned = checked_contacts(contacts, SCHEMA, MAX_IMPORT_CONTACTS)
        attributes = {key for contact in cleaned for key in contact}
        encoder = BulkImportEncoder(parse_list_ids(list_ids), tags, self.field_ids(attributes))
        body = encoder.body(cleaned)
        if len(body) >= MAX_IMPORT_BYTES:
            raise ExportConfigurationError(
                f"These {len(cleaned)} contacts make a {len(body):,}-byte import; ActiveCampaign takes under "
                f"{MAX_IMPORT_BYTES:,}. Nothing was sent; send fewer at once."
            )
        return self.bulk_import(body)

    def bulk_import(self, body: bytes) -> str:
        """Queue a bulk import from a ready body (``POST /import/bulk_import``); return its batch id.

        The fast path for exports: :class:`BulkImportEncoder` builds the body.

        :param body: the serialised request, ``{"contacts": [...]}``: at most 250 contacts and under
            400,000 bytes, every email valid (one bad contact rejects the whole request).
        """
        response = self.call("POST", self.import_endpoint, body=body)
        payload = json_or_none(response) or {}
        batch_id = payload.get("batchId")
        if not batch_id:
            raise DestinationApiError(
                f"ActiveCampaign accepted a bulk import but returned no batch id ({self._error_text(response)})."
            )
        return str(batch_id)

    def import_status(self, batch_id: str) -> JobResult:
        """Where a bulk import stands (``GET /import/info``).

        The state is ``waiting``, ``claimed`` or ``active`` while it runs (``false`` for about a second
        after it was queued), then ``completed``, or ``failed``/``interrupted`` (ActiveCampaign does not
        retry those). ``rejected`` counts the e-mails in its ``failure`` list (excluded, unsubscribed).

        :param batch_id: what :meth:`import_contacts` or :meth:`bulk_import` returned.
        """
        info = self.call("GET", "import/info", params={"batchId": batch_id}).json()
        state = info.get("status")
        if state == "completed":
            refused = tuple(str(e) for e in info.get("failure") or [])
            return JobResult(
                state="completed",
                done=True,
                ok=True,
                accepted=len(info.get("success") or []),
                rejected=len(refused),
                refused=refused,
            )
        return JobResult(state=str(state or "queued"), done=state in FAILED_STATES, ok=False)

    def sync_contact(self, contact: Mapping[str, Any]) -> int:
        """Create or update one contact (``POST /contact/sync``) and return its id.

        :param contact: a dict keyed by attribute names as in ``field_mapping`` (``email``,
            ``first_name``, ``field:LOYALTY_TIER``, ...).
        """
        (cleaned,) = checked_contacts([contact], SCHEMA, 1)
        field_ids = self.field_ids(cleaned)
        body: dict[str, Any] = {}
        values = []
        for key, value in cleaned.items():
            if key in field_ids:
                values.append({"field": str(field_ids[key]), "value": value})
            else:
                # contact/sync speaks camelCase where bulk_import speaks snake_case; customer_acct_name
                # has no contact/sync equivalent and goes as is.
                body[_SYNC_NAMES.get(key, key)] = value
        if values:
            body["fieldValues"] = values
        response = self.call("POST", "contact/sync", json_body={"contact": body})
        return int(response.json()["contact"]["id"])

    def add_to_list(self, contact_id: int, list_id: int | str) -> None:
        """Subscribe a contact to a list (``POST /contactLists``, status 1).

        This re-subscribes even someone who unsubscribed from the list by their own action: check
        :meth:`list_statuses` first.
        """
        self.set_list_status(contact_id, list_id, 1)

    # -- list membership ------------------------------------------------------------------------

    def list_contacts(
        self, list_id: int | str, status: int, updated_after: date | None = None
    ) -> Iterator[dict[str, Any]]:
        """Every contact with a membership ``status`` on a list, 100 a request
        (``GET /contacts?listid=&status=``).

        :param list_id: the list.
        :param status: 1 active (subscribed) or 2 unsubscribed.
        :param updated_after: only the contacts updated after this day (``filters[updated_after]``).
        """
        (number,) = parse_list_ids([list_id])
        params: dict[str, Any] = {"listid": number, "status": int(status)}
        if updated_after is not None:
            params["filters[updated_after]"] = updated_after.isoformat()
        yield from self._paginate("contacts", "contacts", params)

    def count_list_contacts(self, list_id: int | str, status: int) -> int:
        """How many contacts have a membership ``status`` on a list, in one request (the ``meta.total``
        of ``GET /contacts?listid=&status=&limit=1``; lists themselves carry no member count).

        :param list_id: the list.
        :param status: 1 active (subscribed) or 2 unsubscribed.
        """
        (number,) = parse_list_ids([list_id])
        page = self.call("GET", "contacts", params={"listid": number, "status": int(status), "limit": 1})
        return int((page.json().get("meta") or {}).get("total") or 0)

    def find_contact(self, email: str) -> int | None:
        """The id of the contact with this email (``GET /contacts?email=``), or ``None``."""
        found = self.call("GET", "contacts", params={"email": email}).json().get("contacts") or []
        return int(found[0]["id"]) if found else None

    def list_memberships(self, contact_id: int) -> dict[int, dict[str, Any]]:
        """A contact's membership record on every list it has one on, by list id
        (``GET /contacts/{id}/contactLists``): ``status`` (1 active, 2 unsubscribed), ``udate`` (when
        it last changed), and what an unsubscribe left on it (``campaign``, ``message``,
        ``unsubreason``, ``unsubscribeAutomation``)."""
        response = self.call("GET", f"contacts/{int(contact_id)}/contactLists")
        items = response.json().get("contactLists") or []
        return {int(item["list"]): item for item in items}

    def list_statuses(self, contact_id: int) -> dict[int, int]:
        """A contact's membership status on every list it has one on: list id -> 1 active or
        2 unsubscribed (``GET /contacts/{id}/contactLists``)."""
        return {list_id: int(item["status"]) for list_id, item in self.list_memberships(contact_id).items()}

    def set_list_status(self, contact_id: int, list_id: int | str, status: int) -> None:
        """Set a contact's status on a list (``POST /contactLists``): 1 subscribes, 2 unsubscribes.

        Status 1 re-subscribes even someone who unsubscribed by their own action: use it only for a
        contact whose status 2 the caller itself set.
        """
        (number,) = parse_list_ids([list_id])
        if status not in (1, 2):
            raise ValueError("status must be 1 (subscribe) or 2 (unsubscribe)")
        self.call(
            "POST",
            "contactLists",
            json_body={"contactList": {"list": number, "contact": int(contact_id), "status": status}},
        )

    def test_connection(self) -> tuple[bool, str]:
        """Make one authenticated call and say what is wrong if it fails."""
        attempts, self.max_attempts = self.max_attempts, 2
        self.testing = True
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
            if exc.status is None:  # no answer: the message names the host and what to check
                return False, str(exc)
            return False, f"{exc} Check that the API URL is the one shown under Settings > Developer."
        finally:
            self.max_attempts = attempts
            self.testing = False
        return True, "Connected to ActiveCampaign."
