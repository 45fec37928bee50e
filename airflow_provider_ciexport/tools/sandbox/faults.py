"""Fault-injection rules set through ``/_sandbox/faults``."""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

#: Kinds that make an accepted import's job end badly instead of answering differently.
JOB_KINDS = {
    "ac": frozenset({"job_failed", "job_interrupted"}),
    "cc": frozenset({"activity_failed", "activity_cancelled", "activity_timed_out"}),
}
#: Kinds that change how a request is handled without replacing its answer.
COMBINABLE_KINDS = frozenset({"slow", "drop_after"}) | JOB_KINDS["ac"] | JOB_KINDS["cc"]
#: Kinds allowed per API.
KINDS_BY_API = {
    "ac": frozenset(
        {"status", "drop", "drop_after", "slow", "throttled", "rate_limit_400", "quoting_error", "redirect"}
    )
    | JOB_KINDS["ac"],
    "cc": frozenset(
        {"status", "drop", "drop_after", "slow", "throttled", "quota_exceeded", "quoting_error", "redirect"}
    )
    | JOB_KINDS["cc"],
    "oauth": frozenset({"status", "drop", "drop_after", "slow", "redirect"}),
}
#: Statuses a ``redirect`` rule may answer (``Location`` set to the rule's ``location``).
REDIRECT_STATUSES = frozenset({301, 302, 303, 307, 308})
#: The fields a rule's JSON form may have.
RULE_FIELDS = frozenset(
    {"api", "kind", "path", "method", "every", "times", "status", "delay_s", "retry_after", "location"}
)
DEFAULT_STATUS = 503
#: A validation error that quotes the refused contact is a 400 unless the rule says otherwise.
_KIND_DEFAULT_STATUS = {"quoting_error": 400, "redirect": 302}
#: Rule settings checked by :data:`_SETTING_CHECKS`, with their defaults (``status``'s depends on the kind).
_SETTING_DEFAULTS: dict[str, Any] = {
    "method": None,
    "every": 1,
    "times": None,
    "status": DEFAULT_STATUS,
    "delay_s": 5.0,
    "retry_after": None,
}


def _is_int_at_least(value: Any, minimum: int) -> bool:
    return isinstance(value, int) and value >= minimum


#: Each setting's check and the message when it fails, in the order they are checked.
_SETTING_CHECKS: tuple[tuple[str, Callable[[Any], bool], str], ...] = (
    ("method", lambda v: v is None or isinstance(v, str), "method must be a string or null"),
    ("every", lambda v: _is_int_at_least(v, 1), "every must be an integer >= 1"),
    ("times", lambda v: v is None or _is_int_at_least(v, 0), "times must be an integer >= 0 or null"),
    ("status", lambda v: isinstance(v, int) and 100 <= v <= 599, "status must be an HTTP status code"),
    ("delay_s", lambda v: isinstance(v, (int, float)) and v >= 0, "delay_s must be >= 0"),
    (
        "retry_after",
        lambda v: v is None or _is_int_at_least(v, 0),
        "retry_after must be an integer >= 0 or null",
    ),
)


class FaultRuleError(ValueError):
    """A rule that cannot be used."""


def _api_and_kind(data: dict[str, Any]) -> tuple[str, str]:
    api, kind = data.get("api"), data.get("kind")
    if api not in KINDS_BY_API:
        raise FaultRuleError("api must be 'ac', 'cc' or 'oauth'")
    if kind not in KINDS_BY_API[api]:
        raise FaultRuleError(f"kind must be one of {sorted(KINDS_BY_API[api])} for api {api!r}")
    return api, kind


def _path_regex(path: Any) -> re.Pattern[str] | None:
    try:
        return re.compile(path) if path else None
    except (re.error, TypeError) as exc:
        raise FaultRuleError(f"bad path regex: {exc}") from exc


def _check_location(kind: str, status: Any, location: Any) -> None:
    """A redirect needs a redirect status and a location; no other kind takes a location."""
    if kind == "redirect":
        if status not in REDIRECT_STATUSES:
            raise FaultRuleError(f"a redirect's status must be one of {sorted(REDIRECT_STATUSES)}")
        if not isinstance(location, str) or not location.strip():
            raise FaultRuleError("a redirect needs a location (the URL it points to)")
    elif location is not None:
        raise FaultRuleError("location is only for kind 'redirect'")


@dataclass
class FaultRule:
    """One rule: on every ``every``-th matching request, at most ``times`` times, do ``kind``.

    ``redirect`` answers ``status`` (302 unless given) with ``Location: <location>``: a load balancer
    or an account move sending the client to another host, which must not get the credentials.
    """

    id: int
    api: str
    kind: str
    path: str | None = None
    method: str | None = None
    every: int = 1
    times: int | None = None
    status: int = 503
    delay_s: float = 5.0
    retry_after: int | None = None
    location: str | None = None
    matched: int = 0
    fired: int = 0
    _regex: re.Pattern[str] | None = field(default=None, repr=False)

    @classmethod
    def from_dict(cls, rule_id: int, data: dict[str, Any]) -> FaultRule:
        """Build and check a rule from its JSON form.

        :raises FaultRuleError: when a field is missing, unknown or out of range.
        """
        unknown = set(data) - RULE_FIELDS
        if unknown:
            raise FaultRuleError(f"unknown rule fields: {sorted(unknown)}")
        api, kind = _api_and_kind(data)
        path = data.get("path")
        regex = _path_regex(path)
        settings = {name: data.get(name, default) for name, default in _SETTING_DEFAULTS.items()}
        settings["status"] = data.get("status", _KIND_DEFAULT_STATUS.get(kind, DEFAULT_STATUS))
        location = data.get("location")
        _check_location(kind, settings["status"], location)
        for name, is_valid, message in _SETTING_CHECKS:
            if not is_valid(settings[name]):
                raise FaultRuleError(message)
        method = settings["method"]
        return cls(
            id=rule_id,
            api=api,
            kind=kind,
            path=path,
            method=method.upper() if method else None,
            every=settings["every"],
            times=settings["times"],
            status=settings["status"],
            delay_s=float(settings["delay_s"]),
            retry_after=settings["retry_after"],
            location=location,
            _regex=regex,
        )

    def to_dict(self) -> dict[str, Any]:
        """JSON form, with how often the rule matched and fired."""
        return {
            "id": self.id,
            "api": self.api,
            "kind": self.kind,
            "path": self.path,
            "method": self.method,
            "every": self.every,
            "times": self.times,
            "status": self.status,
            "delay_s": self.delay_s,
            "retry_after": self.retry_after,
            "location": self.location,
            "matched": self.matched,
            "fired": self.fired,
        }

    def applies_to(self, api: str, method: str, path: str, job_request: bool) -> bool:
        """Whether a request is one this rule counts (before ``every``/``times``)."""
        if api != self.api or (self.method and self.method != method):
            return False
        if self._regex is not None and self._regex.search(path) is None:
            return False
        # Job faults count only the requests that create jobs.
        return job_request or self.kind not in JOB_KINDS.get(self.api, frozenset())


class FaultInjector:
    """The active rules, in the order they were added."""

    def __init__(self) -> None:
        self.rules: list[FaultRule] = []
        self._next_id = 1

    def add(self, data: dict[str, Any]) -> FaultRule:
        """Add a rule from its JSON form.

        :raises FaultRuleError: when the rule is malformed.
        """
        rule = FaultRule.from_dict(self._next_id, data)
        self._next_id += 1
        self.rules.append(rule)
        return rule

    def clear(self) -> None:
        """Remove every rule."""
        self.rules.clear()

    def fire(self, api: str, method: str, path: str, job_request: bool) -> list[FaultRule]:
        """Count the request against the rules, in order, and return those that fire for it.

        Rules that replace the answer (a status, a drop, a limit error) end the evaluation: the
        rules after them do not see the request. ``slow``, ``drop_after`` and job faults combine.
        """
        fired: list[FaultRule] = []
        for rule in self.rules:
            if not rule.applies_to(api, method, path, job_request):
                continue
            if rule.times is not None and rule.fired >= rule.times:
                continue
            rule.matched += 1
            if rule.matched % rule.every:
                continue
            rule.fired += 1
            fired.append(rule)
            if rule.kind not in COMBINABLE_KINDS:
                break
        return fired
