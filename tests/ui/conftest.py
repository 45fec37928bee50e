"""The UI test's Airflow (API server, scheduler, DAG processor), the sandbox and headless Chromium.

Run it with ``make ui-test`` (it installs Debian's chromium and chromium-driver when missing).
Screenshots go to ``build/ui/``.
"""

from __future__ import annotations

import re
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from selenium import webdriver
from selenium.webdriver.chrome.service import Service

from tests.ui.airflow_stack import REPO, AirflowStack

SCREENSHOTS = REPO / "build" / "ui"
CHROMIUM_FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--window-size=1400,1100",
)


@pytest.fixture(scope="session")
def stack() -> Iterator[AirflowStack]:
    """Airflow with the provider and the example DAGs, and the sandbox, all on 127.0.0.1."""
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    for old in SCREENSHOTS.glob("*.png"):
        old.unlink()
    # Kept after the run (recreated by the next): the Airflow home with its task logs.
    with AirflowStack(SCREENSHOTS / "airflow") as airflow:
        yield airflow


@pytest.fixture(scope="session")
def browser(stack: AirflowStack) -> Iterator[webdriver.Chrome]:
    """Headless Chromium with a fresh profile, signed in (the simple auth manager: everyone is admin)."""
    profile = tempfile.mkdtemp(prefix="ciexport-chromium-")
    options = webdriver.ChromeOptions()
    options.binary_location = shutil.which("chromium") or "/usr/bin/chromium"
    for flag in (*CHROMIUM_FLAGS, f"--user-data-dir={profile}"):
        options.add_argument(flag)
    driver = webdriver.Chrome(
        service=Service(shutil.which("chromedriver") or "/usr/bin/chromedriver"), options=options
    )
    driver.implicitly_wait(0)
    try:
        driver.get(f"{stack.url}/auth/token/login?next={stack.url}/")
        yield driver
    finally:
        driver.quit()
        shutil.rmtree(profile, ignore_errors=True)


def screenshot(driver: webdriver.Chrome, name: str) -> Path:
    """Save what the browser shows as ``build/ui/<name>.png``."""
    path = SCREENSHOTS / f"{re.sub(r'[^A-Za-z0-9_.-]+', '_', name)}.png"
    driver.save_screenshot(str(path))
    return path


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Iterator[None]:
    """A failed test leaves a screenshot of what the browser showed: ``build/ui/FAILED-<test>.png``."""
    report = yield
    driver = item.funcargs.get("browser") if hasattr(item, "funcargs") else None
    if report.when == "call" and report.failed and driver is not None:
        screenshot(driver, f"FAILED-{item.name}")
    return report
