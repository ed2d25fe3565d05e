"""The shadow challenger: the model in the predictor's shadow slot (``<model>-shadow``) scores
the same live rows as the champion, after the champion's answer has gone, and its decisions go
to ``fraud-scores-shadow``: never to the caller, never in the caller's latency.

An empty slot (no shadow model) is looked at again every ``RETRY_S``, by one call. At most ``MAX_IN_FLIGHT``
shadow calls run at once; beyond that the shadow skips rows (counted), so a slow challenger
never holds the champion's path.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from typing import Any

import numpy as np
import numpy.typing as npt
import orjson
from prometheus_client import Counter

from fraud_transformer.scoring import decide, decision_event
from fraudcore.features import MODEL_FEATURES
from fraudcore.protocol import ModelInfo

log = logging.getLogger(__name__)

RETRY_S = 30.0
MAX_IN_FLIGHT = 64
SHADOW_DECISIONS = Counter(
    "transformer_shadow_decisions", "Shadow challenger decisions published", ["decision"]
)
SHADOW_SKIPPED = Counter(
    "transformer_shadow_skipped", "Rows the shadow did not score (slot empty or busy)", ["why"]
)

Call = Callable[..., Awaitable[tuple[npt.NDArray[np.float32], ModelInfo]]]
Publish = Callable[[list[tuple[bytes, bytes]], str], Awaitable[Any]]


class ShadowScorer:
    def __init__(
        self, call: Call, publish: Publish, model_name: str, topic: str, thresholds: tuple[float, float]
    ) -> None:
        self.call, self.publish = call, publish
        self.model_name, self.topic = model_name, topic
        self.review, self.decline = thresholds
        self.info: ModelInfo | None = None
        self.empty_until = 0.0  # monotonic time before which the slot is taken as empty
        self.tasks: set[asyncio.Task[None]] = set()

    def submit(
        self,
        events: list[dict[str, Any]],
        rows: npt.NDArray[np.float64],
        fallback: npt.NDArray[np.bool_],
        ingested_at: str | None,
    ) -> None:
        """Score these rows in the background (returns at once)."""
        if time.monotonic() < self.empty_until:
            SHADOW_SKIPPED.labels("empty").inc(len(events))
            return
        if len(self.tasks) >= MAX_IN_FLIGHT or (self.info is None and self.tasks):
            # While the slot's model is unknown, one call looks: a burst of requests would
            # otherwise each ask an empty slot at once.
            SHADOW_SKIPPED.labels("busy").inc(len(events))
            return
        task = asyncio.get_running_loop().create_task(self._score(events, rows, fallback, ingested_at))
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)

    async def _score(
        self,
        events: list[dict[str, Any]],
        rows: npt.NDArray[np.float64],
        fallback: npt.NDArray[np.bool_],
        ingested_at: str | None,
    ) -> None:
        try:
            scores, info = await self.call(rows.astype(np.float32), self.info, model_name=self.model_name)
        except Exception as exc:
            if self.info is not None or self.empty_until == 0.0:
                log.info("no shadow challenger to score with (%s); looking again in %.0f s", exc, RETRY_S)
            self.info = None
            self.empty_until = time.monotonic() + RETRY_S
            SHADOW_SKIPPED.labels("empty").inc(len(events))
            return
        if list(info.feature_names) != MODEL_FEATURES:
            log.warning("shadow challenger %s takes other features; not scoring with it", info.version)
            self.empty_until = time.monotonic() + RETRY_S
            return
        if self.info is None or self.info.version != info.version:
            log.info("shadow challenger %s scores live traffic beside the champion", info.version)
        self.info = info
        scored_at = datetime.now(UTC)
        decisions = []
        for i, txn in enumerate(events):
            score = float(scores[i])
            if not np.isfinite(score):
                continue
            decision = decide(score, self.review, self.decline)
            decisions.append(
                decision_event(
                    txn,
                    score,
                    decision,
                    info.version,
                    [],
                    bool(fallback[i]),
                    scored_at,
                    ingested_at,
                    rows[i].tolist(),
                )
            )
            SHADOW_DECISIONS.labels(decision).inc()
        try:
            await self.publish(
                [(d["transaction_id"].encode(), orjson.dumps(d)) for d in decisions], self.topic
            )
        except Exception:
            log.exception("shadow decisions were not published")
