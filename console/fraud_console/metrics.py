"""The console's own Prometheus metrics (on its registered metrics port, like every component)."""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

CASES = Gauge(
    "console_cases", "Cases by state: open, claimed (within the timeout), awaiting_label", ["state"]
)
CASES_OPENED = Counter("console_cases_opened", "Cases opened, by the decision that opened them", ["decision"])
CASES_NOT_OPENED = Counter(
    "console_cases_not_opened",
    "Decisions that should have opened a case but did not, by reason",
    ["reason"],
)
CASES_DROPPED = Counter(
    "console_cases_dropped",
    "Unclaimed cases taken off the queue, by reason: expired (too old) or overflow (queue full, lowest score)",
    ["reason"],
)
VERDICTS = Counter("console_verdicts", "Verdicts recorded", ["verdict"])
LABELS_PUBLISHED = Counter("console_labels_published", "Analyst labels published to fraud-labels")
VERDICT_TO_LABEL = Histogram(
    "console_verdict_to_label_seconds",
    "From a verdict's submission to its label acknowledged on fraud-labels",
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0),
)
REJECTED = Counter(
    "console_rejected_requests",
    "Requests refused with a 4xx before anything was written, by reason",
    ["reason"],
)
SIGN_INS = Counter("console_sign_ins", "Sign-in attempts, by outcome", ["outcome"])

for _state in ("open", "claimed", "awaiting_label"):
    CASES.labels(_state)
for _reason in ("expired", "overflow"):
    CASES_DROPPED.labels(_reason)
for _reason in ("csrf", "signed_out", "unknown_case", "bad_input", "replayed_form", "conflict"):
    REJECTED.labels(_reason)
