"""One typed settings object for every component.

Values come from environment variables (prefix ``FRAUD_``, nested groups joined with
``__``, e.g. ``FRAUD_KAFKA__BOOTSTRAP_SERVERS``) or from a ``.env`` file in the working
directory. Secrets (S3 keys, the Redis password) have no default that works outside a
laptop: they are read from the environment, never from code.
"""

from __future__ import annotations

import json
import re
from functools import lru_cache
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict


class TopicSpec(BaseModel):
    name: str
    partitions: int = Field(ge=1)
    retention_ms: int | None = None
    # A compacted topic keeps the latest record of each key (cleanup.policy=compact).
    compacted: bool = False


class TopicSettings(BaseModel):
    """Every topic the platform uses, defined once. Manifests are checked against these."""

    # Untrusted ingress (replays, external producers); the quality gate forwards valid
    # events from here to `transactions` and quarantines the rest in the dead-letter topic.
    raw: TopicSpec = TopicSpec(name="transactions-raw", partitions=6)
    transactions: TopicSpec = TopicSpec(name="transactions", partitions=6)
    labels: TopicSpec = TopicSpec(name="fraud-labels", partitions=6)
    scores: TopicSpec = TopicSpec(name="fraud-scores", partitions=6)
    # A shadow challenger's decisions on the same live events: never sent to the caller.
    shadow_scores: TopicSpec = TopicSpec(name="fraud-scores-shadow", partitions=6)
    dead_letter: TopicSpec = TopicSpec(name="transactions-dlq", partitions=3)
    model_events: TopicSpec = TopicSpec(name="model-events", partitions=1)
    # The review console's cases (opened, claimed, released, closed, labelled), keyed by case
    # id: compaction keeps each case's latest state, which carries its audit record.
    cases: TopicSpec = TopicSpec(name="fraud-cases", partitions=1, compacted=True)

    def all(self) -> list[TopicSpec]:
        return [
            self.raw,
            self.transactions,
            self.labels,
            self.scores,
            self.shadow_scores,
            self.dead_letter,
            self.model_events,
            self.cases,
        ]


KafkaSecurityProtocol = Literal["PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"]
KafkaSaslMechanism = Literal["SCRAM-SHA-512", "SCRAM-SHA-256", "PLAIN"]


class KafkaSettings(BaseModel):
    """The brokers and how every client authenticates to them. The defaults are the local
    broker's: PLAINTEXT, no credentials. fraudcore.kafka maps the security options onto
    each client library (``librdkafka_security``, ``kafka_python_security``)."""

    model_config = ConfigDict(hide_input_in_errors=True)  # a rejected password stays out of logs

    bootstrap_servers: str = "127.0.0.1:19092"
    controller_port: int = 19093
    replication_factor: int = 1
    client_id: str = "fraud-platform"
    # SASL_SSL + SCRAM-SHA-512 against Strimzi's TLS listener in the cloud overlays.
    security_protocol: KafkaSecurityProtocol = "PLAINTEXT"
    # Used by the SASL_* protocols only.
    sasl_mechanism: KafkaSaslMechanism = "SCRAM-SHA-512"
    sasl_username: str = ""
    sasl_password: SecretStr = SecretStr("")
    # PEM files, used by the SSL protocols only. ssl_ca_file: the CA that signed the brokers'
    # certificates (empty: the system's CAs); ssl_cert_file / ssl_key_file: a client
    # certificate and its key, for mutual TLS.
    ssl_ca_file: str = ""
    ssl_cert_file: str = ""
    ssl_key_file: str = ""
    # The local broker (`fraud up`) listens on bootstrap_servers (PLAINTEXT) and, beside it,
    # on this port with SASL_PLAINTEXT and SCRAM-SHA-512 for one user, whose password `fraud
    # up` generates into .env: connect there with security_protocol SASL_PLAINTEXT and these
    # credentials to run the code path an authenticated cluster takes.
    local_sasl_port: int = Field(19094, ge=1, le=65535)
    local_scram_username: str = "fraud-local"
    local_scram_password: SecretStr = SecretStr("")

    @property
    def uses_sasl(self) -> bool:
        return self.security_protocol.startswith("SASL_")

    @property
    def uses_tls(self) -> bool:
        return self.security_protocol.endswith("SSL")

    @model_validator(mode="after")
    def _security_is_complete(self) -> KafkaSettings:
        # Options the protocol would ignore are a mistake, not a default: say so.
        tls_files = {
            "ssl_ca_file": self.ssl_ca_file,
            "ssl_cert_file": self.ssl_cert_file,
            "ssl_key_file": self.ssl_key_file,
        }
        if not self.uses_tls and any(tls_files.values()):
            named = ", ".join(f"kafka.{k}" for k, v in tls_files.items() if v)
            raise ValueError(f"{named}: need kafka.security_protocol SSL or SASL_SSL")
        if bool(self.ssl_cert_file) != bool(self.ssl_key_file):
            raise ValueError("kafka.ssl_cert_file and kafka.ssl_key_file go together (mutual TLS)")
        if not self.uses_sasl and (self.sasl_username or self.sasl_password.get_secret_value()):
            raise ValueError("kafka.sasl_username/sasl_password: need a SASL_* kafka.security_protocol")
        return self


class RedisSettings(BaseModel):
    model_config = ConfigDict(hide_input_in_errors=True)  # a rejected password stays out of logs

    host: str = "127.0.0.1"
    port: int = 16379
    # AUTH password (FRAUD_REDIS__PASSWORD; on Kubernetes from Secret fraud-redis). Empty: no
    # AUTH, as the local stack runs.
    password: SecretStr = SecretStr("")
    # TLS (managed Redis in the cloud overlays); ssl_ca_certs: a CA file when the server's
    # certificate is not signed by a public CA (Memorystore).
    ssl: bool = False
    ssl_ca_certs: str = ""

    @field_validator("password")
    @classmethod
    def _password_survives_feast(cls, password: SecretStr) -> SecretStr:
        # Feast splits its connection string on commas and JSON-decodes each value, so a
        # password like "1234" or "true" would reach Redis as another value.
        value = password.get_secret_value()
        if "," in value:
            raise ValueError("redis.password must not contain ','")
        try:
            json.loads(value)
        except ValueError:
            return password
        raise ValueError("redis.password must not be valid JSON (Feast would decode it)")

    @property
    def url(self) -> str:
        """The server's address (never the password)."""
        return f"{'rediss' if self.ssl else 'redis'}://{self.host}:{self.port}/0"

    def client_kwargs(self) -> dict[str, Any]:
        """Keyword arguments for ``redis.Redis``: every client the platform creates."""
        kwargs: dict[str, Any] = {"host": self.host, "port": self.port}
        if self.password.get_secret_value():
            kwargs["password"] = self.password.get_secret_value()
        if self.ssl:
            kwargs["ssl"] = True
            if self.ssl_ca_certs:
                kwargs["ssl_ca_certs"] = self.ssl_ca_certs
        return kwargs

    def feast_connection_string(self) -> str:
        """The same connection in the syntax of Feast's Redis online store
        (``host:port,ssl=true,password=...``); no empty password is ever written."""
        parts = [f"{self.host}:{self.port}"]
        if self.ssl:
            parts.append("ssl=true")
            if self.ssl_ca_certs:
                parts.append(f"ssl_ca_certs={self.ssl_ca_certs}")
        if self.password.get_secret_value():
            parts.append(f"password={self.password.get_secret_value()}")
        return ",".join(parts)


class S3Settings(BaseModel):
    endpoint: str = "127.0.0.1:19000"
    console_port: int = 19001
    secure: bool = False
    region: str = "us-east-1"
    # Read from FRAUD_S3__ACCESS_KEY / FRAUD_S3__SECRET_KEY (or .env); `make up`
    # writes a random pair into .env on first run when none is set.
    access_key: str = ""
    secret_key: SecretStr = SecretStr("")
    raw_bucket: str = "raw-events"
    features_bucket: str = "offline-features"
    models_bucket: str = "models"

    @property
    def endpoint_url(self) -> str:
        return f"{'https' if self.secure else 'http'}://{self.endpoint}"

    def buckets(self) -> list[str]:
        return [self.raw_bucket, self.features_bucket, self.models_bucket]


class PrometheusSettings(BaseModel):
    port: int = 19090
    scrape_interval_s: int = 5


class MetricsPorts(BaseModel):
    """The Prometheus metrics port of every component: the one place a component registers.

    The local Prometheus scrape config and the Kubernetes monitors are generated from here.
    """

    producer: int = 9101
    quality_gate: int = 9102
    archiver: int = 9103
    feature_job: int = 9104
    dispatcher: int = 9105
    transformer: int = 9106
    predictor: int = 9107
    model_monitor: int = 9108
    console: int = 9109

    def items(self) -> list[tuple[str, int]]:
        return list(self.model_dump().items())


class FeatureSettings(BaseModel):
    """The feature layer: Feast repo, online/offline stores, the streaming job's state."""

    repo: Path = Path("feature_store/repo")
    project: str = "fraud"  # Feast project: its online keys and registry entries are separate
    # Feast's registry: a local file, or an object-store path that a cluster shares.
    registry: str = ".state/feast/registry.db"
    # Offline features (backfill output, feature log): s3://<bucket>/... on MinIO/S3, or a folder.
    offline_root: str = "s3://offline-features"
    # Prefix of the streaming job's Redis keys (terminal counters, checkpoints, watermarks).
    namespace: str = "fj"
    label_delay_days: int = 7
    checkpoint_interval_s: float = 5.0
    # How long the streaming job's fetch may wait to fill a batch (or 256 KiB): the freshness
    # of the online features pays it (a card's state lags its latest transaction by up to
    # about this much), and each batch's fixed cost (Redis scripts, an online write) is
    # shared by more events. 50 ms: ~20 batches/s at any live rate.
    stream_max_wait_ms: int = Field(250, ge=1, le=5_000)
    # The quality gate's consumer group (the gate forwards transactions-raw to transactions):
    # a transactions partition read to its end counts as complete for the terminal watermark
    # only up to where it ended at a moment this group had committed transactions-raw to its
    # end ("" trusts the end alone; see fraud_features.watermarks).
    gate_group: str = "quality-gate"
    # How often the streaming job asks the broker whether the gate has caught up.
    gate_check_interval_s: float = Field(1.0, gt=0)
    # Event days of terminal counters kept behind the stream's latest day; older days' counts
    # are dropped. It must exceed 2 x label_delay_days + 30 (the terminal windows' reach, plus
    # how far behind the latest day another partition may still be computing; the feature job
    # refuses less): the rest is slack for late transactions (60: 15 days late).
    counter_retention_days: int = Field(60, ge=1)


class MonitorSettings(BaseModel):
    """The model monitor: live quality from delayed labels, and drift."""

    # Event days the live metrics cover (precision, recall, alert rate, AP, card precision@100).
    window_days: int = Field(7, ge=1)
    # A decision's truth is known once event time has passed its transaction's time plus the
    # label delay (features.label_delay_days) plus this margin, for labels still in flight.
    label_margin_hours: float = Field(24.0, ge=0)
    # Decisions per model version in the drift window (PSI of each input and of the score).
    drift_window: int = Field(5_000, ge=100)
    # The live skew check: every skew_interval_s (0: never), the newest skew_sample decisions'
    # served features against the same features recomputed from the archive.
    skew_interval_s: float = Field(300.0, ge=0)
    skew_sample: int = Field(1_000, ge=1)
    # Where a monitor with no stored position starts reading fraud-scores: latest or earliest.
    initial_offset: Literal["latest", "earliest"] = "latest"
    # Prefix of its Redis keys (outcome counts, labels, offsets).
    namespace: str = "monitor"


class ServingSettings(BaseModel):
    """Scoring: decision thresholds, budgets, and the local servers' ports."""

    # score >= review_threshold: review; score >= decline_threshold: decline; else approve.
    review_threshold: float = Field(0.5, ge=0, le=1)
    decline_threshold: float = Field(0.8, ge=0, le=1)
    reason_codes: int = Field(3, ge=0, le=32)
    # Budget for the online-store lookup; past it, defaults are used (features_fallback).
    feature_timeout_ms: float = Field(50.0, gt=0)
    # How long a request waits for the broker to acknowledge its decision events.
    publish_timeout_s: float = Field(10.0, gt=0)
    # Transactions per request.
    max_batch: int = Field(256, ge=1)
    # Transactions of concurrent requests that share one Feast lookup and one predictor
    # call (KafkaSource sends one event per request; see fraud_transformer.coalesce).
    coalesce_max: int = Field(512, ge=1)
    model_name: str = "fraud"
    model_uri: str = "s3://models/fraud/champion"

    @property
    def shadow_model_name(self) -> str:
        """The shadow slot's model on the predictor: a challenger that scores live events
        beside the champion, unseen by callers."""
        return f"{self.model_name}-shadow"

    # Where the KServe servers listen: this machine only, unless told otherwise (the cluster's
    # config, kustomize/base/config/platform.env, sets 0.0.0.0).
    bind_host: str = "127.0.0.1"
    predictor_http_port: int = 8085
    predictor_grpc_port: int = 8095
    transformer_http_port: int = 8086
    transformer_grpc_port: int = 8096

    @model_validator(mode="after")
    def _thresholds_ordered(self) -> ServingSettings:
        if self.review_threshold > self.decline_threshold:
            raise ValueError("serving.review_threshold must not exceed serving.decline_threshold")
        return self


class HttpLimits(BaseModel):
    """What every HTTP server of the platform accepts from a client (fraudcore.http_limits)."""

    # A request body past this is answered 413 (the transformer's largest batch of
    # transactions and the predictor's largest V2 request fit well within it).
    max_body_bytes: int = Field(4 * 1024 * 1024, ge=1024)
    # A request's headers and body must arrive within this of its first byte.
    read_timeout_s: float = Field(10.0, gt=0)
    # Open connections at once; more are answered 503.
    max_connections: int = Field(1_000, ge=1)


ANALYST_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._@-]{0,127}")


class ConsoleSettings(BaseModel):
    """The review console: who may sign in, the review queue's rules, where the live page reads.

    ``users`` maps each analyst's name to an Argon2 hash of their password (``fraud console
    hash-password``), e.g. ``FRAUD_CONSOLE__USERS='{"alice": "$argon2id$v=19$..."}'``."""

    model_config = ConfigDict(hide_input_in_errors=True)  # a rejected secret stays out of logs

    host: str = "127.0.0.1"
    port: int = Field(8090, ge=1, le=65535)
    # Signs the session cookies (at least 32 characters); the console refuses to serve without.
    session_secret: SecretStr = SecretStr("")
    session_max_age_s: int = Field(8 * 3600, ge=60)
    # Mark the session cookie Secure: set it wherever the console is reached over HTTPS.
    secure_cookie: bool = False
    users: dict[str, str] = Field(default_factory=dict)
    # How long a claim keeps other analysts off a case (the claimant may still decide after it).
    claim_timeout_s: float = Field(900.0, gt=0)
    note_max_chars: int = Field(2_000, ge=0)
    # Share of `decline` decisions that also become cases (every `review` does), chosen by a
    # hash of the transaction id: the same ones after a restart.
    decline_sample_share: float = Field(0.05, ge=0, le=1)
    # An unclaimed case older than this is dropped from the queue (its label will have come
    # as a chargeback, if any).
    case_expiry_s: float = Field(7 * 86_400.0, gt=0)
    # The most unclaimed cases the queue holds: past it, the lowest-scored ones are dropped
    # (a tombstone each, counted in console_cases_dropped), so a queue nobody works through
    # keeps its riskiest cases and the console's memory stays bounded.
    queue_max_cases: int = Field(2_000, ge=1)
    # Where a console with no committed position starts reading fraud-scores.
    initial_offset: Literal["latest", "earliest"] = "latest"
    # Prometheus's HTTP API (empty: the local one, http://127.0.0.1:<prometheus.port>).
    prometheus_url: str = ""
    refresh_s: float = Field(3.0, ge=1)

    @field_validator("users")
    @classmethod
    def _users_are_hashed(cls, users: dict[str, str]) -> dict[str, str]:
        for name, hashed in users.items():
            if not ANALYST_NAME.fullmatch(name):
                raise ValueError(f"console.users: {name[:40]!r} is not a valid analyst name")
            if not hashed.startswith("$argon2"):
                raise ValueError(f"console.users.{name}: not an Argon2 hash (fraud console hash-password)")
        return users

    @field_validator("session_secret")
    @classmethod
    def _secret_is_long_enough(cls, secret: SecretStr) -> SecretStr:
        if 0 < len(secret.get_secret_value()) < 32:
            raise ValueError("console.session_secret must have at least 32 characters")
        return secret


class Settings(BaseSettings):
    model_config = SettingsConfigDict(
        env_prefix="FRAUD_",
        env_nested_delimiter="__",
        nested_model_default_partial_update=True,
        env_file=".env",
        extra="ignore",
        # A rejected value may be a secret (the Redis password, an S3 key): errors name the
        # setting and the reason only.
        hide_input_in_errors=True,
    )

    state_dir: Path = Path(".state")
    cache_dir: Path = Field(default_factory=lambda: Path.home() / ".cache" / "fraud-platform")
    kafka: KafkaSettings = KafkaSettings()
    topics: TopicSettings = TopicSettings()
    redis: RedisSettings = RedisSettings()
    s3: S3Settings = S3Settings()
    prometheus: PrometheusSettings = PrometheusSettings()
    metrics_ports: MetricsPorts = MetricsPorts()
    features: FeatureSettings = FeatureSettings()
    serving: ServingSettings = ServingSettings()
    monitor: MonitorSettings = MonitorSettings()
    console: ConsoleSettings = ConsoleSettings()
    http: HttpLimits = HttpLimits()
    max_event_bytes: int = 64 * 1024
    # Local by default; the cluster's config (kustomize/base/config/platform.env) sets 0.0.0.0
    # so Prometheus can scrape each pod.
    metrics_host: str = "127.0.0.1"
    # /healthz fails once a consume loop has handled nothing for this long while records wait
    # for it (longer than any one batch may take: an archive flush, a checkpoint; and well
    # above the 5 s between the loops' lag readings).
    consumer_stall_after_s: float = Field(120.0, ge=15)


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    return Settings()
