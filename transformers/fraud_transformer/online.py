"""Card and terminal features from the Feast online store (Redis), in-process.

One read of Feast's online store per view fetches every transaction's values, within a time
budget (see ``OnlineFeatures``). What the store holds (see ``fraudcore.features``): each
card's state after its latest transaction, and each terminal's values for a UTC hour.

Fallback, per transaction: an unknown card (never seen) gets zeros and an unknown
``card_last_tx_time`` (so "seconds since the previous transaction" takes its no-previous
value), exactly what training saw for a card's first transaction; an unknown terminal gets
zeros. A card idle for longer than the view's 30-day TTL still gets its last state: the Redis
online read applies no view TTL (keys would expire only with ``key_ttl_seconds``, unset), and
the backfill likewise serves a card the state after its previous transaction, however old. A
lookup that fails or runs past the budget falls back for the whole request. Each such
decision carries ``features_fallback: true``.
"""

from __future__ import annotations

import asyncio
import logging
import os
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import numpy as np
import numpy.typing as npt
from feast import FeatureStore, FeatureView
from feast.protos.feast.types.EntityKey_pb2 import EntityKey as EntityKeyProto
from feast.protos.feast.types.Value_pb2 import Value as ValueProto

from fraud_transformer.coalesce import Coalescer
from fraud_transformer.metrics import ERRORS, FEATURE_LOOKUP
from fraudcore.features import CARD_STATE, TERMINAL_FEATURES
from fraudcore.settings import Settings

log = logging.getLogger(__name__)

CARD_VIEW = "card_features"
TERMINAL_VIEW = "terminal_features"
FEATURE_REFS = [f"{CARD_VIEW}:{n}" for n in CARD_STATE] + [f"{TERMINAL_VIEW}:{n}" for n in TERMINAL_FEATURES]
CARD_VALUES = [n for n in CARD_STATE if n != "card_last_tx_time"]
STORE_FAILURE_LOG_EVERY_S = 10.0
StoreRow = tuple[datetime | None, dict[str, ValueProto] | None]  # one entity, as the store reads it


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

    @classmethod
    def from_rows(cls, card_rows: Sequence[StoreRow], terminal_rows: Sequence[StoreRow]) -> Features:
        """From the online store's rows (``(event time, {feature: value})``, or no values
        for an unknown entity), one per transaction."""
        columns: dict[str, list[float | None]] = {}
        for names, rows in ((CARD_STATE, card_rows), (TERMINAL_FEATURES, terminal_rows)):
            for name in names:
                columns[name] = [
                    _number(values[name]) if values and name in values else None for _, values in rows
                ]
        return cls.from_columns(columns, len(card_rows))


def _number(value: ValueProto) -> float | None:
    kind = value.WhichOneof("val")
    if kind is None or kind == "null_val":
        return None
    return float(getattr(value, kind))


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


def refresh_every(refresh: Callable[[], None], interval_s: float, stop: threading.Event) -> threading.Thread:
    """Run ``refresh`` (a registry re-read) every ``interval_s`` on a background thread."""

    def _loop() -> None:
        while not stop.wait(interval_s):
            try:
                refresh()
            except Exception:
                log.exception("Feast registry refresh failed; serving the cached one")

    thread = threading.Thread(target=_loop, name="feast-registry", daemon=True)
    thread.start()
    return thread


EntityIds = tuple[Sequence[str], Sequence[str]]  # one request's card ids and terminal ids
MAX_CACHED_KEYS = 1_000_000  # entity keys kept between requests (a few hundred bytes each)


class OnlineFeatures:
    """Card and terminal features through Feast's online store read path.

    The feature views are resolved once (and again after each registry refresh), entity keys
    are built once per card and terminal, and the two views are read concurrently, each in
    one Redis pipeline: the same store reads ``get_online_features`` makes, without the
    per-request resolution and response conversion around them. Lookups of concurrent
    requests share one read (see ``fraud_transformer.coalesce``)."""

    def __init__(self, store: FeatureStore, timeout_s: float, coalesce_max: int = 512) -> None:
        self.store = store
        self.timeout_s = timeout_s
        self._store_failures = 0
        self._store_failure_logged_at = -STORE_FAILURE_LOG_EVERY_S
        self._views: tuple[FeatureView, FeatureView] | None = None
        self._keys: dict[tuple[str, str], EntityKeyProto] = {}
        self._shared: Coalescer[EntityIds, Features, Features] = Coalescer(
            self._lookup_together, Features.take, lambda ids: len(ids[0]), coalesce_max
        )

    def warm_up(self) -> None:
        """Resolve the feature views once (sync path: the async Redis client belongs to the
        server's event loop and is created there on first use)."""
        self.store.get_online_features(
            features=FEATURE_REFS, entity_rows=[{"card_id": "", "terminal_id": ""}]
        )
        self.resolve_views()

    def resolve_views(self) -> None:
        self._views = (self.store.get_feature_view(CARD_VIEW), self.store.get_feature_view(TERMINAL_VIEW))

    def refresh(self) -> None:
        """Re-read the registry (new or changed views) and resolve the views again."""
        self.store.refresh_registry()
        self.resolve_views()

    def _key(self, join_key: str, value: str) -> EntityKeyProto:
        key = self._keys.get((join_key, value))
        if key is None:
            if len(self._keys) >= MAX_CACHED_KEYS:
                self._keys.clear()  # a new working set: rebuilt as cards come back
            key = EntityKeyProto(join_keys=[join_key], entity_values=[ValueProto(string_val=value)])
            self._keys[(join_key, value)] = key
        return key

    async def lookup(self, card_ids: Sequence[str], terminal_ids: Sequence[str]) -> Features:
        """Features per transaction; never raises (falls back to defaults, see above)."""
        return await self._shared.submit((card_ids, terminal_ids))

    async def _read(self, cards: list[str], terminals: list[str]) -> Features:
        if self._views is None:
            self.resolve_views()
        assert self._views is not None
        card_view, terminal_view = self._views
        provider = self.store._get_provider()  # Feast's provider: its online store's read path
        config = self.store.config
        # Copies of the name lists: the Redis store appends its timestamp field to the list.
        card_rows, terminal_rows = await asyncio.gather(
            provider.online_read_async(
                config, card_view, [self._key("card_id", c) for c in cards], list(CARD_STATE)
            ),
            provider.online_read_async(
                config,
                terminal_view,
                [self._key("terminal_id", t) for t in terminals],
                list(TERMINAL_FEATURES),
            ),
        )
        return Features.from_rows(card_rows, terminal_rows)

    def _failed(self, why: str) -> None:
        """Log a failed lookup: one line per interval, not one per request, for the length of
        an outage (each is counted in ``transformer_errors_total``)."""
        self._store_failures += 1
        now = time.monotonic()
        if now - self._store_failure_logged_at >= STORE_FAILURE_LOG_EVERY_S:
            log.warning(
                "online feature lookups falling back to defaults (%d since the last report); last: %s",
                self._store_failures,
                why,
            )
            self._store_failure_logged_at, self._store_failures = now, 0

    async def _lookup_together(self, parts: list[EntityIds]) -> Features:
        cards = [c for part_cards, _ in parts for c in part_cards]
        terminals = [t for _, part_terminals in parts for t in part_terminals]
        n = len(cards)
        start = time.perf_counter()
        try:
            return await asyncio.wait_for(self._read(cards, terminals), timeout=self.timeout_s)
        except TimeoutError:
            ERRORS.labels("feature_timeout").inc()
            self._failed(f"took over {self.timeout_s * 1000:.0f} ms")
        except Exception as exc:  # the store away (Redis restarting): every decision flagged
            ERRORS.labels("feature_store").inc()
            self._failed(f"{type(exc).__name__}: {exc}")
        finally:
            FEATURE_LOOKUP.observe(time.perf_counter() - start)
        return Features.defaults(n)
