"""What the state records about memberships the export may have created but did not confirm: a batch
whose refusals are not named, one in flight when a try died (the partial state), and how a
Constant Contact activity's messages name a refused contact."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from airflow_provider_ciexport.destinations.constantcontact import named_refusals
from airflow_provider_ciexport.export import claims
from airflow_provider_ciexport.export.batcher import Batch
from airflow_provider_ciexport.export.claims import ClaimJournal, KeySet, part_uri
from airflow_provider_ciexport.export.state import (
    MANAGED,
    REMOVED,
    StateIdentity,
    StateKeys,
    SyncState,
    email_key,
    read_state,
    write_state,
)
from airflow_provider_ciexport.export.sync import NEW, BatchEntries, ListMembers, SegmentDiff

KEYS = StateKeys(["the workers' secret"], "a test")
IDENTITY = StateIdentity.of("Constant Contact", "http://127.0.0.1 client x", ["l"], {"email": "email"})


def _ledger(diff: SegmentDiff, emails: list[str]) -> BatchEntries:
    entries = BatchEntries()
    for email in emails:
        _kind, index, key, digest = diff.classify(email, json.dumps({"email": email}).encode())
        entries.add(index, key, digest, email)
    return entries


def test_an_unconfirmed_batch_is_owned_and_sent_again_as_new() -> None:
    members = ListMembers(state := SyncState(IDENTITY))
    members.add("before@example.com")
    diff = SegmentDiff(state, mirror=True, members_before=members)
    diff.claim(_ledger(diff, ["a@example.com", "before@example.com"]))
    state = diff.state.folded()
    a, before = state.find(email_key("a@example.com")), state.find(email_key("before@example.com"))
    assert (state.flags[a], state.digests[a]) == (MANAGED, 0)  # the export's, values unconfirmed
    assert (state.flags[before], state.digests[before]) == (0, 0)  # it was there before: not the export's
    nxt = SegmentDiff(state, mirror=True)
    assert nxt.classify("a@example.com", b'{"email":"a@example.com"}')[0] == NEW
    assert nxt.leavers() == []  # in the segment
    assert SegmentDiff(state, mirror=True).leavers() == [a]  # out of it: removed


def test_a_removed_contact_sent_again_but_unconfirmed_is_the_exports_again() -> None:
    state = SyncState(IDENTITY)
    state.add(email_key("r@example.com"), 0, REMOVED, "r@example.com")
    state = state.folded()
    cc = SegmentDiff(state, mirror=True)  # Constant Contact: removal does not unsubscribe
    cc.claim(_ledger(cc, ["r@example.com"]))
    assert state.flags[0] == MANAGED
    state.update(0, 0, REMOVED)
    ac = SegmentDiff(state, mirror=True, removal_unsubscribes=True)  # the import cannot re-add status 2
    ac.claim(_ledger(ac, ["r@example.com"]))
    assert state.flags[0] == REMOVED


def test_folded_keeps_old_entries_and_makes_new_ones_findable() -> None:
    state = SyncState(IDENTITY)
    for i in range(5):
        state.add(email_key(f"o{i}@example.com"), i + 1, MANAGED, f"o{i}@example.com")
    state = state.folded()
    state.drop(state.find(email_key("o2@example.com")))
    state.add(email_key("n@example.com"), 0, MANAGED, "n@example.com")
    folded = state.folded()
    assert len(folded) == 5 and folded.added == 0
    assert folded.find(email_key("o2@example.com")) == -1
    n = folded.find(email_key("n@example.com"))
    assert folded.email(n) == "n@example.com" and folded.digests[n] == 0
    assert list(folded.keys) == sorted(folded.keys)


def test_a_partial_state_is_saved_before_sending_and_folded_in_by_the_retry(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    uri = f"file://{tmp_path}/vip.state"
    dead = ClaimJournal(uri, IDENTITY, 0, KEYS)
    dead.wait(dead.add([(email_key("a@example.com"), "a@example.com")]))
    dead.wait(dead.add([(email_key("b@example.com"), "b@example.com")]))
    assert [p.name for p in tmp_path.iterdir()] == [
        "vip.state.partial-g0-00000"
    ]  # rewritten, not a file each
    monkeypatch.setattr(claims, "PART_CLAIMS", 2)
    dead.wait(dead.add([(email_key("c@example.com"), "c@example.com")]))  # the first file is full
    assert (tmp_path / "vip.state.partial-g0-00001").exists()

    retry = ClaimJournal(uri, IDENTITY, 0, KEYS)
    state, claimed = retry.fold_into(SyncState(IDENTITY), removal_unsubscribes=False)
    assert claimed == 3
    for email in ("a@example.com", "b@example.com", "c@example.com"):
        index = state.find(email_key(email))
        assert (state.flags[index], state.digests[index], state.email(index)) == (MANAGED, 0, email)
    retry.wait(retry.add([(email_key("d@example.com"), "d@example.com")]))
    assert (tmp_path / "vip.state.partial-g0-00002").exists()  # the retry's own claims go after them

    # A state written on generation 0 makes generation 1: those partial states no longer apply.
    write_state(uri, state, None, KEYS)
    retry.discard()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["vip.state"]
    later, claimed = ClaimJournal(uri, IDENTITY, 1, KEYS).fold_into(
        read_state(uri, IDENTITY, KEYS).state, False
    )
    assert claimed == 0 and len(later) == 3


def test_a_partial_state_for_another_export_is_not_used(tmp_path: Path) -> None:
    uri = f"file://{tmp_path}/vip.state"
    other = StateIdentity.of("Constant Contact", "http://127.0.0.1 client x", ["other"], {"email": "email"})
    journal = ClaimJournal(uri, other, 0, KEYS)
    journal.wait(journal.add([(email_key("a@example.com"), "a@example.com")]))
    assert Path(part_uri(uri, 0, 0).removeprefix("file://")).exists()
    state, claimed = ClaimJournal(uri, IDENTITY, 0, KEYS).fold_into(SyncState(IDENTITY), False)
    assert claimed == 0 and len(state) == 0
    # Nor one signed with a key the workers do not hold (forged to mark a sign-up as the export's).
    forged = ClaimJournal(f"file://{tmp_path}/b.state", IDENTITY, 0, StateKeys(["not ours"], "a forger"))
    forged.wait(forged.add([(email_key("a@example.com"), "a@example.com")]))
    state, claimed = ClaimJournal(f"file://{tmp_path}/b.state", IDENTITY, 0, KEYS).fold_into(
        SyncState(IDENTITY), False
    )
    assert claimed == 0 and len(state) == 0


def _signed_state(uri: str, emails: list[str], flags: int = MANAGED) -> None:
    state = SyncState(IDENTITY)
    for email in emails:
        state.add(email_key(email), 1, flags, email)
    write_state(uri, state, None, KEYS)


def test_an_authentic_file_put_in_the_place_of_a_partial_state_is_not_used(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    uri = f"file://{tmp_path}/vip.state"
    # An old state of this very export (it held the person who later joined by a form), renamed.
    _signed_state(f"file://{tmp_path}/old.state", ["joined-by-form@example.com"])
    (tmp_path / "old.state").rename(tmp_path / "vip.state.partial-g0-00000")
    # A partial state of this export, but for another state generation, and another part number.
    elsewhere = ClaimJournal(uri, IDENTITY, 7, KEYS)
    elsewhere.wait(elsewhere.add([(email_key("g7@example.com"), "g7@example.com")]))
    (tmp_path / "vip.state.partial-g7-00000").rename(tmp_path / "vip.state.partial-g0-00001")
    # Another export's partial state (its own state_path, same identity).
    other = ClaimJournal(f"file://{tmp_path}/other.state", IDENTITY, 0, KEYS)
    other.wait(other.add([(email_key("o@example.com"), "o@example.com")]))
    (tmp_path / "other.state.partial-g0-00000").rename(tmp_path / "vip.state.partial-g0-00002")
    journal = ClaimJournal(uri, IDENTITY, 0, KEYS)
    state, claimed = journal.fold_into(SyncState(IDENTITY), removal_unsubscribes=False)
    assert claimed == 0 and len(state) == 0
    warnings = [r.getMessage() for r in caplog.records if "partial state" in r.getMessage()]
    assert warnings == [
        "A partial state of an earlier try is not used: it was signed as a sync state, not as a partial state.",
        "A partial state of an earlier try is not used: it was signed as another part, or for another "
        "generation of the state.",
        "A partial state of an earlier try is not used: it was signed for another state_path (another "
        "export's file, or one copied or moved here).",
    ]
    journal.discard()  # refused files go too, as unreadable ones did
    assert sorted(p.name for p in tmp_path.iterdir()) == []


def test_an_authentic_file_put_in_the_place_of_the_state_is_distrusted(tmp_path: Path) -> None:
    uri = f"file://{tmp_path}/vip.state"
    # Another export's state (another state_path; same account, list and mapping), swapped in.
    _signed_state(f"file://{tmp_path}/other.state", ["theirs@example.com"])
    (tmp_path / "other.state").rename(tmp_path / "vip.state")
    loaded = read_state(uri, IDENTITY, KEYS)
    assert (len(loaded.state), loaded.authenticated, loaded.stored_generation) == (0, True, 1)
    assert loaded.distrust == (
        "it was signed for another state_path (another export's file, or one copied or moved here)"
    )
    # A partial state of this export, put where its state is.
    journal = ClaimJournal(uri, IDENTITY, 1, KEYS)
    journal.wait(journal.add([(email_key("a@example.com"), "a@example.com")]))
    (tmp_path / "vip.state.partial-g1-00000").replace(tmp_path / "vip.state")
    loaded = read_state(uri, IDENTITY, KEYS)
    assert len(loaded.state) == 0
    assert loaded.distrust == "it was signed as a partial state, not as the state"
    # What the export writes itself is used.
    write_state(uri, SyncState(IDENTITY), loaded.stored_generation, KEYS)
    assert read_state(uri, IDENTITY, KEYS).distrust is None


def _batch(emails: list[str]) -> Batch:
    body = json.dumps({"import_data": [{"email": e} for e in emails], "list_ids": ["l"]}).encode()
    return Batch(number=1, contacts=len(emails), body=body)


def test_activity_messages_that_name_every_refused_contact_are_used() -> None:
    batch = _batch(["a@example.com", "b@example.com", "c@example.com"])
    by_place = ["import_data[1]: email exceeds the maximum length"]
    assert named_refusals(by_place, batch, 1) == ("b@example.com",)
    by_address = ["Contact C@example.com is invalid"]
    assert named_refusals(by_address, batch, 1) == ("c@example.com",)
    # Fewer named than refused (an unsubscribed contact has no message), a place outside the batch,
    # or no message at all: the refusals are unnamed.
    assert named_refusals(by_place, batch, 2) is None
    assert named_refusals(["import_data[9]: bad"], batch, 1) is None
    assert named_refusals([], batch, 1) is None
    assert named_refusals(["Contact x@elsewhere.com is invalid"], batch, 1) is None


def test_changed_contacts_of_an_unconfirmed_batch_keep_their_ownership() -> None:
    state = SyncState(IDENTITY)
    state.add(email_key("a@example.com"), 7, MANAGED, "a@example.com")
    state = state.folded()
    diff = SegmentDiff(state, mirror=True)
    entries = _ledger(diff, ["a@example.com"])
    assert diff.counts["changed"] == 1
    diff.confirm(entries, refused=None, accepted_all=False)
    assert (state.flags[0], state.digests[0]) == (MANAGED, 0)


def test_the_key_set_of_a_retry_finds_every_key_once() -> None:
    seen = KeySet()
    keys = [email_key(f"p{i}@example.com") for i in range(5_000)] + [0, 2**64 - 1, 1024, 2048]
    assert all(seen.add(key) for key in keys)  # grows past its first 1,024 slots
    assert not any(seen.add(key) for key in keys)
    assert len(seen) == len(keys)
