"""The monitor's state in Redis: outcome counts per model version and event day, the fraud
labels seen, and the decision offsets the counts include, written together.

Counts and offsets change in one MULTI/EXEC transaction, and a restarted monitor resumes
from the stored offsets (not Kafka's): a kill -9 at any point either applied a batch with
its offsets or neither, so nothing is lost and nothing counted twice. Labels are a sorted
set of transaction ids (adding one twice changes nothing); a card's daily highest score is
a ``ZADD GT`` (idempotent too). Each version's days are indexed, so days the window has left
behind (in event time) are deleted: a replay or simulation runs through days far faster than
their keys' wall-clock expiry.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import cast

import numpy as np
import redis

from fraud_monitor.outcomes import CARDS_PER_DAY, DayCounts, Outcome
from fraudcore.drift import SCORE_BINS

DAY_KEY_TTL_S = 60 * 86_400  # wall-clock: far beyond any window the monitor reads


class OutcomeStore:
    def __init__(self, client: redis.Redis, namespace: str) -> None:
        self.redis = client
        self.ns = namespace

    # --- keys ------------------------------------------------------------------------------
    def _day(self, version: str, day: int) -> str:
        return f"{self.ns}:day:{version}:{day}"

    def _cards(self, version: str, day: int) -> str:
        return f"{self.ns}:cards:{version}:{day}"

    def _fraud_cards(self, version: str, day: int) -> str:
        return f"{self.ns}:fraudcards:{version}:{day}"

    def _days_of(self, version: str) -> str:
        return f"{self.ns}:days:{version}"

    @property
    def _labels(self) -> str:
        return f"{self.ns}:frauds"

    @property
    def _offsets(self) -> str:
        return f"{self.ns}:offsets"

    @property
    def _versions(self) -> str:
        return f"{self.ns}:versions"

    # --- labels ----------------------------------------------------------------------------
    def add_frauds(self, labelled: Mapping[str, int]) -> None:
        """Fraud labels: transaction id -> its event time (µs), for trimming old ones."""
        if labelled:
            self.redis.zadd(self._labels, {tx: float(t_us) for tx, t_us in labelled.items()})

    def frauds_among(self, transaction_ids: list[str]) -> list[bool]:
        if not transaction_ids:
            return []
        scores = cast(list[float | None], self.redis.zmscore(self._labels, transaction_ids))
        return [score is not None for score in scores]

    def forget_labels_before(self, t_us: int) -> None:
        self.redis.zremrangebyscore(self._labels, "-inf", f"({t_us}")

    # --- outcomes --------------------------------------------------------------------------
    def apply(self, outcomes: Iterable[Outcome], offsets: Mapping[str, int]) -> None:
        """Add the outcomes and record ``offsets`` ("topic:partition" -> next offset) at once."""
        pipe = self.redis.pipeline(transaction=True)
        touched: set[tuple[str, int]] = set()
        for o in outcomes:
            key = self._day(o.version, o.day)
            pipe.hincrby(key, "decisions", 1)
            if o.alerted:
                pipe.hincrby(key, "alerts", 1)
            if o.fraud:
                pipe.hincrby(key, "frauds", 1)
                pipe.sadd(self._fraud_cards(o.version, o.day), o.card_id)
                if o.alerted:
                    pipe.hincrby(key, "alerted_frauds", 1)
            pipe.hincrby(key, f"{'f' if o.fraud else 'l'}{o.score_bin}", 1)
            pipe.zadd(self._cards(o.version, o.day), {o.card_id: o.score}, gt=True)
            touched.add((o.version, o.day))
        for version, day in touched:
            for key in (self._day(version, day), self._cards(version, day), self._fraud_cards(version, day)):
                pipe.expire(key, DAY_KEY_TTL_S)
            pipe.zadd(self._versions, {version: day}, gt=True)
            pipe.zadd(self._days_of(version), {str(day): day})
            pipe.expire(self._days_of(version), DAY_KEY_TTL_S)
        if offsets:
            pipe.hset(self._offsets, mapping={k: str(v) for k, v in offsets.items()})
        pipe.execute()

    def forget_days_before(self, day: int) -> int:
        """Delete every version's counts of event days before ``day``; how many days went."""
        forgotten = 0
        for version in self.versions():
            index = self._days_of(version)
            old = cast(list[bytes], self.redis.zrangebyscore(index, "-inf", f"({day}"))
            if not old:
                continue
            pipe = self.redis.pipeline(transaction=True)
            for d in (int(x) for x in old):
                pipe.delete(self._day(version, d), self._cards(version, d), self._fraud_cards(version, d))
            pipe.zremrangebyscore(index, "-inf", f"({day}")
            pipe.execute()
            forgotten += len(old)
        return forgotten

    def offsets(self) -> dict[str, int]:
        raw = cast(dict[bytes, bytes], self.redis.hgetall(self._offsets))
        return {k.decode(): int(v) for k, v in raw.items()}

    def versions(self) -> dict[str, int]:
        """Every model version with outcomes, and its latest event day."""
        pairs = cast(list[tuple[bytes, float]], self.redis.zrange(self._versions, 0, -1, withscores=True))
        return {v.decode(): int(day) for v, day in pairs}

    def days(self, version: str, first: int, last: int) -> dict[int, DayCounts]:
        """The version's counts of event days ``first..last`` (days without outcomes left out);
        each day's cards are its ``CARDS_PER_DAY`` highest-scored ones."""
        pipe = self.redis.pipeline(transaction=False)
        span = range(first, last + 1)
        for day in span:
            pipe.hgetall(self._day(version, day))
            pipe.zrevrange(self._cards(version, day), 0, CARDS_PER_DAY - 1, withscores=True)
            pipe.smembers(self._fraud_cards(version, day))
        replies = pipe.execute()
        out: dict[int, DayCounts] = {}
        for i, day in enumerate(span):
            fields = {k.decode(): int(v) for k, v in replies[3 * i].items()}
            if not fields:
                continue
            counts = DayCounts(
                decisions=fields.get("decisions", 0),
                alerts=fields.get("alerts", 0),
                frauds=fields.get("frauds", 0),
                alerted_frauds=fields.get("alerted_frauds", 0),
                fraud_bins=np.array([fields.get(f"f{b}", 0) for b in range(SCORE_BINS)], dtype=float),
                legit_bins=np.array([fields.get(f"l{b}", 0) for b in range(SCORE_BINS)], dtype=float),
                card_scores={card.decode(): float(score) for card, score in replies[3 * i + 1]},
                fraud_cards={card.decode() for card in replies[3 * i + 2]},
            )
            out[day] = counts
        return out
