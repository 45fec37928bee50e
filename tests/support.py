"""Helpers shared by the tests."""

from __future__ import annotations

import http.server
import json
import threading
from types import TracebackType
from typing import Any

import pytest


def set_connection(monkeypatch: pytest.MonkeyPatch, conn_id: str, **fields: Any) -> str:
    """Define an Airflow connection through the environment, as a deployment's secrets would."""
    monkeypatch.setenv(f"AIRFLOW_CONN_{conn_id.upper()}", json.dumps(fields))
    return conn_id


def calls(stats: dict[str, Any], api: str, endpoint: str) -> int:
    """How many requests the sandbox received for ``endpoint`` (e.g. ``"POST /api/3/import/bulk_import"``)."""
    by_endpoint = stats["requests"].get(api, {}).get("by_endpoint", {})
    return int(by_endpoint.get(endpoint, {}).get("count", 0))


def posts(stats: dict[str, Any], api: str) -> list[str]:
    """Every POST endpoint of ``api`` the sandbox received."""
    return [e for e in stats["requests"].get(api, {}).get("by_endpoint", {}) if e.startswith("POST")]


class ForeignHost:
    """A second HTTP server on 127.0.0.1, standing for another host a redirect may point to.

    It answers every request 200 with :attr:`answer` (a token answer and an API-looking body, so a
    client that follows a redirect here "succeeds") and records what arrived: :attr:`received` holds
    each request's method, path, headers (lowercase names) and body.
    """

    answer: dict[str, Any] = {
        "access_token": "foreign-access-token",
        "expires_in": 3600,
        "refresh_token": "foreign-refresh-token",
        "list": {"id": "1", "name": "foreign"},
        "activity_id": "foreign-activity",
    }

    def __init__(self) -> None:
        self.received: list[dict[str, Any]] = []
        catcher = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def _record(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                catcher.received.append(
                    {
                        "method": self.command,
                        "path": self.path,
                        "headers": {k.lower(): v for k, v in self.headers.items()},
                        "body": self.rfile.read(length).decode("utf-8", "replace"),
                    }
                )
                body = json.dumps(catcher.answer).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            do_GET = do_POST = do_PUT = do_DELETE = _record

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self._server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}"
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    def __enter__(self) -> ForeignHost:
        self._thread.start()
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=5)


def logged_report(messages: list[str]) -> dict[str, str]:
    """The figures of the export report in log ``messages``: ``{"read": "1,951", ...}``."""
    start = next(i for i, m in enumerate(messages) if m.endswith("export report:"))
    figures: dict[str, str] = {}
    for message in messages[start + 1 :]:
        if not message.startswith("  "):
            break
        key, _, value = message.strip().partition("  ")
        figures[key] = value.strip()
    return figures
