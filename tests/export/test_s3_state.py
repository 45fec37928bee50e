"""The sync state on S3: ``state_path='s3://<conn_id>@bucket/key'`` through Airflow's ObjectStoragePath.

A local S3 server (moto's, on a free port of 127.0.0.1) stands for the bucket; an ``aws`` connection
with its ``endpoint_url`` in the extra, as a deployment would define one, reaches it. The exports run
against the sandbox over real HTTP, as in tests/operators/test_sync.py.
"""

from __future__ import annotations

import threading
import uuid
from collections.abc import Iterator
from types import SimpleNamespace
from typing import Any

import pytest

from airflow_provider_ciexport.export import sync_run
from airflow_provider_ciexport.export.state import StateBusyError
from airflow_provider_ciexport.tools.sandbox.client import SandboxClient
from tests.operators.test_sync import SEGMENT, Target
from tests.support import posts, set_connection

pytest.importorskip("s3fs", reason="the [s3] extra is not installed")
moto_server = pytest.importorskip("moto.server", reason="moto[server] (the test extra) is not installed")

pytestmark = [pytest.mark.integration, pytest.mark.scaled_limits]

S3_CONN_ID = "ciexport_s3"
BUCKET = "ciexport-states"
OLD_KEY = "kOld-7a1c3e5b7d9f0a2c4e6b8d0f1a3c5e7b9d"
NEW_KEY = "kN3w-0f8f1d0Q2c7a9e4b6d8f0a1c3e5b7d9f"
OTHER_KEY = "kOth-3e5b7d9f0a2c4e6b8d0f1a3c5e7b9d1a"


@pytest.fixture(scope="module")
def s3_endpoint() -> Iterator[str]:
    """moto's S3 server on a free port of 127.0.0.1, with the states' bucket; the ``aws`` connection
    ``ciexport_s3`` points to it (defined in the environment, as a deployment's secrets would)."""
    server = moto_server.ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    url = f"http://{host}:{port}"
    try:
        with pytest.MonkeyPatch.context() as mp:
            set_connection(
                mp,
                S3_CONN_ID,
                conn_type="aws",
                login="testing-key-id",
                password="testing-secret-key",
                extra={"endpoint_url": url, "region_name": "us-east-1"},
            )
            _s3(url).create_bucket(Bucket=BUCKET)
            yield url
    finally:
        server.stop()


def _s3(url: str) -> Any:
    """A plain boto3 client on the server: what the bucket holds, seen without the provider."""
    import boto3

    return boto3.client(
        "s3",
        endpoint_url=url,
        region_name="us-east-1",
        aws_access_key_id="testing-key-id",
        aws_secret_access_key="testing-secret-key",
    )


def _objects(url: str, prefix: str) -> list[str]:
    """The names of the objects under ``prefix`` in the bucket."""
    listed = _s3(url).list_objects_v2(Bucket=BUCKET, Prefix=prefix)
    return sorted(o["Key"].removeprefix(prefix) for o in listed.get("Contents", []))


@pytest.fixture
def prefix() -> str:
    """A folder of the bucket of this test's own."""
    return f"ciexport/{uuid.uuid4().hex}/"


def _target(name: str, conn: str, sandbox: SandboxClient, prefix: str) -> Target:
    return Target(name, conn, sandbox, f"s3://{S3_CONN_ID}@{BUCKET}/{prefix}vip.state")


@pytest.fixture(params=["ac", "cc"])
def target(request: pytest.FixtureRequest, sandbox: SandboxClient, s3_endpoint: str, prefix: str) -> Target:
    conn = request.getfixturevalue("ac_conn" if request.param == "ac" else "cc_conn")
    return _target(request.param, conn, sandbox, prefix)


def _created(sandbox: SandboxClient, api: str) -> tuple[int, int]:
    """How many contacts the sandbox created and updated so far."""
    counters = sandbox.stats()["counters"]
    return counters.get(f"{api}.contacts_created", 0), counters.get(f"{api}.contacts_updated", 0)


def test_a_mirror_export_keeps_its_state_on_s3_and_a_second_run_sends_only_the_churn(
    target: Target, s3_endpoint: str, prefix: str
) -> None:
    first = target.run(SEGMENT)
    assert (first["new"], first["submitted"], first["full_refresh_reason"]) == (30, 30, None)
    assert set(target.members()) == {r["email"] for r in SEGMENT}
    # The state is an object in the bucket; the lease and the temporary copy are gone.
    assert _objects(s3_endpoint, prefix) == ["vip.state"]

    left = ["person.0@example.com", "person.1@example.com", "person.2@example.com"]
    joined = [
        {"email": "joined.1@example.com", "first": "J1"},
        {"email": "joined.2@example.com", "first": "J2"},
    ]
    segment = [r for r in SEGMENT if r["email"] not in left] + joined
    before = _created(target.sandbox, target.name)
    second = target.run(segment)
    assert second["state_authenticated"] is True and second["full_refresh_reason"] is None
    assert (second["new"], second["unchanged"], second["submitted"]) == (2, 27, 2)
    assert (second["to_remove"], second["removed"]) == (3, 3)
    created, updated = _created(target.sandbox, target.name)
    assert (created - before[0], updated - before[1]) == (2, 0)  # only the two who joined were sent
    assert set(target.members()) == {r["email"] for r in segment}
    assert target.violations() == {}
    assert _objects(s3_endpoint, prefix) == ["vip.state"]


def test_two_runs_at_once_on_one_s3_state_one_is_refused_before_sending(
    ac_conn: str, sandbox: SandboxClient, s3_endpoint: str, prefix: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    target = _target("ac", ac_conn, sandbox, prefix)

    def ti(run_id: str) -> SimpleNamespace:
        return SimpleNamespace(dag_id="ciexport", task_id="export", run_id=run_id, map_index=-1, try_number=1)

    # The scheduled run pauses once it holds the lease, before it reads the state.
    holding, go_on = threading.Event(), threading.Event()
    real_read_state = sync_run.read_state

    def read_state(*args: Any, **kwargs: Any) -> Any:
        if threading.current_thread().name == "scheduled-run":
            holding.set()
            go_on.wait(timeout=120)
        return real_read_state(*args, **kwargs)

    monkeypatch.setattr(sync_run, "read_state", read_state)
    outcome: dict[str, Any] = {}

    def scheduled() -> None:
        try:
            outcome["report"] = target.run(SEGMENT, context={"ti": ti("scheduled__1")})
        except BaseException as exc:  # shown by the assertion below
            outcome["error"] = exc

    thread = threading.Thread(target=scheduled, name="scheduled-run")
    thread.start()
    try:
        assert holding.wait(timeout=120), outcome
        assert _objects(s3_endpoint, prefix) == ["vip.state.lock"]
        with pytest.raises(StateBusyError, match=r"run scheduled__1 map -1 try 1.*Nothing was sent"):
            target.run(SEGMENT[:5], context={"ti": ti("manual__2")})
        assert posts(sandbox.stats(), "ac") == []  # the refused run sent nothing
    finally:
        go_on.set()
        thread.join(timeout=120)
    assert "error" not in outcome, outcome.get("error")
    assert (outcome["report"]["new"], outcome["report"]["submitted"]) == (30, 30)
    assert set(target.members()) == {r["email"] for r in SEGMENT}
    assert _objects(s3_endpoint, prefix) == ["vip.state"]  # the lease was given back
    again = target.run(SEGMENT, context={"ti": ti("manual__2")})  # and the next run takes it
    assert (again["unchanged"], again["submitted"]) == (30, 0)


def test_workers_sharing_the_state_key_connection_trust_the_s3_state_through_a_rotation(
    ac_conn: str, sandbox: SandboxClient, s3_endpoint: str, prefix: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    target = _target("ac", ac_conn, sandbox, prefix)
    # Every worker reads the key from the same connection (here the environment; a secrets backend too).
    set_connection(monkeypatch, "ciexport_state_key", conn_type="generic", password=OLD_KEY)
    target.run(SEGMENT)

    # The key is rotated (newest first, the old one still reads): the state written with it is trusted.
    set_connection(monkeypatch, "ciexport_state_key", conn_type="generic", password=f"{NEW_KEY}\n{OLD_KEY}")
    rotated = target.run(SEGMENT[1:])
    assert (rotated["state_authenticated"], rotated["full_refresh_reason"]) == (True, None)
    assert (rotated["unchanged"], rotated["submitted"], rotated["removed"]) == (29, 0, 1)

    # A worker holding another key cannot trust it: one full refresh that removes nobody.
    target.signup("signed.up@example.com")
    set_connection(monkeypatch, "ciexport_state_key", conn_type="generic", password=OTHER_KEY)
    other = target.run(SEGMENT[2:])
    assert other["state_authenticated"] is False
    assert "signed with a key these workers do not hold" in other["full_refresh_reason"]
    assert (other["new"], other["removed"], other["to_remove"]) == (28, 0, 0)
    assert set(target.members()) == {r["email"] for r in SEGMENT[1:]} | {"signed.up@example.com"}
    assert target.violations() == {}


def test_a_state_larger_than_an_upload_part_round_trips_on_s3(s3_endpoint: str, prefix: str) -> None:
    from airflow_provider_ciexport.export.state import (
        StateIdentity,
        StateKeys,
        SyncState,
        contact_digest,
        email_key,
        read_state,
        write_state,
    )
    from airflow_provider_ciexport.export.sync import BatchEntries, SegmentDiff

    # About 7 MB: written in several parts of an upload, read in several pieces.
    identity = StateIdentity.of("ActiveCampaign", "https://acct.api-us1.com/api/3", [2], {"email": "email"})
    keys = StateKeys([NEW_KEY], "a test")
    diff = SegmentDiff(SyncState(identity), mirror=True)
    entries = BatchEntries()
    for i in range(150_000):
        email = f"person.{i}@example.com"
        _, index, key, digest = diff.classify(email, email.encode())
        entries.add(index, key, digest, email)
    diff.confirm(entries, refused=None, accepted_all=True)
    uri = f"s3://{S3_CONN_ID}@{BUCKET}/{prefix}big.state"
    write_state(uri, diff.state, None, keys)
    assert _objects(s3_endpoint, prefix) == ["big.state"]

    loaded = read_state(uri, identity, keys)
    assert loaded.distrust is None and len(loaded.state) == 150_000
    state = loaded.state
    sample = range(0, 150_000, 997)
    assert all(state.keys[i] == email_key(state.email(i)) for i in sample)
    assert all(state.digests[i] == contact_digest(state.email(i).encode()) for i in sample)
    assert sorted(state.email(i) for i in range(150_000)) == sorted(
        f"person.{i}@example.com" for i in range(150_000)
    )
    # Written again over itself (a re-export), it is still whole.
    write_state(uri, state, loaded.stored_generation, keys)
    again = read_state(uri, identity, keys)
    assert again.distrust is None and again.stored_generation == 2 and len(again.state) == 150_000


def test_the_outcome_log_is_written_to_s3_as_any_file(s3_endpoint: str, prefix: str) -> None:
    import csv
    import io

    from airflow_provider_ciexport.export.engine import SegmentExporter
    from airflow_provider_ciexport.export.outcomes import OutcomeSettings
    from airflow_provider_ciexport.export.sources.records import RecordsSegmentSource
    from tests.export.fakes import FakeDestination

    records = [{"id": i, "email": f"Person.{i}@Example.com", "first": "P"} for i in range(1, 2001)]
    outcomes = OutcomeSettings(f"s3://{S3_CONN_ID}@{BUCKET}/{prefix}runs/r1/log.csv", ("id",))
    exporter = SegmentExporter(
        RecordsSegmentSource(records),
        FakeDestination(batch_contacts=100),
        {"email": "email", "first_name": "first"},
        outcomes=outcomes,
    )
    report = exporter.run().as_dict()
    body = _s3(s3_endpoint).get_object(Bucket=BUCKET, Key=f"{prefix}runs/r1/log.csv")["Body"].read()
    rows = list(csv.DictReader(io.StringIO(body.decode())))
    assert len(rows) == report["read"] == 2000
    assert {row["status"] for row in rows} == {"accepted"} and "@" not in body.decode()
