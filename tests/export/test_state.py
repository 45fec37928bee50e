"""The sync state file and the segment diff: what is trusted, what is recorded, what is removed."""

from __future__ import annotations

import threading
import tracemalloc
from pathlib import Path

import pytest

from airflow_provider_ciexport.export.contacts import EmailSet
from airflow_provider_ciexport.export.state import (
    MANAGED,
    REMOVED,
    StateBusyError,
    StateConflictError,
    StateIdentity,
    StateLease,
    SyncState,
    contact_digest,
    email_key,
    read_state,
    write_state,
)
from airflow_provider_ciexport.export.sync import (
    CHANGED,
    NEW,
    OPTED_OUT,
    READD,
    UNCHANGED,
    Ledger,
    RemovalLimitError,
    SegmentDiff,
)

IDENTITY = StateIdentity.of("ActiveCampaign", "https://acct.api-us1.com/api/3", [2], {"email": "email"})


def _uri(tmp_path: Path) -> str:
    return f"file://{tmp_path}/states/vip.state"


def _first_sync(
    emails: list[str], *, mirror: bool = True, members_before: EmailSet | None = None
) -> SegmentDiff:
    diff = SegmentDiff(SyncState(IDENTITY), mirror=mirror, members_before=members_before)
    ledger = Ledger()
    for email in emails:
        kind, index, key, digest = diff.classify(email, f'{{"email":"{email}"}}'.encode())
        assert kind == NEW
        ledger.add(index, key, digest, email)
    diff.confirm(ledger, refused=None, accepted_all=True)
    return diff


def _write_read(tmp_path: Path, state: SyncState, expected: int | None = None) -> SyncState:
    write_state(_uri(tmp_path), state, expected)
    loaded = read_state(_uri(tmp_path), IDENTITY)
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
        write_state(_uri(tmp_path), diff.state, None)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()

    state = read_state(_uri(tmp_path), IDENTITY).state
    assert list(state.keys) == sorted(state.keys)
    assert {state.email(i): state.digests[i] for i in range(len(state))} == digests
    assert all(state.keys[i] == email_key(state.email(i)) for i in range(len(state)))
    # The sections are copied one at a time (under 1 MB each here); a tuple per entry to place them
    # would take some 10 MB more.
    assert peak < 6_000_000, peak


def test_members_before_the_export_are_not_its_to_remove(tmp_path: Path) -> None:
    before = EmailSet()
    before.add("form@example.com")
    diff = _first_sync(["form@example.com", "new@example.com"], members_before=before)
    state = _write_read(tmp_path, diff.state)
    flags = {state.email(i): state.flags[i] for i in range(len(state))}
    assert flags == {"form@example.com": 0, "new@example.com": MANAGED}


def test_upsert_records_nothing_as_the_exports_to_remove(tmp_path: Path) -> None:
    state = _write_read(tmp_path, _first_sync(["a@example.com"], mirror=False).state)
    assert state.count(MANAGED) == 0


def test_incremental_classification_and_merge(tmp_path: Path) -> None:
    emails = [f"p{i}@example.com" for i in range(10)]
    state = _write_read(tmp_path, _first_sync(emails).state)
    diff = SegmentDiff(state, mirror=True)
    kinds = {}
    ledger = Ledger()
    for i, email in enumerate([*emails[:8], "new@example.com"]):
        body = (
            f'{{"email":"{email}","first_name":"{"X" if i == 1 else ""}"}}'
            if i == 1
            else f'{{"email":"{email}"}}'
        )
        kind, index, key, digest = diff.classify(email, body.encode())
        kinds[email] = kind
        if kind != UNCHANGED:
            ledger.add(index, key, digest, email)
    assert kinds["p0@example.com"] == UNCHANGED and kinds["p1@example.com"] == CHANGED
    assert kinds["new@example.com"] == NEW
    assert diff.counts["unchanged"] == 7 and diff.counts["changed"] == 1 and diff.counts["new"] == 1
    leavers = diff.leavers()
    assert sorted(state.email(i) for i in leavers) == ["p8@example.com", "p9@example.com"]
    diff.confirm(ledger, refused=None, accepted_all=True)
    diff.removed(leavers[:1])
    diff.forget(leavers[1:])
    after = _write_read(tmp_path, state, expected=1)
    by_email = {after.email(i): (after.flags[i], after.digests[i]) for i in range(len(after))}
    assert len(after) == 10 and after.generation == 2
    assert by_email[state.email(leavers[0])] == (REMOVED, 0)
    assert state.email(leavers[1]) not in by_email
    assert by_email["new@example.com"][0] == MANAGED

    # The removed contact comes back: it is re-added, and then it is the export's again.
    diff = SegmentDiff(after, mirror=True)
    gone = state.email(leavers[0])
    kind, index, key, digest = diff.classify(gone, f'{{"email":"{gone}"}}'.encode())
    assert kind == READD and diff.readd_emails == [gone]
    ledger = Ledger()
    ledger.add(index, key, digest, gone)
    diff.confirm(ledger, refused=None, accepted_all=True)
    assert after.flags[index] == MANAGED and after.digests[index] == digest


def test_refused_and_unconfirmed_contacts_are_sent_again(tmp_path: Path) -> None:
    state = _write_read(tmp_path, _first_sync(["a@example.com", "b@example.com"]).state)
    diff = SegmentDiff(state, mirror=True)
    ledger = Ledger()
    for email in ("a@example.com", "b@example.com", "c@example.com", "d@example.com"):
        _kind, index, key, digest = diff.classify(email, f'{{"email":"{email}","v":1}}'.encode())
        ledger.add(index, key, digest, email)
    old = {i: state.digests[i] for i in range(len(state))}
    diff.confirm(ledger, refused=["B@example.com", "d@example.com"], accepted_all=False)
    after = _write_read(tmp_path, state, expected=1)
    recorded = {after.email(i): after.digests[i] for i in range(len(after))}
    assert set(recorded) == {"a@example.com", "b@example.com", "c@example.com"}
    b = state.find(email_key("b@example.com"))
    assert recorded["b@example.com"] == old[b]  # its old digest: it counts as changed next run
    # Refusals without names (Constant Contact's counts): nothing of the batch is recorded.
    diff = SegmentDiff(after, mirror=True)
    ledger = Ledger()
    _, index, key, digest = diff.classify("z@example.com", b"{}")
    ledger.add(index, key, digest, "z@example.com")
    diff.confirm(ledger, refused=None, accepted_all=False)
    assert after.added == 0


def test_opted_out_people_are_skipped_and_forgotten_unless_the_export_removed_them(tmp_path: Path) -> None:
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
    assert [after.email(i) for i in range(len(after))] == ["b@example.com"]
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
    write_state(uri, _first_sync(["a@example.com"]).state, None)
    other = StateIdentity.of("ActiveCampaign", "https://acct.api-us1.com/api/3", [3], {"email": "mail"})
    loaded = read_state(uri, other)
    assert len(loaded.state) == 0 and loaded.stored_generation == 1
    assert loaded.distrust == "it was written for another lists, field mapping"
    path = Path(f"{tmp_path}/states/vip.state")
    data = bytearray(path.read_bytes())
    data[-3] ^= 0xFF
    path.write_bytes(bytes(data))
    assert read_state(uri, IDENTITY).distrust == "the stored state is damaged (checksum)"
    path.write_bytes(b"name,email\n")
    assert read_state(uri, IDENTITY).distrust == "the file at state_path is not a sync state"
    assert read_state(f"file://{tmp_path}/none.state", IDENTITY).distrust is None


def test_a_write_never_overwrites_another_runs_state(tmp_path: Path) -> None:
    uri = _uri(tmp_path)
    write_state(uri, _first_sync(["a@example.com"]).state, None)
    first = read_state(uri, IDENTITY)
    second = read_state(uri, IDENTITY)
    write_state(uri, second.state, second.stored_generation)
    with pytest.raises(StateConflictError, match="another run"):
        write_state(uri, first.state, first.stored_generation)
    assert read_state(uri, IDENTITY).state.generation == 2
    assert [p.name for p in Path(f"{tmp_path}/states").iterdir()] == ["vip.state"]  # no temporary left


def test_the_lease_keeps_a_second_run_out(tmp_path: Path) -> None:
    uri = _uri(tmp_path)
    Path(f"{tmp_path}/states").mkdir()
    first = StateLease(uri, "dag.task run=scheduled__1")
    first.acquire()
    with pytest.raises(StateBusyError, match=r"scheduled__1.*Nothing was sent"):
        StateLease(uri, "dag.task run=manual__2").acquire()
    retry = StateLease(uri, "dag.task run=scheduled__1")  # the same task instance, retried
    retry.acquire()
    retry.release()
    first.release()
    stale = StateLease(uri, "dag.task run=manual__2", ttl_s=0.0)
    later = StateLease(uri, "dag.task run=scheduled__3")
    stale.acquire()
    stale.release()
    later.acquire()
    later.release()
    assert not Path(f"{tmp_path}/states/vip.state.lock").exists()


def test_concurrent_confirmations_are_all_recorded(tmp_path: Path) -> None:
    diff = SegmentDiff(SyncState(IDENTITY), mirror=True)
    ledgers = []
    for t in range(4):
        ledger = Ledger()
        for i in range(500):
            email = f"t{t}.{i}@example.com"
            _, index, key, digest = diff.classify(email, email.encode())
            ledger.add(index, key, digest, email)
        ledgers.append(ledger)
    threads = [threading.Thread(target=diff.confirm, args=(ledger, None, True)) for ledger in ledgers]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(_write_read(tmp_path, diff.state)) == 2000
