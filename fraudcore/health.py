"""Liveness of a process's consume loops: what ``/healthz`` answers, next to ``/metrics``.

A stuck consumer (a handler that never returns, a fetch that never brings the records the
broker holds) keeps its metrics endpoint up, so ``/metrics`` says nothing about it. Each
consume loop reports here when it advances (records handled) and the lag it last measured.
``/healthz`` fails when a loop has not advanced for longer than the stall window while
records wait for it, or when it has reported nothing at all for that long (a blocked loop
cannot measure its own lag). A consumer with nothing to read is healthy however long it
idles.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable


class ConsumerProgress:
    """What one consume loop last reported. Its loop calls ``advanced`` and ``measured_lag``;
    the health endpoint reads ``stalled`` from another thread (plain assignments, no lock)."""

    def __init__(self, name: str, clock: Callable[[], float] = time.monotonic) -> None:
        self.name = name
        self._clock = clock
        now = clock()
        self.advanced_at = now  # a new loop has the whole window to start
        self.lag: int | None = None
        self.lag_at = now

    def advanced(self) -> None:
        """Records were handled: the loop's position moved."""
        self.advanced_at = self._clock()

    def measured_lag(self, records: int) -> None:
        """Records on the broker that the loop has not read yet."""
        self.lag, self.lag_at = records, self._clock()

    def stalled(self, window_s: float) -> str | None:
        """Why the loop counts as stuck (None while it is healthy)."""
        now = self._clock()
        still_for = now - self.advanced_at
        if still_for <= window_s:
            return None
        if now - self.lag_at > window_s:
            return f"{self.name}: no progress and no lag reading for {still_for:.0f} s"
        if self.lag:
            return f"{self.name}: no progress for {still_for:.0f} s with {self.lag} records waiting"
        return None  # idle: nothing to read


class Liveness:
    """Every consume loop of the process, judged against one stall window."""

    def __init__(self, stall_after_s: float = 120.0, clock: Callable[[], float] = time.monotonic) -> None:
        self.stall_after_s = stall_after_s
        self._clock = clock
        self._loops: list[ConsumerProgress] = []
        self._lock = threading.Lock()

    def watch(self, name: str) -> ConsumerProgress:
        """Start watching a consume loop (``name``: its consumer group); ``forget`` it when it ends."""
        progress = ConsumerProgress(name, self._clock)
        with self._lock:
            self._loops.append(progress)
        return progress

    def forget(self, progress: ConsumerProgress) -> None:
        with self._lock:
            if progress in self._loops:
                self._loops.remove(progress)

    def problems(self) -> list[str]:
        """One line per stuck loop; empty when the process is live."""
        with self._lock:
            loops = list(self._loops)
        return [reason for loop in loops if (reason := loop.stalled(self.stall_after_s))]


# The process's consume loops (``fraudcore.metrics.serve_metrics`` sets the window from the
# settings and serves the verdict as /healthz).
LIVENESS = Liveness()
