"""Runs the platform's components as local processes, the way Kubernetes runs their pods.

Used by the demo and the end-to-end benchmark: the quality gate, the archiver, the
streaming feature job, the KServe predictor and transformer, and the KafkaSource stand-in.
Each is a real process with its own log under ``<state>/run/``; `start` waits until each is
healthy, `stop` sends SIGTERM (then SIGKILL) in reverse order. Like a Deployment's pods, a
component that dies is started again, after a backoff that doubles from 1 s to 30 s (reset
once it has stayed up for a minute), and the restart is logged and counted.
"""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import httpx

from fraudcore.kafka import group_lag
from fraudcore.metrics import sample_sum, scrape
from fraudcore.settings import Settings
from fraudcore.storage import aws_env

log = logging.getLogger(__name__)

RESTART_BACKOFF_S = (1.0, 30.0)  # first delay, longest delay
STABLE_AFTER_S = 60.0  # up this long: the next death starts the backoff again

INGEST = ("quality-gate", "archiver", "feature-job")  # they take a backfill before serving starts
INGEST_GROUP = {name: name for name in INGEST}  # each ingest component's consumer group


class ComponentError(RuntimeError):
    pass


@dataclass
class Component:
    """One component as a child process: its own process group, output appended to its log.
    The demo, the benchmark and the tests start every server and worker through this."""

    name: str
    argv: list[str]
    ready_url: str | None = None  # None: ready once it has run for a moment
    env: dict[str, str] = field(default_factory=dict)
    log: Path | None = None  # default: <state>/run/<name>.log
    proc: subprocess.Popen[bytes] | None = None
    started: float = 0.0

    def log_path(self, settings: Settings | None = None) -> Path:
        if self.log is None:
            if settings is None:
                raise ValueError(f"{self.name}: no log path and no settings to place one")
            self.log = settings.state_dir / "run" / f"{self.name}.log"
        return self.log

    def start(self, settings: Settings | None = None) -> None:
        """Start (or start again, appending to the same log) the component's command."""
        log_path = self.log_path(settings)
        log_path.parent.mkdir(parents=True, exist_ok=True)
        with log_path.open("ab") as log:
            self.proc = subprocess.Popen(
                self.argv,
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                env={**os.environ, **self.env},
                preexec_fn=_own_group_dying_with_parent,
            )
        self.started = time.monotonic()

    def ready(self) -> bool:
        # A process that cannot start (a port taken, say) exits within a moment: wait that
        # long, so an old process answering on the same port is not taken for this one.
        if self.proc is None or self.proc.poll() is not None or time.monotonic() - self.started < 1.5:
            return False
        if self.ready_url is None:
            return True
        try:
            return httpx.get(self.ready_url, timeout=1).status_code == 200
        except httpx.HTTPError:
            return False

    def wait_ready(self, timeout_s: float = 60) -> None:
        """Until ready; a component that exits or stays unready fails with its log's tail."""
        deadline = time.monotonic() + timeout_s
        while not self.ready():
            if self.proc is not None and self.proc.poll() is not None:
                raise ComponentError(f"{self.name} exited with {self.proc.returncode}:\n{self.tail()}")
            if time.monotonic() > deadline:
                raise ComponentError(f"{self.name} not ready after {timeout_s:.0f}s:\n{self.tail()}")
            time.sleep(0.1)

    def tail(self, chars: int = 4000) -> str:
        if self.log is None or not self.log.exists():
            return ""
        return self.log.read_text(errors="replace")[-chars:]

    def stop(self, timeout_s: float = 20) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        os.killpg(self.proc.pid, signal.SIGTERM)
        try:
            self.proc.wait(timeout_s)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()


def _own_group_dying_with_parent() -> None:
    """In the child: its own process group (stopped as a whole), and SIGTERM when the
    process that started it dies, so a killed demo leaves no component behind (Linux)."""
    os.setsid()
    try:
        import ctypes

        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass


def s3_env(settings: Settings) -> dict[str, str]:
    """KServe's storage conventions: what an InferenceService's ServiceAccount secret provides."""
    s3 = settings.s3
    return {**aws_env(settings), "S3_ENDPOINT": s3.endpoint, "S3_USE_HTTPS": "1" if s3.secure else "0"}


def components(
    settings: Settings, *, dispatcher_offset: str = "latest", transformers: int = 1
) -> list[Component]:
    """Every long-running component, in start order."""
    cli = [sys.executable, "-m", "fraud_app.cli"]

    def metrics(component: str) -> str:
        return f"http://127.0.0.1:{getattr(settings.metrics_ports, component)}/metrics"

    sv = settings.serving
    predictor_ready = f"http://127.0.0.1:{sv.predictor_http_port}/v2/models/{sv.model_name}/ready"
    out = [
        Component(
            "quality-gate", [*cli, "gate", "--group", INGEST_GROUP["quality-gate"]], metrics("quality_gate")
        ),
        Component("archiver", [*cli, "archive", "--group", INGEST_GROUP["archiver"]], metrics("archiver")),
        Component(
            "feature-job",
            [*cli, "features", "stream", "--group", INGEST_GROUP["feature-job"]],
            metrics("feature_job"),
        ),
        Component(
            "predictor",
            [
                sys.executable,
                "-m",
                "fraud_predictor",
                "--model_name",
                sv.model_name,
                "--model_dir",
                sv.model_uri,
                "--http_port",
                str(sv.predictor_http_port),
                "--grpc_port",
                str(sv.predictor_grpc_port),
            ],
            predictor_ready,
            s3_env(settings),
        ),
    ]
    sinks = []
    for i in range(transformers):
        http, grpc = sv.transformer_http_port + 100 * i, sv.transformer_grpc_port + 100 * i
        out.append(
            Component(
                f"transformer-{i}",
                [
                    sys.executable,
                    "-m",
                    "fraud_transformer",
                    "--model_name",
                    sv.model_name,
                    "--predictor_host",
                    f"127.0.0.1:{sv.predictor_grpc_port}",
                    "--predictor_protocol",
                    "grpc-v2",  # cheaper per request than REST
                    "--http_port",
                    str(http),
                    "--grpc_port",
                    str(grpc),
                ],
                f"http://127.0.0.1:{http}/v2/models/{sv.model_name}/ready",
            )
        )
        sinks.append(f"http://127.0.0.1:{http}/v1/models/{sv.model_name}:predict")
    # A consumer group of its own per run: it starts at the latest offset instead of scoring
    # whatever a previous run (or a backfill) left behind in the topic.
    from fraud_app.eventing import load_source

    group = f"{load_source().consumer_group}-{uuid.uuid4().hex[:8]}"
    dispatch = [*cli, "dispatch", "--initial-offset", dispatcher_offset, "--group", group]
    for sink in sinks:
        dispatch += ["--sink", sink]
    out.append(Component("dispatcher", dispatch, metrics("dispatcher")))
    out.append(Component("model-monitor", [*cli, "monitor"], metrics("model_monitor"), s3_env(settings)))
    if console_configured(settings):
        ready = f"http://127.0.0.1:{settings.console.port}/readyz"
        out.append(
            Component(
                "console", [*cli, "console", "serve", "--group", CONSOLE_GROUP], ready, s3_env(settings)
            )
        )
    return out


CONSOLE_GROUP = "console"


def console_configured(settings: Settings) -> bool:
    """Whether the review console can serve: a session secret and at least one analyst
    (``fraud up`` writes both to .env for the local stack)."""
    return bool(settings.console.session_secret.get_secret_value() and settings.console.users)


class Platform:
    def __init__(self, settings: Settings, parts: list[Component], *, restart: bool = True) -> None:
        self.settings = settings
        self.parts = parts
        self.restart = restart
        self.restarts: dict[str, int] = {}
        self._stopping = threading.Event()
        self._watcher: threading.Thread | None = None

    def start(self, report: Callable[[str], None] = print, timeout_s: float = 120) -> None:
        for part in self.parts:
            part.start(self.settings)
            try:
                part.wait_ready(timeout_s)
            except ComponentError:
                self.stop()
                raise
            report(f"{part.name:<14} up (pid {part.proc.pid if part.proc else '?'})")
        if self.restart:
            self._stopping.clear()
            self._watcher = threading.Thread(target=self._keep_alive, name="platform-watcher", daemon=True)
            self._watcher.start()

    def _keep_alive(self, poll_s: float = 0.5) -> None:
        """Start every component that died again, after its backoff."""
        delay: dict[str, float] = {}
        due: dict[str, float] = {}
        while not self._stopping.wait(poll_s):
            now = time.monotonic()
            for part in self.parts:
                if part.proc is None:
                    continue
                if part.proc.poll() is None:
                    if now - part.started > STABLE_AFTER_S:
                        delay.pop(part.name, None)
                    continue
                if part.name not in due:
                    wait = delay.get(part.name, RESTART_BACKOFF_S[0])
                    delay[part.name] = min(wait * 2, RESTART_BACKOFF_S[1])
                    due[part.name] = now + wait
                    log.warning(
                        "%s exited with %s; starting it again in %.0f s (log: %s)",
                        part.name,
                        part.proc.returncode,
                        wait,
                        part.log,
                    )
                elif now >= due[part.name] and not self._stopping.is_set():
                    del due[part.name]
                    part.start(self.settings)
                    self.restarts[part.name] = self.restarts.get(part.name, 0) + 1
                    log.warning(
                        "%s started again (pid %s, restart %d)",
                        part.name,
                        part.proc.pid if part.proc else "?",
                        self.restarts[part.name],
                    )

    def alive(self) -> list[str]:
        return [p.name for p in self.parts if p.proc is not None and p.proc.poll() is None]

    def stop(self) -> None:
        self._stopping.set()
        if self._watcher is not None:
            self._watcher.join(timeout=10)
            self._watcher = None
        for part in reversed(self.parts):
            part.stop()


def ingest_and_serving(settings: Settings, *, transformers: int = 1) -> tuple[Platform, Platform]:
    """The components in two groups: ingest (quality gate, archiver, feature job) and serving
    (predictor, transformers, dispatcher), so a backfill is processed before scoring starts."""
    parts = components(settings, transformers=transformers)
    return (
        Platform(settings, [p for p in parts if p.name in INGEST]),
        Platform(settings, [p for p in parts if p.name not in INGEST]),
    )


def ingest_reads(settings: Settings) -> dict[str, list[str]]:
    """Each ingest component's consumer group and the topics it reads."""
    topics = settings.topics
    return {
        INGEST_GROUP["quality-gate"]: [topics.raw.name],
        INGEST_GROUP["archiver"]: [topics.transactions.name, topics.labels.name],
        INGEST_GROUP["feature-job"]: [topics.transactions.name, topics.labels.name],
    }


def wait_for_backfill(settings: Settings, transactions: int, timeout_s: float = 600) -> None:
    """Until the archiver and the feature job have both processed ``transactions``
    transactions (as their counters say), and then until every ingest group has committed
    its topics to the end (labels, held transactions and block rewrites included), so what
    follows does not compete with the backfill's tail."""
    ports = settings.metrics_ports
    deadline = time.monotonic() + timeout_s
    while True:
        archived = sample_sum(
            scrape(ports.archiver), "archiver_records_written_total", {"kind": "transactions"}
        )
        # Transactions the job already held (a demo re-run on the same day backfills the
        # very same history) are dropped as repeats: they count as taken too.
        families = scrape(ports.feature_job)
        featured = sample_sum(families, "feature_job_events_total", {"kind": "transaction"}) + sample_sum(
            families, "feature_job_duplicate_events_total"
        )
        if archived >= transactions and featured >= transactions:
            break
        if time.monotonic() > deadline:
            raise TimeoutError(
                f"after {timeout_s:.0f}s the archiver had {archived:.0f} and the feature job "
                f"{featured:.0f} of the backfill's {transactions} transactions"
            )
        time.sleep(0.5)
    reads = ingest_reads(settings)
    while behind := {g: n for g, ts in reads.items() if (n := sum(group_lag(settings, g, ts).values()))}:
        if time.monotonic() > deadline:
            raise TimeoutError(f"after {timeout_s:.0f}s the ingest groups were still behind: {behind}")
        time.sleep(1)
