"""The predictor's own metrics, on KServe's /metrics next to its request histograms."""

from __future__ import annotations

from prometheus_client import Counter, Gauge

MODEL_INFO = Gauge("predictor_model_info", "1 for the model version being served", ["model", "version"])
MODEL_SWAPS = Counter("predictor_model_swaps_total", "Model versions swapped in while serving", ["model"])
MODEL_LOAD_FAILURES = Counter(
    "predictor_model_load_failures_total",
    "Model versions that could not be loaded (the old one stays)",
    ["model"],
)
EVENTS_READY = Gauge(
    "predictor_model_events_ready",
    "1 once the model-events consumer is positioned at the latest offset",
    ["model"],
)
