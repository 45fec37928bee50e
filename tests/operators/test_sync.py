"""Keeping lists equal to their segments, against the sandbox over real HTTP: incremental sends,
mirror removals, and consent that is never overridden, on every path, for both destinations."""

from __future__ import annotations

import json
import logging
import os
import stat
import time
from datetime import timedelta
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from airflow_provider_ciexport.destinations.activecampaign import ActiveCampaignDestination
from airflow_provider_ciexport.destinations.constantcontact import ConstantContactDestination
from airflow_provider_ciexport.exceptions import ExportConfigurationError
from airflow_provider_ciexport.export.state import MANAGED, REMOVED, StateBusyError, StateLease
from airflow_provider_ciexport.export.sync import RemovalLimitError, SyncSettings
from airflow_provider_ciexport.operators.activecampaign import ActiveCampaignSegmentExportOperator
from airflow_provider_ciexport.operators.constantcontact import ConstantContactSegmentExportOperator
from airflow_provider_ciexport.tools.sandbox import seed
from airflow_provider_ciexport.tools.sandbox.client import SandboxClient
from tests.export.forgery import forge_flags, format_1_state
from tests.support import posts, set_connection

pytestmark = [pytest.mark.integration, pytest.mark.scaled_limits]

AC_LIST = seed.AC_LIST_VIP
CC_LIST = "22222222-2222-4222-8222-222222222222"
MAPPING = {"email": "email", "first_name": "first"}
SEGMENT = [{"email": f"person.{i}@example.com", "first": f"P{i}"} for i in range(30)]


class Target:
    """One destination as the tests see it: run an export, read a list, make a person opt out."""

    def __init__(self, name: str, conn: str, sandbox: SandboxClient, state: str) -> None:
        self.name, self.conn, self.sandbox, self.state = name, conn, sandbox, state

    def run(
        self, records: list[dict[str, Any]] | None, context: dict[str, Any] | None = None, **kwargs: Any
    ) -> dict[str, Any]:
        op = self.operator(records, **kwargs)
        report: dict[str, Any] = op.execute(context=context or {})
        _check_invariants(report)
        return report

    def operator(self, records: list[dict[str, Any]] | None, **kwargs: Any) -> Any:
        params: dict[str, Any] = {
            "task_id": "export",
            "records": records,
            "field_mapping": MAPPING,
            "state_path": self.state,
            "sync_mode": "mirror",
            **kwargs,
        }
        if self.name == "ac":
            op: Any = ActiveCampaignSegmentExportOperator(
                list_id=AC_LIST, activecampaign_conn_id=self.conn, **params
            )
        else:
            op = ConstantContactSegmentExportOperator(
                list_id=CC_LIST, constantcontact_conn_id=self.conn, **params
            )
        return op

    @property
    def file(self) -> Path:
        """The state file on local disk."""
        return Path(self.state.removeprefix("file://"))

    @property
    def destination_class(self) -> type[Any]:
        return ActiveCampaignDestination if self.name == "ac" else ConstantContactDestination

    def members(self) -> dict[str, dict[str, Any]]:
        if self.name == "ac":
            return {c["email"]: c for c in self.sandbox.ac_list_contacts(AC_LIST)}
        return {c["email"]: c for c in self.sandbox.cc_list_contacts(CC_LIST)}

    def unsubscribe(self, email: str) -> None:
        """The person unsubscribes by their own action (AC: from the list; CC: from all email)."""
        if self.name == "ac":
            self.sandbox.ac_unsubscribe(AC_LIST, email)
        else:
            self.sandbox.cc_unsubscribe(None, email)

    def signup(self, email: str) -> None:
        if self.name == "ac":
            self.sandbox.ac_signup(AC_LIST, email)
        else:
            self.sandbox.cc_signup(CC_LIST, email)

    def delete(self, email: str) -> None:
        """A user deletes the contact in the vendor's app."""
        if self.name == "ac":
            self.sandbox.ac_delete_contact(email)
        else:
            self.sandbox.cc_delete_contact(email)

    def empty_account(self) -> None:
        """A user deletes every contact of the account."""
        if self.name == "ac":
            self.sandbox.ac_empty_account()
        else:
            self.sandbox.cc_empty_account()

    def sends(self) -> int:
        """Import and removal requests made so far."""
        stats = self.sandbox.stats()
        api = "ac" if self.name == "ac" else "cc"
        by_endpoint = stats["requests"].get(api, {}).get("by_endpoint", {})
        return sum(v["count"] for k, v in by_endpoint.items() if k in _WRITES)

    def violations(self) -> dict[str, int]:
        counters = self.sandbox.stats()["counters"]
        return {k: v for k, v in counters.items() if ".violation." in k}


_WRITES = {
    "POST /api/3/import/bulk_import",
    "POST /api/3/contact/sync",
    "POST /api/3/contactLists",
    "POST /v3/activities/contacts_json_import",
    "POST /v3/activities/remove_list_memberships",
}


def _check_invariants(report: dict[str, Any]) -> None:
    """What the README promises about every sync report."""
    assert report["read"] == (
        report["invalid"]
        + report["duplicates"]
        + report["skipped_unsubscribed"]
        + report["unchanged"]
        + (report["would_submit"] if report["dry_run"] else report["submitted"])
    ), report
    if not report["dry_run"]:
        assert report["submitted"] == (
            report["new"]
            + report["changed"]
            + report["readded"]
            + report["readd_refused"]
            + report["restored"]
        )
        assert report["submitted"] == report["accepted"] + report["rejected"], report
    json.dumps(report)


@pytest.fixture(params=["ac", "cc"])
def target(request: pytest.FixtureRequest, sandbox: SandboxClient, tmp_path: Path) -> Target:
    conn = request.getfixturevalue("ac_conn" if request.param == "ac" else "cc_conn")
    return Target(request.param, conn, sandbox, f"file://{tmp_path}/state/vip.state")


def _with(segment: list[dict[str, Any]], **changes: str) -> list[dict[str, Any]]:
    return [{**row, "first": changes.get(row["email"], row["first"])} for row in segment]


def test_first_sync_then_only_changes_are_sent(target: Target) -> None:
    first = target.run(SEGMENT)
    assert (first["new"], first["unchanged"], first["submitted"]) == (30, 0, 30)
    assert first["full_refresh_reason"] is None and first["state_entries"] == 0
    assert set(target.members()) == {r["email"] for r in SEGMENT}

    before = target.sends()
    again = target.run(SEGMENT)
    assert (again["unchanged"], again["submitted"], again["to_remove"]) == (30, 0, 0)
    assert target.sends() == before  # an unchanged segment makes no import and no removal request

    segment = [
        *_with(SEGMENT, **{"person.1@example.com": "Changed"}),
        {"email": "new@example.com", "first": "N"},
    ]
    third = target.run(segment)
    assert (third["new"], third["changed"], third["unchanged"], third["submitted"]) == (1, 1, 29, 2)
    members = target.members()
    assert set(members) == {r["email"] for r in segment}
    first_name = (
        members["person.1@example.com"].get("first_name")
        or members["person.1@example.com"]["attributes"]["first_name"]
    )
    assert first_name == "Changed"


def test_mirror_removes_only_what_the_export_added_and_readds_who_comes_back(target: Target) -> None:
    target.signup("form.only@example.com")  # never in the segment
    target.signup("person.0@example.com")  # joined by a form before the export ever ran
    target.run(SEGMENT)
    left = ["person.0@example.com", "person.1@example.com", "person.2@example.com"]
    report = target.run([r for r in SEGMENT if r["email"] not in left])
    assert (report["to_remove"], report["removed"]) == (2, 2)
    members = set(target.members())
    assert members == {r["email"] for r in SEGMENT[3:]} | {"form.only@example.com", "person.0@example.com"}

    back = target.run(SEGMENT)
    assert (back["readded"], back["unchanged"], back["to_remove"]) == (2, 28, 0)
    assert set(target.members()) == {r["email"] for r in SEGMENT} | {"form.only@example.com"}
    assert target.violations() == {}


def test_a_person_who_unsubscribed_is_never_put_back(target: Target) -> None:
    target.sandbox.configure(cc_import_resubscribes=True)  # the vendor guide's warning, made real
    target.unsubscribe("person.29@example.com")  # before the first sync
    first = target.run(SEGMENT)
    assert first["skipped_unsubscribed"] == 1 and first["new"] == 29

    target.unsubscribe("person.5@example.com")  # after the export added them
    changed = _with(SEGMENT, **{"person.5@example.com": "Changed", "person.29@example.com": "Changed"})
    second = target.run(changed)
    assert second["skipped_unsubscribed"] == 2 and second["submitted"] == 0

    gone = [r for r in changed if r["email"] != "person.5@example.com"]
    third = target.run(gone)  # they leave the segment: not the export's to remove any more
    assert third["to_remove"] == 0
    fourth = target.run(changed)  # and come back
    assert fourth["skipped_unsubscribed"] == 2 and fourth["readded"] == 0
    members = set(target.members())
    assert "person.5@example.com" not in members and "person.29@example.com" not in members
    assert len(members) == 28
    assert target.violations() == {}


def _opt_out_reads(target: Target, since: int) -> tuple[int, int]:
    """(reads of everyone who opted out, reads of who opted out since a time) in the requests after the
    first ``since``; a count alone (``limit=1``) is neither."""
    log = target.sandbox.requests_log(target.name)[since:]
    full = since_reads = 0
    for entry in log:
        query, body = str(entry.get("query") or ""), str(entry.get("body") or "")
        if target.name == "ac":
            if entry["path"].endswith("/contacts") and "status=2" in query and "limit=1&" not in f"{query}&":
                if "updated_after" in query:
                    since_reads += 1
                else:
                    full += 1
        elif "optout_after" in query:
            since_reads += 1
        elif entry["path"].endswith("/contact_exports") and "unsubscribed" in body:
            full += 1
    return full, since_reads


def test_who_opted_out_is_read_again_only_as_far_as_it_changed(target: Target) -> None:
    target.sandbox.configure(record_bodies=True)  # to tell a contact export of opt-outs from one of members
    start = len(target.sandbox.requests_log(target.name))
    target.run(SEGMENT)
    assert _opt_out_reads(target, start) == (1, 0)  # the first sync reads everyone
    start = len(target.sandbox.requests_log(target.name))
    churn = target.run(SEGMENT[3:])  # 3 removed: on ActiveCampaign, 3 more with status 2
    assert churn["removed"] == 3
    assert _opt_out_reads(target, start) == (0, 0)

    target.unsubscribe("person.10@example.com")
    start = len(target.sandbox.requests_log(target.name))
    changed = _with(SEGMENT, **{"person.10@example.com": "Changed"})
    report = target.run(changed)
    assert (report["skipped_unsubscribed"], report["readded"], report["changed"]) == (1, 3, 0)
    assert _opt_out_reads(target, start) == (0, 1)
    assert "person.10@example.com" not in target.members()
    assert len(target.members()) == 29
    assert target.violations() == {}


def test_ac_removed_then_unsubscribed_from_all_email_is_not_readded(
    ac_conn: str, sandbox: SandboxClient, tmp_path: Path
) -> None:
    target = Target("ac", ac_conn, sandbox, f"file://{tmp_path}/vip.state")
    sandbox.ac_signup(seed.AC_LIST_NEWSLETTER, "person.3@example.com")
    target.run(SEGMENT)
    target.run([r for r in SEGMENT if r["email"] not in ("person.3@example.com", "person.4@example.com")])
    sandbox.ac_unsubscribe(None, "person.3@example.com")  # unsubscribes from all email meanwhile
    sandbox.ac_exclude("person.4@example.com")  # and this one is put on the exclusion list
    back = target.run(SEGMENT)
    assert (back["readded"], back["readd_refused"]) == (0, 2)
    members = set(target.members())
    assert "person.3@example.com" not in members and "person.4@example.com" not in members
    assert target.violations() == {}


def test_the_safety_limit_stops_a_run_before_anything_is_sent_or_removed(target: Target) -> None:
    target.run(SEGMENT)
    before = target.sends()
    shrunk = _with(SEGMENT[:20], **{"person.0@example.com": "Changed"})
    with pytest.raises(RemovalLimitError, match=r"10 contacts left .*max_removal_fraction=0.2.*30 "):
        target.run(shrunk)
    with pytest.raises(RemovalLimitError, match=r"segment is empty.*30 contacts"):
        target.run([])
    assert target.sends() == before
    assert len(target.members()) == 30
    report = target.run(shrunk, max_removal_fraction=0.5)
    assert (report["removed"], report["changed"]) == (10, 1)
    assert set(target.members()) == {r["email"] for r in shrunk}


def test_a_state_for_another_mapping_is_replaced_only_by_a_full_refresh(target: Target) -> None:
    target.run(SEGMENT, field_mapping={"email": "email"})
    stored, sends = target.file.read_bytes(), target.sends()
    with pytest.raises(ExportConfigurationError) as error:
        target.run(SEGMENT)
    message = str(error.value)
    assert message.startswith(
        "The sync state at state_path belongs to another export: it was written for another field mapping "
    )
    assert "run once with full_refresh=True" in message and message.endswith(
        "replaces the state). Nothing was sent."
    )
    assert (target.file.read_bytes(), target.sends()) == (stored, sends)
    report = target.run(SEGMENT, full_refresh=True)
    assert report["full_refresh_reason"] == (
        "full_refresh=True replaces a state of another export (it was written for another field mapping)"
    )
    assert (report["new"], report["submitted"], report["to_remove"]) == (30, 30, 0)
    again = target.run(SEGMENT)
    assert again["full_refresh_reason"] is None and again["unchanged"] == 30


def test_dry_run_shows_what_would_happen_and_changes_nothing(target: Target) -> None:
    target.run(SEGMENT)
    before = target.sends()
    segment = [
        *_with(SEGMENT[2:], **{"person.9@example.com": "Changed"}),
        {"email": "new@example.com", "first": "N"},
    ]
    report = target.run(segment, dry_run=True)
    assert (report["new"], report["changed"], report["unchanged"], report["to_remove"]) == (1, 1, 27, 2)
    assert target.sends() == before and len(target.members()) == 30
    assert target.run(SEGMENT)["unchanged"] == 30  # the state was not touched


def test_upsert_with_a_state_sends_changes_and_removes_nobody(target: Target) -> None:
    target.run(SEGMENT, sync_mode="upsert")
    report = target.run(SEGMENT[5:], sync_mode="upsert")
    assert (report["unchanged"], report["to_remove"], report["removed"]) == (25, 0, 0)
    assert len(target.members()) == 30


def test_a_list_emptied_outside_the_export_is_the_segment_again_after_the_next_run(
    target: Target,
) -> None:
    target.run(SEGMENT)
    target.empty_account()
    target.signup("Joined.After@Example.com")  # by a form, after the clean-up: never removed
    segment = [r for r in SEGMENT if r["email"] != "person.0@example.com"]  # one left the segment
    repaired = target.run(segment)
    assert (repaired["restored"], repaired["unchanged"], repaired["to_remove"]) == (29, 0, 0)
    members = {email.lower() for email in target.members()}
    assert members == {r["email"] for r in segment} | {"joined.after@example.com"}
    again = target.run(segment)
    assert (again["unchanged"], again["submitted"], again["restored"]) == (29, 0, 0)


@pytest.mark.parametrize("mode", ["upsert", "mirror"])
def test_contacts_deleted_outside_the_export_are_put_back_unless_they_unsubscribed(
    target: Target, mode: str
) -> None:
    target.run(SEGMENT, sync_mode=mode)
    target.delete("person.3@example.com")
    target.delete("person.4@example.com")
    target.unsubscribe("person.5@example.com")
    repaired = target.run(SEGMENT, sync_mode=mode)
    assert (repaired["restored"], repaired["skipped_unsubscribed"]) == (2, 1)
    assert set(target.members()) == {r["email"] for r in SEGMENT} - {"person.5@example.com"}
    assert target.run(SEGMENT, sync_mode=mode)["submitted"] == 0


def test_a_second_run_on_the_same_state_fails_before_sending(target: Target) -> None:
    lease = StateLease(target.state.removeprefix("file://"), "scheduled run still going")
    Path(target.state.removeprefix("file://")).parent.mkdir(parents=True, exist_ok=True)
    lease.acquire()
    try:
        with pytest.raises(StateBusyError, match="scheduled run still going"):
            target.run(SEGMENT)
    finally:
        lease.release()
    assert target.members() == {} and posts(target.sandbox.stats(), target.name) == []


def test_mirror_needs_a_state_path() -> None:
    with pytest.raises(ExportConfigurationError, match="state_path"):
        ActiveCampaignSegmentExportOperator(
            task_id="x", list_id=2, records=[], field_mapping=MAPPING, sync_mode="mirror"
        )
    op = ActiveCampaignSegmentExportOperator(
        task_id="x", list_id=2, records=[], field_mapping=MAPPING, state_path="file:///tmp/s"
    )
    assert op.max_active_tis_per_dag == 1


@pytest.mark.parametrize("every", [7, "7d", timedelta(days=-1)])
def test_check_members_every_takes_a_timedelta_and_says_so(every: Any) -> None:
    with pytest.raises(ExportConfigurationError, match=r"check_members_every must be a datetime\.timedelta"):
        ActiveCampaignSegmentExportOperator(
            task_id="x",
            list_id=2,
            records=[],
            field_mapping=MAPPING,
            state_path="file:///tmp/s",
            check_members_every=every,
        )


def test_a_mirror_state_path_that_renders_empty_fails_before_anything_is_read() -> None:
    op = ActiveCampaignSegmentExportOperator(
        task_id="x",
        list_id=2,
        records=[],
        field_mapping=MAPPING,
        sync_mode="mirror",
        state_path="{{ params.state }}",
    )
    op.state_path = "  "  # as rendered from an empty Param
    with pytest.raises(ExportConfigurationError, match="needs state_path, and it rendered empty"):
        op._sync_settings({})


def test_an_unknown_sync_mode_fails_in_the_dag_and_in_the_engine() -> None:
    with pytest.raises(
        ExportConfigurationError, match=r"sync_mode must be 'upsert' or 'mirror', not 'Mirror'"
    ):
        ActiveCampaignSegmentExportOperator(
            task_id="x",
            list_id=2,
            records=[],
            field_mapping=MAPPING,
            sync_mode="Mirror",
            state_path="file:///s",
        )
    with pytest.raises(ExportConfigurationError, match=r"not 'sideways'"):
        SyncSettings(state_path="file:///s", mode="sideways")


# -- the state's protection (issue 19, items 10 to 13) -------------------------------------------


def test_a_state_forged_to_remove_a_sign_up_is_not_trusted(target: Target) -> None:
    target.signup("person.0@example.com")  # on the list by their own sign-up before the first run
    target.run(SEGMENT)
    # Someone who can write the bucket (but holds no key) marks that membership as the export's.
    forge_flags(target.file, {"person.0@example.com": MANAGED})
    report = target.run(SEGMENT[1:])  # and the person leaves the segment
    assert "person.0@example.com" in target.members()
    assert (report["removed"], report["to_remove"], report["state_authenticated"]) == (0, 0, False)
    assert "authentication check" in report["full_refresh_reason"]
    assert target.violations() == {}
    assert target.run(SEGMENT[1:])["state_authenticated"] is True  # the next run trusts its own state


def test_ac_a_state_forged_to_resubscribe_someone_who_unsubscribed_is_not_trusted(
    ac_conn: str, sandbox: SandboxClient, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    target = Target("ac", ac_conn, sandbox, f"file://{tmp_path}/vip.state")
    target.run(SEGMENT)
    target.unsubscribe("person.3@example.com")  # their own action
    forge_flags(target.file, {"person.3@example.com": REMOVED})  # "the export removed them"
    report = target.run(SEGMENT)
    assert "person.3@example.com" not in target.members()
    assert target.violations() == {}
    assert (report["readded"], report["skipped_unsubscribed"], report["state_authenticated"]) == (0, 1, False)
    warning = [
        r.getMessage() for r in caplog.records if r.levelname == "WARNING" and "sync state" in r.getMessage()
    ]
    assert warning and "authentication check" in warning[0] and "@" not in warning[0]


def test_a_state_of_the_unauthenticated_old_format_is_a_full_refresh_that_removes_nobody(
    target: Target,
) -> None:
    target.run(SEGMENT)
    header = json.loads(
        target.file.read_bytes()[28 : 28 + int.from_bytes(target.file.read_bytes()[20:28], "little")]
    )
    target.signup("signed.up@example.com")
    emails = [r["email"] for r in SEGMENT] + ["signed.up@example.com"]
    target.file.write_bytes(format_1_state(emails, MANAGED, header["identity"]))
    report = target.run(SEGMENT)
    assert report["full_refresh_reason"] == "the stored state has format 1, not 3 (it is not authenticated)"
    assert (report["new"], report["removed"], report["state_authenticated"]) == (30, 0, False)
    assert "signed.up@example.com" in target.members()
    assert target.run(SEGMENT)["unchanged"] == 30


@pytest.mark.parametrize("damage", ["empty", "cut in the middle", "huge forged format"])
def test_a_damaged_state_is_one_full_refresh_that_removes_nobody_and_is_replaced(
    target: Target, damage: str
) -> None:
    target.run(SEGMENT)
    target.signup("signed.up@example.com")
    data = target.file.read_bytes()
    if damage == "empty":  # a crash before the file's blocks reached the disk
        target.file.write_bytes(b"")
    elif damage == "cut in the middle":
        target.file.write_bytes(data[: len(data) // 2])
    else:
        size = int.from_bytes(data[20:28], "little")
        forged = json.dumps({**json.loads(data[28 : 28 + size]), "format": "x" * 900_000}).encode()
        target.file.write_bytes(data[:20] + len(forged).to_bytes(8, "little") + forged + data[28 + size :])
    report = target.run(SEGMENT[1:])  # person.0 left the segment: a trusted state would remove them
    assert (report["new"], report["removed"], report["state_authenticated"]) == (29, 0, False)
    assert len(report["full_refresh_reason"]) < 200
    assert "person.0@example.com" in target.members() and "signed.up@example.com" in target.members()
    again = target.run(SEGMENT[1:])
    assert (again["full_refresh_reason"], again["unchanged"], again["state_authenticated"]) == (
        None,
        29,
        True,
    )


def test_the_state_is_private_and_a_killed_writes_copy_is_deleted(target: Target, tmp_path: Path) -> None:
    target.state = f"file://{tmp_path}/private/deeper/vip.state"
    old = os.umask(0o022)
    try:
        target.run(SEGMENT)
        assert stat.S_IMODE(os.stat(tmp_path / "private").st_mode) == 0o700
        assert stat.S_IMODE(os.stat(tmp_path / "private/deeper").st_mode) == 0o700
        assert stat.S_IMODE(target.file.stat().st_mode) == 0o600
        folder = tmp_path / "private/deeper"
        (folder / "vip.state.tmp-0123456789ab").write_bytes(b"every email of a killed write")
        (folder / "vip.state.tmp-notes.txt").write_bytes(b"not the export's")
        target.run(SEGMENT)
    finally:
        os.umask(old)
    assert sorted(p.name for p in folder.iterdir()) == ["vip.state", "vip.state.tmp-notes.txt"]
    assert stat.S_IMODE(target.file.stat().st_mode) == 0o600


def test_a_param_cannot_make_state_path_leave_its_folder(target: Target, tmp_path: Path) -> None:
    victim = tmp_path / "victim"
    victim.mkdir()
    (victim / "x.state.lock").write_text("another program's lock\n")
    target.state = f"file://{tmp_path}/states/{{{{ params.seg }}}}.state"
    for seg in ("../victim/x", "%2e%2e/victim/x", "..\\victim\\x"):
        op = target.operator(SEGMENT)
        context: dict[str, Any] = {"params": {"seg": seg}}
        op.render_template_fields(context)
        assert "{{" not in op.state_path
        with pytest.raises(
            ExportConfigurationError, match=r"state_path .*nothing was read. Nothing was sent"
        ):
            op.execute(context)
    assert sorted(p.name for p in victim.iterdir()) == ["x.state.lock"]
    assert (victim / "x.state.lock").read_text() == "another program's lock\n"
    assert target.members() == {} and posts(target.sandbox.stats(), target.name) == []


def test_a_lock_file_that_is_not_the_exports_lease_is_left_alone(target: Target) -> None:
    target.file.parent.mkdir(parents=True)
    lock = target.file.parent / "vip.state.lock"
    lock.write_text("another program's lock\n")
    with pytest.raises(ExportConfigurationError, match="not a lease of this provider"):
        target.run(SEGMENT)
    assert lock.read_text() == "another program's lock\n"
    assert target.members() == {} and posts(target.sandbox.stats(), target.name) == []


def test_a_second_run_fails_on_the_lease_before_it_reads_the_segment(
    target: Target, caplog: pytest.LogCaptureFixture
) -> None:
    target.file.parent.mkdir(parents=True)
    holder = StateLease(target.state, "ciexport.vip run scheduled__1 map -1 try 1")
    holder.acquire()
    try:
        with (
            caplog.at_level(logging.INFO, logger="airflow_provider_ciexport"),
            pytest.raises(StateBusyError, match="scheduled__1"),
        ):
            target.run(SEGMENT)
    finally:
        holder.release()
    assert not [r for r in caplog.records if "Reading the" in r.getMessage()]  # not spooled first
    assert target.members() == {} and posts(target.sandbox.stats(), target.name) == []


def test_a_retry_fails_while_its_zombie_try_still_holds_the_lease(target: Target) -> None:
    def ti(try_number: int) -> SimpleNamespace:
        return SimpleNamespace(
            dag_id="ciexport", task_id="export", run_id="scheduled__1", map_index=-1, try_number=try_number
        )

    # Try 1 lost its heartbeat but still runs: it holds (and renews) the lease as the operator took it.
    settings = target.operator(SEGMENT)._sync_settings({"ti": ti(1)})
    target.file.parent.mkdir(parents=True)
    zombie = StateLease(target.state, settings.lease_owner)
    zombie.acquire()
    try:
        with pytest.raises(StateBusyError, match="try 1"):
            target.run(SEGMENT, context={"ti": ti(2)})
    finally:
        zombie.release()
    assert target.members() == {} and posts(target.sandbox.stats(), target.name) == []


def test_a_run_that_lost_its_lease_removes_nobody_and_does_not_write_the_state(
    target: Target, monkeypatch: pytest.MonkeyPatch
) -> None:
    target.run(SEGMENT)
    before = target.file.read_bytes()
    cls = target.destination_class
    count_opt_outs = cls.opted_out_count

    def taken_meanwhile(self: Any) -> Any:
        # Another run took the lease over while this one ran (e.g. after its renewals stalled).
        StateLease(target.state, "ciexport.vip run manual__2 map -1 try 1")._write()
        return count_opt_outs(self)

    monkeypatch.setattr(cls, "opted_out_count", taken_meanwhile)
    with pytest.raises(StateBusyError, match=r"no longer holds .*manual__2.*before removing contacts"):
        target.run(_with(SEGMENT[3:], **{"person.9@example.com": "Changed"}))
    assert len(target.members()) == 30  # the 3 that left are still there: nothing was removed
    assert target.file.read_bytes() == before
    assert target.violations() == {}


# -- ownership apart from confirmation (issue 19, items 14 and 15) --------------------------------


@pytest.mark.parametrize("named", [True, False], ids=["activity-names-it", "activity-does-not-say"])
def test_cc_a_refused_contact_does_not_orphan_its_batch(
    named: bool, cc_conn: str, sandbox: SandboxClient, tmp_path: Path
) -> None:
    """An import that could not add one contact added the rest all the same: they are the export's,
    so when they leave the segment they are removed, whether or not the activity says which failed."""
    target = Target("cc", cc_conn, sandbox, f"file://{tmp_path}/vip.state")
    sandbox.configure(cc_email_max_length=50, cc_activity_errors_name_rows=named)
    refused = {"email": f"{'x' * 50}@example.com", "first": "Long"}  # valid here, too long for the import
    first = target.run([*SEGMENT, refused])
    assert (first["accepted"], first["rejected"]) == (30, 1)
    assert set(target.members()) == {r["email"] for r in SEGMENT}

    stayed = SEGMENT[5:]
    second = target.run([*stayed, refused])
    assert (second["to_remove"], second["removed"]) == (5, 5)
    # Named: only the refused contact is sent again; not named: its whole batch, unconfirmed.
    assert second["submitted"] == (1 if named else 26)
    assert set(target.members()) == {r["email"] for r in stayed}
    third = target.run(stayed)  # the refused contact leaves too: nothing of it is on the list
    assert set(target.members()) == {r["email"] for r in stayed}
    assert third["removal_refused"] == 0


@pytest.mark.parametrize("name", ["ac", "cc"])
def test_a_mirror_export_killed_mid_way_and_retried_keeps_what_it_added(
    name: str,
    sandbox: SandboxClient,
    sandbox_server: Any,
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
) -> None:
    """The first try dies after six imports, before it could write a state (as under SIGKILL); the
    retry must not take what that try added for members that were there before the export."""
    from airflow_provider_ciexport.destinations.activecampaign import ActiveCampaignDestination
    from airflow_provider_ciexport.destinations.constantcontact import ConstantContactDestination
    from airflow_provider_ciexport.export import sync_run

    sandbox.configure(rate_scale=5)
    cls: Any
    if name == "ac":
        extras = {"requests_per_second": 25, "imports_per_minute": 500}
        conn = set_connection(monkeypatch, "ac_fast", **sandbox_server.ac_connection(**extras))
        cls = ActiveCampaignDestination
    else:
        conn = set_connection(monkeypatch, "cc_fast", **sandbox_server.cc_connection(requests_per_second=20))
        cls = ConstantContactDestination
        monkeypatch.setattr(cls, "max_batch_contacts", 250)  # AC's batch size: 12 batches
    target = Target(name, conn, sandbox, f"file://{tmp_path}/vip.state")
    people = [{"email": f"k{i}@example.com", "first": f"K{i}"} for i in range(3000)]
    target.signup("k5@example.com")  # on the list before the export ever ran (a sign-up form)

    real_submit = cls.submit
    submitted: list[int] = []

    def dying_submit(self: Any, batch: Any) -> str:
        if len(submitted) >= 6:
            raise RuntimeError("the worker was lost")
        submitted.append(batch.number)
        return str(real_submit(self, batch))

    def killed(*args: Any, **kwargs: Any) -> int:
        raise RuntimeError("killed before the state was written")

    with monkeypatch.context() as dying:
        dying.setattr(cls, "submit", dying_submit)
        dying.setattr(sync_run, "write_state", killed)
        with pytest.raises(RuntimeError, match="killed before the state"):
            target.run(people)
    time.sleep(1.0)  # the imports the dead try sent finish on the server
    added_by_dead_try = len(target.members())
    assert 1500 <= added_by_dead_try < 3000

    retry = target.run(people)
    assert retry["state_entries"] == 0 and retry["full_refresh_reason"] is None
    assert set(target.members()) == {p["email"] for p in people}

    # Churn: 250 leave (among them contacts only the dead try sent, and the sign-up), 50 join.
    churned = [p for i, p in enumerate(people) if not (i < 150 or 2000 <= i < 2100)]
    churned += [{"email": f"j{i}@example.com", "first": "J"} for i in range(50)]
    report = target.run(churned)
    assert (report["to_remove"], report["removed"], report["new"]) == (249, 249, 50)
    assert set(target.members()) == {p["email"] for p in churned} | {"k5@example.com"}
    assert not list(tmp_path.glob("vip.state.partial-*"))  # the state holds every claim now


@pytest.mark.parametrize("by", ["app", "automation"])
def test_ac_re_subscribes_only_when_its_own_removal_is_the_last_change(
    by: str, ac_conn: str, sandbox: SandboxClient, tmp_path: Path
) -> None:
    target = Target("ac", ac_conn, sandbox, f"file://{tmp_path}/vip.state")
    target.run(SEGMENT)
    gone = ("person.3@example.com", "person.4@example.com")
    target.run([r for r in SEGMENT if r["email"] not in gone])  # the export removes both (status 2)
    # person.3 signs up again by a form, and later another app (or an automation) unsubscribes them:
    # the state still says "removed by the export", but that removal is no longer the last change.
    later = time.time() + 3600
    sandbox.ac_signup(AC_LIST, "person.3@example.com", at=later - 60)
    sandbox.ac_unsubscribe(AC_LIST, "person.3@example.com", by=by, at=later)
    back = target.run(SEGMENT)
    members = set(target.members())
    assert "person.3@example.com" not in members
    assert "person.4@example.com" in members  # the export's own removal: put back
    assert (back["readded"], back["readd_refused"]) == (1, 1)
    assert target.violations() == {}
