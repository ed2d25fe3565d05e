"""`fraud promote VERSION`: a published version (typically the shadow challenger) becomes the
champion, if its live precision over the last labelled window is not worse than the
champion's on the same days (the model monitor's counts), or with ``force``."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import redis

from fraud_monitor.outcomes import WindowMetrics
from fraud_monitor.store import OutcomeStore
from fraud_pipelines.publish import METADATA_FILE, MODEL_FILE, ModelStore, install_champion
from fraudcore.settings import Settings
from fraudcore.storage import ConcurrentWriteError, s3_client


class PromotionRefusedError(RuntimeError):
    pass


@dataclass(frozen=True)
class Comparison:
    """Both versions' live metrics over the same event days (the challenger's latest window)."""

    first_day: int
    last_day: int
    challenger: WindowMetrics
    champion: WindowMetrics | None

    def verdict(self) -> str | None:
        """Why the challenger must not be promoted; None when it may."""
        if self.challenger.decisions == 0:
            return "it has no live decisions whose labels are known yet (is it in the shadow slot?)"
        if self.champion is None or self.champion.decisions == 0 or math.isnan(self.champion.precision):
            return None
        if math.isnan(self.challenger.precision) or self.challenger.precision < self.champion.precision:
            return (
                f"its live precision {self.challenger.precision:.4f} is worse than the champion's "
                f"{self.champion.precision:.4f} over the same {self.last_day - self.first_day + 1} days"
            )
        return None


def compare(outcomes: OutcomeStore, version: str, champion: str | None, window_days: int) -> Comparison:
    latest = outcomes.versions()
    last = latest.get(version, 0)
    first = last - window_days + 1
    mine = (
        WindowMetrics.of(outcomes.days(version, first, last).values())
        if version in latest
        else WindowMetrics.of([])
    )
    theirs = WindowMetrics.of(outcomes.days(champion, first, last).values()) if champion in latest else None
    return Comparison(first, last, mine, theirs)


def promote(
    settings: Settings, version: str, *, force: bool = False, group: str = "model-monitor"
) -> dict[str, Any]:
    """Make ``version`` the champion (``champion-changed``), or raise PromotionRefusedError."""
    store = ModelStore(s3_client(settings), settings.s3.models_bucket, settings.serving.model_name)
    document = store.get_json(store.key(version, METADATA_FILE))
    onnx_bytes = store.get(store.key(version, MODEL_FILE))
    if document is None or onnx_bytes is None:
        raise PromotionRefusedError(f"no published version {version!r} under {store.uri()}")
    champion, pointer = store.champion()
    if champion == version:
        raise PromotionRefusedError(f"{version} is already the champion")
    client = redis.Redis(**settings.redis.client_kwargs())
    outcomes = OutcomeStore(client, f"{settings.monitor.namespace}:{group}")
    comparison = compare(outcomes, version, champion, settings.monitor.window_days)
    why_not = comparison.verdict()
    if why_not and not force:
        raise PromotionRefusedError(f"not promoting {version}: {why_not}; --force promotes anyway")
    ap = float((document.get("decision") or {}).get("challenger_ap") or 0.0)  # its offline AP
    try:
        store.claim_champion(version, ap, pointer)
    except ConcurrentWriteError:
        raise PromotionRefusedError(
            f"the champion changed while {version} was being compared with {champion}; run fraud promote again"
        ) from None
    changed = install_champion(settings, store, version, onnx_bytes, document, ap)
    return {
        "version": version,
        "previous_champion": champion,
        "forced": bool(why_not),
        "comparison": comparison,
        **changed,
    }
