"""The ASGI layer in front of the fake APIs: recording, faults, auth, rate limits and latency."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, MutableMapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

from starlette.responses import Response
from starlette.routing import Match, Router

from airflow_provider_ciexport.core.urls import is_loopback
from airflow_provider_ciexport.tools.sandbox import errors
from airflow_provider_ciexport.tools.sandbox.config import SandboxConfig
from airflow_provider_ciexport.tools.sandbox.faults import JOB_KINDS, FaultRule
from airflow_provider_ciexport.tools.sandbox.seed import AC_API_KEY
from airflow_provider_ciexport.tools.sandbox.state import SandboxState

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

log = logging.getLogger(__name__)

#: Route templates (method, path) of the two import POSTs.
IMPORT_ENDPOINTS = frozenset(
    {("POST", "/api/3/import/bulk_import"), ("POST", "/v3/activities/contacts_json_import")}
)
#: Requests that create import jobs (the ones job faults apply to).
JOB_ENDPOINTS = IMPORT_ENDPOINTS | {("POST", "/v3/activities/remove_list_memberships")}
#: The APIs fault rules and latency apply to.
FAULT_APIS = ("ac", "cc", "oauth")
#: Where the job fault chosen for a request is handed to its handler.
JOB_FAULT_KEY = "sandbox.job_fault"
#: When the request arrived, before its body was read (the strict timing model checks it then).
ARRIVAL_KEY = "sandbox.arrival"


@dataclass
class _FaultEffects:
    """What the fault rules fired on a request leave for its handling."""

    delay: float = 0.0
    job_fault: str | None = None
    drop_after: bool = False


def classify(path: str) -> str:
    """Which API a path belongs to: ``ac``, ``cc``, ``oauth``, ``control`` or ``other``."""
    if path.startswith("/api/3/") or path == "/api/3":
        return "ac"
    if path.startswith("/v3/") or path == "/v3":
        return "cc"
    if path.startswith("/oauth2/"):
        return "oauth"
    if path.startswith("/_sandbox"):
        return "control"
    return "other"


def _headers(scope: Scope) -> dict[str, str]:
    """The request's headers by lower-case name (repeated ones joined with ``, ``)."""
    headers: dict[str, str] = {}
    for raw_name, raw_value in scope["headers"]:
        name, value = raw_name.decode("latin-1").lower(), raw_value.decode("latin-1")
        headers[name] = f"{headers[name]}, {value}" if name in headers else value
    return headers


def _foreign_request(scope: Scope, headers: dict[str, str]) -> tuple[int, str] | None:
    """``(status, why)`` for a request a web page may have made, else ``None``.

    The control API has no credentials, so what a browser can send must be refused: a request
    whose ``Host`` is not a loopback name (a DNS-rebinding page) and a control call whose body is not
    declared JSON (a form or a ``text/plain`` post needs no CORS preflight).
    """
    host = headers.get("host")
    if host is not None and not is_loopback(urlsplit(f"//{host}").hostname or ""):
        return (
            403,
            "the sandbox answers only requests addressed to a loopback host (127.0.0.1, localhost, [::1])",
        )
    # POST is the one method a page can send elsewhere without a CORS preflight (which fails here).
    if classify(scope["path"]) == "control" and scope["method"] == "POST":
        content_type = headers.get("content-type", "").split(";")[0].strip().lower()
        if content_type != "application/json":
            return 415, "control calls take a JSON body (Content-Type: application/json), even an empty {}"
    return None


class SandboxGate:
    """Wraps the FastAPI app; the control API passes straight through."""

    def __init__(self, app: ASGIApp, router: Router, state: SandboxState) -> None:
        self.app = app
        self.router = router
        self.state = state

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = _headers(scope)
        refusal = _foreign_request(scope, headers)
        if refusal is not None:
            await errors.json_response({"error": refusal[1]}, refusal[0])(scope, receive, send)
            return
        if classify(scope["path"]) == "control":
            await self.app(scope, receive, send)
            return
        scope[ARRIVAL_KEY] = self.state.now()
        path: str = scope["path"]
        method: str = scope["method"]
        api = classify(path)
        body = await _read_body(receive)
        rec = self.state.recorder
        entry = rec.log_request(
            api, method, path, scope.get("query_string", b"").decode("latin-1"), headers, body
        )
        endpoint = self._endpoint(scope)
        status: list[int | str] = ["dropped"]

        async def send_recording(message: Message) -> None:
            if message["type"] == "http.response.start":
                status[0] = message["status"]
            await send(message)

        replayed = False

        async def replay() -> Message:
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()

        try:
            await self._handle(scope, replay, send_recording, send, api, endpoint, headers)
        finally:
            entry["status"] = status[0]
            rec.count_response(api, f"{method} {endpoint}", status[0])

    def _endpoint(self, scope: Scope) -> str:
        """The route template a request matches, so counts do not explode per id."""
        partial = None
        for route in self.router.routes:
            match, _ = route.matches(scope)
            if match is Match.FULL:
                return str(getattr(route, "path", scope["path"]))
            if match is Match.PARTIAL and partial is None:
                partial = str(getattr(route, "path", scope["path"]))
        return partial if partial is not None else "(unmatched)"

    async def _handle(
        self,
        scope: Scope,
        receive: Receive,
        send: Send,
        raw_send: Send,
        api: str,
        endpoint: str,
        headers: dict[str, str],
    ) -> None:
        st = self.state
        key = (scope["method"], endpoint)
        strict = st.config.timing == "strict"
        now = scope[ARRIVAL_KEY] if strict else st.now()
        effects = _FaultEffects()
        if api in FAULT_APIS:
            fired = await self._fire_faults(scope, receive, send, raw_send, api, key in JOB_ENDPOINTS)
            if fired is None:  # a fault answered instead
                return
            effects = fired
        denied = self._authenticate(api, headers, now)
        if denied is None:
            denied = self._rate_limit(api, key in IMPORT_ENDPOINTS, now)
        if denied is not None:
            await denied(scope, receive, send)
            return
        delay = effects.delay + self._latency(api, key in IMPORT_ENDPOINTS)
        # The request is handled at once and its answer held back until `delay` after arrival, as a
        # real server does its work within its latency: a burst of imports is then answered together,
        # not one parse after another.
        answer_at = now + delay
        scope[JOB_FAULT_KEY] = effects.job_fault
        st.settle()
        if effects.drop_after:
            await self._answer_then_drop(scope, receive, raw_send, answer_at)
            return

        async def send_on_time(message: Message) -> None:
            if message["type"] == "http.response.start":
                await _wait_until(answer_at)
            await send(message)

        await self.app(scope, receive, send_on_time if delay > 0 else send)

    def _latency(self, api: str, is_import: bool) -> float:
        """How long after its arrival a request is answered, by the timing model."""
        cfg = self.state.config
        if api not in FAULT_APIS:
            return 0.0
        import_s = cfg.import_latency_s if is_import else 0.0
        if cfg.timing == "strict":
            return self.state.latency.delay(cfg.latency_s, import_s, cfg.strict_jitter_s)
        return cfg.latency_s + import_s

    async def _fire_faults(
        self, scope: Scope, receive: Receive, send: Send, raw_send: Send, api: str, creates_job: bool
    ) -> _FaultEffects | None:
        """Apply the fault rules that fire on this request.

        :return: what they leave for the request's handling, or None when one of them answered it.
        """
        st = self.state
        effects = _FaultEffects()
        for rule in st.faults.fire(api, scope["method"], scope["path"], creates_job):
            st.recorder.faults[rule.kind] += 1
            if rule.kind == "drop":
                await self._drop(scope, receive, raw_send)
                return None
            if rule.kind == "drop_after":
                effects.drop_after = True
            elif rule.kind == "slow":
                effects.delay += rule.delay_s
            elif rule.kind in JOB_KINDS.get(api, frozenset()):
                effects.job_fault = rule.kind
            else:
                await self._fault_answer(rule, scope, receive, send)
                return None
        return effects

    async def _fault_answer(self, rule: FaultRule, scope: Scope, receive: Receive, send: Send) -> None:
        """Answer the request as the fault ``rule`` says, instead of the fake API."""
        cfg = self.state.config
        if rule.kind == "quoting_error":
            body = await _read_body(receive)
            answer = errors.quoting_error(rule.api, rule.status, scope["path"], body, cfg.cc_error_shape)
            await answer(scope, receive, send)
        else:
            await _fault_response(rule, cfg)(scope, receive, send)

    async def _answer_then_drop(
        self, scope: Scope, receive: Receive, raw_send: Send, answer_at: float
    ) -> None:
        """Handle the request, throw its answer away and drop the connection when it was due."""

        async def swallow(message: Message) -> None:
            return None

        await self.app(scope, receive, swallow)
        await _wait_until(answer_at)
        await self._drop(scope, receive, raw_send)

    def _authenticate(self, api: str, headers: dict[str, str], now: float) -> Response | None:
        st = self.state
        if api == "ac":
            if headers.get("api-token") != AC_API_KEY:
                st.recorder.auth_failures["ac"] += 1
                return errors.ac_errors(
                    st.config.ac_auth_error_status,
                    "The API key is missing or not valid for this account.",
                )
        elif api == "cc":
            scheme, _, token = headers.get("authorization", "").partition(" ")
            max_uses = st.config.cc_access_token_max_requests
            bearer = scheme.lower() == "bearer"
            record = st.oauth.access_status(token.strip(), now, max_uses) if bearer else "unknown"
            if isinstance(record, str):
                st.recorder.auth_failures["cc"] += 1
                st.recorder.counters[f"cc.access_token_{record}"] += 1
                return errors.cc_error(401, "unauthorized", "Unauthorized", shape=st.config.cc_error_shape)
            if "contact_data" not in record.scope.split():
                st.recorder.auth_failures["cc"] += 1
                return errors.cc_error(
                    403,
                    "forbidden",
                    "The access token lacks the contact_data scope.",
                    shape=st.config.cc_error_shape,
                )
        return None

    def _rate_limit(self, api: str, is_import: bool, now: float) -> Response | None:
        st = self.state
        if api == "ac":
            checks = ["ac_per_second"] + (["ac_imports_per_minute"] if is_import else [])
        elif api == "cc":
            checks = ["cc_daily_quota", "cc_per_second"]
        else:
            return None
        windows = [(name, st.limiter(name)) for name in checks]
        for name, window in windows:
            wait = window.wait_time(now)
            if wait > 0:
                if window.counts_refused:  # the refused request is counted in each window it meets
                    for _, counted in windows:
                        counted.add(now)
                    wait = window.wait_time(now)
                st.recorder.rejections[name] += 1
                if name == "cc_daily_quota":
                    return errors.cc_quota_exceeded(st.config.cc_error_shape)
                if name == "cc_per_second":
                    return errors.cc_throttled(st.config.cc_error_shape)
                return errors.ac_rate_limited(
                    st.config.ac_rate_limit_style,
                    wait,
                    name == "ac_imports_per_minute",
                    whole_seconds=st.config.rate_scale == 1,
                )
        for _, window in windows:
            window.add(now)
        return None

    async def _drop(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Close the connection without answering."""
        # uvicorn hands the app its RequestResponseCycle.send; its transport is the socket.
        cycle = getattr(send, "__self__", None)
        transport = getattr(cycle, "transport", None)
        if transport is None:
            log.warning("sandbox: cannot drop the connection under this server; answering 500")
            raise RuntimeError("sandbox fault: drop")
        transport.close()
        # Tell uvicorn the client is gone so it does not try to send a 500 afterwards.
        cycle.disconnected = True  # type: ignore[union-attr]


def _fault_response(rule: FaultRule, config: SandboxConfig) -> Response:
    if rule.kind == "throttled":
        if rule.api == "ac":
            return errors.ac_rate_limited(
                config.ac_rate_limit_style, float(rule.retry_after or 1), imports=False
            )
        return errors.cc_throttled(config.cc_error_shape)
    if rule.kind == "quota_exceeded":
        return errors.cc_quota_exceeded(config.cc_error_shape)
    if rule.kind == "rate_limit_400":
        return errors.ac_rate_limited("400", 1.0, imports=True)
    if rule.kind == "redirect":
        assert rule.location is not None
        return Response(status_code=rule.status, headers={"Location": rule.location})
    return errors.generic_status(rule.api, rule.status, rule.retry_after, config.cc_error_shape)


async def _wait_until(deadline: float) -> None:
    """Sleep until ``deadline`` on the state's clock (at once if it has passed)."""
    wait = deadline - SandboxState.now()
    if wait > 0:
        await asyncio.sleep(wait)


async def _read_body(receive: Receive) -> bytes:
    chunks: list[bytes] = []
    while True:
        message = await receive()
        if message["type"] != "http.request":
            break
        chunks.append(message.get("body", b""))
        if not message.get("more_body", False):
            break
    return b"".join(chunks)
