"""CPU time per process, read from ``/proc/<pid>/stat`` (user + system, the process and its
threads; children that are separate processes are counted on their own).

The benchmark samples every platform process before and after a ladder step, so each
component's CPU per event is measured, not estimated from a sampling tool."""

from __future__ import annotations

import os
from collections.abc import Mapping

TICKS_PER_S = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> float | None:
    """User + system CPU seconds of ``pid`` so far (None if it is gone)."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as stat:
            raw = stat.read()
    except OSError:
        return None
    # The command name (field 2) may hold spaces and parentheses: fields start after the last ')'.
    fields = raw[raw.rindex(b")") + 2 :].split()
    utime, stime = int(fields[11]), int(fields[12])  # fields 14 and 15 of proc(5)
    return (utime + stime) / TICKS_PER_S


def snapshot(pids: Mapping[str, int]) -> dict[str, float]:
    """CPU seconds per named process (those that are gone are left out)."""
    taken = {name: cpu_seconds(pid) for name, pid in pids.items()}
    return {name: value for name, value in taken.items() if value is not None}


def ms_per_event(before: Mapping[str, float], after: Mapping[str, float], events: int) -> dict[str, float]:
    """Each process's CPU milliseconds per event between two snapshots."""
    if events <= 0:
        return {}
    return {
        name: round((after[name] - before[name]) * 1000 / events, 3)
        for name in sorted(after)
        if name in before
    }
