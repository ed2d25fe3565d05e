"""The pipeline's run arguments as a library call (the CLI, the demo and the benchmarks build
them the same way)."""

from __future__ import annotations

import json
from typing import Any


def _simulation(
    seed: int, customers: int, terminals: int, days: int, start: str, handbook: bool
) -> dict[str, Any]:
    options: dict[str, Any] = {
        "seed": seed,
        "n_customers": customers,
        "n_terminals": terminals,
        "days": days,
        "start": start,
    }
    if handbook:
        options.update({"card_testing_per_day": 0, "takeover_per_day": 0})
    return options


def pipeline_arguments(
    *,
    source: str,
    source_path: str = "",
    source_options: str = "",
    seed: int = 0,
    customers: int = 5_000,
    terminals: int = 10_000,
    days: int = 183,
    start: str = "2018-04-01",
    handbook_scenarios: bool = False,
    **rest: Any,
) -> dict[str, Any]:
    """The pipeline's arguments; for the simulator, the simulation options come from the flags
    unless ``source_options`` (JSON) is given."""
    options = source_options
    if source == "simulator" and not options:
        options = json.dumps(_simulation(seed, customers, terminals, days, start, handbook_scenarios))
    return {"source": source, "source_path": source_path, "source_options": options or "{}", **rest}
