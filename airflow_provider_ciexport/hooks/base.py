"""What both destination hooks share: a clean requests session, rate limits, retries, URL checks."""

from __future__ import annotations

import json
import random
import re
import threading
import time
from abc import ABC, abstractmethod
from collections.abc import Callable, Collection, Iterable, Mapping, Sequence
from contextlib import AbstractContextManager
from functools import cached_property
from typing import Any
from urllib.parse import urlsplit

import msgspec
import requests
import requests.auth
from airflow.providers.http.hooks.http import HttpHook
from requests.adapters import HTTPAdapter

from airflow_provider_ciexport.core.contacts import ContactBuilder, ContactSchema
from airflow_provider_ciexport.core.ratelimit import RateLimiter
from airflow_provider_ciexport.core.redaction import request_values, vendor_error_text
from airflow_provider_ciexport.core.sharing import account_lease, share_variable_key
from airflow_provider_ciexport.core.urls import base_url_problem, loopback_origin, redirect_target
from airflow_provider_ciexport.exceptions import (
    DestinationApiError,
    DestinationThrottledError,
    ExportConfigurationError,
)
from airflow_provider_ciexport.hooks.retry import (
    DEFAULT_MAX_ATTEMPTS,
    DEFAULT_THROTTLE_TIMEOUT_S,
    CallRetries,
    RetryableAnswer,
    Throttled,
    ThrottleSummary,
    Unauthorized,
    parse_retry_after,
)

#: Connect and read timeouts of every request, in seconds. Imports of several MB take a while to
#: upload and to be acknowledged, so the read timeout is generous; a hung server still cannot stall a
#: task forever.
DEFAULT_TIMEOUT: tuple[float, float] = (10.0, 120.0)
#: A refusal asking to wait longer than a window's length by more than this share came from a longer
#: window (a server rounds its ``Retry-After`` up to whole seconds, a one-second window's to 1).
WINDOW_WAIT_SLACK = 0.25
#: Longest wait between two tries of a throttled call when the API does not say how long to wait.
MAX_THROTTLE_WAIT_S = 30.0

#: Compact UTF-8 JSON, byte for byte what ``json.dumps(obj, separators=(",", ":"), ensure_ascii=False)``
#: writes, about ten times faster: encoding is a large share of an export's CPU.
encode_json: Callable[[Any], bytes] = msgspec.json.Encoder().encode


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


def tls_failure(url: str, where: str, setting: str, exc: Exception) -> ExportConfigurationError:
    """The error for a TLS handshake that failed: retrying cannot help, the address must change.

    :param url: the URL that was tried.
    :param where: the connection, as messages name it (``connection 'x'`` or ``this connection``).
    :param setting: the connection field that holds the address, e.g. ``host``.
    :param exc: the ``requests`` SSL error.
    """
    parts = urlsplit(url)
    found = re.search(r"\[SSL: [A-Z_]+\] ([^(']+)|(certificate verify failed[^(')]*)", str(exc))
    reason = (found.group(1) or found.group(2)).strip() if found else "the TLS handshake failed"
    return ExportConfigurationError(
        f"Could not open a secure (TLS) connection to {parts.scheme}://{parts.netloc} for {where}: {reason}. "
        "The server there does not speak HTTPS, or its certificate does not verify. Check the "
        f"{setting} of {where}: it must be the API's own https:// address (plain http:// is only for "
        "a local sandbox on 127.0.0.1)."
    )


def check_base_url(url: str, what: str, conn_id: str | None) -> str:
    """Validate an absolute API URL: HTTPS, or plain HTTP only to a loopback host (the sandbox).

    :param url: the URL to check.
    :param what: which setting it came from, for the error message.
    :param conn_id: the connection it came from, for the error message (``None``: "this connection").
    :return: the URL without a trailing slash.
    :raises ExportConfigurationError: naming the problem and the fix.
    """
    problem = base_url_problem(url, what, conn_id)
    if problem is not None:
        raise ExportConfigurationError(problem)
    return url.strip().rstrip("/")


class HeaderAuth(requests.auth.AuthBase):
    """Credentials carried by one header of every API request.

    :param header: the header's name, e.g. ``Api-Token``.
    :param value: returns the header's value; called for every request, so it may fetch a fresh token.
    """

    def __init__(self, header: str, value: Callable[[], str]) -> None:
        self.header = header
        self.value = value

    def __call__(self, request: requests.PreparedRequest) -> requests.PreparedRequest:
        request.headers[self.header] = self.value()
        return request

    def renew(self, refused: requests.PreparedRequest) -> bool:
        """The API refused the credentials ``refused`` carried (401): drop them if they can be replaced.

        :return: whether sending the request again may succeed (a static API key: never).
        """
        return False


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


class ApiSession(requests.Session):
    """A keep-alive session whose every request goes through its hook's :meth:`SegmentApiHook.send`.

    So a request sent on the session itself (``hook.get_conn().get(url)``) gets what the hook's own calls
    get: credentials (to the API's base URL only), the account's rate limits and the retry policy.

    It never follows a redirect, whatever the caller asks: a redirect is answered to the caller (an
    error for an API call). Stripping the credential on a hop off the API's host (``rebuild_auth`` /
    ``should_strip_auth``) would not do: ``requests`` strips only ``Authorization``, a 307 re-sends the
    body (the segment's contacts, a refresh token) to the new host, and the API's own address must be
    fixed in the connection anyway.
    """

    def __init__(self, hook: SegmentApiHook) -> None:
        super().__init__()
        self.hook = hook
        adapter = HTTPAdapter(pool_connections=4, pool_maxsize=16)
        self.mount("https://", adapter)
        self.mount("http://", adapter)
        self.headers.update({"Accept": "application/json"})

    def send(self, request: requests.PreparedRequest, **kwargs: Any) -> requests.Response:
        """Send ``request`` through the hook; ``allow_status`` names error statuses the caller handles."""
        allow_status: Collection[int] = kwargs.pop("allow_status", ())
        kwargs["allow_redirects"] = False
        if kwargs.get("timeout") is None:
            kwargs["timeout"] = self.hook.timeout
        return self.hook.send(
            request, lambda prepared: super(ApiSession, self).send(prepared, **kwargs), allow_status
        )


class SegmentApiHook(HttpHook):
    """Base of the destination hooks, on top of the http provider's ``HttpHook``.

    Every request (the typed calls, :meth:`call`, :meth:`run`, and requests sent on :meth:`get_conn`'s
    session) passes :meth:`send`, the one place that applies the credentials (:attr:`api_auth`, to the
    API's base URL only), the account's shared rate limits (which learn from refusals) and the retry
    policy. A 5xx or no answer at all is retried with backoff, up to ``max_attempts``; a throttling
    answer is not a fault: the call waits (as ``Retry-After`` says, or with backoff) and is sent
    again, without using up an attempt, until nothing has got through for ``throttle_timeout``.
    Refused credentials (401) are renewed and the call sent again at once, when the hook can renew
    them; a 401 again after a renewal is a fault retried with backoff and a new renewal, and only a
    401 to every attempt fails as refused credentials.
    Unlike a plain ``HttpHook`` it never turns connection extras into request headers and never sends
    the connection's login and password as Basic auth.

    :param conn_id: the Airflow connection to use.
    :param max_attempts: how many times one call is tried on faults (5xx, no answer) before it fails.
    :param timeout: ``(connect, read)`` timeouts of each request, in seconds; by default the
        connection extra ``timeout`` (the read timeout, as for the http provider) or 10 s and 120 s.
    :param throttle_timeout: seconds of throttling with no progress before a call fails; by default
        the connection extra ``throttle_timeout`` or 900 (15 minutes).
    """

    #: Name of the destination in messages.
    destination = "the API"
    #: The connection field that holds the API's address, for messages.
    address_setting = "host"
    #: Set while :meth:`test_connection` runs: messages then speak of "this connection" (the UI tests
    #: a copy of the connection under a random id) and give only advice that applies to a test.
    testing = False
    #: The endpoint (below the base URL) that starts imports: it has its own rate limit.
    import_endpoint = ""

    def __init__(
        self,
        conn_id: str,
        *,
        max_attempts: int = DEFAULT_MAX_ATTEMPTS,
        timeout: tuple[float, float] | None = None,
        throttle_timeout: float | None = None,
    ) -> None:
        super().__init__(method="GET", http_conn_id=conn_id)
        self.conn_id = conn_id
        self.max_attempts = max_attempts
        self._timeout = timeout
        self._throttle_timeout = throttle_timeout
        self._last_progress = time.monotonic()
        #: Refusals for the rate limit since the task log last told them (one line an interval at most).
        self.throttle_summary = ThrottleSummary()
        self._local = threading.local()
        self._counter_lock = threading.Lock()
        self._requests = 0

    # -- what subclasses provide -------------------------------------------------------------

    def _resolve_base_url(self) -> str:
        """Read the connection and return the API's base URL (validated, no trailing slash)."""
        raise NotImplementedError

    @cached_property
    def api_auth(self) -> HeaderAuth:
        """How requests to the API carry the connection's credentials."""
        raise NotImplementedError

    def _limiters(self, kind: str) -> Sequence[RateLimiter]:
        """Rate limiters a call of ``kind`` (``"general"`` or ``"import"``) must pass."""
        raise NotImplementedError

    def _account(self) -> str:
        """What identifies the account whose limits this connection shares (API URL, client id)."""
        raise NotImplementedError

    def _check_answer(self, response: requests.Response) -> None:
        """Raise ``Throttled``, ``RetryableAnswer`` or a final error for an API answer that is not a result.

        :meth:`send` handles 429 and 5xx after this; subclasses map their API's own errors here.
        """

    def share_account(self) -> AbstractContextManager[object]:
        """Hold a lease on the account while an export runs, so concurrent exports divide its rate.

        The lease lives in the Airflow Variable ``ciexport_share_<destination>_<hash>`` that every
        worker sees (see :mod:`~airflow_provider_ciexport.core.sharing`); this process's limiters of
        the account pace at its rate divided by the exports holding a lease.
        """
        from airflow_provider_ciexport.core.variables import JsonVariable

        key = share_variable_key(self.conn_type, self._account())
        store = JsonVariable(
            key, "Exports now sharing one account's rate limits (airflow-provider-ciexport)."
        )
        limiters = list(dict.fromkeys(lim for kind in ("general", "import") for lim in self._limiters(kind)))
        return account_lease(key, store, limiters)

    # -- the connection ------------------------------------------------------------------------

    @property
    def conn_label(self) -> str:
        """The connection as messages name it: ``connection 'x'``, or ``this connection`` in a test."""
        return "this connection" if self.testing else f"connection '{self.conn_id}'"

    @property
    def capitalized_conn_label(self) -> str:
        """:attr:`conn_label` at the start of a sentence: ``Connection 'x'``, ``This connection``."""
        return self.conn_label[:1].upper() + self.conn_label[1:]

    @cached_property
    def connection(self) -> Any:
        """The Airflow connection (read once).

        :raises ExportConfigurationError: when no connection has that id, naming it and the fix.
        """
        from airflow.exceptions import AirflowNotFoundException

        try:
            return self.get_connection(self.conn_id)
        except AirflowNotFoundException:
            raise ExportConfigurationError(
                f"There is no Airflow connection '{self.conn_id}' (the {self.conn_name_attr} of this "
                f"{self.hook_name} export or hook). Create it (Admin > Connections in the UI, "
                f"'airflow connections add', an AIRFLOW_CONN_{self.conn_id.upper()} environment variable "
                f"or your secrets backend), or set {self.conn_name_attr} to the id of an existing one."
            ) from None

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
                f"The extra '{name}' of {self.conn_label} must be a positive number (default {default:g})."
            )
        return number

    @property
    def throttle_timeout(self) -> float:
        """Seconds a call may stay throttled with no progress before it fails (extra ``throttle_timeout``)."""
        if self._throttle_timeout is None:
            self._throttle_timeout = self.positive_extra("throttle_timeout", DEFAULT_THROTTLE_TIMEOUT_S)
        return self._throttle_timeout

    @property
    def timeout(self) -> tuple[float, float]:
        """``(connect, read)`` timeouts of each request, in seconds."""
        if self._timeout is None:
            read = self.positive_extra("timeout", DEFAULT_TIMEOUT[1])
            self._timeout = (min(DEFAULT_TIMEOUT[0], read), read)
        return self._timeout

    @property
    def requests_per_second(self) -> float:
        """The account's request rate limit in use (connection extra ``requests_per_second``)."""
        return self._limiters("general")[0].rate

    @cached_property
    def api_base_url(self) -> str:
        """The validated base URL of the API (read from the connection once)."""
        url = self._resolve_base_url()
        sandbox = loopback_origin(url)
        if sandbox is not None:
            # Said once per hook (an export has one): a production DAG pointed at the sandbox by
            # mistake would otherwise succeed with no word that nothing reached the vendor.
            self.log.warning(
                "%s points at %s on this machine: a local sandbox, not %s. Nothing sent here reaches a "
                "real list.",
                self.capitalized_conn_label,
                sandbox.partition("://")[2],
                self.hook_name,
            )
        return url

    def url_from_endpoint(self, endpoint: str | None) -> str:
        """Join the API base URL and ``endpoint``."""
        return f"{self.api_base_url}/{(endpoint or '').lstrip('/')}"

    # -- HttpHook's public methods, made safe ---------------------------------------------------

    def get_conn(
        self, headers: dict[Any, Any] | None = None, extra_options: dict[str, Any] | None = None
    ) -> requests.Session:
        """Return this thread's keep-alive session; what is sent on it passes :meth:`send`.

        :param headers: headers added to every later request of this thread's session.
        :param extra_options: not supported: timeouts come from the connection's extra ``timeout``.
        """
        if extra_options:
            raise ValueError(
                f"{type(self).__name__} takes no extra_options ({', '.join(extra_options)}): set the read "
                "timeout in the connection's extra 'timeout'; retries and rate limits are built in."
            )
        session: ApiSession | None = getattr(self._local, "session", None)
        if session is None:
            session = self._local.session = ApiSession(self)
        if headers:
            session.headers.update(headers)
        return session

    def run(
        self,
        endpoint: str | None = None,
        data: dict[str, Any] | str | None = None,
        headers: dict[str, Any] | None = None,
        extra_options: dict[str, Any] | None = None,
        **request_kwargs: Any,
    ) -> requests.Response:
        """Call ``endpoint`` with the hook's ``method``, as ``HttpHook.run`` does, through :meth:`send`.

        :param endpoint: the path below the API's base URL, e.g. ``lists``.
        :param data: query parameters for ``GET``; otherwise a JSON-serialisable body (or its text).
        :param headers: extra headers of this request.
        :param extra_options: not supported (see :meth:`get_conn`).
        :param request_kwargs: ``json=`` (a body) is accepted; nothing else.
        :return: the 2xx response.
        """
        unsupported = set(request_kwargs) - {"json"}
        if extra_options or unsupported:
            raise ValueError(
                f"{type(self).__name__}.run() takes endpoint, data, headers and json= only, not "
                f"{', '.join(sorted(set(extra_options or {}) | unsupported))}."
            )
        method = self.method
        if method in ("GET", "HEAD", "DELETE"):
            return self.call(method, endpoint or "", params=data, headers=headers)  # type: ignore[arg-type]
        body = request_kwargs.get("json", data)
        if isinstance(body, str):
            return self.call(method, endpoint or "", body=body.encode(), headers=headers)
        return self.call(method, endpoint or "", json_body=body, headers=headers)

    def run_with_advanced_retry(self, _retry_args: dict[Any, Any], *args: Any, **kwargs: Any) -> Any:
        """Refused: the hook already retries every call with its own policy (see :meth:`send`)."""
        raise NotImplementedError(
            f"{type(self).__name__} retries every call itself (throttling, 5xx, no answer; Retry-After "
            "honoured), so tenacity's retries would multiply its attempts: call run() or a typed method "
            "instead, and set max_attempts on the hook to change how often it tries."
        )

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
        headers: Mapping[str, str] | None = None,
        allow_status: Collection[int] = (),
        stream: bool = False,
    ) -> requests.Response:
        """Send one API call through :meth:`send`.

        :param method: HTTP method.
        :param endpoint: path below the API base URL.
        :param json_body: a JSON-serialisable body.
        :param body: an already serialised JSON body (sent as is).
        :param params: query parameters.
        :param headers: extra headers of this request.
        :param allow_status: error statuses the caller handles itself (e.g. 404 for "no such list").
        :param stream: leave a 2xx answer's body unread, for the caller to read in pieces (and close).
        :return: the response (2xx, or a status in ``allow_status``).
        """
        if json_body is not None:
            body = json.dumps(json_body, separators=(",", ":")).encode()
        request_headers = dict(headers or {})
        if body is not None:
            request_headers.setdefault("Content-Type", "application/json")
        session = self.get_conn()
        request = requests.Request(
            method, self.url_from_endpoint(endpoint), data=body, params=params, headers=request_headers
        )
        prepared = session.prepare_request(request)
        settings = session.merge_environment_settings(prepared.url, {}, None, None, None)
        settings["stream"] = stream
        return session.send(prepared, allow_redirects=False, allow_status=allow_status, **settings)

    def send(
        self,
        request: requests.PreparedRequest,
        transport: Callable[[requests.PreparedRequest], requests.Response],
        allow_status: Collection[int] = (),
    ) -> requests.Response:
        """Send one request with the credentials, the rate limits and the retry policy: the one loop.

        A request to the API's base URL gets the credentials and passes the account's rate limiters;
        its answer is read by the destination's error mapping (:meth:`_check_answer`). Any other URL (an
        OAuth token endpoint) is sent as it is and only retried when it is throttled or unanswered.

        :param request: the prepared request.
        :param transport: sends one prepared request and returns the answer.
        :param allow_status: error statuses returned to the caller instead of raised.
        :return: the response (2xx, a status in ``allow_status``, or any answer of a non-API URL).
        """
        api = self._is_api_url(request.url or "")
        limiters = self._limiters(self._kind(request)) if api else ()
        retries = CallRetries(self.max_attempts, self.throttle_timeout)
        while True:
            tickets = [limiter.acquire() for limiter in limiters]
            try:
                response = self._attempt(request, transport, api, allow_status, retries)
            except Throttled as answer:
                self._wait_out_throttling(request, limiters, tickets, answer, retries)
                continue
            except RetryableAnswer as answer:
                self._wait_after_fault(request, answer, retries)
                continue
            if response is None:
                continue  # the credentials were renewed: sent again at once
            if api and response.status_code not in allow_status:
                self._raise_for_final_status(request, response)
            # An answer got through: the export is making progress and the pace may creep back up.
            self._last_progress = time.monotonic()
            for limiter in limiters:
                limiter.succeeded()
            if self.throttle_summary.pending:
                self._tell_throttling(self.throttle_summary.due(), limiters)
            return response

    @property
    def progress_interval_s(self) -> float:
        """The least time between two lines this hook logs about a long wait (throttling, an export
        being prepared): the export's progress interval."""
        return self.throttle_summary.interval_s

    @progress_interval_s.setter
    def progress_interval_s(self, interval_s: float) -> None:
        self.throttle_summary.interval_s = float(interval_s)

    def _tell_throttling(
        self, told: tuple[int, int, int, float] | None, limiters: Sequence[RateLimiter]
    ) -> None:
        """Log one line about the refusals since the last one (a line at most every
        ``throttle_summary.interval_s``, not one a refusal), with the pace now and why."""
        if told is None:
            return
        refusals, slowdowns, own, since = told
        pace = min((limiter.factor for limiter in limiters), default=1.0)
        self.log.info(
            "%s refused %d request(s) for its rate limit %s, each waited out and sent again (not a "
            "failure). Pacing at %.0f%% of the documented rate%s%s.",
            self.destination,
            refusals,
            f"in the last {since:.0f} s" if since else "so far",
            100 * pace,
            f" (the account's budget seems shared with another export or app: {slowdowns} slow-down(s) "
            "since the last line; the pace creeps back up while requests get through)"
            if slowdowns or pace < 1
            else "",
            f"; {own} of them this export's own requests bunched together (a busy or stalled worker): "
            "spaced out again, the pace not cut"
            if own
            else "",
        )

    def _attempt(
        self,
        request: requests.PreparedRequest,
        transport: Callable[[requests.PreparedRequest], requests.Response],
        api: bool,
        allow_status: Collection[int],
        retries: CallRetries,
    ) -> requests.Response | None:
        """Send ``request`` once: its answer, ``None`` to send it again at once, or a retryable answer.

        :raises Throttled: the API asked to slow down.
        :raises RetryableAnswer: a fault (5xx, no answer, a 401 after a renewal).
        """
        prepared = request.copy()
        if api:
            self.api_auth(prepared)
        with self._counter_lock:
            self._requests += 1
        try:
            response = transport(prepared)
        except requests.exceptions.SSLError as exc:
            setting = self._address_setting(request.url or "")
            raise tls_failure(request.url or "", self.conn_label, setting, exc) from None
        except (requests.ConnectionError, requests.Timeout) as exc:
            raise RetryableAnswer(f"no answer ({type(exc).__name__})") from None
        status = response.status_code
        if status in allow_status:
            return response
        if api and status == 401 and self.api_auth.renew(prepared):
            # Expired or revoked credentials: renewed, and the call is sent again at once. Refused
            # again after a renewal, it is a fault (backoff, a new renewal) like a 5xx.
            retries.renewed(response)
            return None
        if api:
            self._check_answer(response)
        if status == 429:
            raise Throttled(f"HTTP {status}", parse_retry_after(response.headers.get("Retry-After")))
        if status >= 500:
            raise RetryableAnswer(f"HTTP {status}", parse_retry_after(response.headers.get("Retry-After")))
        return response

    def _wait_out_throttling(
        self,
        request: requests.PreparedRequest,
        limiters: Sequence[RateLimiter],
        tickets: Sequence[int],
        answer: Throttled,
        retries: CallRetries,
    ) -> None:
        """Slow down as the API asked, or fail once nothing has got through for ``throttle_timeout``."""
        slowed, own = self._slow_down(limiters, tickets, answer)
        stalled = retries.throttled(self._last_progress)
        if stalled is not None:
            raise DestinationThrottledError(
                f"{self.destination} refused every request for its rate limit for "
                f"{stalled / 60:.0f} minutes, with nothing getting through (last: {answer.reason} to "
                f"{request.method} {self._path(request)}). Another app may be spending the account's "
                "whole budget. Retry the task later, or wait longer with the connection extra "
                f"'throttle_timeout' (seconds, now {self.throttle_timeout:g}).",
                status=429,
            ) from None
        self._tell_throttling(self.throttle_summary.refused(slowed, own), limiters)
        if not limiters:
            # Nothing paces a request outside the API (a token endpoint): wait here.
            time.sleep(answer.retry_after or 0.0)

    def _wait_after_fault(
        self, request: requests.PreparedRequest, answer: RetryableAnswer, retries: CallRetries
    ) -> None:
        """Back off before the next attempt, or fail when the call has used up its attempts."""
        wait = retries.fault(answer)
        if wait is None:
            if isinstance(answer, Unauthorized) and retries.refused_every_time():
                # 401 to every attempt, each with freshly renewed credentials: refused.
                self._check_answer(answer.response)
            host = urlsplit(request.url or "").netloc
            advice = (
                f"Check that {host} is the right address ({self._address_setting(request.url or '')}) "
                "and can be reached from here."
                if self.testing
                else "Check the service's status and retry the task."
            )
            raise DestinationApiError(
                f"{self.destination} at {host} kept failing for {request.method} {self._path(request)} "
                f"after {self.max_attempts} attempts (last: {answer.reason}). {advice}",
                status=None,
            ) from None
        self.log.warning(
            "%s: %s, retrying (attempt %d of %d)",
            self.destination,
            answer.reason,
            retries.faults + 1,
            self.max_attempts,
        )
        time.sleep(wait)

    def _raise_for_final_status(self, request: requests.PreparedRequest, response: requests.Response) -> None:
        """Fail on a redirect (never followed) or an error answer of the API that no retry can mend."""
        status = response.status_code
        if 300 <= status < 400:
            target = redirect_target(request.url, response.headers.get("Location"))
            raise DestinationApiError(
                f"{self.destination} answered HTTP {status} to {request.method} {self._path(request)}, "
                f"a redirect to {target}. Redirects are not followed, so the "
                f"credentials of {self.conn_label} go to its own address only: set its "
                f"{self._address_setting(request.url or '')} to the API's address itself.",
                status=status,
            )
        if status >= 400:
            raise DestinationApiError(
                f"{self.destination} answered HTTP {status} to {request.method} {self._path(request)}: "
                f"{self._error_text(response)}",
                status=status,
            )

    def _address_setting(self, url: str) -> str:
        """The connection field that holds the address of ``url``, for messages."""
        return self.address_setting

    def _is_api_url(self, url: str) -> bool:
        base = self.api_base_url
        return url == base or url.startswith((f"{base}/", f"{base}?"))

    def _path(self, request: requests.PreparedRequest) -> str:
        """The request's path below the API's base URL, without the query (no data in messages)."""
        url = (request.url or "").split("?", 1)[0]
        base = self.api_base_url
        return url[len(base) + 1 :] if url.startswith(f"{base}/") else urlsplit(url).path

    def _kind(self, request: requests.PreparedRequest) -> str:
        """``"import"`` for a request that starts an import, else ``"general"``."""
        if self.import_endpoint and request.method == "POST" and self._path(request) == self.import_endpoint:
            return "import"
        return "general"

    @staticmethod
    def _error_text(response: requests.Response) -> str:
        """A short description of an error answer without personal data or secrets: the documented
        codes and keys, and the API's free text only with every value the request carried removed
        (see :func:`~airflow_provider_ciexport.core.redaction.vendor_error_text`)."""
        return vendor_error_text(json_or_none(response), request_values(response.request))

    @staticmethod
    def _slow_down(
        limiters: Sequence[RateLimiter], tickets: Sequence[int], answer: Throttled
    ) -> tuple[bool, bool]:
        """Hold the account back as the API asked, and teach the limiter of the window that refused it
        (every limiter the call passed when the answer leaves the window open and our own calls do
        not explain it).

        :return: whether the limiter cut its pace (refusals repeat, not of our own making), and
            whether our own bunching explains the refusal (then the pace is not cut).
        """
        if not limiters:
            if answer.retry_after is None:
                answer.retry_after = min(MAX_THROTTLE_WAIT_S, 1.0 + 2 * random.random())
            return False, False
        index, certain = SegmentApiHook._refusing_limiter(limiters, answer)
        limiter = limiters[index]
        if answer.retry_after is None:
            # No Retry-After (Constant Contact's `throttled`, ActiveCampaign's 400): back off by a few
            # of the limiter's own intervals, growing while refusals repeat.
            answer.retry_after = min(MAX_THROTTLE_WAIT_S, limiter.interval * (2 + 4 * random.random()))
        # If our own calls could have filled the window that refused it (a stall bunched them), the
        # refusal is ours: space out, keep the pace learnt for the account's other users. When the
        # answer does not say which window refused it, any window our calls filled explains it.
        if certain:
            own = limiter.own_bunching(tickets[index])
        else:
            own = any(lim.own_bunching(ticket) for lim, ticket in zip(limiters, tickets, strict=True))
        if certain or own:
            return limiter.throttled(tickets[index], answer.retry_after, own=own), own
        # Someone else is spending the account, and the answer does not say on which window: an app
        # spending the imports draws waits as short as the per-second window's. Every window the call
        # passed learns it, or the imports would keep storming a budget another app shares.
        cuts = [
            lim.throttled(ticket, answer.retry_after, own=False)
            for lim, ticket in zip(limiters, tickets, strict=True)
        ]
        return any(cuts), False

    @staticmethod
    def _refusing_limiter(limiters: Sequence[RateLimiter], answer: Throttled) -> tuple[int, bool]:
        """Which of the limiters a call passed stands for the server window that refused it, so that
        only that pace is cut: the window the answer names; else the longer window when the wait it
        asks is longer than the shorter window (which never asks more than its own length); else the
        shorter window, which alone on the account imports and polls together come nearest to.

        :return: the limiter's index, and whether the answer settles it (not only the best guess).
        """
        by_window = sorted(range(len(limiters)), key=lambda i: limiters[i].window_span)
        if len(limiters) == 1:
            return 0, True
        if answer.window_s is not None:
            named = [i for i in by_window if limiters[i].per == answer.window_s]
            if named:
                return named[0], True
        shortest = limiters[by_window[0]]
        if answer.retry_after is not None and answer.retry_after > shortest.window_span * (
            1 + WINDOW_WAIT_SLACK
        ):
            return by_window[-1], True
        return by_window[0], False
