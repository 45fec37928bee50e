"""The sync state file and the segment diff: what is trusted, what is recorded, what is removed."""

from __future__ import annotations

import json
import os
import re
import stat
import subprocess
import sys
import threading
import tracemalloc
from collections.abc import Iterable
from pathlib import Path

import pytest

from airflow_provider_ciexport.core.contacts import EmailSet
from airflow_provider_ciexport.exceptions import ExportConfigurationError
from airflow_provider_ciexport.export import spill as spill_module
from airflow_provider_ciexport.export import state as state_module
from airflow_provider_ciexport.export.state import (
    MAGIC,
    MANAGED,
    REMOVED,
    UNSUBSCRIBED,
    StateBusyError,
    StateConflictError,
    StateIdentity,
    StateKeys,
    StateLease,
    SyncState,
    check_state_path,
    contact_digest,
    email_key,
    read_state,
    remove_stale_copies,
    write_state,
)
from airflow_provider_ciexport.export.sync import (
    CHANGED,
    NEW,
    OPTED_OUT,
    READD,
    UNCHANGED,
    BatchEntries,
    ListMembers,
    RemovalLimitError,
    SegmentDiff,
)
from tests.export.forgery import forge_flags, format_1_state

KEYS = StateKeys(["the workers' secret"], "a test")
IDENTITY = StateIdentity.of("ActiveCampaign", "https://acct.api-us1.com/api/3", [2], {"email": "email"})


def _uri(tmp_path: Path) -> str:
    return f"file://{tmp_path}/states/vip.state"


def _first_sync(emails: list[str], *, mirror: bool = True, members_before: Iterable[str] = ()) -> SegmentDiff:
    state = SyncState(IDENTITY)
    members = ListMembers(state)
    for email in members_before:
        members.add(email)
    diff = SegmentDiff(state, mirror=mirror, members_before=members)
    entries = BatchEntries()
    for email in emails:
        kind, index, key, digest = diff.classify(email, f'{{"email":"{email}"}}'.encode())
        assert kind == NEW
        entries.add(index, key, digest, email)
    diff.confirm(entries, refused=None, accepted_all=True)
    return diff


def _write_read(tmp_path: Path, state: SyncState, expected: int | None = None) -> SyncState:
    write_state(_uri(tmp_path), state, expected, KEYS)
    loaded = read_state(_uri(tmp_path), IDENTITY, KEYS)
    assert loaded.distrust is None
    return loaded.state


def test_a_first_sync_round_trips_with_flags_and_emails(tmp_path: Path) -> None:
    emails = [f"p{i}@example.com" for i in range(50)]
    diff = _first_sync(emails)
    state = _write_read(tmp_path, diff.state)
    assert len(state) == 50 and state.generation == 1
    assert sorted(state.email(i) for i in range(len(state))) == sorted(emails)
    assert list(state.keys) == sorted(state.keys)
    assert state.count(MANAGED) == 50


def test_a_large_first_sync_is_written_in_key_order_without_a_copy_per_entry(tmp_path: Path) -> None:
    emails = [f"person.{i}@example.com" for i in range(100_000)]
    diff = _first_sync(emails)
    digests = {email: contact_digest(f'{{"email":"{email}"}}'.encode()) for email in emails}

    tracemalloc.start()
    try:
        write_state(_uri(tmp_path), diff.state, None, KEYS)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()

    state = read_state(_uri(tmp_path), IDENTITY, KEYS).state
    assert list(state.keys) == sorted(state.keys)
    assert {state.email(i): state.digests[i] for i in range(len(state))} == digests
    assert all(state.keys[i] == email_key(state.email(i)) for i in range(len(state)))
    # The sections are copied one at a time (under 1 MB each here); a tuple per entry to place them
    # would take some 10 MB more.
    assert peak < 6_000_000, peak


def _sections(state: SyncState) -> bytes:
    parts: list[bytes] = []
    state.write_sections(lambda data: parts.append(bytes(memoryview(data).cast("B"))))
    return b"".join(parts)


def test_many_inserts_and_drops_merge_without_a_tuple_per_entry(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    old = _write_read(tmp_path, _first_sync([f"old.{i}@example.com" for i in range(30_000)]).state)
    for i in range(70_000):
        email = f"new.{i}@example.com"
        old.add(email_key(email), i + 1, MANAGED, email)
    for index in range(0, 30_000, 7):
        old.drop(index)
    expected = {old.email(i) for i in range(30_000) if i % 7} | {
        f"new.{i}@example.com" for i in range(70_000)
    }

    tracemalloc.start()
    try:
        old.write_sections(lambda data: None)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    # Pieces of at most a few bytes each: the merge and its output pieces come out the same.
    whole = _sections(old)
    monkeypatch.setattr(state_module, "IO_CHUNK", 24)
    assert _sections(old) == whole

    state = _write_read(tmp_path, old, 1)
    assert list(state.keys) == sorted(state.keys)
    assert {state.email(i) for i in range(len(state))} == expected
    # Two flat arrays place the 70,000 inserts (some 0.6 MB); a tuple per event took some 9 MB more.
    assert peak < 4_000_000, peak


def _add_new(state: SyncState, emails: list[str]) -> int:
    """Add ``emails`` as new entries; the memory this took (traced)."""
    tracemalloc.start()
    try:
        for i, email in enumerate(emails):
            state.add(email_key(email), i + 1, MANAGED, email)
        return tracemalloc.get_traced_memory()[0]
    finally:
        tracemalloc.stop()


def test_new_addresses_wait_on_local_disk_and_the_state_comes_out_the_same(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    emails = [f"  New.Person.{i}@Example-Domain.com".strip().lower() for i in range(60_000)]
    size = sum(len(email) for email in emails)
    old = _write_read(tmp_path, _first_sync([f"old.{i}@example.com" for i in range(5_000)]).state)
    old.drop(3)

    held_on_disk = _add_new(first_on_disk := SyncState(IDENTITY), emails)
    _add_new(merge_on_disk := old.folded(), emails)
    monkeypatch.setattr(spill_module, "IN_MEMORY_MAX", 1 << 30)
    held_in_memory = _add_new(first_in_memory := SyncState(IDENTITY), emails)
    _add_new(merge_in_memory := old.folded(), emails)

    # The addresses (some 2 MB here, 30 MB a million) are not held in memory while the export runs.
    assert held_in_memory - held_on_disk > size * 0.9, (held_in_memory, held_on_disk, size)
    assert _sections(first_on_disk) == _sections(first_in_memory)
    assert _sections(merge_on_disk) == _sections(merge_in_memory)
    state = _write_read(tmp_path, merge_on_disk, 1)
    assert {state.email(i) for i in range(len(state))} >= set(emails)
    assert len(state) == 5_000 - 1 + 60_000


def test_email_offsets_take_32_bits_while_the_emails_fit_in_4_gb() -> None:
    # A million emails' offsets: 4 MB instead of 8 while the state is written; past 4 GB, 64 bits.
    small = state_module._offsets(bytes([30, 25, 40]), 95)
    assert (small.typecode, small.itemsize, list(small)) == ("I", 4, [0, 30, 55, 95])
    large = state_module._offsets(bytes([30, 25, 40]), 2**32)
    assert (large.typecode, large.itemsize, list(large)) == ("Q", 8, [0, 30, 55, 95])


def test_members_before_the_export_are_not_its_to_remove(tmp_path: Path) -> None:
    diff = _first_sync(["form@example.com", "new@example.com"], members_before=["form@example.com"])
    state = _write_read(tmp_path, diff.state)
    flags = {state.email(i): state.flags[i] for i in range(len(state))}
    assert flags == {"form@example.com": 0, "new@example.com": MANAGED}


def test_members_in_the_state_take_a_byte_each_and_the_missing_ones_are_found(tmp_path: Path) -> None:
    emails = [f"m{i}@example.com" for i in range(100_000)]
    state = _write_read(tmp_path, _first_sync(emails).state)

    tracemalloc.start()
    try:
        members = ListMembers(state)
        for email in emails:
            if not email.startswith("m7"):  # 11,111 taken off the lists outside the export
                members.add(email)
        members.add("joined.by.a.form@example.com")
        held = tracemalloc.get_traced_memory()[0]
    finally:
        tracemalloc.stop()

    diff = SegmentDiff(state, mirror=True, members_before=members)
    assert diff.mark_missing(members) == 11_111
    assert sum(diff.missing) == 11_111
    assert all(state.email(i).startswith("m7") for i in range(len(state)) if diff.missing[i])
    assert members.holds_new("joined.by.a.form@example.com")
    assert not members.holds_new("never.there@example.com")
    # A byte an entry (0.1 MB); a set of the 88,889 addresses took 2 MB.
    assert held < 400_000, held


def test_upsert_records_nothing_as_the_exports_to_remove(tmp_path: Path) -> None:
    state = _write_read(tmp_path, _first_sync(["a@example.com"], mirror=False).state)
    assert state.count(MANAGED) == 0


def test_incremental_classification_and_merge(tmp_path: Path) -> None:
    emails = [f"p{i}@example.com" for i in range(10)]
    state = _write_read(tmp_path, _first_sync(emails).state)
    diff = SegmentDiff(state, mirror=True)
    kinds = {}
    entries = BatchEntries()
    for i, email in enumerate([*emails[:8], "new@example.com"]):
        body = (
            f'{{"email":"{email}","first_name":"{"X" if i == 1 else ""}"}}'
            if i == 1
            else f'{{"email":"{email}"}}'
        )
        kind, index, key, digest = diff.classify(email, body.encode())
        kinds[email] = kind
        if kind != UNCHANGED:
            entries.add(index, key, digest, email)
    assert kinds["p0@example.com"] == UNCHANGED and kinds["p1@example.com"] == CHANGED
    assert kinds["new@example.com"] == NEW
    assert diff.counts["unchanged"] == 7 and diff.counts["changed"] == 1 and diff.counts["new"] == 1
    leavers = diff.leavers()
    assert sorted(state.email(i) for i in leavers) == ["p8@example.com", "p9@example.com"]
    diff.confirm(entries, refused=None, accepted_all=True)
    diff.removed(leavers[:1], 7)
    diff.forget(leavers[1:])
    after = _write_read(tmp_path, state, expected=1)
    by_email = {after.email(i): (after.flags[i], after.digests[i]) for i in range(len(after))}
    assert len(after) == 10 and after.generation == 2
    assert by_email[state.email(leavers[0])] == (REMOVED, 7)  # removed by run 7
    assert state.email(leavers[1]) not in by_email
    assert by_email["new@example.com"][0] == MANAGED

    # The removed contact comes back: it is re-added, and then it is the export's again.
    diff = SegmentDiff(after, mirror=True)
    gone = state.email(leavers[0])
    kind, index, key, digest = diff.classify(gone, f'{{"email":"{gone}"}}'.encode())
    assert kind == READD and diff.readd_emails == [gone] and diff.readd_runs == {gone: 7}
    entries = BatchEntries()
    entries.add(index, key, digest, gone)
    diff.confirm(entries, refused=None, accepted_all=True)
    assert after.flags[index] == MANAGED and after.digests[index] == digest


def test_refused_and_unconfirmed_contacts_are_sent_again(tmp_path: Path) -> None:
    state = _write_read(tmp_path, _first_sync(["a@example.com", "b@example.com"]).state)
    diff = SegmentDiff(state, mirror=True)
    entries = BatchEntries()
    for email in ("a@example.com", "b@example.com", "c@example.com", "d@example.com"):
        _kind, index, key, digest = diff.classify(email, f'{{"email":"{email}","v":1}}'.encode())
        entries.add(index, key, digest, email)
    old = {i: state.digests[i] for i in range(len(state))}
    diff.confirm(entries, refused=["B@example.com", "d@example.com"], accepted_all=False)
    after = _write_read(tmp_path, state, expected=1)
    recorded = {after.email(i): after.digests[i] for i in range(len(after))}
    assert set(recorded) == {"a@example.com", "b@example.com", "c@example.com"}
    b = state.find(email_key("b@example.com"))
    assert recorded["b@example.com"] == old[b]  # its old digest: it counts as changed next run
    # Refusals without names (Constant Contact's counts): the batch is owned, not confirmed.
    diff = SegmentDiff(after, mirror=True)
    entries = BatchEntries()
    _, index, key, digest = diff.classify("z@example.com", b"{}")
    entries.add(index, key, digest, "z@example.com")
    diff.confirm(entries, refused=None, accepted_all=False)
    assert after.added == 1
    again = _write_read(tmp_path, after, expected=2)
    z = again.find(email_key("z@example.com"))
    assert (again.flags[z], again.digests[z]) == (MANAGED, 0)


def test_opted_out_people_are_skipped_and_remembered_unless_the_export_removed_them(tmp_path: Path) -> None:
    state = _write_read(tmp_path, _first_sync(["a@example.com", "b@example.com"]).state)
    b = state.find(email_key("b@example.com"))
    state.update(b, 0, REMOVED)
    opted = EmailSet()
    opted.update(["a@example.com", "b@example.com", "x@example.com"])
    # ActiveCampaign: the export's own removal looks like status 2, so b is re-added, a and x skipped.
    diff = SegmentDiff(state, mirror=True, opted_out=opted, removal_unsubscribes=True)
    kinds = [diff.classify(e, b"{}")[0] for e in ("a@example.com", "b@example.com", "x@example.com")]
    assert kinds == [OPTED_OUT, READD, OPTED_OUT]
    assert diff.counts["skipped_unsubscribed"] == 2
    after = _write_read(tmp_path, state, expected=1)
    a, b = after.find(email_key("a@example.com")), after.find(email_key("b@example.com"))
    # a is no longer the export's (never removed), and is known to have opted out without a read.
    assert (after.flags[a], after.digests[a], after.flags[b]) == (UNSUBSCRIBED, 0, REMOVED)
    diff = SegmentDiff(after, mirror=True, opted_out=EmailSet(), removal_unsubscribes=True)
    assert diff.classify("a@example.com", b"{}")[0] == OPTED_OUT
    assert diff.leavers() == []
    # Constant Contact: an unsubscribe is always the person's.
    diff = SegmentDiff(after, mirror=True, opted_out=opted, removal_unsubscribes=False)
    assert diff.classify("b@example.com", b"{}")[0] == OPTED_OUT


def test_full_refresh_sends_unchanged_contacts(tmp_path: Path) -> None:
    state = _write_read(tmp_path, _first_sync(["a@example.com"]).state)
    diff = SegmentDiff(state, mirror=True, full_refresh=True)
    assert diff.classify("a@example.com", b'{"email":"a@example.com"}')[0] == CHANGED


def test_safety_limit_names_both_numbers_and_the_parameter(tmp_path: Path) -> None:
    state = _write_read(tmp_path, _first_sync([f"p{i}@example.com" for i in range(10)]).state)
    diff = SegmentDiff(state, mirror=True)
    diff.check_removals(2, 8, 0.2)
    with pytest.raises(RemovalLimitError, match=r"3 contacts left .*max_removal_fraction=0.2.* 10 "):
        diff.check_removals(3, 7, 0.2)
    with pytest.raises(RemovalLimitError, match=r"segment is empty.*10 contacts.*max_removal_fraction"):
        diff.check_removals(10, 0, 1.0)


def test_mismatching_or_damaged_state_is_never_trusted(tmp_path: Path) -> None:
    uri = _uri(tmp_path)
    write_state(uri, _first_sync(["a@example.com"]).state, None, KEYS)
    other = StateIdentity.of("ActiveCampaign", "https://acct.api-us1.com/api/3", [3], {"email": "mail"})
    loaded = read_state(uri, other, KEYS)
    assert len(loaded.state) == 0 and loaded.stored_generation == 1
    assert loaded.distrust == "it was written for another lists, field mapping"
    path = Path(f"{tmp_path}/states/vip.state")
    data = bytearray(path.read_bytes())
    data[-3] ^= 0xFF
    path.write_bytes(bytes(data))
    assert read_state(uri, IDENTITY, KEYS).distrust == (
        "the stored state failed its authentication check (changed outside the export, or damaged)"
    )
    path.write_bytes(b"name,email\n")
    assert read_state(uri, IDENTITY, KEYS).distrust == "the file at state_path is not a sync state"
    assert read_state(f"file://{tmp_path}/none.state", IDENTITY, KEYS).distrust is None


def test_a_write_never_overwrites_another_runs_state(tmp_path: Path) -> None:
    uri = _uri(tmp_path)
    write_state(uri, _first_sync(["a@example.com"]).state, None, KEYS)
    first = read_state(uri, IDENTITY, KEYS)
    second = read_state(uri, IDENTITY, KEYS)
    write_state(uri, second.state, second.stored_generation, KEYS)
    with pytest.raises(StateConflictError, match="another run"):
        write_state(uri, first.state, first.stored_generation, KEYS)
    assert read_state(uri, IDENTITY, KEYS).state.generation == 2
    assert [p.name for p in Path(f"{tmp_path}/states").iterdir()] == ["vip.state"]  # no temporary left


def test_the_lease_keeps_a_second_run_out(tmp_path: Path) -> None:
    uri = _uri(tmp_path)
    Path(f"{tmp_path}/states").mkdir()
    first = StateLease(uri, "dag.task run=scheduled__1 try 1")
    first.acquire()
    with pytest.raises(StateBusyError, match=r"scheduled__1 try 1.*Nothing was sent"):
        StateLease(uri, "dag.task run=manual__2 try 1").acquire()
    first.release()
    stale = StateLease(uri, "dag.task run=manual__2 try 1", ttl_s=0.0)
    later = StateLease(uri, "dag.task run=scheduled__3 try 1")
    stale.acquire()
    stale.release()
    later.acquire()
    later.release()
    assert not Path(f"{tmp_path}/states/vip.state.lock").exists()


def test_a_retry_does_not_share_the_lease_with_its_zombie_try(tmp_path: Path) -> None:
    uri = _uri(tmp_path)
    zombie = StateLease(uri, "dag.task run=scheduled__1 map -1 try 1")
    zombie.acquire()
    try:
        # The same task instance, retried while its first try still runs (and renews).
        with pytest.raises(StateBusyError, match=r"try 1\)"):
            StateLease(uri, "dag.task run=scheduled__1 map -1 try 2").acquire()
        # Even a lease with the very same owner text is another try's: each holds its own token.
        with pytest.raises(StateBusyError):
            StateLease(uri, "dag.task run=scheduled__1 map -1 try 1").acquire()
    finally:
        zombie.release()


def test_a_lease_left_by_a_process_that_died_on_this_machine_is_taken_over(tmp_path: Path) -> None:
    uri = _uri(tmp_path)
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True)
    lease = StateLease(uri, "dag.task run=1 try 1")
    lease.acquire()
    lease._stop.set()  # the try was killed: nothing renews or releases its lease
    body = json.loads(Path(f"{uri.removeprefix('file://')}.lock").read_text())
    body["pid"] = int(dead.stdout)
    Path(f"{uri.removeprefix('file://')}.lock").write_text(json.dumps(body))
    retry = StateLease(uri, "dag.task run=1 try 2")
    retry.acquire()
    retry.release()


@pytest.mark.parametrize(
    ("field", "value"),
    [
        # A cloned VM or image: same host name, machine id and (initial) pid namespace, another boot.
        ("boot_id", "0f0e0d0c-0b0a-4909-8807-060504030201"),
        # Another machine that happens to share the boot id.
        ("machine_id", "00112233445566778899aabbccddeeff"),
        # An older version's lease: it recorded neither, so nothing says it was written here.
        ("boot_id", None),
        ("machine_id", None),
    ],
)
def test_a_lease_from_a_clone_with_the_same_host_name_waits_for_its_expiry(
    tmp_path: Path, field: str, value: str | None
) -> None:
    uri = _uri(tmp_path)
    lock = Path(f"{tmp_path}/states/vip.state.lock")
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True)
    other = StateLease(uri, "dag.task run=1 try 1")
    other.acquire()
    other._stop.set()
    body = json.loads(lock.read_text())
    assert body["host"] and body["pid_namespace"]
    body["pid"] = int(dead.stdout)  # no such process here: it runs, or ran, on the other machine
    if value is None:
        body.pop(field, None)
    else:
        body[field] = value
    lock.write_text(json.dumps(body))
    with pytest.raises(StateBusyError, match=r"run=1 try 1.*Nothing was sent"):
        StateLease(uri, "dag.task run=1 try 2").acquire()
    assert json.loads(lock.read_text())["token"] == other.token
    later = StateLease(uri, "dag.task run=1 try 2", ttl_s=0.0)  # once expired, it is taken over
    later.acquire()
    later.release()


def test_a_renewal_never_rewrites_a_lease_another_run_took(tmp_path: Path) -> None:
    uri = _uri(tmp_path)
    lock = Path(f"{tmp_path}/states/vip.state.lock")
    mine = StateLease(uri, "dag.task run=1 try 1")
    mine.acquire()
    mine.check("removing contacts")  # still this try's
    # Its renewals stalled past the expiry (a long pause), and another run took the lease over.
    other = StateLease(uri, "dag.task run=2 try 1")
    other._write()
    assert mine.renew() is False
    assert json.loads(lock.read_text())["token"] == other.token
    with pytest.raises(StateBusyError, match=r"no longer holds .*run=2 try 1.*before removing contacts"):
        mine.check("removing contacts")
    mine.release()  # gives back only its own
    assert json.loads(lock.read_text())["token"] == other.token


def test_a_lock_file_that_is_not_a_lease_is_never_overwritten_or_deleted(tmp_path: Path) -> None:
    uri = _uri(tmp_path)
    Path(f"{tmp_path}/states").mkdir()
    lock = Path(f"{tmp_path}/states/vip.state.lock")
    for content in ("someone else's lock: pid 4242\n", '{"pid": 4242}'):
        lock.write_text(content)
        with pytest.raises(ExportConfigurationError, match=r"not a lease of this provider.*Nothing was sent"):
            StateLease(uri, "dag.task run=1 try 1").acquire()
        assert lock.read_text() == content


def test_keys_rotate_without_distrusting_the_states_written_under_the_old_one(tmp_path: Path) -> None:
    uri = _uri(tmp_path)
    old, new = StateKeys(["old secret"], "old"), StateKeys(["new secret", "old secret"], "rotated")
    write_state(uri, _first_sync(["a@example.com"]).state, None, old)
    loaded = read_state(uri, IDENTITY, new)
    assert loaded.distrust is None and loaded.authenticated is True and len(loaded.state) == 1
    write_state(uri, loaded.state, loaded.stored_generation, new)  # signed with the newest now
    assert read_state(uri, IDENTITY, StateKeys(["new secret"], "new only")).distrust is None
    stale = read_state(uri, IDENTITY, old)
    assert stale.authenticated is False and len(stale.state) == 0
    assert stale.distrust == "the stored state is signed with a key these workers do not hold (keys: old)"
    assert "secret" not in repr(new)


def test_a_state_forged_without_the_key_is_not_trusted(tmp_path: Path) -> None:
    uri = _uri(tmp_path)
    write_state(uri, _first_sync(["a@example.com", "b@example.com"]).state, None, KEYS)
    path = Path(f"{tmp_path}/states/vip.state")
    forge_flags(path, {"a@example.com": REMOVED})
    loaded = read_state(uri, IDENTITY, KEYS)
    assert loaded.authenticated is False and len(loaded.state) == 0
    assert "authentication check" in (loaded.distrust or "")


def test_a_state_in_the_unauthenticated_format_1_is_not_trusted(tmp_path: Path) -> None:
    uri = _uri(tmp_path)
    path = Path(f"{tmp_path}/states/vip.state")
    path.parent.mkdir()
    path.write_bytes(format_1_state(["a@example.com"], REMOVED))
    loaded = read_state(uri, IDENTITY, KEYS)
    assert (len(loaded.state), loaded.stored_generation, loaded.authenticated) == (0, 3, False)
    assert loaded.distrust == "the stored state has format 1, not 3 (it is not authenticated)"
    write_state(uri, _first_sync(["a@example.com"]).state, loaded.stored_generation, KEYS)
    assert read_state(uri, IDENTITY, KEYS).distrust is None


def test_state_files_and_folders_are_private_and_killed_writes_are_cleaned_up(tmp_path: Path) -> None:
    uri = f"file://{tmp_path}/a/b/vip.state"
    old = os.umask(0o022)
    try:
        write_state(uri, _first_sync(["a@example.com"]).state, None, KEYS)
        lease = StateLease(uri, "dag.task run=1 try 1")
        lease.acquire()
        assert stat.S_IMODE(os.stat(f"{tmp_path}/a/b/vip.state.lock").st_mode) == 0o600
        lease.release()
    finally:
        os.umask(old)
    assert stat.S_IMODE(os.stat(f"{tmp_path}/a").st_mode) == 0o700
    assert stat.S_IMODE(os.stat(f"{tmp_path}/a/b").st_mode) == 0o700
    assert stat.S_IMODE(os.stat(f"{tmp_path}/a/b/vip.state").st_mode) == 0o600
    folder = Path(f"{tmp_path}/a/b")
    for name in (
        "vip.state.tmp-0123456789ab",
        "vip.state.tmp-ba9876543210",
        "vip.state.tmp-notes",
        "x.tmp-0123456789ab",
    ):
        (folder / name).write_bytes(b"emails")
    assert remove_stale_copies(uri, keep="ba9876543210") == 1
    assert sorted(p.name for p in folder.iterdir()) == [
        "vip.state",
        "vip.state.tmp-ba9876543210",
        "vip.state.tmp-notes",
        "x.tmp-0123456789ab",
    ]


@pytest.mark.parametrize(
    "path",
    [
        "file:///data/states/../victim/x.state",
        "file:///data/states/%2e%2E/victim/x.state",
        "file:///data/states/.%2e/x.state",
        "s3://bucket/states/../../other/x.state",
        "file:///data/states/..\\victim\\x.state",
        "file:///data/states/x%5c..%5cy.state",
        "file:///data/states/x\n.state",
    ],
)
def test_a_state_path_that_could_leave_its_folder_is_refused(path: str) -> None:
    with pytest.raises(
        ExportConfigurationError, match=r"nothing was read. Nothing was sent.*'enum' or a 'pattern'"
    ):
        check_state_path(path)


def test_ordinary_state_paths_are_accepted() -> None:
    for path in ("s3://bucket/ciexport/vip.state", "file:///data/ciexport/a..b/vip.v2.state", "/tmp/x.state"):
        check_state_path(path)


def test_concurrent_confirmations_are_all_recorded(tmp_path: Path) -> None:
    diff = SegmentDiff(SyncState(IDENTITY), mirror=True)
    batches = []
    for t in range(4):
        entries = BatchEntries()
        for i in range(500):
            email = f"t{t}.{i}@example.com"
            _, index, key, digest = diff.classify(email, email.encode())
            entries.add(index, key, digest, email)
        batches.append(entries)
    threads = [threading.Thread(target=diff.confirm, args=(entries, None, True)) for entries in batches]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(_write_read(tmp_path, diff.state)) == 2000


def test_the_removal_runs_are_kept_with_the_state_and_only_the_last_ones(tmp_path: Path) -> None:
    from airflow_provider_ciexport.export.state import MAX_REMOVAL_WINDOWS

    state = _write_read(tmp_path, _first_sync(["a@example.com"]).state)
    state.removals = [[float(i + 1), float(i), float(i + 1)] for i in range(MAX_REMOVAL_WINDOWS + 5)]
    state.update(0, 3, REMOVED)  # removed in run 3, no longer among the runs kept
    kept = _write_read(tmp_path, state, expected=1)
    assert len(kept.removals) == MAX_REMOVAL_WINDOWS and kept.removals[0] == [6.0, 5.0, 6.0]
    assert kept.removals[-1][0] == MAX_REMOVAL_WINDOWS + 5
    assert kept.removal_window(int(kept.digests[0])) is None
    assert kept.removal_window(MAX_REMOVAL_WINDOWS) == (MAX_REMOVAL_WINDOWS - 1.0, float(MAX_REMOVAL_WINDOWS))
    window = kept.start_removal_run()
    assert window[0] == MAX_REMOVAL_WINDOWS + 6 and len(kept.removals) == MAX_REMOVAL_WINDOWS


def _damaged_states(good: bytes) -> dict[str, bytes]:
    """What a crash, a bad copy or a stranger can leave at the state's path."""
    size = int.from_bytes(good[len(MAGIC) : len(MAGIC) + 8], "little")
    header_end = len(MAGIC) + 8 + size
    return {
        "empty": b"",
        "junk": b"\x00\xff" * 100,
        "cut in the magic": good[:5],
        "cut in the size": good[: len(MAGIC) + 3],
        "cut in the header": good[: header_end - 10],
        "cut after the header": good[:header_end],
        "cut in the middle": good[: (header_end + len(good)) // 2],
        "cut in the tag": good[:-5],
        "longer": good + b"more",
        "header not an object": MAGIC + (2).to_bytes(8, "little") + b"[]",
        "header nested too deeply": MAGIC + (20_000).to_bytes(8, "little") + b"[" * 20_000,
    }


def test_a_damaged_state_is_replaced_by_the_next_run_and_removes_nobody(tmp_path: Path) -> None:
    uri = _uri(tmp_path)
    path = Path(f"{tmp_path}/states/vip.state")
    write_state(uri, _first_sync(["a@example.com", "b@example.com"]).state, None, KEYS)
    good = path.read_bytes()
    for name, data in _damaged_states(good).items():
        path.write_bytes(data)
        loaded = read_state(uri, IDENTITY, KEYS)
        assert (len(loaded.state), loaded.authenticated) == (0, False), name
        reason = loaded.distrust or ""
        assert "damaged" in reason or "not a sync state" in reason, name
        # The run that distrusted it (a full refresh) writes over it, instead of failing on a conflict.
        diff = _first_sync(["a@example.com"])
        assert diff.leavers() == []
        write_state(uri, diff.state, loaded.stored_generation, KEYS)
        again = read_state(uri, IDENTITY, KEYS)
        assert again.distrust is None and len(again.state) == 1, name
        assert again.state.generation >= 1, name


@pytest.mark.parametrize("count", [2**40, 2**62, -1, 1.5, "3", True])
def test_sizes_in_the_unauthenticated_header_never_size_a_read(tmp_path: Path, count: object) -> None:
    uri = _uri(tmp_path)
    path = Path(f"{tmp_path}/states/vip.state")
    write_state(uri, _first_sync(["a@example.com"]).state, None, KEYS)
    data = path.read_bytes()
    size = int.from_bytes(data[len(MAGIC) : len(MAGIC) + 8], "little")
    start = len(MAGIC) + 8
    header = json.loads(data[start : start + size])
    for field_name in ("count", "blob_bytes"):
        forged = json.dumps({**header, field_name: count}).encode()
        path.write_bytes(MAGIC + len(forged).to_bytes(8, "little") + forged + data[start + size :])
        loaded = read_state(uri, IDENTITY, KEYS)
        assert (
            loaded.distrust == "the stored state is damaged (cut short, or its sizes do not match the file)"
        )
        assert loaded.stored_generation == 1


def test_the_state_is_on_disk_before_and_after_the_rename(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import airflow_provider_ciexport.export.state as state_module

    events: list[str] = []
    real_fsync, real_replace = os.fsync, os.replace

    def fsync(fd: int) -> None:
        events.append("fsync folder" if stat.S_ISDIR(os.fstat(fd).st_mode) else "fsync file")
        real_fsync(fd)

    def replace(src: str, dst: str) -> None:
        events.append("rename")
        real_replace(src, dst)

    monkeypatch.setattr(state_module.os, "fsync", fsync)
    monkeypatch.setattr(state_module.os, "replace", replace)
    write_state(_uri(tmp_path), _first_sync(["a@example.com"]).state, None, KEYS)
    assert events == ["fsync file", "rename", "fsync folder"]


@pytest.mark.parametrize("stored", ["x" * 900_000, "3\nFORGED LOG LINE", [1] * 50, 99, True, None])
def test_the_format_of_an_unauthenticated_header_is_quoted_only_when_known(
    tmp_path: Path, stored: object
) -> None:
    uri = _uri(tmp_path)
    path = Path(f"{tmp_path}/states/vip.state")
    path.parent.mkdir()
    header = json.dumps({"format": stored, "generation": 4, "count": 0, "blob_bytes": 0}).encode()
    path.write_bytes(MAGIC + len(header).to_bytes(8, "little") + header + bytes(32))
    loaded = read_state(uri, IDENTITY, KEYS)
    assert loaded.distrust == "the stored state has an unknown format, not 3 (it is not authenticated)"
    assert loaded.stored_generation == 4


@pytest.mark.parametrize(
    "owner",
    ["x" * 900_000, "run 1\nERROR everything is fine", "run <script>", "owner\x1b[31m"],
)
def test_a_lease_owner_is_quoted_only_in_its_expected_shape(tmp_path: Path, owner: str) -> None:
    uri = _uri(tmp_path)
    Path(f"{tmp_path}/states").mkdir()
    other = StateLease(uri, owner)
    other._write()
    with pytest.raises(StateBusyError) as busy:
        StateLease(uri, "dag.task run manual__2 map -1 try 1").acquire()
    assert owner not in str(busy.value) and "an unexpected form" in str(busy.value)
    assert len(str(busy.value)) < 1000
    mine = StateLease(uri, "dag.task run manual__2 map -1 try 1")
    with pytest.raises(StateBusyError) as lost:
        mine.check("removing contacts")
    assert owner not in str(lost.value) and "an unexpected form" in str(lost.value)


def test_an_ordinary_lease_owner_is_named(tmp_path: Path) -> None:
    uri = _uri(tmp_path)
    Path(f"{tmp_path}/states").mkdir()
    owner = "ciexport.vip run manual__2026-12-07T02:31:07.123+00:00 map -1 try 2"
    StateLease(uri, owner)._write()
    with pytest.raises(StateBusyError, match=re.escape(f"({owner})")):
        StateLease(uri, "dag.task run=1 try 1").acquire()


def test_a_state_read_and_written_in_pieces_round_trips_and_a_changed_byte_is_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Pieces far smaller than a section: every section (and the emails) crosses several of them.
    monkeypatch.setattr(state_module, "IO_CHUNK", 1000)
    emails = [f"person.{i}@example.com" for i in range(3000)]
    diff = _first_sync(emails)
    state = _write_read(tmp_path, diff.state)
    assert sorted(state.email(i) for i in range(len(state))) == sorted(emails)
    assert all(state.keys[i] == email_key(state.email(i)) for i in range(len(state)))
    assert state.count(MANAGED) == 3000

    # A run that changes part of it writes it again in pieces; the next run reads what it wrote.
    diff = SegmentDiff(state, mirror=True)
    entries = BatchEntries()
    for email in [*emails[:1500], "new@example.com"]:
        _, index, key, digest = diff.classify(email, f'{{"email":"{email}","x":1}}'.encode())
        entries.add(index, key, digest, email)
    diff.confirm(entries, refused=None, accepted_all=True)
    again = _write_read(tmp_path, state, expected=1)
    assert len(again) == 3001 and again.generation == 2
    assert again.digests[again.find(email_key("new@example.com"))] == contact_digest(
        b'{"email":"new@example.com","x":1}'
    )

    path = Path(_uri(tmp_path).removeprefix("file://"))
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 1
    path.write_bytes(bytes(data))
    assert "authentication" in (read_state(_uri(tmp_path), IDENTITY, KEYS).distrust or "")
