"""The soak report's figures and checks (``fraud_app.soak``), from a recorder fed by hand."""

from __future__ import annotations

import multiprocessing
import os
from typing import Any

import pytest

from fraud_app import devstack
from fraud_app.live import DecisionMonitor
from fraud_app.soak import SoakRecorder, report, rss_growth_pct
from fraudcore.settings import Settings


def _recorder(p99_first_ms: float, p99_last_ms: float, warm: float, end: float) -> SoakRecorder:
    monitor = DecisionMonitor(Settings(_env_file=None))
    recorder = SoakRecorder(monitor, pids={}, window_s=30)
    for p99 in (p99_first_ms, p99_last_ms):
        monitor.latencies.extend([0.005] * 98 + [p99 / 1000] * 2)
        recorder._close_window()
    recorder.rss_start, recorder.rss_warm, recorder.rss_end = {"gate": 90.0}, {"gate": warm}, {"gate": end}
    return recorder


def test_a_steady_run_passes_every_check() -> None:
    result = report(
        _recorder(40, 50, warm=100, end=104), sent=1000, decided=1000, duplicates=3, lag_end={"g": 0}
    )
    assert result["ok"], result["checks"]
    assert (result["lost"], result["duplicates"], result["rss_growth_pct_max"]) == (0, 3, 4.0)
    assert [w["decisions"] for w in result["windows"]] == [100, 100]
    assert result["rss_mib"]["gate"] == {"start": 90.0, "warm": 100, "end": 104}


@pytest.mark.parametrize(
    ("p99_last", "end", "sent", "failed"),
    [
        (80, 104, 1000, "p99_last_within_1_5x_first"),
        (50, 111, 1000, "rss_growth_under_10_pct"),
        (50, 104, 1001, "no_loss"),
    ],
)
def test_each_drift_fails_its_check(p99_last: float, end: float, sent: int, failed: str) -> None:
    result = report(
        _recorder(40, p99_last, warm=100, end=end), sent=sent, decided=1000, duplicates=0, lag_end={}
    )
    assert not result["ok"]
    assert [name for name, held in result["checks"].items() if not held] == [failed]


def test_prometheus_is_reported_but_not_judged() -> None:
    recorder = _recorder(40, 50, warm=100, end=104)
    recorder.rss_warm["prometheus"], recorder.rss_end["prometheus"] = 60.0, 75.0
    result = report(recorder, sent=1000, decided=1000, duplicates=0, lag_end={})
    assert result["rss_growth_pct"]["prometheus"] == 25.0
    assert result["rss_growth_pct_max"] == 4.0
    assert result["ok"]
    assert set(result["rss_not_judged"]) == {"prometheus"}


def test_growth_is_measured_from_the_warm_figure() -> None:
    assert rss_growth_pct({"a": 200.0, "b": 0.0}, {"a": 230.0, "b": 5.0}) == {"a": 15.0}


def _hold_memory(ready: Any, release: Any) -> None:
    block = bytearray(64 * 2**20)  # written through: resident
    ready.set()
    release.wait(30)
    del block


def test_a_periodic_jobs_worker_is_left_out_of_the_process_memory() -> None:
    context = multiprocessing.get_context("spawn")
    ready, release = context.Event(), context.Event()
    worker = context.Process(target=_hold_memory, args=(ready, release))
    worker.start()
    try:
        assert ready.wait(30)
        with_workers = devstack.tree_rss_mib(os.getpid())
        without = devstack.tree_rss_mib(os.getpid(), workers=False)
        assert with_workers - without > 60
    finally:
        release.set()
        worker.join(30)
