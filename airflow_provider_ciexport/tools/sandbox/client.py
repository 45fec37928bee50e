"""A small ``requests`` wrapper around the sandbox's control API."""

from __future__ import annotations

from typing import Any

import requests
from requests.adapters import HTTPAdapter
from urllib3.util.retry import Retry


class SandboxClient:
    """Steer and inspect a running sandbox.

    :param url: the sandbox base URL, e.g. ``http://127.0.0.1:8025``.
    :param timeout: seconds per control call.
    """

    def __init__(self, url: str, timeout: float = 30.0) -> None:
        self.url = url.rstrip("/")
        self.timeout = timeout
        self.session = requests.Session()
        # A kept-alive connection the server closed while idle resets the next call on it: reads are
        # safe to send again (a POST or DELETE is not, as it may have run).
        reads_again = Retry(total=2, allowed_methods=frozenset({"GET"}), status=0, redirect=0)
        self.session.mount("http://", HTTPAdapter(max_retries=reads_again))

    def _call(self, method: str, path: str, json: Any = None, params: dict[str, Any] | None = None) -> Any:
        if json is None and method == "POST":
            json = {}  # the control API takes only declared JSON bodies
        response = self.session.request(
            method, f"{self.url}/_sandbox{path}", json=json, params=params, timeout=self.timeout
        )
        response.raise_for_status()
        return response.json()

    def health(self) -> bool:
        """Whether the sandbox answers."""
        try:
            return bool(self._call("GET", "/health")["status"] == "ok")
        except requests.RequestException:
            return False

    def reset(self, **overrides: Any) -> dict[str, Any]:
        """Back to the seeded state with the startup config plus ``overrides``; returns the config."""
        result: dict[str, Any] = self._call("POST", "/reset", json=overrides)["config"]
        return result

    def config(self) -> dict[str, Any]:
        """The current config."""
        result: dict[str, Any] = self._call("GET", "/config")
        return result

    def configure(self, **changes: Any) -> dict[str, Any]:
        """Change settings, keeping data; returns the new config."""
        result: dict[str, Any] = self._call("POST", "/config", json=changes)
        return result

    def add_fault(self, rule: dict[str, Any] | None = None, **fields: Any) -> dict[str, Any]:
        """Add a fault rule (a dict, keyword fields, or both); returns it with its id."""
        result: dict[str, Any] = self._call("POST", "/faults", json={**(rule or {}), **fields})["rule"]
        return result

    def faults(self) -> list[dict[str, Any]]:
        """The rules with how often each matched and fired."""
        result: list[dict[str, Any]] = self._call("GET", "/faults")["rules"]
        return result

    def clear_faults(self) -> int:
        """Remove every rule; returns how many there were."""
        return int(self._call("DELETE", "/faults")["removed"])

    def expire_cc_tokens(self) -> int:
        """Expire every Constant Contact access token now."""
        return int(self._call("POST", "/cc/expire_tokens")["expired"])

    def cc_refresh_tokens(self) -> list[str]:
        """The refresh tokens that currently work."""
        result: list[str] = self._call("GET", "/cc/refresh_token")["refresh_tokens"]
        return result

    def stats(self) -> dict[str, Any]:
        """Request counts, import sizes, limit violations, rejections, faults and store totals."""
        result: dict[str, Any] = self._call("GET", "/stats")
        return result

    def requests_log(self, api: str | None = None, limit: int | None = None) -> list[dict[str, Any]]:
        """The logged API requests (method, path, query, headers, body), oldest first."""
        params = {k: v for k, v in {"api": api, "limit": limit}.items() if v is not None}
        result: list[dict[str, Any]] = self._call("GET", "/requests", params=params)["requests"]
        return result

    def ac_list_contacts(self, list_id: int, include_unsubscribed: bool = False) -> list[dict[str, Any]]:
        """Every contact on an ActiveCampaign list with everything stored about it."""
        params = {"include_unsubscribed": "true"} if include_unsubscribed else None
        result: list[dict[str, Any]] = self._call("GET", f"/ac/lists/{list_id}/contacts", params=params)[
            "contacts"
        ]
        return result

    def cc_list_contacts(self, list_id: str) -> list[dict[str, Any]]:
        """Every contact on a Constant Contact list with everything stored about it."""
        result: list[dict[str, Any]] = self._call("GET", f"/cc/lists/{list_id}/contacts")["contacts"]
        return result

    def ac_contact(self, email: str) -> dict[str, Any] | None:
        """One ActiveCampaign contact by email, on a list or not."""
        found = self._call("GET", "/ac/contacts", params={"email": email})["contacts"]
        return found[0] if found else None

    def cc_contact(self, email: str) -> dict[str, Any] | None:
        """One Constant Contact contact by email, on a list or not."""
        found = self._call("GET", "/cc/contacts", params={"email": email})["contacts"]
        return found[0] if found else None

    def ac_unsubscribe(
        self, list_id: int | None, email: str, by: str = "person", at: float | None = None
    ) -> dict[str, Any]:
        """Status 2 for a contact on an ActiveCampaign list (created if unknown).

        :param list_id: the list; ``None`` for "unsubscribe from all email" (every list they are on).
        :param by: ``"person"`` (their own action, the default), ``"automation"``, ``"api"``,
            ``"app"`` (another app through the API) or ``"user"`` (a user in ActiveCampaign's app).
        :param at: when it happened (Unix seconds; default now).
        """
        body: dict[str, Any] = {"email": email, "by": by}
        if at is not None:
            body["at"] = at
        body.update({"all_lists": True} if list_id is None else {"list_id": list_id})
        result: dict[str, Any] = self._call("POST", "/ac/unsubscribe", json=body)
        return result

    def ac_exclude(self, email: str) -> dict[str, Any]:
        """Put an address on ActiveCampaign's exclusion list (created as a contact if unknown)."""
        result: dict[str, Any] = self._call("POST", "/ac/exclude", json={"email": email})
        return result

    def ac_signup(self, list_id: int, email: str, at: float | None = None) -> dict[str, Any]:
        """The person subscribes to an ActiveCampaign list through a sign-up form (``at``: when, in Unix
        seconds; default now)."""
        body: dict[str, Any] = {"list_id": list_id, "email": email}
        if at is not None:
            body["at"] = at
        result: dict[str, Any] = self._call("POST", "/ac/signup", json=body)
        return result

    def cc_signup(self, list_id: str, email: str) -> dict[str, Any]:
        """The person joins a Constant Contact list through a sign-up form."""
        result: dict[str, Any] = self._call("POST", "/cc/signup", json={"list_id": list_id, "email": email})
        return result

    def cc_unsubscribe(self, list_id: str | None, email: str) -> dict[str, Any]:
        """Mark a contact unsubscribed in Constant Contact (account-wide; created if unknown)."""
        result: dict[str, Any] = self._call(
            "POST", "/cc/unsubscribe", json={"list_id": list_id, "email": email}
        )
        return result

    def ac_delete_contact(self, email: str) -> dict[str, Any]:
        """A user deletes an ActiveCampaign contact (and its memberships); returns its ``id`` and ``email``."""
        result: dict[str, Any] = self._call("POST", "/ac/delete_contact", json={"email": email})["deleted"]
        return result

    def ac_remove_from_list(self, list_id: int, email: str) -> dict[str, Any]:
        """A user takes a contact off one ActiveCampaign list (status 2, ``by: "user"``)."""
        result: dict[str, Any] = self._call(
            "POST", "/ac/remove_from_list", json={"list_id": list_id, "email": email}
        )
        return result

    def ac_empty_account(self) -> int:
        """A user deletes every ActiveCampaign contact; returns how many."""
        return int(self._call("POST", "/ac/empty_account")["deleted"])

    def cc_delete_contact(self, email: str) -> dict[str, Any]:
        """A user deletes a Constant Contact contact (kept as deleted, off every list)."""
        result: dict[str, Any] = self._call("POST", "/cc/delete_contact", json={"email": email})
        return result

    def cc_remove_from_list(self, list_id: str, email: str) -> dict[str, Any]:
        """A user takes a contact off one Constant Contact list."""
        result: dict[str, Any] = self._call(
            "POST", "/cc/remove_from_list", json={"list_id": list_id, "email": email}
        )
        return result

    def cc_empty_account(self) -> int:
        """A user deletes every Constant Contact contact; returns how many were deleted."""
        return int(self._call("POST", "/cc/empty_account")["deleted"])

    def close(self) -> None:
        """Close the HTTP session."""
        self.session.close()
