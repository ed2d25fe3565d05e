"""The local stack: real Kafka, Redis, MinIO and Prometheus processes, no Kubernetes.

``install`` fetches what is missing into a per-user cache (so a second run is fast),
``up`` starts, health-checks and prepares (topics, buckets) each service, ``down`` stops
them, ``status`` reports version, address and health. Logs, pids and data live under the
git-ignored state folder. Every step is idempotent.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import psutil
import redis

from fraudcore.settings import Settings

REPO_ROOT = Path(__file__).resolve().parents[2]  # app/fraud_app/devstack.py
KAFKA_VERSION = "4.1.1"
# MinIO's RELEASE tags are not semantic versions, so the Go module proxy serves the
# source by pseudo-version; this one is the last commit of the upstream repository.
MINIO_MODULE = "github.com/minio/minio"
MINIO_VERSION = "v0.0.0-20260212201848-7aac2a2c5b7c"


class StackError(RuntimeError):
    """A service could not be installed or started; the message says which and why."""


@dataclass
class ServiceStatus:
    name: str
    version: str
    address: str
    healthy: bool
    pid: int | None
    rss_mib: float = 0.0


def _port_open(host: str, port: int, timeout: float = 0.5) -> bool:
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def _split_hostport(hostport: str) -> tuple[str, int]:
    host, _, port = hostport.rpartition(":")
    return host, int(port)


class Service:
    name: str = ""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.home = settings.state_dir.resolve() / self.name
        self.cache = settings.cache_dir.expanduser().resolve()

    # --- overridden per service -------------------------------------------------------
    def install(self) -> None: ...
    def command(self) -> list[str]:
        raise NotImplementedError

    def address(self) -> str:
        raise NotImplementedError

    def healthy(self) -> bool:
        raise NotImplementedError

    def version(self) -> str:
        raise NotImplementedError

    def prepare(self) -> None:
        """Runs before the first start (formatting storage, writing config)."""

    def after_start(self) -> None:
        """Runs after the service is healthy (topics, buckets)."""

    def env(self) -> dict[str, str]:
        return dict(os.environ)

    # --- process management ---------------------------------------------------------
    @property
    def pid_file(self) -> Path:
        return self.home / "pid"

    @property
    def log_file(self) -> Path:
        return self.home / "service.log"

    def pid(self) -> int | None:
        try:
            pid = int(self.pid_file.read_text())
            os.kill(pid, 0)
            return pid
        except (FileNotFoundError, ValueError, ProcessLookupError, PermissionError):
            return None

    def start(self, timeout_s: float = 90) -> bool:
        """Start unless already running and healthy; return True if it was started now."""
        if self.pid() and self.healthy():
            self.after_start()
            return False
        if self.pid():
            self.stop()
        self.home.mkdir(parents=True, exist_ok=True)
        self.prepare()
        with self.log_file.open("ab") as log:
            proc = subprocess.Popen(
                self.command(),
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                env=self.env(),
                cwd=self.home,
                start_new_session=True,
            )
        self.pid_file.write_text(str(proc.pid))
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                tail = self.log_file.read_text(errors="replace")[-2000:]
                raise StackError(f"{self.name} exited with {proc.returncode}; log {self.log_file}:\n{tail}")
            if self.healthy():
                self.after_start()
                return True
            time.sleep(0.25)
        raise StackError(f"{self.name} not healthy after {timeout_s:.0f}s; see {self.log_file}")

    def stop(self, timeout_s: float = 30) -> bool:
        pid = self.pid()
        if pid is None:
            self.pid_file.unlink(missing_ok=True)
            return False
        os.killpg(pid, signal.SIGTERM)
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            try:
                os.kill(pid, 0)
            except ProcessLookupError:
                break
            _reap(pid)
            time.sleep(0.1)
        else:
            os.killpg(pid, signal.SIGKILL)
        self.pid_file.unlink(missing_ok=True)
        return True

    def status(self) -> ServiceStatus:
        pid = self.pid()
        healthy = bool(pid) and self.healthy()
        try:
            version = self.version() if healthy or self.name != "prometheus" else "?"
        except Exception as exc:  # status must report, not crash
            version = f"unknown ({type(exc).__name__})"
        return ServiceStatus(self.name, version, self.address(), healthy, pid, tree_rss_mib(pid))


def tree_rss_mib(pid: int | None, *, workers: bool = True) -> float:
    """Resident memory of a process and its children, in MiB; without ``workers``, less the
    short-lived multiprocessing workers (a periodic job's, whose memory goes when it exits)."""
    if pid is None:
        return 0.0
    try:
        proc = psutil.Process(pid)
        procs = [proc, *proc.children(recursive=True)]
        if not workers:
            procs = [p for p in procs if "--multiprocessing-fork" not in p.cmdline()]
        return sum(p.memory_info().rss for p in procs) / 2**20
    except psutil.Error:
        return 0.0


def _reap(pid: int) -> None:
    with contextlib.suppress(ChildProcessError):
        os.waitpid(pid, os.WNOHANG)


def _run(cmd: list[str], what: str, cwd: Path | None = None, env: dict[str, str] | None = None) -> str:
    try:
        out = subprocess.run(cmd, cwd=cwd, env=env, check=True, capture_output=True, text=True)
    except FileNotFoundError as exc:
        raise StackError(f"{what}: {cmd[0]} is not installed") from exc
    except subprocess.CalledProcessError as exc:
        raise StackError(
            f"{what} failed ({' '.join(cmd)}):\n{exc.stdout[-2000:]}{exc.stderr[-2000:]}"
        ) from exc
    return out.stdout


LOCAL_PARTITION_RETENTION_BYTES = 512 * 1024 * 1024


class Kafka(Service):
    name = "kafka"

    @property
    def libs(self) -> Path:
        return self.cache / f"kafka-{KAFKA_VERSION}" / "libs"

    def install(self) -> None:
        marker = self.libs / ".complete"
        if marker.exists():
            return
        if shutil.which("mvn") is None or shutil.which("java") is None:
            raise StackError("kafka: needs java (17+) and mvn on PATH")
        self.libs.mkdir(parents=True, exist_ok=True)
        _run(
            [
                "mvn",
                "-q",
                "-B",
                "-f",
                str(REPO_ROOT / "infra" / "kafka" / "pom.xml"),
                f"-Dkafka.version={KAFKA_VERSION}",
                "dependency:copy-dependencies",
                f"-DoutputDirectory={self.libs}",
                "-DincludeScope=runtime",
            ],
            "kafka: resolving broker jars",
        )
        marker.touch()

    def address(self) -> str:
        return self.settings.kafka.bootstrap_servers

    def _config(self) -> Path:
        host, port = _split_hostport(self.settings.kafka.bootstrap_servers)
        ctl = self.settings.kafka.controller_port
        sasl = self.settings.kafka.local_sasl_port
        cfg = self.home / "server.properties"
        cfg.write_text(
            "\n".join(
                [
                    "process.roles=broker,controller",
                    "node.id=1",
                    f"controller.quorum.voters=1@{host}:{ctl}",
                    f"listeners=PLAINTEXT://{host}:{port},SASL_PLAINTEXT://{host}:{sasl},"
                    f"CONTROLLER://{host}:{ctl}",
                    f"advertised.listeners=PLAINTEXT://{host}:{port},SASL_PLAINTEXT://{host}:{sasl}",
                    "controller.listener.names=CONTROLLER",
                    "inter.broker.listener.name=PLAINTEXT",
                    "listener.security.protocol.map=PLAINTEXT:PLAINTEXT,SASL_PLAINTEXT:SASL_PLAINTEXT,"
                    "CONTROLLER:PLAINTEXT",
                    # The authenticated listener: SCRAM users live in the cluster metadata
                    # (after_start creates the local one), so the config holds no secret.
                    "sasl.enabled.mechanisms=SCRAM-SHA-512",
                    "listener.name.sasl_plaintext.scram-sha-512.sasl.jaas.config="
                    "org.apache.kafka.common.security.scram.ScramLoginModule required;",
                    f"log.dirs={self.home / 'data'}",
                    "num.partitions=1",
                    "auto.create.topics.enable=false",
                    "offsets.topic.replication.factor=1",
                    "offsets.topic.num.partitions=12",
                    "transaction.state.log.replication.factor=1",
                    "transaction.state.log.min.isr=1",
                    "share.coordinator.state.topic.replication.factor=1",
                    "share.coordinator.state.topic.min.isr=1",
                    # A test's consumer group should not wait 3 s for more members.
                    "group.initial.rebalance.delay.ms=0",
                    # Bounded disk whatever runs (a soak, a long demo): a partition keeps
                    # 7 days or 512 MiB, whichever ends first, deleted a 64 MiB segment at a
                    # time. A topic's own retention.ms (TopicSpec) still applies within that.
                    "log.retention.hours=168",
                    f"log.retention.bytes={LOCAL_PARTITION_RETENTION_BYTES}",
                    "log.segment.bytes=67108864",
                    "",
                ]
            )
        )
        (self.home / "log4j2.properties").write_text(
            "\n".join(
                [
                    "status = warn",
                    "appender.console.type = Console",
                    "appender.console.name = STDOUT",
                    "appender.console.layout.type = PatternLayout",
                    "appender.console.layout.pattern = [%d] %p %m (%c)%n",
                    "rootLogger.level = WARN",
                    "rootLogger.appenderRef.stdout.ref = STDOUT",
                    "logger.kafka.name = kafka.server.KafkaRaftServer",
                    "logger.kafka.level = INFO",
                    "",
                ]
            )
        )
        return cfg

    def _java(self, main: str, *args: str, heap: tuple[str, ...] = ("-Xmx256m",)) -> list[str]:
        return [
            "java",
            *heap,
            "-XX:+UseG1GC",
            "-XX:MaxGCPauseMillis=20",
            "-Djava.awt.headless=true",
            f"-Dlog4j2.configurationFile={self.home / 'log4j2.properties'}",
            "-cp",
            f"{self.libs}/*",
            main,
            *args,
        ]

    def prepare(self) -> None:
        cfg = self._config()
        if not (self.home / "data" / "meta.properties").exists():
            cluster_id = _run(
                self._java("kafka.tools.StorageTool", "random-uuid"), "kafka: cluster id"
            ).strip()
            _run(
                self._java("kafka.tools.StorageTool", "format", "-t", cluster_id, "-c", str(cfg)),
                "kafka: formatting storage",
            )

    def command(self) -> list[str]:
        # A fixed heap, committed at start (as Kafka's operations guide sizes brokers): the
        # broker's memory is bounded from its start, and its resident size then shows only
        # what grows outside the heap.
        heap = ("-Xms512m", "-Xmx512m", "-XX:+AlwaysPreTouch")
        return self._java("kafka.Kafka", str(self.home / "server.properties"), heap=heap)

    def healthy(self) -> bool:
        from fraudcore.kafka import broker_ready

        return broker_ready(self.settings, timeout_s=2.0)

    def after_start(self) -> None:
        from fraudcore.kafka import ensure_topics, upsert_scram_user

        ensure_topics(self.settings)
        kafka = self.settings.kafka
        if kafka.local_scram_password.get_secret_value():
            upsert_scram_user(
                self.settings, kafka.local_scram_username, kafka.local_scram_password.get_secret_value()
            )

    def version(self) -> str:
        return f"Apache Kafka {KAFKA_VERSION} (KRaft)"


class Redis(Service):
    name = "redis"

    def install(self) -> None:
        if shutil.which("redis-server") is None:
            raise StackError("redis: redis-server not found; install Debian's redis-server (make setup does)")

    def address(self) -> str:
        return f"{self.settings.redis.host}:{self.settings.redis.port}"

    @property
    def auth_file(self) -> Path:
        return self.home / "auth.conf"

    def prepare(self) -> None:
        # The password goes in a file only its owner reads, never on the command line (which
        # every local user sees in `ps`). `make up` generates one into .env.
        password = self.settings.redis.password.get_secret_value()
        self.auth_file.unlink(missing_ok=True)
        self.auth_file.touch(mode=0o600)
        self.auth_file.write_text(f"requirepass {password}\n" if password else "")

    def command(self) -> list[str]:
        r = self.settings.redis
        return [
            "redis-server",
            str(self.auth_file),
            "--bind",
            r.host,
            "--port",
            str(r.port),
            "--dir",
            str(self.home),
            "--save",
            "60 1000",
            # Durable online features and feature-job checkpoints: every write goes to the
            # append-only file, fsynced once a second (a kill -9 loses at most the last
            # second; an OS crash the same), as on the cluster's Redis.
            "--appendonly",
            "yes",
            "--appendfsync",
            "everysec",
            "--protected-mode",
            "yes",
            "--daemonize",
            "no",
        ]

    def _client(self) -> redis.Redis:

        return redis.Redis(**self.settings.redis.client_kwargs(), socket_timeout=1)

    def healthy(self) -> bool:
        try:
            return bool(self._client().ping())
        except Exception:
            return False

    def version(self) -> str:
        info: dict[str, Any] = self._client().info("server")  # type: ignore[assignment]
        return f"Redis {info['redis_version']}"


class MinIO(Service):
    name = "minio"

    @property
    def binary(self) -> Path:
        return self.cache / f"minio-{MINIO_VERSION}" / "minio"

    def install(self) -> None:
        if self.binary.exists():
            return
        if shutil.which("go") is None:
            raise StackError("minio: needs the Go toolchain to build MinIO from source")
        self.binary.parent.mkdir(parents=True, exist_ok=True)
        env = dict(os.environ, GOBIN=str(self.binary.parent), CGO_ENABLED="0")
        _run(["go", "install", f"{MINIO_MODULE}@{MINIO_VERSION}"], "minio: go install", env=env)

    def address(self) -> str:
        return self.settings.s3.endpoint

    def env(self) -> dict[str, str]:
        s3 = self.settings.s3
        if not s3.access_key or not s3.secret_key.get_secret_value():
            raise StackError(
                "minio: FRAUD_S3__ACCESS_KEY and FRAUD_S3__SECRET_KEY must be set (see .env.example)"
            )
        return dict(
            os.environ,
            MINIO_ROOT_USER=s3.access_key,
            MINIO_ROOT_PASSWORD=s3.secret_key.get_secret_value(),
            MINIO_BROWSER="on",
            MINIO_UPDATE="off",
            MINIO_PROMETHEUS_AUTH_TYPE="public",
        )

    def command(self) -> list[str]:
        host, _ = _split_hostport(self.settings.s3.endpoint)
        return [
            str(self.binary),
            "server",
            str(self.home / "data"),
            "--address",
            self.settings.s3.endpoint,
            "--console-address",
            f"{host}:{self.settings.s3.console_port}",
            "--quiet",
        ]

    def healthy(self) -> bool:
        try:
            r = httpx.get(f"{self.settings.s3.endpoint_url}/minio/health/ready", timeout=1)
            return r.status_code == 200
        except httpx.HTTPError:
            return False

    def after_start(self) -> None:
        from fraudcore.storage import ensure_buckets

        ensure_buckets(self.settings)

    def version(self) -> str:
        # A `go install` build reports DEVELOPMENT.GOGET; the pinned source version is the truth.
        return f"MinIO {MINIO_VERSION} (from source)"


class Prometheus(Service):
    name = "prometheus"

    def install(self) -> None:
        if shutil.which("prometheus") is None:
            raise StackError("prometheus: not found; install Debian's prometheus (make setup does)")

    def address(self) -> str:
        return f"127.0.0.1:{self.settings.prometheus.port}"

    def prepare(self) -> None:
        from fraudcore.metrics import prometheus_config

        (self.home / "prometheus.yml").write_text(prometheus_config(self.settings))
        rules = REPO_ROOT / "observability" / "alerts.yml"
        if rules.exists():
            shutil.copy(rules, self.home / "alerts.yml")

    def command(self) -> list[str]:
        return [
            "prometheus",
            f"--config.file={self.home / 'prometheus.yml'}",
            f"--storage.tsdb.path={self.home / 'data'}",
            f"--web.listen-address={self.address()}",
            "--storage.tsdb.retention.time=2d",
            "--storage.tsdb.retention.size=1GB",
            "--web.enable-lifecycle",
        ]

    def healthy(self) -> bool:
        try:
            return httpx.get(f"http://{self.address()}/-/ready", timeout=1).status_code == 200
        except httpx.HTTPError:
            return False

    def version(self) -> str:
        info = httpx.get(f"http://{self.address()}/api/v1/status/buildinfo", timeout=2).json()
        return f"Prometheus {info['data']['version']}"


SERVICE_TYPES: tuple[type[Service], ...] = (Redis, MinIO, Kafka, Prometheus)


def services(settings: Settings) -> list[Service]:
    return [cls(settings) for cls in SERVICE_TYPES]


def ensure_env_file(path: Path = Path(".env")) -> bool:
    """Give a fresh checkout its own random MinIO credentials, Redis password and local
    Kafka SCRAM password (never committed). A checkout that already has its MinIO and Redis
    credentials keeps them: a Redis already running without a password would refuse a client
    that sends one (add FRAUD_REDIS__PASSWORD by hand, then `make down && make up`). The
    SCRAM password is added wherever it is missing: the broker takes it at its next start."""
    text = path.read_text() if path.exists() else ""
    wrote = False
    scram = "FRAUD_KAFKA__LOCAL_SCRAM_PASSWORD"
    if not (os.environ.get(scram) or scram in text):
        with path.open("a") as f:
            f.write(f"{scram}={secrets.token_urlsafe(24)}\n")
        wrote = True
    if os.environ.get("FRAUD_S3__ACCESS_KEY") or "FRAUD_S3__ACCESS_KEY" in text:
        return wrote
    with path.open("a") as f:
        f.write(f"FRAUD_S3__ACCESS_KEY=fraud-{secrets.token_hex(4)}\n")
        f.write(f"FRAUD_S3__SECRET_KEY={secrets.token_urlsafe(24)}\n")
        if not os.environ.get("FRAUD_REDIS__PASSWORD"):
            # URL-safe characters only: the password travels in Feast's connection string.
            f.write(f"FRAUD_REDIS__PASSWORD={secrets.token_urlsafe(24)}\n")
    return True


CONSOLE_ANALYST = "analyst"


def console_password_file(settings: Settings) -> Path:
    """Where ``fraud up`` leaves the local analyst's generated password (mode 0600)."""
    return settings.state_dir / "console-analyst.password"


def ensure_console_access(settings: Settings, path: Path = Path(".env")) -> bool:
    """Give a checkout's review console a session secret and one local analyst (user
    ``analyst``, a random password in ``console_password_file``, its Argon2 hash in .env),
    unless the environment or .env already configures them. Never printed: the demo says
    where the password file is."""
    from fraud_console.auth import hash_password

    text = path.read_text() if path.exists() else ""
    lines: list[str] = []
    if not (os.environ.get("FRAUD_CONSOLE__SESSION_SECRET") or "FRAUD_CONSOLE__SESSION_SECRET" in text):
        lines.append(f"FRAUD_CONSOLE__SESSION_SECRET={secrets.token_urlsafe(32)}")
    if not (os.environ.get("FRAUD_CONSOLE__USERS") or "FRAUD_CONSOLE__USERS" in text):
        password = secrets.token_urlsafe(15)
        secret_file = console_password_file(settings)
        secret_file.parent.mkdir(parents=True, exist_ok=True)
        secret_file.unlink(missing_ok=True)
        descriptor = os.open(secret_file, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(descriptor, "w") as f:
            f.write(password + "\n")
        # Single quotes: the hash's '$' signs stay literal when .env is read.
        users = json.dumps({CONSOLE_ANALYST: hash_password(password)})
        lines.append(f"FRAUD_CONSOLE__USERS='{users}'")
    if lines:
        with path.open("a") as f:
            f.write("".join(f"{line}\n" for line in lines))
    return bool(lines)


def up(settings: Settings, report: Callable[[str], None] = print) -> list[ServiceStatus]:
    for svc in services(settings):
        t0 = time.monotonic()
        svc.install()
        t1 = time.monotonic()
        started = svc.start()
        what = "started" if started else "already running"
        report(f"{svc.name:<10} {what:<16} install {t1 - t0:5.1f}s  start {time.monotonic() - t1:5.1f}s")
    return status(settings)


def down(settings: Settings, report: Callable[[str], None] = print) -> None:
    for svc in reversed(services(settings)):
        report(f"{svc.name:<10} {'stopped' if svc.stop() else 'not running'}")


def status(settings: Settings) -> list[ServiceStatus]:
    return [svc.status() for svc in services(settings)]
