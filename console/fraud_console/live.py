"""The live picture, read from the platform's own Prometheus (its HTTP API): the numbers the
components export and the dashboards chart (``observability/dashboards``), never a second
count kept here.

| panel | metric (exported by) |
| --- | --- |
| decisions/s, decision mix | ``fraud_decisions_total`` (transformer) |
| end-to-end latency | ``fraud_e2e_latency_seconds`` (transformer) |
| live precision/recall per model version | ``fraud_live_precision``, ``fraud_live_recall``, ``fraud_live_labelled_decisions`` (model monitor) |
| label backlog | ``fraud_label_backlog_decisions``, ``fraud_label_backlog_share`` (model monitor) |
| top drifting features | ``fraud_feature_psi`` (model monitor) |
| champion and shadow challenger | ``predictor_model_info`` (predictor) |
| components up | ``up`` (Prometheus's own scrape health) |

Concurrent viewers share one round of queries per refresh interval.
"""

from __future__ import annotations

import asyncio
import math
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import httpx

from fraudcore.settings import Settings

RATE = "1m"  # at a 5 s scrape interval: a dozen samples per rate
LATENCY_QUANTILES = {"p50": 0.5, "p95": 0.95, "p99": 0.99}


def _latency(q: float) -> str:
    return f"histogram_quantile({q}, sum by (le) (rate(fraud_e2e_latency_seconds_bucket[{RATE}])))"


QUERIES = {
    "decisions_per_s": f"sum(rate(fraud_decisions_total[{RATE}]))",
    "mix": f"sum by (decision) (rate(fraud_decisions_total[{RATE}]))",
    **{f"latency_{name}": _latency(q) for name, q in LATENCY_QUANTILES.items()},
    "precision": "max by (model_version) (fraud_live_precision)",
    "recall": "max by (model_version) (fraud_live_recall)",
    "labelled": "max by (model_version) (fraud_live_labelled_decisions)",
    "backlog": "sum(fraud_label_backlog_decisions)",
    "backlog_share": "max(fraud_label_backlog_share)",
    "drift": "topk(5, max by (feature) (fraud_feature_psi))",
    "models": "max by (model, version) (predictor_model_info == 1)",
    "up": "up",
}
SERIES = {
    "decisions": f"sum by (decision) (rate(fraud_decisions_total[{RATE}]))",
    **{f"latency_{name}": _latency(q) for name, q in LATENCY_QUANTILES.items()},
}
DECISIONS = ("approve", "review", "decline")


@dataclass
class VersionQuality:
    version: str
    role: str  # champion, shadow, or "" (an earlier version still in the window)
    precision: float | None
    recall: float | None
    labelled: float | None


@dataclass
class LivePicture:
    at: datetime
    error: str | None = None
    decisions_per_s: float | None = None
    mix: dict[str, float] = field(default_factory=dict)  # decision -> per second
    latency_ms: dict[str, float | None] = field(default_factory=dict)
    versions: list[VersionQuality] = field(default_factory=list)
    backlog: float | None = None
    backlog_share: float | None = None
    drifting: list[tuple[str, float]] = field(default_factory=list)
    champion: str | None = None
    shadow: str | None = None
    targets_up: int = 0
    targets_down: list[str] = field(default_factory=list)

    def mix_share(self, decision: str) -> float | None:
        total = sum(self.mix.values())
        return self.mix.get(decision, 0.0) / total if total > 0 else None


def _number(value: str) -> float | None:
    number = float(value)
    return None if math.isnan(number) or math.isinf(number) else number


def _scalar(result: list[dict[str, Any]]) -> float | None:
    return _number(result[0]["value"][1]) if result else None


def _by(result: list[dict[str, Any]], label: str) -> dict[str, float]:
    out = {}
    for sample in result:
        value = _number(sample["value"][1])
        if value is not None:
            out[sample["metric"].get(label, "")] = value
    return out


def picture_of(results: dict[str, list[dict[str, Any]]], model_name: str, at: datetime) -> LivePicture:
    """The live picture from each query's result vector (Prometheus's ``data.result``)."""
    live = LivePicture(at=at)
    live.decisions_per_s = _scalar(results["decisions_per_s"])
    live.mix = _by(results["mix"], "decision")
    live.latency_ms = {
        name: (v * 1000 if (v := _scalar(results[f"latency_{name}"])) is not None else None)
        for name in LATENCY_QUANTILES
    }
    for sample in results["models"]:
        model, version = sample["metric"].get("model"), sample["metric"].get("version")
        if model == model_name:
            live.champion = version
        elif model == f"{model_name}-shadow":
            live.shadow = version
    precision = _by(results["precision"], "model_version")
    recall = _by(results["recall"], "model_version")
    labelled = _by(results["labelled"], "model_version")
    roles = {live.champion: "champion", live.shadow: "shadow"}
    versions = sorted(set(precision) | set(recall) | set(labelled) | {v for v in roles if v})
    live.versions = [
        VersionQuality(v, roles.get(v, ""), precision.get(v), recall.get(v), labelled.get(v))
        for v in sorted(versions, key=lambda v: (roles.get(v) != "champion", roles.get(v) != "shadow", v))
    ]
    live.backlog = _scalar(results["backlog"])
    live.backlog_share = _scalar(results["backlog_share"])
    live.drifting = sorted(_by(results["drift"], "feature").items(), key=lambda item: -item[1])
    for sample in results["up"]:
        if _number(sample["value"][1]) == 1.0:
            live.targets_up += 1
        else:
            live.targets_down.append(sample["metric"].get("job", sample["metric"].get("instance", "?")))
    live.targets_down.sort()
    return live


class PrometheusReader:
    def __init__(self, settings: Settings, client: httpx.AsyncClient | None = None) -> None:
        self.url = (settings.console.prometheus_url or f"http://127.0.0.1:{settings.prometheus.port}").rstrip(
            "/"
        )
        self.model_name = settings.serving.model_name
        self.ttl_s = settings.console.refresh_s / 2
        self._client = client  # made on first use, inside the server's event loop
        self._lock = asyncio.Lock()
        self._cached: tuple[float, LivePicture] | None = None

    async def _query(self, path: str, params: dict[str, Any]) -> list[dict[str, Any]]:
        if self._client is None:
            self._client = httpx.AsyncClient(timeout=5.0)
        response = await self._client.get(f"{self.url}/api/v1/{path}", params=params)
        response.raise_for_status()
        body = response.json()
        if body.get("status") != "success":
            raise RuntimeError(body.get("error", "query failed"))
        return list(body["data"]["result"])

    async def picture(self) -> LivePicture:
        async with self._lock:
            if self._cached and time.monotonic() - self._cached[0] < self.ttl_s:
                return self._cached[1]
            now = datetime.now(UTC)
            try:
                answers = await asyncio.gather(
                    *(self._query("query", {"query": q}) for q in QUERIES.values())
                )
                live = picture_of(dict(zip(QUERIES, answers, strict=True)), self.model_name, now)
            except (httpx.HTTPError, RuntimeError, KeyError, ValueError) as exc:
                live = LivePicture(
                    at=now, error=f"Prometheus at {self.url}: {type(exc).__name__}: {exc}"[:300]
                )
            self._cached = (time.monotonic(), live)
            return live

    async def series(self, minutes: int = 15, step_s: int = 15) -> dict[str, Any]:
        """The charts' data, uPlot's shape: shared times, then one list per line (None: no data)."""
        end = int(time.time()) // step_s * step_s
        start = end - minutes * 60
        times = list(range(start, end + 1, step_s))
        params = {"start": start, "end": end, "step": step_s}
        answers = await asyncio.gather(
            *(self._query("query_range", {"query": q, **params}) for q in SERIES.values())
        )
        results = dict(zip(SERIES, answers, strict=True))

        def line(values: list[list[Any]], scale: float = 1.0) -> list[float | None]:
            at = {int(t): _number(v) for t, v in values}
            return [None if (v := at.get(t)) is None else v * scale for t in times]

        decisions = {s["metric"].get("decision", ""): s["values"] for s in results["decisions"]}
        latency = {
            name: (results[f"latency_{name}"][0]["values"] if results[f"latency_{name}"] else [])
            for name in LATENCY_QUANTILES
        }
        return {
            "times": times,
            "decisions": {d: line(decisions.get(d, [])) for d in DECISIONS},
            "latency_ms": {name: line(values, 1000.0) for name, values in latency.items()},
        }
