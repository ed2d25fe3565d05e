"""Model rows, reason codes and decision events: pure functions, no I/O.

Reason codes by occlusion: each transaction's row is scored again with one feature at a
time replaced by its baseline (the training median the exporter stores, else 0), and a
feature's contribution is ``score - occluded score``. The occluded rows (features x
transactions) travel in the same predictor call as the rows themselves, so explanations
cost no extra round trip. The reasons are the ``k`` features with the largest positive
contributions: what pushed the score up most.
"""

from __future__ import annotations

import uuid
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

import numpy as np
import numpy.typing as npt

from fraudcore.events import SCHEMA_VERSION, format_timestamp, parse_timestamp
from fraudcore.features import MODEL_FEATURES, model_matrix, request_features

# decision_id = uuid5(DECISION_NAMESPACE, "<transaction_id>/<model_version>")
DECISION_NAMESPACE = uuid.uuid5(uuid.NAMESPACE_URL, "https://fraud-platform.dev/decisions")
APPROVE, REVIEW, DECLINE = "approve", "review", "decline"
EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def event_time_us(timestamp: str) -> int:
    """Microseconds since the epoch, exactly as ``fraudcore.features.to_us`` computes them."""
    return (parse_timestamp(timestamp) - EPOCH) // timedelta(microseconds=1)


def model_rows(
    amounts: Sequence[float], t_us: Sequence[int], served: Mapping[str, npt.NDArray[np.float64]]
) -> npt.NDArray[np.float64]:
    """The model's input rows (MODEL_FEATURES order) from the transactions and served features,
    in float64: the model takes them as float32, the decisions carry them exactly."""
    amount = np.asarray(amounts, dtype=np.float64)
    request = request_features(amount, np.asarray(t_us, dtype=np.int64), served)
    return model_matrix({**served, **request}, np.float64)


def occluded(x: npt.NDArray[np.float32], baselines: Sequence[float]) -> npt.NDArray[np.float32]:
    """Row ``i * F + j``: row ``i`` of ``x`` with feature ``j`` set to ``baselines[j]``."""
    n, f = x.shape
    rows = np.repeat(x, f, axis=0)
    cols = np.tile(np.arange(f), n)
    rows[np.arange(n * f), cols] = np.asarray(baselines, dtype=np.float32)[cols]
    return rows


def contributions(
    scores: npt.NDArray[np.floating[Any]], occluded_scores: npt.NDArray[np.floating[Any]], n_features: int
) -> npt.NDArray[np.float64]:
    return np.asarray(scores, dtype=np.float64)[:, None] - np.asarray(
        occluded_scores, dtype=np.float64
    ).reshape(-1, n_features)


def top_reasons(contribution: npt.NDArray[np.float64], names: Sequence[str], k: int) -> list[dict[str, Any]]:
    order = np.argsort(-contribution, kind="stable")[:k]
    rounded = [(names[j], round(float(contribution[j]), 6)) for j in order]
    return [{"feature": name, "contribution": value} for name, value in rounded if value > 0]


def decide(score: float, review_threshold: float, decline_threshold: float) -> str:
    if score >= decline_threshold:
        return DECLINE
    if score >= review_threshold:
        return REVIEW
    return APPROVE


def decision_id(transaction_id: str, model_version: str) -> str:
    return str(uuid.uuid5(DECISION_NAMESPACE, f"{transaction_id}/{model_version}"))


def decision_event(
    transaction: Mapping[str, Any],
    score: float,
    decision: str,
    model_version: str,
    reasons: list[dict[str, Any]],
    fallback: bool,
    scored_at: datetime,
    ingested_at: str | None = None,
    features: Sequence[float] | None = None,
) -> dict[str, Any]:
    """One decision, as the contract ``decision.v1.json`` defines it; ``features``: the model's
    inputs as served, in MODEL_FEATURES order."""
    event = {
        "schema_version": SCHEMA_VERSION,
        "decision_id": decision_id(transaction["transaction_id"], model_version),
        "transaction_id": transaction["transaction_id"],
        "card_id": transaction["card_id"],
        "score": min(max(float(score), 0.0), 1.0),
        "decision": decision,
        "model_version": model_version,
        "reasons": reasons,
        "features_fallback": bool(fallback),
        "transaction_timestamp": format_timestamp(parse_timestamp(transaction["timestamp"])),
        "scored_at": format_timestamp(scored_at),
    }
    if ingested_at is not None:
        event["ingested_at"] = ingested_at
    if features is not None:
        event["features"] = dict(zip(MODEL_FEATURES, features, strict=True))
    return event


def check_features(names: Sequence[str]) -> None:
    if list(names) != MODEL_FEATURES:
        raise ValueError(
            f"the model takes features {list(names)}, this transformer computes {MODEL_FEATURES}: "
            "deploy a transformer built for that model"
        )
