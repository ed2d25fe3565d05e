"""Training/serving skew, checked live: decided transactions' features, as served (the
decision carries them), against the same features recomputed from the raw-event archive
with ``fraudcore.features`` (the training code).

* Card and request-time features are deterministic given the card's history: they must
  match within ``TOLERANCE`` (relative). A mismatch is skew, or a card state the streaming
  job had not written yet when the transaction was scored (its freshness bound: a card
  paying twice within it is scored without the first payment).
* Terminal values are per UTC hour and final only once the watermark allows; until then the
  online store serves the terminal's latest final hour (the feature job computes a terminal's
  values for the hours it has transactions in). A served value equal to the hour's, or to
  those of an earlier hour of the terminal's within the terminal view's TTL (two days), is
  "at its watermark"; anything else is skew.

Decisions that fell back to defaults (``features_fallback``) are counted apart: defaults
are what the contract says to serve for an unknown card or terminal, or a late lookup.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

import numpy as np
import orjson
import pandas as pd
from confluent_kafka import TopicPartition

from fraudcore.features import (
    CARD_HISTORY_S,
    MODEL_FEATURES,
    TERMINAL_FEATURES,
    TERMINAL_VALUES_TTL_HOURS,
    hour_of,
    offline_features,
    offline_terminal_features,
    to_us,
)
from fraudcore.kafka import partition_reader
from fraudcore.settings import Settings

TOLERANCE = 1e-6
DETERMINISTIC = [name for name in MODEL_FEATURES if name not in TERMINAL_FEATURES]


@dataclass
class SkewReport:
    sampled: int = 0
    fallbacks: int = 0  # served defaults by contract: not compared
    not_archived: int = 0  # not in the archive yet (the archiver flushes every few seconds)
    checked: int = 0
    skewed: int = 0  # decisions with a deterministic feature off
    mismatches: dict[str, int] = field(default_factory=dict)
    max_difference: dict[str, float] = field(default_factory=dict)
    terminal_at_watermark: int = 0  # an earlier day's final values (not skew)
    terminal_skewed: int = 0

    @property
    def skew_rate(self) -> float:
        return self.skewed / self.checked if self.checked else float("nan")

    def to_dict(self) -> dict[str, Any]:
        return {
            "sampled": self.sampled,
            "fallbacks": self.fallbacks,
            "not_archived": self.not_archived,
            "checked": self.checked,
            "skewed": self.skewed,
            "skew_rate": None if not self.checked else round(self.skew_rate, 6),
            "terminal_at_watermark": self.terminal_at_watermark,
            "terminal_skewed": self.terminal_skewed,
            "mismatches": dict(sorted(self.mismatches.items())),
            "max_difference": {k: round(v, 9) for k, v in sorted(self.max_difference.items())},
        }


def latest_decisions(settings: Settings, sample: int, timeout_s: float = 10.0) -> list[dict[str, Any]]:
    """The newest ``sample`` decisions that carry their features, from every partition."""
    topic = settings.topics.scores
    client = partition_reader(settings, "skew-check")  # assigned, never commits
    try:
        per_partition = max(1, sample // topic.partitions + 1)
        ends: dict[int, int] = {}
        assignment = []
        for p in range(topic.partitions):
            low, high = client.get_watermark_offsets(TopicPartition(topic.name, p), timeout=timeout_s)
            if high > low:
                ends[p] = high
                assignment.append(TopicPartition(topic.name, p, max(low, high - per_partition)))
        client.assign(assignment)
        out: list[dict[str, Any]] = []
        done: set[int] = set()
        deadline = pd.Timestamp.now().value + int(timeout_s * 1e9)
        while len(done) < len(ends) and pd.Timestamp.now().value < deadline:
            for m in client.consume(5_000, 0.5):
                partition, offset, value = m.partition(), m.offset(), m.value()
                if m.error() or partition is None or offset is None or value is None:
                    continue
                if offset + 1 >= ends[partition]:
                    done.add(partition)
                try:
                    event = orjson.loads(value)
                except ValueError:
                    continue
                if isinstance(event, dict) and isinstance(event.get("features"), dict):
                    out.append(event)
        return out[-sample:] if len(out) > sample else out
    finally:
        client.close()


def compare(
    decisions: list[dict[str, Any]], transactions: pd.DataFrame, labels: pd.DataFrame | None, delay_days: int
) -> SkewReport:
    """Served against recomputed, for the decisions whose transaction is in ``transactions``
    (the archive with enough history before them)."""
    report = SkewReport(sampled=len(decisions))
    served = [d for d in decisions if not d.get("features_fallback")]
    report.fallbacks = len(decisions) - len(served)
    wanted = {d["transaction_id"] for d in served}
    cards = {d["card_id"] for d in served}
    present = transactions["transaction_id"].isin(wanted)
    terminals = set(transactions.loc[present, "terminal_id"])
    # Each sampled card's whole history and every transaction at a sampled terminal.
    keep = transactions["card_id"].isin(cards) | transactions["terminal_id"].isin(terminals)
    history = transactions.loc[keep].sort_values("timestamp", kind="stable").reset_index(drop=True)
    offline = offline_features(history, labels, delay_days).set_index("transaction_id")
    offline = offline.loc[offline.index.isin(wanted)]
    found = [d for d in served if d["transaction_id"] in offline.index]
    report.not_archived = len(served) - len(found)
    report.checked = len(found)
    if not found:
        return report
    rows = offline.loc[[d["transaction_id"] for d in found]]
    got = pd.DataFrame([d["features"] for d in found], index=rows.index)
    off = np.zeros(len(found), dtype=bool)
    for name in DETERMINISTIC:
        a, b = got[name].to_numpy(np.float64), rows[name].to_numpy(np.float64)
        diff = np.abs(a - b)
        bad = diff > TOLERANCE * np.maximum(1.0, np.abs(b))
        report.mismatches[name] = int(bad.sum())
        report.max_difference[name] = float(diff.max())
        off |= bad
    report.skewed = int(off.sum())
    _terminal(report, got, rows, history, labels, delay_days)
    return report


def _terminal(
    report: SkewReport,
    got: pd.DataFrame,
    rows: pd.DataFrame,
    history: pd.DataFrame,
    labels: pd.DataFrame | None,
    delay_days: int,
) -> None:
    hour = hour_of(to_us(rows["timestamp"]))
    # Each row's candidates: its own hour, then the earlier hours (within the TTL) in which its
    # terminal had transactions, the only hours the feature job computed values for.
    own = pd.DataFrame(
        {"row": np.arange(len(rows)), "terminal_id": rows["terminal_id"].to_numpy(), "hour": hour}
    )
    active = pd.DataFrame(
        {"terminal_id": history["terminal_id"].to_numpy(), "active": hour_of(to_us(history["timestamp"]))}
    ).drop_duplicates()
    earlier = own.merge(active, on="terminal_id")
    earlier = earlier.loc[
        (earlier["active"] < earlier["hour"])
        & (earlier["active"] >= earlier["hour"] - TERMINAL_VALUES_TTL_HOURS)
    ]
    candidates = pd.concat(
        [own, earlier[["row", "terminal_id", "active"]].rename(columns={"active": "hour"})], ignore_index=True
    )
    values = offline_terminal_features(
        history,
        labels,
        candidates["terminal_id"].to_numpy(),
        candidates["hour"].to_numpy(np.int64),
        delay_days,
    )
    row = candidates["row"].to_numpy()
    served = got[TERMINAL_FEATURES].to_numpy(np.float64)
    expected = np.column_stack([values[n] for n in TERMINAL_FEATURES])
    same = (np.abs(served[row] - expected) <= TOLERANCE * np.maximum(1.0, np.abs(expected))).all(axis=1)
    matches_this_hour = same[: len(rows)]  # the first len(rows) candidates are the rows' own hours
    matches_some_hour = np.zeros(len(rows), dtype=bool)
    np.logical_or.at(matches_some_hour, row, same)
    report.terminal_at_watermark = int((matches_some_hour & ~matches_this_hour).sum())
    report.terminal_skewed = int((~matches_some_hour).sum())
    for j, name in enumerate(TERMINAL_FEATURES):
        report.mismatches[name] = int((~matches_some_hour & (served[:, j] != rows[name].to_numpy())).sum())


def check(settings: Settings, sample: int, archive_prefix: str = "") -> SkewReport:
    """Sample the newest decisions and compare them with the archive (``compare``)."""
    from fraud_pipelines.data import load_archive

    decisions = latest_decisions(settings, sample)
    if not decisions:
        return SkewReport()
    first = min(pd.Timestamp(d["transaction_timestamp"]) for d in decisions)
    # The card windows' history, and the terminal windows' (30 days before the label delay)
    # for the hour and the TERMINAL_VALUES_TTL_HOURS before it.
    delay = settings.features.label_delay_days
    look_back = timedelta(seconds=CARD_HISTORY_S) + timedelta(days=delay, hours=TERMINAL_VALUES_TTL_HOURS + 1)
    raw = load_archive(settings, archive_prefix, since=first - look_back)
    return compare(decisions, raw.transactions, raw.labels, settings.features.label_delay_days)
