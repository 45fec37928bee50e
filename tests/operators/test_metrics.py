"""Each export's metrics, through Airflow's own StatsD client to a real UDP listener on 127.0.0.1.

Airflow is configured as a deployment would be (``[metrics] statsd_on``, host, port, prefix), and its
stats module initialised as a task's process does it.
"""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest
from airflow.sdk._shared.observability.metrics import stats as stats_module
from airflow.sdk.observability.metrics import stats_utils
from airflow.sdk.observability.stats import Stats

from airflow_provider_ciexport.exceptions import ExportThresholdError
from airflow_provider_ciexport.metrics import COUNTERS, export_tags
from airflow_provider_ciexport.operators.activecampaign import ActiveCampaignSegmentExportOperator
from airflow_provider_ciexport.tools.sandbox import seed
from airflow_provider_ciexport.tools.sandbox.client import SandboxClient
from tests.export.fakes import FakeDestination
from tests.operators.memory_operator import memory_export

#: metric -> report key, as the Metrics page documents them.
REPORT_KEYS = {f"ciexport.{name}": key for name, key in COUNTERS.items()}


class StatsdListener:
    """A StatsD server's receiving end: every datagram's lines, as ``(name, value, type)``."""

    def __init__(self) -> None:
        self.socket = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.socket.bind(("127.0.0.1", 0))
        self.socket.settimeout(0.1)
        self.port = self.socket.getsockname()[1]
        self.lines: list[str] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._receive, daemon=True)
        self._thread.start()

    def _receive(self) -> None:
        while not self._stop.is_set():
            try:
                data = self.socket.recv(65535)
            except TimeoutError:
                continue
            self.lines.extend(data.decode().splitlines())

    def close(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)
        self.socket.close()

    def metrics(self, settle_s: float = 0.5) -> dict[str, tuple[float, str]]:
        """Each name received (tags included, as InfluxDB-style StatsD puts them in the name): its
        summed value and type, once nothing more has arrived for a moment."""
        count = -1
        while count != len(self.lines):
            count = len(self.lines)
            time.sleep(settle_s)
        out: dict[str, tuple[float, str]] = {}
        for line in self.lines:
            name, _, rest = line.partition(":")
            value, _, kind = rest.partition("|")
            before = out.get(name, (0.0, kind))[0]
            out[name] = (before + float(value), kind)
        return out


@pytest.fixture
def statsd(monkeypatch: pytest.MonkeyPatch) -> Iterator[StatsdListener]:
    """Airflow's metrics on, to a StatsD listener of the test's own; Airflow's stats module as it was
    afterwards."""
    listener = StatsdListener()
    for key, value in {
        "STATSD_ON": "True",
        "STATSD_HOST": "127.0.0.1",
        "STATSD_PORT": str(listener.port),
        "STATSD_PREFIX": "airflow",
        "LEGACY_NAMES_ON": "True",
    }.items():
        monkeypatch.setenv(f"AIRFLOW__METRICS__{key}", value)
    for name in ("_factory", "_backend", "_export_legacy_names"):
        monkeypatch.setattr(stats_module, name, getattr(stats_module, name))
    Stats.initialize(factory=stats_utils.get_stats_factory(), export_legacy_names=True)
    yield listener
    listener.close()


def _rows(valid: int, invalid: int = 0) -> list[dict[str, Any]]:
    good = [{"email": f"person.{i}@example.com", "first": f"P{i}"} for i in range(valid)]
    return good + [{"email": f"bad-{i}", "first": "B"} for i in range(invalid)]


def _suffix(destination: str, dag_id: str, task_id: str) -> str:
    return ".".join(export_tags(destination, dag_id, task_id).values())


def _assert_metrics_equal_the_report(
    received: dict[str, tuple[float, str]], report: dict[str, Any], suffix: str, throttled: int | None
) -> None:
    expected = {**report, "removed": report.get("removed", 0), "restored": report.get("restored", 0)}
    expected["throttled"] = throttled
    for metric, key in REPORT_KEYS.items():
        if expected[key] is None:
            assert f"airflow.{metric}" not in received, metric
            continue
        assert received[f"airflow.{metric}"] == (expected[key], "c"), metric
        assert received[f"airflow.{metric}.{suffix}"] == (expected[key], "c"), metric
    for name in ("airflow.ciexport.duration", f"airflow.ciexport.duration.{suffix}"):
        value, kind = received[name]
        assert kind == "ms" and value == pytest.approx(report["duration_s"] * 1000, abs=2)


def test_the_metrics_equal_the_report(statsd: StatsdListener) -> None:
    operator = memory_export(_rows(10, invalid=2), FakeDestination(rejected={1: 2}))
    report = operator.execute(context={})  # type: ignore[arg-type]
    received = statsd.metrics()
    assert report["submitted"] == 10 and report["rejected"] == 2 and report["invalid"] == 2
    # The fake destination has no hook: no throttling answers to count.
    _assert_metrics_equal_the_report(received, report, _suffix("Fake", operator.dag_id, "export"), None)
    assert not any("@" in line or "person" in line for line in statsd.lines)


def test_a_failed_export_sends_its_metrics_too(statsd: StatsdListener) -> None:
    operator = memory_export(_rows(2, invalid=3), max_invalid_fraction=0.5)
    with pytest.raises(ExportThresholdError):
        operator.execute(context={})  # type: ignore[arg-type]
    received = statsd.metrics()
    assert received["airflow.ciexport.contacts.sent"] == (2.0, "c")
    assert received["airflow.ciexport.contacts.invalid"] == (3.0, "c")


def test_a_dry_run_sends_no_metrics(statsd: StatsdListener) -> None:
    operator = memory_export(_rows(3), dry_run=True)
    operator.execute(context={})  # type: ignore[arg-type]
    assert not [name for name in statsd.metrics(settle_s=0.2) if ".ciexport." in name]


def test_without_the_wait_refusals_are_not_sent(statsd: StatsdListener) -> None:
    operator = memory_export(_rows(4), wait_for_completion=False)
    report = operator.execute(context={})  # type: ignore[arg-type]
    received = statsd.metrics()
    assert report["accepted"] is None and "airflow.ciexport.contacts.refused" not in received
    assert received["airflow.ciexport.contacts.sent"] == (4.0, "c")


def test_tags_reach_a_statsd_that_takes_them(statsd: StatsdListener, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AIRFLOW__METRICS__STATSD_INFLUXDB_ENABLED", "True")
    Stats.initialize(factory=stats_utils.get_stats_factory(), export_legacy_names=True)
    operator = memory_export(_rows(3), task_id="group.export")

    class TaskInstance:
        dag_id, task_id, run_id, map_index, try_number = "crm.daily", "group.export", "run", -1, 1

    monkeypatch.setattr("airflow_provider_ciexport.operators.base.progress_store", lambda context: None)
    operator.execute(context={"ti": TaskInstance()})  # type: ignore[arg-type]
    received = statsd.metrics()
    assert received[
        "airflow.ciexport.contacts.sent,destination=fake,dag_id=crm.daily,task_id=group.export"
    ] == (
        3.0,
        "c",
    )
    # A task group's dot does not add a level to the name that holds the tags.
    assert received["airflow.ciexport.contacts.sent.fake.crm__daily.group__export"] == (3.0, "c")


@pytest.mark.integration
@pytest.mark.scaled_limits
def test_throttling_answers_and_requests_are_counted_against_the_sandbox(
    statsd: StatsdListener, ac_conn: str, sandbox: SandboxClient
) -> None:
    sandbox.add_fault(api="ac", kind="throttled", times=3)
    operator = ActiveCampaignSegmentExportOperator(
        task_id="export",
        list_id=seed.AC_LIST_VIP,
        field_mapping={"email": "email"},
        activecampaign_conn_id=ac_conn,
        records=[{"email": f"person.{i}@example.com"} for i in range(300)],
    )
    report = operator.execute(context={})  # type: ignore[arg-type]
    received = statsd.metrics()
    assert report["accepted"] == 300
    _assert_metrics_equal_the_report(
        received, report, _suffix(report["destination"], operator.dag_id, "export"), 3
    )
