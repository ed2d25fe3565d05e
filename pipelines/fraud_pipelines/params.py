"""The pipeline's run parameters, defined once: the pipeline's signature, the steps, the
command line, the demo and the benchmarks all read their defaults here, and build a run's
arguments with ``pipeline_arguments``."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from fraud_pipelines.defaults import CANDIDATES, DEFAULT_MODEL_NAME


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


@dataclass(frozen=True)
class PipelineParams:
    """Every run parameter of the training pipeline, with its default."""

    source: str = "archive"  # archive (MinIO raw events), file (labelled CSV/Parquet) or simulator
    source_path: str = ""
    source_options: str = "{}"
    train_start: str = ""  # YYYY-MM-DD; empty: the latest windows the data allows
    train_days: int = 7
    delay_days: int = 7  # the label delay: the gap between training and test
    test_days: int = 7
    history_days: int = 28  # days before the training window for prequential validation
    burn_in_days: int = 30  # first days of data never used as examples
    candidates: str = ",".join(CANDIDATES)
    folds: int = 3
    search: str = "standard"  # or quick: one setting per candidate
    seed: int = 0
    threshold: float = -1.0  # < 0: the best-F1 threshold from validation
    k: int = 100  # card precision@k
    # window: every test transaction; handbook: the Fraud Detection Handbook's test set
    # (cards already known compromised left out). Both are always reported, by name.
    protocol: str = "window"
    model_name: str = DEFAULT_MODEL_NAME
    version: str = ""  # empty: time + hash
    code_revision: str = ""
    min_improvement: float = 0.0
    shadow: bool = False  # publish into the shadow slot even if it beats the champion offline
    upload: bool = True


#: The defaults, as one object: ``DEFAULTS.history_days``.
DEFAULTS = PipelineParams()
