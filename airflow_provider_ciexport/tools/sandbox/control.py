"""The control API (``/_sandbox/...``) tests and scripts use to steer and inspect the sandbox."""

from __future__ import annotations

import json
from typing import Any

from fastapi import APIRouter, Request
from starlette.responses import Response

from airflow_provider_ciexport.tools.sandbox.ac_store import UNSUBSCRIBED_BY
from airflow_provider_ciexport.tools.sandbox.config import ConfigError
from airflow_provider_ciexport.tools.sandbox.errors import json_response
from airflow_provider_ciexport.tools.sandbox.faults import FaultRuleError
from airflow_provider_ciexport.tools.sandbox.routing import Route, bind_routes
from airflow_provider_ciexport.tools.sandbox.state import SandboxState


def _error(message: str, status: int = 400) -> Response:
    return json_response({"error": message}, status)


async def _object_body(request: Request, *, optional: bool = False) -> dict[str, Any] | None:
    raw = await request.body()
    if not raw.strip() and optional:
        return {}
    try:
        data = json.loads(raw)
    except ValueError:
        return None
    return data if isinstance(data, dict) else None


def _flag(request: Request, name: str) -> bool:
    return request.query_params.get(name, "").lower() in ("1", "true", "yes")


def build_router(state: SandboxState) -> APIRouter:
    """The ``/_sandbox`` routes bound to ``state``."""
    return bind_routes(APIRouter(prefix="/_sandbox"), state, ROUTES)


async def health(state: SandboxState, request: Request) -> Response:
    """``GET /_sandbox/health``."""
    return json_response({"status": "ok"})


async def reset(state: SandboxState, request: Request) -> Response:
    """``POST /_sandbox/reset``."""
    body = await _object_body(request, optional=True)
    if body is None:
        return _error("the body must be a JSON object of config overrides")
    try:
        state.reset(body)
    except ConfigError as exc:
        return _error(str(exc))
    return json_response({"config": state.config.to_dict()})


async def get_config(state: SandboxState, request: Request) -> Response:
    """``GET /_sandbox/config``."""
    return json_response(state.config.to_dict())


async def set_config(state: SandboxState, request: Request) -> Response:
    """``POST /_sandbox/config``."""
    body = await _object_body(request)
    if body is None:
        return _error("the body must be a JSON object")
    try:
        state.configure(body)
    except ConfigError as exc:
        return _error(str(exc))
    return json_response(state.config.to_dict())


async def list_faults(state: SandboxState, request: Request) -> Response:
    """``GET /_sandbox/faults``."""
    return json_response({"rules": [r.to_dict() for r in state.faults.rules]})


async def add_fault(state: SandboxState, request: Request) -> Response:
    """``POST /_sandbox/faults``."""
    body = await _object_body(request)
    if body is None:
        return _error("the body must be a JSON object")
    try:
        rule = state.faults.add(body)
    except FaultRuleError as exc:
        return _error(str(exc))
    return json_response({"rule": rule.to_dict()}, 201)


async def clear_faults(state: SandboxState, request: Request) -> Response:
    """``DELETE /_sandbox/faults``."""
    removed = len(state.faults.rules)
    state.faults.clear()
    return json_response({"removed": removed})


async def expire_tokens(state: SandboxState, request: Request) -> Response:
    """``POST /_sandbox/cc/expire_tokens``."""
    return json_response({"expired": state.oauth.expire_all()})


async def refresh_tokens(state: SandboxState, request: Request) -> Response:
    """``GET /_sandbox/cc/refresh_token``."""
    return json_response(
        {
            "refresh_tokens": list(state.oauth.refresh_tokens),
            "rotating": state.config.cc_rotating_refresh_tokens,
        }
    )


async def stats(state: SandboxState, request: Request) -> Response:
    """``GET /_sandbox/stats``."""
    state.settle()
    return json_response(state.stats())


async def requests_log(state: SandboxState, request: Request) -> Response:
    """``GET /_sandbox/requests``."""
    api = request.query_params.get("api")
    raw_limit = request.query_params.get("limit")
    limit = int(raw_limit) if raw_limit and raw_limit.isdigit() else None
    return json_response({"requests": state.recorder.requests(api, limit)})


async def ac_list_contacts(state: SandboxState, request: Request) -> Response:
    """``GET /_sandbox/ac/lists/{list_id}/contacts``."""
    state.settle()
    raw = request.path_params["list_id"]
    if not raw.isdigit() or int(raw) not in state.ac.lists:
        return _error("unknown list", 404)
    list_id = int(raw)
    ac = state.ac
    ids = list(ac.member_ids(list_id))
    if _flag(request, "include_unsubscribed"):
        ids = sorted({*ids, *ac.unsubscribed[list_id]})
    contacts = [ac.control_json(c) for c in (ac.by_id(i) for i in ids) if c is not None]
    return json_response({"list_id": list_id, "count": len(contacts), "contacts": contacts})


async def cc_list_contacts(state: SandboxState, request: Request) -> Response:
    """``GET /_sandbox/cc/lists/{list_id}/contacts``."""
    state.settle()
    list_id = request.path_params["list_id"]
    if list_id not in state.cc.lists:
        return _error("unknown list", 404)
    cc = state.cc
    nums = cc.member_nums((list_id,))
    contacts = [cc.control_json(c) for c in (cc.by_num(n) for n in nums) if c is not None]
    return json_response({"list_id": list_id, "count": len(contacts), "contacts": contacts})


async def ac_contacts(state: SandboxState, request: Request) -> Response:
    """``GET /_sandbox/ac/contacts``."""
    state.settle()
    email = request.query_params.get("email")
    ac = state.ac
    found = [ac.by_email(email)] if email is not None else list(ac.contacts.values())
    contacts = [ac.control_json(c) for c in found if c is not None]
    return json_response({"count": len(contacts), "contacts": contacts})


async def cc_contacts(state: SandboxState, request: Request) -> Response:
    """``GET /_sandbox/cc/contacts``."""
    state.settle()
    email = request.query_params.get("email")
    cc = state.cc
    found = [cc.by_email(email)] if email is not None else list(cc.contacts.values())
    contacts = [cc.control_json(c) for c in found if c is not None]
    return json_response({"count": len(contacts), "contacts": contacts})


async def ac_unsubscribe(state: SandboxState, request: Request) -> Response:
    """Status 2 on a list, as the person's own action (``by: "person"``, the default: a campaign's
    unsubscribe link), an automation's (``"automation"``), the API's (``"api"``) or another app's
    through the API (``"app"``); ``"all_lists": true`` instead of ``list_id`` is "unsubscribe from
    all email". ``"at"`` (Unix seconds) says when it happened (default now)."""
    state.settle()
    body = await _object_body(request)
    if body is None or not isinstance(body.get("email"), str):
        return _error(
            'the body must be {"list_id": <int>, "email": <str>, "by": "person"|"automation"|"api"|"app", '
            '"at": <seconds>}'
        )
    by = body.get("by", "person")
    if by not in UNSUBSCRIBED_BY:
        return _error(f'"by" must be one of {", ".join(UNSUBSCRIBED_BY)}')
    at = body.get("at")
    if at is not None and not isinstance(at, (int, float)):
        return _error('"at" must be a number of seconds since 1970')
    contact = state.ac.ensure_contact(body["email"])
    if body.get("all_lists") is True:
        state.ac.unsubscribe_everywhere(contact, at=at)
        return json_response(state.ac.control_json(contact))
    list_id = body.get("list_id")
    if not isinstance(list_id, int) or list_id not in state.ac.lists:
        return _error("unknown list", 404)
    state.ac.unsubscribe(contact, list_id, by=by, at=at)
    return json_response(state.ac.control_json(contact))


async def ac_exclude(state: SandboxState, request: Request) -> Response:
    """Put an address on the account's exclusion list (created as a contact if unknown)."""
    state.settle()
    body = await _object_body(request)
    if body is None or not isinstance(body.get("email"), str):
        return _error('the body must be {"email": <str>}')
    contact = state.ac.ensure_contact(body["email"])
    state.ac.excluded.add(body["email"].lower())
    return json_response(state.ac.control_json(contact))


async def ac_signup(state: SandboxState, request: Request) -> Response:
    """The person subscribed to a list through a sign-up form (not through the export)."""
    state.settle()
    body = await _object_body(request)
    if body is None or not isinstance(body.get("email"), str):
        return _error('the body must be {"list_id": <int>, "email": <str>}')
    list_id = body.get("list_id")
    if not isinstance(list_id, int) or list_id not in state.ac.lists:
        return _error("unknown list", 404)
    at = body.get("at")
    if at is not None and not isinstance(at, (int, float)):
        return _error('"at" must be a number of seconds since 1970')
    contact = state.ac.ensure_contact(body["email"])
    state.ac.subscribe(contact, list_id, explicit=True, by_person=True, at=at)
    return json_response(state.ac.control_json(contact))


async def cc_signup(state: SandboxState, request: Request) -> Response:
    """The person joined a list through a sign-up form (not through the export)."""
    state.settle()
    body = await _object_body(request)
    if body is None or not isinstance(body.get("email"), str):
        return _error('the body must be {"list_id": <uuid>, "email": <str>}')
    list_id = body.get("list_id")
    if list_id not in state.cc.lists:
        return _error("unknown list", 404)
    contact = state.cc.by_email(body["email"]) or state.cc.upsert(body["email"], {}, {}, frozenset())
    contact.unsubscribed = False
    state.cc.revive(contact)  # a sign-up restores a deleted contact, as the spec says of sign-up forms
    state.cc.add_member(contact, list_id)
    return json_response(state.cc.control_json(contact))


async def cc_unsubscribe(state: SandboxState, request: Request) -> Response:
    """``POST /_sandbox/cc/unsubscribe``."""
    state.settle()
    body = await _object_body(request)
    if body is None or not isinstance(body.get("email"), str):
        return _error('the body must be {"list_id": <uuid, optional>, "email": <str>}')
    list_id = body.get("list_id")
    if list_id is not None and list_id not in state.cc.lists:
        return _error("unknown list", 404)
    contact = state.cc.unsubscribe(body["email"])
    return json_response(state.cc.control_json(contact))


def _email_of(body: dict[str, Any] | None) -> str | None:
    """The body's ``email``, without the spaces around it (matched case-insensitively later)."""
    email = body.get("email") if body is not None else None
    return email.strip() if isinstance(email, str) and email.strip() else None


_VENDORS = {"ac": "ActiveCampaign", "cc": "Constant Contact"}


def _unknown_contact(api: str, email: str) -> Response:
    return _error(
        f"no {_VENDORS[api]} contact has the address {email!r}: check the address, or create the "
        f"contact first (an import, or POST /_sandbox/{api}/signup)",
        404,
    )


async def _named_contact(state: SandboxState, request: Request, api: str) -> tuple[str, Any] | Response:
    """The email a ``{"email": ...}`` body names and its contact at ``api`` (``ac``/``cc``), or the
    error answer; the sandbox's time is settled first."""
    state.settle()
    email = _email_of(await _object_body(request))
    if email is None:
        return _error('the body must be {"email": <str>}')
    contact = (state.ac if api == "ac" else state.cc).by_email(email)
    if contact is None:
        return _unknown_contact(api, email)
    return email, contact


async def ac_delete_contact(state: SandboxState, request: Request) -> Response:
    """A user deleted the contact in ActiveCampaign (as ``DELETE /api/3/contacts/{id}``): it and every
    membership of it are gone; its address, imported again, is a new contact with a new id."""
    named = await _named_contact(state, request, "ac")
    if isinstance(named, Response):
        return named
    _, contact = named
    gone = {"id": contact.id, "email": state.ac.attrs(contact)["email"]}
    state.ac.delete(contact)
    return json_response({"deleted": gone})


async def ac_remove_from_list(state: SandboxState, request: Request) -> Response:
    """A user took the contact off one list in ActiveCampaign's app: status 2 on it (``by: "user"``),
    the only way API v3 represents a contact no longer on a list; the contact and its other lists stay."""
    state.settle()
    body = await _object_body(request)
    email, list_id = _email_of(body), (body or {}).get("list_id")
    if email is None or not isinstance(list_id, int) or isinstance(list_id, bool):
        return _error('the body must be {"list_id": <int>, "email": <str>}')
    if list_id not in state.ac.lists:
        return _error(f"unknown list {list_id}: the lists are {sorted(state.ac.lists)}", 404)
    contact = state.ac.by_email(email)
    if contact is None:
        return _unknown_contact("ac", email)
    if state.ac.status_on(contact, list_id) != 1:
        return _error(f"{email!r} is not subscribed to list {list_id}: nothing to remove", 409)
    state.ac.unsubscribe(contact, list_id, by="user")
    return json_response(state.ac.control_json(contact))


async def ac_empty_account(state: SandboxState, request: Request) -> Response:
    """A user deleted every ActiveCampaign contact; lists, fields, tags, settings and jobs stay."""
    state.settle()
    return json_response({"deleted": state.ac.delete_all()})


async def cc_delete_contact(state: SandboxState, request: Request) -> Response:
    """A user deleted the contact in Constant Contact (as ``DELETE /v3/contacts/{id}``): kept with its
    deletion time and off every list; an import or a sign-up of its address revives it."""
    named = await _named_contact(state, request, "cc")
    if isinstance(named, Response):
        return named
    email, contact = named
    if contact.num in state.cc.deleted:
        return _error(f"{email!r} is already deleted", 409)
    state.cc.delete(contact)
    return json_response(state.cc.control_json(contact))


async def cc_remove_from_list(state: SandboxState, request: Request) -> Response:
    """A user took the contact off one list in Constant Contact's app (its membership is gone, as
    ``remove_list_memberships`` does); the contact, its status and its other lists stay."""
    state.settle()
    body = await _object_body(request)
    email, list_id = _email_of(body), (body or {}).get("list_id")
    if email is None or not isinstance(list_id, str):
        return _error('the body must be {"list_id": <uuid>, "email": <str>}')
    if list_id not in state.cc.lists:
        return _error(f"unknown list {list_id[:40]!r}: the lists are {list(state.cc.lists)}", 404)
    contact = state.cc.by_email(email)
    if contact is None:
        return _unknown_contact("cc", email)
    if contact.num not in state.cc.members[list_id]:
        return _error(f"{email!r} is not a member of list {list_id}: nothing to remove", 409)
    state.cc.remove_member(contact, list_id)
    return json_response(state.cc.control_json(contact))


async def cc_empty_account(state: SandboxState, request: Request) -> Response:
    """A user deleted every Constant Contact contact (each kept as deleted, as one by one); lists,
    custom fields, settings, activities and OAuth tokens stay."""
    state.settle()
    return json_response({"deleted": state.cc.delete_all()})


#: Every route, in the order they are matched.
ROUTES: tuple[Route, ...] = (
    ("GET", "/health", health),
    ("POST", "/reset", reset),
    ("GET", "/config", get_config),
    ("POST", "/config", set_config),
    ("GET", "/faults", list_faults),
    ("POST", "/faults", add_fault),
    ("DELETE", "/faults", clear_faults),
    ("POST", "/cc/expire_tokens", expire_tokens),
    ("GET", "/cc/refresh_token", refresh_tokens),
    ("GET", "/stats", stats),
    ("GET", "/requests", requests_log),
    ("GET", "/ac/lists/{list_id}/contacts", ac_list_contacts),
    ("GET", "/cc/lists/{list_id}/contacts", cc_list_contacts),
    ("GET", "/ac/contacts", ac_contacts),
    ("GET", "/cc/contacts", cc_contacts),
    ("POST", "/ac/unsubscribe", ac_unsubscribe),
    ("POST", "/ac/exclude", ac_exclude),
    ("POST", "/ac/signup", ac_signup),
    ("POST", "/cc/signup", cc_signup),
    ("POST", "/cc/unsubscribe", cc_unsubscribe),
    ("POST", "/ac/delete_contact", ac_delete_contact),
    ("POST", "/ac/remove_from_list", ac_remove_from_list),
    ("POST", "/ac/empty_account", ac_empty_account),
    ("POST", "/cc/delete_contact", cc_delete_contact),
    ("POST", "/cc/remove_from_list", cc_remove_from_list),
    ("POST", "/cc/empty_account", cc_empty_account),
)
