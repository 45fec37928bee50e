from __future__ import annotations

import gc

from airflow_provider_ciexport.export.collector import steady_collector


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
