"""`make bench`: the scoring path under load, everything on this one machine at once.

Broker, Redis, MinIO, the quality gate, archiver, feature job, dispatcher, transformer(s)
and predictor all run as separate processes. Prints one JSON object:

* ``transformer_ms_p50_at_200rps`` / ``_p99_``: online requests straight to the transformer
  (Feast lookup + predictor + decision published), 200 requests/s from a keep-alive client;
* a ladder of live rates: for each, ``seed`` produces at that rate into the ingress topic
  and the decisions are read back from ``fraud-scores``; end-to-end latency is produced ->
  decision seen; ``lost`` counts transactions without a decision, ``errors`` dead letters
  and transformer errors;
* ``e2e_max_events_per_s``: the highest rate with p95 <= 10 ms, p99 <= 25 ms, nothing lost
  and no error, with ``e2e_ms_p50/p95/p99`` at that rate (else those of the lowest rate);
* ``e2e_sustained_events_per_s``: the highest rate kept up with (p99 <= 1 s, nothing lost);
* ``hops_ms``: per-hop latency from the components' histograms (quality gate forwarding is
  inside ``dispatcher_record_to_sink``; the Feast lookup and the predictor call are inside
  the transformer);
* ``request_size_cost``: what KafkaSource's one transaction per request costs. Direct
  requests carrying 1, 10 or 50 transactions each (``REQUEST_SIZES``), at the same
  transactions per second, with the CPU per transaction of the request path (transformer,
  predictor, Redis), of the broker (the decisions published) and of every platform process;
* ``gate_hop_cost``: two more steps at ``GATE_HOP_RATE``, one through the quality gate and
  one written straight to ``transactions`` (the gate forwards the original bytes and key):
  the gate's hop in CPU per event (``hop_cpu_ms_per_event``, the broker's share apart) and
  in median latency;
* ``cpu_ms_per_event`` per process (broker, Redis, MinIO, Prometheus, every component) and
  ``platform_cpu_ms_per_event`` (their sum), from each process's ``/proc/<pid>/stat`` over a
  ladder step, per event sent; ``load_generator_cpu_ms_per_event`` is this process (the
  simulator, producer and decision reader), counted apart. The top-level figures are those
  of the step nearest 1,000 events/s (``cpu_reference_rate``); each step has its own.
"""

from __future__ import annotations

import asyncio
import json
import os
import statistics
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import numpy as np
from rich.console import Console

from fraud_app import devstack
from fraud_app.cpu import cpu_seconds, ms_per_event, snapshot
from fraud_app.live import DecisionMonitor
from fraud_app.soak import platform_pids
from fraud_app.supervisor import ingest_and_serving, wait_for_backfill
from fraud_producers.live_stream import live_start
from fraud_producers.modes import LiveTraffic
from fraud_producers.sim_config import SimulatorConfig
from fraud_producers.simulator import Simulator
from fraudcore.metrics import sample_sum, scrape
from fraudcore.settings import Settings, get_settings
from fraudcore.storage import s3_client

LIMITS = {"p95": 10.0, "p99": 25.0}
#: Transactions per request for ``request_size_cost``: 1 is what Knative's KafkaSource sends.
REQUEST_SIZES = (1, 10, 50)
REQUEST_SIZE_EVENTS_PER_S = 300.0
REQUEST_SIZE_SECONDS = 15.0
#: The rate at which the quality gate's hop is measured (``gate_hop_cost``).
GATE_HOP_RATE = 300.0
BACKLOG_MS = 1_000.0  # a p99 past this means the rate is not sustained: decisions queue up


def _counter(ports: list[int], name: str) -> float:
    return sum(sample_sum(scrape(port), f"{name}_total") for port in ports)


def histogram_buckets(ports: list[int], name: str) -> dict[float, float]:
    """Cumulative bucket counts of a histogram, summed over processes (and label values)."""
    buckets: dict[float, float] = {}
    for port in ports:
        family = scrape(port).get(name)
        if not family:
            continue
        for s in family.samples:
            if s.name.endswith("_bucket"):
                le = float(s.labels["le"])
                buckets[le] = buckets.get(le, 0.0) + s.value
    return buckets


def histogram_quantiles(
    ports: list[int],
    name: str,
    qs: tuple[float, ...] = (0.5, 0.95, 0.99),
    since: dict[float, float] | None = None,
) -> dict[str, float]:
    """Quantiles (ms) of a histogram summed over processes, interpolated within buckets;
    with ``since`` (earlier ``histogram_buckets``), of what was observed after it only."""
    buckets = histogram_buckets(ports, name)
    if since:
        buckets = {le: count - since.get(le, 0.0) for le, count in buckets.items()}
    if not buckets or max(buckets.values()) <= 0:
        return {}
    bounds = sorted(buckets)
    counts = [buckets[b] for b in bounds]
    total = counts[-1]
    out: dict[str, float] = {}
    for q in qs:
        rank = q * total
        i = next(k for k, c in enumerate(counts) if c >= rank)
        lo_b, lo_c = (bounds[i - 1], counts[i - 1]) if i else (0.0, 0.0)
        hi_b = bounds[i] if bounds[i] != float("inf") else lo_b
        frac = (rank - lo_c) / (counts[i] - lo_c) if counts[i] > lo_c else 0.0
        out[f"p{round(q * 100)}"] = round((lo_b + (hi_b - lo_b) * frac) * 1000, 3)
    return out


def _ensure_model(settings: Settings, console: Console) -> None:
    client = s3_client(settings)
    bucket, _, key = settings.serving.model_uri.removeprefix("s3://").partition("/")
    try:
        client.stat_object(bucket, f"{key}/model.onnx")
        return
    except Exception:
        console.print("no champion yet: training one on the archive", style="dim")
    from fraud_pipelines.local import run_local
    from fraud_pipelines.params import pipeline_arguments

    run_local(
        pipeline_arguments(source="archive", search="quick", burn_in_days=7, history_days=14), console=console
    )


def transformer_url(settings: Settings) -> str:
    """The local transformer's V1 predict endpoint."""
    sv = settings.serving
    return f"http://127.0.0.1:{sv.transformer_http_port}/v1/models/{sv.model_name}:predict"


def _transformer_latency(
    settings: Settings, rate: float, seconds: float, cards: list[str], terminals: list[str]
) -> dict[str, float]:
    """Requests at a fixed schedule (an open-loop load) on keep-alive connections, from one
    asyncio client: it costs far less CPU per request than the server it measures, so the
    figure is the server's, not the load generator's queueing."""
    return asyncio.run(_paced_requests(transformer_url(settings), rate, seconds, cards, terminals))


async def _paced_requests(
    url: str, rate: float, seconds: float, cards: list[str], terminals: list[str], batch: int = 1
) -> dict[str, float]:
    """``rate`` requests/s for ``seconds``, each carrying ``batch`` transactions."""
    import aiohttp

    latencies: list[float] = []
    failures: list[str] = []

    def transaction(i: int) -> dict[str, Any]:
        return {
            "schema_version": 1,
            "transaction_id": f"bench-{time.time_ns()}-{i}",
            "card_id": cards[i % len(cards)],
            "terminal_id": terminals[(i * 7) % len(terminals)],
            "amount": round(float(5 + (i * 37) % 150), 2),
            "currency": "EUR",
            "timestamp": datetime.now(UTC).isoformat(),
        }

    async def call(client: aiohttp.ClientSession, i: int) -> None:
        body = {"instances": [transaction(i * batch + j) for j in range(batch)]}
        t0 = time.perf_counter()
        async with client.post(url, json=body) as response:
            await response.read()
            if response.status != 200:
                failures.append(f"HTTP {response.status}")
                return
        latencies.append((time.perf_counter() - t0) * 1000)

    n = int(rate * seconds)
    connector = aiohttp.TCPConnector(limit=64, keepalive_timeout=60)
    async with aiohttp.ClientSession(connector=connector, timeout=aiohttp.ClientTimeout(total=10)) as client:
        tasks = []
        start = time.perf_counter()
        for i in range(n):
            delay = start + i / rate - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            tasks.append(asyncio.create_task(call(client, i)))
        await asyncio.gather(*tasks)
        elapsed = time.perf_counter() - start
    if failures:
        raise RuntimeError(f"{len(failures)} of {n} requests failed, e.g. {failures[0]}")
    ms = np.array(latencies[int(rate) :] or latencies)  # the first second warms up
    return {
        "p50": round(float(np.percentile(ms, 50)), 3),
        "p99": round(float(np.percentile(ms, 99)), 3),
        "achieved": round(len(latencies) / elapsed, 1),
    }


def _request_size_cost(
    url: str,
    pids: dict[str, int],
    cards: list[str],
    terminals: list[str],
    sizes: Sequence[int] = REQUEST_SIZES,
    events_per_s: float = REQUEST_SIZE_EVENTS_PER_S,
    seconds: float = REQUEST_SIZE_SECONDS,
) -> dict[str, Any]:
    """The same transactions per second sent 1, 10 or 50 to a request, straight to the
    transformer: CPU per transaction of each part, and the latency per request. KafkaSource's
    contract is one transaction per request; the larger requests show what that costs."""
    transformers = [n for n in pids if n.startswith("transformer")]
    request_path = [*transformers, "predictor", "redis"]
    events = int(events_per_s * seconds)
    out: dict[str, Any] = {"events_per_s": events_per_s, "seconds": seconds}
    for size in sizes:
        before = snapshot(pids)
        latency = asyncio.run(
            _paced_requests(url, events_per_s / size, seconds, cards, terminals, batch=size)
        )
        time.sleep(2)  # the decisions' readers (console, monitor, archiver) catch up
        cpu = ms_per_event(before, snapshot(pids), events)
        out[str(size)] = {
            "request_path_cpu_ms_per_event": round(sum(v for n, v in cpu.items() if n in request_path), 3),
            "transformer_cpu_ms_per_event": round(sum(v for n, v in cpu.items() if n in transformers), 3),
            "broker_cpu_ms_per_event": cpu.get("kafka", 0.0),
            "platform_cpu_ms_per_event": round(sum(cpu.values()), 3),
            "request_ms_p50": latency["p50"],
            "request_ms_p99": latency["p99"],
            "achieved_events_per_s": round(latency["achieved"] * size, 1),
            "cpu_ms_per_event": cpu,
        }
    return out


DEAD_LETTER_COUNTER = "dead_letter_messages"


@dataclass
class Ladder:
    """What one ladder step needs: the load, the decisions read back, the processes measured."""

    settings: Settings
    traffic: LiveTraffic  # the simulated history's continuation, shared by the steps
    seconds: float
    monitor: DecisionMonitor
    pids: dict[str, int]

    @property
    def dead_letter_ports(self) -> list[int]:
        ports = self.settings.metrics_ports
        return [ports.quality_gate, ports.dispatcher, ports.feature_job]

    def step(self, rate: float, topic: str | None = None) -> dict[str, Any]:
        """Produce at ``rate`` for the step's seconds (to ``topic``, default the ingress topic
        the quality gate reads), wait for the decisions, and measure."""
        from fraud_producers.modes import seed

        before = len(self.monitor.latencies)
        cpu_before = snapshot(self.pids)
        load_before = cpu_seconds(os.getpid()) or 0.0
        dead_before = _counter(self.dead_letter_ports, DEAD_LETTER_COUNTER)
        result = seed(
            self.settings,
            rate=rate,
            duration_s=self.seconds,
            config=self.traffic.simulator.config,
            traffic=self.traffic,
            topic=topic,
        )
        sent = result.transactions  # the labels went through the same producer
        decided = self._wait_for_decisions(before, sent)
        cpu = ms_per_event(cpu_before, snapshot(self.pids), sent)
        load_ms = ((cpu_seconds(os.getpid()) or 0.0) - load_before) * 1000 / max(1, sent)
        dead = _counter(self.dead_letter_ports, DEAD_LETTER_COUNTER) - dead_before
        pct = self.monitor.latency_percentiles(before)
        return {
            "rate": rate,
            "achieved_per_s": round(sent / self.seconds, 1),
            "sent": sent,
            "decided": decided,
            "lost": max(0, sent - decided),
            "errors": int(dead) + result.stats.errors,
            **{f"ms_{q}": v for q, v in pct.items()},
            # CPU over the step (sending and draining), per event sent: every platform
            # process, and this process (load generator and decision reader) apart.
            "cpu_ms_per_event": cpu,
            "platform_cpu_ms_per_event": round(sum(cpu.values()), 3),
            "load_generator_cpu_ms_per_event": round(load_ms, 3),
        }

    def _wait_for_decisions(self, before: int, sent: int, quiet_s: float = 3, grace_s: float = 30) -> int:
        """Until every event sent has a decision, or none came for ``quiet_s`` (at most
        ``grace_s`` past the last quiet spell); returns the decisions of the step."""
        quiet_until = time.monotonic() + quiet_s
        last = len(self.monitor.latencies)
        while time.monotonic() < quiet_until + grace_s and len(self.monitor.latencies) - before < sent:
            time.sleep(0.5)
            if len(self.monitor.latencies) != last:
                last = len(self.monitor.latencies)
                quiet_until = time.monotonic() + quiet_s
            elif time.monotonic() > quiet_until:
                break
        return len(self.monitor.latencies) - before


def gate_hop_figures(through_gate: dict[str, Any], straight: dict[str, Any]) -> dict[str, Any]:
    """Two ladder steps at the same rate, one through the quality gate and one written
    straight to ``transactions``: what the gate's hop costs in CPU and in latency."""

    def brief(step: dict[str, Any]) -> dict[str, Any]:
        cpu = step["cpu_ms_per_event"]
        return {
            **{k: step[k] for k in ("achieved_per_s", "lost", "errors", "ms_p50", "ms_p95", "ms_p99")},
            "platform_cpu_ms_per_event": step["platform_cpu_ms_per_event"],
            "quality_gate_cpu_ms_per_event": cpu.get("quality-gate", 0.0),
            "broker_cpu_ms_per_event": cpu.get("kafka", 0.0),
        }

    with_gate, without = brief(through_gate), brief(straight)
    return {
        "rate": through_gate["rate"],
        "through_gate": with_gate,
        "straight_to_transactions": without,
        "hop_cpu_ms_per_event": round(
            with_gate["platform_cpu_ms_per_event"] - without["platform_cpu_ms_per_event"], 3
        ),
        "hop_broker_cpu_ms_per_event": round(
            with_gate["broker_cpu_ms_per_event"] - without["broker_cpu_ms_per_event"], 3
        ),
        "hop_ms_p50": round(with_gate["ms_p50"] - without["ms_p50"], 3),
    }


def summarise(steps: list[dict[str, Any]]) -> dict[str, Any]:
    """The headline figures of a ladder (see the module's docstring)."""
    clean = [s for s in steps if s["lost"] == 0 and s["errors"] == 0]
    passing = [s for s in clean if s["ms_p95"] <= LIMITS["p95"] and s["ms_p99"] <= LIMITS["p99"]]
    best = max(passing, key=lambda s: s["rate"]) if passing else min(steps, key=lambda s: s["rate"])
    # The CPU figures of the step nearest 1,000 events/s (the seed's target rate).
    reference = min(steps, key=lambda s: abs(s["rate"] - 1000))
    return {
        "e2e_max_events_per_s": best["rate"] if passing else 0,
        # The highest rate the machine keeps up with at all (no backlog), whatever the latency.
        "e2e_sustained_events_per_s": max((s["rate"] for s in clean if s["ms_p99"] <= BACKLOG_MS), default=0),
        "e2e_ms_p50": best["ms_p50"],
        "e2e_ms_p95": best["ms_p95"],
        "e2e_ms_p99": best["ms_p99"],
        "cpu_reference_rate": reference["rate"],
        **{
            key: reference[key]
            for key in ("cpu_ms_per_event", "platform_cpu_ms_per_event", "load_generator_cpu_ms_per_event")
        },
        "lost": sum(s["lost"] for s in steps),
        "errors": sum(s["errors"] for s in steps),
    }


def _hops(settings: Settings, transformers: int, acks_before: dict[float, float]) -> dict[str, Any]:
    ports = settings.metrics_ports
    transformer_ports = [settings.serving.transformer_http_port + 100 * i for i in range(transformers)]
    return {
        "producer_send_to_ack": histogram_quantiles(
            [ports.producer], "producer_send_latency_seconds", since=acks_before
        ),
        "dispatcher_record_to_sink": histogram_quantiles([ports.dispatcher], "dispatcher_delivery_seconds"),
        "transformer_feature_lookup": histogram_quantiles(
            transformer_ports, "transformer_feature_lookup_seconds"
        ),
        "predictor_predict": histogram_quantiles(
            [settings.serving.predictor_http_port], "request_predict_seconds"
        ),
    }


def _live_traffic(
    settings: Settings, config: SimulatorConfig, rates: list[float], seconds: float
) -> LiveTraffic:
    """45 days of history through the platform, waited for, and the live traffic that
    continues it: the ladder's steps, one after the other, stay in the simulated past."""
    from fraud_producers.modes import backfill
    from fraud_producers.producer import EventProducer

    # The ladder's steps and the two of the gate's hop.
    end = live_start(Simulator(config), sum(rates) + 2 * GATE_HOP_RATE, seconds + 5, datetime.now(UTC))
    history = backfill(settings, days=45, config=config, show_progress=False, start=end - timedelta(days=45))
    wait_for_backfill(settings, history.transactions)  # the ladder must not compete with the backfill
    return LiveTraffic(settings, EventProducer(settings), config, end, history=history.history)


def run(rates: list[float], seconds: float, transformers: int, console: Console) -> dict[str, Any]:
    from fraud_features.store import apply
    from fraudcore.metrics import serve_metrics

    settings = get_settings()
    devstack.up(settings, report=lambda m: None)
    serve_metrics(settings, "producer")  # this process produces: its send-to-ack histogram
    apply(settings)
    config = SimulatorConfig(seed=3, n_customers=1_000, n_terminals=2_000)
    ingest, serving = ingest_and_serving(settings, transformers=transformers)

    def report(message: str) -> None:
        console.print(message, style="dim")

    results: dict[str, Any] = {"transformer_processes": transformers, "step_seconds": seconds}
    monitor = None
    ingest.start(report=report)
    try:
        traffic = _live_traffic(settings, config, rates, seconds)
        _ensure_model(settings, console)
        serving.start(report=report)
        monitor = DecisionMonitor(settings).start()
        direct = _transformer_latency(
            settings,
            200,
            15,
            [f"C{i:05d}" for i in range(config.n_customers)],
            [f"T{i:05d}" for i in range(config.n_terminals)],
        )
        results["transformer_ms_p50_at_200rps"] = direct["p50"]
        results["transformer_ms_p99_at_200rps"] = direct["p99"]
        results["transformer_achieved_rps"] = direct["achieved"]
        pids = platform_pids(settings, ingest, serving)
        results["request_size_cost"] = _request_size_cost(
            transformer_url(settings),
            pids,
            [f"C{i:05d}" for i in range(config.n_customers)],
            [f"T{i:05d}" for i in range(config.n_terminals)],
        )
        time.sleep(2)
        # The backfill went through the same producer: its burst is not the ladder's ack time.
        acks_before = histogram_buckets([settings.metrics_ports.producer], "producer_send_latency_seconds")
        ladder = Ladder(settings, traffic, seconds, monitor, pids)
        steps: list[dict[str, Any]] = []
        for rate in rates:
            steps.append(ladder.step(rate))
            console.print(steps[-1], style="dim")
            if steps[-1]["lost"] or steps[-1]["errors"] or steps[-1]["ms_p99"] > BACKLOG_MS:
                break  # past saturation: higher rates only queue up
        results["ladder"] = steps
        results.update(summarise(steps))
        results["hops_ms"] = _hops(settings, transformers, acks_before)
        # The gate's hop: the same rate through the gate and straight to `transactions` (the
        # gate forwards the original bytes and key, so what follows cannot tell them apart).
        results["gate_hop_cost"] = gate_hop_figures(
            ladder.step(GATE_HOP_RATE), ladder.step(GATE_HOP_RATE, topic=settings.topics.transactions.name)
        )
        results["duplicates_seen"] = monitor.duplicates
    finally:
        if monitor:
            monitor.stop()
        serving.stop()
        ingest.stop()
    return results


def main() -> None:
    console = Console(stderr=True)
    rates = [
        float(r)
        for r in (sys.argv[1].split(",") if len(sys.argv) > 1 else ["500", "1000", "1500", "2000", "3000"])
    ]
    transformers = int(sys.argv[2]) if len(sys.argv) > 2 else 2
    result = run(rates, 20.0, transformers, console)
    result["ladder_rates_median_p95_ms"] = statistics.median(s["ms_p95"] for s in result["ladder"])
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
