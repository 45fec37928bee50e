"""Run the sandbox with uvicorn in a background thread."""

from __future__ import annotations

import logging
import socket
import threading
import time
from types import TracebackType
from typing import Any

import uvicorn

from airflow_provider_ciexport.tools.sandbox import connections
from airflow_provider_ciexport.tools.sandbox.app import create_app
from airflow_provider_ciexport.tools.sandbox.client import SandboxClient
from airflow_provider_ciexport.tools.sandbox.config import SandboxConfig
from airflow_provider_ciexport.tools.sandbox.state import SandboxState

log = logging.getLogger(__name__)

HOST = "127.0.0.1"


class PortUnavailableError(OSError):
    """The port asked for is taken (or not ours to use)."""


class SandboxServer:
    """The sandbox listening on 127.0.0.1, usable as a context manager.

    :param config: startup config (``/_sandbox/reset`` returns to it).
    :param port: port to listen on; 0 picks a free one.
    """

    def __init__(self, config: SandboxConfig | None = None, port: int = 0) -> None:
        self.state = SandboxState(config)
        self.port = port
        self._server: uvicorn.Server | None = None
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        """Base URL, e.g. ``http://127.0.0.1:54321`` (the ActiveCampaign connection host)."""
        return f"http://{HOST}:{self.port}"

    @property
    def cc_api_base_url(self) -> str:
        """Constant Contact ``api_base_url`` pointing at the sandbox."""
        return connections.cc_api_base_url(self.url)

    @property
    def cc_token_url(self) -> str:
        """Constant Contact token endpoint of the sandbox."""
        return connections.cc_token_url(self.url)

    def ac_connection(self, **extra: Any) -> dict[str, Any]:
        """The fields of an ``activecampaign`` connection to this sandbox (``AIRFLOW_CONN_*`` JSON).

        :param extra: connection extras, e.g. ``timeout=1``.
        """
        return connections.ac_connection(self.url, **extra)

    def cc_connection(self, **extra: Any) -> dict[str, Any]:
        """The fields of a ``constantcontact`` connection to this sandbox (``AIRFLOW_CONN_*`` JSON).

        :param extra: more extras, or replacements (e.g. ``refresh_token=...``).
        """
        return connections.cc_connection(self.url, **extra)

    @property
    def client(self) -> SandboxClient:
        """A control-API client for this server."""
        return SandboxClient(self.url)

    def start(self, timeout: float = 10.0) -> SandboxServer:
        """Start listening and return once the server accepts requests.

        :raises RuntimeError: when it does not come up within ``timeout`` seconds.
        """
        if self._thread is not None:
            return self
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((HOST, self.port))
        except OSError as exc:
            sock.close()
            raise PortUnavailableError(exc.errno, f"port {self.port} on {HOST}: {exc.strerror}") from None
        self.port = sock.getsockname()[1]
        config = uvicorn.Config(
            create_app(self.state),
            log_level="warning",
            access_log=False,  # access lines carry query strings (emails)
            lifespan="off",
            proxy_headers=False,
            server_header=False,
            timeout_graceful_shutdown=2,
        )
        server = uvicorn.Server(config)
        self._server = server

        self._thread = threading.Thread(
            target=server.run, kwargs={"sockets": [sock]}, name=f"sandbox-{self.port}", daemon=True
        )
        self._thread.start()
        deadline = time.monotonic() + timeout
        while not server.started:
            if not self._thread.is_alive() or time.monotonic() > deadline:
                self.stop()
                raise RuntimeError("the sandbox server did not start")
            time.sleep(0.01)
        log.info("sandbox listening on %s", self.url)
        return self

    def stop(self) -> None:
        """Stop the server and wait for its thread."""
        if self._server is not None:
            self._server.should_exit = True
        if self._thread is not None:
            self._thread.join(timeout=10)
        self._server = None
        self._thread = None

    def __enter__(self) -> SandboxServer:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()
