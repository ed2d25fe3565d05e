"""The model monitor's Prometheus metrics (per model version where it applies)."""

from __future__ import annotations

from prometheus_client import Counter, Gauge

VERSION = ["model_version"]
LIVE_PRECISION = Gauge(
    "fraud_live_precision",
    "Share of review + decline that were fraud, over the window's labelled decisions",
    VERSION,
)
LIVE_RECALL = Gauge("fraud_live_recall", "Share of the window's frauds sent to review or decline", VERSION)
LIVE_ALERT_RATE = Gauge(
    "fraud_live_alert_rate", "Share of the window's labelled decisions sent to review or decline", VERSION
)
LIVE_AVERAGE_PRECISION = Gauge(
    "fraud_live_average_precision", "Average precision of the window's labelled scores", VERSION
)
LIVE_CARD_PRECISION = Gauge(
    "fraud_live_card_precision_at_100",
    "Mean over the window's days of the share of fraud among the day's 100 highest-scored cards",
    VERSION,
)
LIVE_LABELLED = Gauge(
    "fraud_live_labelled_decisions", "Decisions in the window whose truth is known", VERSION
)
OUTCOMES = Counter(
    "fraud_monitor_outcomes", "Decisions counted once their label delay passed", ["model_version", "fraud"]
)
LABELS = Counter("fraud_monitor_labels", "Fraud labels read")
LABEL_BACKLOG = Gauge(
    "fraud_label_backlog_decisions", "Decisions still waiting for their label delay to pass"
)
LABEL_BACKLOG_SHARE = Gauge(
    "fraud_label_backlog_share",
    "Decisions waiting for their label, over those plus the window's labelled ones",
)
FEATURE_PSI = Gauge(
    "fraud_feature_psi",
    "Population stability index of an input over the latest decisions, against training",
    ["model_version", "feature"],
)
SCORE_PSI = Gauge(
    "fraud_score_psi", "Population stability index of the latest scores, against the test window's", VERSION
)
SKEW_RATE = Gauge(
    "fraud_feature_skew_rate",
    "Share of the last skew check's decisions with a served card or request feature off the recomputed one",
)
SKEW_CHECKED = Gauge("fraud_feature_skew_checked", "Decisions compared by the last skew check")
SKEW_MISMATCHES = Gauge(
    "fraud_feature_skew_mismatches", "Decisions of the last skew check with this feature off", ["feature"]
)
TERMINAL_AT_WATERMARK = Gauge(
    "fraud_terminal_features_at_watermark",
    "Decisions of the last skew check served an earlier day's final terminal values",
)
SKEW_CHECKS = Counter("fraud_skew_checks", "Skew checks run", ["outcome"])
EVENT_TIME = Gauge(
    "fraud_monitor_event_time_seconds", "The latest transaction event time decided (the monitor's clock)"
)
