"""Fault-injection rules set through ``/_sandbox/faults``."""

from __future__ import annotations

import re
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


class FaultRuleError(ValueError):
    """A rule that cannot be used."""


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
        allowed = {
            "api",
            "kind",
            "path",
            "method",
            "every",
            "times",
            "status",
            "delay_s",
            "retry_after",
            "location",
        }
        unknown = set(data) - allowed
        if unknown:
            raise FaultRuleError(f"unknown rule fields: {sorted(unknown)}")
        api, kind = data.get("api"), data.get("kind")
        if api not in KINDS_BY_API:
            raise FaultRuleError("api must be 'ac', 'cc' or 'oauth'")
        if kind not in KINDS_BY_API[api]:
            raise FaultRuleError(f"kind must be one of {sorted(KINDS_BY_API[api])} for api {api!r}")
        path = data.get("path")
        try:
            regex = re.compile(path) if path else None
        except (re.error, TypeError) as exc:
            raise FaultRuleError(f"bad path regex: {exc}") from exc
        method = data.get("method")
        every = data.get("every", 1)
        times = data.get("times")
        # A validation error that quotes the refused contact is a 400 unless the rule says otherwise.
        status = data.get("status", 400 if kind == "quoting_error" else 302 if kind == "redirect" else 503)
        location = data.get("location")
        if kind == "redirect":
            if status not in REDIRECT_STATUSES:
                raise FaultRuleError(f"a redirect's status must be one of {sorted(REDIRECT_STATUSES)}")
            if not isinstance(location, str) or not location.strip():
                raise FaultRuleError("a redirect needs a location (the URL it points to)")
        elif location is not None:
            raise FaultRuleError("location is only for kind 'redirect'")
        delay_s = data.get("delay_s", 5.0)
        retry_after = data.get("retry_after")
        if method is not None and not isinstance(method, str):
            raise FaultRuleError("method must be a string or null")
        if not isinstance(every, int) or every < 1:
            raise FaultRuleError("every must be an integer >= 1")
        if times is not None and (not isinstance(times, int) or times < 0):
            raise FaultRuleError("times must be an integer >= 0 or null")
        if not isinstance(status, int) or not 100 <= status <= 599:
            raise FaultRuleError("status must be an HTTP status code")
        if not isinstance(delay_s, (int, float)) or delay_s < 0:
            raise FaultRuleError("delay_s must be >= 0")
        if retry_after is not None and (not isinstance(retry_after, int) or retry_after < 0):
            raise FaultRuleError("retry_after must be an integer >= 0 or null")
        return cls(
            id=rule_id,
            api=api,
            kind=kind,
            path=path,
            method=method.upper() if method else None,
            every=every,
            times=times,
            status=status,
            delay_s=float(delay_s),
            retry_after=retry_after,
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
