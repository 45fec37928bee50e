"""Bytes held on local disk once large: read back exactly, never left behind."""

from __future__ import annotations

import errno
import logging
import os
import tempfile
from itertools import accumulate

import pytest

from airflow_provider_ciexport.export import spill as spill_module
from airflow_provider_ciexport.export.spill import SpilledBytes


def _pieces() -> list[bytes]:
    # Mixed lengths, non-ASCII and a long one: offsets must not assume a fixed width.
    return [f"person.{i}@exämple.com".encode() * (1 + i % 3) for i in range(2_000)] + [b"x" * 300_000]


def test_bytes_read_back_the_same_in_memory_and_once_on_disk() -> None:
    pieces = _pieces()
    in_memory, on_disk = SpilledBytes(in_memory_max=1 << 30), SpilledBytes(in_memory_max=1_000)
    offsets = [0]
    for piece in pieces:
        in_memory.append(piece)
        on_disk.append(piece)
        offsets.append(offsets[-1] + len(piece))
        # A read between appends sees the bytes not yet written to the file too.
        assert bytes(on_disk.read(offsets[-2], offsets[-1])) == piece

    assert not in_memory.on_disk and on_disk.on_disk
    assert len(on_disk) == len(in_memory) == offsets[-1]
    for k in range(len(pieces) - 1, -1, -97):  # out of order, as a state's key order reads them
        assert bytes(on_disk.read(offsets[k], offsets[k + 1])) == pieces[k]
        assert bytes(in_memory.read(offsets[k], offsets[k + 1])) == pieces[k]


def test_the_file_has_no_name_and_closes_with_its_owner() -> None:
    folder = tempfile.gettempdir()
    before = {name for name in os.listdir(folder) if name.startswith("ciexport-new-emails-")}
    spilled = SpilledBytes(in_memory_max=10)
    spilled.append(b"someone@example.com")
    fd = spilled._fd
    assert spilled.on_disk and os.fstat(fd).st_nlink == 0  # deleted already: gone if the process dies
    assert {n for n in os.listdir(folder) if n.startswith("ciexport-new-emails-")} == before

    del spilled
    try:
        os.fstat(fd)
    except OSError:
        pass
    else:
        raise AssertionError("the temporary file stayed open after its owner was collected")


def test_small_contents_never_touch_the_disk() -> None:
    spilled = SpilledBytes()
    for _ in range(100):
        spilled.append(b"someone@example.com")
    assert not spilled.on_disk
    assert len(spilled) == 1_900 < spill_module.IN_MEMORY_MAX


def test_a_full_disk_keeps_every_byte_in_memory_with_a_warning(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    pieces = _pieces()
    spilled = SpilledBytes(in_memory_max=1_000)
    real_write, calls = os.write, []

    def write_until_full(fd: int, data: memoryview) -> int:
        calls.append(len(data))
        if len(calls) > 3:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return real_write(fd, data[:5_000])  # short writes too

    monkeypatch.setattr(spill_module.os, "write", write_until_full)
    monkeypatch.setattr(spill_module, "WRITE_BUFFER", 10_000)
    with caplog.at_level(logging.WARNING, logger=spill_module.__name__):
        for piece in pieces:
            spilled.append(piece)

    assert not spilled.on_disk and len(calls) == 4
    offsets = list(accumulate((len(p) for p in pieces), initial=0))
    assert all(bytes(spilled.read(offsets[k], offsets[k + 1])) == pieces[k] for k in range(len(pieces)))
    assert "No space left on device" in caplog.text and "TMPDIR" in caplog.text
    assert "exämple" not in caplog.text


def test_no_temporary_file_keeps_every_byte_in_memory(monkeypatch: pytest.MonkeyPatch) -> None:
    def refused(*args: object, **kwargs: object) -> None:
        raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), "/tmp")

    monkeypatch.setattr(spill_module.tempfile, "TemporaryFile", refused)
    spilled = SpilledBytes(in_memory_max=10)
    for piece in _pieces():
        spilled.append(piece)
    assert not spilled.on_disk
    assert b"".join(_pieces()) == bytes(spilled.read(0, len(spilled)))


def test_a_read_that_meets_a_full_disk_still_returns_the_bytes(monkeypatch: pytest.MonkeyPatch) -> None:
    pieces = _pieces()[:100]
    monkeypatch.setattr(spill_module, "WRITE_BUFFER", 1 << 30)  # the appends after the spill stay buffered
    spilled = SpilledBytes(in_memory_max=100)
    for piece in pieces:
        spilled.append(piece)
    assert spilled.on_disk

    def full(fd: int, data: memoryview) -> int:
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(spill_module.os, "write", full)
    offsets = list(accumulate((len(p) for p in pieces), initial=0))
    assert bytes(spilled.read(offsets[-2], offsets[-1])) == pieces[-1]  # needs the buffered tail
    assert not spilled.on_disk
    assert all(bytes(spilled.read(offsets[k], offsets[k + 1])) == pieces[k] for k in range(len(pieces)))
