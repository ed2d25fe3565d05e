from __future__ import annotations

import os
import time

from fraud_app.cpu import cpu_seconds, ms_per_event, snapshot


def test_cpu_seconds_of_this_process_grow_with_work() -> None:
    before = cpu_seconds(os.getpid())
    assert before is not None
    deadline = time.process_time() + 0.3
    while time.process_time() < deadline:
        pass
    after = cpu_seconds(os.getpid())
    assert after is not None
    assert 0.2 <= after - before <= 2.0


def test_a_process_that_is_gone_is_left_out() -> None:
    assert cpu_seconds(2**22 + 12345) is None
    assert set(snapshot({"me": os.getpid(), "gone": 2**22 + 12345})) == {"me"}


def test_ms_per_event() -> None:
    assert ms_per_event({"a": 1.0, "b": 2.0}, {"a": 1.5, "b": 2.0, "c": 9.0}, 1000) == {"a": 0.5, "b": 0.0}
    assert ms_per_event({"a": 1.0}, {"a": 2.0}, 0) == {}
