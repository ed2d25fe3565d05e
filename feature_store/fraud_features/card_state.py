"""What a replica keeps per assigned partition, chiefly its cards' recent events, and the card
features computed over them.

Card state follows the card-keyed transaction partitions: each card's history lives in the
memory of the one replica that owns its partition and is checkpointed to Redis with the
offset it resumes from.
"""

from __future__ import annotations

import pickle
from bisect import bisect_left, bisect_right
from dataclasses import dataclass, field
from typing import cast

import numpy as np
import numpy.typing as npt
from prometheus_client import Counter

from fraud_features.events import Transaction
from fraudcore import features as F

LATE = Counter("feature_job_late_events", "Transactions older than their card's latest event")
DUPLICATES = Counter(
    "feature_job_duplicate_events",
    "Transactions dropped as repeats of one already seen (a re-forwarded record)",
)
NO_EVENT_US = -(2**62)  # the event time of a partition without events yet


@dataclass
class CardHistory:
    """A card's events of the last 30 days before its latest one, in event-time order."""

    t_us: list[int] = field(default_factory=list)
    cents: list[int] = field(default_factory=list)
    terminal: list[str] = field(default_factory=list)

    def add(self, tx: Transaction) -> None:
        """Insert at its event time: a late transaction goes before the later ones."""
        cents = round(tx.amount * 100)
        if self.t_us and tx.t_us < self.t_us[-1]:
            LATE.inc()
            pos = int(np.searchsorted(np.array(self.t_us), tx.t_us, side="right"))
            self.t_us.insert(pos, tx.t_us)
            self.cents.insert(pos, cents)
            self.terminal.insert(pos, tx.terminal_id)
        else:
            self.t_us.append(tx.t_us)
            self.cents.append(cents)
            self.terminal.append(tx.terminal_id)

    def holds(self, tx: Transaction) -> bool:
        """Whether the history already holds this very event (same time to the microsecond,
        amount and terminal): a record forwarded twice, as an at-least-once producer does
        after a broker failure, not a second payment."""
        cents = round(tx.amount * 100)
        first = bisect_left(self.t_us, tx.t_us)
        last = bisect_right(self.t_us, tx.t_us)
        return any(self.cents[i] == cents and self.terminal[i] == tx.terminal_id for i in range(first, last))

    def trim(self) -> None:
        """Drop the events no card window reaches: older than 30 days before the latest."""
        horizon_us = F.CARD_HISTORY_S * F.US_PER_S
        cut = int(np.searchsorted(np.array(self.t_us), self.t_us[-1] - horizon_us, side="right"))
        if cut:
            del self.t_us[:cut], self.cents[:cut], self.terminal[:cut]


@dataclass
class PartitionState:
    cards: dict[str, CardHistory] = field(default_factory=dict)
    next_offset: int | None = None  # after the last record whose counters are applied
    max_event_us: int = NO_EVENT_US
    # Transactions whose counters are applied but whose features wait for the watermark,
    # in partition order.
    held: list[Transaction] = field(default_factory=list)

    @property
    def resume_offset(self) -> int | None:
        """Where a restart must resume: the first transaction without features yet."""
        return self.held[0].offset if self.held else self.next_offset

    def checkpoint(self) -> bytes:
        """The card histories and the resume offset: held transactions are replayed from there."""
        return pickle.dumps(PartitionState(self.cards, self.resume_offset, self.max_event_us), protocol=5)

    @staticmethod
    def from_checkpoint(blob: bytes) -> PartitionState:
        return cast(PartitionState, pickle.loads(blob))  # written by this job only (trusted)

    def fresh(self, txs: list[Transaction]) -> list[Transaction]:
        """The transactions that are not repeats of one already in a card's history or held
        (``CardHistory.holds``; a repeat is counted in DUPLICATES and dropped, so neither the
        card windows nor the terminal counts see it twice: the backfill reads one row per
        transaction id)."""
        pending = {(tx.transaction_id, tx.t_us) for tx in self.held}
        out: list[Transaction] = []
        for tx in txs:
            history = self.cards.get(tx.card_id)
            if (tx.transaction_id, tx.t_us) in pending or (history is not None and history.holds(tx)):
                DUPLICATES.inc()
                continue
            pending.add((tx.transaction_id, tx.t_us))
            out.append(tx)
        return out

    def update_histories(self, txs: list[Transaction]) -> None:
        """Add the transactions to their cards' histories, each kept to the 30-day horizon."""
        for tx in txs:
            self.cards.setdefault(tx.card_id, CardHistory()).add(tx)
        for card in {tx.card_id for tx in txs}:
            self.cards[card].trim()


@dataclass
class CardFeatureBatch:
    """Card features of some transactions of one partition, computed over their cards'
    histories followed by the transactions themselves (in that row order)."""

    card_ids: npt.NDArray[np.object_]
    t_us: F.I64
    features: F.CardFeatures  # served: per transaction; state: per row

    @classmethod
    def compute(cls, histories: dict[str, CardHistory], txs: list[Transaction]) -> CardFeatureBatch:
        owners, history = _histories_of({tx.card_id for tx in txs}, histories)
        card_ids = np.array(owners + [tx.card_id for tx in txs], dtype=object)
        t_us = np.array(history.t_us + [tx.t_us for tx in txs], dtype=np.int64)
        cents = np.concatenate(
            [np.array(history.cents, dtype=np.int64), F.to_cents([tx.amount for tx in txs])]
        )
        terminals = np.array(history.terminal + [tx.terminal_id for tx in txs], dtype=object)
        query = np.zeros(len(t_us), dtype=bool)
        query[len(owners) :] = True
        return cls(card_ids, t_us, F.card_features(F.codes(card_ids), t_us, cents, F.codes(terminals), query))

    @property
    def served(self) -> dict[str, F.F64]:
        """The card features each transaction is served (the state before it), in order."""
        return self.features.served

    def latest_states(self) -> tuple[list[str], F.I64, dict[str, F.F64]]:
        """Each card's state after its latest event by event time, as the online store holds it:
        card ids, event times and state columns."""
        # numpy, not a DataFrame: this runs for every small batch at live rates.
        by_time = np.lexsort((np.arange(len(self.t_us)), self.t_us))  # stable: ties keep row order
        cards = F.codes(self.card_ids)[by_time]
        _, first_from_end = np.unique(cards[::-1], return_index=True)
        rows = by_time[np.sort(len(cards) - 1 - first_from_end)]  # each card's last, in time order
        state = {n: self.features.state[n][rows] for n in F.CARD_STATE}
        return list(self.card_ids[rows]), self.t_us[rows], state


def _histories_of(cards: set[str], histories: dict[str, CardHistory]) -> tuple[list[str], CardHistory]:
    """The events of the cards' histories, concatenated, with the card of each."""
    owners: list[str] = []
    events = CardHistory()
    for card in cards:
        h = histories.get(card)
        if h:
            owners += [card] * len(h.t_us)
            events.t_us += h.t_us
            events.cents += h.cents
            events.terminal += h.terminal
    return owners, events
