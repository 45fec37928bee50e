"""Faults, bad input, a killed task and privacy: lists end exact and reports add up, or errors say so."""

from __future__ import annotations

import json
import logging
import os
import re
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path
from typing import Any

import pytest

from airflow_provider_ciexport.exceptions import ExportConfigurationError
from airflow_provider_ciexport.hooks.constantcontact import ConstantContactHook
from airflow_provider_ciexport.operators.activecampaign import ActiveCampaignSegmentExportOperator
from airflow_provider_ciexport.operators.constantcontact import ConstantContactSegmentExportOperator
from airflow_provider_ciexport.tools.sandbox import seed
from airflow_provider_ciexport.tools.sandbox.client import SandboxClient
from tests.operators import segment_data as data
from tests.support import posts, set_connection

AC_LIST = seed.AC_LIST_VIP
CC_LIST = "22222222-2222-4222-8222-222222222222"


def _people(n: int) -> list[dict[str, Any]]:
    return [
        {
            "email": f"Member.{i}@Example.com",
            "first": f"Given{i}",
            "last": f"Family{i}",
            "phone": f"+1 415 555 {i:04d}",
        }
        for i in range(n)
    ]


MAPPING = {"email": "email", "first_name": "first", "last_name": "last", "phone": "phone"}


def _run(destination: str, conn_id: str, **kwargs: Any) -> dict[str, Any]:
    params: dict[str, Any] = {"task_id": "export", "field_mapping": MAPPING, **kwargs}
    if destination == "ac":
        params.setdefault("list_id", AC_LIST)
        op: Any = ActiveCampaignSegmentExportOperator(activecampaign_conn_id=conn_id, **params)
    else:
        params.setdefault("list_id", CC_LIST)
        op = ConstantContactSegmentExportOperator(constantcontact_conn_id=conn_id, **params)
    return op.execute(context={})  # type: ignore[no-any-return]


def _emails(sandbox: SandboxClient, destination: str) -> set[str]:
    if destination == "ac":
        return {c["email"] for c in sandbox.ac_list_contacts(AC_LIST)}
    return {c["email"] for c in sandbox.cc_list_contacts(CC_LIST)}


@pytest.fixture
def conns(ac_conn: str, cc_conn: str, monkeypatch: pytest.MonkeyPatch) -> dict[str, str]:
    """Both connections (at the test's limits: ``scaled_limits`` or the documented ones), with a short
    read timeout so slow answers are noticed quickly."""
    short = {}
    for name, conn_id in (("ac", ac_conn), ("cc", cc_conn)):
        fields = json.loads(os.environ[f"AIRFLOW_CONN_{conn_id.upper()}"])
        fields["extra"] = {**fields.get("extra", {}), "timeout": 1}
        short[name] = set_connection(monkeypatch, f"{name}_short", **fields)
    return short


FAULTS = [
    pytest.param(
        {"kind": "status", "status": 429, "every": 3, "times": 12, "retry_after": 1}, id="429-storm"
    ),
    pytest.param({"kind": "status", "status": 503, "times": 4}, id="503-burst"),
    pytest.param({"kind": "status", "status": 500, "times": 4}, id="500-burst"),
    pytest.param({"kind": "drop", "every": 2, "times": 3}, id="dropped-connections"),
    pytest.param({"kind": "slow", "delay_s": 2.5, "times": 2}, id="slower-than-read-timeout"),
    pytest.param({"kind": "throttled", "every": 2, "times": 6}, id="throttled"),
]


@pytest.mark.scaled_limits
@pytest.mark.parametrize("destination", ["ac", "cc"])
@pytest.mark.parametrize("fault", FAULTS)
def test_faults_still_end_with_exact_lists(
    destination: str, fault: dict[str, Any], conns: dict[str, str], sandbox: SandboxClient
) -> None:
    sandbox.add_fault(api=destination, **fault)
    report = _run(destination, conns[destination], records=_people(600))
    assert report["accepted"] == 600 and report["rejected"] == 0
    assert _emails(sandbox, destination) == {f"member.{i}@example.com" for i in range(600)}
    assert sandbox.stats()["faults_injected"], "the fault never fired"


@pytest.mark.slow
@pytest.mark.parametrize("style", ["400", "503"])
def test_activecampaign_rate_limit_answers_are_slowed_down_for(
    style: str, conns: dict[str, str], sandbox: SandboxClient
) -> None:
    kind = {"kind": "rate_limit_400"} if style == "400" else {"kind": "status", "status": 503}
    sandbox.add_fault(api="ac", path="/import/bulk_import", every=2, times=3, **kind)
    report = _run("ac", conns["ac"], records=_people(1000))
    assert report["accepted"] == 1000
    assert len(_emails(sandbox, "ac")) == 1000


@pytest.mark.parametrize("destination", ["ac", "cc"])
def test_empty_segment_succeeds_with_a_zero_report(
    destination: str, conns: dict[str, str], sandbox: SandboxClient
) -> None:
    report = _run(destination, conns[destination], records=[])
    assert {
        k: report[k]
        for k in ("read", "invalid", "duplicates", "submitted", "accepted", "rejected", "batches")
    } == dict.fromkeys(("read", "invalid", "duplicates", "submitted", "accepted", "rejected", "batches"), 0)
    assert posts(sandbox.stats(), destination) == []


@pytest.mark.parametrize("destination", ["ac", "cc"])
def test_numbers_and_nulls_in_the_email_column_are_counted(
    destination: str, conns: dict[str, str], sandbox: SandboxClient
) -> None:
    rows = [{"email": 12345}, {"email": None}, {"email": 4.5}, {"email": True}, *_people(20)]
    report = _run(destination, conns[destination], records=rows)
    assert report["invalid"] == 4 and report["invalid.not_text"] == 3 and report["invalid.missing"] == 1
    assert report["accepted"] == 20


@pytest.mark.parametrize("destination", ["ac", "cc"])
@pytest.mark.parametrize(
    ("content", "complaint"),
    [
        (b"email,email\na@example.com,b@example.com\n", "email"),
        (b"email,first\nok@example.com,Ann\nbad@example.com,\xff\xfeJos\xe9\n", "UTF-8"),
    ],
    ids=["duplicated-header", "non-utf8"],
)
def test_unreadable_files_fail_before_anything_is_sent(
    destination: str,
    content: bytes,
    complaint: str,
    conns: dict[str, str],
    sandbox: SandboxClient,
    tmp_path: Path,
) -> None:
    path = tmp_path / "segment.csv"
    path.write_bytes(content)
    with pytest.raises(ExportConfigurationError, match=complaint):
        _run(destination, conns[destination], source_path=str(path), field_mapping={"email": "email"})
    assert posts(sandbox.stats(), destination) == []


@pytest.mark.parametrize("destination", ["ac", "cc"])
def test_bom_and_spaced_headers_are_read(
    destination: str, conns: dict[str, str], sandbox: SandboxClient, tmp_path: Path
) -> None:
    path = tmp_path / "excel.csv"
    rows = "".join(f"Person{i}@Example.com , Name{i}\r\n" for i in range(12))
    path.write_bytes("\ufeff Email , First Name \r\n".encode() + rows.encode())
    report = _run(
        destination,
        conns[destination],
        source_path=str(path),
        field_mapping={"email": "Email", "first_name": "First Name"},
    )
    assert report["accepted"] == 12
    assert _emails(sandbox, destination) == {f"person{i}@example.com" for i in range(12)}


def test_failing_sql_is_a_clear_error(
    conns: dict[str, str], sandbox: SandboxClient, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    conn = set_connection(
        monkeypatch, "profiles_db", conn_type="sqlite", host=str(data.write_sqlite(tmp_path / "p.db"))
    )
    with pytest.raises(ExportConfigurationError, match="profiles_db"):
        _run("ac", conns["ac"], sql="SELECT * FROM no_such_table", sql_conn_id=conn)
    assert posts(sandbox.stats(), "ac") == []


SECRETS = [seed.AC_API_KEY, seed.CC_CLIENT_SECRET, seed.CC_REFRESH_TOKEN]


def test_no_personal_data_or_secret_in_logs_xcom_or_errors(
    conns: dict[str, str],
    sandbox: SandboxClient,
    caplog: pytest.LogCaptureFixture,
    capfd: pytest.CaptureFixture[str],
) -> None:
    caplog.set_level(logging.DEBUG)
    logging.getLogger().setLevel(logging.DEBUG)
    people = [
        *_people(30),
        {"email": "broken@@example.com", "first": "Hidden", "last": "Person", "phone": "+1 999 555 0199"},
    ]
    reports = [_run(d, conns[d], records=people, progress_interval=0) for d in ("ac", "cc")]
    errors = []
    for destination, bad in (
        ("ac", {"list_id": 98765}),
        ("cc", {"field_mapping": {"email": "email", "cf:nope": "first"}}),
    ):
        try:
            _run(destination, conns[destination], records=people, **bad)
        except ExportConfigurationError as exc:
            errors.append(str(exc))
    assert len(errors) == 2
    # Every access token the sandbox issues starts so; the request log holds none to read them from.
    secrets = [*SECRETS, "sandbox-at-"]
    out, err = capfd.readouterr()
    haystack = "\n".join([caplog.text, out, err, json.dumps(reports), *errors])
    assert (
        "Constant Contact export report" in haystack and "export progress" in haystack
    )  # the logs were captured
    for person in people:
        for value in person.values():
            assert value.lower() not in haystack.lower(), "personal data leaked"
    for secret in secrets:
        assert secret not in haystack, "a secret leaked"


KILL_DAG = """
from __future__ import annotations
import os
import pendulum
from airflow.sdk import DAG
from airflow_provider_ciexport.operators.activecampaign import ActiveCampaignSegmentExportOperator

with DAG("ciexport_kill_test", schedule=None, start_date=pendulum.datetime(2026, 1, 1, tz="UTC")) as dag:
    ActiveCampaignSegmentExportOperator(
        task_id="export",
        list_id=2,
        sql="SELECT id, email, first FROM people ORDER BY id",
        sql_conn_id="people_db",
        field_mapping={"email": "email", "first_name": "first"},
        activecampaign_conn_id="ac_kill",
        state_path=os.environ.get("CIEXPORT_KILL_STATE") or None,
        sync_mode=os.environ.get("CIEXPORT_KILL_MODE") or "upsert",
        # The progress Variable is saved once a progress interval.
        progress_interval=float(os.environ.get("CIEXPORT_KILL_PROGRESS") or 1),
        outcomes_path=os.environ["CIEXPORT_KILL_OUTCOMES"],
        outcome_key="id",
    )

if __name__ == "__main__":
    if os.environ.get("CIEXPORT_KILL_WAIT"):
        # The retry is started while the first try runs, so that its imports are done when the test
        # tells it (a line on stdin) to run the task.
        import sys

        sys.stdin.readline()
    # The same logical date and run_after: the same DAG run, as Airflow's own retry of the task.
    when = pendulum.datetime(2026, 1, 2, tz="UTC")
    dag.test(logical_date=when, run_after=when)
"""


@pytest.mark.slow
@pytest.mark.parametrize(
    ("sig", "sync_mode"),
    [
        (signal.SIGKILL, None),
        (signal.SIGTERM, None),
        # A killed try and its retry use Airflow as the SIGKILL case does; with a state only the
        # provider's own state, claims and checkpoint differ (its Airflow side, ObjectStoragePath, is
        # covered on the oldest Airflow by the sync tests).
        pytest.param(signal.SIGKILL, "upsert", marks=pytest.mark.airflow_covered_by_sibling),
        pytest.param(signal.SIGKILL, "mirror", marks=pytest.mark.airflow_covered_by_sibling),
    ],
    ids=["SIGKILL", "SIGTERM", "SIGKILL-with-state", "SIGKILL-mirror"],
)
def test_killed_task_retried_does_not_resend_confirmed_batches(
    sig: signal.Signals,
    sync_mode: str | None,
    sandbox: SandboxClient,
    sandbox_server: Any,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    with_state = sync_mode is not None
    import sqlite3

    rows = 5000  # 20 batches of 250
    db = tmp_path / "people.db"
    with sqlite3.connect(db) as conn:
        conn.execute("CREATE TABLE people (id INTEGER PRIMARY KEY, email TEXT, first TEXT)")
        conn.executemany(
            "INSERT INTO people (email, first) VALUES (?, ?)",
            [(f"k{i}@example.com", f"K{i}") for i in range(rows)],
        )
    dags = tmp_path / "dags"
    dags.mkdir()
    (dags / "kill_dag.py").write_text(textwrap.dedent(KILL_DAG))
    sandbox.configure(rate_scale=2)
    env = {
        **os.environ,
        "AIRFLOW__CORE__DAGS_FOLDER": str(dags),
        "AIRFLOW_CONN_PEOPLE_DB": json.dumps({"conn_type": "sqlite", "host": str(db)}),
        # Both tries write the one run's outcome log: the retry's replaces the killed try's.
        "CIEXPORT_KILL_OUTCOMES": f"file://{tmp_path}/outcomes/run.csv",
        # Half the pace the sandbox allows: the 20 imports take about 12 s, so a loaded machine still
        # sees the export running when it is killed.
        "AIRFLOW_CONN_AC_KILL": json.dumps(
            sandbox_server.ac_connection(imports_per_minute=100, requests_per_second=10)
        ),
    }
    if with_state:
        # The sync state is only written when a run ends; the checkpoint still spares the retry.
        env["CIEXPORT_KILL_STATE"] = f"file://{tmp_path}/kill.state"
        env["CIEXPORT_KILL_MODE"] = sync_mode or ""
    command = [sys.executable, str(dags / "kill_dag.py")]
    first = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    # The retry's pace is not what this test checks (what it sends is): it runs at five times the
    # documented limits (the sandbox's) and half of them (the connection's), its 16 or so imports in
    # about 2 s instead of 10.
    retry_env = {
        **env,
        "CIEXPORT_KILL_WAIT": "1",
        "AIRFLOW_CONN_AC_KILL": json.dumps(
            sandbox_server.ac_connection(imports_per_minute=500, requests_per_second=25)
        ),
    }
    if sync_mode == "mirror":
        retry_env["CIEXPORT_KILL_PROGRESS"] = "0.1"  # the retry tells each phase that lasts 0.1 s or more
    second = subprocess.Popen(
        command,
        env=retry_env,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        saved = _kill_when_batches_are_confirmed(first, sig)
        imports_before = sandbox.stats()["imports"]["ac"]["requests"]
        sandbox.configure(rate_scale=10)
        out, err = second.communicate("run\n", timeout=300)
    finally:
        for process in (first, second):
            if process.poll() is None:
                process.kill()
                process.wait()
    assert second.returncode == 0, out[-3000:] + err[-3000:]
    if sync_mode == "mirror":
        _assert_the_retry_told_its_phases(out + err, resumed=250 * len(saved))
    imports_after = sandbox.stats()["imports"]["ac"]["requests"]
    assert imports_after - imports_before == 20 - len(saved)  # nothing confirmed earlier was sent again
    assert {c["email"] for c in sandbox.ac_list_contacts(seed.AC_LIST_VIP)} == {
        f"k{i}@example.com" for i in range(rows)
    }
    assert _saved_progress() == set()  # removed once the export completed
    _assert_the_retry_logged_every_row(tmp_path / "outcomes" / "run.csv", rows, resumed=250 * len(saved))
    if with_state:
        # The retry recorded every contact, those the killed try confirmed included: the next run of
        # the unchanged segment sends nothing.
        from airflow_provider_ciexport.export.state import StateIdentity, read_state
        from airflow_provider_ciexport.export.state_keys import state_keys

        identity = StateIdentity.of(
            "ActiveCampaign", f"{sandbox_server.url}/api/3", ["2"], {"email": "email", "first_name": "first"}
        )
        # Signed with the key the task derived from the fernet key both processes share.
        loaded = read_state(env["CIEXPORT_KILL_STATE"], identity, state_keys())
        assert loaded.distrust is None and len(loaded.state) == rows
    if sync_mode == "mirror":
        # What the killed try added is the export's: when it leaves the segment it is removed. 200 of
        # the leavers are in the batches only the killed try sent (the retry resumed them).
        conn = set_connection(
            monkeypatch,
            "ac_churn",
            **sandbox_server.ac_connection(imports_per_minute=500, requests_per_second=25),
        )
        churned = [
            {"email": f"k{i}@example.com", "first": f"K{i}"} for i in range(rows) if not 200 <= i < 400
        ]
        churned = [row for row in churned if not row["email"].startswith("k49")]  # k49, k490-k499, k4900-...
        churned += [{"email": f"j{i}@example.com", "first": "J"} for i in range(50)]
        report = ActiveCampaignSegmentExportOperator(
            task_id="export",
            list_id=AC_LIST,
            records=churned,
            field_mapping={"email": "email", "first_name": "first"},
            activecampaign_conn_id=conn,
            state_path=env["CIEXPORT_KILL_STATE"],
            sync_mode="mirror",
        ).execute(context={})  # type: ignore[arg-type]
        assert (report["removed"], report["new"]) == (rows + 50 - len(churned), 50)
        assert {c["email"] for c in sandbox.ac_list_contacts(AC_LIST)} == {r["email"] for r in churned}


def _assert_the_retry_logged_every_row(path: Path, rows: int, resumed: int) -> None:
    """The retry's outcome log is whole: a row per source row, each accepted, those the killed try
    confirmed marked resumed; keys and codes only."""
    import csv

    with path.open(newline="") as f:
        log = list(csv.DictReader(f))
    assert sorted(int(row["row_id"]) for row in log) == list(range(1, rows + 1))
    assert {row["status"] for row in log} == {"accepted"}
    assert sum(1 for row in log if "resumed" in row["reason"].split(";")) == resumed
    assert "@" not in path.read_text()


def _kill_when_batches_are_confirmed(first: subprocess.Popen[bytes], sig: signal.Signals) -> set[int]:
    """Kill the first try with ``sig`` once it has saved four confirmed batches; those it saved."""
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and first.poll() is None:
        if len(_saved_progress()) >= 4:
            break
        time.sleep(0.2)
    assert first.poll() is None, "the export finished before it could be killed"
    first.send_signal(sig)
    first.wait(timeout=60)
    saved = _saved_progress()
    assert len(saved) >= 4
    return saved


def _assert_the_retry_told_its_phases(log: str, resumed: int) -> None:
    """The retry of a killed mirror export is never silent: reading the list's members (a first sync:
    the killed try wrote no state) tells how far against the list's count, and the main line counts
    what the killed try confirmed as done, then says every row is read (the last batches are submitted
    or waited for). No contact in it."""
    members = [line for line in log.splitlines() if "Reading the ActiveCampaign lists' members: " in line]
    assert members and all(" of " in line and " members (" in line for line in members), log[-3000:]
    main = [
        line[line.index("ActiveCampaign export progress (") :]
        for line in log.splitlines()
        if "ActiveCampaign export progress (" in line
    ]
    # (A line told before the retry rebuilt the first resumed range may not count it yet.)
    assert main and f"({resumed:,} resumed from an earlier try)" in main[-1], log[-3000:]
    assert any(line.startswith("ActiveCampaign export progress (every row read, ") for line in main)
    assert "@example.com" not in log


def _saved_progress() -> set[int]:
    """The confirmed batches the kill test's task instance has saved so far (their numbers)."""
    from airflow.models import Variable
    from airflow.utils.session import create_session

    with create_session() as session:
        keys = [
            v.key
            for v in session.query(Variable).filter(
                Variable.key.like("ciexport_progress_ciexport_kill_test%")
            )
        ]
    for key in keys:
        document = json.loads(Variable.get(key))
        return {n for first, last, *_ in document.get("ranges", []) for n in range(first, last + 1)}
    return set()


def test_two_tasks_rotating_one_refresh_token_at_once_both_finish(
    conns: dict[str, str], sandbox: SandboxClient
) -> None:
    """One task's refresh rotates the token under the other's feet; the other reads the new one."""
    from concurrent.futures import ThreadPoolExecutor

    from airflow.models import Variable

    sandbox.configure(cc_rotating_refresh_tokens=True)
    key = ConstantContactHook(conns["cc"]).refresh_token_variable
    Variable.delete(key)
    with ThreadPoolExecutor(2) as pool:
        futures = [
            pool.submit(_run, "cc", conns["cc"], records=_people(300), list_id=lst)
            for lst in (CC_LIST, seed.CC_LIST_LAPSED)
        ]
        reports = [f.result() for f in futures]
    assert [r["accepted"] for r in reports] == [300, 300]
    assert Variable.get(key) == sandbox.cc_refresh_tokens()[0]
    assert len({c["email"] for c in sandbox.cc_list_contacts(seed.CC_LIST_LAPSED)}) == 300
    Variable.delete(key)


def test_access_tokens_expiring_every_few_requests_under_load_still_end_exact(
    sandbox: SandboxClient, sandbox_server: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Each token answers two requests; with eight imports in flight a freshly issued one is often
    used up by the other calls before the renewed call gets to use it (a 401 right after a renewal)."""
    from airflow_provider_ciexport.destinations.constantcontact import ConstantContactDestination

    monkeypatch.setattr(ConstantContactDestination, "max_batch_contacts", 250)  # 16 batches at once
    sandbox.configure(rate_scale=5, cc_access_token_max_requests=2)
    conn = set_connection(monkeypatch, "cc_load", **sandbox_server.cc_connection(requests_per_second=20))
    report = _run("cc", conn, records=_people(4000))
    assert (report["accepted"], report["rejected"], report["batches"]) == (4000, 0, 16)
    assert _emails(sandbox, "cc") == {f"member.{i}@example.com" for i in range(4000)}
    counters = sandbox.stats()["counters"]
    assert counters["cc.access_token_expired"] >= 10  # the tokens really ran out under the export


def test_quota_spent_mid_export_says_what_was_exported_and_when_it_resets(
    conns: dict[str, str], sandbox: SandboxClient
) -> None:
    from airflow_provider_ciexport.exceptions import DestinationQuotaError

    wide = [
        {"email": f"w{i}@example.com", "first": "F" * 50, "last": "L" * 50, "phone": "5" * 40}
        for i in range(30_000)
    ]
    sandbox.add_fault(api="cc", kind="quota_exceeded", path="/activities/contacts_json_import", every=2)
    with pytest.raises(DestinationQuotaError, match="00:00 UTC") as err:
        _run("cc", conns["cc"], records=wide)
    message = str(err.value)
    found = re.search(r"([\d,]+) of 30,000 contacts were confirmed", message)
    assert found, message
    confirmed = int(found.group(1).replace(",", ""))
    pending = re.search(r"([\d,]+) more were accepted by the API but not yet confirmed", message)
    unconfirmed = int(pending.group(1).replace(",", "")) if pending else 0
    assert 0 < confirmed + unconfirmed < 30_000
    time.sleep(1.0)  # let the activities the API accepted finish
    assert len(sandbox.cc_list_contacts(CC_LIST)) == confirmed + unconfirmed


@pytest.mark.parametrize(
    ("fields", "complaint"),
    [
        ({"password": ""}, "no API key"),
        ({"host": ""}, "no API URL"),
        ({"host": "http://ac.example.com"}, "plain http"),
    ],
)
def test_incomplete_connections_fail_before_anything_is_sent(
    fields: dict[str, str],
    complaint: str,
    sandbox: SandboxClient,
    sandbox_server: Any,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    conn = set_connection(
        monkeypatch,
        "ac_incomplete",
        **{**sandbox_server.ac_connection(), **fields},
    )
    with pytest.raises(ExportConfigurationError, match=complaint):
        _run("ac", conn, records=_people(20))
    assert posts(sandbox.stats(), "ac") == []
