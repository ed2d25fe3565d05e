"""Card and terminal features from the Feast online store (Redis), in-process.

One ``get_online_features_async`` call per request fetches both views for every
transaction, within a time budget. What the store holds (see ``fraudcore.features``): each
card's state after its latest transaction, and each terminal's values for a UTC day.

Fallback, per transaction: an unknown card (never seen, or its state older than the view's
30-day TTL) gets zeros and an unknown ``card_last_tx_time`` (so "seconds since the previous
transaction" takes its no-previous value), exactly what training saw for a card's first
transaction; an unknown terminal gets zeros. A lookup that fails or runs past the budget
falls back for the whole request. Each such decision carries ``features_fallback: true``.
"""

from __future__ import annotations

import asyncio
import logging
import os
import threading
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import numpy as np
import numpy.typing as npt
from feast import FeatureStore

from fraud_transformer.coalesce import Coalescer
from fraud_transformer.metrics import ERRORS, FEATURE_LOOKUP
from fraudcore.features import CARD_STATE, TERMINAL_FEATURES
from fraudcore.settings import Settings

log = logging.getLogger(__name__)

CARD_VIEW = "card_features"
TERMINAL_VIEW = "terminal_features"
FEATURE_REFS = [f"{CARD_VIEW}:{n}" for n in CARD_STATE] + [f"{TERMINAL_VIEW}:{n}" for n in TERMINAL_FEATURES]
CARD_VALUES = [n for n in CARD_STATE if n != "card_last_tx_time"]


@dataclass
class Features:
    """Served values per transaction (float64 arrays, CARD_STATE + TERMINAL_FEATURES)."""

    values: dict[str, npt.NDArray[np.float64]]
    card_known: npt.NDArray[np.bool_]
    terminal_known: npt.NDArray[np.bool_]

    @property
    def fallback(self) -> npt.NDArray[np.bool_]:
        return ~(self.card_known & self.terminal_known)

    def take(self, start: int, stop: int) -> Features:
        """Rows start..stop (views, not copies)."""
        return Features(
            {name: column[start:stop] for name, column in self.values.items()},
            self.card_known[start:stop],
            self.terminal_known[start:stop],
        )

    @classmethod
    def defaults(cls, n: int) -> Features:
        values = {name: np.zeros(n) for name in [*CARD_VALUES, *TERMINAL_FEATURES]}
        values["card_last_tx_time"] = np.full(n, np.nan)
        return cls(values, np.zeros(n, dtype=bool), np.zeros(n, dtype=bool))

    @classmethod
    def from_columns(cls, columns: Mapping[str, Sequence[Any]], n: int) -> Features:
        """From Feast's ``to_dict()`` (None where a value is missing)."""
        out = cls.defaults(n)
        card_seen = np.zeros(n, dtype=bool)
        terminal_seen = np.zeros(n, dtype=bool)
        for name in CARD_VALUES + TERMINAL_FEATURES:
            column = columns.get(name) or [None] * n
            present = np.array([v is not None for v in column], dtype=bool)
            out.values[name] = np.array(
                [float(v) if v is not None else 0.0 for v in column], dtype=np.float64
            )
            if name in TERMINAL_FEATURES:
                terminal_seen |= present
            else:
                card_seen |= present
        last = columns.get("card_last_tx_time") or [None] * n
        out.values["card_last_tx_time"] = np.array([_seconds(v) for v in last], dtype=np.float64)
        out.card_known = card_seen
        out.terminal_known = terminal_seen
        return out


def _seconds(value: Any) -> float:
    if value is None:
        return float("nan")
    if isinstance(value, datetime):
        return value.timestamp()
    return float(value)


def feature_store(settings: Settings) -> FeatureStore:
    """Feast for serving: the registry is read at start-up and refreshed by a background
    thread, never inside a request (a file or S3 read in the event loop)."""
    from fraud_features.store import feast_env, repo_config

    os.environ.update(feast_env(settings))
    config = repo_config(settings)
    config.registry.cache_ttl_seconds = 0  # no refresh on the request path
    return FeatureStore(repo_path=str(settings.features.repo), config=config)


def refresh_registry_every(store: FeatureStore, interval_s: float, stop: threading.Event) -> threading.Thread:
    def _loop() -> None:
        while not stop.wait(interval_s):
            try:
                store.refresh_registry()
            except Exception:
                log.exception("Feast registry refresh failed; serving the cached one")

    thread = threading.Thread(target=_loop, name="feast-registry", daemon=True)
    thread.start()
    return thread


EntityIds = tuple[Sequence[str], Sequence[str]]  # one request's card ids and terminal ids


class OnlineFeatures:
    """Lookups of concurrent requests share one Feast call (see ``fraud_transformer.coalesce``)."""

    def __init__(self, store: FeatureStore, timeout_s: float, coalesce_max: int = 512) -> None:
        self.store = store
        self.timeout_s = timeout_s
        self._shared: Coalescer[EntityIds, Features, Features] = Coalescer(
            self._lookup_together, Features.take, lambda ids: len(ids[0]), coalesce_max
        )

    def warm_up(self) -> None:
        """Resolve the feature views once (sync path: the async Redis client belongs to the
        server's event loop and is created there on first use)."""
        self.store.get_online_features(
            features=FEATURE_REFS, entity_rows=[{"card_id": "", "terminal_id": ""}]
        )

    async def lookup(self, card_ids: Sequence[str], terminal_ids: Sequence[str]) -> Features:
        """Features per transaction; never raises (falls back to defaults, see above)."""
        return await self._shared.submit((card_ids, terminal_ids))

    async def _lookup_together(self, parts: list[EntityIds]) -> Features:
        rows = [
            {"card_id": c, "terminal_id": t}
            for cards, terminals in parts
            for c, t in zip(cards, terminals, strict=True)
        ]
        n = len(rows)
        start = time.perf_counter()
        try:
            response = await asyncio.wait_for(
                self.store.get_online_features_async(features=FEATURE_REFS, entity_rows=rows),
                timeout=self.timeout_s,
            )
            return Features.from_columns(response.to_dict(), n)
        except TimeoutError:
            ERRORS.labels("feature_timeout").inc()
            log.warning("online features took over %.0f ms; using defaults", self.timeout_s * 1000)
        except Exception:
            ERRORS.labels("feature_store").inc()
            log.exception("online feature lookup failed; using defaults")
        finally:
            FEATURE_LOOKUP.observe(time.perf_counter() - start)
        return Features.defaults(n)
