"""Run the whole pipeline on this machine with kfp's local subprocess runner.

Offline: the steps run as subprocesses of the current Python environment (``use_venv=False``;
the components install nothing). Progress shows one line per step (rich) while kfp's own
logs go to a log file next to the outputs (``verbose`` prints them as well); at the end a
table gives the metrics and where the model went.
"""

from __future__ import annotations

import importlib.util
import io
import json
import re
import sys
import time
import warnings
from collections.abc import Mapping
from contextlib import redirect_stdout
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TextIO

from rich.console import Console
from rich.progress import Progress, SpinnerColumn, TaskID, TextColumn, TimeElapsedColumn
from rich.table import Table

from fraud_pipelines.steps import PROGRESS_PREFIX

STEPS = ("dataset", "train", "evaluate", "export", "publish", "report")
DEFAULT_ROOT = Path("local_outputs") / "pipeline"
_ANSI = re.compile(r"\x1b\[[0-9;]*m")
_STARTED = re.compile(r"Executing task '([^']+)'")
_FINISHED = re.compile(r"Task '([^']+)' finished with status (\w+)")


@dataclass
class LocalRun:
    summary: dict[str, Any]
    report_path: Path
    log_path: Path
    seconds: float
    step_seconds: dict[str, float]


class _Tracker(io.TextIOBase):
    """A stdout stand-in: everything goes to the log (and, if verbose, the terminal); kfp's
    task lines and the steps' ``[fraud]`` lines drive the progress display."""

    def __init__(self, progress: Progress, rows: dict[str, TaskID], log: TextIO, echo: TextIO | None) -> None:
        self.progress, self.rows, self.log, self.echo = progress, rows, log, echo
        self.pending = ""
        self.current: str | None = None
        self.started: dict[str, float] = {}
        self.seconds: dict[str, float] = {}

    def writable(self) -> bool:
        return True

    def write(self, text: str) -> int:
        self.log.write(text)
        if self.echo is not None:
            self.echo.write(text)
        self.pending += text
        *lines, self.pending = self.pending.split("\n")
        for line in lines:
            self._line(_ANSI.sub("", line))
        return len(text)

    def flush(self) -> None:
        self.log.flush()
        if self.echo is not None:
            self.echo.flush()

    def _line(self, line: str) -> None:
        if m := _STARTED.search(line):
            name = m.group(1)
            self.current = name
            self.started[name] = time.perf_counter()
            if name in self.rows:
                self.progress.start_task(self.rows[name])
                self.progress.update(self.rows[name], note="running")
        elif m := _FINISHED.search(line):
            name, status = m.group(1), m.group(2)
            if name in self.started:
                self.seconds[name] = time.perf_counter() - self.started[name]
            if name in self.rows:
                ok = status == "SUCCESS"
                mark = "[green]done[/green]" if ok else f"[red]{status.lower()}[/red]"
                self.progress.update(self.rows[name], completed=1, note=mark)
                self.progress.stop_task(self.rows[name])
        elif PROGRESS_PREFIX in line and self.current in self.rows:
            note = line.split(PROGRESS_PREFIX, 1)[1].strip()
            self.progress.update(self.rows[self.current], note=note[:110])


def _hide_docker_namespace() -> None:
    """kfp.local imports the Docker SDK when it can (``ImportError`` means "no Docker").
    Run from this repository's root, the folder ``docker/`` (Dockerfiles) imports as an
    empty namespace package instead, which kfp mistakes for the SDK and crashes on. Make
    ``import docker`` fail as it would without the folder; the real SDK is left alone."""
    if "docker" in sys.modules:
        return
    spec = importlib.util.find_spec("docker")
    if spec is not None and spec.origin is None:
        sys.modules["docker"] = None  # type: ignore[assignment]


def run_local(
    arguments: Mapping[str, Any] | None = None,
    *,
    pipeline_root: str | Path = DEFAULT_ROOT,
    verbose: bool = False,
    console: Console | None = None,
    show_summary: bool = True,
) -> LocalRun:
    """Run the pipeline locally with ``arguments`` (the pipeline's parameters; see
    ``fraud_pipelines.pipeline.make_pipeline``). Raises ``RuntimeError`` if a step fails."""
    _hide_docker_namespace()
    import kfp.local

    from fraud_pipelines.pipeline import make_pipeline

    out = sys.stdout
    console = console or Console(file=out)
    root = Path(pipeline_root).resolve()
    root.mkdir(parents=True, exist_ok=True)
    log_path = root / f"run-{datetime.now(UTC):%Y%m%d-%H%M%S-%f}.log"
    kfp.local.init(
        runner=kfp.local.SubprocessRunner(use_venv=False), pipeline_root=str(root), raise_on_error=True
    )
    pipeline = make_pipeline()
    t0 = time.perf_counter()
    progress = Progress(
        SpinnerColumn(finished_text="[green]✓[/green]"),
        TextColumn("{task.description:<9}"),
        TimeElapsedColumn(),
        TextColumn("{task.fields[note]}"),
        console=console,
        redirect_stdout=False,
        redirect_stderr=False,
        transient=False,
    )
    with log_path.open("w", buffering=1) as log, progress:
        rows = {name: progress.add_task(name, total=1, start=False, note="waiting") for name in STEPS}
        tracker = _Tracker(progress, rows, log, out if verbose else None)
        try:
            with redirect_stdout(tracker), warnings.catch_warnings():
                warnings.simplefilter("ignore", RuntimeWarning)  # kfp: "non-Python base image"
                task = pipeline(**dict(arguments or {}))
        except Exception as exc:
            tracker.flush()
            console.print(f"[red]pipeline failed[/red]: {exc}; log: {log_path}")
            tail = log_path.read_text().splitlines()[-40:]
            console.print("\n".join(_ANSI.sub("", line) for line in tail), markup=False, highlight=False)
            raise RuntimeError(f"local pipeline run failed: {exc} (log: {log_path})") from exc
    seconds = time.perf_counter() - t0
    summary = json.loads(task.outputs["summary"])
    report = Path(task.outputs["report"].path)
    run = LocalRun(summary, report, log_path, seconds, dict(tracker.seconds))
    if show_summary:
        print_summary(run, console)
    return run


def print_summary(run: LocalRun, console: Console) -> None:
    summary = run.summary
    metrics = summary.get("metrics", {})
    table = Table(title=f"Fraud model {summary.get('version')} ({run.seconds:.0f} s)", show_header=True)
    table.add_column("metric")
    table.add_column("value", justify="right")
    for name in (
        "auc_roc",
        "average_precision",
        "card_precision_at_100",
        "card_precision_at_100_all_cards",
        "window_auc_roc",
        "window_average_precision",
        "window_card_precision_at_100",
        "handbook_auc_roc",
        "handbook_average_precision",
        "handbook_card_precision_at_100",
        "threshold",
        "precision_at_threshold",
        "recall_at_threshold",
        "brier_score",
        "expected_calibration_error",
        "test_transactions",
        "test_frauds",
    ):
        if name in metrics:
            value = metrics[name]
            table.add_row(name, f"{value:,.0f}" if name.startswith("test_") else f"{value:.4f}")
    table.add_section()
    decision = summary.get("decision") or {}
    table.add_row("model", str(summary.get("model_uri") or "not uploaded"))
    if decision:
        table.add_row(
            "champion",
            ("[green]promoted[/green] " if summary.get("promoted") else "[yellow]kept[/yellow] ")
            + str(decision.get("reason", "")),
        )
        if summary.get("promoted"):
            table.add_row(
                "serving",
                f"{summary.get('champion_uri')} (KServe), {summary.get('triton_uri')} v{summary.get('triton_version')} (Triton)",
            )
    table.add_row("report", str(run.report_path))
    table.add_row("log", str(run.log_path))
    console.print(table)
