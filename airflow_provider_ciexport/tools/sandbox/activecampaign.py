"""ActiveCampaign API v3 routes (``/api/3/...``); auth and limits are applied by the gate."""

from __future__ import annotations

import bisect
import json
from collections.abc import Sequence
from datetime import datetime
from typing import Any

from fastapi import APIRouter, Request
from starlette.responses import Response

from airflow_provider_ciexport.tools.sandbox import errors
from airflow_provider_ciexport.tools.sandbox.ac_store import (
    ACCOUNT_TZ,
    MAX_CONTACTS_PER_IMPORT,
    MAX_IMPORT_BODY_BYTES,
    ACContact,
    ACStore,
)
from airflow_provider_ciexport.tools.sandbox.gate import JOB_FAULT_KEY
from airflow_provider_ciexport.tools.sandbox.routing import Route, bind_routes
from airflow_provider_ciexport.tools.sandbox.state import SandboxState

MAX_PAGE = 100
DEFAULT_PAGE = 20


def _int_param(value: str | None) -> int | None:
    if value is None or not value.strip().lstrip("-").isdigit():
        return None
    return int(value)


def _page(request: Request) -> tuple[int, int]:
    """``limit`` (capped at 100, as the API does) and ``offset``."""
    limit = _int_param(request.query_params.get("limit"))
    offset = _int_param(request.query_params.get("offset"))
    limit = DEFAULT_PAGE if limit is None or limit < 1 else min(limit, MAX_PAGE)
    return limit, max(offset or 0, 0)


def _meta(total: int) -> dict[str, Any]:
    return {"total": str(total)}


def build_router(state: SandboxState) -> APIRouter:
    """The ``/api/3`` routes bound to ``state``."""
    return bind_routes(APIRouter(prefix="/api/3"), state, ROUTES)


async def get_lists(state: SandboxState, request: Request) -> Response:
    """``GET /api/3/lists``."""
    limit, offset = _page(request)
    ids = sorted(state.ac.lists)
    lists = [state.ac.list_json(i) for i in ids[offset : offset + limit]]
    return errors.json_response({"lists": lists, "meta": _meta(len(ids))})


async def get_list(state: SandboxState, request: Request) -> Response:
    """``GET /api/3/lists/{list_id}``."""
    raw = request.path_params["list_id"]
    list_id = _int_param(raw)
    if list_id is None or list_id not in state.ac.lists:
        return errors.ac_message(404, f"No Result found for _List with id {raw[:40]}")
    return errors.json_response({"list": state.ac.list_json(list_id)})


async def get_fields(state: SandboxState, request: Request) -> Response:
    """``GET /api/3/fields``."""
    limit, offset = _page(request)
    perstag = request.query_params.get("filters[perstag]")
    fields = sorted(state.ac.fields.values(), key=lambda f: f.id)
    if perstag:
        fields = [f for f in fields if f.perstag.lower() == perstag.lower()]
    page = [state.ac.field_json(f) for f in fields[offset : offset + limit]]
    return errors.json_response(
        {"fieldOptions": [], "fieldRels": [], "fields": page, "meta": _meta(len(fields))}
    )


async def bulk_import(state: SandboxState, request: Request) -> Response:
    """``POST /api/3/import/bulk_import``."""
    body = await request.body()
    try:
        data = json.loads(body)
    except ValueError:
        data = None
    contacts = data.get("contacts") if isinstance(data, dict) else None
    rec = state.recorder
    rec.count_import("ac", len(contacts) if isinstance(contacts, list) else 0, len(body))
    if len(body) >= MAX_IMPORT_BODY_BYTES:
        rec.violation("ac", "body_too_large", limit=MAX_IMPORT_BODY_BYTES, actual=len(body))
        return errors.ac_bulk_error(
            413,
            "Request payload too large. The import was not queued for processing.",
            [f"The request body must be smaller than {MAX_IMPORT_BODY_BYTES} bytes."],
        )
    if not isinstance(contacts, list) or not contacts:
        return errors.ac_bulk_error(
            400, errors.AC_VALIDATION_MESSAGE, ["Field' contacts' is required and must be a list."]
        )
    if len(contacts) > MAX_CONTACTS_PER_IMPORT:
        rec.violation("ac", "too_many_contacts", limit=MAX_CONTACTS_PER_IMPORT, actual=len(contacts))
        return errors.ac_bulk_error(
            400,
            errors.AC_VALIDATION_MESSAGE,
            [f"Up to {MAX_CONTACTS_PER_IMPORT} contacts may be imported in a single request."],
        )
    if len(contacts) < 10:
        rec.counters["ac.imports_under_10_contacts"] += 1
    parsed, reasons = state.ac.validate_bulk(contacts)
    if reasons:
        rec.counters["ac.batches_rejected_by_validation"] += 1
        return errors.ac_bulk_error(400, errors.AC_VALIDATION_MESSAGE, reasons)
    job = state.ac.queue_import(parsed, state.now(), request.scope.get(JOB_FAULT_KEY))
    return errors.json_response(
        {
            "Success": 1,
            "queued_contacts": len(parsed),
            "batchId": job.batch_id,
            "message": "Contact import queued",
        }
    )


async def import_info(state: SandboxState, request: Request) -> Response:
    """``GET /api/3/import/info``."""
    batch_id = request.query_params.get("batchId")
    if not batch_id:
        return errors.json_response({"success": 0, "message": "'batchId' is a required field."}, 400)
    now = state.now()
    state.settle(now)
    job = state.ac.jobs.get(batch_id)
    if job is None:
        return errors.ac_message(404, f"No Result found for import with batchId {batch_id[:40]}")
    return errors.json_response(state.ac.job_status(job, now))


async def contact_sync(state: SandboxState, request: Request) -> Response:
    """``POST /api/3/contact/sync``."""
    data = await errors.json_body(request)
    raw = data.get("contact") if isinstance(data, dict) else None
    problem, item = state.ac.parse_sync(raw)
    if problem is not None or item is None:
        return errors.json_response(
            {
                "errors": [
                    {
                        "title": problem,
                        "detail": "",
                        "code": "field_invalid",
                        "source": {"pointer": "/data/attributes/contact"},
                    }
                ]
            },
            422,
        )
    contact, _ = state.ac.upsert(item)
    field_values = [
        {"contact": str(contact.id), "field": fid, "value": value, "id": f"{contact.id}{fid}"}
        for fid, value in item.fields.items()
    ]
    return errors.json_response({"fieldValues": field_values, "contact": state.ac.contact_json(contact)}, 201)


async def contact_lists(state: SandboxState, request: Request) -> Response:
    """``POST /api/3/contactLists``."""
    data = await errors.json_body(request)
    raw = data.get("contactList") if isinstance(data, dict) else None
    if not isinstance(raw, dict):
        return errors.ac_errors(422, "contactList is required.")
    list_id = _int_param(str(raw.get("list")))
    contact_id = _int_param(str(raw.get("contact")))
    status = _int_param(str(raw.get("status")))
    if list_id is None or list_id not in state.ac.lists:
        return errors.ac_message(404, f"No Result found for _List with id {str(raw.get('list'))[:40]}")
    contact = state.ac.by_id(contact_id) if contact_id is not None else None
    if contact is None:
        return errors.ac_message(
            404, f"No Result found for Subscriber with id {str(raw.get('contact'))[:40]}"
        )
    if status == 1:
        state.ac.subscribe(contact, list_id, explicit=True)
    elif status == 2:
        state.ac.unsubscribe(contact, list_id)
    else:
        return errors.ac_errors(422, "status must be 1 (subscribe) or 2 (unsubscribe).")
    return errors.json_response(
        {
            "contacts": [state.ac.contact_json(contact)],
            "contactList": {
                "contact": str(contact.id),
                "list": str(list_id),
                "status": status,
                "links": {},
                "id": f"{list_id}-{contact.id}",
            },
        }
    )


async def get_contacts(state: SandboxState, request: Request) -> Response:
    """``GET /api/3/contacts``: by ``email``, or by membership status on ``listid``, narrowed by
    ``ids``, ``id_greater``, ``id_less``, ``filters[updated_after]`` and ``filters[updated_before]``
    and ordered by ``orders[id]``, as the spec documents. The sandbox counts a change of any of the
    contact's memberships as a change of the contact (the spec does not say)."""
    limit, offset = _page(request)
    email = request.query_params.get("email")
    list_param = request.query_params.get("listid")
    ac = state.ac
    list_id = _int_param(list_param) if list_param is not None else None
    if list_param is not None and (list_id is None or list_id not in ac.lists):
        return errors.json_response({"contacts": [], "meta": _meta(0)})
    window = _updated_filter(request)
    if window is None:
        return errors.ac_message(422, "filters[updated_after] and filters[updated_before] must be dates.")
    ids = _id_filters(request, _candidates(request, ac, email, list_id))
    if window != (None, None):
        ids = [i for i in ids if _within(ac.changed_at(i), window)]
    found = [c for c in (ac.by_id(i) for i in ids[offset : offset + limit]) if c is not None]
    response = errors.json_response(
        {"contacts": [ac.contact_json(c) for c in found], "meta": _meta(len(ids))}
    )
    state.recorder.counters["ac.bytes_downloaded"] += len(response.body)
    return response


def _id_filters(request: Request, ids: Sequence[int]) -> Sequence[int]:
    """``ids`` (ascending; not copied when no filter applies) narrowed by the id filters of ``GET /contacts`` and in ``orders[id]`` order.

    ``ids`` (also ``ids[]``; repeated, or comma-separated) keeps only those ids; ``id_greater`` and
    ``id_less`` are strict bounds; ``orders[id]=desc`` reverses the default ascending order.
    """
    qp = request.query_params
    listed = [part for value in (*qp.getlist("ids"), *qp.getlist("ids[]")) for part in value.split(",")]
    if listed:
        keep = {n for n in (_int_param(p) for p in listed) if n is not None}
        ids = [i for i in ids if i in keep]
    greater = _int_param(qp.get("id_greater"))
    if greater is not None:
        ids = ids[bisect.bisect_right(ids, greater) :]
    less = _int_param(qp.get("id_less"))
    if less is not None:
        ids = ids[: bisect.bisect_left(ids, less)]
    if qp.get("orders[id]", "").lower() == "desc":
        ids = ids[::-1]
    return ids


def _candidates(request: Request, ac: ACStore, email: str | None, list_id: int | None) -> Sequence[int]:
    """The ids ``GET /contacts`` selects by ``email`` or ``listid`` and ``status`` (1 active,
    2 unsubscribed: the membership status on ``listid``), in order."""
    status = _int_param(request.query_params.get("status"))
    wanted = (1, 2) if status not in (1, 2) else (status,)
    if email is not None:
        return [c.id for c in _contact_with_email(ac, email, list_id, wanted)]
    return _contact_ids(ac, list_id, wanted)


def _updated_filter(request: Request) -> tuple[float | None, float | None] | None:
    """``filters[updated_after]``/``filters[updated_before]`` as Unix seconds (a date is its start in
    the account's time zone), or None if one is not a date."""
    bounds: list[float | None] = []
    for name in ("filters[updated_after]", "filters[updated_before]"):
        text = request.query_params.get(name)
        if text is None:
            bounds.append(None)
            continue
        try:
            when = datetime.fromisoformat(text.strip())
        except ValueError:
            return None
        bounds.append((when if when.tzinfo else when.replace(tzinfo=ACCOUNT_TZ)).timestamp())
    return bounds[0], bounds[1]


def _within(at: float, window: tuple[float | None, float | None]) -> bool:
    after, before = window
    return (after is None or at >= after) and (before is None or at < before)


def _contact_with_email(
    ac: ACStore, email: str, list_id: int | None, wanted: tuple[int, ...]
) -> list[ACContact]:
    """The contact with ``email`` if it has a ``wanted`` status on ``list_id`` (any list if None)."""
    contact = ac.by_email(email)
    matches = contact is not None and (list_id is None or ac.status_on(contact, list_id) in wanted)
    return [contact] if matches and contact is not None else []


def _contact_ids(ac: ACStore, list_id: int | None, wanted: tuple[int, ...]) -> list[int] | range:
    """The ids of the contacts with a ``wanted`` status on ``list_id``, in order; all of them if None."""
    if list_id is None:
        return ac.live_ids()
    if wanted == (2,):
        return ac.unsubscribed_ids(list_id)
    if wanted == (1,):
        return ac.member_ids(list_id)
    return sorted({*ac.member_ids(list_id), *ac.unsubscribed_ids(list_id)})


async def get_contact_lists(state: SandboxState, request: Request) -> Response:
    """``GET /api/3/contacts/{contact_id}/contactLists``."""
    raw = request.path_params["contact_id"]
    contact_id = _int_param(raw)
    contact = state.ac.by_id(contact_id) if contact_id is not None else None
    if contact is None:
        return errors.ac_message(404, f"No Result found for Subscriber with id {raw[:40]}")
    return errors.json_response({"contactLists": state.ac.contact_lists_json(contact)})


#: Every route, in the order they are matched.
ROUTES: tuple[Route, ...] = (
    ("GET", "/lists", get_lists),
    ("GET", "/lists/{list_id}", get_list),
    ("GET", "/fields", get_fields),
    ("POST", "/import/bulk_import", bulk_import),
    ("GET", "/import/info", import_info),
    ("POST", "/contact/sync", contact_sync),
    ("POST", "/contactLists", contact_lists),
    ("GET", "/contacts", get_contacts),
    ("GET", "/contacts/{contact_id}/contactLists", get_contact_lists),
)
