"""``python -m airflow_provider_ciexport.tools.sandbox``: the ready file, and a busy port."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import pytest
import requests

from airflow_provider_ciexport.tools.sandbox import SandboxClient
from tests.tools.sandbox.helpers import AC_H, TIMEOUT

pytestmark = pytest.mark.integration


def test_command_line_writes_ready_file(tmp_path: Path) -> None:
    ready = tmp_path / "ready"
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "airflow_provider_ciexport.tools.sandbox",
            "--port",
            "0",
            "--ready-file",
            str(ready),
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        deadline = time.monotonic() + 20
        while not ready.exists():
            assert proc.poll() is None, proc.stdout.read() if proc.stdout else ""
            assert time.monotonic() < deadline, "sandbox did not start"
            time.sleep(0.05)
        url = ready.read_text().strip()
        assert SandboxClient(url).health()
        assert requests.get(f"{url}/api/3/lists/1", headers=AC_H, timeout=TIMEOUT).status_code == 200
    finally:
        proc.terminate()
        out, _ = proc.communicate(timeout=20)
    assert proc.returncode == 0
    assert f"{url}/v3" in out and f"{url}/oauth2/default/v1/token" in out
    assert not ready.exists()


def test_a_busy_port_is_answered_with_a_port_that_is_free() -> None:
    import re
    import socket

    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        done = subprocess.run(
            [sys.executable, "-m", "airflow_provider_ciexport.tools.sandbox", "--port", str(port)],
            capture_output=True,
            text=True,
            timeout=120,
        )
    assert done.returncode == 1
    suggested = re.search(r"make sandbox PORT=(\d+)", done.stderr)
    assert suggested and int(suggested.group(1)) != port, done.stderr
