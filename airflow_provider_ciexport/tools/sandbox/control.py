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
    router = APIRouter(prefix="/_sandbox")

    @router.get("/health")
    async def health() -> Response:
        return json_response({"status": "ok"})

    @router.post("/reset")
    async def reset(request: Request) -> Response:
        body = await _object_body(request, optional=True)
        if body is None:
            return _error("the body must be a JSON object of config overrides")
        try:
            state.reset(body)
        except ConfigError as exc:
            return _error(str(exc))
        return json_response({"config": state.config.to_dict()})

    @router.get("/config")
    async def get_config() -> Response:
        return json_response(state.config.to_dict())

    @router.post("/config")
    async def set_config(request: Request) -> Response:
        body = await _object_body(request)
        if body is None:
            return _error("the body must be a JSON object")
        try:
            state.configure(body)
        except ConfigError as exc:
            return _error(str(exc))
        return json_response(state.config.to_dict())

    @router.get("/faults")
    async def list_faults() -> Response:
        return json_response({"rules": [r.to_dict() for r in state.faults.rules]})

    @router.post("/faults")
    async def add_fault(request: Request) -> Response:
        body = await _object_body(request)
        if body is None:
            return _error("the body must be a JSON object")
        try:
            rule = state.faults.add(body)
        except FaultRuleError as exc:
            return _error(str(exc))
        return json_response({"rule": rule.to_dict()}, 201)

    @router.delete("/faults")
    async def clear_faults() -> Response:
        removed = len(state.faults.rules)
        state.faults.clear()
        return json_response({"removed": removed})

    @router.post("/cc/expire_tokens")
    async def expire_tokens() -> Response:
        return json_response({"expired": state.oauth.expire_all()})

    @router.get("/cc/refresh_token")
    async def refresh_tokens() -> Response:
        return json_response(
            {
                "refresh_tokens": list(state.oauth.refresh_tokens),
                "rotating": state.config.cc_rotating_refresh_tokens,
            }
        )

    @router.get("/stats")
    async def stats() -> Response:
        state.settle()
        return json_response(state.stats())

    @router.get("/requests")
    async def requests_log(request: Request) -> Response:
        api = request.query_params.get("api")
        raw_limit = request.query_params.get("limit")
        limit = int(raw_limit) if raw_limit and raw_limit.isdigit() else None
        return json_response({"requests": state.recorder.requests(api, limit)})

    @router.get("/ac/lists/{list_id}/contacts")
    async def ac_list_contacts(request: Request) -> Response:
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

    @router.get("/cc/lists/{list_id}/contacts")
    async def cc_list_contacts(request: Request) -> Response:
        state.settle()
        list_id = request.path_params["list_id"]
        if list_id not in state.cc.lists:
            return _error("unknown list", 404)
        cc = state.cc
        nums = cc.member_nums((list_id,))
        contacts = [cc.control_json(c) for c in (cc.by_num(n) for n in nums) if c is not None]
        return json_response({"list_id": list_id, "count": len(contacts), "contacts": contacts})

    @router.get("/ac/contacts")
    async def ac_contacts(request: Request) -> Response:
        state.settle()
        email = request.query_params.get("email")
        ac = state.ac
        found = [ac.by_email(email)] if email is not None else list(ac.contacts.values())
        contacts = [ac.control_json(c) for c in found if c is not None]
        return json_response({"count": len(contacts), "contacts": contacts})

    @router.get("/cc/contacts")
    async def cc_contacts(request: Request) -> Response:
        state.settle()
        email = request.query_params.get("email")
        cc = state.cc
        found = [cc.by_email(email)] if email is not None else list(cc.contacts.values())
        contacts = [cc.control_json(c) for c in found if c is not None]
        return json_response({"count": len(contacts), "contacts": contacts})

    @router.post("/ac/unsubscribe")
    async def ac_unsubscribe(request: Request) -> Response:
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
            return _error('"by" must be "person", "automation", "api" or "app"')
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

    @router.post("/ac/exclude")
    async def ac_exclude(request: Request) -> Response:
        """Put an address on the account's exclusion list (created as a contact if unknown)."""
        state.settle()
        body = await _object_body(request)
        if body is None or not isinstance(body.get("email"), str):
            return _error('the body must be {"email": <str>}')
        contact = state.ac.ensure_contact(body["email"])
        state.ac.excluded.add(body["email"].lower())
        return json_response(state.ac.control_json(contact))

    @router.post("/ac/signup")
    async def ac_signup(request: Request) -> Response:
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

    @router.post("/cc/signup")
    async def cc_signup(request: Request) -> Response:
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
        state.cc.add_member(contact, list_id)
        return json_response(state.cc.control_json(contact))

    @router.post("/cc/unsubscribe")
    async def cc_unsubscribe(request: Request) -> Response:
        state.settle()
        body = await _object_body(request)
        if body is None or not isinstance(body.get("email"), str):
            return _error('the body must be {"list_id": <uuid, optional>, "email": <str>}')
        list_id = body.get("list_id")
        if list_id is not None and list_id not in state.cc.lists:
            return _error("unknown list", 404)
        contact = state.cc.unsubscribe(body["email"])
        return json_response(state.cc.control_json(contact))

    return router
