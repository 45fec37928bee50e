"""JSON in and out of the sandbox's routes: request bodies, and responses in each API's own error shape."""

from __future__ import annotations

import json
import math
from http import HTTPStatus
from typing import Any

from starlette.requests import Request
from starlette.responses import Response

AC_VALIDATION_MESSAGE = (
    "JSON payload did not pass validation. Please fix failure Reasons and retry. "
    "The import was not queued for processing."
)
AC_IMPORT_RATE_REASON = (
    "Up to 100 imports may be requested per minute.Please batch contacts into larger requests, "
    "or retry this request in a minute."
)
AC_SECOND_RATE_REASON = "Up to 5 requests may be made per second. Please retry this request in a second."


async def json_body(request: Request) -> Any:
    """The request's JSON body, or ``None`` when it is not JSON."""
    try:
        return json.loads(await request.body())
    except ValueError:
        return None


def json_response(body: Any, status: int = 200, headers: dict[str, str] | None = None) -> Response:
    """A compact JSON response (no pydantic round trip)."""
    return Response(
        content=json.dumps(body, separators=(",", ":")).encode(),
        status_code=status,
        headers=headers,
        media_type="application/json",
    )


def _phrase(status: int) -> str:
    try:
        return HTTPStatus(status).phrase
    except ValueError:
        return "Error"


def ac_errors(status: int, detail: str) -> Response:
    """ActiveCampaign ``{"errors": [{"status", "title", "detail"}]}``."""
    return json_response({"errors": [{"status": status, "title": _phrase(status), "detail": detail}]}, status)


def ac_message(status: int, message: str) -> Response:
    """ActiveCampaign ``{"message": ...}``."""
    return json_response({"message": message}, status)


def ac_bulk_error(status: int, message: str, reasons: list[Any]) -> Response:
    """ActiveCampaign bulk-import ``{"success": 0, "message", "failureReasons"}``."""
    return json_response({"success": 0, "message": message, "failureReasons": reasons}, status)


def ac_rate_limited(style: str, wait_s: float, imports: bool, whole_seconds: bool = True) -> Response:
    """An exceeded ActiveCampaign limit, answered in the configured style.

    ``Retry-After`` is in whole seconds, as real servers send it; in a time-scaled sandbox it is the
    scaled wait with decimals, or one real second would stand for ``rate_scale`` of them.
    """
    if style == "400":
        reason = AC_IMPORT_RATE_REASON if imports else AC_SECOND_RATE_REASON
        return ac_bulk_error(400, "Rate limit exceeded.", [reason])
    if style == "503":
        return ac_message(503, "Service Unavailable")
    retry_after = str(max(1, math.ceil(wait_s))) if whole_seconds else f"{max(wait_s, 0.01):.2f}"
    return json_response({"message": "Too Many Requests"}, 429, headers={"Retry-After": retry_after})


def cc_error(status: int, key: str, message: str, *, shape: str) -> Response:
    """Constant Contact ``[{"error_key", "error_message"}]``, or the bare object.

    :param shape: ``list``, ``object``, or ``documented`` (an object for 429, a list otherwise).
    """
    error = {"error_key": key, "error_message": message}
    as_object = shape == "object" or (shape == "documented" and status == 429)
    return json_response(error if as_object else [error], status)


def cc_throttled(shape: str) -> Response:
    """The per-second limit (no Retry-After, as documented)."""
    return cc_error(429, "throttled", "Too many requests per second. Retry in a moment.", shape=shape)


def cc_quota_exceeded(shape: str) -> Response:
    """The daily quota."""
    return cc_error(
        429, "quota_exceeded", "The daily request quota for this API key has been exceeded.", shape=shape
    )


def _first_contact(body: bytes) -> dict[str, Any]:
    """The first contact of a request body (an import's or a single contact's), or ``{}``."""
    try:
        data = json.loads(body)
    except ValueError:
        return {}
    if not isinstance(data, dict):
        return {}
    for key in ("contacts", "import_data"):
        items = data.get(key)
        if isinstance(items, list) and items and isinstance(items[0], dict):
            return items[0]
    contact = data.get("contact")
    return contact if isinstance(contact, dict) else {}


def quoting_error(api: str, status: int, path: str, body: bytes, cc_shape: str) -> Response:
    """A validation error whose text quotes the request's first contact, as real APIs' messages do
    ("Contact ann@example.com (Ann Lee, +1 415 555 0100) is invalid"), in the API's error shape."""
    contact = _first_contact(body)
    email = str(contact.get("email") or contact.get("email_address") or "")
    name = " ".join(
        str(contact[k]) for k in ("first_name", "firstName", "last_name", "lastName") if contact.get(k)
    )
    phone = str(contact.get("phone") or "")
    quoted = f"Contact {email} ({', '.join(p for p in (name, phone) if p)}) is invalid"
    if api == "cc":
        return cc_error(status, "contacts.api.validation.error", quoted, shape=cc_shape)
    if path.endswith("/import/bulk_import"):
        return ac_bulk_error(
            status,
            f"{quoted}. The import was not queued for processing.",
            [{"contact": 0, "failureReason": f"Field' email' incorrect format: {email}"}],
        )
    return json_response(
        {
            "errors": [
                {
                    "status": status,
                    "title": quoted,
                    "detail": f"{name} <{email}> {phone}".strip(),
                    "code": "field_invalid",
                    "source": {"pointer": "/data/attributes/email"},
                }
            ]
        },
        status,
    )


def oauth_error(status: int, error: str, description: str, headers: dict[str, str] | None = None) -> Response:
    """OAuth 2 ``{"error", "error_description"}``."""
    return json_response({"error": error, "error_description": description}, status, headers)


def generic_status(api: str, status: int, retry_after: int | None, cc_shape: str) -> Response:
    """An injected status in the API's shape."""
    headers = {"Retry-After": str(retry_after)} if retry_after is not None else None
    phrase = _phrase(status)
    if api == "cc":
        response = cc_error(status, f"http.{status}", phrase, shape=cc_shape)
        response.headers.update(headers or {})
        return response
    if api == "oauth":
        body: Any = {
            "error": "server_error" if status >= 500 else "invalid_request",
            "error_description": phrase,
        }
    else:
        body = {"message": phrase}
    return json_response(body, status, headers)
