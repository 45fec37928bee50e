"""What the sandbox saw: request counts, limit violations, rejections and a request log.

The log never holds a credential: ``Api-Token``, ``Authorization`` (Bearer, Basic, ...) and the other
headers in :data:`CREDENTIAL_HEADERS` are replaced by :func:`redact_credential`'s fingerprint, since
a client pointed at the sandbox by mistake may send real keys. Request bodies (segment emails,
refresh tokens in token requests) are kept only when ``record_bodies`` is on.
"""

from __future__ import annotations

import contextlib
import hashlib
import time
from collections import Counter, defaultdict, deque
from typing import Any

BODY_LOG_LIMIT = 64 * 1024
MAX_VIOLATIONS_KEPT = 1000
#: Request headers (lowercase) whose values are credentials: logged only as a fingerprint.
CREDENTIAL_HEADERS = frozenset({"api-token", "authorization", "proxy-authorization", "cookie"})


def redact_credential(value: str) -> str:
    """What the request log shows for a credential header's ``value``.

    The scheme of an ``Authorization`` value stays (``Bearer``, ``Basic``); the credential becomes the
    first 12 hex digits of its SHA-256, enough for a test to tell which credential arrived
    (``redact_credential(f"Bearer {token}")``) and too little to recover it.
    """
    scheme, space, credential = value.strip().partition(" ")
    if not space or not scheme.isalpha():
        scheme, credential = "", value.strip()
    digest = hashlib.sha256(credential.strip().encode()).hexdigest()[:12]
    return f"{scheme} <redacted sha256:{digest}>".lstrip()


class Recorder:
    """Counters and the bounded request log. Holds no credential, and no contact data apart from the
    bodies it logs when ``record_bodies`` is on."""

    def __init__(self, log_size: int, record_bodies: bool, body_budget: int) -> None:
        self.record_bodies = record_bodies
        self.body_budget = body_budget
        self.endpoints: dict[str, dict[str, Counter[str]]] = defaultdict(lambda: defaultdict(Counter))
        self.import_requests: Counter[str] = Counter()
        self.contacts_received: Counter[str] = Counter()
        self.largest_batch: Counter[str] = Counter()
        self.largest_body: Counter[str] = Counter()
        self.violations: list[dict[str, Any]] = []
        self.violation_count = 0
        self.rejections: Counter[str] = Counter()
        self.auth_failures: Counter[str] = Counter()
        self.faults: Counter[str] = Counter()
        self.counters: Counter[str] = Counter()
        self.log: deque[dict[str, Any]] = deque(maxlen=log_size)
        self._bodies: deque[dict[str, Any]] = deque()
        self._body_bytes = 0
        self._seq = 0

    def count_response(self, api: str, endpoint: str, status: int | str) -> None:
        """Count one answered request under its route template."""
        self.endpoints[api][endpoint][str(status)] += 1

    def count_import(self, api: str, contacts: int, body_bytes: int) -> None:
        """Count an import request that reached the handler and track the largest ones."""
        self.import_requests[api] += 1
        self.contacts_received[api] += contacts
        self.largest_batch[api] = max(self.largest_batch[api], contacts)
        self.largest_body[api] = max(self.largest_body[api], body_bytes)

    def violation(self, api: str, kind: str, **numbers: Any) -> None:
        """Record a broken API limit (numbers only, never contact data)."""
        self.violation_count += 1
        self.counters[f"{api}.violation.{kind}"] += 1
        if len(self.violations) < MAX_VIOLATIONS_KEPT:
            self.violations.append({"api": api, "kind": kind, **numbers})

    def log_request(
        self,
        api: str,
        method: str,
        path: str,
        query: str,
        headers: dict[str, str],
        body: bytes,
    ) -> dict[str, Any]:
        """Append a request to the log and return its entry (the status is filled in later).

        Credential headers are logged as :func:`redact_credential` fingerprints; the body only when
        ``record_bodies`` is on.
        """
        self._seq += 1
        kept: bytes | None = None
        if self.record_bodies and body:
            kept = body[:BODY_LOG_LIMIT]
        entry: dict[str, Any] = {
            "seq": self._seq,
            "time": time.time(),
            "api": api,
            "method": method,
            "path": path,
            "query": query,
            "headers": {
                name: redact_credential(value) if name.lower() in CREDENTIAL_HEADERS else value
                for name, value in headers.items()
            },
            "body": kept,
            "body_bytes": len(body),
            "body_truncated": kept is not None and len(kept) < len(body),
            "status": None,
        }
        if len(self.log) == self.log.maxlen and self.log:
            self._forget_body(self.log[0])
        self.log.append(entry)
        if kept:
            self._bodies.append(entry)
            self._body_bytes += len(kept)
            while self._body_bytes > self.body_budget and self._bodies:
                self._forget_body(self._bodies[0])
        return entry

    def _forget_body(self, entry: dict[str, Any]) -> None:
        body = entry.get("body")
        if body is None:
            return
        entry["body"] = None
        entry["body_evicted"] = True
        self._body_bytes -= len(body)
        if self._bodies and self._bodies[0] is entry:
            self._bodies.popleft()
        else:
            with contextlib.suppress(ValueError):
                self._bodies.remove(entry)

    def requests(self, api: str | None = None, limit: int | None = None) -> list[dict[str, Any]]:
        """The logged requests, oldest first, bodies decoded as text."""
        entries = [e for e in self.log if api is None or e["api"] == api]
        if limit is not None:
            entries = entries[-limit:] if limit > 0 else []
        out = []
        for e in entries:
            item = dict(e)
            item["headers"] = dict(e["headers"])
            body = e["body"]
            item["body"] = body.decode("utf-8", errors="replace") if body is not None else None
            out.append(item)
        return out

    def snapshot(self) -> dict[str, Any]:
        """Every counter as JSON."""
        requests: dict[str, Any] = {}
        for api, by_endpoint in self.endpoints.items():
            requests[api] = {
                "total": sum(sum(c.values()) for c in by_endpoint.values()),
                "by_endpoint": {
                    ep: {"count": sum(c.values()), "statuses": dict(c)}
                    for ep, c in sorted(by_endpoint.items())
                },
            }
        imports = {
            api: {
                "requests": self.import_requests[api],
                "contacts_received": self.contacts_received[api],
                "largest_batch": self.largest_batch[api],
                "largest_body_bytes": self.largest_body[api],
            }
            for api in ("ac", "cc")
        }
        return {
            "requests": requests,
            "imports": imports,
            "limit_violations": list(self.violations),
            "limit_violation_count": self.violation_count,
            "rate_limit_rejections": dict(self.rejections),
            "rate_limit_rejections_total": sum(self.rejections.values()),
            "auth_failures": dict(self.auth_failures),
            "faults_injected": dict(self.faults),
            "counters": dict(sorted(self.counters.items())),
        }
