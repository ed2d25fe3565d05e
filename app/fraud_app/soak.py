"""Soak measurement: the platform under steady live traffic for a long time, judged on what
drifts. ``fraud soak`` (``make soak``) runs the demo's loop without its live view for
``--duration`` seconds and prints one JSON object:

* ``sent``, ``decided``, ``lost`` (sent without a decision once the backlog drained) and
  ``duplicates`` (decisions read twice: redeliveries, counted once in ``decided``);
* ``windows``: end-to-end latency p50/p95/p99 per ``--window`` seconds of traffic;
* ``rss_mib``: each platform process's resident memory (its children included, short-lived
  multiprocessing workers not) at the start of the traffic, after the first window (warm-up)
  and at the end (each window carries the figures at its close too, to tell a plateau from a
  leak); ``rss_growth_pct_max``: the
  largest growth of one platform process from after warm-up to the end (``rss_not_judged``
  names what is reported but left out of it, and why);
* ``lag_end``: records each consumer group had not committed when the run ended;
* ``checks``: 0 lost, RSS growth under 10 % per process after warm-up, p99 of the last
  window within 1.5x of the first; ``ok`` when all hold (the command exits 1 otherwise).

The demo (``fraud demo --json``) reports the same figures under ``soak``.
"""

from __future__ import annotations

import math
import threading
import time
from dataclasses import dataclass, field
from typing import Any

from fraud_app import devstack
from fraud_app.live import DecisionMonitor
from fraud_app.supervisor import Platform, ingest_reads
from fraudcore.kafka import group_lag
from fraudcore.settings import Settings

MAX_RSS_GROWTH_PCT = 10.0
MAX_P99_RATIO = 1.5
# Reported, not judged by the memory check, and why.
RSS_NOT_JUDGED = {
    "prometheus": "observability, not the platform: its head block (the latest samples, their "
    "chunks and references) grows until it is compacted every 2 hours, so through any shorter run",
}


def platform_pids(settings: Settings, *platforms: Platform) -> dict[str, int]:
    """Every platform process by name: the local services and each running component."""
    pids = {s.name: s.pid for s in devstack.status(settings) if s.pid}
    for platform in platforms:
        pids.update(
            {p.name: p.proc.pid for p in platform.parts if p.proc is not None and p.proc.poll() is None}
        )
    return pids


def consumer_groups(settings: Settings, *platforms: Platform) -> dict[str, list[str]]:
    """The consumer groups of the running platform and the topics each reads."""
    topics = settings.topics
    groups = ingest_reads(settings)
    for platform in platforms:
        for part in platform.parts:
            if "--group" in part.argv and part.name in ("dispatcher", "console"):
                read = topics.transactions.name if part.name == "dispatcher" else topics.scores.name
                groups[part.argv[part.argv.index("--group") + 1]] = [read]
    return groups


@dataclass
class SoakRecorder:
    """Samples latency per window and every process's memory while traffic runs."""

    monitor: DecisionMonitor
    pids: dict[str, int]
    window_s: float = 300.0
    windows: list[dict[str, Any]] = field(default_factory=list)
    rss_start: dict[str, float] = field(default_factory=dict)
    rss_warm: dict[str, float] = field(default_factory=dict)
    rss_end: dict[str, float] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="soak", daemon=True)
        self._first = 0

    def _rss(self) -> dict[str, float]:
        # A periodic job's worker (the monitor's skew check) is not the process's own memory.
        return {name: round(devstack.tree_rss_mib(pid, workers=False), 1) for name, pid in self.pids.items()}

    def start(self) -> SoakRecorder:
        self.rss_start = self._rss()
        self._first = len(self.monitor.latencies)
        self._opened = time.monotonic()
        self._thread.start()
        return self

    def _close_window(self) -> None:
        self._opened = time.monotonic()
        index = len(self.monitor.latencies)
        rss = self._rss()
        if index > self._first:
            percentiles = self.monitor.latency_percentiles(self._first)
            self.windows.append(
                {"start_s": round(len(self.windows) * self.window_s), "decisions": index - self._first}
                | {f"ms_{q}": v for q, v in percentiles.items()}
                | {"rss_mib": rss}
            )
        self._first = index
        if not self.rss_warm:
            self.rss_warm = rss

    def _run(self) -> None:
        while not self._stop.wait(self.window_s):
            self._close_window()

    def stop(self) -> None:
        """Ends the last window (if it lasted at least half a window: a few stragglers read
        while the backlog drains are no window of their own) and takes the final memory
        figures."""
        self._stop.set()
        self._thread.join(timeout=10)
        if time.monotonic() - self._opened >= self.window_s / 2 or not self.windows:
            self._close_window()
        self.rss_end = self._rss()


def rss_growth_pct(warm: dict[str, float], end: dict[str, float]) -> dict[str, float]:
    return {name: round(100 * (end[name] - warm[name]) / warm[name], 1) for name in end if warm.get(name)}


def report(
    recorder: SoakRecorder,
    sent: int,
    decided: int,
    duplicates: int,
    lag_end: dict[str, int],
) -> dict[str, Any]:
    growth = rss_growth_pct(recorder.rss_warm or recorder.rss_start, recorder.rss_end)
    worst = max((pct for name, pct in growth.items() if name not in RSS_NOT_JUDGED), default=0.0)
    windows = recorder.windows
    first, last = (windows[0]["ms_p99"], windows[-1]["ms_p99"]) if windows else (math.nan, math.nan)
    checks = {
        "no_loss": sent - decided <= 0,
        "rss_growth_under_10_pct": worst < MAX_RSS_GROWTH_PCT,
        "p99_last_within_1_5x_first": len(windows) >= 2 and last <= MAX_P99_RATIO * first,
    }
    return {
        "sent": sent,
        "decided": decided,
        "lost": max(0, sent - decided),
        "duplicates": duplicates,
        "window_s": recorder.window_s,
        "windows": windows,
        "rss_mib": {
            name: {
                "start": recorder.rss_start.get(name),
                "warm": recorder.rss_warm.get(name),
                "end": recorder.rss_end.get(name),
            }
            for name in recorder.rss_end
        },
        "rss_growth_pct": growth,
        "rss_growth_pct_max": worst,
        "rss_not_judged": {name: why for name, why in RSS_NOT_JUDGED.items() if name in growth},
        "lag_end": lag_end,
        "checks": checks,
        "ok": all(checks.values()),
    }


def lags(settings: Settings, groups: dict[str, list[str]]) -> dict[str, int]:
    """Each group's uncommitted records over its topics (-1 where the broker did not answer)."""
    out = {}
    for group, topics in groups.items():
        try:
            out[group] = sum(group_lag(settings, group, topics).values())
        except Exception:  # a figure of the report: its absence is reported, not raised
            out[group] = -1
    return out
