"""What both destination hooks share: a clean requests session, rate limits, retries, URL checks."""

from __future__ import annotations

import email.utils
import json
import random
import threading
import time
from abc import ABC, abstractmethod
from collections.abc import Callable, Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass
from functools import cached_property
from typing import Any

import msgspec
import requests
import tenacity
from airflow.providers.http.hooks.http import HttpHook
from requests.adapters import HTTPAdapter

from airflow_provider_ciexport.exceptions import DestinationApiError, ExportConfigurationError
from airflow_provider_ciexport.export.contacts import ContactBuilder, ContactSchema
from airflow_provider_ciexport.export.ratelimit import RateLimiter
from airflow_provider_ciexport.urls import base_url_problem

#: Connect and read timeouts of every request, in seconds. Imports of several MB take a while to
#: upload and to be acknowledged, so the read timeout is generous; a hung server still cannot stall a
#: task forever.
DEFAULT_TIMEOUT: tuple[float, float] = (10.0, 120.0)
DEFAULT_MAX_ATTEMPTS = 8
MAX_BACKOFF_S = 60.0

#: Compact UTF-8 JSON, byte for byte what ``json.dumps(obj, separators=(",", ":"), ensure_ascii=False)``
#: writes, about ten times faster: encoding is a large share of an export's CPU.
encode_json: Callable[[Any], bytes] = msgspec.json.Encoder().encode


@dataclass(frozen=True)
class ImportStatus:
    """Where an import job (an ActiveCampaign batch, a Constant Contact activity) stands.

    :param state: the API's own name of the state (``"completed"``, ``"failed"``, ...).
    :param done: the job reached a final state; nothing will change any more.
    :param ok: the job completed and its counts are final (``False`` while running or when it failed).
    :param accepted: contacts the destination took (0 until ``ok``).
    :param rejected: contacts it refused: invalid, excluded or unsubscribed (0 until ``ok``).
    :param total: contacts the API says it received, when it says (Constant Contact), else ``None``.
    """

    state: str
    done: bool
    ok: bool
    accepted: int = 0
    rejected: int = 0
    total: int | None = None


class ImportEncoder(ABC):
    """Turns contacts into the exact bytes of one vendor's import request body.

    A body is ``prefix + b",".join(encode(contact) for each contact) + suffix``: the export engine
    builds bodies from the same pieces, one contact at a time, without ever re-serialising.
    """

    #: Bytes before the first contact and after the last one.
    prefix: bytes
    suffix: bytes

    @abstractmethod
    def encode(self, contact: Mapping[str, str]) -> bytes:
        """Serialise one contact (attribute -> value) as a compact JSON object."""

    def body(self, contacts: Iterable[Mapping[str, str]]) -> bytes:
        """The whole request body for ``contacts``."""
        return self.prefix + b",".join(self.encode(c) for c in contacts) + self.suffix


def check_base_url(url: str, what: str, conn_id: str) -> str:
    """Validate an absolute API URL: HTTPS, or plain HTTP only to a loopback host (the sandbox).

    :param url: the URL to check.
    :param what: which setting it came from, for the error message.
    :param conn_id: the connection it came from, for the error message.
    :return: the URL without a trailing slash.
    :raises ExportConfigurationError: naming the problem and the fix.
    """
    problem = base_url_problem(url, what, conn_id)
    if problem is not None:
        raise ExportConfigurationError(problem)
    return url.strip().rstrip("/")


class RetryableAnswer(Exception):
    """An answer that asks the client to try again (throttling, 5xx, no answer).

    :param reason: what happened, without personal data.
    :param retry_after: how long the server asked us to wait, in seconds, if it said.
    """

    def __init__(self, reason: str, retry_after: float | None = None) -> None:
        super().__init__(reason)
        self.reason = reason
        self.retry_after = retry_after


def parse_retry_after(value: str | None) -> float | None:
    """Read a ``Retry-After`` header given in seconds or as an HTTP date."""
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - time.time())


def checked_contacts(
    contacts: Sequence[Mapping[str, Any]], schema: ContactSchema, max_contacts: int
) -> list[dict[str, str]]:
    """Clean contacts handed to a hook's ``import_contacts`` by the export's own rules, or fail clearly.

    E-mails are trimmed and lowercased, values turned into text and blanks left out, as in an export;
    but where an export counts and skips a bad row, this raises before anything is sent.

    :param contacts: dicts keyed by the destination's attribute names (as in ``field_mapping``).
    :param schema: the destination's attributes and limits.
    :param max_contacts: the most contacts one import request takes.
    :raises ExportConfigurationError: naming the contact's position and the problem, never its data.
    """
    dest = schema.destination
    if not contacts:
        raise ExportConfigurationError(
            f"No contacts given: pass at least one dict with an 'email' to {dest}."
        )
    if len(contacts) > max_contacts:
        raise ExportConfigurationError(
            f"{len(contacts):,} contacts were given; one {dest} import takes at most {max_contacts:,}. "
            "Split them, or use the segment export operator, which batches any number."
        )
    attributes = list(dict.fromkeys(attr for contact in contacts for attr in contact))
    builder = ContactBuilder({attr: attr for attr in attributes}, schema, attributes)
    cleaned: list[dict[str, str]] = []
    for position, contact in enumerate(contacts, start=1):
        built = builder.build([contact.get(attr) for attr in attributes])
        if built is None:
            # The first bad contact stops the loop, so at most one reason has been counted.
            reasons = list(builder.invalid_reasons)
            problem = (
                f"has no valid e-mail ({reasons[0]})" if reasons else "repeats an earlier contact's e-mail"
            )
            raise ExportConfigurationError(
                f"Contact {position} of {len(contacts)} {problem}. Nothing was sent to {dest}; fix or drop it."
            )
        if builder.omitted_too_long:
            (attr,) = builder.omitted_too_long
            raise ExportConfigurationError(
                f"Contact {position} of {len(contacts)} has a value for '{attr}' longer than {dest} "
                "accepts. Nothing was sent; shorten it or leave it out."
            )
        cleaned.append(built)
    return cleaned


def json_or_none(response: requests.Response) -> Any:
    """The JSON body of ``response``, or ``None`` when it has none."""
    try:
        return response.json()
    except ValueError:
        return None


class SegmentApiHook(HttpHook):
    """Base of the destination hooks, on top of the http provider's ``HttpHook``.

    Unlike a plain ``HttpHook`` it never turns connection extras into request headers and never sends
    the connection's login and password as Basic auth: subclasses say exactly which headers carry the
    credentials. Each thread gets its own keep-alive session; every request has connect and read
    timeouts, passes the account's shared rate limiters, and is retried with backoff (honouring
    ``Retry-After``) when the answer is a throttle, a 5xx or no answer at all.

    :param conn_id: the Airflow connection to use.
    :param max_attempts: how many times one call is tried before it fails.
    :param timeout: ``(connect, read)`` timeouts of each request, in seconds; by default the
        connection extra ``timeout`` (the read timeout, as for the http provider) or 10 s and 120 s.
    """

    #: Name of the destination in messages.
    destination = "the API"

    def __init__(
        self,
        conn_id: str,
        *,
        max_attempts: int = DEFAULT_MAX_ATTEMPTS,
        timeout: tuple[float, float] | None = None,
    ) -> None:
        super().__init__(method="GET", http_conn_id=conn_id)
        self.conn_id = conn_id
        self.max_attempts = max_attempts
        self._timeout = timeout
        self._local = threading.local()
        self._counter_lock = threading.Lock()
        self._requests = 0
        self._base_lock = threading.Lock()

    # -- what subclasses provide -------------------------------------------------------------

    @abstractmethod
    def _resolve_base_url(self) -> str:
        """Read the connection and return the API's base URL (validated, no trailing slash)."""

    @abstractmethod
    def _auth_headers(self) -> dict[str, str]:
        """Headers that authenticate a request."""

    @property
    def requests_per_second(self) -> float:
        """The account's request rate limit in use (connection extra ``requests_per_second``)."""
        return self._limiters("general")[0].rate

    @abstractmethod
    def _limiters(self, kind: str) -> Sequence[RateLimiter]:
        """Rate limiters a call of ``kind`` (e.g. ``"general"``, ``"import"``) must pass."""

    def _check_answer(self, response: requests.Response) -> None:
        """Raise ``RetryableAnswer`` or a final error for answers that are not plain results.

        The base handles 429 and 5xx; subclasses add their destination's own quirks.
        """

    @cached_property
    def connection(self) -> Any:
        """The Airflow connection (read once)."""
        return self.get_connection(self.conn_id)

    def extra_value(self, name: str) -> Any:
        """A connection extra, stripped if it is text."""
        value = self.connection.extra_dejson.get(name)
        return value.strip() if isinstance(value, str) else value

    def positive_extra(self, name: str, default: float) -> float:
        """A connection extra that must be a positive number, or ``default`` when it is not set."""
        value = self.extra_value(name)
        if value in (None, ""):
            return default
        try:
            number = float(value)
        except (TypeError, ValueError):
            number = -1.0
        if number <= 0:
            raise ExportConfigurationError(
                f"The extra '{name}' of connection '{self.conn_id}' must be a positive number "
                f"(default {default:g})."
            )
        return number

    @property
    def timeout(self) -> tuple[float, float]:
        """``(connect, read)`` timeouts of each request, in seconds."""
        if self._timeout is None:
            read = self.positive_extra("timeout", DEFAULT_TIMEOUT[1])
            self._timeout = (min(DEFAULT_TIMEOUT[0], read), read)
        return self._timeout

    # -- HttpHook overrides ------------------------------------------------------------------

    def get_conn(
        self, headers: dict[Any, Any] | None = None, extra_options: dict[str, Any] | None = None
    ) -> requests.Session:
        """Return this thread's session: keep-alive, no auth, no connection extras as headers."""
        session: requests.Session | None = getattr(self._local, "session", None)
        if session is None:
            session = requests.Session()
            adapter = HTTPAdapter(pool_connections=4, pool_maxsize=16)
            session.mount("https://", adapter)
            session.mount("http://", adapter)
            session.headers.update({"Accept": "application/json"})
            self._local.session = session
        if headers:
            session.headers.update(headers)
        return session

    @property
    def api_base_url(self) -> str:
        """The validated base URL of the API (read from the connection once)."""
        with self._base_lock:
            if not self._base_url_initialized:
                self.base_url = self._resolve_base_url()
                self._base_url_initialized = True
        return self.base_url

    def url_from_endpoint(self, endpoint: str | None) -> str:
        """Join the API base URL and ``endpoint``."""
        return f"{self.api_base_url}/{(endpoint or '').lstrip('/')}"

    # -- calls --------------------------------------------------------------------------------

    @property
    def requests_made(self) -> int:
        """How many HTTP requests this hook has sent, retries included."""
        return self._requests

    def call(
        self,
        method: str,
        endpoint: str,
        *,
        json_body: Any = None,
        body: bytes | None = None,
        params: Mapping[str, Any] | None = None,
        kind: str = "general",
        allow_status: Collection[int] = (),
    ) -> requests.Response:
        """Send one API call, waiting for the rate limits and retrying what is worth retrying.

        :param method: HTTP method.
        :param endpoint: path below the API base URL.
        :param json_body: a JSON-serialisable body.
        :param body: an already serialised JSON body (sent as is).
        :param params: query parameters.
        :param kind: which rate limits apply, as the subclass defines them.
        :param allow_status: error statuses the caller handles itself (e.g. 404 for "no such list").
        :return: the response (2xx, or a status in ``allow_status``).
        """
        if json_body is not None:
            body = json.dumps(json_body, separators=(",", ":")).encode()
        retrying = tenacity.Retrying(
            stop=tenacity.stop_after_attempt(self.max_attempts),
            wait=self._wait,
            retry=tenacity.retry_if_exception_type(RetryableAnswer),
            before_sleep=self._log_retry,
            reraise=True,
        )
        try:
            for attempt in retrying:
                with attempt:
                    return self._send_once(method, endpoint, body, params, kind, allow_status)
        except RetryableAnswer as exc:
            raise DestinationApiError(
                f"{self.destination} kept failing for {method} {endpoint} after {self.max_attempts} "
                f"attempts (last: {exc.reason}). Check the service's status and retry the task.",
                status=None,
            ) from None
        raise AssertionError("unreachable")  # pragma: no cover

    def _send_once(
        self,
        method: str,
        endpoint: str,
        body: bytes | None,
        params: Mapping[str, Any] | None,
        kind: str,
        allow_status: Collection[int],
    ) -> requests.Response:
        for limiter in self._limiters(kind):
            limiter.acquire()
        headers = {**self._auth_headers()}
        if body is not None:
            headers["Content-Type"] = "application/json"
        session = self.get_conn()
        request = requests.Request(method, self.url_from_endpoint(endpoint), data=body, params=params)
        prepared = session.prepare_request(request)
        prepared.headers.update(headers)
        with self._counter_lock:
            self._requests += 1
        try:
            response = self.run_and_check(
                session, prepared, {"timeout": self.timeout, "check_response": False}
            )
        except (requests.ConnectionError, requests.Timeout) as exc:
            raise RetryableAnswer(f"no answer ({type(exc).__name__})") from None
        if response.status_code in allow_status:
            return response
        self._check_answer(response)
        status = response.status_code
        if status == 429 or status >= 500:
            retry_after = parse_retry_after(response.headers.get("Retry-After"))
            if retry_after:
                for limiter in self._limiters(kind):
                    limiter.pause(retry_after)
            raise RetryableAnswer(f"HTTP {status}", retry_after)
        if status >= 400:
            raise DestinationApiError(
                f"{self.destination} answered HTTP {status} to {method} {endpoint}: "
                f"{self._error_text(response)}",
                status=status,
            )
        return response

    @staticmethod
    def _error_text(response: requests.Response) -> str:
        """A short, data-free description of an error answer (the API's message, not its payload)."""
        payload = json_or_none(response)
        texts: list[str] = []
        if isinstance(payload, dict):
            if isinstance(payload.get("message"), str):
                texts.append(payload["message"])
            for err in payload.get("errors") or []:
                if isinstance(err, dict):
                    texts.append(str(err.get("title") or err.get("detail") or ""))
        elif isinstance(payload, list):
            for err in payload:
                if isinstance(err, dict) and "error_key" in err:
                    texts.append(str(err.get("error_key")))
        return "; ".join(t for t in texts if t)[:300] or "no details"

    def _wait(self, retry_state: tenacity.RetryCallState) -> float:
        exc = retry_state.outcome.exception() if retry_state.outcome else None
        backoff = min(MAX_BACKOFF_S, 0.5 * 2 ** (retry_state.attempt_number - 1))
        backoff *= 0.5 + random.random() / 2
        if isinstance(exc, RetryableAnswer) and exc.retry_after is not None:
            return max(exc.retry_after, 0.05)
        return backoff

    def _log_retry(self, retry_state: tenacity.RetryCallState) -> None:
        exc = retry_state.outcome.exception() if retry_state.outcome else None
        self.log.warning(
            "%s: %s, retrying (attempt %d of %d)",
            self.destination,
            exc,
            retry_state.attempt_number + 1,
            self.max_attempts,
        )
