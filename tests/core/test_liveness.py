"""A lease's holder is "dead here" only when it ran on this very machine and its process is gone."""

from __future__ import annotations

import os
import subprocess
import sys
from typing import Any

import pytest

from airflow_provider_ciexport.core import liveness
from airflow_provider_ciexport.core.liveness import dead_here, gone, holder


def _dead_pid() -> int:
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    return child.pid


def test_a_process_of_this_machine_that_exited_is_dead_here() -> None:
    assert dead_here({**holder(), "pid": _dead_pid()})


def test_a_running_process_is_not_dead() -> None:
    assert not dead_here(holder())
    assert not gone(os.getpid())


@pytest.mark.parametrize(
    "change",
    [
        {"host": "worker-2"},
        {"boot_id": "0" * 32},
        {"machine_id": "f" * 32},
        {"pid_namespace": 1},
        {"pid": "12"},
        {"pid": True},
        {"pid": 0},
    ],
    ids=[
        "another-host",
        "another-boot",
        "another-machine-id",
        "another-pid-namespace",
        "text",
        "bool",
        "zero",
    ],
)
def test_a_holder_from_elsewhere_or_of_an_unknown_shape_is_not_dead_here(change: dict[str, Any]) -> None:
    assert not dead_here({**holder(), "pid": _dead_pid(), **change})


@pytest.mark.parametrize("missing", ["host", "boot_id", "machine_id", "pid_namespace"])
def test_a_holder_missing_an_identifier_is_not_dead_here(missing: str) -> None:
    held = {**holder(), "pid": _dead_pid()}
    del held[missing]
    assert not dead_here(held)
    assert not dead_here(None) and not dead_here(["not", "a", "holder"])


def test_where_the_boot_id_cannot_be_read_nothing_is_dead_here(monkeypatch: pytest.MonkeyPatch) -> None:
    held = {**holder(), "pid": _dead_pid()}
    monkeypatch.setattr(liveness, "_MACHINE_FILES", {**liveness._MACHINE_FILES, "boot_id": "/nonexistent"})
    here = holder()
    assert here["boot_id"] is None
    assert not dead_here({**held, "boot_id": None})
    assert not dead_here({**held, "boot_id": None}, here)
