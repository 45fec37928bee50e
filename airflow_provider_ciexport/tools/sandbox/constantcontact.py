"""Constant Contact V3 routes (``/v3/...``); auth and limits are applied by the gate."""

from __future__ import annotations

import asyncio
import base64
import json
import math
from collections.abc import Sequence
from datetime import datetime, timezone
from typing import Any
from urllib.parse import urlencode

from fastapi import APIRouter, Request
from starlette.responses import Response

from airflow_provider_ciexport.tools.sandbox import errors
from airflow_provider_ciexport.tools.sandbox.cc_store import (
    CONTACT_STATUSES,
    EXPORT_FIELDS,
    EXPORT_STATUSES,
    MAX_IMPORT_BODY_BYTES,
    MAX_IMPORT_CONTACTS,
    MAX_REMOVE_CONTACT_IDS,
    MEMBERSHIP_COUNTS,
    SEED_TIME,
    UUID_RE,
    CCStore,
    ImportRejected,
    contact_num_of,
    count_rows_within,
)
from airflow_provider_ciexport.tools.sandbox.gate import JOB_FAULT_KEY
from airflow_provider_ciexport.tools.sandbox.routing import Route, bind_routes
from airflow_provider_ciexport.tools.sandbox.state import SandboxState

VALIDATION = "contacts.api.validation.error"
#: ``GET /v3/contacts``: page sizes, and how many lists its ``lists`` filter may name.
CONTACTS_PAGE_DEFAULT = 50
CONTACTS_PAGE_MAX = 500
MAX_LISTS_FILTER = 25
#: The seed time (when a contact that never changed last changed), in Unix seconds.
SEED_UNIX = datetime.fromisoformat(SEED_TIME.replace("Z", "+00:00")).timestamp()


def _limit(request: Request, default: int, maximum: int, cursor: dict[str, Any]) -> int | None:
    raw = request.query_params.get("limit", cursor.get("limit"))
    if raw is None:
        return default
    try:
        value = int(raw)
    except ValueError:
        return None
    return value if 1 <= value <= maximum else None


def _decode_cursor(request: Request) -> dict[str, Any] | None:
    raw = request.query_params.get("cursor")
    if raw is None:
        return {}
    try:
        data = json.loads(base64.urlsafe_b64decode(raw + "=" * (-len(raw) % 4)))
    except ValueError:
        return None
    return data if isinstance(data, dict) else None


def _next_link(path: str, total: int, offset: int, limit: int, params: dict[str, Any]) -> dict[str, Any]:
    if offset + limit >= total:
        return {}
    cursor = {k: v for k, v in params.items() if v is not None} | {"offset": offset + limit, "limit": limit}
    token = base64.urlsafe_b64encode(json.dumps(cursor).encode()).rstrip(b"=").decode()
    return {"next": {"href": f"{path}?{urlencode({'cursor': token})}"}}


def build_router(state: SandboxState) -> APIRouter:
    """The ``/v3`` routes bound to ``state``."""
    return bind_routes(APIRouter(prefix="/v3"), state, ROUTES)


def _bad_request(state: SandboxState, message: str) -> Response:
    return errors.cc_error(400, VALIDATION, message, shape=state.config.cc_error_shape)


def _not_found(state: SandboxState, what: str) -> Response:
    return errors.cc_error(
        404, "not.found", f"The requested {what} was not found.", shape=state.config.cc_error_shape
    )


async def get_lists(state: SandboxState, request: Request) -> Response:
    """``GET /v3/contact_lists``."""
    cursor = _decode_cursor(request)
    limit = _limit(request, 50, 1000, cursor or {})
    if cursor is None or limit is None:
        return _bad_request(state, "limit must be between 1 and 1000 and cursor must be valid.")
    qp = request.query_params
    offset = int(cursor.get("offset", 0))
    count = qp.get("include_membership_count", cursor.get("imc"))
    count = count if count in MEMBERSHIP_COUNTS else None
    ids = list(state.cc.lists)
    body: dict[str, Any] = {
        "lists": [state.cc.list_json(i, count) for i in ids[offset : offset + limit]],
        "_links": _next_link("/v3/contact_lists", len(ids), offset, limit, {"imc": count}),
    }
    if qp.get("include_count") == "true":
        body["lists_count"] = len(ids)
    return errors.json_response(body)


async def get_list(state: SandboxState, request: Request) -> Response:
    """``GET /v3/contact_lists/{list_id}``."""
    list_id = request.path_params["list_id"]
    if not UUID_RE.fullmatch(list_id):
        return _bad_request(state, "list_id is not a valid UUID.")
    if list_id not in state.cc.lists:
        return _not_found(state, "contact list")
    count = request.query_params.get("include_membership_count")
    if count is not None and count not in MEMBERSHIP_COUNTS:
        return _bad_request(state, "include_membership_count does not have a valid value")
    return errors.json_response(state.cc.list_json(list_id, count))


async def get_custom_fields(state: SandboxState, request: Request) -> Response:
    """``GET /v3/contact_custom_fields``."""
    cursor = _decode_cursor(request)
    limit = _limit(request, 50, 100, cursor or {})
    if cursor is None or limit is None:
        return _bad_request(state, "limit must be between 1 and 100.")
    offset = int(cursor.get("offset", 0))
    fields = list(state.cc.custom_fields.values())
    return errors.json_response(
        {
            "custom_fields": [state.cc.field_json(f) for f in fields[offset : offset + limit]],
            "_links": _next_link("/v3/contact_custom_fields", len(fields), offset, limit, {}),
        }
    )


async def json_import(state: SandboxState, request: Request) -> Response:
    """``POST /v3/activities/contacts_json_import``."""
    body = await request.body()
    # Parsing and checking a 4 MB import takes most of a second of CPU: off the event loop, so
    # other requests are still seen (and rate-limited) when they arrive, as on a real server.
    try:
        data = await asyncio.to_thread(json.loads, body)
    except ValueError:
        data = None
    rows = data.get("import_data") if isinstance(data, dict) else None
    rec = state.recorder
    rec.count_import("cc", len(rows) if isinstance(rows, list) else 0, len(body))
    if not isinstance(data, dict):
        return _bad_request(state, "The request body is not a valid JSON object.")
    if not isinstance(rows, list) or not rows:
        return _bad_request(state, "import_data must contain at least one contact.")
    if len(rows) >= MAX_IMPORT_CONTACTS:
        rec.violation("cc", "too_many_contacts", limit=MAX_IMPORT_CONTACTS - 1, actual=len(rows))
        return _bad_request(state, f"import_data must contain fewer than {MAX_IMPORT_CONTACTS} contacts.")
    try:
        list_ids = state.cc.check_list_ids(data.get("list_ids"))
        if len(body) > MAX_IMPORT_BODY_BYTES:
            # The real API reads only the first 4 MB and says nothing about the rest.
            kept = count_rows_within(body, MAX_IMPORT_BODY_BYTES)
            rec.violation(
                "cc",
                "body_truncated",
                limit=MAX_IMPORT_BODY_BYTES,
                actual=len(body),
                contacts_sent=len(rows),
                contacts_kept=kept,
            )
            rec.counters["cc.contacts_lost_to_truncation"] += len(rows) - kept
            rows = rows[:kept]
        parsed = await asyncio.to_thread(state.cc.parse_import, rows)
    except ImportRejected as exc:
        rec.counters["cc.imports_rejected"] += 1
        return _bad_request(state, str(exc))
    now = state.now()
    activity = state.cc.queue("import", list_ids, now, request.scope.get(JOB_FAULT_KEY), rows=parsed)
    return errors.json_response(state.cc.activity_json(activity, now), 201)


async def remove_memberships(state: SandboxState, request: Request) -> Response:
    """``POST /v3/activities/remove_list_memberships``."""
    data = await errors.json_body(request)
    source = data.get("source") if isinstance(data, dict) else None
    ids = source.get("contact_ids") if isinstance(source, dict) else None
    if not isinstance(ids, list) or not ids:
        return _bad_request(
            state, "source.contact_ids must list the contacts to remove (the sandbox supports only it)."
        )
    if len(ids) > MAX_REMOVE_CONTACT_IDS:
        state.recorder.violation("cc", "too_many_contact_ids", limit=MAX_REMOVE_CONTACT_IDS, actual=len(ids))
        return _bad_request(state, f"source.contact_ids may contain at most {MAX_REMOVE_CONTACT_IDS} ids.")
    if not all(isinstance(i, str) and UUID_RE.fullmatch(i) for i in ids):
        return _bad_request(state, "source.contact_ids must contain contact ids (UUID).")
    try:
        list_ids = state.cc.check_list_ids(data.get("list_ids") if isinstance(data, dict) else None)
    except ImportRejected as exc:
        return _bad_request(state, str(exc))
    nums = [n for n in (contact_num_of(i) for i in ids) if n is not None]
    now = state.now()
    activity = state.cc.queue("remove", list_ids, now, request.scope.get(JOB_FAULT_KEY), contact_nums=nums)
    activity.items_total = len(ids)
    return errors.json_response(state.cc.activity_json(activity, now), 201)


async def contact_exports(state: SandboxState, request: Request) -> Response:
    """``POST /v3/activities/contact_exports``."""
    data = await errors.json_body(request)
    if not isinstance(data, dict):
        return _bad_request(state, "The request body is not a valid JSON object.")
    list_ids: list[str] = []
    if data.get("list_ids") is not None:
        try:
            list_ids = state.cc.check_list_ids(data.get("list_ids"))
        except ImportRejected as exc:
            return _bad_request(state, str(exc))
    fields = data.get("fields") or ["contact_id", "email_address"]
    if not isinstance(fields, list) or not all(f in EXPORT_FIELDS for f in fields):
        return _bad_request(state, f"fields may contain only {', '.join(EXPORT_FIELDS)}.")
    status = data.get("status", "all")
    if status not in EXPORT_STATUSES:
        return _bad_request(state, f"status must be one of {', '.join(EXPORT_STATUSES)}.")
    now = state.now()
    activity = state.cc.queue(
        "export",
        list_ids,
        now,
        request.scope.get(JOB_FAULT_KEY),
        export={"fields": list(dict.fromkeys(fields)), "status": status},
    )
    return errors.json_response(state.cc.activity_json(activity, now), 201)


async def contact_export_file(state: SandboxState, request: Request) -> Response:
    """``GET /v3/contact_exports/{file_id}``."""
    text = state.cc.export_files.get(request.path_params["file_id"])
    if text is None:
        return _not_found(state, "export file")
    body = text.encode()
    state.recorder.counters["cc.bytes_downloaded"] += len(body)
    return Response(body, media_type="text/csv")


async def get_activity(state: SandboxState, request: Request) -> Response:
    """``GET /v3/activities/{activity_id}``."""
    now = state.now()
    state.settle(now)
    activity = state.cc.activities.get(request.path_params["activity_id"])
    if activity is None:
        return _not_found(state, "activity")
    state.recorder.counters[f"cc.activity_polls.{activity.kind}"] += 1
    return errors.json_response(state.cc.activity_json(activity, now))


async def get_contacts(state: SandboxState, request: Request) -> Response:
    """``GET /v3/contacts``: by ``email`` or ``lists``, with a ``status`` (every contact but the deleted
    ones by default, as the spec says), ``updated_after``/``updated_before`` and
    ``optout_after``/``optout_before`` (when the contact unsubscribed)."""
    cursor = _decode_cursor(request)
    limit = _limit(request, CONTACTS_PAGE_DEFAULT, CONTACTS_PAGE_MAX, cursor or {})
    if cursor is None or limit is None:
        return _bad_request(state, "limit must be between 1 and 500 and cursor must be valid.")
    qp = request.query_params
    params = {key: qp.get(key, cursor.get(key)) for key in _CONTACTS_PARAMS}
    include = set(_comma_separated(params["include"] or ""))
    offset = int(cursor.get("offset", 0))
    nums = _filtered_contacts(state, params)
    if isinstance(nums, Response):
        return nums
    contacts = [state.cc.by_num(n) for n in nums[offset : offset + limit]]
    body: dict[str, Any] = {
        "contacts": [state.cc.contact_json(c, include) for c in contacts if c is not None],
        "_links": _next_link("/v3/contacts", len(nums), offset, limit, params),
    }
    if qp.get("include_count") == "true":
        body["contacts_count"] = len(nums)
    response = errors.json_response(body)
    state.recorder.counters["cc.bytes_downloaded"] += len(response.body)
    return response


def _filtered_contacts(state: SandboxState, params: dict[str, Any]) -> Sequence[int] | Response:
    """The numbers of the contacts ``GET /v3/contacts`` answers with, or its error answer."""
    statuses = _comma_separated(params["status"] or "")
    if not all(s in CONTACT_STATUSES for s in statuses):
        return _bad_request(state, f"status must be one or more of {', '.join(CONTACT_STATUSES)}.")
    window = _updated_window(params["updated_after"], params["updated_before"])
    if window is None:
        return _bad_request(state, "updated_after and updated_before must be ISO-8601 date-times.")
    opt_out_window = _updated_window(params["optout_after"], params["optout_before"])
    if opt_out_window is None:
        return _bad_request(state, "optout_after and optout_before must be ISO-8601 date-times.")
    selected = _selected_contacts(state, params["email"], params["lists"])
    if isinstance(selected, Response):
        return selected
    nums = _updated_within(state.cc, _with_status(state.cc, selected, statuses), window)
    return _opted_out_within(state.cc, nums, opt_out_window)


#: The query parameters of ``GET /v3/contacts`` that its next page's cursor carries.
_CONTACTS_PARAMS = (
    "email",
    "lists",
    "include",
    "status",
    "updated_after",
    "updated_before",
    "optout_after",
    "optout_before",
)


def _parse_time(text: str | None) -> float | None:
    """An ISO-8601 date-time (``Z`` or an offset; UTC when it has none) as Unix seconds."""
    if text is None:
        return None
    when = datetime.fromisoformat(text.strip().replace("Z", "+00:00"))
    return (when if when.tzinfo else when.replace(tzinfo=timezone.utc)).timestamp()


def _updated_window(after: str | None, before: str | None) -> tuple[float | None, float | None] | None:
    """The ``updated_after``/``updated_before`` bounds in Unix seconds, or None if one is malformed."""
    try:
        return _parse_time(after), _parse_time(before)
    except ValueError:
        return None


def _updated_within(
    cc: CCStore, nums: Sequence[int], window: tuple[float | None, float | None]
) -> Sequence[int]:
    """The contacts among ``nums`` last updated strictly within ``window``."""
    after, before = window
    if after is None and before is None:
        return nums
    low = -math.inf if after is None else after
    high = math.inf if before is None else before
    return [n for n in nums if low < (cc.updated_at(n) or SEED_UNIX) < high]


def _opted_out_within(
    cc: CCStore, nums: Sequence[int], window: tuple[float | None, float | None]
) -> Sequence[int]:
    """The contacts among ``nums`` that unsubscribed strictly within ``window`` (no bound: all of
    them, unsubscribed or not)."""
    after, before = window
    if after is None and before is None:
        return nums
    low = -math.inf if after is None else after
    high = math.inf if before is None else before
    return [n for n in nums if low < cc.opted_out_at.get(n, -math.inf) < high]


def _comma_separated(text: str) -> list[str]:
    return [part.strip() for part in text.split(",") if part.strip()]


def _selected_contacts(
    state: SandboxState, email: str | None, lists_param: str | None
) -> Sequence[int] | Response:
    """The numbers of the contacts ``GET /v3/contacts`` selects by ``email`` or ``lists``, or its error answer."""
    cc = state.cc
    if email is not None:
        contact = cc.by_email(email)
        return [contact.num] if contact is not None else []
    if not lists_param:
        return range(1, len(cc.keys_by_num) + 1)
    list_ids = tuple(_comma_separated(lists_param))
    if len(list_ids) > MAX_LISTS_FILTER or not all(UUID_RE.fullmatch(lid) for lid in list_ids):
        return _bad_request(state, "lists must be up to 25 list ids (UUID).")
    if not all(lid in cc.lists for lid in list_ids):
        return _not_found(state, "contact list")
    return cc.member_nums(list_ids)


def _with_status(cc: CCStore, nums: Sequence[int], statuses: list[str]) -> Sequence[int]:
    """The contacts among ``nums`` with one of the ``statuses``; none given: all but the deleted."""
    if "all" in statuses:
        return nums
    if not statuses:
        return [n for n in nums if n not in cc.deleted] if cc.deleted else nums
    wanted = set(statuses)
    return [n for n in nums if (c := cc.by_num(n)) is not None and cc.status_of(c) in wanted]


#: Every route, in the order they are matched.
ROUTES: tuple[Route, ...] = (
    ("GET", "/contact_lists", get_lists),
    ("GET", "/contact_lists/{list_id}", get_list),
    ("GET", "/contact_custom_fields", get_custom_fields),
    ("POST", "/activities/contacts_json_import", json_import),
    ("POST", "/activities/remove_list_memberships", remove_memberships),
    ("POST", "/activities/contact_exports", contact_exports),
    ("GET", "/contact_exports/{file_id}", contact_export_file),
    ("GET", "/activities/{activity_id}", get_activity),
    ("GET", "/contacts", get_contacts),
)
