"""The transformer's metrics (default registry, so KServe's /metrics exposes them)."""

from __future__ import annotations

from prometheus_client import Counter, Histogram

DECISIONS = Counter("fraud_decisions", "Decisions made and published", ["decision"])
E2E_LATENCY = Histogram(
    "fraud_e2e_latency_seconds",
    "From the transaction's ingestion (its Kafka record time; else its event time) to its decision being durable on fraud-scores",
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0),
)
FEATURE_LOOKUP = Histogram(
    "transformer_feature_lookup_seconds",
    "Online feature lookup per request (Feast, Redis)",
    buckets=(0.0005, 0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25),
)
ERRORS = Counter("transformer_errors", "Requests or steps that failed, by kind", ["kind"])

ERROR_KINDS = (
    "invalid_input",
    "feature_timeout",
    "feature_store",
    "predictor",
    "model_features",
    "publish",
    "shadow",  # the shadow challenger's calls: never the caller's concern
)
for _kind in ERROR_KINDS:  # every series exists from the start, at 0
    ERRORS.labels(_kind)
for _decision in ("approve", "review", "decline"):
    DECISIONS.labels(_decision)
