"""Test settings: a throwaway AIRFLOW_HOME, and the sandbox served over real HTTP on 127.0.0.1."""

from __future__ import annotations

import os
import tempfile

# Airflow reads its configuration on import, so these come first.
_HOME = tempfile.mkdtemp(prefix="ciexport-airflow-")
os.environ["AIRFLOW_HOME"] = _HOME
os.environ.setdefault("AIRFLOW__CORE__LOAD_EXAMPLES", "False")
os.environ.setdefault("AIRFLOW__CORE__UNIT_TEST_MODE", "False")
os.environ["AIRFLOW__DATABASE__SQL_ALCHEMY_CONN"] = f"sqlite:///{_HOME}/airflow.db"
# One key for this process and the Airflow subprocesses that tests start, so Variables they write
# (encrypted) can be read here.
from cryptography.fernet import Fernet

os.environ["AIRFLOW__CORE__FERNET_KEY"] = Fernet.generate_key().decode()

import fcntl
import hashlib
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from airflow_provider_ciexport.core import ratelimit
from airflow_provider_ciexport.tools.sandbox.client import SandboxClient
from airflow_provider_ciexport.tools.sandbox.connections import AC_CONN_ID, CC_CONN_ID
from airflow_provider_ciexport.tools.sandbox.server import SandboxServer
from tests.support import set_connection

# The browser test (tests/ui) runs only through `make ui-test`: it needs Chromium and Selenium.
collect_ignore = [] if os.environ.get("CIEXPORT_UI_TEST") else ["ui"]


def pytest_xdist_auto_num_workers(config: pytest.Config) -> int:
    """``-n auto``: twice the cores this process may use. Most tests wait on the sandbox's pacing over
    HTTP rather than on the CPU, so two workers a core keep the cores busy (4 on the 2 cores of CI,
    as the suite had before it followed the machine)."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return 2 * (cores or 1)


#: The sandbox's own tests: it imports no Airflow, and every integration test of ``make test-oldest``
#: runs it on the oldest Airflow, Python and libraries anyway.
SANDBOX_TESTS = Path(__file__).resolve().parent / "tools" / "sandbox"


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Every test that starts the shared sandbox is an integration test (``-m "not integration"``).

    Modules that start a sandbox of their own say so with ``pytestmark = pytest.mark.integration``.
    The sandbox's own tests are ``version_independent`` (``make test-oldest`` leaves them out).
    The ``slow`` tests go first: xdist hands the first tests out in turn, so each worker starts with
    its share of them instead of one worker finishing the suite alone on a long test.
    """
    for item in items:
        if "sandbox_server" in getattr(item, "fixturenames", ()):
            item.add_marker(pytest.mark.integration)
        if SANDBOX_TESTS in item.path.parents:
            item.add_marker(pytest.mark.version_independent)
    items.sort(key=lambda item: item.get_closest_marker("slow") is None)


@pytest.fixture(scope="session")
def airflow_db(tmp_path_factory: pytest.TempPathFactory) -> str:
    """A migrated metadata database in the throwaway AIRFLOW_HOME, as every deployment has.

    Only for the tests that need one (``dag.test()``, Variables or XCom in this process, the
    ``airflow`` CLI): they ask for it by name or with ``pytest.mark.usefixtures("airflow_db")``.
    The first worker to need one migrates a template (seven seconds of CPU); the others copy it.
    """
    shutil.copyfile(_migrated_template(tmp_path_factory.getbasetemp().parent), Path(_HOME) / "airflow.db")
    return os.environ["AIRFLOW__DATABASE__SQL_ALCHEMY_CONN"]


def _migrated_template(shared: Path) -> Path:
    """An empty metadata database migrated by this venv's Airflow, in ``shared`` (the folder every
    xdist worker's temporary folder is in), made once under a lock by whichever worker comes first."""
    from importlib.metadata import version

    venv = hashlib.sha256(sys.prefix.encode()).hexdigest()[:12]
    template = shared / f"ciexport-airflow-{version('apache-airflow')}-{venv}.db"
    with open(f"{template}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not template.is_file():
            partial = template.with_suffix(".partial")
            partial.unlink(missing_ok=True)
            subprocess.run(
                [str(Path(sys.executable).parent / "airflow"), "db", "migrate"],
                check=True,
                capture_output=True,
                env={**os.environ, "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": f"sqlite:///{partial}"},
            )
            os.replace(partial, template)
    return template


@pytest.fixture(autouse=True)
def fresh_rate_limiters() -> Iterator[None]:
    """Each test starts with the documented pace: what an earlier test's refusals taught is forgotten."""
    ratelimit._registry.clear()
    yield
    ratelimit._registry.clear()


@pytest.fixture(scope="session")
def sandbox_server(airflow_db: str) -> Iterator[SandboxServer]:
    """One sandbox for the whole run, on a free port of 127.0.0.1.

    The provider runs against it as in a deployment, with a metadata database: the Constant Contact
    hook keeps a rotated refresh token in a Variable, exports sharing an account meet in one.
    """
    with SandboxServer() as server:
        yield server


@pytest.fixture
def sandbox(sandbox_server: SandboxServer) -> SandboxClient:
    """The sandbox's control API, reset to its seeded state for each test."""
    client = SandboxClient(sandbox_server.url)
    client.reset()
    return client


#: How much faster than documented the sandbox runs its limits for tests marked ``scaled_limits``
#: (they check what ends up on the lists, not the pace; the pace is tested at the real limits).
LIMITS_SCALE = 5


def _limits_scale(request: pytest.FixtureRequest, sandbox: SandboxClient) -> int:
    """The scale of this test's limits, set on the sandbox (1: the documented limits)."""
    if request.node.get_closest_marker("scaled_limits") is None:
        return 1
    sandbox.configure(rate_scale=LIMITS_SCALE)
    return LIMITS_SCALE


@pytest.fixture
def ac_conn(
    request: pytest.FixtureRequest,
    monkeypatch: pytest.MonkeyPatch,
    sandbox: SandboxClient,
    sandbox_server: SandboxServer,
) -> str:
    """An ``activecampaign`` connection to the sandbox with its seeded API key (at its limits)."""
    scale = _limits_scale(request, sandbox)
    extras = {} if scale == 1 else {"requests_per_second": 5 * scale, "imports_per_minute": 100 * scale}
    return set_connection(monkeypatch, AC_CONN_ID, **sandbox_server.ac_connection(**extras))


@pytest.fixture
def cc_conn(
    request: pytest.FixtureRequest,
    monkeypatch: pytest.MonkeyPatch,
    sandbox: SandboxClient,
    sandbox_server: SandboxServer,
) -> str:
    """A ``constantcontact`` connection to the sandbox with its seeded client and refresh token (at
    its limits)."""
    scale = _limits_scale(request, sandbox)
    extras = {} if scale == 1 else {"requests_per_second": 4 * scale}
    return set_connection(monkeypatch, CC_CONN_ID, **sandbox_server.cc_connection(**extras))
