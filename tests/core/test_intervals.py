"""At most one line an interval, whoever asks."""

from __future__ import annotations

from airflow_provider_ciexport.core.intervals import IntervalGate


def test_the_gate_opens_once_an_interval_counted_from_its_start() -> None:
    now = [100.0]
    gate = IntervalGate(30.0, clock=lambda: now[0])
    assert not gate.due()  # the first interval starts with the gate
    now[0] = 130.0
    assert gate.due() and not gate.due()  # the next is an interval after this opening
    now[0] = 159.0
    assert not gate.due()
    assert gate.due(now=160.0)


def test_a_gate_of_zero_opens_every_time() -> None:
    gate = IntervalGate(0.0)
    assert gate.due() and gate.due()
