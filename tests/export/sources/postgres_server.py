"""A throwaway PostgreSQL server for tests: its own cluster in a temporary folder, on 127.0.0.1.

PostgreSQL refuses to run as root, so when the tests run as root (as CI does) the cluster belongs to
an unprivileged user (``nobody``) and ``initdb``, ``pg_ctl`` and ``postgres`` run as that user through
``runuser`` (or ``su``). The binaries come from ``PATH`` or Debian's ``/usr/lib/postgresql/*/bin``
(the ``postgresql`` package).
"""

from __future__ import annotations

import contextlib
import glob
import os
import pwd
import shlex
import shutil
import socket
import subprocess
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

#: The user that owns the cluster when the tests run as root.
UNPRIVILEGED_USER = "nobody"
_BINARIES = ("initdb", "pg_ctl", "postgres")


def missing_user() -> str | None:
    """Why the server cannot run here as :data:`UNPRIVILEGED_USER` when root, or ``None`` if it can."""
    if os.geteuid() != 0:
        return None
    try:
        pwd.getpwnam(UNPRIVILEGED_USER)
    except KeyError:
        return (
            f"running as root, PostgreSQL needs an unprivileged user {UNPRIVILEGED_USER!r} to run as "
            f"(useradd --system {UNPRIVILEGED_USER})"
        )
    return None


def find_binaries() -> Path | None:
    """The folder holding ``initdb``, ``pg_ctl`` and ``postgres``, or ``None`` if there is none."""
    candidates = [os.path.dirname(found) for found in map(shutil.which, _BINARIES) if found]
    candidates += sorted(glob.glob("/usr/lib/postgresql/*/bin"), reverse=True)
    for folder in candidates:
        if all(os.access(os.path.join(folder, name), os.X_OK) for name in _BINARIES):
            return Path(folder)
    return None


@dataclass(frozen=True)
class PostgresServer:
    """A running server: where it listens and the database and credentials the tests use."""

    host: str
    port: int
    login: str
    password: str
    database: str

    @property
    def uri(self) -> str:
        return f"postgresql://{self.login}:{self.password}@{self.host}:{self.port}/{self.database}"

    def connection(self, **extra: Any) -> dict[str, Any]:
        """The fields of an Airflow ``postgres`` connection to the database (``extra``: its Extra)."""
        fields: dict[str, Any] = {
            "conn_type": "postgres",
            "host": self.host,
            "port": self.port,
            "login": self.login,
            "password": self.password,
            "schema": self.database,
        }
        if extra:
            fields["extra"] = extra
        return fields

    def execute(self, *statements: str, database: str | None = None) -> None:
        """Run ``statements`` in autocommit mode with whichever driver the postgres provider uses."""
        try:
            import psycopg

            connect: Any = psycopg.connect
        except ImportError:
            import psycopg2

            connect = psycopg2.connect
        conn = connect(
            host=self.host,
            port=self.port,
            user=self.login,
            password=self.password,
            dbname=database or self.database,
        )
        try:
            conn.autocommit = True
            cursor = conn.cursor()
            for statement in statements:
                cursor.execute(statement)
            cursor.close()
        finally:
            conn.close()


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class _Runner:
    """Runs the PostgreSQL binaries, as :data:`UNPRIVILEGED_USER` when this process is root."""

    def __init__(self, binaries: Path, folder: Path) -> None:
        self.binaries = binaries
        self.folder = folder
        self.user = UNPRIVILEGED_USER if os.geteuid() == 0 else None
        if self.user is not None:
            entry = pwd.getpwnam(self.user)
            os.chown(folder, entry.pw_uid, entry.pw_gid)

    def __call__(self, name: str, *args: str) -> None:
        command = [str(self.binaries / name), *args]
        if self.user is not None:
            if shutil.which("runuser"):
                command = ["runuser", "-u", self.user, "--", *command]
            else:
                command = ["su", "-s", "/bin/sh", self.user, "-c", shlex.join(command)]
        done = subprocess.run(command, cwd=self.folder, capture_output=True, text=True, timeout=120)
        if done.returncode != 0:
            log = self.folder / "postgres.log"
            tail = log.read_text(errors="replace")[-2000:] if log.exists() else ""
            raise RuntimeError(
                f"{shlex.join(command)} failed ({done.returncode}):\n{done.stdout}{done.stderr}\n{tail}"
            )


@contextlib.contextmanager
def postgres_server(binaries: Path, database: str = "segments") -> Iterator[PostgresServer]:
    """Create a cluster in a temporary folder, start it on a free port of 127.0.0.1, create
    ``database``; stop the server and delete the folder on exit, also after a failure."""
    folder = Path(tempfile.mkdtemp(prefix="ciexport-pg-"))
    try:
        run = _Runner(binaries, folder)
        data = folder / "data"
        password = "ciexport-test"
        (folder / "pwfile").write_text(password + "\n")
        if run.user is not None:
            shutil.chown(folder / "pwfile", run.user)
        run(
            "initdb",
            "--pgdata",
            str(data),
            "--username",
            "ciexport",
            "--pwfile",
            str(folder / "pwfile"),
            "--auth",
            "scram-sha-256",
            "--encoding",
            "UTF8",
            "--no-locale",
            "--no-sync",
        )
        options = [
            "-c listen_addresses=127.0.0.1",
            f"-c unix_socket_directories={folder}",
            "-c fsync=off",
            "-c synchronous_commit=off",
            "-c full_page_writes=off",
        ]
        for attempt in range(3):  # another process may take the free port before the server does
            port = _free_port()
            try:
                run(
                    "pg_ctl",
                    "start",
                    "--pgdata",
                    str(data),
                    "--wait",
                    "--log",
                    str(folder / "postgres.log"),
                    "-o",
                    " ".join([f"-p {port}", *options]),
                )
                break
            except RuntimeError:
                if attempt == 2:
                    raise
        try:
            server = PostgresServer("127.0.0.1", port, "ciexport", password, database)
            server.execute(f"CREATE DATABASE {database}", database="postgres")
            yield server
        finally:
            run("pg_ctl", "stop", "--pgdata", str(data), "--mode", "fast", "--wait")
    finally:
        shutil.rmtree(folder, ignore_errors=True)
