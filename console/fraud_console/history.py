"""The card's recent history, from the Feast online store, read as the transformer reads it.

The online store holds each card's state after its latest transaction: counts and amounts
over the last 10 minutes, hour, day, 7 and 30 days, distinct terminals over 24 hours and
the time of its latest transaction (``fraudcore.features.CARD_STATE``). Next to the decision's
own features (the card as it stood just before the transaction), it shows the analyst what
the card has done since: a burst after the reviewed transaction is the typical sign.

Why the online store and not the archive: the archive is Parquet partitioned by event hour,
not by card, and trails the stream by its flush interval, so a card's last days would mean
reading every object of those days for each case shown; the online store answers one key
in a millisecond, is current to the feature job's latest batch, and holds the very windows
the model reads.
"""

from __future__ import annotations

import logging
import os
import threading
from datetime import datetime
from pathlib import Path
from typing import Any

from fraudcore.features import CARD_STATE
from fraudcore.settings import Settings
from fraudcore.storage import aws_env

log = logging.getLogger(__name__)

CARD_VIEW = "card_features"


class HistoryUnavailableError(RuntimeError):
    """The online store could not be read."""


def repo_config(settings: Settings) -> Any:
    """Feast's configuration for reading the online store; agrees with the feature layer's
    (``fraud_features.store.repo_config``, checked by a unit test)."""
    from feast import RepoConfig

    registry = settings.features.registry
    return RepoConfig(
        project=settings.features.project,
        provider="local",
        registry={
            "path": registry if "://" in registry else str(Path(registry).resolve()),
            "cache_ttl_seconds": 60,
        },
        online_store={"type": "redis", "connection_string": settings.redis.feast_connection_string()},
        offline_store={"type": "file"},
        entity_key_serialization_version=3,
    )


class CardHistory:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self._store: Any = None
        self._lock = threading.Lock()

    def _feature_store(self) -> Any:
        with self._lock:
            if self._store is None:
                from feast import FeatureStore

                os.environ.update(aws_env(self.settings))  # an s3:// registry
                self._store = FeatureStore(config=repo_config(self.settings))
            return self._store

    def warm_up(self) -> None:
        """Load Feast and its registry ahead of the first case (seconds, once)."""
        try:
            self.lookup("")
        except HistoryUnavailableError:
            log.warning("online store not readable yet; case pages will say so", exc_info=True)

    def lookup(self, card_id: str) -> dict[str, Any] | None:
        """The card's state now (None: the store does not know the card)."""
        try:
            values = (
                self._feature_store()
                .get_online_features(
                    features=[f"{CARD_VIEW}:{name}" for name in CARD_STATE],
                    entity_rows=[{"card_id": card_id}],
                )
                .to_dict()
            )
        except Exception as exc:
            raise HistoryUnavailableError(f"online store: {type(exc).__name__}: {exc}"[:300]) from exc
        state = {name: (values.get(name) or [None])[0] for name in CARD_STATE}
        if all(v is None for v in state.values()):
            return None
        last = state["card_last_tx_time"]
        if isinstance(last, datetime):
            state["card_last_tx_time"] = last.timestamp()
        return state
