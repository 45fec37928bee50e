from __future__ import annotations

import gc
import platform
import subprocess
import sys
import threading

import pytest

from airflow_provider_ciexport.export import collector
from airflow_provider_ciexport.export.collector import returning_free_memory, steady_collector


def test_an_export_leaves_the_garbage_collector_as_it_found_it() -> None:
    assert gc.get_freeze_count() == 0
    with steady_collector():
        frozen = gc.get_freeze_count()
        assert frozen > 0  # the process's existing objects are out of the collections' way
        with steady_collector():  # two exports in one process
            pass
        # The first export still runs, so its objects stay frozen (the count itself may drop: a frozen
        # object is still freed when nothing refers to it any more).
        assert gc.get_freeze_count() > 0
    assert gc.get_freeze_count() == 0


def test_an_export_gives_the_c_heap_s_free_pages_back_while_it_runs(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[int] = []
    trimmed = threading.Event()

    def trim(pad: int) -> int:
        calls.append(pad)
        if len(calls) >= 3:
            trimmed.set()
        return 1

    monkeypatch.setattr(collector, "malloc_trim", lambda: trim)
    with returning_free_memory(interval_s=0.001):
        assert trimmed.wait(30)  # again and again while the export runs
    after = len(calls)
    assert not any(t.name == "ciexport-heap-trim" for t in threading.enumerate())
    assert len(calls) == after  # stopped with the export (after a last trim on the way out)
    assert set(calls) == {0}


def test_without_glibc_nothing_is_trimmed(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(collector, "malloc_trim", lambda: None)
    before = threading.active_count()
    with returning_free_memory(interval_s=0.001):
        assert threading.active_count() == before


@pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="malloc_trim is glibc's")
def test_trimming_hands_freed_heap_memory_back_to_the_os() -> None:
    # 100 MB of 100 KB blocks (below glibc's mmap threshold: in its heap) between small blocks that
    # stay: freeing the large ones leaves holes glibc keeps; the export's trim hands them back.
    script = """
from airflow_provider_ciexport.export.collector import malloc_trim
def rss():
    return int(open("/proc/self/status").read().split("VmRSS:")[1].split()[0]) // 1024
keep, large = [], []
for i in range(1000):
    large.append(bytes(100_000))
    keep.append(bytes(600) + bytes([i % 256]))
large.clear()
held = rss()
malloc_trim()(0)
print(held, rss())
"""
    out = subprocess.run([sys.executable, "-c", script], check=True, capture_output=True, text=True).stdout
    held, trimmed = map(int, out.split())
    assert held - trimmed > 50, (held, trimmed)
