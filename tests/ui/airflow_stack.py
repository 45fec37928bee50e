"""A real Airflow (API server, scheduler, DAG processor) on 127.0.0.1 with the provider and the sandbox.

Everything lives in a throwaway AIRFLOW_HOME; settings and connections inherited from the environment
are dropped, so the UI test never touches a real metadata database or a real account. The example
DAGs are served from the repository's ``example_dags``; the segment database is SQLite with generated
profiles; the ActiveCampaign and Constant Contact connections are NOT predefined: the test creates
them through the UI's own form.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from types import TracebackType
from typing import IO, Any

import requests
from cryptography.fernet import Fernet

from airflow_provider_ciexport.tools.sandbox import SandboxServer
from airflow_provider_ciexport.tools.sandbox.profiles import generate_profiles

REPO = Path(__file__).resolve().parents[2]
HOST = "127.0.0.1"


def free_port() -> int:
    """A TCP port of 127.0.0.1 nobody listens on right now."""
    with socket.socket() as sock:
        sock.bind((HOST, 0))
        return int(sock.getsockname()[1])


def _signal_group(proc: subprocess.Popen[bytes], sig: signal.Signals) -> None:
    """Signal the process group that ``proc`` leads (it was started in a session of its own)."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, sig)


class AirflowStack:
    """Airflow's API server, scheduler and DAG processor, plus the sandbox, for one UI test session.

    :param workdir: where the Airflow home, logs and the profiles database go (recreated).
    :param profiles: how many customer profiles to generate.
    """

    def __init__(self, workdir: Path, profiles: int = 2_000) -> None:
        self.workdir = workdir
        self.home = workdir / "airflow-home"
        self.logs = workdir / "logs"
        self.profiles = profiles
        self.port = free_port()
        self.url = f"http://{HOST}:{self.port}"
        self.sandbox = SandboxServer()
        self._procs: list[tuple[str, subprocess.Popen[bytes], IO[bytes]]] = []
        self._token: str | None = None

    def env(self) -> dict[str, str]:
        """The environment of every Airflow process of this stack."""
        env = {
            key: value
            for key, value in os.environ.items()
            if not key.startswith(("AIRFLOW__", "AIRFLOW_CONN_", "AIRFLOW_VAR_"))
        }
        profiles_db = {"conn_type": "sqlite", "host": str(self.workdir / "profiles.db")}
        env.update(
            {
                "AIRFLOW_HOME": str(self.home),
                "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": f"sqlite:///{self.home / 'airflow.db'}",
                "AIRFLOW__CORE__DAGS_FOLDER": str(REPO / "example_dags"),
                "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
                "AIRFLOW__CORE__UNIT_TEST_MODE": "False",
                "AIRFLOW__CORE__EXECUTOR": "LocalExecutor",
                "AIRFLOW__CORE__PARALLELISM": "4",
                "AIRFLOW__CORE__FERNET_KEY": self._fernet_key,
                "AIRFLOW__CORE__TEST_CONNECTION": "Enabled",
                "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_ALL_ADMINS": "True",
                "AIRFLOW__CORE__EXECUTION_API_SERVER_URL": f"{self.url}/execution/",
                "AIRFLOW__API__HOST": HOST,
                "AIRFLOW__API__PORT": str(self.port),
                "AIRFLOW__API__BASE_URL": self.url,
                "AIRFLOW__API__WORKERS": "1",
                "AIRFLOW__API_AUTH__JWT_SECRET": self._jwt_secret,
                "AIRFLOW__DAG_PROCESSOR__REFRESH_INTERVAL": "5",
                "AIRFLOW__SCHEDULER__SCHEDULER_HEARTBEAT_SEC": "2",
                "AIRFLOW__LOGGING__LOGGING_LEVEL": "INFO",
                "AIRFLOW_CONN_PROFILES_DB": json.dumps(profiles_db),
            }
        )
        return env

    def start(self, timeout: float = 240.0) -> AirflowStack:
        """Migrate the database, generate the profiles, start everything; return once the UI answers."""
        shutil.rmtree(self.workdir, ignore_errors=True)
        self.logs.mkdir(parents=True)
        self.home.mkdir(parents=True)
        self._fernet_key = Fernet.generate_key().decode()
        self._jwt_secret = secrets.token_urlsafe(64)
        env = self.env()
        airflow = [sys.executable, "-m", "airflow"]
        with (self.logs / "db-migrate.log").open("wb") as out:
            subprocess.run(
                [*airflow, "db", "migrate"], env=env, stdout=out, stderr=subprocess.STDOUT, check=True
            )
        generate_profiles(self.workdir / "profiles.db", count=self.profiles)
        self.sandbox.start()
        for name, args in (
            ("api-server", ["api-server", "--port", str(self.port), "--host", HOST]),
            ("scheduler", ["scheduler"]),
            ("dag-processor", ["dag-processor"]),
        ):
            out = (self.logs / f"{name}.log").open("wb")
            # A session of its own: stop() ends the process group, task runners included.
            proc = subprocess.Popen(
                [*airflow, *args], env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
            )
            self._procs.append((name, proc, out))
        self._wait_until_up(timeout)
        return self

    def _wait_until_up(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for name, proc, _ in self._procs:
                if proc.poll() is not None:
                    raise RuntimeError(
                        f"airflow {name} exited with {proc.returncode}; see {self.logs}/{name}.log"
                    )
            try:
                dags = self.api("GET", "/api/v2/dags", params={"dag_id_pattern": "ciexport"})
                if dags.get("total_entries", 0) >= 1:
                    return
            except (requests.RequestException, ValueError):
                pass
            time.sleep(2)
        raise RuntimeError(f"Airflow did not come up within {timeout:.0f} s; see {self.logs}")

    def token(self) -> str:
        """A JWT of the simple auth manager (every user is an admin here)."""
        if self._token is None:
            response = requests.get(f"{self.url}/auth/token", timeout=30)
            response.raise_for_status()
            self._token = str(response.json()["access_token"])
        return self._token

    def api(self, method: str, path: str, **kwargs: Any) -> Any:
        """Call Airflow's REST API as the UI does; return the JSON answer (raises on HTTP errors)."""
        response = self.api_response(method, path, **kwargs)
        response.raise_for_status()
        return response.json() if response.content else None

    def api_response(self, method: str, path: str, **kwargs: Any) -> requests.Response:
        """Call Airflow's REST API and return the response as it is."""
        headers = {"Authorization": f"Bearer {self.token()}", **kwargs.pop("headers", {})}
        return requests.request(method, f"{self.url}{path}", headers=headers, timeout=60, **kwargs)

    def stop(self) -> None:
        """Stop every process this stack started (SIGTERM, then SIGKILL after 20 s)."""
        for _, proc, _ in self._procs:
            _signal_group(proc, signal.SIGTERM)
        for _, proc, out in self._procs:
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                _signal_group(proc, signal.SIGKILL)
                proc.wait()
            out.close()
        self._procs.clear()
        self.sandbox.stop()

    def __enter__(self) -> AirflowStack:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()
